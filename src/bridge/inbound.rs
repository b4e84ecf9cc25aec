//! The inbound side: one message from the stream, applied here through the
//! local send pipeline (its hop, budgets and TTL, access rules with the
//! remote `from` taken as a claim, rate limits, breakers, backpressure),
//! at most once per (id, endpoint) however often it is redelivered. The
//! result is what JetStream is told: ack, nak with a delay, or term.

use std::time::Duration;

use crate::bridge::state::State;
use crate::bridge::wire::{Span, SpanState};
use crate::context::Ctx;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::ledger::{Fast, Ledger};
use crate::maildir::Mailbox;
use crate::notice;
use crate::pipeline::{self, Delivery, Durability, Fate, Job};
use crate::store::{SentRow, Status};

/// Delay of a nak when the refusal named none.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(1);
/// Longest nak delay (a breaker's cooldown may say more).
const MAX_RETRY: Duration = Duration::from_secs(60);

/// What JetStream is told about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered and durable (or already was).
    Ack,
    /// Refused for now: redeliver after the delay.
    Nak(Duration),
    /// Refused for good (dead-lettered here, the origin told).
    Term,
}

/// The verdict and the span update owed to the origin, if any.
#[derive(Debug)]
pub struct Applied {
    /// For JetStream.
    pub verdict: Verdict,
    /// For the origin's host.
    pub span: Option<Span>,
}

/// One message taken from the stream.
#[derive(Debug)]
pub struct Incoming<'a> {
    /// The local endpoint it is for.
    pub endpoint: &'a str,
    /// The host that sent it.
    pub origin: &'a str,
    /// The DorkOS envelope.
    pub body: &'a [u8],
    /// How often JetStream delivered it (1 the first time).
    pub delivered: i64,
}

/// Applies one message for a local endpoint of host `me`; `max_deliveries`
/// bounds the temporary refusals before it is dead-lettered here.
pub fn apply(
    ctx: &mut Ctx,
    st: &State,
    me: &str,
    msg: &Incoming<'_>,
    max_deliveries: u32,
    now: u64,
) -> Result<Applied> {
    let ep = msg.endpoint;
    let span = |state: SpanState, id: &str, code: Option<&str>, reason: Option<&str>| Span {
        message_id: id.to_string(),
        endpoint: ep.to_string(),
        host: me.to_string(),
        state,
        code: code.map(str::to_string),
        reason: reason.map(str::to_string),
        at: now,
    };
    let mut env = match Envelope::parse(msg.body) {
        Ok(e) if crate::maildir::validate_id(&e.id).is_ok() => e,
        // Nothing to deliver and no id to report about: dropped, said once.
        Ok(_) | Err(_) => {
            crate::output::warn(&format!(
                "bridge: a message from '{}' for '{ep}' is not a relay envelope; dropped",
                msg.origin
            ));
            return Ok(Applied {
                verdict: Verdict::Term,
                span: None,
            });
        }
    };
    if st.is_applied(ep, &env.id)? || already_here(ctx, ep, &env.id)? {
        st.mark_applied(ep, &env.id, msg.origin, SpanState::Retrying, now)?;
        // Seen again (a publish repeated after JetStream's dedup window):
        // acked, not delivered twice, and said.
        let ledger = Fast::new(ctx.home.root());
        ledger.event(
            &crate::store::Event {
                kind: "bridge_duplicate",
                sender: Some(&env.from),
                endpoint: Some(ep),
                message_id: Some(&env.id),
                detail: serde_json::json!({ "origin": msg.origin, "delivered": msg.delivered }),
            },
            now,
        )?;
        ledger.commit()?;
        return Ok(Applied {
            verdict: Verdict::Ack,
            span: None,
        });
    }
    // The sending host took this hop into its proxy; it is taken again
    // here, under this host's clock and rules: one hop per crossing.
    if env.budget.ancestor_chain.last().map(String::as_str) == Some(ep) {
        env.budget.ancestor_chain.pop();
        env.budget.hop_count = env.budget.hop_count.saturating_sub(1);
        env.budget.call_budget_remaining = env.budget.call_budget_remaining.saturating_add(1);
    }
    let local = Mailbox::at(&ctx.home, ep);
    let remote_here = super::directory::host_of(&ctx.home, ep);
    let refusal = if !local.is_endpoint() || remote_here.is_some() {
        Some((
            "no_match",
            format!("no endpoint '{ep}' on host '{me}' (removed, or never there)"),
        ))
    } else {
        let rules = crate::access::Rules::load(&ctx.home.root().join(crate::access::FILE_NAME));
        rules
            .check(&env.from, &env.subject)
            .err()
            .map(|e| ("access_denied", e.to_string()))
    };
    if let Some((code, reason)) = refusal {
        dead_letter(ctx, &env, ep, code, &reason, now)?;
        st.mark_applied(ep, &env.id, msg.origin, SpanState::Retrying, now)?;
        return Ok(Applied {
            verdict: Verdict::Term,
            span: None,
        });
    }
    let id = env.id.clone();
    let original = env.clone();
    let mut jobs = [Job::new(env, vec![ep.to_string()], None)];
    let outcome = pipeline::deliver(ctx, &mut jobs, Durability::PerMessage, now)
        .and_then(|()| jobs[0].take_result());
    // (code, reason, retry-after) of a refusal for now.
    let temporary = match outcome {
        Ok(Delivery::Duplicate(_)) => None,
        Ok(Delivery::Done { fates, .. }) => match fates.into_iter().next() {
            Some((_, Fate::Delivered(..))) | None => None,
            Some((_, Fate::DeadLettered(..))) => {
                // The pipeline dead-lettered it and sent the notice.
                st.mark_applied(ep, &id, msg.origin, SpanState::Retrying, now)?;
                return Ok(Applied {
                    verdict: Verdict::Term,
                    span: None,
                });
            }
            Some((_, Fate::Refused(code, reason, retry))) => Some((code, reason, retry)),
        },
        Err(Error::Refused {
            message,
            retry_after_ms,
        }) => Some(("rate_limited".to_string(), message, retry_after_ms)),
        Err(e @ (Error::Locked(_) | Error::Io { .. } | Error::Full(_) | Error::Store(_))) => {
            Some(("io_error".to_string(), e.to_string(), None))
        }
        Err(e) => return Err(e),
    };
    let Some((code, reason, retry)) = temporary else {
        st.mark_applied(ep, &id, msg.origin, SpanState::Retrying, now)?;
        return Ok(Applied {
            verdict: Verdict::Ack,
            span: None,
        });
    };
    if u32::try_from(msg.delivered).unwrap_or(u32::MAX) >= max_deliveries {
        let why = format!(
            "refused {} times, the last time for: {reason}",
            msg.delivered
        );
        dead_letter(ctx, &original, ep, "max_deliveries", &why, now)?;
        st.mark_applied(ep, &id, msg.origin, SpanState::Retrying, now)?;
        return Ok(Applied {
            verdict: Verdict::Term,
            span: None,
        });
    }
    let delay = retry
        .map_or(DEFAULT_RETRY, Duration::from_millis)
        .clamp(Duration::from_millis(50), MAX_RETRY);
    Ok(Applied {
        verdict: Verdict::Nak(delay),
        // Said once, not on every redelivery.
        span: (msg.delivered <= 1)
            .then(|| span(SpanState::Retrying, &id, Some(&code), Some(&reason))),
    })
}

/// Whether the copy is here already: in the mailbox, or in the index as
/// claimed, acked or dead-lettered (a crash after the delivery, before the
/// bridge recorded it). An index row without its file in `new/` is a
/// delivery that never became visible, so it does not count.
fn already_here(ctx: &mut Ctx, ep: &str, id: &str) -> Result<bool> {
    let mb = Mailbox::at(&ctx.home, ep);
    if ["new", "cur", "failed"].iter().any(|s| mb.has(s, id)) {
        return Ok(true);
    }
    let status = ctx.store()?.status(ep, id)?;
    Ok(status
        .as_deref()
        .and_then(Status::parse)
        .is_some_and(|s| s != Status::Pending))
}

/// Dead-letters `env` at `ep` (in its `failed/`), with the notice to its
/// `replyTo` and the index row.
fn dead_letter(
    ctx: &mut Ctx,
    env: &Envelope,
    ep: &str,
    code: &str,
    reason: &str,
    now: u64,
) -> Result<()> {
    let mb = Mailbox::at(&ctx.home, ep);
    mb.dead_letter(env, reason, code, now)?;
    let ledger = Fast::new(ctx.home.root());
    ledger.dead_letter_row(
        &SentRow {
            endpoint: ep,
            envelope: env,
            failure: Some((code, reason)),
            probe: false,
        },
        now,
    )?;
    if let Some(sent) = notice::send(&ctx.home, env, ep, code, reason, now)? {
        notice::record(&ledger, &sent, now)?;
    }
    ledger.commit().map(|_| ())
}

/// Messages fetched per round.
const FETCH: usize = 128;

/// Consumes this host's filter subject until a stop: messages go through
/// `apply`, span updates through `spans::apply`; each is acked, nakked
/// with a delay, or termed as its result says.
pub async fn run_loop(
    session: std::sync::Arc<super::session::Session>,
    consumer: async_nats::jetstream::consumer::PullConsumer,
) -> Result<()> {
    use async_nats::jetstream::AckKind;
    use futures_util::StreamExt;
    use std::sync::atomic::Ordering;
    let me = session.settings.host.clone();
    let max_deliveries = session.settings.max_deliveries;
    while !session.stopping() {
        let batch = consumer
            .fetch()
            .max_messages(FETCH)
            .expires(Duration::from_millis(500))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                crate::output::warn(&format!(
                    "bridge: cannot fetch from the stream ({e}); trying again"
                ));
                session.pause(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut msgs = Vec::new();
        while let Some(m) = batch.next().await {
            match m {
                Ok(m) => msgs.push(m),
                Err(e) => {
                    crate::output::warn(&format!("bridge: fetch: {e}"));
                    break;
                }
            }
        }
        if msgs.is_empty() {
            continue;
        }
        // Owned copies for the blocking side.
        let work: Vec<(String, Option<String>, Vec<u8>, i64)> = msgs
            .iter()
            .map(|m| {
                let origin = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(super::wire::H_ORIGIN))
                    .map(|v| v.as_str().to_string());
                let delivered = m.info().map_or(1, |i| i.delivered);
                (m.subject.to_string(), origin, m.payload.to_vec(), delivered)
            })
            .collect();
        let host = me.clone();
        let results = super::blocking(&session.local, move |l| {
            let mut out = Vec::with_capacity(work.len());
            for (subject, origin, body, delivered) in &work {
                out.push(apply_one(
                    l,
                    &host,
                    subject,
                    origin.as_deref(),
                    body,
                    *delivered,
                    max_deliveries,
                ));
            }
            Ok(out)
        })
        .await?;
        let mut spans = Vec::new();
        for (m, res) in msgs.iter().zip(results) {
            let verdict = match res {
                Ok((applied, origin)) => {
                    if let (Some(span), Some(origin)) = (applied.span, origin) {
                        spans.push((origin, span));
                    }
                    applied.verdict
                }
                Err(e) => {
                    crate::output::warn(&format!(
                        "bridge: cannot apply a message ({e}); it is redelivered"
                    ));
                    Verdict::Nak(DEFAULT_RETRY)
                }
            };
            let ack = match verdict {
                Verdict::Ack => {
                    session.received.fetch_add(1, Ordering::SeqCst);
                    m.ack().await
                }
                Verdict::Nak(d) => m.ack_with(AckKind::Nak(Some(d))).await,
                Verdict::Term => m.ack_with(AckKind::Term).await,
            };
            if let Err(e) = ack {
                crate::output::warn(&format!(
                    "bridge: cannot ack ({e}); the message comes again and is recognised"
                ));
            }
        }
        super::spans::publish_all(&session, spans).await;
    }
    Ok(())
}

/// Applies one fetched message; the origin host with the result.
fn apply_one(
    l: &mut super::Local,
    me: &str,
    subject: &str,
    origin: Option<&str>,
    body: &[u8],
    delivered: i64,
    max_deliveries: u32,
) -> Result<(Applied, Option<String>)> {
    let (ctx, st, _) = l.parts();
    let now = ctx.clock.now_ms();
    match super::wire::parse_inbound(me, subject) {
        Some(super::wire::Inbound::Span) => {
            let span: Span = serde_json::from_slice(body)
                .map_err(|e| Error::Data(format!("bridge: a span update is not one: {e}")))?;
            super::spans::apply(ctx, &span, now)?;
            Ok((
                Applied {
                    verdict: Verdict::Ack,
                    span: None,
                },
                None,
            ))
        }
        Some(super::wire::Inbound::Message(ep)) => {
            let origin = origin.unwrap_or("unknown").to_string();
            let msg = Incoming {
                endpoint: &ep,
                origin: &origin,
                body,
                delivered,
            };
            let applied = apply(ctx, st, me, &msg, max_deliveries, now)?;
            if let Ok(env) = Envelope::parse(body)
                && applied.verdict == Verdict::Ack
            {
                st.set_peer(&origin, &env.id, now)?;
            }
            Ok((applied, Some(origin)))
        }
        None => Ok((
            Applied {
                verdict: Verdict::Term,
                span: None,
            },
            None,
        )),
    }
}
