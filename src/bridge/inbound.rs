//! The inbound side: one message from the stream, applied here through the
//! local send pipeline (its hop, budgets and TTL, access rules with the
//! remote `from` taken as a claim, rate limits, breakers, backpressure),
//! at most once per (id, endpoint) however often it is redelivered. The
//! result is what JetStream is told: ack, nak with a delay, or term.

use std::time::Duration;

use crate::bridge::wire::{Span, SpanState, Spans};
use crate::context::Ctx;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::maildir::Mailbox;
use crate::notice;
use crate::pipeline::{self, Delivery, Durability, Fate, Job};
use crate::store::bridge::State;
use crate::store::journal::Outbox;
use crate::store::rows::SentRow;
use crate::vocab::Status;
use crate::vocab::{Code, EventKind};

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
    /// Temporary refusals it may have before it is dead-lettered here.
    pub max_deliveries: u32,
}

/// What a fetched batch's messages are checked against, read once for it.
struct Batch {
    /// The access rules.
    rules: crate::access::Rules,
    /// The remote endpoints (a proxy here is no place to deliver to).
    remotes: super::directory::Remotes,
    /// Whether each endpoint named so far is a local one.
    endpoints: std::collections::HashMap<String, bool>,
    /// (endpoint, id) of the messages so far.
    seen: std::collections::HashSet<(String, String)>,
}

/// The first half of applying a message: decided already, or the envelope
/// to hand to the pipeline (its hop into the proxy undone).
enum Step {
    Done(Applied),
    Deliver(Box<Envelope>),
}

/// Decides what needs no delivery: not an envelope, seen before (also
/// earlier in the same batch), no such endpoint here, refused by the access
/// rules; otherwise the envelope to deliver.
fn prepare(
    ctx: &mut Ctx,
    st: &State,
    me: &str,
    msg: &Incoming<'_>,
    batch: &mut Batch,
    now: u64,
) -> Result<Step> {
    let ep = msg.endpoint;
    let done = |verdict| {
        Ok(Step::Done(Applied {
            verdict,
            span: None,
        }))
    };
    let mut env = match Envelope::parse(msg.body) {
        Ok(e) if crate::maildir::validate_id(&e.id).is_ok() => e,
        // Nothing to deliver and no id to report about: dropped, said once.
        Ok(_) | Err(_) => {
            crate::output::warn(&format!(
                "bridge: a message from '{}' for '{ep}' is not a relay envelope; dropped",
                msg.origin
            ));
            return done(Verdict::Term);
        }
    };
    let first_in_batch = batch.seen.insert((ep.to_string(), env.id.clone()));
    // Only a redelivery, or a pair whose batch a bridge did not finish
    // recording, can be here without being recorded as applied: only those
    // cost a look at the Maildir and the index.
    let here = |ctx: &mut Ctx| -> Result<bool> {
        if st.is_applied(ep, &env.id)? {
            return Ok(true);
        }
        let unsure = msg.delivered > 1 || st.is_applying(ep, &env.id)?;
        Ok(unsure && already_here(ctx, ep, &env.id)?)
    };
    if !first_in_batch || here(ctx)? {
        st.mark_applied(ep, &env.id, msg.origin, SpanState::Retrying, now)?;
        // Seen again (a publish repeated after JetStream's dedup window):
        // acked, not delivered twice, and said.
        let mut out = Outbox::default();
        out.event(
            &crate::store::rows::Event {
                kind: EventKind::BridgeDuplicate,
                sender: Some(&env.from),
                endpoint: Some(ep),
                message_id: Some(&env.id),
                detail: serde_json::json!({ "origin": msg.origin, "delivered": msg.delivered }),
            },
            now,
        );
        out.flush(ctx.home.root())?;
        return done(Verdict::Ack);
    }
    // The sending host took this hop into its proxy; it is taken again
    // here, under this host's clock and rules: one hop per crossing.
    if env.budget.ancestor_chain.last().map(String::as_str) == Some(ep) {
        env.budget.ancestor_chain.pop();
        env.budget.hop_count = env.budget.hop_count.saturating_sub(1);
        env.budget.call_budget_remaining = env.budget.call_budget_remaining.saturating_add(1);
    }
    let here = *batch.endpoints.entry(ep.to_string()).or_insert_with(|| {
        Mailbox::at(&ctx.home, ep).is_endpoint() && !batch.remotes.contains_key(ep)
    });
    let refusal = if !here {
        Some((
            Code::NoMatch,
            format!("no endpoint '{ep}' on host '{me}' (removed, or never there)"),
        ))
    } else {
        batch
            .rules
            .check(&env.from, &env.subject)
            .err()
            .map(|e| (Code::AccessDenied, e.to_string()))
    };
    if let Some((code, reason)) = refusal {
        dead_letter(ctx, &env, ep, code, &reason, now)?;
        st.mark_applied(ep, &env.id, msg.origin, SpanState::Retrying, now)?;
        return done(Verdict::Term);
    }
    Ok(Step::Deliver(Box::new(env)))
}

/// The second half: what the pipeline made of `env` at the message's
/// endpoint, as a verdict.
fn finish(
    ctx: &mut Ctx,
    st: &State,
    me: &str,
    msg: &Incoming<'_>,
    env: &Envelope,
    outcome: Result<Delivery>,
    now: u64,
) -> Result<Applied> {
    let ep = msg.endpoint;
    let id = &env.id;
    let mut delivered = false;
    // (code, reason, retry-after) of a refusal for now.
    let temporary = match outcome {
        Ok(Delivery::Duplicate(_)) => None,
        Ok(Delivery::Done { fates, .. }) => match fates.into_iter().next() {
            Some((_, Fate::Delivered(..))) => {
                delivered = true;
                None
            }
            None => None,
            Some((_, Fate::DeadLettered(..))) => {
                // The pipeline dead-lettered it and sent the notice.
                st.mark_applied(ep, id, msg.origin, SpanState::Retrying, now)?;
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
        }) => Some((Code::RateLimited, message, retry_after_ms)),
        Err(e @ (Error::Locked(_) | Error::Io { .. } | Error::Full(_) | Error::Store(_))) => {
            Some((Code::IoError, e.to_string(), None))
        }
        Err(e) => return Err(e),
    };
    let Some((code, reason, retry)) = temporary else {
        st.mark_applied(ep, id, msg.origin, SpanState::Retrying, now)?;
        // The delivery is told at once, not when the report loop next
        // looks (it looks at claims, acks and dead letters).
        return Ok(Applied {
            verdict: Verdict::Ack,
            span: delivered.then(|| Span {
                message_id: id.clone(),
                endpoint: ep.to_string(),
                host: me.to_string(),
                state: SpanState::Delivered,
                code: None,
                reason: None,
                at: now,
            }),
        });
    };
    if u32::try_from(msg.delivered).unwrap_or(u32::MAX) >= msg.max_deliveries {
        let why = format!(
            "refused {} times, the last time for: {reason}",
            msg.delivered
        );
        dead_letter(ctx, env, ep, Code::MaxDeliveries, &why, now)?;
        st.mark_applied(ep, id, msg.origin, SpanState::Retrying, now)?;
        return Ok(Applied {
            verdict: Verdict::Term,
            span: None,
        });
    }
    st.clear_applying(ep, id)?;
    let delay = retry
        .map_or(DEFAULT_RETRY, Duration::from_millis)
        .clamp(Duration::from_millis(50), MAX_RETRY);
    Ok(Applied {
        verdict: Verdict::Nak(delay),
        // Said once, not on every redelivery.
        span: (msg.delivered <= 1).then(|| Span {
            message_id: id.clone(),
            endpoint: ep.to_string(),
            host: me.to_string(),
            state: SpanState::Retrying,
            code: Some(code.to_string()),
            reason: Some(reason),
            at: now,
        }),
    })
}

/// Whether the copy is here already: in the mailbox, or in the index as
/// claimed, acked or dead-lettered (a crash after the delivery, before the
/// bridge recorded it; asked only of a redelivery or a pair left
/// `applying`). An index row without its file in `new/` is a
/// delivery that never became visible, so it does not count.
fn already_here(ctx: &mut Ctx, ep: &str, id: &str) -> Result<bool> {
    let mb = Mailbox::at(&ctx.home, ep);
    if ["new", "cur", "failed"].iter().any(|s| mb.has(s, id)) {
        return Ok(true);
    }
    let status = ctx.store()?.status(ep, id)?;
    Ok(status.is_some_and(|s| s != Status::Pending))
}

/// Dead-letters `env` at `ep` (in its `failed/`), with the notice to its
/// `replyTo` and the index row.
fn dead_letter(
    ctx: &mut Ctx,
    env: &Envelope,
    ep: &str,
    code: Code,
    reason: &str,
    now: u64,
) -> Result<()> {
    let mb = Mailbox::at(&ctx.home, ep);
    mb.dead_letter(env, reason, code, now)?;
    let mut out = Outbox::default();
    out.dead_letter(
        &SentRow {
            endpoint: ep,
            envelope: env,
            failure: Some((code, reason)),
            probe: false,
        },
        now,
    );
    // Its send on the origin exited 0: a `no_match` here gets a notice too.
    if let Some(sent) = notice::send_accepted(&ctx.home, env, ep, code, reason, now)? {
        notice::record(&mut out, &sent, now);
    }
    out.flush(ctx.home.root()).map(|_| ())
}

/// Messages fetched per round.
const FETCH: usize = 512;
/// How long the server holds a fetch open while there is nothing to fetch.
const FETCH_EXPIRY: Duration = Duration::from_millis(500);

/// Consumes this host's filter subject until a stop: messages go through
/// `apply`, span updates through `spans::apply`; each is acked, nakked
/// with a delay, or termed as its result says.
pub async fn run_loop(
    session: std::sync::Arc<super::shared::Session>,
    consumer: async_nats::jetstream::consumer::PullConsumer,
) -> Result<()> {
    use async_nats::jetstream::AckKind;
    use std::sync::atomic::Ordering;
    let me = session.settings.host.clone();
    let max_deliveries = session.settings.max_deliveries;
    // The next batch is fetched while this one is applied and acked.
    let mut next = tokio::spawn(fetch(consumer.clone()));
    while !session.stopping() {
        let fetched = match (&mut next).await {
            Ok(f) => f,
            Err(e) => Err(format!("the fetch task failed: {e}")),
        };
        next = tokio::spawn(fetch(consumer.clone()));
        let msgs = match fetched {
            Ok(m) => m,
            Err(e) => {
                crate::output::warn(&format!(
                    "bridge: cannot fetch from the stream ({e}); trying again"
                ));
                session.pause(Duration::from_millis(500)).await;
                continue;
            }
        };
        if msgs.is_empty() {
            continue;
        }
        // Owned copies for the blocking side.
        let work: Vec<Fetched> = msgs
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
        let results = super::shared::blocking(&session.local, move |l| {
            apply_batch(l, &host, &work, max_deliveries)
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
        if let Err(e) = super::spans::publish_and_record(&session, spans).await {
            crate::output::warn(&format!("bridge: spans: {e}"));
        }
    }
    // What it fetched comes again to the next run (after the ack wait).
    next.abort();
    Ok(())
}

/// One fetch of up to `FETCH` messages: what is there, or after waiting up
/// to `FETCH_EXPIRY` for the first, none.
async fn fetch(
    consumer: async_nats::jetstream::consumer::PullConsumer,
) -> std::result::Result<Vec<async_nats::jetstream::Message>, String> {
    use futures_util::StreamExt;
    let mut batch = consumer
        .fetch()
        .max_messages(FETCH)
        .expires(FETCH_EXPIRY)
        .messages()
        .await
        .map_err(|e| e.to_string())?;
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
    Ok(msgs)
}

/// One fetched message: subject, origin header, body, delivery count.
type Fetched = (String, Option<String>, Vec<u8>, i64);

/// What became of one fetched message, with the origin host to report to.
type Outcome = Result<(Applied, Option<String>)>;

/// Applies a fetched batch: span updates in one index transaction, messages
/// through one run of the pipeline with one group commit (the batch log),
/// so a batch costs one fsync, not one per message. The pairs to deliver
/// are recorded as `applying` before the delivery and as applied after
/// it, so a crash between the two is recognised on the redelivery. One
/// outcome per message, in order.
fn apply_batch(
    l: &mut super::shared::Local,
    me: &str,
    work: &[Fetched],
    max_deliveries: u32,
) -> Result<Vec<Outcome>> {
    use super::wire::{Inbound, parse_inbound};
    let (ctx, st, _) = l.parts();
    let now = ctx.clock.now_ms();
    let mut batch = Batch {
        rules: crate::access::Rules::load(&ctx.home.root().join(crate::access::FILE_NAME)),
        remotes: super::directory::remotes(&ctx.home),
        endpoints: std::collections::HashMap::new(),
        seen: std::collections::HashSet::new(),
    };
    let mut out: Vec<Option<Outcome>> = Vec::with_capacity(work.len());
    // (index in `work`, endpoint, origin, the envelope as prepared)
    let mut pending: Vec<(usize, String, String, Envelope)> = Vec::new();
    let mut jobs = Vec::new();
    // (index in `work`, the span updates it carries)
    let mut spans: Vec<(usize, Vec<Span>)> = Vec::new();
    let term = || {
        Some(Ok((
            Applied {
                verdict: Verdict::Term,
                span: None,
            },
            None,
        )))
    };
    // What needs no delivery is decided and recorded, and what does is
    // marked `applying`, in one transaction of the bridge database; given
    // up (its pairs not recorded) if anything fails: each then comes again.
    st.atomically(|st| {
        for (i, (subject, origin, body, delivered)) in work.iter().enumerate() {
            let origin = origin.clone().unwrap_or_else(|| "unknown".to_string());
            let step = match parse_inbound(me, subject) {
                Some(Inbound::Span) => match serde_json::from_slice::<Spans>(body) {
                    // Applied below, all of the batch's in one transaction.
                    Ok(updates) => {
                        spans.push((i, updates.into_vec()));
                        None
                    }
                    // It can never be applied: dropped, said once.
                    Err(e) => {
                        crate::output::warn(&format!(
                            "bridge: a span update from '{origin}' is not one ({e}); dropped"
                        ));
                        term()
                    }
                },
                Some(Inbound::Message(ep)) => {
                    let msg = Incoming {
                        endpoint: &ep,
                        origin: &origin,
                        body,
                        delivered: *delivered,
                        max_deliveries,
                    };
                    match prepare(ctx, st, me, &msg, &mut batch, now) {
                        Ok(Step::Done(a)) => Some(Ok((a, Some(origin.clone())))),
                        Ok(Step::Deliver(env)) => {
                            st.mark_applying(&ep, &env.id)?;
                            jobs.push(Job::new((*env).clone(), vec![ep.clone()], None));
                            pending.push((i, ep, origin.clone(), *env));
                            None
                        }
                        Err(e) => Some(Err(e)),
                    }
                }
                None => term(),
            };
            out.push(step);
        }
        Ok(())
    })?;
    if !spans.is_empty() {
        let (at, updates): (Vec<usize>, Vec<Vec<Span>>) = spans.into_iter().unzip();
        let updates: Vec<Span> = updates.into_iter().flatten().collect();
        let res = super::spans::apply_all(ctx, &updates, now);
        for i in at {
            out[i] = Some(match &res {
                Ok(()) => Ok((
                    Applied {
                        verdict: Verdict::Ack,
                        span: None,
                    },
                    None,
                )),
                // Nothing of them was applied: each comes again.
                Err(e) => Err(Error::Store(e.to_string())),
            });
        }
    }
    if !jobs.is_empty() {
        let mut log = crate::store::batchlog::Log::new();
        let durability = match &mut log {
            Some(log) => Durability::Logged(log),
            None => Durability::PerMessage,
        };
        let ran = pipeline::deliver(ctx, &mut jobs, durability, now);
        // What became of each delivery, recorded in one more transaction;
        // given up if anything fails: the pairs stay `applying`, and their
        // redeliveries are looked for in the Maildir and the index.
        st.atomically(|st| {
            for ((i, ep, origin, env), job) in pending.into_iter().zip(jobs.iter_mut()) {
                let outcome = match &ran {
                    Ok(()) => job.take_result(),
                    // Nothing of the batch was delivered: each is tried again.
                    Err(e) => Err(Error::Store(e.to_string())),
                };
                let (_, _, body, delivered) = &work[i];
                let msg = Incoming {
                    endpoint: &ep,
                    origin: &origin,
                    body,
                    delivered: *delivered,
                    max_deliveries,
                };
                let res = finish(ctx, st, me, &msg, &env, outcome, now);
                if res.as_ref().is_ok_and(|a| a.verdict == Verdict::Ack) {
                    st.set_peer(&origin, &env.id, now)?;
                }
                out[i] = Some(res.map(|a| (a, Some(origin))));
            }
            Ok(())
        })?;
    }
    Ok(out
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err(Error::Data("bridge: a message was not applied".into()))))
        .collect())
}
