//! config.json and access-rules.json accept and reject exactly what
//! DorkOS's validation does (dorkos-contract.md sections 6-7); both
//! `config validate` and `doctor` report a rules file that refuses every
//! send, naming the file, the problem and the fix (issue 16 item 11).

use crate::harness::Relay;

/// A home with endpoint `a.x` and `rules` as its access-rules.json.
fn with_rules(rules: &str) -> Relay {
    let r = Relay::new();
    r.add(&["a.x"]);
    r.write_file("access-rules.json", rules);
    r
}

#[test]
fn pressure_warning_at_zero_is_valid() {
    let r = Relay::new();
    r.add(&["a.x"]);
    r.write_file(
        "config.json",
        r#"{"reliability":{"backpressure":{"pressureWarningAt":0}}}"#,
    );
    r.cmd(["config", "validate"]).success();
    // Every send is warned about (pressure >= 0), none refused.
    r.cmd(["send", "a.x", "hi"])
        .success()
        .stderr_has(&["backpressure"]);
}

#[test]
fn an_empty_sender_prefix_override_is_valid_and_matches_everyone() {
    let r = Relay::new();
    r.add(&["a.x"]);
    r.write_file(
        "config.json",
        r#"{"reliability":{"rateLimit":{"perSenderOverrides":{"": 2}}}}"#,
    );
    r.cmd(["config", "validate"]).success();
    r.cmd(["send", "a.x", "1", "--from", "anyone"]).success();
    r.cmd(["send", "a.x", "2", "--from", "anyone"]).success();
    r.cmd(["send", "a.x", "3", "--from", "anyone"]).code(75);
}

#[test]
fn unknown_keys_warn_but_validate() {
    let r = Relay::new();
    r.write_file(
        "config.json",
        r#"{"reliability":{"rateLimit":{"maxPerWindw":5}},"adapters":{}}"#,
    );
    let out = r.cmd(["config", "validate"]).success();
    assert!(out.stderr.contains("maxPerWindw"), "{}", out.stderr);
    assert!(out.stderr.contains("is valid"), "{}", out.stderr);
    let v = r.cmd(["config", "validate", "--json"]).success().json();
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["warnings"].as_array().map(Vec::len), Some(2), "{v}");
}

#[test]
fn dorkos_invalid_values_are_still_refused() {
    for bad in [
        r#"{"reliability":{"backpressure":{"pressureWarningAt":1.5}}}"#,
        r#"{"reliability":{"rateLimit":{"perSenderOverrides":{"a.": 0}}}}"#,
        r#"{"reliability":{"rateLimit":{"windowSecs":1.5}}}"#,
        r#"{"reliability":{"circuitBreaker":{"cooldownMs":999}}}"#,
        r#"{"reliability":{"rateLimit":null}}"#,
    ] {
        let r = Relay::new();
        r.write_file("config.json", bad);
        r.cmd(["config", "validate"]).code(78);
    }
}

#[test]
fn a_rule_without_priority_denies_everything() {
    let r = with_rules(r#"[{"from": ">", "to": ">", "action": "allow"}]"#);
    r.cmd(["send", "a.x", "hi"])
        .code(77)
        .stderr_has(&["access-rules.json", "'priority' is missing"]);
}

#[test]
fn an_extra_key_is_stripped_and_the_rule_applies() {
    let r = with_rules(
        r#"[{"from": ">", "to": "a.x", "action": "deny", "priority": 1, "comment": "no"}]"#,
    );
    r.cmd(["send", "a.x", "hi"])
        .code(77)
        .stderr_has(&["by rule"]);
    let r = with_rules(r#"[{"from": ">", "to": ">", "action": "allow", "priority": 1, "x": 1}]"#);
    r.cmd(["send", "a.x", "hi"]).success();
    // validate says what was stripped, and passes.
    let out = r.cmd(["config", "validate"]).success();
    assert!(
        out.stderr.contains("unknown key 'x' ignored"),
        "{}",
        out.stderr
    );
}

#[test]
fn dorkos_valid_rules_relay_used_to_refuse_are_accepted() {
    // An integral float priority, and patterns DorkOS does not validate
    // (they just never match).
    let r = with_rules(
        r#"[{"from": "a..b", "to": ">", "action": "deny", "priority": 2.0},
            {"from": ">", "to": ">", "action": "allow", "priority": 1e0}]"#,
    );
    r.cmd(["send", "a.x", "hi"]).success();
}

#[test]
fn dorkos_invalid_rules_deny_everything() {
    for bad in [
        r#"[{"from": ">", "to": ">", "action": "allow", "priority": 1.5}]"#,
        r#"[{"from": ">", "to": ">", "action": "allow", "priority": "1"}]"#,
        r#"[{"from": ">", "to": ">", "action": "permit", "priority": 1}]"#,
        r#"[{"from": 5, "to": ">", "action": "allow", "priority": 1}]"#,
        r#"[{"to": ">", "action": "allow", "priority": 1}]"#,
        r#"[null]"#,
        r#"{"rules": []}"#,
        "[",
    ] {
        let r = with_rules(bad);
        r.cmd(["send", "a.x", "hi"]).code(77);
    }
}

#[test]
fn config_validate_reports_a_broken_rules_file() {
    let r = with_rules(r#"[{"from": ">", "to": ">", "action": "allow"}]"#);
    r.cmd(["config", "validate"]).code(78).stderr_has(&[
        "access-rules.json",
        "rule 1: 'priority' is missing",
        "every send is refused",
        "or remove it",
    ]);
    let out = r.cmd(["config", "validate", "--json"]).code(78);
    let v: serde_json::Value =
        serde_json::from_str(out.stdout.trim()).unwrap_or(serde_json::Value::Null);
    assert_eq!(v["accessRules"]["valid"], false, "{}", out.stdout);
    assert!(
        v["accessRules"]["problem"]
            .as_str()
            .is_some_and(|p| p.contains("priority")),
        "{}",
        out.stdout
    );
    // Named explicitly, the rules file is checked as rules.
    let path = r.path("access-rules.json");
    r.cmd(["config", "validate", path.to_str().unwrap_or_default()])
        .code(78);
    r.write_file("access-rules.json", "[]");
    r.cmd(["config", "validate"]).success();
}

#[test]
fn doctor_reports_a_broken_rules_file_and_leaves_it() {
    let r = with_rules("not json");
    let out = r.cmd(["doctor", "--json"]).code(65);
    let v: serde_json::Value =
        serde_json::from_str(out.stdout.trim()).unwrap_or(serde_json::Value::Null);
    let f = &v["findings"][0];
    assert_eq!(f["check"], "access rules", "{v}");
    assert!(
        f["detail"]
            .as_str()
            .is_some_and(|d| d.contains("access-rules.json")
                && d.contains("not valid JSON")
                && d.contains("every send is refused")),
        "{v}"
    );
    r.cmd(["doctor", "--repair"]).code(65);
    assert_eq!(
        std::fs::read_to_string(r.path("access-rules.json")).unwrap_or_default(),
        "not json",
        "the operator's file is never rewritten"
    );
}
