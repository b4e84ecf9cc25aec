//! Fault class 6: the wall clock stepped backwards (NTP, a VM restored from
//! a snapshot, an operator's `date -s`). Token buckets go on refilling and
//! breaker cooldowns end on time, measured on the clock as it runs after the
//! step, and every retry-after shown is the truth: never longer than the
//! configured refill or cooldown. The clock is pinned with
//! `RELAY_FAKE_NOW_MS`; nothing sleeps.

use serde_json::Value;

use crate::harness::{Relay, T};

const HOUR: u64 = 3_600_000;

/// A world with endpoint `agent.b` and `config` as its config.json.
fn world(config: &str) -> Relay {
    let r = Relay::new();
    r.add(&["agent.b"]);
    r.write_file("config.json", config);
    r
}

/// `relay send agent.b PAYLOAD --from agent.a --json` at `at`.
fn send<'a>(r: &'a Relay, payload: &str, at: u64) -> crate::harness::Output<'a> {
    r.cmd(["send", "agent.b", payload, "--from", "agent.a", "--json"])
        .at(at)
        .run()
}

/// The retry-after of a send refused with 75 (from its `--json` error).
#[track_caller]
fn refused_retry_after(r: &Relay, at: u64) -> u64 {
    let out = send(r, "refused", at).code(75);
    let err = out.stderr_json();
    match err["error"]["retryAfterMs"].as_u64() {
        Some(ms) => ms,
        None => out.fail("the refusal carries no retryAfterMs"),
    }
}

/// The `breakers --json` row of agent.a -> agent.b at `at`.
#[track_caller]
fn breaker(r: &Relay, at: u64) -> Value {
    crate::surfaces::breaker(r, "agent.a", "agent.b", Some(at))
}

#[test]
fn an_empty_bucket_refills_on_time_after_the_clock_steps_back() {
    // One token per 3 s.
    let r = world(r#"{"reliability":{"rateLimit":{"maxPerWindow":20,"windowSecs":60}}}"#);
    for i in 0..20 {
        send(&r, &format!("m{i}"), T).success();
    }
    assert_eq!(refused_retry_after(&r, T), 3000);

    // The clock steps back an hour. The bucket is still empty (the step
    // gives nothing away), and the wait shown is one token's refill.
    let back = T - HOUR;
    let wait = refused_retry_after(&r, back);
    assert!(
        wait <= 3000,
        "retry-after {wait} ms is longer than a refill"
    );
    // That wait is the truth: the token is there when it says, not an
    // hour later when the clock is back at T.
    send(&r, "after the step", back + wait).success();
    assert!(refused_retry_after(&r, back + wait) <= 3000);
    send(&r, "a refill later", back + wait + 3000).success();
    assert_eq!(r.files("agent.b", "new").len(), 22);

    // `limits` shows the bucket refilling too.
    let out = r
        .cmd(["limits", "--json"])
        .at(back + wait + 63_000)
        .success();
    let v = out.json();
    let row = v["limits"]
        .as_array()
        .and_then(|rows| rows.iter().find(|l| l["sender"] == "agent.a").cloned())
        .unwrap_or_else(|| out.fail("no limits row for agent.a"));
    assert_eq!(row["tokensLeft"], 20, "{row}");
}

#[test]
fn an_open_breaker_probes_after_its_cooldown_when_the_clock_steps_back() {
    let r = world(r#"{"reliability":{"circuitBreaker":{"cooldownMs":30000}}}"#);
    for i in 0..5 {
        send(&r, &format!("doomed {i}"), T).success();
        let out = r.cmd(["recv", "agent.b", "--json"]).at(T).success();
        let Some(id) = out.json()["id"].as_str().map(str::to_string) else {
            out.fail("recv --json printed no id")
        };
        r.cmd(["nack", "agent.b", &id, "--reason", "boom"])
            .at(T)
            .success();
    }
    assert_eq!(refused_retry_after(&r, T + 10_000), 20_000);

    // An hour back: "next probe in 30.0s", not "in 1h".
    let back = T - HOUR;
    r.cmd(["send", "agent.b", "x", "--from", "agent.a"])
        .at(back)
        .code(75)
        .stderr_has(&["circuit open for agent.a -> agent.b; next probe in 30.0s"]);
    let b = breaker(&r, back + 1000);
    assert_eq!(b["state"], "open", "{b}");
    assert_eq!(b["nextProbeInMs"], 29_000, "{b}");
    assert!(refused_retry_after(&r, back + 1000) <= 30_000);

    // The cooldown ends 30 s after the step, on the clock as it runs now.
    let out = send(&r, "probe", back + 30_000).success();
    assert_eq!(out.json()["deliveredTo"][0], "agent.b", "{}", out.stdout);
    assert_eq!(breaker(&r, back + 30_000)["state"], "half-open");
}

#[test]
fn a_breaker_opened_by_hand_stays_open_for_its_duration_after_a_step_back() {
    let r = world("{}");
    r.cmd(["breakers", "open", "agent.a", "agent.b", "--for", "10m"])
        .at(T)
        .success();
    let back = T - 2 * HOUR;
    let wait = refused_retry_after(&r, back);
    assert_eq!(wait, 600_000, "the 10 minutes asked for, from the step");
    assert_eq!(breaker(&r, back)["nextProbeInMs"], 600_000);
    send(&r, "probe", back + 600_000).success();
}
