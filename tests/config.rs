//! config.json is read on every invocation: an invalid file exits 78 naming
//! the file, the key and the problem; unknown keys warn but do not fail.

use crate::harness::Relay;

/// A world with endpoint `q` and `config` as its config.json.
fn with_config(config: &str) -> Relay {
    let r = Relay::new();
    r.add(&["q"]);
    r.write_file("config.json", config);
    r
}

#[test]
fn out_of_range_value_exits_78_naming_file_and_key() {
    let r = with_config(r#"{"reliability":{"rateLimit":{"maxPerWindow":0}}}"#);
    let file = r.path("config.json").display().to_string();
    for args in [vec!["send", "q", "x"], vec!["recv", "q"], vec!["endpoints"]] {
        r.cmd(&args)
            .code(78)
            .stderr_has(&[&file, "reliability.rateLimit.maxPerWindow", "0"]);
    }
    assert!(
        r.files("q", "new").is_empty(),
        "nothing sent under a bad config"
    );
}

#[test]
fn invalid_json_exits_78_naming_the_file_and_position() {
    let r = with_config("{\"reliability\": {\n  \"rateLimit\": ,\n}}");
    let file = r.path("config.json").display().to_string();
    r.cmd(["send", "q", "x"])
        .code(78)
        .stderr_has(&[&file, "line 2"]);
    assert!(r.files("q", "new").is_empty());
}

#[test]
fn wrong_types_exit_78_naming_the_key() {
    for (config, key) in [
        (
            r#"{"reliability":{"rateLimit":{"enabled":"yes"}}}"#,
            "reliability.rateLimit.enabled",
        ),
        (
            r#"{"reliability":{"backpressure":{"pressureWarningAt":2}}}"#,
            "reliability.backpressure.pressureWarningAt",
        ),
        (
            r#"{"reliability":{"circuitBreaker":[]}}"#,
            "reliability.circuitBreaker",
        ),
        (r#"{"maxPayloadBytes":-1}"#, "maxPayloadBytes"),
        ("[]", "top level"),
    ] {
        let r = with_config(config);
        r.cmd(["endpoints"]).code(78).stderr_has(&[key]);
    }
}

#[test]
fn unknown_keys_only_warn() {
    let r = with_config(r#"{"foo":1,"reliability":{"rateLimit":{"bogus":true}}}"#);
    r.cmd(["send", "q", "still works"]).success().stderr_has(&[
        "warning",
        "'foo'",
        "reliability.rateLimit.bogus",
    ]);
    assert_eq!(r.files("q", "new").len(), 1);
}

#[test]
fn a_full_dorkos_reliability_section_is_accepted_silently() {
    let r = with_config(
        r#"{
  "reliability": {
    "rateLimit": { "enabled": true, "windowSecs": 60, "maxPerWindow": 100, "perSenderOverrides": {} },
    "circuitBreaker": { "enabled": true, "failureThreshold": 5, "cooldownMs": 30000, "halfOpenProbeCount": 1, "successToClose": 2 },
    "backpressure": { "enabled": true, "maxMailboxSize": 1000, "pressureWarningAt": 0.8 }
  }
}"#,
    );
    r.cmd(["send", "q", "x"]).success().stderr_empty();
}

#[test]
fn the_config_is_reread_by_every_invocation() {
    let r = with_config("{}");
    r.cmd(["send", "q", "x"]).success();
    r.write_file("config.json", "{oops");
    r.cmd(["send", "q", "x"]).code(78);
    r.write_file("config.json", r#"{"maxPayloadBytes": 3}"#);
    r.cmd(["send", "q", "toolong"]).code(65);
    r.cmd(["send", "q", "ok"]).success();
    assert_eq!(r.files("q", "new").len(), 2);
}
