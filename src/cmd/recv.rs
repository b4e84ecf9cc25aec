//! `relay recv`: claim the oldest messages of an endpoint and print them
//! (`--follow` and `--exec` are the consumer loop, `consume`, which claims
//! through `take` here).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli::RecvArgs;
use crate::clock::ms;
use crate::context::Ctx;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::maildir::{Claimed, Mailbox};
use crate::output;
use crate::template::Template;
use crate::vocab::Code;
use crate::{notice, reliability};

/// Longest pause between two looks at an empty mailbox while waiting.
const MAX_POLL: Duration = Duration::from_millis(50);

/// Runs `relay recv` without `--follow` or `--exec`.
pub fn run(ctx: &mut Ctx, args: &RecvArgs) -> Result<()> {
    let template = template_of(ctx, args)?;
    let mb = Mailbox::open_endpoint(&ctx.home, &args.endpoint)?;
    refuse_proxy(ctx, &args.endpoint)?;
    ctx.fast_consumer = true;
    let lease = crate::lease::of_claim(&ctx.config, args.ack, args.lease);
    let (claimed, synced) = wait_and_take(ctx, &mb, args, lease)?;
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
    if args.ack {
        return print_and_ack(ctx, &mb, &claimed, synced, template.as_ref());
    }
    let tty = std::io::stderr().is_terminal();
    for c in &claimed {
        let env = &c.envelope;
        show(ctx, template.as_ref(), env, &mb)?;
        if tty && !ctx.json {
            let (ep, id) = (&mb.name, output::printable(&env.id));
            let held = match env.delivery_count {
                0 => String::new(),
                n => format!(" --delivery-count {n}"),
            };
            eprintln!(
                "relay: claimed {id} (done: relay ack {ep} {id}{held}; failed: relay nack {ep} {id}{held} --reason ...)"
            );
        }
    }
    Ok(())
}

/// Refuses an endpoint that is a bridge proxy: its messages are on their
/// way to their host, not for here (`recv` and its consumer loop).
pub fn refuse_proxy(ctx: &Ctx, endpoint: &str) -> Result<()> {
    match crate::bridge::directory::host_of(&ctx.home, endpoint) {
        Some(host) => Err(Error::Denied(format!(
            "endpoint '{endpoint}' lives on host '{host}'; what is sent to it here waits for relay bridge to forward it: receive it on '{host}'"
        ))),
        None => Ok(()),
    }
}

/// The `--format` template, checked before anything is claimed.
pub fn template_of(ctx: &Ctx, args: &RecvArgs) -> Result<Option<Template>> {
    let Some(text) = &args.format else {
        return Ok(None);
    };
    if ctx.json {
        return Err(Error::Usage(
            "--format and --json both say how to print messages: give one".into(),
        ));
    }
    Template::parse(text).map(Some)
}

/// Prints one claimed message: by the `--format` template, or as `print`.
fn show(ctx: &Ctx, template: Option<&Template>, env: &Envelope, mb: &Mailbox) -> Result<()> {
    match template {
        Some(t) => output::line(&t.render(env, &mb.name)),
        None => print(ctx.json, env),
    }
}

/// `recv --ack`: prints each claim and acks it. On the fast path every
/// message is printed first and then all are acked together (one fsync);
/// a print that fails leaves its message and the rest claimed, as before.
/// Claims not yet `synced` (see `take_as`) are made durable by the fast
/// ack's fsyncs (`cur/`, then `new/`, after the removals), or else by
/// `sync_claims` before anything else is done with them.
fn print_and_ack(
    ctx: &mut Ctx,
    mb: &Mailbox,
    claimed: &[Claimed],
    synced: bool,
    template: Option<&Template>,
) -> Result<()> {
    let held: Vec<_> = claimed
        .iter()
        .map(|c| (c.envelope.id.clone(), Some(c.envelope.delivery_count)))
        .collect();
    if ctx.may_skip_index() {
        let mut printed = 0;
        let result = claimed.iter().try_for_each(|c| {
            show(ctx, template, &c.envelope, mb)?;
            printed += 1;
            Ok(())
        });
        let now = ctx.clock.now_ms();
        let acked = crate::consumer::ack(ctx, mb, &held[..printed], now, !synced);
        if !synced && !matches!(acked, Ok(Some(_))) {
            mb.sync_claims()?;
        }
        if acked?.is_none() {
            for (id, count) in &held[..printed] {
                crate::cmd::ack::settle(ctx, mb, id, None, *count)?;
            }
        }
        return result;
    }
    if !synced {
        mb.sync_claims()?;
    }
    for (c, (id, count)) in claimed.iter().zip(&held) {
        show(ctx, template, &c.envelope, mb)?;
        crate::cmd::ack::settle(ctx, mb, id, None, *count)?;
    }
    Ok(())
}

/// Prints one message: the envelope as a JSON line (with its
/// `deliveryCount` also when 0: what `ack --delivery-count` checks), or the
/// payload (strings raw, other JSON on one line).
pub fn print(json: bool, env: &crate::envelope::Envelope) -> Result<()> {
    if json {
        let mut value = serde_json::to_value(env)
            .map_err(|e| Error::Data(format!("cannot serialize envelope {}: {e}", env.id)))?;
        if let Value::Object(map) = &mut value {
            map.insert("deliveryCount".into(), env.delivery_count.into());
        }
        return output::json_line(&value);
    }
    match &env.payload {
        Value::String(s) => output::line(s),
        other => output::json_line(other),
    }
}

/// `take_as` (after giving back claims whose lease ran out), retried until
/// something arrives or `--wait` runs out; with `--ack` the claims' fsyncs
/// are left to the ack (`print_and_ack`).
fn wait_and_take(
    ctx: &mut Ctx,
    mb: &Mailbox,
    args: &RecvArgs,
    lease: Option<u64>,
) -> Result<(Vec<Claimed>, bool)> {
    let deadline = args.wait.map(|w| Instant::now() + w);
    let mut pause = Duration::from_millis(2);
    loop {
        crate::lease::sweep(ctx, mb, ctx.clock.now_ms())?;
        let (claimed, synced) = take_as(ctx, mb, args.count as usize, lease, args.ack)?;
        match deadline {
            Some(d) if claimed.is_empty() && Instant::now() < d => {
                std::thread::sleep(pause.min(d.saturating_duration_since(Instant::now())));
                pause = (pause * 2).min(MAX_POLL);
            }
            _ => return Ok((claimed, synced)),
        }
    }
}

/// Claims up to `max` messages now, without waiting: higher priority first,
/// FIFO within a priority. Unreadable files are moved aside (reported);
/// messages past their TTL are dead-lettered (`ttl_expired`, with a failure
/// notice) and others claimed in their place. The claims are fsynced and
/// indexed with their lease (ms; `None` for at-most-once claims) before
/// this returns; if that fails (a busy index, say) they are given back to
/// `new/` and the refusal says so: a claim is never left unrecorded.
pub fn take(ctx: &mut Ctx, mb: &Mailbox, max: usize, lease: Option<u64>) -> Result<Vec<Claimed>> {
    take_as(ctx, mb, max, lease, false).map(|(claimed, _)| claimed)
}

/// `take`, and whether the claims are fsynced yet: with `then_ack` (the
/// caller acks them at once, `recv --ack`) claims journaled on the fast
/// path are not, and the ack's fsyncs cover them (after the removals:
/// `cur/` then `new/`, two fsyncs for the whole claim and ack, as the
/// bare Maildir consume does). A crash before those fsyncs finds the
/// messages in `new/` or `cur/`: redelivered, as a claim fsynced on its
/// own but not yet acked would be.
fn take_as(
    ctx: &mut Ctx,
    mb: &Mailbox,
    max: usize,
    lease: Option<u64>,
    then_ack: bool,
) -> Result<(Vec<Claimed>, bool)> {
    let mut claimed = Vec::new();
    let now = ctx.clock.now_ms();
    loop {
        let ranks = crate::consumer::ranks(ctx, mb)?;
        let mut bad = Vec::new();
        let (live, expired): (Vec<Claimed>, Vec<Claimed>) = mb
            .claim(mb.list("new")?, max - claimed.len(), now, &ranks, &mut bad)?
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
        return Ok((claimed, true));
    }
    match record(ctx, mb, &claimed, lease, now, then_ack) {
        Ok(synced) => Ok((claimed, synced)),
        Err(e) => Err(give_back(mb, &claimed, &e)?),
    }
}

/// Makes claims durable (unless `defer_sync` and they go to the journal:
/// then the caller does) and indexes them with their lease; whether they
/// were fsynced.
fn record(
    ctx: &mut Ctx,
    mb: &Mailbox,
    claimed: &[Claimed],
    lease: Option<u64>,
    now: u64,
    defer_sync: bool,
) -> Result<bool> {
    let envs: Vec<_> = claimed.iter().map(|c| &c.envelope).collect();
    let lease_until = lease.map(|l| now.saturating_add(l));
    if defer_sync && crate::consumer::record_claims(ctx, mb, &envs, lease_until, now)? {
        return Ok(false);
    }
    mb.sync_claims()?;
    if !defer_sync && crate::consumer::record_claims(ctx, mb, &envs, lease_until, now)? {
        return Ok(true);
    }
    let breakers = ctx.config.reliability.circuit_breaker.clone();
    let mut tx = ctx.store()?.begin()?;
    tx.record_claimed(&mb.name, &envs, lease_until, now)?;
    reliability::observe_leases(&mut tx, &breakers, Some(&mb.name), now)?;
    tx.commit()?;
    Ok(true)
}

/// Puts claims that could not be recorded back into `new/` (under the
/// mailbox lock) and returns the error to report: a refusal (75, retry
/// later) when everything went back.
fn give_back(mb: &Mailbox, claimed: &[Claimed], cause: &Error) -> Result<Error> {
    let _lock = mb.lock()?;
    for c in claimed {
        mb.unclaim(&c.envelope.id)?;
    }
    Ok(Error::Refused {
        message: format!(
            "cannot record the claim of {} message(s) of '{}' ({cause}); gave them back to new/ for the next receiver; retry later",
            claimed.len(),
            mb.name
        ),
        retry_after_ms: None,
    })
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
        mb.fail(&env.id, value, &reason, Code::TtlExpired, now)?;
        output::warn(&format!(
            "message '{}' of '{}' expired ({reason}); dead-lettered",
            env.id, mb.name
        ));
        let notice = notice::send(&ctx.home, env, &mb.name, Code::TtlExpired, &reason, now)?;
        done.push((env, reason, notice));
    }
    let tx = ctx.store()?.begin()?;
    for (env, reason, notice) in &done {
        tx.record_claimed(&mb.name, &[env], None, now)?;
        tx.dead_lettered(
            Some(&env.from),
            &mb.name,
            &env.id,
            Code::TtlExpired,
            reason,
            now,
        )?;
        if let Some(n) = notice {
            let mut out = crate::store::journal::Outbox::default();
            notice::record(&mut out, n, now);
            tx.record(&mut out)?;
        }
    }
    tx.commit()
}
