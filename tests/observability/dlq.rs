//! `relay dlq`: list, show, requeue and purge dead letters.

use serde_json::Value;

use super::{DAY, T0, envelope, ids, json_at, recv_at, send_at, sidecar, span};
use crate::harness::Relay;

/// Sends to `ep`, claims and nacks it with `reason` at `at`; returns the id.
fn dead_letter(r: &Relay, at: u64, ep: &str, reason: &str, extra: &[&str]) -> String {
    let mut args = vec![ep, "payload"];
    args.extend_from_slice(extra);
    let id = send_at(r, at, &args);
    assert_eq!(recv_at(r, at + 1, ep)["id"], id.as_str());
    r.cmd(["nack", ep, &id, "--reason", reason])
        .at(at + 2)
        .success();
    id
}

fn listed(v: &Value) -> Vec<String> {
    v["deadLetters"]
        .as_array()
        .unwrap_or_else(|| panic!("no deadLetters in {v}"))
        .iter()
        .filter_map(|d| d["id"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn list_show_and_requeue_round_trip_keeps_id_and_trace() {
    let r = Relay::new();
    r.add(&["q.a", "q.b"]);
    let a = dead_letter(&r, T0, "q.a", "disk full", &["--trace-id", "trace-dlq"]);
    let b = dead_letter(&r, T0 + 10, "q.b", "bad input", &[]);

    let all = json_at(&r, T0 + 20, &["dlq", "list"]);
    assert_eq!(listed(&all), vec![a.clone(), b.clone()], "{all}");
    let first = &all["deadLetters"][0];
    assert_eq!(first["endpoint"], "q.a");
    assert_eq!(first["code"], "nack");
    assert_eq!(first["reason"], "disk full");
    assert_eq!(first["failedAt"], "2027-01-15T08:00:00.002Z");
    // `relay dlq` alone lists too, and --endpoint filters.
    assert_eq!(
        listed(&json_at(&r, T0 + 20, &["dlq"])),
        vec![a.clone(), b.clone()]
    );
    let only_b = json_at(&r, T0 + 20, &["dlq", "list", "--endpoint", "q.b"]);
    assert_eq!(listed(&only_b), vec![b.clone()], "{only_b}");
    let text = r.cmd(["dlq"]).at(T0 + 20).success().stdout;
    assert!(text.contains(&a) && text.contains("disk full"), "{text}");

    let shown = json_at(&r, T0 + 20, &["dlq", "show", &a]);
    let shown = &shown["deadLetters"][0];
    assert_eq!(shown["id"], a.as_str(), "{shown}");
    assert_eq!(shown["code"], "nack", "{shown}");
    assert_eq!(shown["envelope"]["id"], a.as_str(), "{shown}");
    assert_eq!(shown["envelope"]["payload"], "payload", "{shown}");
    assert_eq!(shown["envelope"]["traceId"], "trace-dlq", "{shown}");

    // Requeue a: back in new/, sidecar gone, same envelope.
    let before = envelope(&r, "q.a", "failed", &a);
    let out = json_at(&r, T0 + 30, &["dlq", "requeue", &a]);
    assert_eq!(out["requeued"][0]["id"], a.as_str(), "{out}");
    assert_eq!(out["requeued"][0]["endpoint"], "q.a", "{out}");
    assert_eq!(
        r.files("q.a", "failed"),
        Vec::<String>::new(),
        "file and sidecar moved"
    );
    assert_eq!(ids(&r, "q.a", "new"), vec![a.clone()]);
    assert_eq!(
        envelope(&r, "q.a", "new", &a),
        before,
        "the envelope is unchanged"
    );
    assert_eq!(listed(&json_at(&r, T0 + 30, &["dlq"])), vec![b.clone()]);

    // The index knows it is pending again, the requeue is an event.
    let t = json_at(&r, T0 + 31, &["trace", "trace-dlq"]);
    assert_eq!(span(&t, "q.a")["state"], "pending", "{t}");
    assert_eq!(span(&t, "q.a")["status"], "sent", "{t}");
    assert_eq!(json_at(&r, T0 + 31, &["metrics"])["pendingCount"], 1);
    let ev = r
        .cmd(["events", "--json", "--kind", "requeued", "--since", "1h"])
        .at(T0 + 31)
        .success()
        .json_lines();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["messageId"], a.as_str());
    assert_eq!(ev[0]["endpoint"], "q.a");

    // Received again: same id, same trace; ack finishes it.
    let again = recv_at(&r, T0 + 40, "q.a");
    assert_eq!(again["id"], a.as_str());
    assert_eq!(again["traceId"], "trace-dlq");
    assert_eq!(again["payload"], "payload");
    r.cmd(["ack", "q.a", &a]).at(T0 + 41).success();
    let t = json_at(&r, T0 + 42, &["trace", &a]);
    assert_eq!(span(&t, "q.a")["status"], "delivered", "{t}");
}

#[test]
fn requeue_all_of_one_endpoint_leaves_the_others() {
    let r = Relay::new();
    r.add(&["q.a", "q.b"]);
    let a1 = dead_letter(&r, T0, "q.a", "x", &[]);
    let a2 = dead_letter(&r, T0 + 10, "q.a", "y", &[]);
    let b = dead_letter(&r, T0 + 20, "q.b", "z", &[]);
    r.cmd(["dlq", "requeue", "--all", "--endpoint", "q.a"])
        .at(T0 + 30)
        .success();
    assert_eq!(ids(&r, "q.a", "new"), vec![a1, a2]);
    assert!(r.files("q.a", "failed").is_empty());
    assert_eq!(ids(&r, "q.b", "failed"), vec![b.clone()]);
    assert!(ids(&r, "q.b", "new").is_empty());
    r.cmd(["dlq", "requeue", "--all"]).at(T0 + 40).success();
    assert_eq!(ids(&r, "q.b", "new"), vec![b]);
}

#[test]
fn requeue_refuses_a_dead_letter_directory_that_is_not_an_endpoint() {
    let r = Relay::new();
    r.add(&["q.a"]);
    r.cmd(["send", "nobody.home", "lost"]).at(T0).code(69);
    let id = ids(&r, "nobody.home", "failed")
        .pop()
        .expect("no_match dead letter");
    assert_eq!(sidecar(&r, "nobody.home", &id)["code"], "no_match");
    r.cmd(["dlq", "requeue", &id])
        .at(T0 + 1)
        .code(69)
        .stderr_has(&["nobody.home"]);
    assert_eq!(ids(&r, "nobody.home", "failed"), vec![id]);
    assert!(ids(&r, "nobody.home", "new").is_empty());
}

#[test]
fn purge_deletes_old_dead_letters_only_with_yes() {
    let r = Relay::new();
    r.add(&["q.a"]);
    let old = dead_letter(&r, T0, "q.a", "old", &[]);
    let young = dead_letter(&r, T0 + 5 * DAY, "q.a", "young", &[]);
    let now = T0 + 8 * DAY;

    // No terminal and no --yes: refuses (64) and deletes nothing.
    let out = r
        .cmd(["dlq", "purge", "--older-than", "7d"])
        .at(now)
        .code(64);
    assert!(out.stderr.contains("--yes"), "{}", out.stderr);
    assert_eq!(r.files("q.a", "failed").len(), 4, "nothing deleted");

    let out = r
        .cmd(["dlq", "purge", "--older-than", "7d", "--yes", "--json"])
        .at(now)
        .success()
        .json();
    assert_eq!(out["purged"], 1, "{out}");
    assert_eq!(
        r.files("q.a", "failed"),
        vec![format!("{young}.json"), format!("{young}.reason.json")],
        "the old file and its sidecar are gone, the young one stays"
    );
    assert!(!listed(&json_at(&r, now, &["dlq"])).contains(&old));

    // Text mode says how many it removed.
    let out = r
        .cmd(["dlq", "purge", "--older-than", "1d", "--yes"])
        .at(now)
        .success();
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains('1'),
        "purge reports its count:\n{}{}",
        out.stdout,
        out.stderr
    );
    assert!(r.files("q.a", "failed").is_empty());
    assert!(ids(&r, "q.a", "new").is_empty(), "purge never requeues");
}
