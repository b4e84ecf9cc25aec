//! `status`, `breakers` and `limits`: their JSON shapes, what they include
//! and leave out, and the events behind them.

use serde_json::{Value, json};

use crate::harness::{Relay, T};

/// The keys of a JSON object, sorted.
fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// A busy world: `a` with 2 new, 1 claimed and 1 dead letter, a tripped
/// breaker agent.x -> a, a limited sender agent.s, an idle endpoint `b`.
fn busy() -> Relay {
    let r = Relay::new();
    r.add(&["a", "b"]);
    r.write_file(
        "config.json",
        r#"{"reliability":{
            "rateLimit":{"perSenderOverrides":{"agent.s":1}},
            "circuitBreaker":{"failureThreshold":1},
            "backpressure":{"maxMailboxSize":10}}}"#,
    );
    for i in 0..4 {
        r.cmd(["send", "a", &format!("m{i}"), "--from", "agent.x"])
            .at(T)
            .success();
    }
    let out = r.cmd(["recv", "a", "-n", "2", "--json"]).at(T).success();
    let first = out.json_lines()[0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    r.cmd(["nack", "a", &first, "--reason", "boom"])
        .at(T + 1_000)
        .success();
    // A breaker that tripped and was reset is closed: not in status.
    r.cmd(["breakers", "open", "agent.y", "b"]).at(T).success();
    r.cmd(["breakers", "reset", "agent.y", "b"]).at(T).success();
    // agent.s: one token, spent (soft hit), then refused (hard hit).
    r.cmd(["send", "b", "s1", "--from", "agent.s"])
        .at(T)
        .success();
    r.cmd(["send", "b", "s2", "--from", "agent.s"])
        .at(T)
        .code(75);
    r
}

#[test]
fn status_json_has_endpoints_open_breakers_limited_senders_and_events() {
    let r = busy();
    let out = r.cmd(["status", "--json"]).at(T + 2_000).success();
    let v = out.json();
    assert_eq!(
        keys(&v),
        sorted(&[
            "home",
            "endpoints",
            "breakers",
            "limitedSenders",
            "redeliveries",
            "maxDeliveriesDeadLettered",
            "events"
        ]),
        "{v}"
    );
    assert_eq!(v["home"], r.home().display().to_string());

    let eps = v["endpoints"].as_array().cloned().unwrap_or_default();
    assert_eq!(eps.len(), 2, "{v}");
    let a = eps
        .iter()
        .find(|e| e["subject"] == "a")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        keys(&a),
        sorted(&[
            "subject",
            "depth",
            "new",
            "cur",
            "failed",
            "capacity",
            "pressure",
            "lastActivity"
        ]),
        "{a}"
    );
    assert_eq!(
        [
            &a["depth"],
            &a["new"],
            &a["cur"],
            &a["failed"],
            &a["capacity"]
        ],
        [&json!(3), &json!(2), &json!(1), &json!(1), &json!(10)],
        "{a}"
    );
    assert!(
        (a["pressure"].as_f64().unwrap_or(-1.0) - 0.3).abs() < 1e-9,
        "{a}"
    );
    assert!(a["lastActivity"].is_string(), "{a}");
    let b = eps
        .iter()
        .find(|e| e["subject"] == "b")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (b["depth"].clone(), b["new"].clone()),
        (json!(1), json!(1)),
        "{b}"
    );

    // Only breakers that are not closed.
    let breakers = v["breakers"].as_array().cloned().unwrap_or_default();
    assert_eq!(breakers.len(), 1, "{v}");
    assert_eq!(breakers[0]["sender"], "agent.x");
    assert_eq!(breakers[0]["endpoint"], "a");
    assert_eq!(breakers[0]["state"], "open");
    assert_eq!(breakers[0]["nextProbeInMs"], 29_000, "{}", breakers[0]);

    let limited = v["limitedSenders"].as_array().cloned().unwrap_or_default();
    let senders: Vec<&Value> = limited.iter().map(|l| &l["sender"]).collect();
    assert_eq!(senders, [&json!("agent.s")], "{v}");
    assert_eq!(limited[0]["tokensLeft"], 0);
    assert_eq!(limited[0]["capacity"], 1);
    assert_eq!(limited[0]["softHits"], 1);
    assert_eq!(limited[0]["hardHits"], 1);

    // Events: newest first, each with the same fields.
    let events = v["events"].as_array().cloned().unwrap_or_default();
    assert!(!events.is_empty());
    for e in &events {
        assert_eq!(
            keys(e),
            sorted(&[
                "id",
                "at",
                "kind",
                "sender",
                "endpoint",
                "messageId",
                "detail"
            ]),
            "{e}"
        );
    }
    let ids: Vec<u64> = events.iter().filter_map(|e| e["id"].as_u64()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    for k in [
        "rate_limit_soft",
        "rate_limit_hard",
        "breaker_opened",
        "breaker_closed",
    ] {
        assert!(kinds.contains(&k), "no {k} event in {kinds:?}");
    }
    let opened = events
        .iter()
        .find(|e| e["kind"] == "breaker_opened" && e["sender"] == "agent.x")
        .cloned()
        .unwrap_or_default();
    assert_eq!(opened["endpoint"], "a", "{opened}");
    assert_eq!(opened["at"], T + 1_000, "{opened}");

    // --events bounds the list.
    let out = r
        .cmd(["status", "--json", "--events", "2"])
        .at(T + 2_000)
        .success();
    let few = out.json()["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(few, events[..2].to_vec());
}

#[test]
fn status_text_is_one_screen_of_the_same() {
    let r = busy();
    let out = r.cmd(["status"]).at(T + 2_000).success();
    for needle in [
        "a",
        "3/10",
        "agent.x -> a",
        "open",
        "agent.s",
        "breaker_opened",
        "rate_limit_hard",
    ] {
        if !out.stdout.contains(needle) {
            out.fail(&format!("status lacks {needle:?}"));
        }
    }
    // A home with no endpoints yet has nothing to report but still succeeds.
    let r = Relay::new();
    r.cmd(["config", "set", "retention.days", "7"]).success();
    r.cmd(["status", "--json"]).success();
}

#[test]
fn breakers_json_lists_every_pair_with_state() {
    let r = busy();
    let out = r.cmd(["breakers", "--json"]).at(T + 2_000).success();
    let v = out.json();
    assert_eq!(keys(&v), ["breakers"]);
    let rows = v["breakers"].as_array().cloned().unwrap_or_default();
    for b in &rows {
        assert_eq!(
            keys(b),
            sorted(&[
                "sender",
                "endpoint",
                "state",
                "consecutiveFailures",
                "probesInFlight",
                "openedAt",
                "nextProbeAt",
                "nextProbeInMs",
                "trips"
            ]),
            "{b}"
        );
    }
    let x = rows
        .iter()
        .find(|b| b["sender"] == "agent.x")
        .cloned()
        .unwrap_or_else(|| out.fail("no agent.x breaker"));
    assert_eq!(x["endpoint"], "a");
    assert_eq!(x["state"], "open");
    assert_eq!(x["consecutiveFailures"], 1);
    assert_eq!(x["openedAt"], "2026-01-01T00:00:01.000Z");
    assert_eq!(x["nextProbeAt"], "2026-01-01T00:00:31.000Z");
    assert_eq!(x["nextProbeInMs"], 29_000);
    assert_eq!(x["trips"], 1);
    // A closed pair shows no next probe.
    let y = rows
        .iter()
        .find(|b| b["sender"] == "agent.y")
        .unwrap_or_else(|| out.fail("no agent.y breaker"));
    assert_eq!(y["state"], "closed", "{y}");
    assert!(
        y["nextProbeAt"].is_null() && y["nextProbeInMs"].is_null(),
        "{y}"
    );
    // The text table names the pair, its state and the time to the probe.
    let out = r.cmd(["breakers"]).at(T + 2_000).success();
    for needle in ["agent.x -> a", "open", "29.0s"] {
        if !out.stdout.contains(needle) {
            out.fail(&format!("breakers lacks {needle:?}"));
        }
    }
}

#[test]
fn limits_json_lists_every_sender_with_its_bucket() {
    let r = busy();
    let out = r.cmd(["limits", "--json"]).at(T + 2_000).success();
    let v = out.json();
    assert_eq!(keys(&v), sorted(&["enabled", "limits"]));
    assert_eq!(v["enabled"], true);
    let rows = v["limits"].as_array().cloned().unwrap_or_default();
    for l in &rows {
        assert_eq!(
            keys(l),
            sorted(&[
                "sender",
                "tokensLeft",
                "capacity",
                "windowSecs",
                "softHits",
                "hardHits",
                "lastHitAt"
            ]),
            "{l}"
        );
    }
    let s = rows
        .iter()
        .find(|l| l["sender"] == "agent.s")
        .cloned()
        .unwrap_or_else(|| out.fail("no agent.s row"));
    assert_eq!(s["lastHitAt"], "2026-01-01T00:00:00.000Z");
    let x = rows
        .iter()
        .find(|l| l["sender"] == "agent.x")
        .cloned()
        .unwrap_or_else(|| out.fail("no agent.x row"));
    assert_eq!(x["capacity"], 100);
    assert_eq!(x["softHits"], 0);
    assert_eq!(x["hardHits"], 0);
    assert!(x["lastHitAt"].is_null(), "{x}");
    let out = r.cmd(["limits", "--json"]).at(T).success();
    let x = out.json()["limits"]
        .as_array()
        .and_then(|rows| rows.iter().find(|l| l["sender"] == "agent.x").cloned())
        .unwrap_or_default();
    assert_eq!(x["tokensLeft"], 96, "4 sends from 100: {x}");

    let out = r.cmd(["limits"]).at(T + 2_000).success();
    for needle in ["agent.s", "0/1", "agent.x"] {
        if !out.stdout.contains(needle) {
            out.fail(&format!("limits lacks {needle:?}"));
        }
    }
}
