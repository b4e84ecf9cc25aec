//! The return path: what happens to a forwarded message on the receiving
//! host (delivered, claimed, acked, dead-lettered, refused for now) goes
//! back to the sending host as span updates. There they update the index
//! row of the copy (so `relay trace` shows the remote span and its
//! status), feed the (sender -> endpoint) breaker like a local ack or nack
//! would, and are recorded as `remote_span` events.
//!
//! A delivery is told by the inbound side as it applies it. Beyond that
//! the receiving side looks only at the pairs that filesystem
//! notifications on its endpoints' `new/`, `cur/` and `failed/` name (a
//! message claimed, acked or dead-lettered), and at every open pair only
//! every 30 s or when a notification may have been missed; it rescanned
//! up to 1,024 open pairs every 200 ms before, holding the blocking side
//! the apply of fetched messages waits for.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::breaker::Event as BreakerEvent;
use crate::bridge::wire::{Span, SpanState};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::maildir::Mailbox;
use crate::reliability;
use crate::store::bridge::{Open, State};
use crate::store::rows::Event;
use crate::vocab::Status;
use crate::vocab::{Code, EventKind};

/// Span updates owed for applied messages whose state moved on here
/// (host `me`), with the pair each is about; at most `limit` pairs looked at.
///
/// `offset` pages through the open pairs, so pairs that stay open long (mail
/// nobody reads) do not keep the newer ones from being looked at; the
/// number of pairs looked at is returned with the updates.
pub fn changes(
    ctx: &mut Ctx,
    st: &State,
    me: &str,
    limit: usize,
    offset: usize,
) -> Result<(Vec<(Open, Span)>, usize)> {
    let open = st.open_pairs(limit, offset)?;
    let seen = open.len();
    Ok((look(ctx, open, me)?, seen))
}

/// Span updates owed for `pairs` (endpoint, id), those of them that are
/// applied and still open: what the notifications named.
pub fn changes_of(
    ctx: &mut Ctx,
    st: &State,
    me: &str,
    pairs: &std::collections::BTreeSet<(String, String)>,
) -> Result<Vec<(Open, Span)>> {
    let mut open = Vec::new();
    for (ep, id) in pairs {
        if let Some(p) = st.open_pair(ep, id)? {
            open.push(p);
        }
    }
    look(ctx, open, me)
}

/// Where each open pair is now, as a span update where it moved on since
/// its origin last heard.
fn look(ctx: &mut Ctx, open: Vec<Open>, me: &str) -> Result<Vec<(Open, Span)>> {
    if open.is_empty() {
        return Ok(Vec::new());
    }
    let now = ctx.clock.now_ms();
    let store = ctx.store()?;
    store.ingest()?;
    let mut out = Vec::new();
    for pair in open {
        let mb = Mailbox::at(&ctx.home, &pair.endpoint);
        let status = ctx.store()?.status(&pair.endpoint, &pair.id)?;
        let in_dir = |s: &str| mb.has(s, &pair.id);
        let state = match status {
            Some(Status::Failed) => SpanState::Failed,
            Some(Status::Acked) => SpanState::Acked,
            Some(Status::Claimed) if in_dir("cur") => SpanState::Claimed,
            Some(Status::Pending) if in_dir("new") => SpanState::Delivered,
            // The index lags or lacks the row: the Maildir says.
            _ if in_dir("failed") => SpanState::Failed,
            _ if in_dir("cur") => SpanState::Claimed,
            _ if in_dir("new") => SpanState::Delivered,
            _ => SpanState::Acked,
        };
        if state <= pair.reported {
            continue;
        }
        let (code, reason) = if state == SpanState::Failed {
            // A dead letter's reason is in `failed/` before it (`Mailbox::fail`).
            match mb.read_reason(&pair.id) {
                Some(r) => (r.code, Some(r.reason)),
                // One of an older home, which wrote it after the letter
                // and crashed between (or a full disk): the index's.
                None => match ctx.store()?.failure(&pair.endpoint, &pair.id)? {
                    Some((code, reason)) => (Some(code), reason),
                    None => (Some("failed".to_string()), None),
                },
            }
        } else {
            (None, None)
        };
        let span = Span {
            message_id: pair.id.clone(),
            endpoint: pair.endpoint.clone(),
            host: me.to_string(),
            state,
            code,
            reason,
            at: now,
        };
        out.push((pair, span));
    }
    Ok(out)
}

/// Applies span updates about messages this host sent, in one index
/// transaction (one commit, one fsync, for a fetched batch of them): all
/// of them or, if anything fails, none.
pub fn apply_all(ctx: &mut Ctx, spans: &[Span], now: u64) -> Result<()> {
    if spans.is_empty() {
        return Ok(());
    }
    let breakers = ctx.config.reliability.circuit_breaker.clone();
    // The rows of the copies may still be in the journal.
    ctx.store()?.ingest()?;
    let mut tx = ctx.store()?.begin()?;
    for span in spans {
        apply_one(&mut tx, &breakers, span, now)?;
    }
    tx.commit()
}

/// One span update, inside the caller's transaction.
fn apply_one(
    tx: &mut crate::store::index::Tx<'_>,
    breakers: &crate::config::CircuitBreaker,
    span: &Span,
    now: u64,
) -> Result<()> {
    let row = tx.row(&span.endpoint, &span.message_id)?;
    let sender = row.as_ref().map(|r| r.sender.clone());
    match span.state {
        SpanState::Claimed => tx.record_remote_claim(&span.endpoint, &span.message_id, span.at)?,
        SpanState::Acked => {
            tx.record_remote_claim(&span.endpoint, &span.message_id, span.at)?;
            tx.record_done(&span.endpoint, &span.message_id, Status::Acked, None, now)?;
        }
        SpanState::Failed => {
            let code = span.code.as_deref().unwrap_or("failed");
            let reason = span
                .reason
                .as_deref()
                .unwrap_or("dead-lettered on the remote host");
            let reason = format!("{reason} (on host '{}')", span.host);
            tx.record_done(
                &span.endpoint,
                &span.message_id,
                Status::Failed,
                Some((code, &reason)),
                now,
            )?;
        }
        SpanState::Delivered | SpanState::Retrying => {}
    }
    if let Some(row) = &row {
        let event = match (span.state, span.code.as_deref()) {
            (SpanState::Acked, _) => Some(BreakerEvent::Success { probe: row.probe }),
            // A consumer's failure feeds the sender's breaker, as locally;
            // budget and access refusals do not.
            (SpanState::Failed, Some(c)) if c.parse().is_ok_and(Code::is_consumer_failure) => {
                Some(BreakerEvent::Failure { probe: row.probe })
            }
            _ => None,
        };
        if let Some(event) = event {
            let mut out = crate::store::journal::Outbox::default();
            let (sender, ep) = (&row.sender, &span.endpoint);
            reliability::breaker_step(&mut tx.slots, &mut out, breakers, sender, ep, event, now)?;
            tx.record(&mut out)?;
        }
    }
    tx.event(
        &Event {
            kind: EventKind::RemoteSpan,
            sender: sender.as_deref(),
            endpoint: Some(&span.endpoint),
            message_id: Some(&span.message_id),
            detail: serde_json::json!({
                "host": span.host,
                "state": span.state.as_str(),
                "code": span.code,
                "reason": span.reason,
                "at": crate::clock::iso8601(span.at),
            }),
        },
        now,
    )
}

/// Publishes span updates to their origins' span subjects, those to one
/// origin together in as few messages as `wire::SPANS_PER_MESSAGE` and
/// `wire::SPAN_BYTES_PER_MESSAGE` allow; returns the ones JetStream
/// acknowledged.
pub async fn publish_all(
    session: &super::shared::Session,
    spans: Vec<(String, Span)>,
) -> Vec<Span> {
    use super::wire::{SPAN_BYTES_PER_MESSAGE, SPANS_PER_MESSAGE, span_subject, spans_msg_id};
    let mut by_origin: std::collections::BTreeMap<String, Vec<Span>> = Default::default();
    for (origin, span) in spans {
        by_origin.entry(origin).or_default().push(span);
    }
    let mut chunks: Vec<(String, Vec<Span>)> = Vec::new();
    for (origin, spans) in by_origin {
        let (mut chunk, mut bytes) = (Vec::new(), 0);
        for span in spans {
            let size = span.reason.as_ref().map_or(0, String::len) + 256;
            if !chunk.is_empty()
                && (chunk.len() >= SPANS_PER_MESSAGE || bytes + size > SPAN_BYTES_PER_MESSAGE)
            {
                chunks.push((origin.clone(), std::mem::take(&mut chunk)));
                bytes = 0;
            }
            bytes += size;
            chunk.push(span);
        }
        if !chunk.is_empty() {
            chunks.push((origin, chunk));
        }
    }
    let mut pending = Vec::new();
    for (origin, chunk) in chunks {
        let body = match chunk.as_slice() {
            [one] => serde_json::to_vec(one),
            many => serde_json::to_vec(many),
        };
        let Ok(body) = body else {
            continue;
        };
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", spans_msg_id(&chunk).as_str());
        h.insert(super::wire::H_ORIGIN, session.settings.host.as_str());
        match session
            .js
            .publish_with_headers(span_subject(&origin), h, body.into())
            .await
        {
            Ok(ack) => pending.push((chunk, ack)),
            Err(e) => {
                crate::output::warn(&format!("bridge: cannot send a span update ({e})"));
                break;
            }
        }
    }
    let mut sent = Vec::new();
    // One deadline for all the acks (see `outbound::publish`).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    for (chunk, ack) in pending {
        let acked = tokio::time::timeout_at(deadline, ack).await;
        if matches!(acked, Ok(Ok(_))) {
            sent.extend(chunk);
        }
    }
    sent
}

/// How often claims, acks and dead letters here are looked for when
/// filesystem notifications are unavailable.
const REPORT_POLL: Duration = Duration::from_millis(200);
/// How often every open pair is looked at although no notification named
/// it (what a notification cannot tell: a full queue, a directory made
/// since the last look; and the index changing without the Maildir).
const FULL_LOOK: Duration = Duration::from_secs(30);
/// How long a notification waits for the others of its batch.
const GATHER: Duration = Duration::from_millis(100);
/// How often the watched directories are brought in step with the local
/// endpoints.
const FOLLOW: Duration = Duration::from_secs(1);

/// The pairs (endpoint, id) named by notifications since the last look.
type Named = Arc<Mutex<BTreeSet<(String, String)>>>;

/// Watches the local endpoints' `new/`, `cur/` and `failed/`: a message
/// arriving, claimed (out of `new/`), acked (out of `cur/`), or
/// dead-lettered (out of either, its reason into `failed/`) names its
/// pair, so the report loop looks at those pairs instead of every open one.
struct Changed {
    named: Named,
    missed: Arc<AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
    watcher: Option<notify::RecommendedWatcher>,
    watched: BTreeSet<PathBuf>,
}

impl Changed {
    fn new() -> Self {
        let named: Named = Arc::default();
        let missed = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(tokio::sync::Notify::new());
        let (n, m, w) = (Arc::clone(&named), Arc::clone(&missed), Arc::clone(&wake));
        let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            match ev {
                Ok(e) if !e.need_rescan() => {
                    let mut got = false;
                    if let Ok(mut named) = n.lock() {
                        for p in e.paths.iter().filter(|p| !arrival(&e.kind, p)) {
                            if let Some(pair) = pair_of(p) {
                                got |= named.insert(pair);
                            }
                        }
                    }
                    if got {
                        w.notify_one();
                    }
                }
                // A full queue or an error: something may be missed.
                _ => {
                    m.store(true, Ordering::SeqCst);
                    w.notify_one();
                }
            }
        })
        .map_err(|e| {
            crate::output::warn(&format!(
                "bridge: filesystem notifications unavailable ({e}); looking at every open message every {} ms",
                REPORT_POLL.as_millis()
            ));
        })
        .ok();
        Changed {
            named,
            missed,
            wake,
            watcher,
            watched: BTreeSet::new(),
        }
    }

    /// Watches exactly `dirs`; whether a directory was added (what landed
    /// in it before its watch was named by no notification).
    fn follow(&mut self, dirs: BTreeSet<PathBuf>) -> bool {
        let Some(w) = self.watcher.as_mut() else {
            return false;
        };
        super::shared::watch_exactly(w, &mut self.watched, dirs)
    }

    fn take(&self) -> BTreeSet<(String, String)> {
        self.named
            .lock()
            .map(|mut n| std::mem::take(&mut *n))
            .unwrap_or_default()
    }
}

/// Whether `kind` at `path` is a message arriving in a `new/`: a delivery
/// (told by the inbound side as it applies it) or a message given back,
/// neither of them news for the origin.
fn arrival(kind: &notify::EventKind, path: &Path) -> bool {
    use notify::EventKind;
    use notify::event::{ModifyKind, RenameMode};
    let into = matches!(
        kind,
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(RenameMode::To))
    );
    into && path
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|d| d == "new")
}

/// (endpoint, id) of `<home>/mailboxes/<endpoint>/<sub>/<id>.json`, or of
/// its reason sidecar `<id>.reason.json` in `failed/`.
fn pair_of(path: &Path) -> Option<(String, String)> {
    let name = path.file_name()?.to_str()?;
    let id = match name.strip_suffix(".reason.json") {
        Some(id) if !id.is_empty() && !id.starts_with('.') => id,
        _ => crate::maildir::message_id(name)?,
    };
    let ep = path.parent()?.parent()?.file_name()?.to_str()?;
    Some((ep.to_string(), id.to_string()))
}

/// The `new/`, `cur/` and `failed/` (once there is one) of every local
/// endpoint.
fn endpoint_dirs(home: &crate::home::Home) -> Result<BTreeSet<PathBuf>> {
    let mut dirs = BTreeSet::new();
    for ep in super::directory::local_endpoints(home)? {
        let mb = Mailbox::at(home, &ep);
        dirs.insert(mb.sub("new"));
        dirs.insert(mb.sub("cur"));
        if mb.sub("failed").is_dir() {
            dirs.insert(mb.sub("failed"));
        }
    }
    Ok(dirs)
}

/// Reports what became of applied messages to their origins until a stop:
/// the pairs notifications name as they change, every open pair now and
/// then (and at once when a notification may have been missed).
pub async fn report_loop(session: Arc<super::shared::Session>) -> Result<()> {
    let mut changed = Changed::new();
    let home = super::shared::blocking(&session.local, |l| Ok(l.ctx().home.clone())).await?;
    let mut followed: Option<Instant> = None;
    let mut full_at: Option<Instant> = None;
    while !session.stopping() {
        if followed.is_none_or(|t| t.elapsed() >= FOLLOW) && changed.watcher.is_some() {
            let h = home.clone();
            let dirs = tokio::task::spawn_blocking(move || endpoint_dirs(&h))
                .await
                .map_err(|e| Error::Data(format!("bridge: a blocking task failed: {e}")))?;
            match dirs {
                Ok(d) => {
                    if changed.follow(d) {
                        full_at = None;
                    }
                }
                Err(e) => crate::output::warn(&format!("bridge: spans: {e}")),
            }
            followed = Some(Instant::now());
        }
        let missed = changed.missed.swap(false, Ordering::SeqCst);
        let full =
            changed.watcher.is_none() || missed || full_at.is_none_or(|t| t.elapsed() >= FULL_LOOK);
        let named = changed.take();
        let found = if full {
            full_at = Some(Instant::now());
            look_at_all(&session).await
        } else if named.is_empty() {
            Vec::new()
        } else {
            super::shared::blocking(&session.local, move |l| {
                let (ctx, st, me) = l.parts();
                let me = me.to_string();
                changes_of(ctx, st, &me, &named)
            })
            .await
            .unwrap_or_else(|e| {
                crate::output::warn(&format!("bridge: spans: {e}"));
                Vec::new()
            })
        };
        if !found.is_empty() {
            // What its origin did not take is looked at again (on the
            // next wake, a second at most).
            let unsent = report(&session, found).await?;
            if let Ok(mut n) = changed.named.lock() {
                n.extend(unsent);
            }
        }
        if changed.watcher.is_none() {
            session.pause(REPORT_POLL).await;
            continue;
        }
        let mut stop = session.stop.clone();
        let woken = tokio::select! {
            () = changed.wake.notified() => true,
            () = tokio::time::sleep(FOLLOW) => false,
            _ = stop.wait_for(|s| *s) => false,
        };
        if woken {
            // Woken by the first of a batch's notifications: the rest of
            // it is gathered into the same look (one index read, one
            // bridge.db commit), not one look each.
            session.pause(GATHER).await;
        }
    }
    Ok(())
}

/// Every open pair, page by page.
async fn look_at_all(session: &super::shared::Session) -> Vec<(Open, Span)> {
    const PAGE: usize = 1024;
    let mut all = Vec::new();
    let mut offset = 0;
    loop {
        let at = offset;
        let page = super::shared::blocking(&session.local, move |l| {
            let (ctx, st, me) = l.parts();
            let me = me.to_string();
            changes(ctx, st, &me, PAGE, at)
        })
        .await;
        match page {
            Ok((found, seen)) => {
                all.extend(found);
                if seen < PAGE {
                    return all;
                }
                offset += PAGE;
            }
            Err(e) => {
                crate::output::warn(&format!("bridge: spans: {e}"));
                return all;
            }
        }
    }
}

/// Publishes span updates and records what their origins heard; the
/// pairs whose update was not acknowledged.
async fn report(
    session: &Arc<super::shared::Session>,
    found: Vec<(Open, Span)>,
) -> Result<Vec<(String, String)>> {
    let spans = found
        .iter()
        .map(|(p, s)| (p.origin.clone(), s.clone()))
        .collect();
    let sent = publish_and_record(session, spans).await?;
    let heard: BTreeSet<(&str, &str)> = sent
        .iter()
        .map(|s| (s.endpoint.as_str(), s.message_id.as_str()))
        .collect();
    Ok(found
        .iter()
        .filter(|(p, _)| !heard.contains(&(p.endpoint.as_str(), p.id.as_str())))
        .map(|(p, _)| (p.endpoint.clone(), p.id.clone()))
        .collect())
}

/// Publishes span updates (origin, update) and records, for the applied
/// pairs they are about, what their origins heard; the updates JetStream
/// acknowledged.
pub async fn publish_and_record(
    session: &super::shared::Session,
    spans: Vec<(String, Span)>,
) -> Result<Vec<Span>> {
    if spans.is_empty() {
        return Ok(Vec::new());
    }
    let sent = publish_all(session, spans).await;
    let heard = sent.clone();
    super::shared::blocking(&session.local, move |l| {
        l.state.atomically(|st| {
            for s in &heard {
                st.set_reported(&s.endpoint, &s.message_id, s.state)?;
            }
            Ok(())
        })
    })
    .await?;
    Ok(sent)
}
