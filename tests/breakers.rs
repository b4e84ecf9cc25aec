//! Circuit breakers per (sender, endpoint) pair: nacks and expired leases
//! trip them, sends on an open pair exit 75 with the time to the next probe,
//! half-open admits exactly the configured probes, acks close, a failed probe
//! reopens; `breakers reset` and `breakers open`. The clock is pinned.

use serde_json::Value;

use crate::harness::{Relay, T};

/// A world with endpoints `agent.b` and `agent.c` and `config`.
fn world(config: &str) -> Relay {
    let r = Relay::new();
    r.add(&["agent.b", "agent.c"]);
    r.write_file("config.json", config);
    r
}

/// `relay send EP PAYLOAD --from FROM` at `at`, asserting success; the id.
#[track_caller]
fn send(r: &Relay, from: &str, ep: &str, payload: &str, at: u64) -> String {
    r.cmd(["send", ep, payload, "--from", from])
        .at(at)
        .success()
        .id()
}

/// Claims the oldest message of `ep` at `at`; its id.
#[track_caller]
fn claim(r: &Relay, ep: &str, at: u64) -> String {
    let out = r.cmd(["recv", ep, "--json"]).at(at).success();
    match out.json()["id"].as_str() {
        Some(id) => id.to_string(),
        None => out.fail("recv --json printed no id"),
    }
}

/// `n` delivery failures on (from, ep) at `at`: send, claim, nack.
#[track_caller]
fn fail(r: &Relay, from: &str, ep: &str, n: usize, at: u64) {
    for i in 0..n {
        send(r, from, ep, &format!("doomed {i}"), at);
        let id = claim(r, ep, at);
        r.cmd(["nack", ep, &id, "--reason", "boom"])
            .at(at)
            .success();
    }
}

/// A success on (from, ep) at `at`: send, claim, ack.
#[track_caller]
fn succeed(r: &Relay, from: &str, ep: &str, at: u64) {
    send(r, from, ep, "fine", at);
    let id = claim(r, ep, at);
    r.cmd(["ack", ep, &id]).at(at).success();
}

/// The `breakers --json` row of (sender, ep) at `at`, or `Value::Null`.
#[track_caller]
fn breaker(r: &Relay, sender: &str, ep: &str, at: u64) -> Value {
    crate::surfaces::breaker(r, sender, ep, Some(at))
}

/// The state of (sender, ep): a pair without a row is closed.
#[track_caller]
fn state(r: &Relay, sender: &str, ep: &str, at: u64) -> String {
    match &breaker(r, sender, ep, at)["state"] {
        Value::String(s) => s.clone(),
        _ => "closed".into(),
    }
}

/// The number of messages waiting in `ep`'s new/.
fn waiting(r: &Relay, ep: &str) -> usize {
    r.files(ep, "new").len()
}

#[test]
fn five_consecutive_nacks_open_the_pair_and_only_that_pair() {
    let r = world("{}");
    fail(&r, "agent.a", "agent.b", 4, T);
    let b = breaker(&r, "agent.a", "agent.b", T);
    assert_eq!(b["state"], "closed", "{b}");
    assert_eq!(b["consecutiveFailures"], 4, "{b}");

    fail(&r, "agent.a", "agent.b", 1, T);
    let b = breaker(&r, "agent.a", "agent.b", T);
    assert_eq!(b["state"], "open", "{b}");
    assert_eq!(b["consecutiveFailures"], 5, "{b}");
    assert_eq!(b["trips"], 1, "{b}");
    assert_eq!(b["openedAt"], "2026-01-01T00:00:00.000Z", "{b}");
    assert_eq!(b["nextProbeAt"], "2026-01-01T00:00:30.000Z", "{b}");
    assert_eq!(b["nextProbeInMs"], 30_000, "{b}");
    assert_eq!(b["probesInFlight"], 0, "{b}");

    let before = waiting(&r, "agent.b");
    let out = r
        .cmd(["send", "agent.b", "hi", "--from", "agent.a"])
        .at(T)
        .code(75)
        .stdout_is("");
    let expected = "relay: circuit open for agent.a -> agent.b; next probe in 30.0s; to close it now: relay breakers reset agent.a agent.b\n";
    if out.stderr != expected {
        out.fail(&format!("stderr is not exactly {expected:?}"));
    }
    // Twelve seconds later the wait has shrunk accordingly.
    r.cmd(["send", "agent.b", "hi", "--from", "agent.a"])
        .at(T + 12_000)
        .code(75)
        .stderr_has(&["circuit open for agent.a -> agent.b; next probe in 18.0s"]);
    let out = r
        .cmd(["send", "agent.b", "hi", "--from", "agent.a", "--json"])
        .at(T + 12_000)
        .code(75);
    let err = out.stderr_json();
    assert_eq!(err["error"]["retryAfterMs"], 18_000, "{err}");
    assert_eq!(
        waiting(&r, "agent.b"),
        before,
        "a refused send writes nothing"
    );

    // Other senders to the endpoint, and the sender to other endpoints, flow.
    send(&r, "agent.z", "agent.b", "other sender", T + 12_000);
    send(&r, "agent.a", "agent.c", "other endpoint", T + 12_000);
    assert_eq!(waiting(&r, "agent.b"), before + 1);
    assert_eq!(state(&r, "agent.z", "agent.b", T + 12_000), "closed");
    assert_eq!(state(&r, "agent.a", "agent.c", T + 12_000), "closed");

    let opened = r.events_of(T + 12_000, "breaker_opened");
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert_eq!(opened[0]["sender"], "agent.a");
    assert_eq!(opened[0]["endpoint"], "agent.b");
    assert_eq!(opened[0]["at"], T);
}

#[test]
fn an_ack_resets_the_consecutive_failures() {
    let r = world(r#"{"reliability":{"circuitBreaker":{"failureThreshold":3}}}"#);
    fail(&r, "agent.a", "agent.b", 2, T);
    succeed(&r, "agent.a", "agent.b", T);
    assert_eq!(
        breaker(&r, "agent.a", "agent.b", T)["consecutiveFailures"],
        0
    );
    fail(&r, "agent.a", "agent.b", 2, T);
    assert_eq!(
        state(&r, "agent.a", "agent.b", T),
        "closed",
        "2 + 2 is not 3 in a row"
    );
    fail(&r, "agent.a", "agent.b", 1, T);
    assert_eq!(state(&r, "agent.a", "agent.b", T), "open");
}

#[test]
fn after_the_cooldown_exactly_the_configured_probes_are_admitted() {
    let r = world(
        r#"{"reliability":{"circuitBreaker":{"failureThreshold":2,"halfOpenProbeCount":2}}}"#,
    );
    fail(&r, "agent.a", "agent.b", 2, T);
    r.cmd(["send", "agent.b", "x", "--from", "agent.a"])
        .at(T + 29_999)
        .code(75)
        .stderr_has(&["circuit open for agent.a -> agent.b"]);
    assert!(r.events_of(T + 29_999, "breaker_half_open").is_empty());

    let at = T + 30_000;
    let b = breaker(&r, "agent.a", "agent.b", at);
    assert_eq!(b["state"], "half-open", "{b}");
    assert_eq!(b["probesInFlight"], 0, "{b}");

    let before = waiting(&r, "agent.b");
    send(&r, "agent.a", "agent.b", "probe 1", at);
    let half = r.events_of(at, "breaker_half_open");
    assert_eq!(half.len(), 1, "{half:?}");
    assert_eq!(half[0]["sender"], "agent.a");
    assert_eq!(half[0]["endpoint"], "agent.b");
    send(&r, "agent.a", "agent.b", "probe 2", at);
    let out = r
        .cmd(["send", "agent.b", "probe 3", "--from", "agent.a"])
        .at(at)
        .code(75)
        .stdout_is("");
    if !out.stderr.contains("agent.a -> agent.b") {
        out.fail("the refusal does not name the pair");
    }
    assert_eq!(waiting(&r, "agent.b"), before + 2);
    assert_eq!(breaker(&r, "agent.a", "agent.b", at)["probesInFlight"], 2);
    // Other senders are not probes and are not limited by them.
    send(&r, "agent.z", "agent.b", "bystander", at);
}

#[test]
fn the_half_open_transition_is_an_event_as_soon_as_it_is_shown() {
    let r = world(r#"{"reliability":{"circuitBreaker":{"failureThreshold":1}}}"#);
    fail(&r, "agent.a", "agent.b", 1, T);
    let at = T + 30_000;
    let out = r.cmd(["status", "--json"]).at(at).success();
    let v = out.json();
    assert_eq!(v["breakers"][0]["state"], "half-open", "{v}");
    let half: Vec<&Value> = v["events"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|e| e["kind"] == "breaker_half_open")
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        half.len(),
        1,
        "status shows half-open without its event: {v}"
    );
    assert_eq!(
        half[0]["at"], at,
        "the transition happened at the cooldown's end"
    );
}

#[test]
fn acked_probes_close_the_breaker() {
    // One probe at a time, two successes to close.
    let r = world(r#"{"reliability":{"circuitBreaker":{"failureThreshold":1}}}"#);
    fail(&r, "agent.a", "agent.b", 1, T);
    assert_eq!(state(&r, "agent.a", "agent.b", T), "open");

    let at = T + 30_000;
    let p1 = send(&r, "agent.a", "agent.b", "probe 1", at);
    r.cmd(["send", "agent.b", "x", "--from", "agent.a"])
        .at(at)
        .code(75)
        .stderr_has(&["agent.a -> agent.b"]);
    assert_eq!(claim(&r, "agent.b", at), p1);
    r.cmd(["ack", "agent.b", &p1]).at(at + 1).success();
    let b = breaker(&r, "agent.a", "agent.b", at + 1);
    assert_eq!(b["state"], "half-open", "one success of two: {b}");
    assert_eq!(b["probesInFlight"], 0, "{b}");
    assert!(r.events_of(at + 1, "breaker_closed").is_empty());

    let p2 = send(&r, "agent.a", "agent.b", "probe 2", at + 2);
    assert_eq!(claim(&r, "agent.b", at + 2), p2);
    r.cmd(["ack", "agent.b", &p2]).at(at + 3).success();
    let b = breaker(&r, "agent.a", "agent.b", at + 3);
    assert_eq!(b["state"], "closed", "{b}");
    assert_eq!(b["consecutiveFailures"], 0, "{b}");
    let closed = r.events_of(at + 3, "breaker_closed");
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(closed[0]["sender"], "agent.a");
    assert_eq!(closed[0]["endpoint"], "agent.b");

    // Closed: sends flow freely again.
    let before = waiting(&r, "agent.b");
    for i in 0..5 {
        send(&r, "agent.a", "agent.b", &format!("after {i}"), at + 3);
    }
    assert_eq!(waiting(&r, "agent.b"), before + 5);
}

#[test]
fn a_nacked_probe_reopens_the_breaker() {
    let r = world(r#"{"reliability":{"circuitBreaker":{"failureThreshold":2}}}"#);
    fail(&r, "agent.a", "agent.b", 2, T);
    let at = T + 30_000;
    let probe = send(&r, "agent.a", "agent.b", "probe", at);
    assert_eq!(claim(&r, "agent.b", at), probe);
    r.cmd(["nack", "agent.b", &probe]).at(at + 500).success();

    let b = breaker(&r, "agent.a", "agent.b", at + 500);
    assert_eq!(b["state"], "open", "{b}");
    assert_eq!(b["trips"], 2, "{b}");
    assert_eq!(b["nextProbeInMs"], 30_000, "a fresh cooldown: {b}");
    r.cmd(["send", "agent.b", "x", "--from", "agent.a"])
        .at(at + 500)
        .code(75)
        .stderr_has(&["circuit open for agent.a -> agent.b; next probe in 30.0s"]);
    assert_eq!(r.events_of(at + 500, "breaker_opened").len(), 2);
    // And it half-opens again after the new cooldown.
    assert_eq!(state(&r, "agent.a", "agent.b", at + 30_500), "half-open");
}

#[test]
fn cooldown_backoff_grows_the_cooldown_up_to_its_maximum() {
    let r = world(
        r#"{"reliability":{"circuitBreaker":{"failureThreshold":1,"cooldownMs":10000,
            "cooldownBackoff":2.0,"maxCooldownMs":25000}}}"#,
    );
    fail(&r, "agent.a", "agent.b", 1, T);
    assert_eq!(
        breaker(&r, "agent.a", "agent.b", T)["nextProbeInMs"],
        10_000
    );
    // Probe fails: trip 2, cooldown 20 s.
    let mut at = T + 10_000;
    fail(&r, "agent.a", "agent.b", 1, at);
    let b = breaker(&r, "agent.a", "agent.b", at);
    assert_eq!(
        (b["trips"].clone(), b["nextProbeInMs"].clone()),
        (2.into(), 20_000.into()),
        "{b}"
    );
    // Trip 3 would be 40 s: capped at 25 s.
    at += 20_000;
    fail(&r, "agent.a", "agent.b", 1, at);
    let b = breaker(&r, "agent.a", "agent.b", at);
    assert_eq!(
        (b["trips"].clone(), b["nextProbeInMs"].clone()),
        (3.into(), 25_000.into()),
        "{b}"
    );
}

#[test]
fn a_claim_held_past_its_lease_counts_as_a_failure() {
    let r = world(r#"{"reliability":{"circuitBreaker":{"failureThreshold":2}}}"#);
    send(&r, "agent.a", "agent.b", "1", T);
    send(&r, "agent.a", "agent.b", "2", T);
    r.cmd(["recv", "agent.b", "-n", "2", "--lease", "10s"])
        .at(T)
        .success();
    // Exactly at the lease's end it is still held in time.
    assert_eq!(state(&r, "agent.a", "agent.b", T + 10_000), "closed");
    assert!(r.events_of(T + 10_000, "lease_expired").is_empty());

    // 1 ms later the next send observes both expiries: the pair opens and
    // that very send is refused.
    r.cmd(["send", "agent.b", "3", "--from", "agent.a"])
        .at(T + 10_001)
        .code(75)
        .stderr_has(&["circuit open for agent.a -> agent.b"]);
    let b = breaker(&r, "agent.a", "agent.b", T + 10_002);
    assert_eq!(b["state"], "open", "{b}");
    assert_eq!(b["consecutiveFailures"], 2, "{b}");
    assert_eq!(b["openedAt"], "2026-01-01T00:00:10.001Z", "{b}");
    let expired = r.events_of(T + 10_002, "lease_expired");
    assert_eq!(expired.len(), 2, "each expiry counted once: {expired:?}");
    // Observing again counts nothing twice.
    let b = breaker(&r, "agent.a", "agent.b", T + 20_000);
    assert_eq!(
        (b["consecutiveFailures"].clone(), b["trips"].clone()),
        (2.into(), 1.into()),
        "{b}"
    );
}

#[test]
fn a_claim_acked_within_its_lease_is_not_a_failure() {
    let r = world(r#"{"reliability":{"circuitBreaker":{"failureThreshold":1}}}"#);
    let id = send(&r, "agent.a", "agent.b", "1", T);
    r.cmd(["recv", "agent.b", "--lease", "10s"]).at(T).success();
    r.cmd(["ack", "agent.b", &id]).at(T + 9_000).success();
    assert_eq!(state(&r, "agent.a", "agent.b", T + 60_000), "closed");
    assert!(r.events_of(T + 60_000, "lease_expired").is_empty());
    send(&r, "agent.a", "agent.b", "2", T + 60_000);
}

#[test]
fn breakers_reset_closes_pairs_and_breakers_open_forces_one_open() {
    let r = world(r#"{"reliability":{"circuitBreaker":{"failureThreshold":1}}}"#);
    fail(&r, "agent.a", "agent.b", 1, T);
    fail(&r, "agent.a", "agent.c", 1, T);
    fail(&r, "agent.z", "agent.b", 1, T);
    for (s, e) in [
        ("agent.a", "agent.b"),
        ("agent.a", "agent.c"),
        ("agent.z", "agent.b"),
    ] {
        assert_eq!(state(&r, s, e, T), "open", "{s} -> {e}");
    }

    // One pair.
    r.cmd(["breakers", "reset", "agent.a", "agent.b"])
        .at(T)
        .success();
    let b = breaker(&r, "agent.a", "agent.b", T);
    assert!(
        b.is_null() || (b["state"] == "closed" && b["consecutiveFailures"] == 0),
        "{b}"
    );
    send(&r, "agent.a", "agent.b", "after reset", T);
    assert_eq!(state(&r, "agent.a", "agent.c", T), "open");
    assert_eq!(state(&r, "agent.z", "agent.b", T), "open");

    // Every pair of a sender.
    r.cmd(["breakers", "reset", "agent.a"]).at(T).success();
    assert_eq!(state(&r, "agent.a", "agent.c", T), "closed");
    assert_eq!(state(&r, "agent.z", "agent.b", T), "open");

    // Maintenance: open a healthy pair by hand for a minute.
    r.cmd(["breakers", "open", "agent.q", "agent.c", "--for", "1m"])
        .at(T)
        .success();
    let b = breaker(&r, "agent.q", "agent.c", T);
    assert_eq!(b["state"], "open", "{b}");
    assert_eq!(b["nextProbeInMs"], 60_000, "{b}");
    let before = waiting(&r, "agent.c");
    r.cmd(["send", "agent.c", "x", "--from", "agent.q"])
        .at(T + 1_000)
        .code(75)
        .stderr_has(&["circuit open for agent.q -> agent.c"]);
    assert_eq!(waiting(&r, "agent.c"), before);
    assert!(
        r.events_of(T, "breaker_opened")
            .iter()
            .any(|e| e["sender"] == "agent.q" && e["endpoint"] == "agent.c"),
        "a manual open is an event too"
    );
    assert_eq!(state(&r, "agent.q", "agent.c", T + 59_999), "open");
    assert_eq!(state(&r, "agent.q", "agent.c", T + 60_000), "half-open");

    // Everything.
    r.cmd(["breakers", "reset", "--all"]).at(T).success();
    for (s, e) in [("agent.z", "agent.b"), ("agent.q", "agent.c")] {
        assert_eq!(state(&r, s, e, T + 60_000), "closed", "{s} -> {e}");
        send(&r, s, e, "after reset --all", T + 60_000);
    }

    r.cmd(["breakers", "reset"]).at(T).code(64);
    r.cmd(["breakers", "open", "agent.q", "agent.c", "--for", "soon"])
        .at(T)
        .code(64);
}
