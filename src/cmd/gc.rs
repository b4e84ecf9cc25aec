//! `relay gc`: give back claims whose lease ran out (see `lease`), expire
//! unclaimed messages past their TTL (dead-lettered as
//! `ttl_expired`, with failure notices), delete files crashed writers left in
//! `tmp/`, and prune finished index rows, events and idempotency keys past
//! their retention so `relay.db` does not grow without bound.

use std::fs;

use serde::Serialize;

use crate::cli::GcArgs;
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::maildir::{self, Mailbox};
use crate::output;
use crate::vocab::Code;
use crate::{lease, notice, reliability};

/// What one gc run did (or would do, with `--dry-run`).
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct GcReport {
    dry_run: bool,
    /// Claims whose lease ran out, given back to `new/`.
    redelivered: usize,
    /// Claims whose lease ran out once too often (`max_deliveries`).
    dead_lettered_max_deliveries: usize,
    expired: usize,
    tmp_files_removed: usize,
    index_rows_pruned: usize,
    events_pruned: usize,
    idempotency_keys_pruned: usize,
    /// Idle full buckets and idle closed breakers forgotten.
    state_entries_pruned: usize,
}

/// Runs `relay gc`.
pub fn run(ctx: &mut Ctx, args: &GcArgs) -> Result<()> {
    let now = ctx.clock.now_ms();
    let mut report = GcReport {
        dry_run: args.dry_run,
        ..GcReport::default()
    };

    // Batch logs are settled before any file moves (a replay after a
    // restart must not run beside the moves).
    ctx.store()?;

    // 0. Claims whose lease ran out go back to new/ (or are dead-lettered).
    for ep in maildir::list_endpoints(&ctx.home)? {
        let mb = Mailbox::at(&ctx.home, &ep);
        if args.dry_run {
            report.redelivered += lease::due(ctx, &mb, now)?;
        } else {
            let swept = lease::sweep(ctx, &mb, now)?;
            report.redelivered += swept.redelivered;
            report.dead_lettered_max_deliveries += swept.dead_lettered;
        }
    }

    // 1. Expiry: unclaimed messages whose TTL has passed.
    let mut expired = Vec::new();
    let mut progress = output::Progress::new("gc: checking TTLs");
    let mut seen = 0;
    for ep in maildir::list_endpoints(&ctx.home)? {
        let mb = Mailbox::at(&ctx.home, &ep);
        let mut due = Vec::new();
        for id in mb.list("new")? {
            seen += 1;
            progress.tick(seen, None);
            let Some(env) = mb.read_envelope("new", &id) else {
                continue; // unreadable files are quarantined by recv
            };
            if now <= env.budget.ttl {
                continue;
            }
            let reason = format!(
                "ttl expired {} ago, never claimed",
                crate::clock::human_ms(now - env.budget.ttl)
            );
            due.push((id, env, reason));
        }
        if due.is_empty() {
            continue;
        }
        if args.dry_run {
            expired.extend(
                due.into_iter()
                    .map(|(_, env, reason)| (ep.clone(), env, reason)),
            );
            continue;
        }
        // The moves under the mailbox lock (not the reads before them): what
        // `endpoints remove` counts cannot change under it.
        let _lock = match mb.lock() {
            Ok(l) => l,
            Err(Error::NoEndpoint(_)) => continue, // removed meanwhile
            Err(e) => return Err(e),
        };
        for (id, env, reason) in due {
            if mb.expire(&id, &reason, now)? {
                expired.push((ep.clone(), env, reason));
            }
        }
    }
    progress.finish();
    report.expired = expired.len();

    // 2. Files left in tmp/ by writers that crashed mid-delivery.
    let max_age_ms = ctx.config.tmp_max_age_secs.saturating_mul(1000);
    for name in maildir::mailbox_dir_names(&ctx.home)? {
        for (path, _) in Mailbox::at(&ctx.home, &name).stale_tmp(now, max_age_ms) {
            if args.dry_run || fs::remove_file(path).is_ok() {
                report.tmp_files_removed += 1;
            }
        }
    }

    // 3. Notices for the expired, then the index: their rows, and retention.
    let mut notices = Vec::new();
    if !args.dry_run {
        for (ep, env, reason) in &expired {
            notices.extend(notice::send(
                &ctx.home,
                env,
                ep,
                Code::TtlExpired,
                reason,
                now,
            )?);
        }
    }
    // A batch log replayed after a power loss brings back every message
    // of it that is missing and not acked in the index: finished rows stay
    // while a log could still be replayed. This boot's idle logs are
    // retired first (one syncfs), as `dlq purge` does.
    let logs_remain = if args.dry_run {
        crate::store::log::pending(ctx.home.root())
    } else {
        let home = ctx.home.clone();
        crate::store::batchlog::settle(&home, ctx.store()?, now, true)?
    };
    if logs_remain {
        output::warn(&format!(
            "a batch log is pending in {} (a running batch, or one to replay): finished index rows are kept until it is retired",
            ctx.home.root().join("batches").display()
        ));
    }
    let retention_ms = ctx.config.retention_days.saturating_mul(86_400_000);
    let key_window_ms = ctx.config.idempotency_window_secs.saturating_mul(1000);
    let limits = ctx.config.reliability.rate_limit.clone();
    let mut tx = ctx.store()?.begin()?;
    for (ep, env, reason) in &expired {
        tx.dead_lettered(Some(&env.from), ep, &env.id, Code::TtlExpired, reason, now)?;
    }
    let mut out = crate::store::journal::Outbox::default();
    for n in &notices {
        notice::record(&mut out, n, now);
    }
    tx.record(&mut out)?;
    let rows_before = if logs_remain {
        0
    } else {
        now.saturating_sub(retention_ms)
    };
    let pruned = tx.prune(
        rows_before,
        now.saturating_sub(retention_ms),
        now.saturating_sub(key_window_ms),
    )?;
    report.index_rows_pruned = pruned.0;
    report.events_pruned = pruned.1;
    report.idempotency_keys_pruned = pruned.2;
    report.state_entries_pruned =
        tx.slots
            .lock()?
            .get_mut()
            .prune(now.saturating_sub(retention_ms), |sender, bucket| {
                let policy = reliability::bucket_policy(&limits, sender);
                bucket.refilled(&policy, now).tokens >= policy.capacity
            });
    if args.dry_run {
        drop(tx); // rolls back: a dry run changes nothing
    } else {
        tx.commit()?;
        ctx.store()?.shrink()?;
    }

    if ctx.json {
        return output::json_line(&report);
    }
    output::line(&format!(
        "{}redelivered {} claim(s) whose lease ran out ({} dead-lettered as max_deliveries), expired {} message(s), removed {} stale tmp file(s), pruned {} index row(s), {} event(s), {} idempotency key(s), {} idle limit/breaker state(s)",
        if args.dry_run {
            "dry run: would have "
        } else {
            ""
        },
        report.redelivered,
        report.dead_lettered_max_deliveries,
        report.expired,
        report.tmp_files_removed,
        report.index_rows_pruned,
        report.events_pruned,
        report.idempotency_keys_pruned,
        report.state_entries_pruned
    ))
}
