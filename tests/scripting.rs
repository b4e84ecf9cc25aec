//! Issue 16, the command line a script author meets: JSON usage errors,
//! batch output that zips with its input, refusals that say what to change,
//! human times, durations, payloads that look like JSON, config typos,
//! missing homes, `recv --format` and `send --retry`.

use serde_json::{Value, json};

use crate::harness::{Relay, T, is_ulid};

/// A world with endpoints `eps` and `config` as config.json.
fn world(eps: &[&str], config: &str) -> Relay {
    let r = Relay::new();
    if !eps.is_empty() {
        r.add(eps);
    }
    if !config.is_empty() {
        r.write_file("config.json", config);
    }
    r
}

/// The `error` object of a `--json` error report, asserting its shape.
#[track_caller]
fn json_error(out: &crate::harness::Output<'_>, code: i32, kind: &str) -> String {
    let v = out.stderr_json();
    let e = &v["error"];
    if e["code"] != code || e["kind"] != kind || !e["message"].is_string() {
        out.fail(&format!(
            "want {{kind: {kind}, code: {code}, message}}, got {v}"
        ));
    }
    if out.stderr.trim().lines().count() != 1 {
        out.fail("a --json error is one line");
    }
    e["message"].as_str().unwrap_or_default().to_string()
}

// ---- item 3: usage errors under --json ----

#[test]
fn a_bad_flag_value_with_json_is_one_json_error_with_code_64() {
    let r = world(&["x"], "");
    let out = r
        .cmd(["send", "x", "hi", "--ttl", "10x", "--json"])
        .code(64);
    let msg = json_error(&out, 64, "usage");
    assert!(msg.contains("'10x'") && msg.contains("--ttl"), "{msg}");
    assert!(!msg.starts_with("error:"), "{msg}");
    assert!(out.stdout.is_empty());
    assert!(r.files("x", "new").is_empty());
}

#[test]
fn json_before_the_subcommand_makes_an_unknown_subcommand_a_json_error() {
    let r = Relay::new();
    let out = r.cmd(["--json", "frobnicate"]).code(64);
    let msg = json_error(&out, 64, "usage");
    assert!(msg.contains("frobnicate"), "{msg}");
    assert!(!r.home().exists());
}

#[test]
fn a_missing_argument_and_an_unknown_flag_with_json_are_json_errors() {
    let r = world(&["x"], "");
    let msg = json_error(&r.cmd(["recv", "--json"]).code(64), 64, "usage");
    assert!(msg.contains("ENDPOINT"), "{msg}");
    let msg = json_error(
        &r.cmd(["send", "x", "hi", "--bogus", "--json"]).code(64),
        64,
        "usage",
    );
    assert!(msg.contains("--bogus"), "{msg}");
}

#[test]
fn without_json_a_usage_error_stays_text() {
    let r = world(&["x"], "");
    let out = r.cmd(["send", "x", "hi", "--ttl", "10x"]).code(64);
    assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
    assert!(serde_json::from_str::<Value>(out.stderr.trim()).is_err());
}

#[test]
fn help_with_json_is_still_help_on_stdout() {
    let r = Relay::new();
    let out = r.cmd(["send", "--help", "--json"]).success();
    assert!(out.stdout.contains("Usage"), "{}", out.stdout);
}

// ---- item 4: send --batch text output ----

#[test]
fn batch_text_prints_one_line_per_input_line_in_order_failures_included() {
    let r = world(&["a.x"], "");
    let input = [
        r#"{"subject":"a.x","payload":1}"#,
        r#"not json"#,
        r#"{"subject":"nobody.here","payload":2}"#,
        "",
        r#"{"subject":"a.x","payload":3}"#,
    ]
    .join("\n");
    let out = r.cmd(["send", "--batch"]).stdin(input).code(65);
    let lines: Vec<&str> = out.stdout.split('\n').collect();
    // Five input lines, five output lines (and the final newline).
    if lines.len() != 6 || !lines[5].is_empty() {
        out.fail("expected exactly five stdout lines");
    }
    assert!(is_ulid(lines[0]), "{}", lines[0]);
    assert!(
        lines[1].starts_with("error 65: not a send request"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with("error 69: no endpoint matches 'nobody.here'"),
        "{}",
        lines[2]
    );
    assert_eq!(lines[3], "", "a blank line answers a blank line");
    assert!(is_ulid(lines[4]), "{}", lines[4]);
    assert_eq!(r.files("a.x", "new").len(), 2);
}

// ---- item 6: refusals say what to change ----

#[test]
fn a_rate_limit_refusal_names_the_knob_the_reset_and_batch_mode() {
    let r = world(
        &["agent.b"],
        r#"{"reliability":{"rateLimit":{"maxPerWindow":5}}}"#,
    );
    for i in 0..5 {
        r.cmd(["send", "agent.b", &i.to_string(), "--from", "agent.a"])
            .at(T)
            .success();
    }
    let out = r
        .cmd(["send", "agent.b", "x", "--from", "agent.a"])
        .at(T)
        .code(75)
        .stderr_has(&[
            "0 of 5 tokens left",
            "the bucket refills 5 per 60s",
            "retry in 12.0s",
            "reliability.rateLimit.maxPerWindow",
            "relay limits reset agent.a",
            "relay send --batch",
        ]);
    assert!(!out.stderr.contains("5/5 in 60s"), "{}", out.stderr);
}

#[test]
fn the_soft_warning_and_limits_count_the_same_tokens_left() {
    let r = world(
        &["agent.b"],
        r#"{"reliability":{"rateLimit":{"maxPerWindow":5}}}"#,
    );
    for i in 0..3 {
        r.cmd(["send", "agent.b", &i.to_string(), "--from", "agent.a"])
            .at(T)
            .success();
    }
    // The 4th send leaves 1 token: the warning says so, and so does limits.
    r.cmd(["send", "agent.b", "3", "--from", "agent.a"])
        .at(T)
        .success()
        .stderr_has(&["sender 'agent.a' has 1 of 5 rate-limit tokens left"]);
    let out = r.cmd(["limits"]).at(T).success();
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with("agent.a "))
        .unwrap_or_else(|| out.fail("no agent.a row"))
        .to_string();
    assert!(row.contains(" 1/5 "), "{row}");
    assert!(
        out.stdout.to_lowercase().contains("tokens left"),
        "{}",
        out.stdout
    );
    let limits = r.cmd(["limits", "--json"]).at(T).success().json();
    assert_eq!(limits["limits"][0]["tokensLeft"], 1, "{limits}");
    let soft = r.events_of(T, "rate_limit_soft");
    assert_eq!(soft[0]["detail"]["tokensLeft"], 1, "{}", soft[0]);
}

#[test]
fn a_breaker_refusal_names_the_reset_command() {
    let r = world(&["agent.b"], "");
    r.cmd(["breakers", "open", "agent.a", "agent.b"])
        .at(T)
        .success();
    r.cmd(["send", "agent.b", "x", "--from", "agent.a"])
        .at(T)
        .code(75)
        .stderr_has(&[
            "circuit open for agent.a -> agent.b",
            "relay breakers reset agent.a agent.b",
        ]);
}

// ---- item 7: human times ----

#[test]
fn events_and_status_show_local_times_and_durations_json_keeps_ms() {
    let r = world(&["agent.b"], "");
    r.cmd(["breakers", "open", "agent.a", "agent.b", "--for", "9m12s"])
        .at(T)
        .success();
    let now = T + 1000;
    let out = r.cmd(["events"]).at(now).env("TZ", "UTC").success();
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("breaker_opened"))
        .unwrap_or_else(|| out.fail("no breaker_opened line"))
        .to_string();
    assert!(line.starts_with("00:00:00  breaker_opened"), "{line}");
    assert!(line.contains("nextProbeAt=00:09:12 (in 9m 11s)"), "{line}");
    assert!(
        !out.stdout.contains("1767"),
        "no epoch ms for people: {}",
        out.stdout
    );

    // Another zone moves the clock face, not the moment.
    let out = r.cmd(["events"]).at(now).env("TZ", "Etc/GMT-2").success();
    assert!(
        out.stdout.contains("nextProbeAt=02:09:12 (in 9m 11s)"),
        "{}",
        out.stdout
    );

    let out = r.cmd(["status"]).at(now).env("TZ", "UTC").success();
    assert!(
        out.stdout.contains("nextProbeAt=00:09:12 (in 9m 11s)"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("1767"), "{}", out.stdout);

    let ev = r.cmd(["events", "--json"]).at(now).success();
    let opened = ev
        .json_lines()
        .into_iter()
        .find(|e| e["kind"] == "breaker_opened")
        .unwrap_or_else(|| ev.fail("no breaker_opened event"));
    assert_eq!(
        opened["detail"]["nextProbeAt"],
        json!(T + 552_000),
        "{opened}"
    );
}

#[test]
fn an_event_of_another_day_shows_its_date() {
    let r = world(&["agent.b"], "");
    r.cmd(["breakers", "open", "agent.a", "agent.b"])
        .at(T)
        .success();
    let out = r
        .cmd(["events"])
        .at(T + 2 * 86_400_000)
        .env("TZ", "UTC")
        .success();
    assert!(
        out.stdout.contains("2026-01-01 00:00:00  breaker_opened"),
        "{}",
        out.stdout
    );
}

// ---- item 8: payload size and durations ----

#[test]
fn an_oversize_payload_gives_its_size_and_the_knob_to_raise() {
    let r = world(&["a.x"], r#"{"maxPayloadBytes": 100}"#);
    let out = r
        .cmd(["send", "a.x"])
        .stdin(vec![b'x'; 150])
        .code(65)
        .stderr_has(&[
            "payload from stdin is 150 bytes",
            "limit of 100 bytes",
            "relay config set maxPayloadBytes 150",
        ]);
    assert!(!out.stderr.contains("over 100"), "{}", out.stderr);
    let file = r.scratch().join("big.txt");
    std::fs::write(&file, vec![b'y'; 120]).unwrap_or_else(|e| panic!("{e}"));
    r.cmd(["send", "a.x", "--file", file.to_str().unwrap_or_default()])
        .code(65)
        .stderr_has(&["is 120 bytes", "relay config set maxPayloadBytes 120"]);
    assert!(r.files("a.x", "new").is_empty());
}

/// The budget TTL of the one message in `a.x/new`.
fn ttl_of(r: &Relay) -> Value {
    let files = r.files("a.x", "new");
    let env = r.read_json(&format!("mailboxes/a.x/new/{}", files[0]));
    env["budget"]["ttl"].clone()
}

#[test]
fn ttl_accepts_a_compound_duration() {
    let r = world(&["a.x"], "");
    r.cmd(["send", "a.x", "hi", "--ttl", "1h30m"])
        .at(T)
        .success();
    assert_eq!(ttl_of(&r), json!(T + 5_400_000));
}

#[test]
fn a_bare_ttl_number_is_seconds_and_help_says_so() {
    let r = world(&["a.x"], "");
    r.cmd(["send", "a.x", "hi", "--ttl", "5"]).at(T).success();
    assert_eq!(ttl_of(&r), json!(T + 5000));
    r.cmd(["send", "--help"])
        .success()
        .stdout_contains("a bare number is seconds");
}

#[test]
fn a_negative_ttl_is_relays_own_error_naming_the_value() {
    let r = world(&["a.x"], "");
    let out = r.cmd(["send", "a.x", "hi", "--ttl", "-5s"]).code(64);
    assert!(
        out.stderr.contains("'-5s'") && out.stderr.contains("negative"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("unexpected argument"),
        "{}",
        out.stderr
    );
    let out = r.cmd(["send", "a.x", "hi", "--ttl", "1h30"]).code(64);
    assert!(
        out.stderr.contains("a bare number is seconds"),
        "{}",
        out.stderr
    );
    assert!(r.files("a.x", "new").is_empty());
}

#[test]
fn other_durations_take_compounds_too() {
    let r = world(&["a.x"], "");
    r.cmd(["recv", "a.x", "--lease", "1m30s", "--wait", "0s"])
        .code(66);
    r.cmd(["recv", "a.x", "--wait", "-1s"])
        .code(64)
        .stderr_has(&["'-1s'"]);
}

// ---- item 9: payloads that look like JSON ----

#[test]
fn a_payload_that_looks_like_json_but_is_not_warns_and_is_sent_as_a_string() {
    let r = world(&["a.x"], "");
    r.cmd(["send", "a.x", "{oops"]).success().stderr_has(&[
        "payload starts with '{' but is not valid JSON",
        "--json-payload",
    ]);
    let v = r.cmd(["send", "a.x", "[1,", "--json"]).success().json();
    let warnings = v["warnings"].as_array().cloned().unwrap_or_default();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains("starts with '['"))),
        "{v}"
    );
    // --text is the explicit string mode: no warning.
    r.cmd(["send", "a.x", "{oops", "--text"])
        .success()
        .stderr_empty();
    // Plain text does not look like JSON: no warning either.
    r.cmd(["send", "a.x", "hello"]).success().stderr_empty();
    assert_eq!(r.files("a.x", "new").len(), 4);
}

#[test]
fn json_payload_refuses_what_does_not_parse_with_65_and_writes_nothing() {
    let r = world(&["a.x"], "");
    r.cmd(["send", "a.x", "{oops", "--json-payload"])
        .code(65)
        .stderr_has(&["payload is not valid JSON", "--json-payload"]);
    r.cmd(["send", "a.x", "hello", "--json-payload"]).code(65);
    assert!(r.files("a.x", "new").is_empty());
    r.cmd(["send", "a.x", r#"{"ok":true}"#, "--json-payload"])
        .success();
    r.cmd(["send", "a.x", "x", "--json-payload", "--text"])
        .code(64);
}

// ---- item 10: config typos ----

#[test]
fn a_config_get_typo_suggests_the_nearest_key_and_exits_64() {
    let r = Relay::new();
    let out = r
        .cmd(["config", "get", "reliability.rateLimit.maxPerWindw"])
        .code(64)
        .stderr_has(&["did you mean 'reliability.rateLimit.maxPerWindow'?"]);
    assert!(
        !out.stderr.contains("known keys"),
        "no list of every key: {}",
        out.stderr
    );
    r.cmd(["config", "get", "maxperwindow"])
        .code(64)
        .stderr_has(&["did you mean 'reliability.rateLimit.maxPerWindow'?"]);
    let out = r.cmd(["config", "get", "nonsense.key", "--json"]).code(64);
    json_error(&out, 64, "usage");
}

#[test]
fn a_config_set_typo_suggests_the_nearest_key_exits_64_and_writes_nothing() {
    let r = world(&["a.x"], "");
    r.cmd([
        "config",
        "set",
        "reliability.circuitBreaker.cooldownMS",
        "10",
    ])
    .code(64)
    .stderr_has(&["did you mean 'reliability.circuitBreaker.cooldownMs'?"]);
    assert!(!r.path("config.json").exists());
}

// ---- item 13: read-only commands on a missing home ----

#[test]
fn read_only_commands_on_a_missing_home_exit_69_and_create_nothing() {
    let r = Relay::new();
    let cases: &[&[&str]] = &[
        &["status"],
        &["endpoints"],
        &["endpoints", "list"],
        &["peek", "a.x"],
        &["trace", "01KDVDNA00D9XZY3919WM3TBT4"],
        &["metrics"],
        &["events"],
        &["limits"],
        &["breakers"],
        &["dlq"],
        &["dlq", "list"],
        &["doctor"],
        &["recv", "a.x"],
        &["gc", "--dry-run"],
    ];
    for args in cases {
        let out = r.cmd(*args).run();
        if out.code != 69 {
            out.fail(&format!("{args:?}: expected 69"));
        }
        let peek = args[0] == "peek";
        if !peek && !out.stderr.contains("no relay home at") {
            out.fail("should say there is no relay home");
        }
        if !peek && !out.stderr.contains("relay endpoints add NAME") {
            out.fail("should say how to start one");
        }
        if r.home().exists() {
            out.fail(&format!("{args:?} created the home"));
        }
    }
    let out = r.cmd(["status", "--json"]).code(69);
    json_error(&out, 69, "no_home");
}

#[test]
fn config_reads_on_a_missing_home_show_the_defaults_and_create_nothing() {
    let r = Relay::new();
    r.cmd(["config", "get", "reliability.rateLimit.maxPerWindow"])
        .success()
        .stdout_is("100\n");
    r.cmd(["config", "show"]).success();
    r.cmd(["config", "path"]).success();
    r.cmd(["config", "validate"]).success();
    assert!(!r.home().exists());
    // Writing creates it.
    r.cmd(["config", "set", "retention.days", "3"]).success();
    assert!(r.path("config.json").exists());
}

// ---- item 15: recv --format and send --retry ----

#[test]
fn recv_format_prints_each_placeholder() {
    let r = world(&["a.x"], "");
    let id = r
        .cmd([
            "send",
            "a.x",
            r#"{"n":1}"#,
            "--from",
            "agent.s",
            "--trace-id",
            "tr-1",
        ])
        .success()
        .id();
    let out = r
        .cmd([
            "recv",
            "a.x",
            "--format",
            "{id}|{payload}|{subject}|{endpoint}|{from}|{traceId}|{deliveryCount}|{priority}|{{x}}",
        ])
        .success();
    assert_eq!(
        out.stdout,
        format!("{id}|{{\"n\":1}}|a.x|a.x|agent.s|tr-1|0|normal|{{x}}\n")
    );
}

#[test]
fn recv_format_ids_feed_ack_without_jq() {
    let r = world(&["a.x"], "");
    r.send("a.x", "one two");
    let out = r
        .cmd(["recv", "a.x", "--format", "{id} {payload}"])
        .success();
    let (id, payload) = out.stdout.trim_end().split_once(' ').unwrap_or_default();
    assert_eq!(payload, "one two");
    r.cmd(["ack", "a.x", id]).success();
    assert!(r.files("a.x", "cur").is_empty());
}

#[test]
fn recv_format_with_an_unknown_placeholder_is_64_and_claims_nothing() {
    let r = world(&["a.x"], "");
    r.send("a.x", "m");
    r.cmd(["recv", "a.x", "--format", "{id} {body}"])
        .code(64)
        .stderr_has(&["'{body}'", "{payload}"]);
    r.cmd(["recv", "a.x", "--format", "{id}", "--json"])
        .code(64);
    assert_eq!(r.files("a.x", "new").len(), 1);
    assert!(r.files("a.x", "cur").is_empty());
}

#[test]
fn send_retry_waits_out_a_rate_limit_on_the_fake_clock() {
    let r = world(
        &["agent.b"],
        r#"{"reliability":{"rateLimit":{"maxPerWindow":2}}}"#,
    );
    for i in 0..2 {
        r.cmd(["send", "agent.b", &i.to_string(), "--from", "agent.a"])
            .at(T)
            .success();
    }
    // A token comes back after 30 s: one refusal, one retry, then sent.
    let out = r
        .cmd([
            "send", "agent.b", "late", "--from", "agent.a", "--retry", "3",
        ])
        .at(T)
        .success();
    assert!(is_ulid(out.stdout.trim()), "{}", out.stdout);
    let retries: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("retry 1 of 3"))
        .collect();
    if retries.len() != 1 || out.stderr.contains("retry 2 of 3") {
        out.fail("expected exactly one retry");
    }
    assert!(retries[0].contains("rate limit exceeded"), "{}", retries[0]);
    assert_eq!(r.files("agent.b", "new").len(), 3);
}

#[test]
fn send_retry_gives_up_after_n_retries_each_wait_capped() {
    let r = world(&["agent.b"], "");
    r.cmd(["breakers", "open", "agent.a", "agent.b", "--for", "1h"])
        .at(T)
        .success();
    let out = r
        .cmd([
            "send",
            "agent.b",
            "x",
            "--from",
            "agent.a",
            "--retry",
            "2",
            "--retry-max-wait",
            "1m",
        ])
        .at(T)
        .code(75);
    let retries = out
        .stderr
        .lines()
        .filter(|l| l.contains(" of 2 in "))
        .count();
    if retries != 2 {
        out.fail("expected two retries (three attempts)");
    }
    // Each wait is capped at 1m although the breaker asks for an hour.
    assert!(out.stderr.contains("retry 1 of 2 in 1m"), "{}", out.stderr);
    assert!(r.files("agent.b", "new").is_empty());

    // With --json the retries are warnings of the report, stderr one error.
    let out = r
        .cmd([
            "send", "agent.b", "x", "--from", "agent.a", "--retry", "1", "--json",
        ])
        .at(T)
        .code(75);
    json_error(&out, 75, "refused");
}

/// `send --batch` (which reports each refused line and goes on) refuses
/// `--retry` with 64 before anything is read or written, naming the flag
/// and what to do instead (clap's own words named no fix).
#[test]
fn batch_retry_is_refused_naming_the_flag_and_the_fix() {
    let r = world(&["agent.b"], "");
    let before = r.listing();
    let line = "{\"subject\":\"agent.b\",\"payload\":1}\n";
    r.cmd(["send", "--batch", "--retry", "2"])
        .stdin(line)
        .code(64)
        .stderr_has(&["--retry", "--batch", "relay send SUBJECT PAYLOAD --retry N"]);
    let out = r
        .cmd(["send", "--batch", "--retry", "2", "--json"])
        .stdin(line)
        .code(64);
    let message = json_error(&out, 64, "usage");
    assert!(message.contains("--retry"), "{message}");
    assert_eq!(r.listing(), before, "nothing sent");
    // Without --retry the batch sends.
    r.cmd(["send", "--batch"]).stdin(line).success();
    assert_eq!(r.files("agent.b", "new").len(), 1);
}

/// `request --retry N` sends the request again after a temporary refusal
/// (it was not sent), as `send --retry` does, and never once it was sent:
/// no reply in time is not a reason to ask twice.
#[test]
fn request_retry_sends_again_after_a_refusal_but_never_after_the_send() {
    let r = world(
        &["agent.b"],
        r#"{"reliability": {"rateLimit": {"maxPerWindow": 1}}}"#,
    );
    r.cmd(["send", "agent.b", "first"]).at(T).success();
    // The bucket is empty until a minute on: the retry waits it out (the
    // pinned clock moves on at once) and the request goes out, once.
    let out = r
        .cmd([
            "request",
            "agent.b",
            "ask",
            "--retry",
            "1",
            "--timeout",
            "100ms",
        ])
        .at(T)
        .code(75);
    out.stderr_has(&["rate limit exceeded", "retry 1 of 1 in 1m", "no reply"]);
    assert_eq!(r.files("agent.b", "new").len(), 2, "the request, sent once");
    // Refused every time: N retries, then the refusal; nothing sent, and
    // the reply endpoint is gone. Under --json each retry is a warning.
    r.cmd(["breakers", "open", "cli", "agent.b", "--for", "1h"])
        .at(T + 120_000)
        .success();
    let out = r
        .cmd([
            "request",
            "agent.b",
            "ask",
            "--retry",
            "2",
            "--timeout",
            "100ms",
            "--json",
        ])
        .at(T + 120_000)
        .code(75);
    let lines: Vec<Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| out.fail(&format!("{l}: {e}"))))
        .collect();
    let retries: Vec<&str> = lines
        .iter()
        .filter_map(|v| v["warning"]["message"].as_str())
        .filter(|m| m.contains(" of 2 in "))
        .collect();
    assert_eq!(retries.len(), 2, "{}", out.stderr);
    assert_eq!(
        lines.last().map(|v| &v["error"]["kind"]),
        Some(&"refused".into())
    );
    assert_eq!(r.files("agent.b", "new").len(), 2, "nothing more sent");
    assert_eq!(
        std::fs::read_dir(r.path("mailboxes"))
            .map(Iterator::count)
            .unwrap_or(0),
        1,
        "no reply endpoint left: {}",
        r.listing()
    );
}

#[test]
fn send_without_retry_does_not_retry() {
    let r = world(&["agent.b"], "");
    r.cmd(["breakers", "open", "agent.a", "agent.b"])
        .at(T)
        .success();
    let out = r
        .cmd(["send", "agent.b", "x", "--from", "agent.a"])
        .at(T)
        .code(75);
    assert!(!out.stderr.contains("retry 1"), "{}", out.stderr);
}

#[test]
fn trace_shows_the_sent_time_as_a_local_time() {
    let r = world(&["a.x"], "");
    let id = r.cmd(["send", "a.x", "m"]).at(T + 61_000).success().id();
    let out = r
        .cmd(["trace", &id])
        .at(T + 120_000)
        .env("TZ", "UTC")
        .success();
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| out.fail("no span row"))
        .to_string();
    assert!(row.contains(" 00:01:01 "), "{row}");
    assert!(!row.contains("2026-01-01T"), "{row}");
}

#[test]
fn request_refuses_a_non_json_payload_under_json_payload() {
    let r = world(&["a.x"], "");
    r.cmd([
        "request",
        "a.x",
        "{oops",
        "--json-payload",
        "--timeout",
        "1s",
    ])
    .code(65)
    .stderr_has(&["payload is not valid JSON"]);
    assert!(r.files("a.x", "new").is_empty());
}
