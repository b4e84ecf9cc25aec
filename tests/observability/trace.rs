//! `relay trace`: one span per (message, endpoint), trace id propagation.

use super::{T0, envelope, ids, json_at, recv_at, send_at, span};
use crate::harness::Relay;

#[test]
fn fan_out_gives_one_span_per_endpoint_with_its_own_status_and_times() {
    let r = Relay::new();
    r.add(&["a.x", "b.x", "c.x", "other.y"]);
    let id = send_at(&r, T0, &["*.x", "{\"job\":1}"]);

    // a.x: claimed after 10 ms, acked 25 ms later.
    assert_eq!(recv_at(&r, T0 + 10, "a.x")["id"], id.as_str());
    r.cmd(["ack", "a.x", &id]).at(T0 + 35).success();
    // b.x: claimed after 20 ms, nacked.
    recv_at(&r, T0 + 20, "b.x");
    r.cmd(["nack", "b.x", &id, "--reason", "handler crashed"])
        .at(T0 + 40)
        .success();
    // c.x: never claimed.

    let t = json_at(&r, T0 + 50, &["trace", &id]);
    assert_eq!(
        t["traceId"],
        id.as_str(),
        "the trace id defaults to the message id"
    );
    let spans = t["spans"].as_array().expect("spans");
    assert_eq!(spans.len(), 3, "one span per endpoint of the fan-out: {t}");
    for s in spans {
        assert_eq!(s["messageId"], id.as_str());
        assert_eq!(s["traceId"], id.as_str());
        assert_eq!(s["subject"], "*.x");
        assert_eq!(s["from"], "cli");
        assert_eq!(s["sentAt"], "2027-01-15T08:00:00.000Z");
        assert_eq!(
            s["id"],
            format!("{id}@{}", s["endpoint"].as_str().unwrap_or(""))
        );
    }

    let a = span(&t, "a.x");
    assert_eq!(a["status"], "delivered");
    assert_eq!(a["state"], "acked");
    assert_eq!(a["deliveredAt"], "2027-01-15T08:00:00.010Z");
    assert_eq!(a["processedAt"], "2027-01-15T08:00:00.035Z");
    assert!(a["errorMessage"].is_null() && a["code"].is_null(), "{a}");

    let b = span(&t, "b.x");
    assert_eq!(b["status"], "failed");
    assert_eq!(b["state"], "failed");
    assert_eq!(b["deliveredAt"], "2027-01-15T08:00:00.020Z");
    assert_eq!(b["errorMessage"], "handler crashed");
    assert_eq!(b["code"], "nack");

    let c = span(&t, "c.x");
    assert_eq!(c["status"], "sent");
    assert_eq!(c["state"], "pending");
    assert!(
        c["deliveredAt"].is_null() && c["processedAt"].is_null(),
        "{c}"
    );

    // The human table names every endpoint too.
    let text = r.cmd(["trace", &id]).at(T0 + 50).success().stdout;
    for ep in ["a.x", "b.x", "c.x"] {
        assert!(text.contains(ep), "trace table lacks {ep}:\n{text}");
    }
    assert!(!text.contains("other.y"), "{text}");
}

#[test]
fn a_handler_resend_with_parent_joins_the_trace_and_spends_one_more_hop() {
    let r = Relay::new();
    r.add(&["agent.a", "agent.b"]);
    let first = send_at(&r, T0, &["agent.a", "step 1"]);

    // The handler of agent.a receives it and sends on, from the saved envelope.
    let received = r.cmd(["recv", "agent.a", "--json"]).at(T0 + 5).success();
    let parent = r.scratch().join("m.json");
    std::fs::write(&parent, &received.stdout).expect("write m.json");
    let parent_arg = parent.to_string_lossy().into_owned();
    let second = send_at(
        &r,
        T0 + 10,
        &[
            "agent.b",
            "step 2",
            "--from",
            "agent.a",
            "--parent",
            &parent_arg,
        ],
    );
    assert_ne!(first, second);
    r.cmd(["ack", "agent.a", &first]).at(T0 + 12).success();

    let child = envelope(&r, "agent.b", "new", &second);
    assert_eq!(child["traceId"], first.as_str(), "{child}");
    assert_eq!(child["budget"]["hopCount"], 2, "{child}");
    assert_eq!(
        child["budget"]["ancestorChain"],
        serde_json::json!(["agent.a", "agent.b"]),
        "{child}"
    );
    assert_eq!(
        child["budget"]["callBudgetRemaining"], 8,
        "one call spent: {child}"
    );
    let parent_env: serde_json::Value = serde_json::from_str(&received.stdout).expect("json");
    assert_eq!(
        child["budget"]["ttl"], parent_env["budget"]["ttl"],
        "TTL inherited"
    );

    // Either id finds the whole trace.
    for query in [&first, &second] {
        let t = json_at(&r, T0 + 20, &["trace", query]);
        assert_eq!(t["traceId"], first.as_str(), "{t}");
        assert_eq!(t["spans"].as_array().map(Vec::len), Some(2), "{t}");
        assert_eq!(span(&t, "agent.a")["messageId"], first.as_str());
        assert_eq!(span(&t, "agent.a")["status"], "delivered");
        assert_eq!(span(&t, "agent.b")["messageId"], second.as_str());
        assert_eq!(span(&t, "agent.b")["traceId"], first.as_str());
        assert_eq!(span(&t, "agent.b")["status"], "sent");
    }
}

#[test]
fn relay_trace_id_env_joins_sends_into_one_trace_and_the_flag_wins() {
    let r = Relay::new();
    r.add(&["hook.a", "hook.b", "hook.c"]);
    let a = r
        .cmd(["send", "hook.a", "pre-commit"])
        .env("RELAY_TRACE_ID", "ci-run-42")
        .at(T0)
        .success()
        .id();
    let b = r
        .cmd(["send", "hook.b", "post-commit", "--json"])
        .env("RELAY_TRACE_ID", "ci-run-42")
        .at(T0 + 1)
        .success()
        .json();
    assert_eq!(b["traceId"], "ci-run-42", "{b}");
    let b = b["id"].as_str().expect("id").to_string();
    // An explicit --trace-id beats the environment.
    let c = r
        .cmd(["send", "hook.c", "other", "--trace-id", "manual-1"])
        .env("RELAY_TRACE_ID", "ci-run-42")
        .at(T0 + 2)
        .success()
        .id();

    assert_eq!(envelope(&r, "hook.a", "new", &a)["traceId"], "ci-run-42");
    assert_eq!(ids(&r, "hook.b", "new"), vec![b.clone()]);

    let t = json_at(&r, T0 + 5, &["trace", "ci-run-42"]);
    assert_eq!(t["traceId"], "ci-run-42");
    assert_eq!(t["spans"].as_array().map(Vec::len), Some(2), "{t}");
    assert_eq!(span(&t, "hook.a")["messageId"], a.as_str());
    assert_eq!(span(&t, "hook.b")["messageId"], b.as_str());

    let t = json_at(&r, T0 + 5, &["trace", &c]);
    assert_eq!(t["traceId"], "manual-1", "{t}");
    assert_eq!(t["spans"].as_array().map(Vec::len), Some(1), "{t}");
}

#[test]
fn trace_of_an_unknown_id_fails_and_says_so() {
    let r = Relay::new();
    r.add(&["a.x"]);
    let out = r.cmd(["trace", "01MCC5RM00NOSUCHMESSAGE000"]).at(T0).run();
    assert_ne!(out.code, 0, "unknown id must not succeed");
    out.stderr_has(&["01MCC5RM00NOSUCHMESSAGE000"]);
}

#[test]
fn a_recv_exec_handler_sends_join_the_trace_through_its_environment() {
    let r = Relay::new();
    r.add(&["agent.a", "agent.b"]);
    let first = send_at(&r, T0, &["agent.a", "job", "--trace-id", "tr-exec"]);
    // The handler sends with no options at all: RELAY_TRACE_ID, RELAY_BUDGET
    // and RELAY_FROM exported by `recv --exec` carry the context.
    r.cmd([
        "recv",
        "agent.a",
        "--exec",
        "\"$RELAY_BIN\" send agent.b step2",
    ])
    .env("RELAY_BIN", crate::harness::BIN)
    .at(T0 + 5)
    .success();
    let sent = ids(&r, "agent.b", "new");
    assert_eq!(sent.len(), 1, "the handler sent one message");
    let child = envelope(&r, "agent.b", "new", &sent[0]);
    assert_eq!(child["traceId"], "tr-exec", "{child}");
    assert_eq!(child["from"], "agent.a", "{child}");
    assert_eq!(child["budget"]["hopCount"], 2, "{child}");
    assert_eq!(
        child["budget"]["ancestorChain"],
        serde_json::json!(["agent.a", "agent.b"]),
        "{child}"
    );

    let t = json_at(&r, T0 + 10, &["trace", "tr-exec"]);
    assert_eq!(t["spans"].as_array().map(Vec::len), Some(2), "{t}");
    assert_eq!(span(&t, "agent.a")["messageId"], first.as_str());
    assert_eq!(
        span(&t, "agent.a")["status"],
        "delivered",
        "handler exit 0 acks: {t}"
    );
    assert_eq!(span(&t, "agent.b")["messageId"], sent[0].as_str());
}
