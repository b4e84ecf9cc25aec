//! `relay recv`: claim the oldest messages of an endpoint and print them.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli::RecvArgs;
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::maildir::{Claimed, Mailbox};
use crate::output;
use crate::{notice, reliability};

/// Longest pause between two looks at an empty mailbox while waiting.
const MAX_POLL: Duration = Duration::from_millis(50);

/// Runs `relay recv`.
pub fn run(ctx: &mut Ctx, args: &RecvArgs) -> Result<()> {
    let mb = Mailbox::open_endpoint(&ctx.home, &args.endpoint)?;
    let claimed = claim(ctx, &mb, args)?;
    if claimed.is_empty() {
        let waited = args
            .wait
            .map(|w| {
                format!(
                    " after waiting {}",
                    crate::clock::human_ms(u64::try_from(w.as_millis()).unwrap_or(u64::MAX))
                )
            })
            .unwrap_or_default();
        return Err(Error::NoInput(format!(
            "no message in '{}'{waited}",
            args.endpoint
        )));
    }
    mb.sync_claims()?;
    let envs: Vec<_> = claimed.iter().map(|c| &c.envelope).collect();
    let now = claimed[0].claimed_at;
    let lease_until = args
        .lease
        .map(|l| now.saturating_add(u64::try_from(l.as_millis()).unwrap_or(u64::MAX)));
    let breakers = ctx.config.reliability.circuit_breaker.clone();
    let tx = ctx.store()?.begin()?;
    tx.record_claimed(&mb.name, &envs, lease_until, now)?;
    reliability::observe_leases(&tx, &breakers, Some(&mb.name), now)?;
    tx.commit()?;

    let tty = std::io::stderr().is_terminal();
    for c in &claimed {
        let env = &c.envelope;
        if ctx.json {
            output::json_line(env)?;
        } else {
            match &env.payload {
                Value::String(s) => output::line(s)?,
                other => output::json_line(other)?,
            }
            if tty {
                eprintln!(
                    "relay: claimed {} (done: relay ack {} {}; failed: relay nack {} {} --reason ...)",
                    env.id, mb.name, env.id, mb.name, env.id
                );
            }
        }
    }
    Ok(())
}

/// Claims up to `count` messages, waiting up to `--wait` for the first.
/// Messages found past their TTL are dead-lettered (`ttl_expired`, with a
/// failure notice) instead of handed out, and others are claimed in their place.
fn claim(ctx: &mut Ctx, mb: &Mailbox, args: &RecvArgs) -> Result<Vec<Claimed>> {
    let deadline = args.wait.map(|w| Instant::now() + w);
    let mut pause = Duration::from_millis(2);
    let mut claimed = Vec::new();
    loop {
        let now = ctx.clock.now_ms();
        let ranks = ctx.store()?.pending_priorities(&mb.name)?;
        let mut bad = Vec::new();
        let want = args.count as usize - claimed.len();
        let (live, expired): (Vec<Claimed>, Vec<Claimed>) = mb
            .claim(want, now, &ranks, &mut bad)?
            .into_iter()
            .partition(|c| now <= c.envelope.budget.ttl);
        for q in bad {
            output::warn(&format!(
                "moved unreadable message '{}' of '{}' to {}: {}",
                q.id,
                mb.name,
                mb.sub("failed").display(),
                q.problem
            ));
        }
        claimed.extend(live);
        if !expired.is_empty() {
            expire(ctx, mb, &expired, now)?;
            if claimed.len() < args.count as usize {
                continue;
            }
        }
        match deadline {
            Some(d) if claimed.is_empty() && Instant::now() < d => {
                std::thread::sleep(pause.min(d.saturating_duration_since(Instant::now())));
                pause = (pause * 2).min(MAX_POLL);
            }
            _ => return Ok(claimed),
        }
    }
}

/// Dead-letters claimed messages that were past their TTL.
fn expire(ctx: &mut Ctx, mb: &Mailbox, expired: &[Claimed], now: u64) -> Result<()> {
    let mut done = Vec::new();
    for c in expired {
        let env = &c.envelope;
        let reason = format!(
            "ttl expired {} before it was received",
            crate::clock::human_ms(now.saturating_sub(env.budget.ttl))
        );
        let value = serde_json::to_value(env).unwrap_or(Value::Null);
        mb.fail(&env.id, value, &reason, "ttl_expired", now)?;
        output::warn(&format!(
            "message '{}' of '{}' expired ({reason}); dead-lettered",
            env.id, mb.name
        ));
        let notice = notice::send(&ctx.home, env, &mb.name, "ttl_expired", &reason, now)?;
        done.push((env, reason, notice));
    }
    let tx = ctx.store()?.begin()?;
    for (env, reason, notice) in &done {
        tx.record_claimed(&mb.name, &[env], None, now)?;
        tx.dead_lettered(
            Some(&env.from),
            &mb.name,
            &env.id,
            "ttl_expired",
            reason,
            now,
        )?;
        if let Some(n) = notice {
            notice::record(&tx, n, now)?;
        }
    }
    tx.commit()
}
