//! `relay send`: the envelope on disk, fan-out, dead letters for unmatched
//! subjects, payload sources, the size cap, and the envelope options.

use serde_json::{Value, json};

use crate::harness::{Relay, T, is_ulid};

/// The payload stored for one `send` built by `build` to endpoint `q`.
#[track_caller]
fn stored_payload(r: &Relay, build: impl FnOnce(&Relay) -> String) -> Value {
    let id = build(r);
    r.read_json(&format!("mailboxes/q/new/{id}.json"))["payload"].clone()
}

#[test]
fn send_prints_the_id_and_writes_a_dorkos_envelope() {
    let r = Relay::new();
    r.add(&["agent.backend"]);
    let out = r
        .cmd([
            "send",
            "agent.backend",
            r#"{"text":"CI is green"}"#,
            "--from",
            "hook.ci",
        ])
        .success()
        .stderr_empty();
    let id = out.stdout.strip_suffix('\n').unwrap_or_default();
    assert!(is_ulid(id), "stdout is not one ULID line: {:?}", out.stdout);
    assert_eq!(r.files("agent.backend", "new"), [format!("{id}.json")]);
    assert!(r.files("agent.backend", "tmp").is_empty());
    assert!(r.files("agent.backend", "cur").is_empty());

    let rel = format!("mailboxes/agent.backend/new/{id}.json");
    let env = r.read_json(&rel);
    assert_eq!(env["id"], id);
    assert_eq!(env["subject"], "agent.backend");
    assert_eq!(env["from"], "hook.ci");
    assert!(
        env.get("replyTo").is_none(),
        "replyTo must be absent: {env}"
    );
    assert_eq!(env["payload"], json!({"text": "CI is green"}));
    assert_eq!(
        env["traceId"], id,
        "the trace id defaults to the message id"
    );
    let budget = &env["budget"];
    assert_eq!(budget["hopCount"], 1);
    assert_eq!(budget["maxHops"], 5);
    assert_eq!(budget["ancestorChain"], json!(["agent.backend"]));
    assert_eq!(budget["callBudgetRemaining"], 9);
    assert!(budget["ttl"].is_u64());
    let created = env["createdAt"].as_str().unwrap_or_default();
    assert!(
        created.len() == 24 && created.ends_with('Z'),
        "createdAt is not ISO-8601 with ms: {created}"
    );

    // DorkOS serialization: two-space pretty JSON, DorkOS key order, no
    // trailing newline.
    let text = std::fs::read_to_string(r.path(&rel)).unwrap_or_default();
    assert!(text.starts_with("{\n  \"id\": "), "{text}");
    assert!(!text.ends_with('\n'));
    let order: Vec<usize> = [
        "\"id\"",
        "\"subject\"",
        "\"from\"",
        "\"budget\"",
        "\"createdAt\"",
        "\"payload\"",
    ]
    .iter()
    .map(|k| text.find(k).unwrap_or(usize::MAX))
    .collect();
    assert!(order.is_sorted(), "keys out of DorkOS order: {text}");
}

#[test]
fn send_json_reports_delivery() {
    let r = Relay::new();
    r.add(&["a.x"]);
    let report = r.cmd(["send", "a.x", "hi", "--json"]).success().json();
    let id = report["id"].as_str().unwrap_or_default();
    assert!(is_ulid(id), "{report}");
    assert_eq!(report["traceId"], id);
    assert_eq!(report["subject"], "a.x");
    assert_eq!(report["deliveredTo"], json!(["a.x"]));
    assert_eq!(report["rejected"], json!([]));
    assert_eq!(report["warnings"], json!([]));
    assert_eq!(r.files("a.x", "new"), [format!("{id}.json")]);
}

#[test]
fn options_set_the_envelope_fields() {
    let r = Relay::new();
    r.add(&["q"]);
    let out = r
        .cmd([
            "send",
            "q",
            "x",
            "--reply-to",
            "agent.replies",
            "--ttl",
            "30s",
            "--max-hops",
            "3",
            "--trace-id",
            "trace-123",
        ])
        .env("RELAY_FAKE_NOW_MS", T.to_string())
        .success();
    let env = r.read_json(&format!("mailboxes/q/new/{}.json", out.stdout.trim()));
    assert_eq!(env["replyTo"], "agent.replies");
    assert_eq!(env["createdAt"], "2026-01-01T00:00:00.000Z");
    assert_eq!(env["budget"]["ttl"], T + 30_000, "ttl is absolute");
    assert_eq!(env["budget"]["maxHops"], 3);
    assert_eq!(env["traceId"], "trace-123");
}

#[test]
fn relay_trace_id_env_propagates_into_the_envelope() {
    let r = Relay::new();
    r.add(&["q"]);
    let report = r
        .cmd(["send", "q", "x", "--json"])
        .env("RELAY_TRACE_ID", "trace-from-hook")
        .success()
        .json();
    assert_eq!(report["traceId"], "trace-from-hook");
    let id = report["id"].as_str().unwrap_or_default();
    let env = r.read_json(&format!("mailboxes/q/new/{id}.json"));
    assert_eq!(env["traceId"], "trace-from-hook");

    // The flag wins over the environment.
    let out = r
        .cmd(["send", "q", "y", "--trace-id", "explicit"])
        .env("RELAY_TRACE_ID", "trace-from-hook")
        .success();
    let env = r.read_json(&format!("mailboxes/q/new/{}.json", out.stdout.trim()));
    assert_eq!(env["traceId"], "explicit");
}

#[test]
fn invalid_trace_id_is_rejected_before_writing() {
    let r = Relay::new();
    r.add(&["q"]);
    let before = r.listing();
    r.cmd(["send", "q", "x"])
        .env("RELAY_TRACE_ID", "has space")
        .code(65)
        .stderr_has(&["has space"]);
    assert_eq!(r.listing(), before);
}

#[test]
fn relay_from_env_sets_the_sender() {
    let r = Relay::new();
    r.add(&["q"]);
    let out = r
        .cmd(["send", "q", "x"])
        .env("RELAY_FROM", "hook.pre-commit")
        .success();
    let env = r.read_json(&format!("mailboxes/q/new/{}.json", out.stdout.trim()));
    assert_eq!(env["from"], "hook.pre-commit");
}

/// Sends `pattern` with `--json` and checks every endpoint in `expected` got
/// the same id with its own one-hop budget, and `others` got nothing.
#[track_caller]
fn assert_fan_out(pattern: &str, expected: &[&str], others: &[&str]) {
    let r = Relay::new();
    r.add(&["a.x", "a.y", "a.z.w", "b.x"]);
    let report = r.cmd(["send", pattern, "fan", "--json"]).success().json();
    let id = report["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(report["deliveredTo"], json!(expected));
    for ep in expected {
        assert_eq!(r.files(ep, "new"), [format!("{id}.json")], "{ep}");
        let env = r.read_json(&format!("mailboxes/{ep}/new/{id}.json"));
        assert_eq!(env["id"], id.as_str());
        assert_eq!(env["subject"], pattern, "copies keep the publish subject");
        assert_eq!(env["budget"]["hopCount"], 1, "{ep}");
        assert_eq!(env["budget"]["ancestorChain"], json!([ep]), "{ep}");
        assert_eq!(env["payload"], "fan");
    }
    for ep in others {
        assert!(r.files(ep, "new").is_empty(), "{ep} got a copy");
    }
}

#[test]
fn star_fans_out_to_every_endpoint_matching_one_token() {
    assert_fan_out("a.*", &["a.x", "a.y"], &["a.z.w", "b.x"]);
}

#[test]
fn gt_fans_out_to_every_endpoint_below_the_prefix() {
    assert_fan_out("a.>", &["a.x", "a.y", "a.z.w"], &["b.x"]);
}

#[test]
fn star_in_the_middle_and_lone_gt() {
    assert_fan_out("*.x", &["a.x", "b.x"], &["a.y", "a.z.w"]);
    assert_fan_out(">", &["a.x", "a.y", "a.z.w", "b.x"], &[]);
}

#[test]
fn unmatched_subject_is_dead_lettered_and_exits_69() {
    let r = Relay::new();
    r.add(&["a.x", "b.y"]);
    let out = r
        .cmd(["send", "nobody.here", "lost?"])
        .code(69)
        .stderr_has(&["nobody.here", "known endpoints", "a.x", "b.y"]);
    assert!(out.stdout.is_empty(), "no id on stdout for a failed send");

    let failed = r.files("nobody.here", "failed");
    assert_eq!(failed.len(), 2, "{failed:?}");
    let id = failed[0].strip_suffix(".json").unwrap_or_default();
    assert!(is_ulid(id), "{failed:?}");
    assert_eq!(failed[1], format!("{id}.reason.json"));
    out.stderr_has(&[id]);

    let env = r.read_json(&format!("mailboxes/nobody.here/failed/{id}.json"));
    assert_eq!(env["payload"], "lost?");
    assert_eq!(
        env["budget"]["hopCount"], 0,
        "dead letters keep the un-hopped budget"
    );
    let reason = r.read_json(&format!("mailboxes/nobody.here/failed/{id}.reason.json"));
    assert_eq!(reason["code"], "no_match");
    assert_eq!(reason["endpointHash"], "nobody.here");
    assert_eq!(reason["envelope"]["id"], id);
    assert!(reason["reason"].is_string() && reason["failedAt"].is_string());

    // A dead-letter directory is not an endpoint.
    assert!(!r.mailbox("nobody.here").join("new").exists());
    let list = r.cmd(["endpoints", "--json"]).success().json();
    assert_eq!(
        list["endpoints"].as_array().map(Vec::len),
        Some(2),
        "{list}"
    );
}

#[test]
fn unmatched_pattern_is_dead_lettered_under_the_pattern() {
    let r = Relay::new();
    r.add(&["a.x"]);
    r.cmd(["send", "zz.>", "nobody"])
        .code(69)
        .stderr_has(&["zz.>", "a.x"]);
    assert_eq!(r.files("zz.>", "failed").len(), 2);
    assert!(r.files("a.x", "new").is_empty());
}

#[test]
fn send_with_no_endpoints_says_how_to_create_one() {
    let r = Relay::new();
    r.cmd(["send", "a.x", "hi"])
        .code(69)
        .stderr_has(&["relay endpoints add"]);
}

#[test]
fn json_argument_is_stored_as_json() {
    let r = Relay::new();
    r.add(&["q"]);
    for (arg, want) in [
        (r#"{"a":[1,2],"b":null}"#, json!({"a": [1, 2], "b": null})),
        ("42", json!(42)),
        (r#""quoted""#, json!("quoted")),
        ("[true]", json!([true])),
    ] {
        assert_eq!(stored_payload(&r, |r| r.send("q", arg)), want, "{arg}");
    }
}

#[test]
fn text_argument_is_stored_as_a_string_verbatim() {
    let r = Relay::new();
    r.add(&["q"]);
    assert_eq!(
        stored_payload(&r, |r| r.send("q", "hello world")),
        json!("hello world")
    );
    // Only stdin and files lose a trailing newline.
    assert_eq!(
        stored_payload(&r, |r| r.send("q", "line\n")),
        json!("line\n")
    );
    assert_eq!(
        stored_payload(&r, |r| r.send("q", "{not json")),
        json!("{not json")
    );
}

#[test]
fn text_flag_keeps_json_as_a_string() {
    let r = Relay::new();
    r.add(&["q"]);
    let p = stored_payload(&r, |r| {
        r.cmd(["send", "q", r#"{"a":1}"#, "--text"]).success().id()
    });
    assert_eq!(p, json!(r#"{"a":1}"#));
}

#[test]
fn stdin_payload_loses_one_trailing_newline() {
    let r = Relay::new();
    r.add(&["q"]);
    for (input, want) in [
        ("hello\n", json!("hello")),
        ("two\n\n", json!("two\n")),
        ("crlf\r\n", json!("crlf")),
        ("{\"k\": [1]}\n", json!({"k": [1]})),
    ] {
        let p = stored_payload(&r, |r| r.cmd(["send", "q"]).stdin(input).success().id());
        assert_eq!(p, want, "{input:?}");
    }
}

#[test]
fn file_payload_text_json_and_dash_for_stdin() {
    let r = Relay::new();
    r.add(&["q"]);
    let text = r.scratch().join("report.txt");
    let data = r.scratch().join("report.json");
    std::fs::write(&text, "plain text\n").unwrap_or_default();
    std::fs::write(&data, "{\"ok\": true}\n").unwrap_or_default();
    for (args, stdin, want) in [
        (
            vec!["--file", text.to_str().unwrap_or_default()],
            None,
            json!("plain text"),
        ),
        (
            vec!["-f", data.to_str().unwrap_or_default()],
            None,
            json!({"ok": true}),
        ),
        (
            vec!["--file", "-"],
            Some("from stdin\n"),
            json!("from stdin"),
        ),
    ] {
        let p = stored_payload(&r, |r| {
            let mut cmd = r.cmd(["send", "q"]).args(&args);
            if let Some(s) = stdin {
                cmd = cmd.stdin(s);
            }
            cmd.success().id()
        });
        assert_eq!(p, want, "{args:?}");
    }
}

#[test]
fn payload_argument_and_file_conflict() {
    let r = Relay::new();
    r.add(&["q"]);
    r.cmd(["send", "q", "x", "--file", "/dev/null"]).code(64);
    assert!(r.files("q", "new").is_empty());
}

#[test]
fn missing_payload_file_is_reported_and_nothing_is_sent() {
    let r = Relay::new();
    r.add(&["q"]);
    let missing = r.scratch().join("nope.json");
    let before = r.listing();
    let out = r
        .cmd(["send", "q", "--file", missing.to_str().unwrap_or_default()])
        .run();
    if out.code == 0 {
        out.fail("sending a missing file succeeded");
    }
    let out = out.stderr_has(&["nope.json"]);
    assert_eq!(r.listing(), before, "{}", out.stderr);
}

#[test]
fn non_utf8_payload_is_rejected_before_writing() {
    let r = Relay::new();
    r.add(&["q"]);
    let before = r.listing();
    r.cmd(["send", "q"])
        .stdin(vec![b'a', 0xff, 0xfe])
        .code(65)
        .stderr_has(&["UTF-8"]);
    assert_eq!(r.listing(), before);
}

/// A config capping payloads at `cap` bytes.
fn with_cap(cap: u64) -> Relay {
    let r = Relay::new();
    r.add(&["a.x", "a.y"]);
    r.write_file("config.json", format!("{{\"maxPayloadBytes\": {cap}}}"));
    r
}

#[test]
fn payload_at_the_configured_cap_is_accepted() {
    let r = with_cap(100);
    r.send("a.x", &"x".repeat(100));
    r.cmd(["send", "a.x"]).stdin("y".repeat(100)).success();
    assert_eq!(r.files("a.x", "new").len(), 2);
}

#[test]
fn oversize_argument_is_rejected_and_nothing_is_written() {
    let r = with_cap(100);
    let before = r.listing();
    r.cmd(["send", "a.*", &"x".repeat(101)])
        .code(65)
        .stderr_has(&["100 bytes", "maxPayloadBytes"]);
    assert_eq!(r.listing(), before);
}

#[test]
fn oversize_payload_to_no_endpoint_is_not_even_dead_lettered() {
    let r = with_cap(10);
    let before = r.listing();
    r.cmd(["send", "nobody", "0123456789X"]).code(65);
    assert_eq!(r.listing(), before);
}

#[test]
fn oversize_file_is_rejected_at_the_default_1_mib_cap() {
    let r = Relay::new();
    r.add(&["a.x", "a.y"]);
    let big = r.scratch().join("big.txt");
    let exact = r.scratch().join("exact.txt");
    std::fs::write(&big, vec![b'x'; 1024 * 1024 + 1]).unwrap_or_default();
    std::fs::write(&exact, vec![b'x'; 1024 * 1024]).unwrap_or_default();
    let before = r.listing();
    r.cmd(["send", "a.*", "--file", big.to_str().unwrap_or_default()])
        .code(65)
        .stderr_has(&["1048576", "big.txt"]);
    assert_eq!(r.listing(), before);

    r.cmd(["send", "a.x", "--file", exact.to_str().unwrap_or_default()])
        .success();
    assert_eq!(r.files("a.x", "new").len(), 1);
}

#[test]
fn oversize_stdin_is_rejected_at_the_default_1_mib_cap() {
    let r = Relay::new();
    r.add(&["a.x", "a.y"]);
    let before = r.listing();
    r.cmd(["send", "a.*"])
        .stdin(vec![b'{'; 3 * 1024 * 1024])
        .code(65)
        .stderr_has(&["stdin", "1048576"]);
    assert_eq!(r.listing(), before);
}
