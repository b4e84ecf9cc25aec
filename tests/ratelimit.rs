//! Per-sender rate limits: a token bucket of `maxPerWindow` (or `burst`)
//! tokens refilled at `maxPerWindow / windowSecs` per second, with a soft
//! warning at `softLimitRatio` and a hard refusal (75) with the retry-after.
//! The clock is pinned with `RELAY_FAKE_NOW_MS`: no test sleeps.

use serde_json::Value;

use crate::harness::{Relay, T, is_ulid};

/// A world with endpoint `agent.b` and `config` as its config.json.
fn world(config: &str) -> Relay {
    let r = Relay::new();
    r.add(&["agent.b"]);
    r.write_file("config.json", config);
    r
}

/// `relay send agent.b PAYLOAD --from SENDER` at `at`, asserting success
/// and a quiet stderr.
#[track_caller]
fn send_quiet(r: &Relay, from: &str, payload: &str, at: u64) {
    r.cmd(["send", "agent.b", payload, "--from", from])
        .at(at)
        .success()
        .stderr_empty()
        .id();
}

/// Sends from `from` at `at` until one is refused; returns how many were
/// admitted (at most `max`, to stop a broken limiter).
fn admitted(r: &Relay, from: &str, at: u64, max: usize) -> usize {
    for n in 0..max {
        let out = r.cmd(["send", "agent.b", "m", "--from", from]).at(at).run();
        match out.code {
            0 => {}
            75 => return n,
            _ => out.fail("send neither succeeded nor was refused with 75"),
        }
    }
    max
}

/// The `limits --json` row of `sender`.
#[track_caller]
fn limit_row(r: &Relay, sender: &str, at: u64) -> Value {
    let out = r.cmd(["limits", "--json"]).at(at).success();
    let v = out.json();
    v["limits"]
        .as_array()
        .and_then(|rows| rows.iter().find(|l| l["sender"] == sender).cloned())
        .unwrap_or_else(|| out.fail(&format!("no limits row for {sender}")))
}

#[test]
fn a_burst_is_quiet_to_80_percent_then_warns_then_is_refused() {
    let r = world(r#"{"reliability":{"rateLimit":{"maxPerWindow":20}}}"#);
    for i in 1..=15 {
        send_quiet(&r, "agent.a", &format!("m{i}"), T);
    }
    for i in 16..=20 {
        let out = r
            .cmd(["send", "agent.b", &format!("m{i}"), "--from", "agent.a"])
            .at(T)
            .success();
        // Tokens left, as `relay limits` shows them.
        let expected = format!(
            "relay: warning: sender 'agent.a' has {} of 20 rate-limit tokens left (the bucket refills 20 per 60s)\n",
            20 - i
        );
        if out.stderr != expected {
            out.fail(&format!("stderr is not exactly {expected:?}"));
        }
        assert!(
            is_ulid(out.stdout.trim()),
            "soft-limited send still prints its id"
        );
    }
    assert_eq!(r.files("agent.b", "new").len(), 20);

    let out = r
        .cmd(["send", "agent.b", "m21", "--from", "agent.a"])
        .at(T)
        .code(75)
        .stdout_is("");
    let expected = "relay: rate limit exceeded for sender 'agent.a': 0 of 20 tokens left (the bucket refills 20 per 60s); retry in 3.0s; \
         to allow more, raise reliability.rateLimit.maxPerWindow (or a perSenderOverrides entry), \
         refill it now with 'relay limits reset agent.a', or send bulk work in one 'relay send --batch'\n";
    if out.stderr != expected {
        out.fail(&format!("stderr is not exactly {expected:?}"));
    }
    assert_eq!(
        r.files("agent.b", "new").len(),
        20,
        "a refused send writes nothing"
    );
    assert!(r.files("agent.b", "tmp").is_empty());

    // --json: the refusal is one JSON object on stderr, with the retry-after.
    let out = r
        .cmd(["send", "agent.b", "m22", "--from", "agent.a", "--json"])
        .at(T)
        .code(75)
        .stdout_is("");
    let err = out.stderr_json();
    assert_eq!(err["error"]["code"], 75, "{err}");
    assert_eq!(err["error"]["retryAfterMs"], 3000, "{err}");
    let msg = err["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("rate limit exceeded for sender 'agent.a'"),
        "{err}"
    );
    assert_eq!(r.files("agent.b", "new").len(), 20);

    // Every hit is an event, and counted by `limits`.
    let soft = r.events_of(T, "rate_limit_soft");
    let hard = r.events_of(T, "rate_limit_hard");
    assert_eq!(soft.len(), 5, "{soft:?}");
    assert_eq!(hard.len(), 2, "{hard:?}");
    for e in soft.iter().chain(&hard) {
        assert_eq!(e["sender"], "agent.a", "{e}");
        assert_eq!(e["at"], T, "{e}");
    }
    let row = limit_row(&r, "agent.a", T);
    assert_eq!(row["tokensLeft"], 0, "{row}");
    assert_eq!(row["capacity"], 20, "{row}");
    assert_eq!(row["windowSecs"], 60, "{row}");
    assert_eq!(row["softHits"], 5, "{row}");
    assert_eq!(row["hardHits"], 2, "{row}");
    assert_eq!(row["lastHitAt"], "2026-01-01T00:00:00.000Z", "{row}");
}

#[test]
fn the_soft_warning_is_in_send_json() {
    let r = world(r#"{"reliability":{"rateLimit":{"maxPerWindow":5}}}"#);
    for i in 1..=3 {
        let out = r
            .cmd([
                "send",
                "agent.b",
                &format!("m{i}"),
                "--from",
                "agent.a",
                "--json",
            ])
            .at(T)
            .success();
        assert_eq!(out.json()["warnings"], serde_json::json!([]), "send {i}");
    }
    let out = r
        .cmd(["send", "agent.b", "m4", "--from", "agent.a", "--json"])
        .at(T)
        .success();
    let v = out.json();
    assert_eq!(
        v["warnings"],
        serde_json::json!([
            "sender 'agent.a' has 1 of 5 rate-limit tokens left (the bucket refills 5 per 60s)"
        ]),
        "{v}"
    );
    assert_eq!(v["deliveredTo"], serde_json::json!(["agent.b"]));
    let soft = r.events_of(T, "rate_limit_soft");
    assert_eq!(soft.len(), 1);
    assert_eq!(soft[0]["detail"]["tokensLeft"], 1, "{}", soft[0]);
    assert_eq!(soft[0]["detail"]["capacity"], 5, "{}", soft[0]);
}

#[test]
fn the_bucket_refills_at_max_per_window_over_window_secs() {
    let r = world(r#"{"reliability":{"rateLimit":{"maxPerWindow":20}}}"#);
    assert_eq!(admitted(&r, "agent.a", T, 30), 20);

    // One token takes 60 s / 20 = 3 s: 1 ms early it is still refused, with
    // the exact remaining wait.
    let out = r
        .cmd(["send", "agent.b", "early", "--from", "agent.a", "--json"])
        .at(T + 2_999)
        .code(75);
    let err = out.stderr_json();
    assert_eq!(err["error"]["retryAfterMs"], 1, "{err}");

    // At +3 s exactly one more is admitted; the next waits another 3 s.
    assert_eq!(admitted(&r, "agent.a", T + 3_000, 5), 1);
    r.cmd(["send", "agent.b", "x", "--from", "agent.a"])
        .at(T + 3_000)
        .code(75)
        .stderr_has(&["retry in 3.0s"]);
    // Two intervals later, two.
    assert_eq!(admitted(&r, "agent.a", T + 9_000, 5), 2);

    // A long pause refills the bucket to its capacity, never beyond.
    assert_eq!(admitted(&r, "agent.a", T + 3_600_000, 50), 20);
    assert_eq!(r.files("agent.b", "new").len(), 20 + 1 + 2 + 20);
}

#[test]
fn burst_sets_the_capacity_and_max_per_window_the_refill_rate() {
    let r = world(r#"{"reliability":{"rateLimit":{"maxPerWindow":60,"burst":5}}}"#);
    assert_eq!(admitted(&r, "agent.a", T, 20), 5);
    r.cmd(["send", "agent.b", "x", "--from", "agent.a"])
        .at(T)
        .code(75)
        .stderr_has(&[
            "sender 'agent.a': 0 of 5 tokens left (the bucket refills 60 per 60s)",
            "retry in 1.0s",
        ]);
    // 60 per 60 s: one token a second.
    assert_eq!(admitted(&r, "agent.a", T + 2_000, 20), 2);
    assert_eq!(limit_row(&r, "agent.a", T + 2_000)["capacity"], 5);
}

#[test]
fn senders_have_separate_buckets() {
    let r = world(r#"{"reliability":{"rateLimit":{"maxPerWindow":3}}}"#);
    assert_eq!(admitted(&r, "agent.a", T, 10), 3);
    // agent.a is exhausted; agent.c still has its whole bucket.
    assert_eq!(admitted(&r, "agent.c", T, 10), 3);
    r.cmd(["send", "agent.b", "x", "--from", "agent.a"])
        .at(T)
        .code(75);
    // The default sender is `cli`, limited like any other.
    for _ in 0..3 {
        r.cmd(["send", "agent.b", "x"]).at(T).success();
    }
    r.cmd(["send", "agent.b", "x"])
        .at(T)
        .code(75)
        .stderr_has(&["sender 'cli'"]);
    assert_eq!(r.files("agent.b", "new").len(), 9);
}

#[test]
fn per_sender_overrides_match_the_longest_prefix() {
    let r = world(
        r#"{"reliability":{"rateLimit":{"maxPerWindow":10,
            "perSenderOverrides":{"agent.":3,"agent.ci.":5}}}}"#,
    );
    assert_eq!(
        admitted(&r, "agent.ci.build", T, 20),
        5,
        "longest prefix wins"
    );
    assert_eq!(admitted(&r, "agent.x", T, 20), 3, "the shorter prefix");
    assert_eq!(
        admitted(&r, "hook.ci", T, 20),
        10,
        "no prefix: maxPerWindow"
    );
    r.cmd(["send", "agent.b", "x", "--from", "agent.x"])
        .at(T)
        .code(75)
        .stderr_has(&[
            "sender 'agent.x': 0 of 3 tokens left (the bucket refills 3 per 60s)",
            "retry in 20.0s",
        ]);
    assert_eq!(limit_row(&r, "agent.ci.build", T)["capacity"], 5);
    assert_eq!(limit_row(&r, "agent.x", T)["capacity"], 3);
    assert_eq!(limit_row(&r, "hook.ci", T)["capacity"], 10);
    assert_eq!(r.files("agent.b", "new").len(), 18);
}

#[test]
fn limits_reset_refills_one_sender_or_all() {
    let r = world(r#"{"reliability":{"rateLimit":{"maxPerWindow":2}}}"#);
    for s in ["agent.a", "agent.c"] {
        assert_eq!(admitted(&r, s, T, 5), 2);
    }
    r.cmd(["limits", "reset", "agent.a"]).at(T).success();
    let out = r.cmd(["limits", "--json"]).at(T).success();
    let senders: Vec<Value> = out.json()["limits"]
        .as_array()
        .map(|a| a.iter().map(|l| l["sender"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(senders, ["agent.c"], "the reset sender is forgotten");
    assert_eq!(
        admitted(&r, "agent.a", T, 5),
        2,
        "agent.a has a full bucket"
    );
    assert_eq!(admitted(&r, "agent.c", T, 5), 0, "agent.c is untouched");

    r.cmd(["limits", "reset", "--all"]).at(T).success();
    let out = r.cmd(["limits", "--json"]).at(T).success();
    assert_eq!(out.json()["limits"], serde_json::json!([]));
    assert_eq!(admitted(&r, "agent.a", T, 5), 2);
    assert_eq!(admitted(&r, "agent.c", T, 5), 2);

    r.cmd(["limits", "reset"]).at(T).code(64);
}

#[test]
fn a_refused_fan_out_writes_nothing_anywhere() {
    let r = world(r#"{"reliability":{"rateLimit":{"maxPerWindow":1}}}"#);
    r.add(&["agent.c"]);
    r.cmd(["send", "agent.*", "one", "--from", "agent.a"])
        .at(T)
        .success();
    r.cmd(["send", "agent.*", "two", "--from", "agent.a"])
        .at(T)
        .code(75)
        .stderr_has(&["rate limit exceeded for sender 'agent.a'"]);
    for ep in ["agent.b", "agent.c"] {
        assert_eq!(r.files(ep, "new").len(), 1, "{ep}");
        assert!(r.files(ep, "failed").is_empty(), "{ep}");
    }
}
