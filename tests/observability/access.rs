//! `access-rules.json`: first match by priority (ties in file order) wins, no
//! file allows, an unusable file denies everything (fail closed).

use super::{T0, ids, json_at, send_at, sidecar};
use crate::harness::Relay;

/// Sends `subject` from `from` expecting access denial: exit 77, nothing
/// delivered, one `access_denied` dead letter in `subject`'s failed/.
#[track_caller]
fn denied(r: &Relay, from: &str, subject: &str) -> String {
    let before = ids(r, subject, "failed");
    let out = r
        .cmd(["send", subject, "hi", "--from", from])
        .at(T0)
        .code(77);
    assert!(
        out.stdout.trim().is_empty(),
        "no id printed: {}",
        out.stdout
    );
    assert!(ids(r, subject, "new").is_empty(), "nothing in new/");
    let fresh: Vec<String> = ids(r, subject, "failed")
        .into_iter()
        .filter(|i| !before.contains(i))
        .collect();
    assert_eq!(fresh.len(), 1, "one dead letter: {fresh:?}");
    let car = sidecar(r, subject, &fresh[0]);
    assert_eq!(car["code"], "access_denied", "{car}");
    assert_eq!(car["envelope"]["from"], from, "{car}");
    fresh[0].clone()
}

/// Drains `ep/new` (so the next allowed send is easy to spot).
fn drain(r: &Relay, ep: &str) {
    for id in ids(r, ep, "new") {
        let _ = std::fs::remove_file(r.mailbox(ep).join("new").join(format!("{id}.json")));
    }
}

#[test]
fn no_rules_file_allows_and_an_empty_list_allows() {
    let r = Relay::new();
    r.add(&["a.x"]);
    send_at(&r, T0, &["a.x", "hi", "--from", "anyone"]);
    r.write_file("access-rules.json", "[]");
    send_at(&r, T0, &["a.x", "hi", "--from", "anyone"]);
    assert_eq!(ids(&r, "a.x", "new").len(), 2);
    assert!(r.files("a.x", "failed").is_empty());
}

#[test]
fn deny_and_allow_follow_priority_then_file_order() {
    let r = Relay::new();
    r.add(&["a.x", "b.x", "c.x"]);
    // The catch-all allow comes first in the file but has the lowest
    // priority; the deny for evil.* outranks it.
    r.write_file(
        "access-rules.json",
        r#"[
  {"from": ">", "to": ">", "action": "allow", "priority": 1},
  {"from": "evil.*", "to": "a.x", "action": "deny", "priority": 100},
  {"from": "tie.first", "to": "b.x", "action": "deny", "priority": 50},
  {"from": "tie.first", "to": "b.x", "action": "allow", "priority": 50},
  {"from": "tie.second", "to": "b.x", "action": "allow", "priority": 50},
  {"from": "tie.second", "to": "b.x", "action": "deny", "priority": 50},
  {"from": "evil.*", "to": "c.x", "action": "allow", "priority": 200},
  {"from": "evil.>", "to": ">", "action": "deny", "priority": 150}
]"#,
    );
    // Higher priority deny beats the earlier, lower allow.
    let dead = denied(&r, "evil.one", "a.x");
    // The refusal explains itself and names the rules file.
    let out = r
        .cmd(["send", "a.x", "hi", "--from", "evil.two"])
        .at(T0)
        .code(77);
    assert!(out.stderr.contains("access-rules.json"), "{}", out.stderr);
    assert!(out.stderr.contains("evil.two"), "{}", out.stderr);
    drain(&r, "a.x");
    // A sender the deny does not match is allowed by the catch-all.
    send_at(&r, T0, &["a.x", "hi", "--from", "good.one"]);
    assert_eq!(ids(&r, "a.x", "new").len(), 1);

    // Equal priority: the first in file order wins.
    denied(&r, "tie.first", "b.x");
    send_at(&r, T0, &["b.x", "hi", "--from", "tie.second"]);
    assert_eq!(ids(&r, "b.x", "new").len(), 1);

    // The highest priority matching rule wins even when a deny matches too.
    send_at(&r, T0, &["c.x", "hi", "--from", "evil.one"]);
    assert_eq!(ids(&r, "c.x", "new").len(), 1);
    // evil.a.b is matched by `evil.>` (150) but not by `evil.*` (200).
    drain(&r, "c.x");
    denied(&r, "evil.a.b", "c.x");

    // The denials are counted, listed and recorded.
    let m = json_at(&r, T0, &["metrics"]);
    assert_eq!(m["accessDenied"], 4, "{m}");
    let dl = json_at(&r, T0, &["dlq", "list", "--endpoint", "a.x"]);
    assert!(
        dl["deadLetters"]
            .as_array()
            .expect("deadLetters")
            .iter()
            .any(|d| d["id"] == dead.as_str() && d["code"] == "access_denied"),
        "{dl}"
    );
}

#[test]
fn an_unusable_rules_file_denies_every_send() {
    let bad = [
        ("not json", "allow everything please"),
        (
            "not an array",
            r#"{"from": ">", "to": ">", "action": "allow", "priority": 1}"#,
        ),
        (
            "bad action",
            r#"[{"from": ">", "to": ">", "action": "maybe", "priority": 1}]"#,
        ),
        // DorkOS requires a priority; a pattern that is not one, or an
        // extra key, is valid for DorkOS (tests/dorkos_index/validation.rs).
        (
            "no priority",
            r#"[{"from": ">", "to": ">", "action": "allow"}]"#,
        ),
    ];
    for (what, content) in bad {
        let r = Relay::new();
        r.add(&["a.x"]);
        r.write_file("access-rules.json", content);
        let out = r
            .cmd(["send", "a.x", "hi", "--from", "anyone"])
            .at(T0)
            .code(77);
        assert!(
            out.stderr.contains("access-rules.json"),
            "{what}: the error names the file:\n{}",
            out.stderr
        );
        assert!(
            ids(&r, "a.x", "new").is_empty(),
            "{what}: nothing delivered"
        );
        let dead = ids(&r, "a.x", "failed");
        assert_eq!(dead.len(), 1, "{what}: dead-lettered");
        assert_eq!(
            sidecar(&r, "a.x", &dead[0])["code"],
            "access_denied",
            "{what}"
        );
        // Fixing the file lets sends through again (read on every invocation).
        r.write_file(
            "access-rules.json",
            r#"[{"from": ">", "to": ">", "action": "allow", "priority": 1}]"#,
        );
        send_at(&r, T0 + 1, &["a.x", "hi", "--from", "anyone"]);
    }
}
