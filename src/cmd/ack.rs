//! `relay ack` and `relay nack`: finish claimed messages, successfully
//! (removed from `cur/`) or not (dead-lettered to `failed/` with a reason).

use serde::Serialize;
use serde_json::Value;

use crate::breaker::Event as BreakerEvent;
use crate::cli::{AckArgs, NackArgs};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::maildir::{self, AckOutcome, Mailbox};
use crate::output;
use crate::store::Status;
use crate::{notice, reliability};

/// Longest accepted nack reason.
const MAX_REASON: usize = 4096;

/// `--json` result of ack/nack.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct DoneReport {
    endpoint: String,
    acked: Vec<String>,
    nacked: Vec<String>,
    already_done: Vec<String>,
}

/// Runs `relay ack`.
pub fn ack(ctx: &mut Ctx, args: &AckArgs) -> Result<()> {
    finish(ctx, &args.endpoint, &args.ids, None)
}

/// Runs `relay nack`.
pub fn nack(ctx: &mut Ctx, args: &NackArgs) -> Result<()> {
    if args.reason.len() > MAX_REASON {
        return Err(Error::Data(format!(
            "--reason is {} bytes; keep it under {MAX_REASON}",
            args.reason.len()
        )));
    }
    finish(ctx, &args.endpoint, &args.ids, Some(&args.reason))
}

/// Finishes one claimed message for a consumer (`recv --ack`, `--exec`):
/// acks it (`reason` None) or nacks it, durably, and records the outcome
/// (index, breaker, failure notice). Returns false if it was no longer in `cur/`.
pub fn settle(ctx: &mut Ctx, mb: &Mailbox, id: &str, reason: Option<&str>) -> Result<bool> {
    let now = ctx.clock.now_ms();
    let done = finish_file(mb, id, reason, now)?;
    if done {
        if reason.is_none() {
            crate::home::sync_dir(&mb.sub("cur"))?;
        }
        record(ctx, &mb.name, &[id.to_string()], reason, now)?;
    }
    Ok(done)
}

/// Removes `cur/<id>` (ack, `reason` None) or dead-letters it with
/// `reason` (nack); false if it was not in `cur/`.
fn finish_file(mb: &Mailbox, id: &str, reason: Option<&str>, now: u64) -> Result<bool> {
    Ok(match reason {
        None => mb.ack(id)? == AckOutcome::Removed,
        Some(r) => mb.fail(id, Value::Null, r, "nack", now)?,
    })
}

/// Records finished messages in the index and feeds their outcome to the
/// (sender, endpoint) breaker: an ack is a success, a nack a failure.
fn record(
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
                notices.extend(notice::send(&ctx.home, &env, endpoint, "nack", r, now)?);
            }
        }
    }
    let tx = ctx.store()?.begin()?;
    for n in &notices {
        notice::record(&tx, n, now)?;
    }
    for id in ids {
        let row = tx.row(endpoint, id)?;
        match reason {
            None => tx.record_done(endpoint, id, Status::Acked, None, now)?,
            Some(r) => {
                let sender = row.as_ref().map(|r| r.sender.as_str());
                tx.dead_lettered(sender, endpoint, id, "nack", r, now)?;
            }
        }
        // A message the index never saw has no known sender: no pair to judge.
        if let Some(row) = row {
            let event = match reason {
                None => BreakerEvent::Success { probe: row.probe },
                Some(_) => BreakerEvent::Failure { probe: row.probe },
            };
            reliability::breaker_step(&tx, &breakers, &row.sender, endpoint, event, now)?;
        }
    }
    tx.commit()
}

/// Acks (`reason` None) or nacks every id; ids that cannot be finished are
/// reported together after the others are done.
fn finish(ctx: &mut Ctx, endpoint: &str, ids: &[String], reason: Option<&str>) -> Result<()> {
    let mb = Mailbox::open_endpoint(&ctx.home, endpoint)?;
    for id in ids {
        maildir::validate_id(id)?;
    }
    // Open the index before touching the Maildir: if it is unusable, fail
    // with nothing done rather than finish messages that cannot be recorded.
    ctx.store()?;
    let now = ctx.clock.now_ms();
    let mut report = DoneReport {
        endpoint: endpoint.to_string(),
        ..DoneReport::default()
    };
    let mut problems = Vec::new();
    for id in ids {
        if finish_file(&mb, id, reason, now)? {
            match reason {
                None => report.acked.push(id.clone()),
                Some(_) => report.nacked.push(id.clone()),
            }
            continue;
        }
        let status = ctx.store()?.status(endpoint, id)?;
        let wanted = if reason.is_some() { "failed" } else { "acked" };
        if status.as_deref() == Some(wanted) {
            report.already_done.push(id.clone());
        } else if mb.has("new", id) {
            problems.push(format!(
                "message '{id}' in '{endpoint}' is not claimed yet; claim it first with: relay recv {endpoint}"
            ));
        } else if mb.has("failed", id) {
            problems.push(format!(
                "message '{id}' in '{endpoint}' is already dead-lettered (failed/)"
            ));
        } else {
            problems.push(format!(
                "no claimed message '{id}' in '{endpoint}' (see its messages with: ls {})",
                mb.sub("cur").display()
            ));
        }
    }
    if !report.acked.is_empty() {
        crate::home::sync_dir(&mb.sub("cur"))?;
    }
    let (finished, status) = match reason {
        None => (&report.acked, Status::Acked),
        Some(_) => (&report.nacked, Status::Failed),
    };
    if !finished.is_empty() {
        record(ctx, endpoint, finished, reason, now)?;
    }
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
