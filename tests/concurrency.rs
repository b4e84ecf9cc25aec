//! Racing processes on one home: concurrent receivers claim every message
//! exactly once (the `new/` -> `cur/` rename has one winner).

use std::collections::BTreeSet;
use std::thread;

use crate::harness::Relay;

const MESSAGES: usize = 400;
const WORKERS: usize = 4;

#[test]
fn four_receivers_drain_400_messages_each_exactly_once() {
    let r = Relay::new();
    r.add(&["q"]);
    // 400 sends from one sender would trip the (future) default rate limit.
    r.write_file(
        "config.json",
        r#"{"reliability":{"rateLimit":{"enabled":false}}}"#,
    );

    // Sent beforehand, by parallel senders to save time. The first send runs
    // alone so the index exists: the race to create it has its own test.
    let first = r.send("q", "m0");
    let mut sent: Vec<String> = thread::scope(|s| {
        let handles: Vec<_> = (0..WORKERS)
            .map(|w| {
                let r = &r;
                s.spawn(move || {
                    (w + 1..MESSAGES)
                        .step_by(WORKERS)
                        .map(|i| r.send("q", &format!("m{i}")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    sent.push(first);
    let sent_set: BTreeSet<&String> = sent.iter().collect();
    assert_eq!(sent_set.len(), MESSAGES, "send ids are unique");
    assert_eq!(r.files("q", "new").len(), MESSAGES);

    // Each worker loops `relay recv q --json` until 66; two take batches.
    let received: Vec<Vec<String>> = thread::scope(|s| {
        let handles: Vec<_> = (0..WORKERS)
            .map(|w| {
                let r = &r;
                s.spawn(move || {
                    let count = if w % 2 == 0 { "1" } else { "3" };
                    let mut got = Vec::new();
                    loop {
                        let out = r.cmd(["recv", "q", "--json", "-n", count]).run();
                        match out.code {
                            0 => got.extend(
                                out.json_lines()
                                    .iter()
                                    .map(|v| v["id"].as_str().unwrap_or_default().to_string()),
                            ),
                            66 => return got,
                            _ => out.fail("a receiver failed"),
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });

    let all: Vec<&String> = received.iter().flatten().collect();
    let all_set: BTreeSet<&String> = all.iter().copied().collect();
    assert_eq!(
        all.len(),
        all_set.len(),
        "some message was received twice (per worker: {:?})",
        received.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert_eq!(all_set, sent_set, "received set differs from sent set");
    assert!(r.files("q", "new").is_empty());
    assert_eq!(r.files("q", "cur").len(), MESSAGES);
    assert!(r.files("q", "failed").is_empty());
}

/// Regression: up to bea4866 concurrent first sends raced to create relay.db
/// and some exited 74 "database is locked" after delivering.
#[test]
fn parallel_sends_into_a_fresh_home_all_succeed() {
    for _ in 0..20 {
        let r = Relay::new();
        r.add(&["q"]);
        let running: Vec<_> = (0..8)
            .map(|i| r.cmd(["send", "q", &format!("m{i}")]).spawn())
            .collect();
        for run in running {
            run.wait().success();
        }
        assert_eq!(r.files("q", "new").len(), 8);
        // Every delivery is in the index: acking after a claim finds it.
        let out = r.cmd(["recv", "q", "-n", "8", "--json"]).success();
        assert_eq!(out.json_lines().len(), 8);
    }
}
