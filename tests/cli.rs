//! The command line itself: usage errors exit 64 (never clap's 2), help and
//! version exit 0, `--json` errors, and where the home comes from.

use crate::harness::Relay;

#[test]
fn usage_errors_exit_64() {
    let r = Relay::new();
    r.add(&["q"]);
    let before = r.listing();
    for (args, needle) in [
        (vec!["send", "q", "x", "--bogus"], "--bogus"),
        (vec!["frobnicate"], "frobnicate"),
        (vec!["recv"], "ENDPOINT"),
        (vec!["ack", "q"], "ID"),
        (vec!["recv", "q", "--wait", "soon"], "soon"),
        (vec!["recv", "q", "-n", "0"], "0"),
        (vec!["send", "q", "x", "--max-hops", "0"], "0"),
        (vec!["send", "q", "x", "--ttl", "forever"], "forever"),
        (vec![], "Usage"),
    ] {
        r.cmd(&args).code(64).stderr_has(&[needle]);
    }
    assert_eq!(r.listing(), before);
}

#[test]
fn help_and_version_exit_0_on_stdout() {
    let r = Relay::new();
    let out = r.cmd(["--help"]).success();
    for sub in ["send", "recv", "ack", "nack", "endpoints"] {
        assert!(out.stdout.contains(sub), "--help lacks {sub}");
    }
    let out = r.cmd(["--version"]).success();
    assert!(out.stdout.starts_with("relay "), "{}", out.stdout);
    r.cmd(["send", "--help"]).success();
}

#[test]
fn json_errors_are_one_object_on_stderr() {
    let r = Relay::new();
    r.add(&["q"]);
    let out = r.cmd(["recv", "q", "--json"]).code(66);
    assert!(out.stdout.is_empty());
    let err = out.stderr_json();
    assert_eq!(err["error"]["code"], 66);
    assert_eq!(err["error"]["kind"], "no_input");
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("'q'"))
    );
}

/// Every stderr line of `out` parsed as JSON (a text line fails the test).
fn stderr_json_lines(out: &crate::harness::Output<'_>) -> Vec<serde_json::Value> {
    out.stderr
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| out.fail(&format!("stderr line {l:?} is not JSON: {e}")))
        })
        .collect()
}

/// The messages of the `{"warning": {"message"}}` lines among `lines`.
fn warnings(lines: &[serde_json::Value]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|v| v["warning"]["message"].as_str().map(str::to_string))
        .collect()
}

/// Under `--json` a warning is one `{"warning": {"message"}}` line on
/// stderr, as an error is one `{"error": ...}` line: a program reading
/// stderr never meets text. Without `--json` it stays `relay: warning:`.
#[test]
fn json_warnings_are_json_lines_on_stderr() {
    let r = Relay::new();
    r.add(&["q"]);
    r.write_file("config.json", r#"{"bogus":1}"#);
    let unknown = "unknown key 'bogus' ignored";
    r.cmd(["send", "q", "x"])
        .success()
        .stderr_has(&["relay: warning: ", unknown]);
    for args in [
        vec!["send", "q", "x"],
        vec!["status"],
        vec!["endpoints"],
        vec!["peek", "q"],
        vec!["recv", "q", "-n", "10"],
        vec!["dlq"],
        vec!["limits"],
        vec!["breakers"],
        vec!["events"],
    ] {
        let out = r.cmd(&args).args(["--json"]).success();
        let lines = stderr_json_lines(&out);
        let found = warnings(&lines);
        assert!(
            found.len() == lines.len() && found.iter().any(|w| w.contains(unknown)),
            "relay {args:?} --json: stderr is not the warning as JSON:\n{}",
            out.stderr
        );
    }
    // A note that not every message is shown is a JSON line too.
    let out = r
        .cmd(["peek", "q", "-n", "1", "--status", "claimed", "--json"])
        .success();
    let lines = stderr_json_lines(&out);
    assert!(
        warnings(&lines)
            .iter()
            .any(|w| w.contains("showing 1 of 2")),
        "{}",
        out.stderr
    );
    // The warning of a command whose mailbox is empty, then the error.
    let out = r.cmd(["recv", "q", "--json"]).code(66);
    let lines = stderr_json_lines(&out);
    assert_eq!(warnings(&lines).len(), 1, "{}", out.stderr);
    assert_eq!(lines.last().map(|v| &v["error"]["code"]), Some(&66.into()));
    // A warning of the command itself, then its error: two JSON lines.
    let out = r
        .cmd(["request", "q", "{bad", "--timeout", "50ms", "--json"])
        .code(75);
    let lines = stderr_json_lines(&out);
    let found = warnings(&lines);
    assert!(
        found.iter().any(|w| w.contains(unknown))
            && found.iter().any(|w| w.contains("not valid JSON")),
        "request --json: {}",
        out.stderr
    );
    assert_eq!(lines.last().map(|v| &v["error"]["code"]), Some(&75.into()));
    // A warning from deep in the store (both state slots damaged) too.
    r.write_file("state.0", "garbage");
    r.write_file("state.1", "garbage");
    let out = r.cmd(["send", "q", "x", "--json"]).success();
    let lines = stderr_json_lines(&out);
    assert!(
        warnings(&lines).iter().any(|w| w.contains("both damaged")),
        "{}",
        out.stderr
    );
}

#[test]
fn home_defaults_to_dot_dork_relay_under_home() {
    let r = Relay::new();
    r.cmd(["endpoints", "add", "a.x"])
        .env_remove("RELAY_HOME")
        .success();
    assert!(r.user_home().join(".dork/relay/mailboxes/a.x/new").is_dir());
    assert!(!r.home().exists());
}

#[test]
fn home_flag_wins_over_relay_home() {
    let r = Relay::new();
    let other = r.scratch().join("other");
    r.cmd([
        "--home",
        other.to_str().unwrap_or_default(),
        "endpoints",
        "add",
        "a.x",
    ])
    .success();
    assert!(other.join("mailboxes/a.x/new").is_dir());
    assert!(!r.home().exists());
}

#[test]
fn empty_relay_home_is_a_usage_error() {
    let r = Relay::new();
    r.cmd(["endpoints"])
        .env("RELAY_HOME", "")
        .code(64)
        .stderr_has(&["RELAY_HOME"]);
}
