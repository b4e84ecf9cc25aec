//! The consumer loop behind `relay recv --follow` and `--exec`: waits on the
//! mailbox with filesystem notifications (a slow poll as a fallback), runs a
//! handler per message and acks or nacks by its exit status, reloads
//! `config.json` when it changes, and on SIGINT/SIGTERM finishes the running
//! handlers before it stops.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher};
use serde_json::json;

use crate::cli::RecvArgs;
use crate::clock::human_ms;
use crate::cmd::ack::{self, Settled};
use crate::cmd::recv;
use crate::config;
use crate::context::Ctx;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::maildir::{Claimed, Mailbox};
use crate::store::rows::Event;
use crate::template::Template;
use crate::vocab::EventKind;
use crate::{envvars, lease, output};

/// Longest sleep without a notification before looking anyway.
const FALLBACK_POLL: Duration = Duration::from_millis(1000);
/// How often running handlers are checked.
const TICK: Duration = Duration::from_millis(5);

/// Least time between two sweeps for claims whose lease ran out.
const SWEEP_EVERY: Duration = Duration::from_millis(1000);

/// A handler working on one message.
struct Job {
    child: Child,
    envelope: Envelope,
    started: Instant,
    /// When its claim's lease runs out (ms, relay's clock).
    lease_until: Option<u64>,
}

/// Runs the consumer loop until interrupted (`--follow`) or until the
/// mailbox is drained of up to `--count` messages.
pub fn run(ctx: &mut Ctx, args: &RecvArgs) -> Result<()> {
    let template = crate::cmd::recv::template_of(ctx, args)?;
    let template = template.as_ref();
    let mb = &Mailbox::open_endpoint(&ctx.home, &args.endpoint)?;
    crate::cmd::recv::refuse_proxy(ctx, &args.endpoint)?;
    // Each SIGINT/SIGTERM sets `signalled`; the loop counts them. The first
    // stops taking messages and lets the running handlers finish; the
    // second kills them and gives their messages back. A third, while
    // that is under way, ends relay at once.
    let signalled = Arc::new(AtomicBool::new(false));
    let forcing = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(
            sig,
            i32::from(crate::error::code::INTERRUPTED),
            Arc::clone(&forcing),
        )
        .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&signalled)))
        .map_err(|e| Error::Io {
            what: "cannot install signal handlers".into(),
            source: e,
        })?;
    }
    let mut signals = 0;
    let mut stop = false;
    let (tx, rx) = mpsc::channel();
    let _watcher = if args.follow || args.wait.is_some() {
        watch(ctx, mb, tx)
    } else {
        None
    };
    let mut config_stamp = stamp(&ctx.home.config_file());
    let deadline = args.wait.map(|w| Instant::now() + w);
    let limit = if args.follow {
        usize::MAX
    } else {
        args.count as usize
    };
    let slots = args.exec.as_ref().map_or(64, |_| args.concurrency as usize);
    let mut running: Vec<Job> = Vec::new();
    let mut taken = 0usize;
    let mut last_sweep: Option<Instant> = None;
    loop {
        if args.follow {
            reload_if_changed(ctx, &mut config_stamp);
        }
        reap(ctx, mb, &mut running, args)?;
        if signalled.swap(false, Ordering::Relaxed) {
            signals += 1;
            stop = true;
            if signals == 1 && !running.is_empty() {
                output::notice(&format!(
                    "stopping once {} running handler(s) finish; signal again to stop now",
                    running.len()
                ));
            }
        }
        if signals >= 2 && !running.is_empty() {
            forcing.store(true, Ordering::Relaxed);
            let given_back = abandon(ctx, mb, &mut running)?;
            return Err(Error::Interrupted(format!(
                "stopped at once: killed {given_back} running handler(s) and gave their messages back to '{}' for the next consumer",
                mb.name
            )));
        }
        // A printing follower whose reader went away has no one to serve.
        if args.exec.is_none() && output::stdout_closed() {
            stop = true;
        }
        if stop && running.is_empty() {
            break;
        }
        let want = slots.saturating_sub(running.len()).min(limit - taken);
        let mut got = 0;
        if want > 0 && !stop {
            // Claims whose lease ran out (a consumer killed mid-handler, say)
            // go back to new/ before anything is taken.
            if last_sweep.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) {
                last_sweep = Some(Instant::now());
                lease::sweep(ctx, mb, ctx.clock.now_ms())?;
            }
            let lease = lease::of_claim(&ctx.config, acks_on_print(args), args.lease);
            let batch = match recv::take(ctx, mb, want, lease) {
                Ok(batch) => batch,
                // The claims went back to new/: a follower waits and tries
                // again rather than stop over a busy index.
                Err(e @ Error::Refused { .. }) if args.follow => {
                    output::warn(&format!(
                        "{e}; trying again in {}",
                        human_ms(crate::clock::ms(FALLBACK_POLL))
                    ));
                    std::thread::sleep(FALLBACK_POLL);
                    continue;
                }
                Err(e) => return Err(e),
            };
            got = batch.len();
            taken += got;
            let lease_until = lease.map(|l| ctx.clock.now_ms().saturating_add(l));
            for c in batch {
                start(ctx, mb, args, template, c, lease_until, &mut running)?;
            }
        }
        let idle = running.is_empty();
        let waiting = deadline.is_some_and(|d| taken == 0 && Instant::now() < d);
        if !args.follow && idle && !waiting && (got == 0 || taken >= limit) {
            break;
        }
        if got > 0 && running.len() < slots {
            continue; // more may be waiting already
        }
        // Sleep until the mailbox (or the config) changes, a handler may
        // have finished, or the fallback poll is due.
        let pause = if idle { FALLBACK_POLL } else { TICK };
        let pause = deadline.filter(|_| !args.follow).map_or(pause, |d| {
            pause.min(d.saturating_duration_since(Instant::now()))
        });
        if rx.recv_timeout(pause).is_ok() {
            while rx.try_recv().is_ok() {}
        }
    }
    if taken == 0 && !args.follow {
        return Err(Error::NoInput(format!("no message in '{}'", mb.name)));
    }
    Ok(())
}

/// Watches `new/` and the home (for `config.json`); `None` (with a warning)
/// if notifications are unavailable, leaving the fallback poll. Also what
/// `relay request` waits on for its reply.
pub fn watch(ctx: &Ctx, mb: &Mailbox, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // The home also sees every index write of every process: wake only
        // for message files and config.json (and on errors, to be safe).
        let wanted = match &event {
            Ok(e) => e
                .paths
                .iter()
                .any(|p| p.extension().is_some_and(|x| x == "json")),
            Err(_) => true,
        };
        if wanted {
            let _ = tx.send(());
        }
    })
    .and_then(|mut w| {
        w.watch(&mb.sub("new"), RecursiveMode::NonRecursive)?;
        w.watch(ctx.home.root(), RecursiveMode::NonRecursive)?;
        Ok(w)
    });
    match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            output::warn(&format!(
                "filesystem notifications unavailable ({e}); polling every {}",
                human_ms(crate::clock::ms(FALLBACK_POLL))
            ));
            None
        }
    }
}

/// Identity of the config file's current contents (mtime and size).
fn stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let md = std::fs::metadata(path).ok()?;
    Some((md.modified().ok()?, md.len()))
}

/// Re-reads `config.json` when it changed; a bad edit keeps the last good
/// config and says so (once per edit).
fn reload_if_changed(ctx: &mut Ctx, last: &mut Option<(SystemTime, u64)>) {
    let path = ctx.home.config_file();
    let now = stamp(&path);
    // An editor saving in place passes through an empty file: wait for content.
    if now == *last || now.is_some_and(|(_, len)| len == 0) {
        return;
    }
    *last = now;
    match config::load(&path) {
        Ok(c) => {
            for w in &c.warnings {
                output::warn(w);
            }
            ctx.config = c;
            output::notice(&format!("reloaded {}", path.display()));
        }
        Err(e) => output::warn(&format!("{e}; keeping the last good config")),
    }
}

/// Whether a printed message is acked at once: with `--ack`, and with
/// `--follow` alone (a stream nobody acks message by message), unless
/// `--lease` asks to keep the claims leased.
fn acks_on_print(args: &RecvArgs) -> bool {
    args.exec.is_none() && (args.ack || (args.follow && args.lease.is_none()))
}

/// Hands one claimed message to the handler, or prints it (and acks it
/// with `--ack`).
fn start(
    ctx: &mut Ctx,
    mb: &Mailbox,
    args: &RecvArgs,
    template: Option<&Template>,
    c: Claimed,
    lease_until: Option<u64>,
    running: &mut Vec<Job>,
) -> Result<()> {
    let env = c.envelope;
    let held = Some(env.delivery_count);
    let Some(cmd) = &args.exec else {
        match template {
            Some(t) => output::line(&t.render(&env, &mb.name))?,
            None => recv::print(ctx.json, &env)?,
        }
        if acks_on_print(args) {
            ack::settle(ctx, mb, &env.id, None, held)?;
        }
        return Ok(());
    };
    let line = serde_json::to_string(&env).unwrap_or_default();
    let mut command = Command::new("sh");
    if ctx.json {
        // Keep relay's NDJSON stream clean: handler output goes to stderr.
        if let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() {
            command.stdout(Stdio::from(fd));
        }
    }
    command
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::piped())
        // Its own process group: a terminal's Ctrl-C stops relay, which lets
        // the handler finish instead of killing it mid-message.
        .process_group(0)
        .env(envvars::HOME.name, ctx.home.root())
        .env(envvars::ENDPOINT.name, &mb.name)
        .env(envvars::MESSAGE_ID.name, &env.id)
        .env(envvars::TRACE_ID.name, env.trace())
        .env(envvars::SUBJECT.name, &env.subject)
        .env(envvars::SENDER.name, &env.from)
        .env(envvars::PRIORITY.name, env.priority().as_str())
        .env(envvars::DELIVERY_COUNT.name, env.delivery_count.to_string())
        .env(
            envvars::BUDGET.name,
            serde_json::to_string(&env.budget).unwrap_or_default(),
        )
        // The handler speaks for the endpoint it serves.
        .env(envvars::FROM.name, &mb.name);
    match &env.reply_to {
        Some(r) => command.env(envvars::REPLY_TO.name, r),
        None => command.env_remove(envvars::REPLY_TO.name),
    };
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            let reason = format!("cannot start handler: {e}");
            ack::settle(ctx, mb, &env.id, Some(&reason), held)?;
            report(
                ctx,
                &env,
                &mb.name,
                "nacked",
                None,
                Duration::ZERO,
                Some(&reason),
            )?;
            return Ok(());
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A thread, so a handler that does not read cannot block relay.
        std::thread::spawn(move || {
            let _ = stdin.write_all(line.as_bytes());
            let _ = stdin.write_all(b"\n");
        });
    }
    running.push(Job {
        child,
        envelope: env,
        started: Instant::now(),
        lease_until,
    });
    Ok(())
}

/// Settles handlers that finished or ran out of time; kills those whose
/// claim's lease ran out (the message goes back to new/ for redelivery).
fn reap(ctx: &mut Ctx, mb: &Mailbox, running: &mut Vec<Job>, args: &RecvArgs) -> Result<()> {
    let now = ctx.clock.now_ms();
    let mut i = 0;
    while i < running.len() {
        let job = &mut running[i];
        let elapsed = job.started.elapsed();
        let status = job.child.try_wait().map_err(|e| Error::Io {
            what: format!("cannot wait for the handler of {}", job.envelope.id),
            source: e,
        })?;
        let outcome = match status {
            Some(s) => Some((s.code(), verdict(s))),
            None if args.timeout.is_some_and(|t| elapsed > t) => {
                kill_group(&mut job.child);
                let took = human_ms(crate::clock::ms(elapsed));
                Some((None, Err(format!("handler timed out after {took}"))))
            }
            None if job.lease_until.is_some_and(|at| at < now) => {
                // Its result could not be acked: stop it, and let the
                // settle below refuse and give the message back.
                kill_group(&mut job.child);
                Some((None, Err("the claim's lease ran out".to_string())))
            }
            None => None,
        };
        let Some((code, verdict)) = outcome else {
            i += 1;
            continue;
        };
        let job = running.swap_remove(i);
        let reason = verdict.as_ref().err().map(String::as_str);
        let held = Some(job.envelope.delivery_count);
        let settled = match ack::settle(ctx, mb, &job.envelope.id, reason, held) {
            Ok(s) => s,
            // A busy index: the message stays where it is (a claim comes
            // back when its lease runs out); the consumer goes on.
            Err(e @ (Error::Store(_) | Error::Refused { .. })) if args.follow => {
                output::warn(&format!("cannot settle message {}: {e}", job.envelope.id));
                continue;
            }
            Err(e) => return Err(e),
        };
        let (word, reason) = match (&settled, reason) {
            (Settled::Gone, _) => ("gone", reason),
            (Settled::Done, None) => ("acked", None),
            (Settled::Done, Some(_)) => ("nacked", reason),
            (Settled::Refused(why), _) => ("refused", Some(why.as_str())),
        };
        report(ctx, &job.envelope, &mb.name, word, code, elapsed, reason)?;
    }
    Ok(())
}

/// Kills the running handlers (their whole process groups) and gives their
/// messages back: into `new/` (under the mailbox lock, so nothing that
/// counts or moves the mailbox's files runs in between), pending again in
/// the index. How many.
fn abandon(ctx: &mut Ctx, mb: &Mailbox, running: &mut Vec<Job>) -> Result<usize> {
    let (mut given_back, now) = (0, ctx.clock.now_ms());
    let mut jobs: Vec<Job> = std::mem::take(running);
    for job in &mut jobs {
        kill_group(&mut job.child);
    }
    let mut back = Vec::new();
    {
        let _lock = mb.lock()?;
        for job in jobs {
            if mb.unclaim(&job.envelope.id)? {
                back.push(job);
            }
        }
    }
    for job in back {
        let env = &job.envelope;
        let mut tx = ctx.store()?.begin()?;
        tx.record_requeued(&mb.name, env)?;
        tx.event(
            &Event {
                kind: EventKind::Requeued,
                sender: Some(&env.from),
                endpoint: Some(&mb.name),
                message_id: Some(&env.id),
                detail: json!({ "why": "consumer stopped at once" }),
            },
            now,
        )?;
        tx.commit()?;
        let reason = "consumer stopped at once; handler killed";
        report(
            ctx,
            env,
            &mb.name,
            "released",
            None,
            job.started.elapsed(),
            Some(reason),
        )?;
        given_back += 1;
    }
    Ok(given_back)
}

/// Exit 0 acks; anything else is the nack reason.
fn verdict(s: ExitStatus) -> std::result::Result<(), String> {
    match (s.code(), s.signal()) {
        (Some(0), _) => Ok(()),
        (Some(c), _) => Err(format!("handler exited with status {c}")),
        (None, Some(sig)) => Err(format!("handler killed by signal {sig}")),
        (None, None) => Err("handler ended abnormally".into()),
    }
}

/// Kills a handler and everything it started (its process group).
fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// One line per finished message: NDJSON with `--json`, else on stderr.
fn report(
    ctx: &Ctx,
    env: &Envelope,
    endpoint: &str,
    outcome: &str,
    exit_code: Option<i32>,
    took: Duration,
    reason: Option<&str>,
) -> Result<()> {
    let ms = crate::clock::ms(took);
    if ctx.json {
        return output::json_line(&json!({
            "id": env.id,
            "endpoint": endpoint,
            "outcome": outcome,
            "exitCode": exit_code,
            "durationMs": ms,
            "reason": reason,
        }));
    }
    match (outcome, reason) {
        ("gone", _) => output::warn(&format!(
            "message {} left cur/ while its handler ran (acked or nacked by someone else)",
            env.id
        )),
        (_, Some(r)) => eprintln!(
            "relay: {}",
            output::printable(&format!("{} {outcome} after {}: {r}", env.id, human_ms(ms)))
        ),
        _ => eprintln!(
            "relay: {}",
            output::printable(&format!("{} {outcome} after {}", env.id, human_ms(ms)))
        ),
    }
    Ok(())
}
