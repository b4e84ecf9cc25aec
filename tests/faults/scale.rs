//! Fault class 7: scale edges. A fan-out wider than the open-file limit
//! delivers everywhere or refuses before writing anything; `send --batch`
//! holds each line to the payload cap of a single send; a runaway sender
//! whose sends match nothing or are denied is rate-limited like any other,
//! instead of filling `failed/` without end.

use serde_json::Value;

use crate::harness::{BIN, Relay, T};

/// The dead letters (envelopes, not sidecars) in `<subject>/failed/`.
fn dead_letters(r: &Relay, subject: &str) -> usize {
    r.files(subject, "failed")
        .iter()
        .filter(|f| f.ends_with(".json") && !f.ends_with(".reason.json"))
        .count()
}

#[test]
fn a_batch_line_over_the_payload_cap_is_refused_like_a_single_send() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    r.write_file("config.json", r#"{"maxPayloadBytes": 100}"#);
    let big = "x".repeat(101);
    let single = r.cmd(["send", "agent.b", &big]).code(65);
    let single = single.stderr.trim().to_string();
    assert!(
        single.contains("is 101 bytes, more than the limit of 100 bytes"),
        "{single}"
    );

    let object = serde_json::json!({ "text": "y".repeat(100) });
    let lines = [
        serde_json::json!({ "subject": "agent.b", "payload": "fits" }),
        serde_json::json!({ "subject": "agent.b", "payload": big }),
        serde_json::json!({ "subject": "agent.b", "payload": object }),
        serde_json::json!({ "subject": "agent.b", "payload": "x".repeat(100) }),
    ];
    let stdin: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let out = r
        .cmd(["send", "--batch", "--json"])
        .stdin(stdin.clone())
        .code(65);
    let results = out.json_lines();
    assert_eq!(results.len(), 4, "one result per line");
    assert!(results[0]["id"].is_string(), "{}", results[0]);
    assert!(results[3]["id"].is_string(), "{}", results[3]);
    for (n, size) in [(1, 101), (2, 111)] {
        let err = &results[n]["error"];
        assert_eq!(results[n]["line"], n + 1, "{}", results[n]);
        assert_eq!(err["code"], 65, "{err}");
        assert_eq!(err["kind"], "data", "{err}");
        let msg = err["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(&format!(
                "payload from line {} is {size} bytes, more than the limit of 100 bytes",
                n + 1
            )),
            "{msg}"
        );
    }
    // The lines within the cap were delivered, and only they.
    let new = r.files("agent.b", "new");
    assert_eq!(new.len(), 2, "{new:?}");
    // Without --json the refusal is the single send's message, per line.
    let out = r.cmd(["send", "--batch"]).stdin(stdin).code(65);
    let expected = single
        .trim_start_matches("relay: ")
        .replace("the argument", "line 2");
    assert!(out.stderr.contains(&expected), "{}", out.stderr);
}

/// A 64 MiB `--batch` line (the payload cap at 100 bytes) is refused like
/// any line over the cap, without being read into memory: relay runs with
/// its heap capped at 32 MiB (`ulimit -d`), which the line alone would
/// overrun (it did: an allocation failure, SIGABRT). The lines around it
/// are sent, the big one writes nothing.
#[test]
fn a_batch_line_far_over_the_cap_is_refused_without_reading_it_into_memory() {
    const BIG: usize = 64 * 1024 * 1024;
    let r = Relay::new();
    r.add(&["agent.b"]);
    r.write_file("config.json", r#"{"maxPayloadBytes": 100}"#);
    let mut stdin = Vec::with_capacity(BIG + 200);
    stdin.extend_from_slice(b"{\"subject\":\"agent.b\",\"payload\":\"first\"}\n");
    let head = b"{\"subject\":\"agent.b\",\"payload\":\"";
    stdin.extend_from_slice(head);
    stdin.resize(stdin.len() + BIG, b'x');
    stdin.extend_from_slice(b"\"}\n{\"subject\":\"agent.b\",\"payload\":\"third\"}\n");
    let out = r
        .cmd(["send", "--batch", "--json"])
        .stdin(stdin)
        .data_limit_kib(32 * 1024)
        .code(65);
    let results = out.json_lines();
    assert_eq!(results.len(), 3, "one result per line: {}", out.stderr);
    assert!(results[0]["id"].is_string(), "{}", results[0]);
    assert!(results[2]["id"].is_string(), "{}", results[2]);
    let err = &results[1]["error"];
    assert_eq!(
        (&err["code"], &err["kind"]),
        (&65.into(), &"data".into()),
        "{err}"
    );
    let size = head.len() + BIG + 2;
    let msg = err["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!(
            "payload from line 2 is {size} bytes, more than the limit of 100 bytes (maxPayloadBytes); nothing was sent"
        )),
        "{msg}"
    );
    let new = r.files("agent.b", "new");
    assert_eq!(new.len(), 2, "only the small lines were sent: {new:?}");
}

/// Sends `n` times from agent.x at `at`; the exit codes.
fn codes(r: &Relay, subject: &str, n: usize, at: u64) -> Vec<i32> {
    (0..n)
        .map(|i| {
            r.cmd(["send", subject, &format!("m{i}"), "--from", "agent.x"])
                .at(at)
                .run()
                .code
        })
        .collect()
}

#[test]
fn a_runaway_sender_matching_nothing_is_rate_limited() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    r.write_file(
        "config.json",
        r#"{"reliability":{"rateLimit":{"maxPerWindow":5,"windowSecs":60}}}"#,
    );
    assert_eq!(codes(&r, "nobody.home", 5, T), vec![69; 5]);
    assert_eq!(dead_letters(&r, "nobody.home"), 5);
    // Past the limit: exit 75, nothing written, the wait named.
    let out = r
        .cmd(["send", "nobody.home", "more", "--from", "agent.x", "--json"])
        .at(T)
        .code(75);
    let err = out.stderr_json();
    assert_eq!(err["error"]["retryAfterMs"], 12_000, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("rate limit exceeded for sender 'agent.x'")),
        "{err}"
    );
    assert_eq!(codes(&r, "nobody.home", 20, T), vec![75; 20]);
    assert_eq!(dead_letters(&r, "nobody.home"), 5, "failed/ stops growing");
    // A batch of them is held to the same bucket, line by line.
    let stdin: String = (0..10)
        .map(|i| format!("{{\"subject\":\"nobody.home\",\"payload\":{i}}}\n"))
        .collect();
    let out = r
        .cmd(["send", "--batch", "--json", "--from", "agent.x"])
        .stdin(stdin)
        .at(T)
        .code(75);
    for line in out.json_lines() {
        assert_eq!(line["error"]["code"], 75, "{line}");
    }
    assert_eq!(dead_letters(&r, "nobody.home"), 5);
    // The bucket refills as usual.
    assert_eq!(codes(&r, "nobody.home", 1, T + 12_000), vec![69]);
    assert_eq!(dead_letters(&r, "nobody.home"), 6);
    // Other senders are not held back by agent.x.
    r.cmd(["send", "agent.b", "hi", "--from", "agent.y"])
        .at(T)
        .success();
}

#[test]
fn a_runaway_sender_denied_by_access_rules_is_rate_limited() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    r.write_file(
        "config.json",
        r#"{"reliability":{"rateLimit":{"maxPerWindow":3,"windowSecs":60}}}"#,
    );
    r.write_file(
        "access-rules.json",
        r#"[{"from":"agent.x","to":">","action":"deny","priority":1}]"#,
    );
    assert_eq!(codes(&r, "agent.b", 3, T), vec![77; 3]);
    assert_eq!(dead_letters(&r, "agent.b"), 3);
    assert_eq!(codes(&r, "agent.b", 10, T), vec![75; 10]);
    assert_eq!(dead_letters(&r, "agent.b"), 3, "failed/ stops growing");
    let hard: Vec<Value> = r
        .events_of(T, "rate_limit_hard")
        .into_iter()
        .filter(|e| e["sender"] == "agent.x")
        .collect();
    assert_eq!(hard.len(), 10, "each refusal is an event");
    assert!(r.files("agent.b", "new").is_empty());
}

#[test]
fn a_runaway_handler_loop_rejected_by_its_budget_is_rate_limited() {
    // A handler of agent.b re-sending to agent.b: every send is a cycle,
    // dead-lettered at its only endpoint.
    let r = Relay::new();
    r.add(&["agent.b"]);
    r.write_file(
        "config.json",
        r#"{"reliability":{"rateLimit":{"maxPerWindow":4,"windowSecs":60}}}"#,
    );
    let budget = r#"{"hopCount":1,"maxHops":5,"ancestorChain":["agent.b"],"ttl":4102444800000,"callBudgetRemaining":9}"#;
    let send = || {
        r.cmd(["send", "agent.b", "again", "--from", "agent.b"])
            .env("RELAY_BUDGET", budget)
            .at(T)
            .run()
    };
    for _ in 0..4 {
        send().code(65).stderr_has(&["cycle detected"]);
    }
    assert_eq!(dead_letters(&r, "agent.b"), 4);
    for _ in 0..10 {
        send()
            .code(75)
            .stderr_has(&["rate limit exceeded for sender 'agent.b'"]);
    }
    assert_eq!(dead_letters(&r, "agent.b"), 4, "failed/ stops growing");
    assert!(r.files("agent.b", "new").is_empty());
}

/// Runs `relay ARGS` under `sh -c 'ulimit LIMIT; exec relay ARGS'`.
fn under_ulimit(r: &Relay, limit: &str, args: &[&str]) -> std::process::Output {
    let mut c = std::process::Command::new("sh");
    c.arg("-c")
        .arg(format!("ulimit {limit} && exec \"$0\" \"$@\""))
        .arg(BIN)
        .args(args);
    r.clean_env(&mut c)
        .env("RELAY_FAKE_NOW_MS", T.to_string())
        .output()
        .unwrap_or_else(|e| panic!("cannot run relay under ulimit {limit}: {e}"))
}

/// Registers `n` endpoints `fan.e<i>`.
fn fan_world(n: usize) -> Relay {
    let r = Relay::new();
    let names: Vec<String> = (0..n).map(|i| format!("fan.e{i}")).collect();
    for chunk in names.chunks(1000) {
        r.cmd(["endpoints", "add"]).args(chunk).success();
    }
    r
}

/// How many of `n` fan endpoints hold a message in new/, and how many any
/// file in tmp/ or failed/.
fn fan_files(r: &Relay, n: usize) -> (usize, usize) {
    let mut delivered = 0;
    let mut other = 0;
    for i in 0..n {
        let ep = format!("fan.e{i}");
        delivered += usize::from(!r.files(&ep, "new").is_empty());
        other += r.files(&ep, "tmp").len() + r.files(&ep, "failed").len();
    }
    (delivered, other)
}

const FAN: usize = 5000;

#[test]
fn a_fan_out_past_the_soft_fd_limit_delivers_to_every_endpoint() {
    let r = fan_world(FAN);
    // Soft limit 1024, the hard one as it is (well above 5,000 on any
    // usual system): relay may raise its own soft limit.
    let out = under_ulimit(&r, "-S -n 1024", &["send", "fan.*", "hello", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("send --json printed no report: {e}; {stderr}"));
    assert_eq!(
        report["deliveredTo"].as_array().map(Vec::len),
        Some(FAN),
        "{stderr}"
    );
    assert_eq!(fan_files(&r, FAN), (FAN, 0));
}

#[test]
fn a_fan_out_past_the_hard_fd_limit_refuses_before_writing_anything() {
    let r = fan_world(FAN);
    let out = under_ulimit(&r, "-n 1024", &["send", "fan.*", "hello"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(
        stderr.contains("5000 endpoints") && stderr.contains("ulimit -n"),
        "the refusal names the fan-out and the fix: {stderr}"
    );
    assert!(out.stdout.is_empty());
    assert_eq!(fan_files(&r, FAN), (0, 0), "nothing written anywhere");
    // Under a limit that holds them all, the same send delivers everywhere.
    let out = under_ulimit(&r, "-n 8192", &["send", "fan.*", "hello"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fan_files(&r, FAN), (FAN, 0));
}
