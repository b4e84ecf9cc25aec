//! Budgets enforced at send, as in DorkOS: each rejection is dead-lettered in
//! the endpoint's failed/ with its code and counted by `metrics`.

use serde_json::json;

use super::{
    DAY, MIN, T0, budget, envelope, ids, json_at, parent_file, recv_at, send_at, sidecar, span,
};
use crate::harness::Relay;

/// The one id that appeared in `ep/failed/` since `before`.
#[track_caller]
fn new_dead_letter(r: &Relay, ep: &str, before: &[String]) -> String {
    let mut fresh: Vec<String> = ids(r, ep, "failed")
        .into_iter()
        .filter(|id| !before.contains(id))
        .collect();
    assert_eq!(
        fresh.len(),
        1,
        "want one new dead letter in {ep}/failed: {fresh:?}"
    );
    fresh.remove(0)
}

#[test]
fn each_budget_code_is_dead_lettered_with_its_code_and_counted() {
    let r = Relay::new();
    r.add(&["work.a"]);
    let far = T0 + 30 * DAY;
    let cases = [
        ("hop_limit", budget(5, 5, &["up"], far, 9)),
        ("cycle_detected", budget(1, 5, &["up", "work.a"], far, 9)),
        ("ttl_expired", budget(1, 5, &["up"], T0 - 1, 9)),
        ("budget_exhausted", budget(1, 5, &["up"], far, 0)),
    ];
    for (i, (code, b)) in cases.iter().enumerate() {
        let parent = parent_file(&r, &format!("p{i}.json"), &format!("tr-{code}"), b);
        let before = ids(&r, "work.a", "failed");
        let out = r
            .cmd(["send", "work.a", "payload", "--parent"])
            .args([&parent])
            .at(T0 + i as u64)
            .code(65);
        let id = new_dead_letter(&r, "work.a", &before);
        assert!(
            out.stderr.contains(&id),
            "the refusal names the dead-lettered message:\n{}",
            out.stderr
        );
        let car = sidecar(&r, "work.a", &id);
        assert_eq!(car["code"], *code, "{car}");
        assert!(
            car["reason"].as_str().is_some_and(|s| !s.is_empty()),
            "{car}"
        );
        assert_eq!(car["envelope"]["id"], id.as_str(), "{car}");
        assert_eq!(
            envelope(&r, "work.a", "failed", &id)["traceId"],
            format!("tr-{code}")
        );
        // The span of a budget rejection is a timeout with the code.
        let t = json_at(&r, T0 + 10, &["trace", &id]);
        assert_eq!(span(&t, "work.a")["status"], "timeout", "{t}");
        assert_eq!(span(&t, "work.a")["code"], *code, "{t}");
    }
    assert!(ids(&r, "work.a", "new").is_empty(), "nothing was delivered");

    let m = json_at(&r, T0 + 10, &["metrics"]);
    let b = &m["budgetRejections"];
    assert_eq!(
        *b,
        json!({"hopLimit": 1, "ttlExpired": 1, "cycleDetected": 1, "budgetExhausted": 1}),
        "{m}"
    );
    assert_eq!(m["deadLetteredCount"], 4, "{m}");

    // The dead-letter list carries the codes too.
    let dl = json_at(&r, T0 + 10, &["dlq", "list"]);
    let mut codes: Vec<&str> = dl["deadLetters"]
        .as_array()
        .expect("deadLetters")
        .iter()
        .filter_map(|d| d["code"].as_str())
        .collect();
    codes.sort_unstable();
    assert_eq!(
        codes,
        [
            "budget_exhausted",
            "cycle_detected",
            "hop_limit",
            "ttl_expired"
        ]
    );
}

#[test]
fn relay_budget_env_passes_a_spent_budget() {
    let r = Relay::new();
    r.add(&["work.a"]);
    let spent = budget(2, 5, &["up", "mid"], T0 + DAY, 0).to_string();
    r.cmd(["send", "work.a", "x"])
        .env("RELAY_BUDGET", &spent)
        .at(T0)
        .code(65);
    let id = new_dead_letter(&r, "work.a", &[]);
    assert_eq!(sidecar(&r, "work.a", &id)["code"], "budget_exhausted");
    assert!(ids(&r, "work.a", "new").is_empty());

    // With calls left it goes through, one hop further, keeping the chain.
    let ok = budget(2, 5, &["up", "mid"], T0 + DAY, 3).to_string();
    let id = r
        .cmd(["send", "work.a", "y"])
        .env("RELAY_BUDGET", &ok)
        .at(T0 + 1)
        .success()
        .id();
    let env = envelope(&r, "work.a", "new", &id);
    assert_eq!(env["budget"]["hopCount"], 3, "{env}");
    assert_eq!(env["budget"]["callBudgetRemaining"], 2, "{env}");
    assert_eq!(
        env["budget"]["ancestorChain"],
        json!(["up", "mid", "work.a"]),
        "{env}"
    );
    assert_eq!(env["budget"]["ttl"], T0 + DAY, "{env}");

    assert_eq!(
        json_at(&r, T0 + 2, &["metrics"])["budgetRejections"]["budgetExhausted"],
        1
    );
}

/// Receives the oldest message of `ep` and writes it to a scratch file, as a
/// handler would; returns the file's path.
fn save(r: &Relay, at: u64, ep: &str, name: &str) -> String {
    let env = recv_at(r, at, ep);
    let path = r.scratch().join(name);
    std::fs::write(&path, env.to_string()).expect("write parent");
    path.to_string_lossy().into_owned()
}

#[test]
fn a_handler_chain_runs_into_max_hops_and_cycles() {
    let r = Relay::new();
    r.add(&["svc.a", "svc.b", "svc.c"]);
    send_at(&r, T0, &["svc.a", "start", "--max-hops", "2"]);
    let m1 = save(&r, T0 + 1, "svc.a", "m1.json");
    // Hop 2: allowed (1 < 2).
    let id2 = send_at(
        &r,
        T0 + 2,
        &["svc.b", "next", "--from", "svc.a", "--parent", &m1],
    );
    assert_eq!(envelope(&r, "svc.b", "new", &id2)["budget"]["hopCount"], 2);
    assert_eq!(envelope(&r, "svc.b", "new", &id2)["budget"]["maxHops"], 2);
    let m2 = save(&r, T0 + 3, "svc.b", "m2.json");
    // Hop 3: refused (2 >= 2), dead-lettered at svc.c.
    r.cmd(["send", "svc.c", "again", "--from", "svc.b", "--parent", &m2])
        .at(T0 + 4)
        .code(65);
    let dead = new_dead_letter(&r, "svc.c", &[]);
    assert_eq!(sidecar(&r, "svc.c", &dead)["code"], "hop_limit");
    assert!(ids(&r, "svc.c", "new").is_empty());

    // A cycle back to svc.a within the hop limit.
    send_at(&r, T0 + 10, &["svc.a", "start"]);
    let m3 = save(&r, T0 + 11, "svc.a", "m3.json");
    send_at(
        &r,
        T0 + 12,
        &["svc.b", "next", "--from", "svc.a", "--parent", &m3],
    );
    let m4 = save(&r, T0 + 13, "svc.b", "m4.json");
    let before = ids(&r, "svc.a", "failed");
    r.cmd(["send", "svc.a", "back", "--from", "svc.b", "--parent", &m4])
        .at(T0 + 14)
        .code(65);
    let dead = new_dead_letter(&r, "svc.a", &before);
    assert_eq!(sidecar(&r, "svc.a", &dead)["code"], "cycle_detected");
    assert!(ids(&r, "svc.a", "new").is_empty());

    let b = json_at(&r, T0 + 20, &["metrics"])["budgetRejections"].clone();
    assert_eq!(b["hopLimit"], 1, "{b}");
    assert_eq!(b["cycleDetected"], 1, "{b}");
}

#[test]
fn ttl_flag_sets_the_deadline_and_a_late_resend_is_expired() {
    let r = Relay::new();
    r.add(&["t.a", "t.b"]);
    let id = send_at(&r, T0, &["t.a", "quick", "--ttl", "1m"]);
    assert_eq!(envelope(&r, "t.a", "new", &id)["budget"]["ttl"], T0 + MIN);
    let m = save(&r, T0 + 1, "t.a", "m.json");
    // Re-sent in time: fine, and the child keeps the parent's deadline.
    let child = send_at(&r, T0 + MIN, &["t.b", "ok", "--parent", &m]);
    assert_eq!(
        envelope(&r, "t.b", "new", &child)["budget"]["ttl"],
        T0 + MIN
    );
    // Re-sent after the deadline: ttl_expired.
    r.cmd(["send", "t.b", "late", "--parent", &m])
        .at(T0 + MIN + 1)
        .code(65);
    let dead = new_dead_letter(&r, "t.b", &[]);
    assert_eq!(sidecar(&r, "t.b", &dead)["code"], "ttl_expired");
    assert_eq!(ids(&r, "t.b", "new"), vec![child]);
    assert_eq!(
        json_at(&r, T0 + MIN + 2, &["metrics"])["budgetRejections"]["ttlExpired"],
        1
    );
}

#[test]
fn a_fan_out_refused_at_one_endpoint_still_reaches_the_others() {
    let r = Relay::new();
    r.add(&["f.a", "f.b"]);
    let parent = parent_file(&r, "p.json", "tr-f", &budget(1, 5, &["f.a"], T0 + DAY, 5));
    let out = r
        .cmd(["send", "f.*", "hi", "--json", "--parent"])
        .args([&parent])
        .at(T0)
        .success()
        .json();
    let id = out["id"].as_str().expect("id").to_string();
    assert_eq!(out["deliveredTo"], json!(["f.b"]), "{out}");
    assert_eq!(out["rejected"][0]["endpoint"], "f.a", "{out}");
    assert_eq!(out["rejected"][0]["code"], "cycle_detected", "{out}");
    assert_eq!(ids(&r, "f.b", "new"), vec![id.clone()]);
    assert!(ids(&r, "f.a", "new").is_empty());
    assert_eq!(ids(&r, "f.a", "failed"), vec![id.clone()]);
    assert_eq!(sidecar(&r, "f.a", &id)["code"], "cycle_detected");
    let t = json_at(&r, T0 + 1, &["trace", &id]);
    assert_eq!(span(&t, "f.a")["status"], "timeout", "{t}");
    assert_eq!(span(&t, "f.b")["status"], "sent", "{t}");
}
