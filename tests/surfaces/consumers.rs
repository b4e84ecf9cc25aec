//! `relay recv --follow` and `--exec`: live consumers. Handlers are small
//! `sh` scripts that leave files behind, so the tests prove what ran (and
//! what overlapped) from the files, not from timing. Every handler loop has
//! its own bound, so nothing outlives a failed test for long.

use std::fs;

use serde_json::{Value, json};

use super::{Proc, T, breaker, exists, scratch_dir, secs, send_from, wait_until};
use crate::harness::{BIN, Output, Relay, dorkos_envelope};

/// A world with endpoints `eps` and its index already created, so a test's
/// first concurrent relays do not race to create it (see
/// `two_relays_creating_the_index_at_once_both_succeed`).
fn world(eps: &[&str]) -> Relay {
    let r = Relay::new();
    r.add(eps);
    r.cmd(["status"]).success();
    r
}

/// `<id>.json`.
fn file(id: &str) -> String {
    format!("{id}.json")
}

#[test]
fn follow_prints_a_message_sent_after_it_started_and_stops_on_sigterm() {
    let r = world(&["agent.b"]);
    let mut f = Proc::start(
        &r,
        &["recv", "agent.b", "--follow", "--json", "--lease", "30m"],
        &[],
    );
    // The first message proves the follower is up and in its loop.
    let first = r.send("agent.b", "first");
    let v = f.json_line(secs(10), "id", &first);
    assert_eq!(v["payload"], "first", "{v}");

    // Sent after the follower started: it must arrive without a restart.
    let second = r.send("agent.b", "second");
    let v = f.json_line(secs(5), "id", &second);
    assert_eq!(v["payload"], "second", "{v}");
    assert_eq!(v["subject"], "agent.b", "{v}");

    // With --lease (and without --ack) both stay claimed in cur/.
    let mut claimed = vec![file(&first), file(&second)];
    claimed.sort();
    assert_eq!(r.files("agent.b", "cur"), claimed, "{}", f.dump());
    assert!(r.files("agent.b", "new").is_empty(), "{}", f.dump());

    f.signal("TERM");
    let code = f.finish(secs(10));
    if code != 0 {
        f.fail(&format!(
            "SIGTERM should stop the follower with 0, got {code}"
        ));
    }
    assert_eq!(
        r.files("agent.b", "cur"),
        claimed,
        "stopping must not drop claims"
    );
}

#[test]
fn follow_without_exec_or_lease_prints_and_acks_each_message() {
    let r = world(&["agent.b"]);
    let mut f = Proc::start(
        &r,
        &["recv", "agent.b", "--follow", "--format", "{id} {payload}"],
        &[],
    );
    let id = r.send("agent.b", "one");
    let want = format!("{id} one");
    f.stdout_line(secs(10), &want, |l| l == want);
    wait_until(secs(5), "cur/ and new/ to empty", || {
        r.files("agent.b", "cur").is_empty() && r.files("agent.b", "new").is_empty()
    });
    assert!(r.files("agent.b", "failed").is_empty());
    f.signal("TERM");
    let code = f.finish(secs(10));
    if code != 0 {
        f.fail(&format!(
            "SIGTERM should stop the follower with 0, got {code}"
        ));
    }
}

#[test]
fn follow_with_ack_removes_each_message_after_printing_it() {
    let r = world(&["agent.b"]);
    let mut f = Proc::start(&r, &["recv", "agent.b", "--follow", "--ack"], &[]);
    r.send("agent.b", "one");
    f.stdout_line(secs(10), "\"one\"", |l| l == "one");
    r.send("agent.b", "two");
    f.stdout_line(secs(5), "\"two\"", |l| l == "two");
    wait_until(secs(5), "cur/ and new/ to empty", || {
        r.files("agent.b", "cur").is_empty() && r.files("agent.b", "new").is_empty()
    });
    assert!(r.files("agent.b", "failed").is_empty());
    f.signal("INT");
    let code = f.finish(secs(10));
    if code != 0 {
        f.fail(&format!(
            "SIGINT should stop the follower with 0, got {code}"
        ));
    }
}

#[test]
fn exec_acks_on_exit_0_and_dead_letters_other_statuses_with_the_reason() {
    let r = world(&["agent.b"]);
    let ok = send_from(&r, "agent.a", "agent.b", "fine", Some(T));
    let bad = send_from(&r, "agent.a", "agent.b", "boom", Some(T));
    let handler = "if grep -q boom; then exit 3; fi";
    let out = r
        .cmd(["recv", "agent.b", "--exec", handler, "-n", "5", "--json"])
        .at(T)
        .success();
    let lines = out.json_lines();
    if lines.len() != 2 {
        out.fail("expected one NDJSON line per message");
    }
    let (acked, nacked) = (&lines[0], &lines[1]);
    assert_eq!(acked["id"], ok.as_str(), "{acked}");
    assert_eq!(acked["endpoint"], "agent.b", "{acked}");
    assert_eq!(acked["outcome"], "acked", "{acked}");
    assert_eq!(acked["exitCode"], 0, "{acked}");
    assert_eq!(acked["reason"], Value::Null, "{acked}");
    assert!(acked["durationMs"].is_u64(), "{acked}");
    assert_eq!(nacked["id"], bad.as_str(), "{nacked}");
    assert_eq!(nacked["outcome"], "nacked", "{nacked}");
    assert_eq!(nacked["exitCode"], 3, "{nacked}");
    assert_eq!(nacked["reason"], "handler exited with status 3", "{nacked}");

    // Ack removed the message; the nack is a dead letter with its reason.
    assert!(r.files("agent.b", "new").is_empty());
    assert!(r.files("agent.b", "cur").is_empty());
    assert_eq!(
        r.files("agent.b", "failed"),
        vec![file(&bad), format!("{bad}.reason.json")]
    );
    let sidecar = r.read_json(&format!("mailboxes/agent.b/failed/{bad}.reason.json"));
    assert_eq!(
        sidecar["reason"], "handler exited with status 3",
        "{sidecar}"
    );
    assert_eq!(sidecar["envelope"]["id"], bad.as_str(), "{sidecar}");

    // Without --json: nothing on stdout, one line per message on stderr.
    let third = send_from(&r, "agent.a", "agent.b", "boom again", Some(T));
    let out = r
        .cmd(["recv", "agent.b", "--exec", handler])
        .at(T)
        .success()
        .stdout_is("")
        .stderr_has(&[&third, "nacked", "handler exited with status 3"]);
    drop(out);

    // Nothing left: 66, and the handler never runs.
    let marker = r.scratch().join("ran");
    let handler = format!("touch '{}'", marker.display());
    r.cmd(["recv", "agent.b", "--exec", &handler])
        .at(T)
        .code(66);
    assert!(!marker.exists(), "a handler ran for an empty mailbox");
}

#[test]
fn failing_handlers_feed_the_senders_breaker_until_it_opens() {
    let r = world(&["agent.b"]);
    for i in 0..5 {
        send_from(&r, "agent.a", "agent.b", &format!("doomed {i}"), Some(T));
    }
    let out = r
        .cmd(["recv", "agent.b", "--exec", "exit 1", "-n", "4", "--json"])
        .at(T)
        .success();
    assert_eq!(out.json_lines().len(), 4);
    let b = breaker(&r, "agent.a", "agent.b", Some(T));
    assert_eq!(b["state"], "closed", "4 failures of 5: {b}");
    assert_eq!(b["consecutiveFailures"], 4, "{b}");

    let out = r
        .cmd(["recv", "agent.b", "--exec", "exit 1", "--json"])
        .at(T)
        .success();
    assert_eq!(out.json_lines()[0]["outcome"], "nacked");
    let b = breaker(&r, "agent.a", "agent.b", Some(T));
    assert_eq!(b["state"], "open", "the 5th failing handler opens it: {b}");
    assert_eq!(b["consecutiveFailures"], 5, "{b}");
    assert_eq!(b["trips"], 1, "{b}");

    // The open pair refuses; other senders are unaffected.
    r.cmd(["send", "agent.b", "more", "--from", "agent.a"])
        .at(T)
        .code(75)
        .stderr_has(&["agent.a", "agent.b"]);
    send_from(&r, "agent.c", "agent.b", "unrelated", Some(T));
}

#[test]
fn a_handler_past_its_timeout_is_killed_and_nacked() {
    let r = world(&["agent.b"]);
    let id = send_from(&r, "agent.a", "agent.b", "slow", Some(T));
    let h = scratch_dir(&r, "h");
    let pidfile = h.join("pid");
    let handler = format!("echo $$ > '{}'; exec sleep 30", pidfile.display());
    let out = r
        .cmd([
            "recv",
            "agent.b",
            "--exec",
            &handler,
            "--timeout",
            "300ms",
            "--json",
        ])
        .at(T)
        .success();
    assert!(
        out.elapsed < secs(15),
        "relay waited for the handler instead of killing it ({:?})",
        out.elapsed
    );
    let lines = out.json_lines();
    let v = &lines[0];
    assert_eq!(v["id"], id.as_str(), "{v}");
    assert_eq!(v["outcome"], "nacked", "{v}");
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("handler timed out after "), "{v}");
    assert!(
        v["durationMs"].as_u64().is_some_and(|ms| ms >= 300),
        "killed before its timeout: {v}"
    );
    assert_eq!(
        r.files("agent.b", "failed"),
        vec![file(&id), format!("{id}.reason.json")]
    );
    assert!(r.files("agent.b", "cur").is_empty());
    let sidecar = r.read_json(&format!("mailboxes/agent.b/failed/{id}.reason.json"));
    assert_eq!(sidecar["reason"], reason, "{sidecar}");

    // The handler process is gone, not left running.
    let pid = fs::read_to_string(&pidfile).expect("the handler wrote its pid");
    let alive = std::process::Command::new("kill")
        .args(["-0", pid.trim()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        !alive,
        "the timed-out handler (pid {}) still runs",
        pid.trim()
    );
}

/// A handler that marks itself running in `$D/run` and records in
/// `$D/seen/<id>` how many marks it saw. With `wait_for_peers` it waits (at
/// most 5 s) until 3 handlers have started, so it sees 3 only if they
/// overlap; without, it stays 0.1 s and removes its mark, so it sees 1
/// only if none overlapped it.
fn overlap_handler(wait_for_peers: bool) -> String {
    // Waiting, a handler leaves its mark (so the others can see it);
    // otherwise it removes it when done.
    let (wait, done) = if wait_for_peers {
        (
            r#"i=0; while [ "$(ls "$D/run" | wc -l)" -lt 3 ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done;"#,
            "",
        )
    } else {
        ("sleep 0.1;", r#"; rm "$D/run/$RELAY_MESSAGE_ID""#)
    };
    format!(
        r#"touch "$D/run/$RELAY_MESSAGE_ID"; {wait} n=$(ls "$D/run" | wc -l); echo $n > "$D/seen/$RELAY_MESSAGE_ID"{done}"#
    )
}

/// `$D/seen/*` contents, as numbers.
fn seen_counts(d: &std::path::Path) -> Vec<u64> {
    let mut counts: Vec<u64> = fs::read_dir(d.join("seen"))
        .expect("seen/ exists")
        .map(|e| {
            let p = e.expect("readable").path();
            fs::read_to_string(&p)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or_else(|| panic!("{} holds no number", p.display()))
        })
        .collect();
    counts.sort_unstable();
    counts
}

/// Three messages handled by `recv --exec` with the overlap handler
/// (`wait_for_peers`) and `extra` options; the output and, per handler, how
/// many handlers it saw running at once.
fn overlap_run<'a>(r: &'a Relay, wait_for_peers: bool, extra: &[&str]) -> (Output<'a>, Vec<u64>) {
    for i in 0..3 {
        send_from(r, "agent.a", "agent.b", &format!("m{i}"), Some(T));
    }
    let d = scratch_dir(r, "h");
    fs::create_dir_all(d.join("run")).expect("mkdir run");
    fs::create_dir_all(d.join("seen")).expect("mkdir seen");
    let handler = overlap_handler(wait_for_peers);
    let out = r
        .cmd(["recv", "agent.b", "--exec", &handler, "-n", "3", "--json"])
        .args(extra)
        .env("D", &d)
        .at(T)
        .success();
    (out, seen_counts(&d))
}

#[test]
fn concurrency_3_runs_three_handlers_at_once() {
    let r = world(&["agent.b"]);
    let (out, seen) = overlap_run(&r, true, &["--concurrency", "3"]);
    let lines = out.json_lines();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(
        lines.iter().all(|l| l["outcome"] == "acked"),
        "{}",
        out.stdout
    );
    // Every handler saw all three running at once.
    assert_eq!(seen, vec![3, 3, 3]);
    assert!(r.files("agent.b", "cur").is_empty());
}

#[test]
fn handlers_run_one_at_a_time_by_default() {
    let r = world(&["agent.b"]);
    let (out, seen) = overlap_run(&r, false, &[]);
    assert_eq!(out.json_lines().len(), 3, "{}", out.stdout);
    assert_eq!(seen, vec![1, 1, 1], "handlers overlapped");
}

#[test]
fn sigint_lets_the_running_handler_finish_acks_it_and_exits_0() {
    let r = world(&["agent.b"]);
    let d = scratch_dir(&r, "h");
    let handler = r#"touch "$D/started.$RELAY_MESSAGE_ID"; i=0; while [ ! -e "$D/go" ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done; [ -e "$D/go" ] && touch "$D/finished.$RELAY_MESSAGE_ID""#;
    let d_str = d.display().to_string();
    let mut f = Proc::start(
        &r,
        &[
            "recv",
            "agent.b",
            "--follow",
            "--exec",
            handler,
            "--concurrency",
            "2",
            "--json",
        ],
        &[("D", &d_str)],
    );
    let first = send_from(&r, "agent.a", "agent.b", "work", None);
    let started = format!("started.{first}");
    wait_until(secs(10), "the handler to start", || exists(&d, &started));

    f.signal("INT");
    // A message arriving while stopping is left for the next consumer,
    // although a handler slot is free.
    let second = send_from(&r, "agent.a", "agent.b", "later", None);
    assert!(
        f.running(),
        "relay quit while its handler was running\n{}",
        f.dump()
    );
    fs::write(d.join("go"), "").expect("write go");

    let code = f.finish(secs(15));
    if code != 0 {
        f.fail(&format!("expected exit 0 after SIGINT, got {code}"));
    }
    assert!(
        exists(&d, &format!("finished.{first}")),
        "the handler was cut short"
    );
    let reports: Vec<Value> = f
        .out
        .seen
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| f.fail(&format!("{l:?}: {e}"))))
        .collect();
    assert_eq!(reports.len(), 1, "{}", f.dump());
    assert_eq!(reports[0]["id"], first.as_str(), "{}", f.dump());
    assert_eq!(reports[0]["outcome"], "acked", "{}", f.dump());
    assert!(r.files("agent.b", "cur").is_empty(), "left half-claimed");
    assert!(r.files("agent.b", "failed").is_empty());
    assert_eq!(r.files("agent.b", "new"), vec![file(&second)]);
    assert!(!exists(&d, &format!("started.{second}")));
}

#[test]
fn a_second_sigint_kills_the_handler_and_gives_its_message_back() {
    let r = world(&["agent.b"]);
    let d = scratch_dir(&r, "h");
    // Runs until told (or 10 s), then leaves `finished.<id>`.
    let handler = r#"echo $$ > "$D/pid"; touch "$D/started.$RELAY_MESSAGE_ID"; i=0; while [ ! -e "$D/go" ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done; touch "$D/finished.$RELAY_MESSAGE_ID""#;
    let d_str = d.display().to_string();
    let mut f = Proc::start(
        &r,
        &[
            "recv", "agent.b", "--follow", "--exec", handler, "--json", "--lease", "5m",
        ],
        &[("D", &d_str)],
    );
    let id = send_from(&r, "agent.a", "agent.b", "work", None);
    wait_until(secs(10), "the handler to start", || {
        exists(&d, &format!("started.{id}"))
    });

    f.signal("INT");
    f.stderr_line(secs(10), "signal again to stop now");
    f.signal("INT");
    let code = f.finish(secs(10));
    if code != 130 {
        f.fail(&format!(
            "expected exit 130 after a second SIGINT, got {code}"
        ));
    }
    assert!(
        f.err
            .seen
            .iter()
            .any(|l| l.contains("gave their messages back")),
        "{}",
        f.dump()
    );
    let released: Vec<Value> = f
        .out
        .seen
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(released.len(), 1, "{}", f.dump());
    assert_eq!(
        (released[0]["id"].as_str(), released[0]["outcome"].as_str()),
        (Some(id.as_str()), Some("released"))
    );
    // Back in new/, pending, for the next consumer; the handler is dead.
    assert!(r.files("agent.b", "cur").is_empty(), "left claimed");
    assert_eq!(r.files("agent.b", "new"), vec![file(&id)]);
    let pid = fs::read_to_string(d.join("pid")).expect("pid");
    assert!(
        !std::path::Path::new(&format!("/proc/{}", pid.trim())).exists(),
        "the handler (pid {pid}) is still running"
    );
    let next = r.cmd(["recv", "agent.b", "--json"]).success().json();
    assert_eq!(next["id"], id.as_str());
    let events = r
        .cmd(["events", "--json", "--kind", "requeued"])
        .success()
        .json_lines();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["messageId"], id.as_str());
}

#[test]
fn handler_env_names_the_message_and_its_own_send_joins_the_trace() {
    let r = world(&["agent.b", "agent.c"]);
    let id = r
        .cmd([
            "send",
            "agent.b",
            r#"{"x":1}"#,
            "--from",
            "agent.a",
            "--reply-to",
            "agent.a.inbox",
        ])
        .success()
        .id();
    let d = scratch_dir(&r, "h");
    let handler =
        r#"env > "$D/env"; cat > "$D/stdin"; "$TEST_RELAY" send agent.c reply > "$D/child""#;
    let out = r
        .cmd(["recv", "agent.b", "--exec", handler, "--json"])
        .env("D", &d)
        .env("TEST_RELAY", BIN)
        .success();
    assert_eq!(out.json_lines()[0]["outcome"], "acked", "{}", out.stdout);

    let env_text = fs::read_to_string(d.join("env")).expect("the handler wrote env");
    let var = |k: &str| -> String {
        env_text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} not in the handler's env:\n{env_text}"))
            .to_string()
    };
    assert_eq!(var("RELAY_MESSAGE_ID"), id);
    assert_eq!(
        var("RELAY_TRACE_ID"),
        id,
        "a fresh send's trace id is its id"
    );
    assert_eq!(var("RELAY_ENDPOINT"), "agent.b");
    assert_eq!(var("RELAY_SUBJECT"), "agent.b");
    assert_eq!(var("RELAY_SENDER"), "agent.a");
    assert_eq!(
        var("RELAY_FROM"),
        "agent.b",
        "the handler speaks for its endpoint"
    );
    assert_eq!(var("RELAY_REPLY_TO"), "agent.a.inbox");
    assert_eq!(var("RELAY_PRIORITY"), "normal");
    assert_eq!(var("RELAY_HOME"), r.home().display().to_string());
    let budget: Value = serde_json::from_str(&var("RELAY_BUDGET")).expect("RELAY_BUDGET is JSON");
    assert_eq!(budget["hopCount"], 1, "{budget}");
    let calls = budget["callBudgetRemaining"]
        .as_u64()
        .expect("callBudgetRemaining");

    let stdin: Value =
        serde_json::from_str(fs::read_to_string(d.join("stdin")).expect("stdin").trim())
            .expect("the envelope on stdin is one JSON line");
    assert_eq!(stdin["id"], id.as_str(), "{stdin}");
    assert_eq!(stdin["payload"], json!({"x": 1}), "{stdin}");

    // The handler's send: from the endpoint, same trace, budget spent.
    let child = fs::read_to_string(d.join("child"))
        .expect("child id")
        .trim()
        .to_string();
    assert_eq!(r.files("agent.c", "new"), vec![file(&child)]);
    let env = r.read_json(&format!("mailboxes/agent.c/new/{child}.json"));
    assert_eq!(env["from"], "agent.b", "{env}");
    assert_eq!(env["traceId"], id.as_str(), "{env}");
    assert_eq!(env["budget"]["hopCount"], 2, "{env}");
    assert_eq!(env["budget"]["callBudgetRemaining"], calls - 1, "{env}");

    let trace = r.cmd(["trace", &id, "--json"]).success().json();
    assert_eq!(trace["traceId"], id.as_str(), "{trace}");
    let spans = trace["spans"].as_array().expect("spans");
    let ids: Vec<&str> = spans
        .iter()
        .filter_map(|s| s["messageId"].as_str())
        .collect();
    assert!(
        ids.contains(&id.as_str()) && ids.contains(&child.as_str()),
        "{trace}"
    );
    let child_span = spans
        .iter()
        .find(|s| s["messageId"] == child.as_str())
        .expect("child span");
    assert_eq!(child_span["from"], "agent.b", "{trace}");
    assert_eq!(child_span["endpoint"], "agent.c", "{trace}");
}

/// Replaces config.json atomically (write aside, rename over), as careful
/// editors save: a follower never sees a half-written file. (An in-place
/// rewrite passes through an empty file, which is a valid config: defaults.)
fn replace_config(r: &Relay, text: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let staged = r.scratch().join("config.json.new");
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&staged)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("stage config.json");
    fs::rename(&staged, r.path("config.json")).expect("rename config.json");
}

#[test]
fn follow_reloads_config_and_keeps_the_last_good_one_after_a_bad_edit() {
    let r = world(&["agent.b"]);
    let cfg = |threshold: &str| {
        format!(
            r#"{{"reliability":{{"circuitBreaker":{{"failureThreshold":{threshold},"cooldownMs":600000}}}}}}"#
        )
    };
    r.write_file("config.json", cfg("5"));
    let mut f = Proc::start(
        &r,
        &["recv", "agent.b", "--follow", "--exec", "exit 1", "--json"],
        &[],
    );

    let first = send_from(&r, "agent.a", "agent.b", "one", None);
    assert_eq!(f.json_line(secs(10), "id", &first)["outcome"], "nacked");
    let b = breaker(&r, "agent.a", "agent.b", None);
    assert_eq!(b["state"], "closed", "1 failure of 5: {b}");

    // A good edit takes effect in the running follower.
    replace_config(&r, &format!("{}\n", cfg("1")));
    let config_path = r.path("config.json").display().to_string();
    // Under --json the notice is a JSON line, as warnings and errors are.
    let notice = f.stderr_line(secs(10), "reloaded");
    let notice: serde_json::Value = serde_json::from_str(&notice).expect("a JSON notice line");
    assert_eq!(
        notice["notice"]["message"],
        format!("reloaded {config_path}"),
        "{notice}"
    );
    let second = send_from(&r, "agent.a", "agent.b", "two", None);
    assert_eq!(f.json_line(secs(10), "id", &second)["outcome"], "nacked");
    let b = breaker(&r, "agent.a", "agent.b", None);
    assert_eq!(
        b["state"],
        "open",
        "failureThreshold 1 was not applied: {b}\n{}",
        f.dump()
    );

    // A bad edit is refused with a warning; the last good config stays.
    replace_config(&r, &cfg(r#""lots""#));
    let warning = f.stderr_line(secs(10), "keeping the last good config");
    assert!(
        warning.contains("failureThreshold"),
        "the warning names the key: {warning}"
    );
    // A message another program drops in (`send` would refuse the bad config).
    let foreign = "01JZ0000000000000000000000";
    let envelope = dorkos_envelope(foreign, "agent.b", &json!("legacy"));
    let staged = r.scratch().join(format!("{foreign}.json"));
    fs::write(&staged, envelope.to_string()).expect("stage");
    fs::rename(
        &staged,
        r.mailbox("agent.b").join("new").join(file(foreign)),
    )
    .expect("deliver");
    assert_eq!(f.json_line(secs(10), "id", foreign)["outcome"], "nacked");
    // Valid again (same settings) so the CLI can read the breakers.
    replace_config(&r, &format!("{}\n\n", cfg("1")));
    let b = breaker(&r, "agent:legacy", "agent.b", None);
    assert_eq!(
        b["state"],
        "open",
        "one failure opened nothing: the follower dropped the last good config\n{b}\n{}",
        f.dump()
    );
    f.signal("TERM");
    assert_eq!(f.finish(secs(10)), 0, "{}", f.dump());
}

#[test]
fn two_relays_creating_the_index_at_once_both_succeed() {
    // Seen as a follower and a send started together on a fresh home
    // (about 3% of attempts): `relay: index .../relay.db: database is
    // locked; if the file is damaged, run: relay doctor --repair`.
    for _ in 0..200 {
        let r = Relay::new();
        r.add(&["agent.b"]);
        let reader = r.cmd(["status"]).spawn();
        let send = r.cmd(["send", "agent.b", "m"]).run();
        let status = reader.wait();
        status.success();
        send.success();
    }
}
