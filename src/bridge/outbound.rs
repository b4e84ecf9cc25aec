//! The outbound publisher: takes what waits in the outbox (priority, then
//! age), publishes each copy to the stream with `Nats-Msg-Id` =
//! `<ULID>.<endpoint>`, the envelope unchanged as the body and the headers
//! of `wire`, and removes a copy only after JetStream acknowledged it. A
//! failed publish gives the copies back and tells the link's breaker.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::HeaderMap;

use super::outbox::{self, Item};
use super::shared::{Session, blocking};
use super::{link, wire};
use crate::error::Result;

/// Copies taken per round.
const BATCH: usize = 1024;
/// Longest wait for a publish, or for all the acks of a round.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause when the outbox is empty: a send into a proxy wakes the
/// publisher at once (filesystem notifications on the proxies' `new/`, and
/// the directory when it makes a proxy); this catches what neither can (a
/// full notification queue). `RELAY_BRIDGE_IDLE_MS` sets it in tests.
const IDLE: Duration = Duration::from_millis(250);
/// The pause when the outbox is empty and notifications are unavailable.
const IDLE_POLL: Duration = Duration::from_millis(10);

fn idle_fallback() -> Duration {
    crate::envvars::BRIDGE_IDLE_MS
        .get()
        .and_then(|v| v.trim().parse().ok())
        .map_or(IDLE, Duration::from_millis)
}

/// Wakes the publisher when a copy lands in a proxy's `new/`.
struct Wake {
    notify: Arc<tokio::sync::Notify>,
    watcher: Option<notify::RecommendedWatcher>,
    watched: std::collections::BTreeSet<std::path::PathBuf>,
    fallback: Duration,
}

impl Wake {
    fn new(notify: Arc<tokio::sync::Notify>) -> Self {
        let n = Arc::clone(&notify);
        let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            use notify::EventKind;
            use notify::event::{ModifyKind, RenameMode};
            // A copy arriving (linked, renamed or written into `new/`);
            // not the publisher's own claims, which move copies out.
            let arrived = match ev {
                Ok(e) => !matches!(
                    e.kind,
                    EventKind::Remove(_)
                        | EventKind::Access(_)
                        | EventKind::Modify(ModifyKind::Name(RenameMode::From))
                ),
                Err(_) => true,
            };
            if arrived {
                n.notify_one();
            }
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                crate::output::warn(&format!(
                    "bridge: filesystem notifications unavailable ({e}); looking at the outbox every {} ms",
                    IDLE_POLL.as_millis()
                ));
                None
            }
        };
        Wake {
            notify,
            watcher,
            watched: std::collections::BTreeSet::new(),
            fallback: idle_fallback(),
        }
    }

    /// Watches exactly the `new/` directories given. A directory watched
    /// for the first time wakes the publisher once more: a copy that
    /// landed in it before its watch (after the look that found the
    /// proxy) is taken by that next look, not left for the fallback.
    fn follow(&mut self, dirs: std::collections::BTreeSet<std::path::PathBuf>) {
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        // A proxy not ready yet is tried again on the next look.
        if super::shared::watch_exactly(w, &mut self.watched, dirs) {
            self.notify.notify_one();
        }
    }

    /// Waits for a copy to land, the fallback at most (or a stop).
    async fn idle(&self, session: &Session) {
        if self.watcher.is_none() {
            return session.pause(IDLE_POLL).await;
        }
        let mut stop = session.stop.clone();
        tokio::select! {
            () = self.notify.notified() => {}
            () = tokio::time::sleep(self.fallback) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}

/// The headers of a forwarded copy.
#[must_use]
pub fn headers(it: &Item, origin: &str) -> HeaderMap {
    let env = &it.envelope;
    let mut h = HeaderMap::new();
    h.insert("Nats-Msg-Id", wire::msg_id(&env.id, &it.endpoint).as_str());
    h.insert(wire::H_TRACE, env.trace());
    h.insert(wire::H_FROM, env.from.as_str());
    if let Some(r) = &env.reply_to {
        h.insert(wire::H_REPLY_TO, r.as_str());
    }
    h.insert(wire::H_PRIORITY, env.priority().as_str());
    if let Ok(b) = serde_json::to_string(&env.budget) {
        h.insert(wire::H_BUDGET, b.as_str());
    }
    h.insert(wire::H_ORIGIN, origin);
    h
}

/// Forwards the outbox until a stop.
pub async fn run_loop(session: Arc<Session>) -> Result<()> {
    let host = session.settings.host.clone();
    let mut down_rounds = 0u32;
    let mut wake = Wake::new(Arc::clone(&session.outbox_wake));
    while !session.stopping() {
        if !session.connected.load(Ordering::SeqCst) {
            // Down: the outbox holds what is sent; the link's breaker counts
            // it, and what expires meanwhile is dead-lettered now.
            let h = host.clone();
            let sweep = down_rounds.is_multiple_of(4);
            down_rounds = down_rounds.wrapping_add(1);
            let expired = blocking(&session.local, move |l| {
                let now = l.ctx().clock.now_ms();
                link::outcome(l.ctx(), &h, false, now)?;
                if sweep {
                    outbox::expire_due(l.ctx(), now)
                } else {
                    Ok(0)
                }
            })
            .await?;
            session.expired.fetch_add(expired, Ordering::SeqCst);
            session.pause(Duration::from_millis(500)).await;
            continue;
        }
        down_rounds = 0;
        let h = host.clone();
        let (gate, taken, proxies) = blocking(&session.local, move |l| {
            let now = l.ctx().clock.now_ms();
            let proxies = outbox::arrivals(&l.ctx().home);
            let gate = link::may_try(l.ctx(), &h, now)?;
            if gate.is_err() {
                return Ok((gate, outbox::Taken::default(), proxies));
            }
            let taken = outbox::take(l.ctx(), BATCH, now)?;
            Ok((gate, taken, proxies))
        })
        .await?;
        wake.follow(proxies);
        if let Err(wait) = gate {
            session
                .pause(Duration::from_millis(wait.clamp(50, 5_000)))
                .await;
            continue;
        }
        session.expired.fetch_add(taken.expired, Ordering::SeqCst);
        if taken.items.is_empty() {
            wake.idle(&session).await;
            continue;
        }
        let (sent, unsent, err) = publish(&session, &host, taken.items).await;
        let n = sent.len() as u64;
        let h = host.clone();
        let ok = err.is_none();
        blocking(&session.local, move |l| {
            let now = l.ctx().clock.now_ms();
            outbox::done(l.ctx(), &sent, now)?;
            outbox::give_back(l.ctx(), &unsent)?;
            link::outcome(l.ctx(), &h, ok, now)
        })
        .await?;
        session.forwarded.fetch_add(n, Ordering::SeqCst);
        if let Some(e) = err {
            crate::output::warn(&format!(
                "bridge: cannot publish to NATS ({e}); the copies stay queued"
            ));
            session.pause(Duration::from_millis(500)).await;
        }
    }
    Ok(())
}

/// Publishes `items` in order with every ack outstanding at once; returns
/// the acknowledged ones, the rest, and the first error.
async fn publish(
    session: &Session,
    origin: &str,
    items: Vec<Item>,
) -> (Vec<Item>, Vec<Item>, Option<String>) {
    let mut pending = Vec::with_capacity(items.len());
    let mut rest = Vec::new();
    let mut err = None;
    let mut iter = items.into_iter();
    for it in iter.by_ref() {
        let subject = wire::msg_subject(&it.host, &it.endpoint);
        let body = it.bytes.clone().into();
        // Bounded, whatever the client does across a reconnect: a copy
        // not acknowledged in time is given back and published again.
        let sent = tokio::time::timeout(
            PUBLISH_TIMEOUT,
            session
                .js
                .publish_with_headers(subject, headers(&it, origin), body),
        )
        .await;
        match sent {
            Ok(Ok(ack)) => pending.push((it, ack)),
            Ok(Err(e)) => {
                err = Some(e.to_string());
                rest.push(it);
                break;
            }
            Err(_) => {
                err = Some("the publish timed out".to_string());
                rest.push(it);
                break;
            }
        }
    }
    rest.extend(iter);
    let mut sent = Vec::with_capacity(pending.len());
    // One deadline for all the acks: each waited for in turn with a cap of
    // its own, a round whose acks a restarted server lost took the cap
    // times the round's size.
    let deadline = tokio::time::Instant::now() + PUBLISH_TIMEOUT;
    for (it, ack) in pending {
        match tokio::time::timeout_at(deadline, ack).await {
            Ok(Ok(_)) => sent.push(it),
            Ok(Err(e)) => {
                err.get_or_insert_with(|| e.to_string());
                rest.push(it);
            }
            Err(_) => {
                err.get_or_insert_with(|| "no publish ack in time".to_string());
                rest.push(it);
            }
        }
    }
    (sent, rest, err)
}
