//! The delivery model (SPEC §2). Every claim not made with `recv --ack`
//! holds a lease. A claim whose lease ran out (its consumer crashed, hung
//! or forgot) goes back to `new/` with the envelope's `deliveryCount`
//! raised, counts as a failure against its (sender, endpoint) breaker and
//! is recorded (`lease_expired`, `redelivered`); once `deliveryCount`
//! reaches `delivery.maxDeliveries` it is dead-lettered as
//! `max_deliveries` with a failure notice instead. There is no daemon:
//! `recv`, `gc` and consumers sweep an endpoint when they next run, and an
//! ack or nack of a claim whose lease ran out is refused.
//!
//! A claim's deadline is the one the index recorded when it was made. A
//! claim the index does not know (made by another program, or the index
//! was rebuilt) runs out the default lease after its rename into `cur/`.
//! The count lives in the message file, so it survives an index rebuild.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;

use crate::breaker::Event as BreakerEvent;
use crate::clock::{human_ms, iso8601};
use crate::config::{CircuitBreaker, Config};
use crate::context::Ctx;
use crate::envelope::Envelope;
use crate::error::Result;
use crate::maildir::Mailbox;
use crate::store::index::Tx;
use crate::store::journal::Outbox;
use crate::store::rows::{ClaimRow, Event};
use crate::store::state::Locked;
use crate::vocab::Status;
use crate::vocab::{Code, EventKind};
use crate::{notice, output, reliability};

/// The dead-letter code of a message whose leases ran out too often.
const MAX_DELIVERIES: Code = Code::MaxDeliveries;

/// The default lease (`delivery.leaseSecs`), in ms.
#[must_use]
pub fn default_ms(cfg: &Config) -> u64 {
    cfg.delivery.lease_secs.saturating_mul(1000)
}

/// The lease of a claim made now, in ms: `--lease`, else the default;
/// `None` for an at-most-once claim (`--ack`), acked as soon as it is made.
#[must_use]
pub fn of_claim(cfg: &Config, at_most_once: bool, lease: Option<Duration>) -> Option<u64> {
    (!at_most_once).then(|| lease.map_or_else(|| default_ms(cfg), crate::clock::ms))
}

/// When the claim of `id` in `mb` runs out: the deadline the index
/// recorded for it, else its rename into `cur/` plus `default_ms`. `None`
/// if it is not in `cur/`.
#[must_use]
pub fn deadline(mb: &Mailbox, id: &str, row: Option<&ClaimRow>, default_ms: u64) -> Option<u64> {
    row.filter(|r| r.status == Status::Claimed)
        .and_then(|r| r.lease_until)
        .or_else(|| mb.claimed_at(id).map(|at| at.saturating_add(default_ms)))
}

/// Why the holder's ack or nack of a claim is refused.
#[derive(Debug)]
pub enum Refusal {
    /// The lease ran out; the message is due for redelivery (sweep it).
    RanOut(String),
    /// The message was redelivered since the holder's claim, which is gone.
    Redelivered(String),
}

impl Refusal {
    /// The user-facing sentence.
    #[must_use]
    pub fn message(&self) -> &str {
        match self {
            Refusal::RanOut(m) | Refusal::Redelivered(m) => m,
        }
    }
}

/// Checks that `cur/<id>` is still the claim of the one finishing it (the
/// `verb`): its lease has not run out, and, if the holder says which
/// delivery it holds (`held`, the `deliveryCount` it received), the
/// message was not redelivered since.
#[must_use]
pub fn check_holder(
    mb: &Mailbox,
    id: &str,
    row: Option<&ClaimRow>,
    held: Option<u32>,
    verb: &str,
    default_ms: u64,
    now: u64,
) -> Option<Refusal> {
    let ep = &mb.name;
    if let Some(held) = held
        && let Some(env) = mb.read_envelope("cur", id)
        && env.delivery_count != held
    {
        return Some(Refusal::Redelivered(format!(
            "{verb} of message '{id}' in '{ep}' refused: it was redelivered since that claim (its deliveryCount is now {}, the claim had {held}); the current holder finishes it",
            env.delivery_count
        )));
    }
    let at = deadline(mb, id, row, default_ms)?;
    (at < now).then(|| {
        Refusal::RanOut(format!(
            "{verb} of message '{id}' in '{ep}' refused: its lease ran out at {} ({} ago); it goes back to new/ for redelivery",
            iso8601(at),
            human_ms(now - at)
        ))
    })
}

/// Why a message no longer in `cur/` cannot be finished, when its lease
/// running out explains it.
#[must_use]
pub fn gone_note(row: Option<&ClaimRow>) -> Option<String> {
    let row = row?;
    let at = row.lease_until.filter(|_| row.lease_counted)?;
    (row.status == Status::Pending)
        .then(|| format!("its lease ran out at {}; it was redelivered", iso8601(at)))
}

/// What a sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Claims given back to `new/`.
    pub redelivered: usize,
    /// Claims dead-lettered as `max_deliveries`.
    pub dead_lettered: usize,
}

/// Of the claims `ids` in `mb`, those whose lease ran out before `now`,
/// with their deadlines.
fn ran_out(
    mb: &Mailbox,
    ids: Vec<String>,
    rows: &HashMap<String, ClaimRow>,
    default_ms: u64,
    now: u64,
) -> Vec<(String, u64)> {
    ids.into_iter()
        .filter_map(|id| {
            let at = deadline(mb, &id, rows.get(&id), default_ms)?;
            (at < now).then_some((id, at))
        })
        .collect()
}

/// Whether, on the fast path, no claim in `mb` has run out before `now`,
/// decided without the index: no recorded lease there is past its
/// deadline (`claims_due`), and by the Maildir's clock (claimed at + the
/// default lease) none has run out either. `false` if the index must say.
pub fn none_due(ctx: &Ctx, mb: &Mailbox, now: u64) -> Result<bool> {
    if !ctx.may_skip_index() {
        return Ok(false);
    }
    let default_ms = default_ms(&ctx.config);
    if Locked::acquire(ctx.home.root())?
        .get()
        .claim_may_be_due(&mb.name, now)
    {
        return Ok(false);
    }
    Ok(mb.list("cur")?.iter().all(|id| {
        mb.claimed_at(id)
            .is_none_or(|at| at.saturating_add(default_ms) >= now)
    }))
}

/// The claims in `mb` whose lease ran out before `now`, as the index (read
/// outside any transaction) and the Maildir see them.
fn due_now(ctx: &mut Ctx, mb: &Mailbox, now: u64) -> Result<Vec<(String, u64)>> {
    let claimed = mb.count("cur")?;
    if claimed == 0 || none_due(ctx, mb, now)? {
        return Ok(Vec::new());
    }
    // As many leases to run as claims, none run out: nothing to look at
    // one by one (a claim without one shows as a difference in number).
    let (leases, earliest) = ctx.store()?.lease_summary(&mb.name)?;
    if leases == claimed && earliest.is_none_or(|at| at >= now) {
        return Ok(Vec::new());
    }
    let ids = mb.list("cur")?;
    let rows = ctx.store()?.claims(&mb.name, &ids)?;
    Ok(ran_out(mb, ids, &rows, default_ms(&ctx.config), now))
}

/// How many claims in `mb` have a lease that ran out before `now` (what a
/// sweep would move).
pub fn due(ctx: &mut Ctx, mb: &Mailbox, now: u64) -> Result<usize> {
    Ok(due_now(ctx, mb, now)?.len())
}

/// A claim a sweep moved out of `cur/`, for the index to record.
struct Moved {
    /// The envelope, its count raised.
    env: Envelope,
    /// When its lease ran out.
    ran_out: u64,
    /// The index row as seen when it was moved.
    row: Option<ClaimRow>,
    /// Dead-lettered (the reason) rather than given back.
    dead: Option<String>,
}

/// Gives back (or dead-letters) every claim in `mb` whose lease ran out
/// before `now`. Costs one directory count when nothing is claimed. The
/// files move under the mailbox lock; the index records it afterwards,
/// holding no mailbox lock (a busy index holds up no sender), and if it
/// cannot, says so and leaves the index behind the Maildir.
pub fn sweep(ctx: &mut Ctx, mb: &Mailbox, now: u64) -> Result<Swept> {
    let candidates = due_now(ctx, mb, now)?;
    if candidates.is_empty() {
        if ctx.fast_consumer && ctx.has_store() {
            // The index said what `claims_due` could not: bring it up to
            // date, so the next consumer need not ask again (best effort).
            let _ = ctx.store().and_then(|s| {
                let mut tx = s.begin()?;
                tx.refresh_claims_due(Some(&mb.name))?;
                tx.commit()
            });
        }
        return Ok(Swept::default());
    }
    let max = ctx.config.delivery.max_deliveries;
    let mut moved = Vec::new();
    let mut notices = Vec::new();
    {
        // Looked at again under the lock: an ack (which takes it too) or
        // another sweep may have come first.
        let _lock = mb.lock()?;
        let ids: Vec<String> = candidates.into_iter().map(|(id, _)| id).collect();
        let rows = ctx.store()?.claims(&mb.name, &ids)?;
        for (id, ran_out) in ran_out(mb, ids, &rows, default_ms(&ctx.config), now) {
            let Some(mut env) = mb.read_envelope("cur", &id) else {
                // Not an envelope: the next claim moves it aside as malformed.
                mb.unclaim(&id)?;
                continue;
            };
            env.delivery_count = env.delivery_count.saturating_add(1);
            let n = env.delivery_count;
            let dead = if n >= max {
                let reason = format!(
                    "its lease ran out {n} time(s), the most delivery.maxDeliveries allows ({max}); last at {}",
                    iso8601(ran_out)
                );
                let value = serde_json::to_value(&env).unwrap_or(serde_json::Value::Null);
                if !mb.fail(&id, value, &reason, MAX_DELIVERIES, now)? {
                    continue;
                }
                output::warn(&format!(
                    "message '{}' of '{}' dead-lettered ({MAX_DELIVERIES}): {reason}",
                    output::printable(&id),
                    mb.name
                ));
                notices.extend(notice::send(
                    &ctx.home,
                    &env,
                    &mb.name,
                    MAX_DELIVERIES,
                    &reason,
                    now,
                )?);
                Some(reason)
            } else {
                if !mb.redeliver(&env)? {
                    continue;
                }
                output::warn(&format!(
                    "message '{}' of '{}': its lease ran out at {}; back in new/ for delivery {} of at most {max}",
                    output::printable(&id),
                    mb.name,
                    iso8601(ran_out),
                    n + 1
                ));
                None
            };
            moved.push(Moved {
                row: rows.get(&id).cloned(),
                env,
                ran_out,
                dead,
            });
        }
    }
    let swept = Swept {
        redelivered: moved.iter().filter(|m| m.dead.is_none()).count(),
        dead_lettered: moved.iter().filter(|m| m.dead.is_some()).count(),
    };
    if !moved.is_empty()
        && let Err(e) = record(ctx, &mb.name, &moved, &notices, now)
    {
        output::warn(&format!(
            "cannot record in the index that {} claim(s) of '{}' ran out of their lease: {e}; the messages are where this says (the index catches up when they are next seen)",
            moved.len(),
            mb.name
        ));
    }
    Ok(swept)
}

/// Records what a sweep moved: leases counted against their breakers
/// (once each), rows pending again (unless claimed anew meanwhile) or
/// dead-lettered, `redelivered` events, failure notices.
fn record(
    ctx: &mut Ctx,
    endpoint: &str,
    moved: &[Moved],
    notices: &[notice::Sent],
    now: u64,
) -> Result<()> {
    let breakers = ctx.config.reliability.circuit_breaker.clone();
    let max = ctx.config.delivery.max_deliveries;
    let mut tx = ctx.store()?.begin()?;
    // Leases the index knows (it marks them counted) ...
    reliability::observe_leases(&mut tx, &breakers, Some(endpoint), now)?;
    for m in moved {
        let (env, row) = (&m.env, m.row.as_ref());
        // ... and those it had no deadline for.
        if row.is_none_or(|r| r.lease_until.is_none()) {
            count_unindexed(&mut tx, &breakers, endpoint, env, row, now)?;
        }
        match &m.dead {
            Some(reason) => {
                if row.is_none() {
                    tx.record_claimed(endpoint, &[env], None, now)?;
                }
                let sender = row.map_or(env.from.as_str(), |r| r.sender.as_str());
                tx.dead_lettered(Some(sender), endpoint, &env.id, MAX_DELIVERIES, reason, now)?;
            }
            None => {
                let seen = row.and_then(|r| r.lease_until);
                tx.record_redelivered(endpoint, env, m.ran_out, seen)?;
                tx.event(
                    &Event {
                        kind: EventKind::Redelivered,
                        sender: Some(&env.from),
                        endpoint: Some(endpoint),
                        message_id: Some(&env.id),
                        detail: json!({
                            "deliveryCount": env.delivery_count,
                            "maxDeliveries": max,
                            "leaseRanOutAt": iso8601(m.ran_out),
                        }),
                    },
                    now,
                )?;
            }
        }
    }
    let mut out = Outbox::default();
    for n in notices {
        notice::record(&mut out, n, now);
    }
    tx.record(&mut out)?;
    tx.refresh_claims_due(Some(endpoint))?;
    tx.commit()
}

/// Counts a lease the index had no deadline for (its claim was made by
/// another program, with `--ack`, or before a rebuild): the event, and a
/// failure of its pair if the index knows the sender.
fn count_unindexed(
    tx: &mut Tx<'_>,
    cfg: &CircuitBreaker,
    endpoint: &str,
    env: &Envelope,
    row: Option<&ClaimRow>,
    now: u64,
) -> Result<()> {
    tx.event(
        &Event {
            kind: EventKind::LeaseExpired,
            sender: Some(row.map_or(env.from.as_str(), |r| r.sender.as_str())),
            endpoint: Some(endpoint),
            message_id: Some(&env.id),
            detail: json!({}),
        },
        now,
    )?;
    if let Some(r) = row {
        let mut out = Outbox::default();
        reliability::breaker_step(
            &mut tx.slots,
            &mut out,
            cfg,
            &r.sender,
            endpoint,
            BreakerEvent::Failure { probe: r.probe },
            now,
        )?;
        tx.record(&mut out)?;
    }
    Ok(())
}
