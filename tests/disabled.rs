//! `enabled: false` turns a reliability feature off entirely: relay then
//! behaves as the core does, however tight the other knobs are.

use std::thread;

use crate::harness::{Relay, T};

/// Every kind of event the reliability layer records.
const RELIABILITY_EVENTS: [&str; 7] = [
    "rate_limit_soft",
    "rate_limit_hard",
    "breaker_opened",
    "breaker_half_open",
    "breaker_closed",
    "backpressure_warning",
    "backpressure_rejected",
];

#[test]
fn with_all_three_disabled_300_sends_and_10_nacks_all_succeed() {
    let r = Relay::new();
    r.add(&["q"]);
    r.write_file(
        "config.json",
        r#"{"reliability":{
            "rateLimit":{"enabled":false,"maxPerWindow":1},
            "circuitBreaker":{"enabled":false,"failureThreshold":1},
            "backpressure":{"enabled":false,"maxMailboxSize":1}}}"#,
    );
    // One sender, one pinned instant, a mailbox of capacity 1: every knob
    // would refuse all but the first if it were on. Four threads save time.
    thread::scope(|s| {
        for w in 0..4 {
            let r = &r;
            s.spawn(move || {
                for i in 0..75 {
                    r.cmd(["send", "q", &format!("w{w}m{i}"), "--from", "agent.a"])
                        .at(T)
                        .success()
                        .stderr_empty();
                }
            });
        }
    });
    assert_eq!(r.files("q", "new").len(), 300);

    let out = r.cmd(["recv", "q", "-n", "10", "--json"]).at(T).success();
    let ids: Vec<String> = out
        .json_lines()
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids.len(), 10);
    for id in &ids {
        r.cmd(["nack", "q", id]).at(T).success();
    }
    assert_eq!(
        r.files("q", "failed").len(),
        20,
        "10 dead letters + sidecars"
    );
    // No breaker tripped, no bucket emptied, no mailbox full.
    for i in 0..3 {
        r.cmd(["send", "q", &format!("after{i}"), "--from", "agent.a"])
            .at(T)
            .success()
            .stderr_empty();
    }
    assert_eq!(r.files("q", "new").len(), 293);

    let out = r.cmd(["breakers", "--json"]).at(T).success();
    assert_eq!(out.json()["breakers"], serde_json::json!([]));
    let out = r.cmd(["limits", "--json"]).at(T).success();
    assert_eq!(out.json()["enabled"], false);
    assert_eq!(out.json()["limits"], serde_json::json!([]));
    let events = r.events(T);
    for e in &events {
        let kind = e["kind"].as_str().unwrap_or_default();
        assert!(
            !RELIABILITY_EVENTS.contains(&kind),
            "a disabled feature recorded {e}"
        );
    }
}

#[test]
fn each_feature_can_be_disabled_on_its_own() {
    let off = |section: &str, knobs: &str| {
        let r = Relay::new();
        r.add(&["q"]);
        r.write_file(
            "config.json",
            format!(r#"{{"reliability":{{"{section}":{{"enabled":false,{knobs}}}}}}}"#),
        );
        r
    };

    let r = off("rateLimit", r#""maxPerWindow":1"#);
    for _ in 0..5 {
        r.cmd(["send", "q", "x", "--from", "a"])
            .at(T)
            .success()
            .stderr_empty();
    }

    let r = off("backpressure", r#""maxMailboxSize":1"#);
    for _ in 0..5 {
        r.cmd(["send", "q", "x", "--priority", "background"])
            .at(T)
            .success()
            .stderr_empty();
    }
    assert_eq!(r.files("q", "new").len(), 5);

    let r = off("circuitBreaker", r#""failureThreshold":1"#);
    for _ in 0..3 {
        let id = r
            .cmd(["send", "q", "x", "--from", "a"])
            .at(T)
            .success()
            .id();
        r.cmd(["recv", "q"]).at(T).success();
        r.cmd(["nack", "q", &id]).at(T).success();
    }
    r.cmd(["breakers", "open", "a", "q"]).at(T).success();
    r.cmd(["send", "q", "still flows", "--from", "a"])
        .at(T)
        .success()
        .stderr_empty();
}

#[test]
fn re_enabling_a_feature_takes_effect_on_the_next_invocation() {
    let r = Relay::new();
    r.add(&["q"]);
    r.write_file(
        "config.json",
        r#"{"reliability":{"backpressure":{"enabled":false,"maxMailboxSize":2}}}"#,
    );
    for _ in 0..3 {
        r.cmd(["send", "q", "x"]).at(T).success();
    }
    r.cmd(["config", "set", "reliability.backpressure.enabled", "true"])
        .success();
    r.cmd(["send", "q", "x"])
        .at(T)
        .code(75)
        .stderr_has(&["mailbox 'q'", "3/2"]);
    assert_eq!(r.files("q", "new").len(), 3);
}
