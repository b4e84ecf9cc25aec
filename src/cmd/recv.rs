//! `relay recv`: claim the oldest messages of an endpoint and print them
//! (or hand them to the consumer loop for `--follow` and `--exec`).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli::RecvArgs;
use crate::clock::ms;
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
    if args.follow || args.exec.is_some() {
        return crate::cmd::consume::run(ctx, &mb, args);
    }
    let claimed = wait_and_take(ctx, &mb, args)?;
    if claimed.is_empty() {
        let waited = args
            .wait
            .map(|w| format!(" after waiting {}", crate::clock::human_ms(ms(w))))
            .unwrap_or_default();
        return Err(Error::NoInput(format!(
            "no message in '{}'{waited}",
            args.endpoint
        )));
    }
    let tty = std::io::stderr().is_terminal();
    for c in &claimed {
        print(ctx.json, &c.envelope)?;
        if args.ack {
            crate::cmd::ack::settle(ctx, &mb, &c.envelope.id, None)?;
        } else if tty && !ctx.json {
            let (ep, id) = (&mb.name, output::printable(&c.envelope.id));
            eprintln!(
                "relay: claimed {id} (done: relay ack {ep} {id}; failed: relay nack {ep} {id} --reason ...)"
            );
        }
    }
    Ok(())
}

/// Prints one message: the envelope as a JSON line, or the payload (strings
/// raw, other JSON on one line).
pub fn print(json: bool, env: &crate::envelope::Envelope) -> Result<()> {
    if json {
        return output::json_line(env);
    }
    match &env.payload {
        Value::String(s) => output::line(s),
        other => output::json_line(other),
    }
}

/// `take`, retried until something arrives or `--wait` runs out.
fn wait_and_take(ctx: &mut Ctx, mb: &Mailbox, args: &RecvArgs) -> Result<Vec<Claimed>> {
    let deadline = args.wait.map(|w| Instant::now() + w);
    let mut pause = Duration::from_millis(2);
    loop {
        let claimed = take(ctx, mb, args.count as usize, args.lease)?;
        match deadline {
            Some(d) if claimed.is_empty() && Instant::now() < d => {
                std::thread::sleep(pause.min(d.saturating_duration_since(Instant::now())));
                pause = (pause * 2).min(MAX_POLL);
            }
            _ => return Ok(claimed),
        }
    }
}

/// Claims up to `max` messages now, without waiting: higher priority first,
/// FIFO within a priority. Unreadable files are moved aside (reported);
/// messages past their TTL are dead-lettered (`ttl_expired`, with a failure
/// notice) and others claimed in their place. The claims are fsynced and
/// indexed (with the lease, if any) before this returns.
pub fn take(
    ctx: &mut Ctx,
    mb: &Mailbox,
    max: usize,
    lease: Option<Duration>,
) -> Result<Vec<Claimed>> {
    let mut claimed = Vec::new();
    let now = ctx.clock.now_ms();
    loop {
        let ranks = ctx.store()?.pending_priorities(&mb.name)?;
        let mut bad = Vec::new();
        let (live, expired): (Vec<Claimed>, Vec<Claimed>) = mb
            .claim(max - claimed.len(), now, &ranks, &mut bad)?
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
        if expired.is_empty() {
            break;
        }
        expire(ctx, mb, &expired, now)?;
        if claimed.len() >= max {
            break;
        }
    }
    if claimed.is_empty() {
        return Ok(claimed);
    }
    mb.sync_claims()?;
    let envs: Vec<_> = claimed.iter().map(|c| &c.envelope).collect();
    let lease_until = lease.map(|l| now.saturating_add(ms(l)));
    let breakers = ctx.config.reliability.circuit_breaker.clone();
    let tx = ctx.store()?.begin()?;
    tx.record_claimed(&mb.name, &envs, lease_until, now)?;
    reliability::observe_leases(&tx, &breakers, Some(&mb.name), now)?;
    tx.commit()?;
    Ok(claimed)
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
