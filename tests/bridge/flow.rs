//! Messages across hosts: the round trip with one id and one trace, fan-out
//! to local and remote endpoints alike, the remote span on the sender's host.

use serde_json::Value;

use super::harness::{Pair, ids, wait_for};
use crate::harness::Relay;

/// Waits until `relay` can claim one message of `ep` and returns it.
fn recv_one(relay: &Relay, ep: &str) -> Value {
    wait_for(&format!("a message at '{ep}'"), || {
        let out = relay.cmd(["recv", ep, "--json"]).run();
        (out.code == 0).then(|| out.json())
    })
}

/// The span of `id` at `ep` in `relay trace ID --json` of `relay`.
fn span(relay: &Relay, id: &str, ep: &str) -> Option<Value> {
    let out = relay.cmd(["trace", id, "--json"]).run();
    if out.code != 0 {
        return None;
    }
    let v = out.json();
    v["spans"]
        .as_array()?
        .iter()
        .find(|s| s["endpoint"] == ep && s["messageId"] == id)
        .cloned()
}

#[test]
fn round_trip_a_to_b_and_the_reply_back_keep_one_id_and_one_trace() {
    let Some(p) = Pair::start(&["agent.a", "agent.a.replies"], &["agent.b"]) else {
        return;
    };
    let id =
        p.a.cmd([
            "send",
            "agent.b",
            r#"{"task":"review"}"#,
            "--from",
            "agent.a",
            "--reply-to",
            "agent.a.replies",
        ])
        .success()
        .id();
    // Gone from A's outbox once JetStream has it; on B with the same id.
    let got = recv_one(&p.b, "agent.b");
    assert_eq!(got["id"], id.as_str());
    assert_eq!(got["traceId"], id.as_str());
    assert_eq!(got["from"], "agent.a");
    assert_eq!(got["replyTo"], "agent.a.replies");
    assert_eq!(got["payload"]["task"], "review");
    assert_eq!(got["budget"]["hopCount"], 1, "one hop per crossing: {got}");
    wait_for("A's outbox to empty", || {
        (ids(&p.a, "agent.b", "new").is_empty() && ids(&p.a, "agent.b", "cur").is_empty())
            .then_some(())
    });
    // A sees B's claim, then B's ack, as the remote span.
    wait_for("the claim on B in A's trace", || {
        span(&p.a, &id, "agent.b").filter(|s| s["state"] == "claimed")
    });
    p.b.cmd(["ack", "agent.b", &id]).success();
    let s = wait_for("the ack on B in A's trace", || {
        span(&p.a, &id, "agent.b").filter(|s| s["state"] == "acked")
    });
    assert_eq!(s["status"], "delivered", "{s}");

    // The reply from B, in the same trace.
    let reply =
        p.b.cmd([
            "send",
            "agent.a.replies",
            r#"{"verdict":"ok"}"#,
            "--from",
            "agent.b",
            "--trace-id",
            &id,
        ])
        .success()
        .id();
    let back = recv_one(&p.a, "agent.a.replies");
    assert_eq!(back["id"], reply.as_str());
    assert_eq!(back["traceId"], id.as_str());
    // A's trace holds both hops.
    let trace = p.a.cmd(["trace", &id, "--json"]).success().json();
    let eps: Vec<&str> = trace["spans"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["endpoint"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        eps.contains(&"agent.b") && eps.contains(&"agent.a.replies"),
        "{trace}"
    );
}

#[test]
fn a_pattern_fans_out_to_local_and_remote_endpoints_with_one_id() {
    let Some(p) = Pair::start(&["team.local"], &["team.b1", "team.b2"]) else {
        return;
    };
    let out =
        p.a.cmd(["send", "team.*", r#"{"n":1}"#, "--from", "lead", "--json"])
            .success()
            .json();
    let id = out["id"].as_str().unwrap_or_default().to_string();
    let mut to: Vec<&str> = out["deliveredTo"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    to.sort_unstable();
    assert_eq!(to, ["team.b1", "team.b2", "team.local"], "{out}");
    assert_eq!(ids(&p.a, "team.local", "new"), std::slice::from_ref(&id));
    for ep in ["team.b1", "team.b2"] {
        wait_for(&format!("the copy at {ep} on B"), || {
            (ids(&p.b, ep, "new") == [id.clone()]).then_some(())
        });
    }
}

#[test]
fn nacks_on_b_feed_the_senders_breaker_on_a_and_their_notices_reach_a() {
    let cfg = r#"{"reliability":{"circuitBreaker":{"failureThreshold":2,"cooldownMs":60000}}}"#;
    let Some(p) = Pair::start_with(&["agent.a.replies"], &["agent.b"], cfg, "{}") else {
        return;
    };
    let send = || {
        p.a.cmd([
            "send",
            "agent.b",
            "{}",
            "--from",
            "agent.a",
            "--reply-to",
            "agent.a.replies",
        ])
        .run()
    };
    let mut sent = Vec::new();
    for _ in 0..2 {
        let out = send();
        assert_eq!(out.code, 0, "{}", out.stderr);
        let id = out.stdout.trim().to_string();
        let got = recv_one(&p.b, "agent.b");
        assert_eq!(got["id"], id.as_str());
        p.b.cmd(["nack", "agent.b", &id, "--reason", "cannot review"])
            .success();
        sent.push(id);
    }
    // Each nack comes back as a notice, delivered on A.
    for id in &sent {
        let n = recv_one(&p.a, "agent.a.replies");
        assert_eq!(n["payload"]["code"], "nack", "{n}");
        assert!(
            sent.contains(
                &n["payload"]["messageId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            ),
            "{n} {id}"
        );
    }
    // Two remote failures open agent.a -> agent.b on A: refused here, at once.
    let refused = wait_for("the breaker to open on A", || {
        let out = send();
        (out.code == 75).then_some(out)
    });
    assert!(refused.stderr.contains("agent.b"), "{}", refused.stderr);
    let v = p.a.cmd(["breakers", "--json"]).success().json();
    assert!(
        v["breakers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|b| b["sender"] == "agent.a"
                && b["endpoint"] == "agent.b"
                && b["state"] == "open"),
        "{v}"
    );
}

#[test]
fn a_delivery_on_b_is_told_to_a_as_b_applies_it_and_only_once() {
    let Some(p) = Pair::start(&[], &["agent.b"]) else {
        return;
    };
    let lines: String = (0..20)
        .map(|i| format!("{{\"subject\":\"agent.b\",\"payload\":{{\"i\":{i}}}}}\n"))
        .collect();
    let sent: Vec<String> =
        p.a.cmd(["send", "--batch", "--from", "agent.a"])
            .stdin(lines)
            .success()
            .stdout
            .lines()
            .map(str::to_string)
            .collect();
    assert_eq!(sent.len(), 20);
    // Told as B applies it (the report loop no longer looks at arrivals):
    // one `remote_span` event per delivery on A, none twice.
    // Within 20 s: sooner than the report loop's look at every open pair
    // (every 30 s), which would tell them too.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let told = wait_for("every delivery on B told to A", || {
        assert!(
            std::time::Instant::now() < deadline,
            "the deliveries were not told as B applied them"
        );
        let told: Vec<String> =
            p.a.events_of(super::harness::now_ms(), "remote_span")
                .into_iter()
                .filter(|e| e["detail"]["state"] == "delivered" && e["detail"]["host"] == "hostb")
                .filter_map(|e| e["messageId"].as_str().map(str::to_string))
                .collect();
        (told.len() >= 20).then_some(told)
    });
    let mut unique = told.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(told.len(), unique.len(), "a delivery told twice: {told:?}");
    let mut want = sent.clone();
    want.sort();
    assert_eq!(unique, want);
    // Unread on B, so A's index still has them pending at agent.b.
    let s = span(&p.a, &sent[0], "agent.b").unwrap_or_default();
    assert_eq!(s["state"], "pending", "{s}");
    assert_eq!(ids(&p.b, "agent.b", "new").len(), 20);
}
