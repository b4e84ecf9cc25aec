//! Crash harness: concurrent `relay send`, `relay recv --json` and
//! `relay ack`/`nack` processes on a few endpoints, with `kill -9` of random
//! children at random moments. After every round (all children finished or
//! dead) it checks, over the whole history of the home:
//!
//! - every send that exited 0 (or printed its id before being killed) is on
//!   disk exactly once, in new/, cur/ or failed/ of its endpoint, unless an
//!   ack for it exited 0 (then it is gone) or was killed (then it may be);
//!   a nack that exited 0 left it in failed/;
//! - no file in new/, cur/ or failed/ is empty, partial or unparseable, and
//!   no id is on disk twice;
//! - no id was printed by two receivers, and none that was printed is
//!   still in new/;
//! - `relay doctor --repair` (with the clock 2 h ahead, so the tmp/ files
//!   of killed writers count as stray) exits 0 without removing a message,
//!   then `relay doctor` exits 0. What the repairs did is summed up at the end.
//!
//! A second test, `consumers_killed_while_holding_leases_strand_nothing`,
//! kills `recv --follow --exec` consumers holding leases and checks that,
//! once the clock passes the leases, nothing is left in new/ or cur/.
//!
//! Short mode (default, a few seconds): rounds until about 40 kills.
//! Long mode, e.g. 1000 kills:
//!
//! ```text
//! RELAY_CRASH_KILLS=1000 cargo test --release --test integration crash -- --nocapture
//! ```
//!
//! `RELAY_CRASH_SEED=N` replays a run (the seed is printed at the start and
//! in every failure).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{BIN, Relay, is_ulid};

/// The endpoints the children work on.
const ENDPOINTS: [&str; 3] = ["crash.a", "crash.b", "crash.c"];
/// Children alive at once.
const CONCURRENCY: usize = 6;
/// Children started per round.
const PER_ROUND: usize = 40;
/// Kills the short mode aims for.
const SHORT_KILLS: usize = 40;
/// Every feature on, but too generous to refuse anything: refusals would
/// muddy the accounting.
const CONFIG: &str = r#"{"reliability": {
  "rateLimit": {"enabled": true, "windowSecs": 1, "maxPerWindow": 1000000},
  "circuitBreaker": {"enabled": true, "failureThreshold": 1000000},
  "backpressure": {"enabled": true, "maxMailboxSize": 1000000}
}}"#;

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// What a child was asked to do.
#[derive(Debug, Clone)]
enum Role {
    /// `send`, or with `lines` > 1 a durable `send --batch` of that many.
    Send {
        ep: &'static str,
        lines: usize,
    },
    Recv {
        ep: &'static str,
    },
    Ack {
        ep: &'static str,
        ids: Vec<String>,
        nack: bool,
    },
}

struct Proc {
    role: Role,
    child: Child,
    started: Instant,
    kill_at: Option<Instant>,
}

/// Everything observed over the run.
#[derive(Default)]
struct Ledger {
    /// id -> endpoint of every send whose id reached the caller.
    sent: HashMap<String, &'static str>,
    /// ids whose send was killed after printing them.
    sent_by_killed: usize,
    /// id -> (endpoint, how many receivers printed it).
    received: HashMap<String, (&'static str, usize)>,
    /// Received ids not yet handed to an acker.
    unacked: Vec<(&'static str, String)>,
    acked: HashSet<String>,
    nacked: HashSet<String>,
    /// ids of acks/nacks that were killed: the file may or may not be gone.
    maybe_done: HashSet<String>,
    kills: usize,
    kills_by_role: BTreeMap<&'static str, usize>,
    children: usize,
    /// Lifetimes of children that were not killed (to aim the kills).
    lifetimes: Vec<Duration>,
    /// doctor --repair findings by check.
    repairs: BTreeMap<String, usize>,
    failures: Vec<String>,
}

impl Ledger {
    /// Mean lifetime of a child, for picking kill moments inside it.
    fn mean_life(&self) -> Duration {
        let recent = &self.lifetimes[self.lifetimes.len().saturating_sub(50)..];
        if recent.is_empty() {
            return Duration::from_millis(6);
        }
        recent.iter().sum::<Duration>() / recent.len() as u32
    }
}

/// Starts relay with `args`, writing `input` (small enough for the pipe's
/// buffer) to its stdin.
fn spawn(r: &Relay, args: &[String], input: &str) -> Child {
    let mut child = r
        .clean_env(Command::new(BIN).args(args))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start relay: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        // A child killed before reading it only breaks the pipe.
        let _ = std::io::Write::write_all(&mut stdin, input.as_bytes());
    }
    child
}

fn drain(pipe: Option<impl Read>) -> String {
    let mut buf = Vec::new();
    if let Some(mut p) = pipe {
        let _ = p.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Starts one child with a random role.
fn start(r: &Relay, rng: &mut Rng, ledger: &mut Ledger, serial: usize) -> Proc {
    let ep = *rng.pick(&ENDPOINTS);
    let role = if !ledger.unacked.is_empty() && rng.chance(30) {
        let n = 1 + rng.below(2.min(ledger.unacked.len() as u64)) as usize;
        let i = rng.below(ledger.unacked.len() as u64) as usize;
        let (ep, first) = ledger.unacked.swap_remove(i);
        let mut ids = vec![first];
        // A second id of the same endpoint, if there is one.
        if n > 1
            && let Some(j) = ledger.unacked.iter().position(|(e, _)| *e == ep)
        {
            ids.push(ledger.unacked.swap_remove(j).1);
        }
        Role::Ack {
            ep,
            ids,
            nack: rng.chance(20),
        }
    } else if rng.chance(35) {
        Role::Recv { ep }
    } else {
        let lines = if rng.chance(15) {
            2 + rng.below(6) as usize
        } else {
            1
        };
        Role::Send { ep, lines }
    };
    let mut input = String::new();
    let args: Vec<String> = match &role {
        Role::Send { ep, lines } if *lines > 1 => {
            for i in 0..*lines {
                let pad = "x".repeat(rng.below(2000) as usize);
                input.push_str(&format!(
                    "{{\"subject\":\"{ep}\",\"payload\":{{\"n\":{serial},\"i\":{i},\"pad\":\"{pad}\"}}}}\n"
                ));
            }
            vec!["send".into(), "--batch".into()]
        }
        Role::Send { ep, .. } => {
            let mut a = vec![
                "send".into(),
                (*ep).into(),
                format!(
                    "{{\"n\":{serial},\"pad\":\"{}\"}}",
                    "x".repeat(rng.below(2000) as usize)
                ),
            ];
            if rng.chance(20) {
                a.extend(["--priority".into(), "high".into()]);
            }
            a
        }
        Role::Recv { ep } => vec![
            "recv".into(),
            (*ep).into(),
            "--json".into(),
            "-n".into(),
            (1 + rng.below(3)).to_string(),
        ],
        Role::Ack { ep, ids, nack } => {
            let mut a: Vec<String> = vec![if *nack { "nack" } else { "ack" }.into(), (*ep).into()];
            a.extend(ids.iter().cloned());
            if *nack {
                a.extend(["--reason".into(), "crash test".into()]);
            }
            a
        }
    };
    let kill_at = rng.chance(40).then(|| {
        let span = ledger.mean_life().as_micros().max(200) as u64 * 12 / 10;
        Instant::now() + Duration::from_micros(rng.below(span))
    });
    ledger.children += 1;
    Proc {
        role,
        child: spawn(r, &args, &input),
        started: Instant::now(),
        kill_at,
    }
}

/// Books the outcome of one finished child.
fn settle(mut p: Proc, status: std::process::ExitStatus, ledger: &mut Ledger, seed: u64) {
    let stdout = drain(p.child.stdout.take());
    let stderr = drain(p.child.stderr.take());
    let killed = status.signal() == Some(9);
    let role_name = match &p.role {
        Role::Send { lines: 1, .. } => "send",
        Role::Send { .. } => "batch",
        Role::Recv { .. } => "recv",
        Role::Ack { nack: false, .. } => "ack",
        Role::Ack { nack: true, .. } => "nack",
    };
    if killed {
        ledger.kills += 1;
        *ledger.kills_by_role.entry(role_name).or_default() += 1;
    } else {
        ledger.lifetimes.push(p.started.elapsed());
    }
    let code = status.code();
    let role = p.role.clone();
    let describe = |what: &str| {
        format!(
            "[seed {seed}] {role_name} {role:?}: {what}\n    status {status}, stdout {stdout:?}, stderr {stderr:?}"
        )
    };
    match &p.role {
        Role::Send { ep, lines } => {
            // Every complete line is the id of a delivered message.
            let complete = stdout.rfind('\n').map_or("", |i| &stdout[..i]);
            let ids: Vec<&str> = complete.lines().collect();
            if !killed && code != Some(0) {
                ledger
                    .failures
                    .push(describe("a send neither succeeded nor was killed"));
            } else if code == Some(0) && ids.len() != *lines {
                ledger
                    .failures
                    .push(describe("send exited 0 without printing an id per message"));
            }
            for id in ids {
                if !is_ulid(id) {
                    ledger
                        .failures
                        .push(describe("send printed a line that is not an id"));
                    continue;
                }
                if killed {
                    ledger.sent_by_killed += 1;
                }
                ledger.sent.insert(id.to_string(), ep);
            }
        }
        Role::Recv { ep } => {
            if !killed && code != Some(0) && code != Some(66) {
                ledger.failures.push(describe(
                    "a recv neither succeeded, found nothing, nor was killed",
                ));
            }
            // Every complete line is a message handed to this receiver.
            let complete = stdout.rfind('\n').map_or("", |i| &stdout[..i]);
            for line in complete.lines() {
                let id = serde_json::from_str::<Value>(line)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(String::from));
                let Some(id) = id else {
                    ledger.failures.push(format!(
                        "[seed {seed}] recv {ep} printed a line that is not an envelope: {line:?}"
                    ));
                    continue;
                };
                let entry = ledger.received.entry(id.clone()).or_insert((ep, 0));
                entry.1 += 1;
                if entry.1 == 1 {
                    ledger.unacked.push((ep, id));
                }
            }
        }
        Role::Ack { ids, nack, .. } => {
            if code == Some(0) {
                let set = if *nack {
                    &mut ledger.nacked
                } else {
                    &mut ledger.acked
                };
                set.extend(ids.iter().cloned());
            } else if killed {
                ledger.maybe_done.extend(ids.iter().cloned());
            } else {
                ledger.failures.push(describe(
                    "an ack/nack of a received id neither succeeded nor was killed",
                ));
            }
        }
    }
}

/// One round: `PER_ROUND` children, `CONCURRENCY` at a time, some killed.
fn round(r: &Relay, rng: &mut Rng, ledger: &mut Ledger, seed: u64) {
    let mut running: Vec<Proc> = Vec::new();
    let mut started = 0;
    while started < PER_ROUND || !running.is_empty() {
        while running.len() < CONCURRENCY && started < PER_ROUND {
            let serial = ledger.children;
            running.push(start(r, rng, ledger, serial));
            started += 1;
        }
        let now = Instant::now();
        let mut i = 0;
        while i < running.len() {
            let p = &mut running[i];
            if p.kill_at.is_some_and(|t| now >= t) {
                p.kill_at = None;
                // SIGKILL; a child that already exited is unaffected (its
                // status says whether the signal was what ended it).
                let _ = p.child.kill();
            }
            match p.child.try_wait() {
                Ok(Some(status)) => {
                    let p = running.swap_remove(i);
                    settle(p, status, ledger, seed);
                }
                Ok(None) => {
                    if p.started.elapsed() > Duration::from_secs(60) {
                        let _ = p.child.kill();
                        ledger
                            .failures
                            .push(format!("[seed {seed}] {:?} hung for 60 s", p.role));
                    }
                    i += 1;
                }
                Err(e) => panic!("cannot wait for a child: {e}"),
            }
        }
        thread::sleep(Duration::from_micros(150));
    }
}

/// Where each message id is on disk: (endpoint, subdirectory) per copy.
type Disk = HashMap<String, Vec<(&'static str, &'static str)>>;

/// Scans every endpoint; unreadable or partial messages are failures.
fn scan(r: &Relay, ledger: &mut Ledger, seed: u64) -> Disk {
    let mut disk: Disk = HashMap::new();
    for ep in ENDPOINTS {
        for sub in ["new", "cur", "failed"] {
            for name in r.files(ep, sub) {
                if name.starts_with('.') || name.ends_with(".reason.json") {
                    continue;
                }
                let Some(id) = name.strip_suffix(".json") else {
                    continue;
                };
                let path = r.mailbox(ep).join(sub).join(&name);
                let bytes = std::fs::read(&path).unwrap_or_default();
                match relay::envelope::Envelope::parse(&bytes) {
                    Ok(env) if env.id == id => {}
                    Ok(env) => ledger.failures.push(format!(
                        "[seed {seed}] {} holds envelope {}",
                        path.display(),
                        env.id
                    )),
                    Err(e) => ledger.failures.push(format!(
                        "[seed {seed}] partial or unparseable file {} ({} bytes): {e}",
                        path.display(),
                        bytes.len()
                    )),
                }
                disk.entry(id.to_string()).or_default().push((ep, sub));
            }
        }
    }
    disk
}

/// The invariants over the whole history so far.
fn check(r: &Relay, ledger: &mut Ledger, seed: u64) -> Disk {
    let disk = scan(r, ledger, seed);
    let mut problems = Vec::new();
    for (id, places) in &disk {
        if places.len() > 1 {
            problems.push(format!(
                "{id} is on disk {} times: {places:?}",
                places.len()
            ));
        }
    }
    for (id, ep) in &ledger.sent {
        let places = disk.get(id).map_or(&[][..], Vec::as_slice);
        let wrong_ep = places.iter().any(|(e, _)| e != ep);
        if wrong_ep {
            problems.push(format!("{id} sent to {ep} is at {places:?}"));
        }
        if ledger.acked.contains(id) {
            if !places.is_empty() {
                problems.push(format!(
                    "{id} was acked (exit 0) but is still at {places:?}"
                ));
            }
        } else if ledger.nacked.contains(id) {
            if places != [(*ep, "failed")] {
                problems.push(format!("{id} was nacked (exit 0) but is at {places:?}"));
            }
        } else if ledger.maybe_done.contains(id) {
            if places.iter().any(|(_, s)| *s == "new") {
                problems.push(format!("{id} was being acked but is in new/"));
            }
        } else if places.len() != 1 {
            problems.push(format!(
                "{id} (send exited 0) is on disk {} times: {places:?}",
                places.len()
            ));
        }
    }
    for (id, (ep, times)) in &ledger.received {
        if *times > 1 {
            problems.push(format!("{id} in {ep} was handed to {times} receivers"));
        }
        if disk
            .get(id)
            .is_some_and(|p| p.iter().any(|(_, s)| *s == "new"))
        {
            problems.push(format!("{id} was received but is back in new/"));
        }
    }
    for p in problems {
        ledger.failures.push(format!("[seed {seed}] {p}"));
    }
    disk
}

/// `doctor --repair` (clock 2 h ahead: killed writers' tmp/ files are stale)
/// must exit 0 and keep every message; then `doctor` must exit 0.
fn doctor(r: &Relay, ledger: &mut Ledger, before: &Disk, seed: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let repair = r
        .cmd(["doctor", "--repair", "--json"])
        .at(now + 2 * 3_600_000)
        .run();
    if repair.code != 0 {
        ledger.failures.push(format!(
            "[seed {seed}] doctor --repair exited {}: {} {}",
            repair.code, repair.stdout, repair.stderr
        ));
    }
    let report: Value = serde_json::from_str(&repair.stdout).unwrap_or(Value::Null);
    for f in report["findings"].as_array().into_iter().flatten() {
        let check = f["check"].as_str().unwrap_or("?").to_string();
        *ledger.repairs.entry(check).or_default() += 1;
        if f["repaired"] != true {
            ledger
                .failures
                .push(format!("[seed {seed}] doctor could not repair: {f}"));
        }
    }
    let after = scan(r, ledger, seed);
    let ids = |d: &Disk| d.keys().cloned().collect::<HashSet<_>>();
    if ids(before) != ids(&after) {
        ledger.failures.push(format!(
            "[seed {seed}] doctor --repair changed the set of messages: lost {:?}, gained {:?}",
            ids(before).difference(&ids(&after)).collect::<Vec<_>>(),
            ids(&after).difference(&ids(before)).collect::<Vec<_>>()
        ));
    }
    for ep in ENDPOINTS {
        if !r.files(ep, "tmp").is_empty() {
            ledger.failures.push(format!(
                "[seed {seed}] stale tmp/ files of {ep} left after repair: {:?}",
                r.files(ep, "tmp")
            ));
        }
    }
    let plain = r.cmd(["doctor"]).run();
    if plain.code != 0 {
        ledger.failures.push(format!(
            "[seed {seed}] doctor after repair exited {}: {} {}",
            plain.code, plain.stdout, plain.stderr
        ));
    }
}

#[test]
fn kill_9_at_random_moments_loses_or_duplicates_nothing() {
    let target: usize = std::env::var("RELAY_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SHORT_KILLS);
    let seed: u64 = std::env::var("RELAY_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    println!("crash: seed {seed} (replay with RELAY_CRASH_SEED={seed}), aiming for {target} kills");
    let mut rng = Rng(seed);
    let r = Relay::new();
    r.add(&ENDPOINTS);
    r.write_file("config.json", CONFIG);
    let mut ledger = Ledger::default();
    let started = Instant::now();
    let mut rounds = 0;
    // Long runs stop early on the first failing round; a cap keeps a
    // hopeless aim (kills that never land) from running forever.
    let max_rounds = target.div_ceil(3).max(10);
    while ledger.kills < target && rounds < max_rounds && ledger.failures.is_empty() {
        round(&r, &mut rng, &mut ledger, seed);
        rounds += 1;
        let disk = check(&r, &mut ledger, seed);
        doctor(&r, &mut ledger, &disk, seed);
    }
    let on_disk = scan(&r, &mut ledger, seed).len();
    println!(
        "crash: {} kills ({:?}) in {rounds} rounds of {PER_ROUND} children ({} children) in {:?}",
        ledger.kills,
        ledger.kills_by_role,
        ledger.children,
        started.elapsed()
    );
    println!(
        "crash: {} messages sent ({} ids printed by sends killed right after), {} received, {} acked, {} nacked, {} ids in killed acks/nacks, {} on disk at the end",
        ledger.sent.len(),
        ledger.sent_by_killed,
        ledger.received.len(),
        ledger.acked.len(),
        ledger.nacked.len(),
        ledger.maybe_done.len(),
        on_disk
    );
    println!(
        "crash: doctor --repair findings (all repaired): {:?}",
        ledger.repairs
    );
    assert!(
        ledger.failures.is_empty(),
        "crash harness (seed {seed}) found {} problem(s):\n{}",
        ledger.failures.len(),
        ledger.failures.join("\n")
    );
    assert!(
        ledger.kills >= target.min(SHORT_KILLS) / 2,
        "only {} kills landed (seed {seed})",
        ledger.kills
    );
}

/// Consumers (`recv --follow --exec`, leases of 2 s) killed with `kill -9`
/// while their handlers hold claims, round after round; between rounds the
/// clock moves past every lease, so the next round's consumers (and a
/// final `gc` and drain) find the claims the killed ones left in `cur/`.
/// At the end no message is stranded: each is acked (gone, acked at most
/// once by the consumers' reports) or dead-lettered as `nack` or
/// `max_deliveries`; none is left in `new/` or `cur/`, and `doctor` is clean.
#[test]
fn consumers_killed_while_holding_leases_strand_nothing() {
    // Long mode (RELAY_CRASH_KILLS) runs more rounds, about 3 kills each.
    let rounds = std::env::var("RELAY_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(8, |k| (k / 3).max(8));
    let messages = 5 * rounds;
    const CONSUMERS: usize = 3;
    let seed: u64 = std::env::var("RELAY_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    println!("crash (leases): seed {seed} (replay with RELAY_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let r = Relay::new();
    let ep = "crash.l";
    r.add(&[ep]);
    r.write_file(
        "config.json",
        r#"{"delivery": {"maxDeliveries": 3},
            "reliability": {"circuitBreaker": {"failureThreshold": 1000000},
                            "rateLimit": {"maxPerWindow": 1000000}}}"#,
    );
    // The real time: a claim the index never recorded (its consumer was
    // killed between the rename and the insert) runs out the default lease
    // after its rename into cur/, which the file's ctime tells.
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut now = start;
    let mut sent = HashSet::new();
    for i in 0..messages {
        let id = r
            .cmd(["send", ep, &format!("{{\"n\":{i}}}")])
            .at(now)
            .success()
            .id();
        sent.insert(id);
    }
    // Most handlers ack after a short while; ids ending in 0 or 1 nack.
    let handler = r#"sleep 0.02; case "$RELAY_MESSAGE_ID" in *0|*1) exit 1;; esac"#;
    let mut acked: HashMap<String, usize> = HashMap::new();
    let mut kills = 0;
    let book = |stdout: &str, acked: &mut HashMap<String, usize>| {
        for line in stdout.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if v["outcome"] == "acked"
                && let Some(id) = v["id"].as_str()
            {
                *acked.entry(id.to_string()).or_default() += 1;
            }
        }
    };
    for _ in 0..rounds {
        let at = now.to_string();
        let mut consumers: Vec<(Child, Instant)> = (0..CONSUMERS)
            .map(|_| {
                let child = r
                    .clean_env(Command::new(BIN).args([
                        "recv",
                        ep,
                        "--follow",
                        "--exec",
                        handler,
                        "--lease",
                        "2s",
                        "--concurrency",
                        "2",
                        "--json",
                    ]))
                    .env("RELAY_FAKE_NOW_MS", &at)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap_or_else(|e| panic!("cannot start a consumer: {e}"));
                let kill_at = Instant::now() + Duration::from_millis(20 + rng.below(250));
                (child, kill_at)
            })
            .collect();
        while !consumers.is_empty() {
            let mut i = 0;
            while i < consumers.len() {
                if Instant::now() >= consumers[i].1 {
                    let (mut child, _) = consumers.swap_remove(i);
                    let _ = child.kill();
                    let status = child.wait().unwrap_or_else(|e| panic!("cannot wait: {e}"));
                    if status.signal() == Some(9) {
                        kills += 1;
                    }
                    book(&drain(child.stdout.take()), &mut acked);
                } else {
                    i += 1;
                }
            }
            thread::sleep(Duration::from_millis(2));
        }
        // Past every lease of this round.
        now += 3000;
    }
    // Whatever runs next finds the stranded claims: gc, then one drain,
    // past the default lease (30 min) of claims the index does not know.
    now = now.max(start + 32 * 60_000);
    r.cmd(["gc"]).at(now).success();
    let drain_out = r
        .cmd(["recv", ep, "--exec", handler, "-n", "1000", "--json"])
        .at(now)
        .run();
    if drain_out.code != 0 && drain_out.code != 66 {
        drain_out.fail("the final drain failed");
    }
    book(&drain_out.stdout, &mut acked);

    let mut problems = Vec::new();
    let mut stranded = HashSet::new();
    for sub in ["new", "cur"] {
        let left = r.files(ep, sub);
        if !left.is_empty() {
            problems.push(format!("stranded in {sub}/: {left:?}"));
        }
        stranded.extend(
            left.iter()
                .filter_map(|f| f.strip_suffix(".json").map(String::from)),
        );
    }
    let failed: HashSet<String> = r
        .files(ep, "failed")
        .into_iter()
        .filter_map(|f| f.strip_suffix(".json").map(String::from))
        .filter(|f| !f.ends_with(".reason"))
        .collect();
    for id in &failed {
        let reason = r.read_json(&format!("mailboxes/{ep}/failed/{id}.reason.json"));
        let code = reason["code"].as_str().unwrap_or("?");
        if code != "nack" && code != "max_deliveries" {
            problems.push(format!("{id} dead-lettered as {code}"));
        }
        if acked.contains_key(id) {
            problems.push(format!("{id} was reported acked but is dead-lettered"));
        }
        if !sent.contains(id) {
            problems.push(format!("{id} in failed/ was never sent"));
        }
    }
    for (id, n) in &acked {
        if *n > 1 {
            problems.push(format!("{id} was acked {n} times"));
        }
        if !sent.contains(id) {
            problems.push(format!("{id} acked but never sent"));
        }
    }
    // A consumer killed between an ack's unlink and its insert leaves the
    // index behind the Maildir: repaired, never by moving a message.
    let before = r.mailbox_tree();
    let repair = r.cmd(["doctor", "--repair"]).at(now).run();
    if repair.code != 0 {
        problems.push(format!(
            "doctor --repair exited {}: {} {}",
            repair.code, repair.stdout, repair.stderr
        ));
    }
    if r.mailbox_tree() != before {
        problems.push("doctor --repair moved messages".to_string());
    }
    let doctor = r.cmd(["doctor"]).at(now).run();
    if doctor.code != 0 {
        problems.push(format!(
            "doctor exited {}: {} {}",
            doctor.code, doctor.stdout, doctor.stderr
        ));
    }
    println!(
        "crash (leases): {kills} consumers killed, {} redeliveries, {} acked (gone), {} dead-lettered, {} left in new/ or cur/, of {messages}",
        r.cmd(["status", "--json"]).at(now).run().json()["redeliveries"],
        sent.iter()
            .filter(|id| !failed.contains(*id) && !stranded.contains(*id))
            .count(),
        failed.len(),
        stranded.len()
    );
    assert!(
        problems.is_empty(),
        "crash harness (leases, seed {seed}) found {} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(kills > 0, "no consumer was killed (seed {seed})");
}

// ---------------------------------------------------------------------------
// Maintenance beside the traffic (issue 11, class 8).

/// Rounds the maintenance runs aim for in short mode
/// (`RELAY_CRASH_ROUNDS` for more).
const MAINTENANCE_ROUNDS: usize = 12;

fn maintenance_rounds() -> usize {
    std::env::var("RELAY_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MAINTENANCE_ROUNDS)
}

fn crash_seed() -> u64 {
    std::env::var("RELAY_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        })
}

/// The kill -9 rounds with `doctor --repair` running beside them all the
/// time: every repair exits 0 with everything it found repaired, and the
/// history checks (nothing lost, nothing twice) and the final doctor hold.
#[test]
fn doctor_repair_beside_kill_9_traffic_keeps_every_message_and_a_consistent_index() {
    let seed = crash_seed();
    println!("crash/doctor: seed {seed} (replay with RELAY_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let r = Relay::new();
    r.add(&ENDPOINTS);
    r.write_file("config.json", CONFIG);
    let mut ledger = Ledger::default();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let repairs: Vec<(i32, String, String)> = thread::scope(|s| {
        let doctor = s.spawn(|| {
            let mut runs = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let o = r.cmd(["doctor", "--repair", "--json"]).run();
                runs.push((o.code, o.stdout.clone(), o.stderr.clone()));
            }
            runs
        });
        for _ in 0..maintenance_rounds() {
            round(&r, &mut rng, &mut ledger, seed);
            if !ledger.failures.is_empty() {
                break;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        doctor.join().expect("doctor thread")
    });
    for (code, stdout, stderr) in &repairs {
        let report: Value = serde_json::from_str(stdout).unwrap_or(Value::Null);
        let unrepaired: Vec<&Value> = report["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f["repaired"] != true)
            .collect();
        if *code != 0 || !unrepaired.is_empty() {
            ledger.failures.push(format!(
                "[seed {seed}] doctor --repair beside the traffic exited {code}: {unrepaired:?} {stderr}"
            ));
        }
    }
    let disk = check(&r, &mut ledger, seed);
    doctor(&r, &mut ledger, &disk, seed);
    println!(
        "crash/doctor: {} repairs beside {} children ({} kills); {} sent, {} acked",
        repairs.len(),
        ledger.children,
        ledger.kills,
        ledger.sent.len(),
        ledger.acked.len()
    );
    assert!(
        ledger.failures.is_empty(),
        "crash/doctor (seed {seed}) found {} problem(s):\n{}",
        ledger.failures.len(),
        ledger.failures.join("\n")
    );
}

/// `endpoints remove` started at random moments among concurrent sends to
/// the same endpoint, with backpressure on (senders take the mailbox lock)
/// and off (they take none): a send that exited 0 always left its message
/// in the mailbox (the remove refused), and a remove that exited 0 left no
/// directory behind.
#[test]
fn endpoints_remove_racing_sends_loses_no_acknowledged_message() {
    const EP: &str = "crash.rm";
    let seed = crash_seed();
    println!("crash/remove: seed {seed} (replay with RELAY_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let r = Relay::new();
    let (mut removed, mut refused, mut sends_ok) = (0, 0, 0);
    let mut failures = Vec::new();
    for round in 0..maintenance_rounds() * 4 {
        let bp = round % 2 == 0;
        r.write_file(
            "config.json",
            format!(r#"{{"reliability": {{"backpressure": {{"enabled": {bp}}}}}}}"#),
        );
        r.add(&[EP]);
        let senders = 2 + rng.below(4) as usize;
        let remove_after = rng.below(senders as u64 + 1) as usize;
        let mut children: Vec<(bool, Child)> = Vec::new();
        for i in 0..=senders {
            if i == remove_after {
                let args = ["endpoints", "remove", EP].map(String::from);
                children.push((true, spawn(&r, &args, "")));
            }
            if i < senders {
                let args = ["send", EP, &format!("r{round}-{i}")].map(String::from);
                children.push((false, spawn(&r, &args, "")));
            }
            if rng.chance(50) {
                thread::sleep(Duration::from_micros(rng.below(3000)));
            }
        }
        let mut ok_ids = Vec::new();
        let mut remove_ok = false;
        for (is_remove, mut child) in children {
            let status = child.wait().expect("wait");
            let out = drain(child.stdout.take());
            if is_remove {
                remove_ok = status.success();
            } else if status.success() {
                ok_ids.push(out.trim().to_string());
            }
        }
        sends_ok += ok_ids.len();
        if remove_ok {
            removed += 1;
        } else {
            refused += 1;
        }
        let new = r.files(EP, "new");
        for id in &ok_ids {
            if !new.contains(&format!("{id}.json")) {
                failures.push(format!(
                    "[seed {seed}] round {round} (backpressure {bp}): send {id} exited 0 but its message is gone (remove exited 0: {remove_ok})"
                ));
            }
        }
        let graves: Vec<String> = std::fs::read_dir(r.path("mailboxes"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".removed-"))
            .collect();
        if !graves.is_empty() {
            failures.push(format!(
                "[seed {seed}] round {round}: left behind {graves:?}"
            ));
        }
        // Sends that found no endpoint dead-lettered into a directory of
        // that name: start the next round from nothing.
        if r.mailbox(EP).exists() {
            std::fs::remove_dir_all(r.mailbox(EP)).expect("reset the mailbox");
        }
    }
    println!(
        "crash/remove: {removed} removes went through, {refused} refused, {sends_ok} sends exited 0"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
