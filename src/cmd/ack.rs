//! `relay ack` and `relay nack`: finish claimed messages, successfully
//! (removed from `cur/`) or not (dead-lettered to `failed/` with a reason).

use serde::Serialize;
use serde_json::Value;

use crate::breaker::Event as BreakerEvent;
use crate::cli::{AckArgs, NackArgs};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::lease::{self, Refusal};
use crate::maildir::{self, AckOutcome, Mailbox};
use crate::output;
use crate::store::journal::Outbox;
use crate::vocab::Code;
use crate::vocab::Status;
use crate::{notice, reliability};

/// Longest accepted nack reason.
const MAX_REASON: usize = 4096;

/// Runs `relay ack`.
pub fn ack(ctx: &mut Ctx, args: &AckArgs) -> Result<()> {
    // A one-shot ack may record through the journal (`consumer`).
    ctx.fast_consumer = true;
    finish(ctx, &args.endpoint, &args.ids, None, args.delivery_count)
}

/// Runs `relay nack`.
pub fn nack(ctx: &mut Ctx, args: &NackArgs) -> Result<()> {
    if args.reason.len() > MAX_REASON {
        return Err(Error::Data(format!(
            "--reason is {} bytes; keep it under {MAX_REASON}",
            args.reason.len()
        )));
    }
    finish(
        ctx,
        &args.endpoint,
        &args.ids,
        Some(&args.reason),
        args.delivery_count,
    )
}

/// How a consumer's finish of one claim went.
#[derive(Debug)]
pub enum Settled {
    /// Acked or nacked, durably, and recorded.
    Done,
    /// No longer in `cur/` (finished by someone else).
    Gone,
    /// Refused: the claim's lease ran out, or it was redelivered (why).
    Refused(String),
}

/// Finishes one claimed message for a consumer (`recv --ack`, `--exec`)
/// that holds it at delivery `held` (its `deliveryCount`): acks it
/// (`reason` None) or nacks it, durably, and records the outcome (index,
/// breaker, failure notice), unless its lease ran out (then it goes back
/// to `new/`) or it was redelivered since.
pub fn settle(
    ctx: &mut Ctx,
    mb: &Mailbox,
    id: &str,
    reason: Option<&str>,
    held: Option<u32>,
) -> Result<Settled> {
    let now = ctx.clock.now_ms();
    let default_ms = lease::default_ms(&ctx.config);
    let row = ctx.store()?.claim_row(&mb.name, id)?;
    let verb = if reason.is_some() { "nack" } else { "ack" };
    let done = {
        let _lock = mb.lock()?;
        if let Some(refusal) =
            lease::check_holder(mb, id, row.as_ref(), held, verb, default_ms, now)
        {
            Err(refusal)
        } else {
            Ok(finish_file(mb, id, reason, now)?)
        }
    };
    match done {
        Ok(false) => Ok(Settled::Gone),
        Ok(true) => {
            if reason.is_none() {
                crate::home::sync_dir(&mb.sub("cur"))?;
            }
            record(ctx, &mb.name, &[id.to_string()], reason, now)?;
            Ok(Settled::Done)
        }
        Err(refusal) => {
            if matches!(refusal, Refusal::RanOut(_)) {
                lease::sweep(ctx, mb, now)?;
            }
            Ok(Settled::Refused(refusal.message().to_string()))
        }
    }
}

/// Removes `cur/<id>` (ack, `reason` None) or dead-letters it with
/// `reason` (nack); false if it was not in `cur/`.
fn finish_file(mb: &Mailbox, id: &str, reason: Option<&str>, now: u64) -> Result<bool> {
    Ok(match reason {
        None => mb.ack(id)? == AckOutcome::Removed,
        Some(r) => mb.fail(id, Value::Null, r, Code::Nack, now)?,
    })
}

/// `record_in_index`, for messages already finished in the mailbox (the
/// truth): a disk too full for the index to record it does not undo or
/// fail the ack (a retry would find nothing to ack); it is a warning, and
/// `doctor --repair` brings the index in line once there is room.
fn record(
    ctx: &mut Ctx,
    endpoint: &str,
    ids: &[String],
    reason: Option<&str>,
    now: u64,
) -> Result<()> {
    match record_in_index(ctx, endpoint, ids, reason, now) {
        Err(e) if e.is_full() => {
            output::warn(&format!(
                "{} message(s) {} in '{endpoint}', but the index could not record it: {e}; once there is room, relay doctor --repair brings the index in line",
                ids.len(),
                if reason.is_some() { "nacked" } else { "acked" }
            ));
            Ok(())
        }
        other => other,
    }
}

/// Records finished messages in the index and feeds their outcome to the
/// (sender, endpoint) breaker: an ack is a success, a nack a failure.
fn record_in_index(
    ctx: &mut Ctx,
    endpoint: &str,
    ids: &[String],
    reason: Option<&str>,
    now: u64,
) -> Result<()> {
    let breakers = ctx.config.reliability.circuit_breaker.clone();
    // Failure notices go out (to the Maildir) before the index records them.
    let mut notices = Vec::new();
    if let Some(r) = reason {
        let mb = Mailbox::at(&ctx.home, endpoint);
        for id in ids {
            if let Some(env) = mb.read_envelope("failed", id) {
                notices.extend(notice::send(&ctx.home, &env, endpoint, Code::Nack, r, now)?);
            }
        }
    }
    let mut tx = ctx.store()?.begin()?;
    let mut out = Outbox::default();
    for n in &notices {
        notice::record(&mut out, n, now);
    }
    tx.record(&mut out)?;
    for id in ids {
        let row = tx.row(endpoint, id)?;
        match reason {
            None => tx.record_done(endpoint, id, Status::Acked, None, now)?,
            Some(r) => {
                let sender = row.as_ref().map(|r| r.sender.as_str());
                tx.dead_lettered(sender, endpoint, id, Code::Nack, r, now)?;
            }
        }
        // A message the index never saw has no known sender: no pair to judge.
        if let Some(row) = row {
            let event = match reason {
                None => BreakerEvent::Success { probe: row.probe },
                Some(_) => BreakerEvent::Failure { probe: row.probe },
            };
            let sender = &row.sender;
            reliability::breaker_step(
                &mut tx.slots,
                &mut out,
                &breakers,
                sender,
                endpoint,
                event,
                now,
            )?;
            tx.record(&mut out)?;
        }
    }
    tx.refresh_claims_due(Some(endpoint))?;
    tx.commit()
}

/// Acks (`reason` None) or nacks every id held at delivery `held` (if
/// given); ids that cannot be finished are reported together after the
/// others are done. Claims whose lease ran out are refused and go back to
/// `new/` for redelivery.
fn finish(
    ctx: &mut Ctx,
    endpoint: &str,
    ids: &[String],
    reason: Option<&str>,
    held: Option<u32>,
) -> Result<()> {
    let (report, problems) = finish_ids(ctx, endpoint, ids, reason, held)?;
    let status = match reason {
        None => Status::Acked,
        Some(_) => Status::Failed,
    };
    for id in &report.already_done {
        output::warn(&format!(
            "message '{id}' in '{endpoint}' was already {}",
            status.as_str()
        ));
    }
    if ctx.json {
        output::json_line(&report)?;
    }
    match problems.len() {
        0 => Ok(()),
        _ => Err(Error::Data(problems.join("; "))),
    }
}

/// What [`finish_ids`] did: ids acked, nacked, found done already.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finished {
    /// The endpoint.
    pub endpoint: String,
    /// Acked now.
    pub acked: Vec<String>,
    /// Nacked (dead-lettered) now.
    pub nacked: Vec<String>,
    /// Acked or nacked before.
    pub already_done: Vec<String>,
}

/// Acks (`reason` None) or nacks claimed messages `ids` of `endpoint` as
/// `relay ack` / `relay nack` do; what was done, and why the others could
/// not be (also `relay serve`'s `POST .../ack` and `.../nack`).
pub fn finish_ids(
    ctx: &mut Ctx,
    endpoint: &str,
    ids: &[String],
    reason: Option<&str>,
    held: Option<u32>,
) -> Result<(Finished, Vec<String>)> {
    if let Some(r) = reason
        && r.len() > MAX_REASON
    {
        return Err(Error::Data(format!(
            "the reason is {} bytes; keep it under {MAX_REASON}",
            r.len()
        )));
    }
    let mb = Mailbox::open_endpoint(&ctx.home, endpoint)?;
    for id in ids {
        maildir::validate_id(id)?;
    }
    let mut report = Finished {
        endpoint: endpoint.to_string(),
        ..Finished::default()
    };
    // Acks of claims that need nothing of the index (see `consumer`); the
    // rest (another program removed one meanwhile) go the indexed way.
    let distinct = ids.iter().collect::<std::collections::HashSet<_>>().len() == ids.len();
    let mut ids = ids.to_vec();
    if reason.is_none() && distinct && ids.iter().all(|id| mb.has("cur", id)) {
        let held_ids: Vec<_> = ids.iter().map(|id| (id.clone(), held)).collect();
        let now = ctx.clock.now_ms();
        if let Some(acked) = crate::consumer::ack(ctx, &mb, &held_ids, now, false)? {
            ids.retain(|id| !acked.contains(id));
            report.acked = acked;
            if ids.is_empty() {
                return Ok((report, Vec::new()));
            }
        }
    }
    let ids = &ids;
    // Open the index before touching the Maildir: if it is unusable, fail
    // with nothing done rather than finish messages that cannot be recorded.
    ctx.store()?;
    let now = ctx.clock.now_ms();
    let fast_acked = report.acked.len();
    let mut problems = Vec::new();
    let (verb, default_ms) = (
        if reason.is_some() { "nack" } else { "ack" },
        lease::default_ms(&ctx.config),
    );
    let mut ran_out = false;
    // The mailbox lock keeps a sweep from giving a claim back while it is
    // checked and finished here.
    let lock = mb.lock()?;
    for id in ids {
        let row = ctx.store()?.claim_row(endpoint, id)?;
        if mb.has("cur", id)
            && let Some(refusal) =
                lease::check_holder(&mb, id, row.as_ref(), held, verb, default_ms, now)
        {
            ran_out |= matches!(refusal, Refusal::RanOut(_));
            problems.push(refusal.message().to_string());
            continue;
        }
        if finish_file(&mb, id, reason, now)? {
            match reason {
                None => report.acked.push(id.clone()),
                Some(_) => report.nacked.push(id.clone()),
            }
            continue;
        }
        let status = row.as_ref().map(|r| r.status);
        let wanted = if reason.is_some() {
            Status::Failed
        } else {
            Status::Acked
        };
        if status == Some(wanted) {
            report.already_done.push(id.clone());
        } else if let Some(note) = lease::gone_note(row.as_ref()) {
            problems.push(format!(
                "{verb} of message '{id}' in '{endpoint}' refused: {note}"
            ));
        } else if mb.has("new", id) {
            problems.push(format!(
                "message '{id}' in '{endpoint}' is not claimed yet; claim it first with: relay recv {endpoint}"
            ));
        } else if mb.has("failed", id) {
            let code = mb.read_reason(id).and_then(|r| r.code);
            let why = match code.as_deref() {
                Some(c) if c == Code::MaxDeliveries.as_str() => {
                    " as max_deliveries: its lease ran out too many times".to_string()
                }
                Some(c) => format!(" ({c})"),
                None => String::new(),
            };
            problems.push(format!(
                "message '{id}' in '{endpoint}' is already dead-lettered{why} (failed/)"
            ));
        } else {
            problems.push(format!(
                "no claimed message '{id}' in '{endpoint}' (see its messages with: ls {})",
                mb.sub("cur").display()
            ));
        }
    }
    drop(lock);
    if ran_out {
        lease::sweep(ctx, &mb, now)?;
    }
    if report.acked.len() > fast_acked {
        crate::home::sync_dir(&mb.sub("cur"))?;
    }
    let finished = match reason {
        None => &report.acked[fast_acked..],
        Some(_) => &report.nacked[..],
    };
    if !finished.is_empty() {
        record(ctx, endpoint, finished, reason, now)?;
    }
    Ok((report, problems))
}
