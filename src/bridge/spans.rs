//! The return path: what happens to a forwarded message on the receiving
//! host (delivered, claimed, acked, dead-lettered, refused for now) goes
//! back to the sending host as span updates. There they update the index
//! row of the copy (so `relay trace` shows the remote span and its
//! status), feed the (sender -> endpoint) breaker like a local ack or nack
//! would, and are recorded as `remote_span` events.

use crate::breaker::Event as BreakerEvent;
use crate::bridge::wire::{Span, SpanState};
use crate::context::Ctx;
use crate::error::Result;
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
    if open.is_empty() {
        return Ok((Vec::new(), 0));
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
            mb.read_reason(&pair.id)
                .map_or((Some("failed".to_string()), None), |r| {
                    (r.code, Some(r.reason))
                })
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
    Ok((out, seen))
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

/// Publishes span updates, each to its origin's span subject; returns the
/// ones JetStream acknowledged.
pub async fn publish_all(
    session: &super::shared::Session,
    spans: Vec<(String, Span)>,
) -> Vec<Span> {
    let mut pending = Vec::new();
    for (origin, span) in spans {
        let Ok(body) = serde_json::to_vec(&span) else {
            continue;
        };
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", span.msg_id().as_str());
        h.insert(super::wire::H_ORIGIN, span.host.as_str());
        match session
            .js
            .publish_with_headers(super::wire::span_subject(&origin), h, body.into())
            .await
        {
            Ok(ack) => pending.push((span, ack)),
            Err(e) => {
                crate::output::warn(&format!("bridge: cannot send a span update ({e})"));
                break;
            }
        }
    }
    let mut sent = Vec::new();
    for (span, ack) in pending {
        let acked = tokio::time::timeout(std::time::Duration::from_secs(10), ack).await;
        if matches!(acked, Ok(Ok(_))) {
            sent.push(span);
        }
    }
    sent
}

/// How often claims, acks and dead letters here are looked for.
const REPORT_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Reports what became of applied messages to their origins until a stop.
pub async fn report_loop(session: std::sync::Arc<super::shared::Session>) -> Result<()> {
    const PAGE: usize = 1024;
    let mut offset = 0;
    while !session.stopping() {
        let at = offset;
        let found = super::shared::blocking(&session.local, move |l| {
            let (ctx, st, me) = l.parts();
            let me = me.to_string();
            changes(ctx, st, &me, PAGE, at)
        })
        .await;
        let found = match found {
            Ok((f, seen)) => {
                offset = if seen < PAGE { 0 } else { offset + PAGE };
                f
            }
            Err(e) => {
                crate::output::warn(&format!("bridge: spans: {e}"));
                Vec::new()
            }
        };
        if found.is_empty() {
            session.pause(REPORT_POLL).await;
            continue;
        }
        let spans = found
            .iter()
            .map(|(p, s)| (p.origin.clone(), s.clone()))
            .collect();
        let sent = publish_all(&session, spans).await;
        super::shared::blocking(&session.local, move |l| {
            l.state.atomically(|st| {
                for s in &sent {
                    st.set_reported(&s.endpoint, &s.message_id, s.state)?;
                }
                Ok(())
            })
        })
        .await?;
        session.pause(REPORT_POLL).await;
    }
    Ok(())
}
