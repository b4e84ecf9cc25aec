//! Eight relay processes started at once, five rounds: the token bucket
//! never admits more than it holds, a mailbox never exceeds its capacity,
//! and a half-open breaker never admits more probes than configured.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;

use crate::harness::{Output, Relay, T};

/// 2026-01-01T00:00:00.000Z.
const PROCS: usize = 8;
const ROUNDS: usize = 5;

/// Runs `rounds` rounds of `PROCS` concurrent `relay send q ...` (at `at`,
/// from `from`), each round started all at once; every output.
fn storm<'a>(r: &'a Relay, from: &str, at: u64, rounds: usize) -> Vec<Output<'a>> {
    let mut outs = Vec::new();
    for round in 0..rounds {
        let running: Vec<_> = (0..PROCS)
            .map(|p| {
                r.cmd(["send", "q", &format!("r{round}p{p}"), "--from", from])
                    .at(at)
                    .spawn()
            })
            .collect();
        outs.extend(running.into_iter().map(|c| c.wait()));
    }
    outs
}

/// How many exited 0; fails on any status other than 0 and 75.
fn admitted(outs: &[Output<'_>]) -> usize {
    for o in outs {
        if o.code != 0 && o.code != 75 {
            o.fail("a racing send neither succeeded nor was refused with 75");
        }
    }
    outs.iter().filter(|o| o.code == 0).count()
}

#[test]
fn racing_senders_never_overdraw_the_token_bucket() {
    let r = Relay::new();
    r.add(&["q"]);
    r.write_file(
        "config.json",
        r#"{"reliability":{"rateLimit":{"maxPerWindow":10}}}"#,
    );
    let outs = storm(&r, "agent.a", T, ROUNDS);
    assert_eq!(outs.len(), PROCS * ROUNDS);
    assert_eq!(admitted(&outs), 10, "exactly the bucket's 10 tokens");
    for o in outs.iter().filter(|o| o.code == 75) {
        if !o
            .stderr
            .contains("rate limit exceeded for sender 'agent.a'")
        {
            o.fail("a refusal that is not the rate limit");
        }
    }
    assert_eq!(r.files("q", "new").len(), 10, "exactly 10 files on disk");
    assert!(r.files("q", "tmp").is_empty());
    assert_eq!(r.events_of(T, "rate_limit_hard").len(), 30);
}

#[test]
fn racing_senders_never_overfill_a_mailbox() {
    let r = Relay::new();
    r.add(&["q"]);
    r.write_file(
        "config.json",
        r#"{"reliability":{"rateLimit":{"enabled":false},"backpressure":{"maxMailboxSize":12}}}"#,
    );
    let new_dir = r.mailbox("q").join("new");
    let cur_dir = r.mailbox("q").join("cur");
    let count = |d: &std::path::Path| std::fs::read_dir(d).map_or(0, |rd| rd.count());
    let done = AtomicBool::new(false);
    let max_seen = AtomicUsize::new(0);
    let outs = thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let depth = count(&new_dir) + count(&cur_dir);
                max_seen.fetch_max(depth, Ordering::Relaxed);
                thread::yield_now();
            }
        });
        let outs = storm(&r, "agent.a", T, ROUNDS);
        done.store(true, Ordering::Relaxed);
        outs
    });
    assert_eq!(admitted(&outs), 12, "exactly the mailbox's capacity");
    for o in outs.iter().filter(|o| o.code == 75) {
        if !o.stderr.contains("mailbox 'q'") {
            o.fail("a refusal that does not name the mailbox");
        }
    }
    assert_eq!(r.files("q", "new").len(), 12, "exactly 12 delivered");
    assert!(r.files("q", "tmp").is_empty());
    let max_seen = max_seen.load(Ordering::Relaxed);
    assert!(max_seen <= 12, "depth reached {max_seen} during the race");
}

#[test]
fn racing_senders_get_exactly_the_half_open_probes() {
    let r = Relay::new();
    r.add(&["q"]);
    r.write_file(
        "config.json",
        r#"{"reliability":{"circuitBreaker":{"halfOpenProbeCount":2}}}"#,
    );
    r.cmd(["breakers", "open", "agent.a", "q"]).at(T).success();
    // After the 30 s cooldown: half-open, two probes.
    let outs = storm(&r, "agent.a", T + 30_000, 1);
    assert_eq!(admitted(&outs), 2, "exactly halfOpenProbeCount probes");
    for o in outs.iter().filter(|o| o.code == 75) {
        if !o.stderr.contains("agent.a -> q") {
            o.fail("a refusal that does not name the pair");
        }
    }
    assert_eq!(r.files("q", "new").len(), 2);
    let out = r.cmd(["breakers", "--json"]).at(T + 30_000).success();
    let b = &out.json()["breakers"][0];
    assert_eq!(b["state"], "half-open", "{b}");
    assert_eq!(b["probesInFlight"], 2, "{b}");
    // A second storm while the probes are unresolved admits nobody.
    let outs = storm(&r, "agent.a", T + 31_000, 1);
    assert_eq!(admitted(&outs), 0);
    assert_eq!(r.files("q", "new").len(), 2);
}
