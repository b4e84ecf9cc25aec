//! `relay recv`: the round trip, what is printed, claim order, `--count`,
//! empty (66) and unknown (69) endpoints, and `--wait`.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::Relay;

#[test]
fn round_trip_send_recv_ack() {
    let r = Relay::new();
    r.add(&["agent.backend"]);
    let id = r.send("agent.backend", r#"{"text":"CI is green"}"#);
    let file = format!("{id}.json");
    assert_eq!(r.files("agent.backend", "new"), std::slice::from_ref(&file));

    let out = r
        .cmd(["recv", "agent.backend", "--json"])
        .success()
        .stderr_empty();
    let env = out.json();
    assert_eq!(env["id"], id.as_str());
    assert_eq!(env["payload"], json!({"text": "CI is green"}));
    assert_eq!(env["subject"], "agent.backend");
    assert_eq!(out.stdout.lines().count(), 1, "one JSON line");
    assert!(r.files("agent.backend", "new").is_empty());
    assert_eq!(r.files("agent.backend", "cur"), [file]);

    r.cmd(["recv", "agent.backend"]).code(66);
    r.cmd(["ack", "agent.backend", &id])
        .success()
        .stderr_empty();
    assert!(r.files("agent.backend", "cur").is_empty());
    assert!(r.files("agent.backend", "new").is_empty());
    assert!(r.files("agent.backend", "failed").is_empty());
}

#[test]
fn recv_prints_strings_raw_and_other_json_compact() {
    let r = Relay::new();
    r.add(&["q"]);
    r.send("q", "hello world");
    r.send("q", r#"{ "a": 1, "b": [1, 2] }"#);
    r.send("q", "multi\nline");
    r.cmd(["recv", "q"]).success().stdout_is("hello world\n");
    r.cmd(["recv", "q"])
        .success()
        .stdout_is("{\"a\":1,\"b\":[1,2]}\n");
    r.cmd(["recv", "q"]).success().stdout_is("multi\nline\n");
}

#[test]
fn recv_claims_the_oldest_first() {
    let r = Relay::new();
    r.add(&["q"]);
    let ids: Vec<String> = (1..=3).map(|i| r.send("q", &format!("m{i}"))).collect();
    for (i, id) in ids.iter().enumerate() {
        let env = r.cmd(["recv", "q", "--json"]).success().json();
        assert_eq!(env["id"], id.as_str());
        assert_eq!(env["payload"], format!("m{}", i + 1));
    }
}

#[test]
fn recv_count_prints_ndjson_and_claims_up_to_n() {
    let r = Relay::new();
    r.add(&["q"]);
    let ids: Vec<String> = (1..=3).map(|i| r.send("q", &format!("m{i}"))).collect();
    let out = r.cmd(["recv", "q", "-n", "2", "--json"]).success();
    let got: Vec<String> = out
        .json_lines()
        .iter()
        .map(|v| v["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(got, ids[..2]);
    assert_eq!(r.files("q", "new"), [format!("{}.json", ids[2])]);

    // Fewer than asked for is still success.
    let out = r.cmd(["recv", "q", "--count", "5"]).success();
    assert_eq!(out.stdout, "m3\n");
    assert_eq!(r.files("q", "cur").len(), 3);
}

#[test]
fn empty_mailbox_exits_66_at_once() {
    let r = Relay::new();
    r.add(&["q"]);
    let out = r.cmd(["recv", "q"]).code(66).stderr_has(&["'q'"]);
    if !out.stdout.is_empty() || out.elapsed > Duration::from_secs(5) {
        out.fail("recv on an empty mailbox must fail at once, printing nothing");
    }
}

#[test]
fn recv_unknown_endpoint_exits_69_listing_known_ones() {
    let r = Relay::new();
    r.add(&["a.x", "b.y"]);
    r.cmd(["recv", "nope"])
        .code(69)
        .stderr_has(&["'nope'", "a.x", "b.y"]);
    assert!(!r.mailbox("nope").exists());
}

#[test]
fn wait_exits_66_after_the_deadline() {
    let r = Relay::new();
    r.add(&["q"]);
    let out = r
        .cmd(["recv", "q", "--wait", "300ms"])
        .code(66)
        .stderr_has(&["'q'"]);
    // Not before the deadline; and promptly after it (generous for loaded CI).
    if out.elapsed < Duration::from_millis(300) || out.elapsed > Duration::from_secs(10) {
        out.fail("recv --wait 300ms did not return at its deadline");
    }
}

/// Whether process `pid` is asleep in a timer (Linux `/proc`), i.e. `recv
/// --wait` found the mailbox empty and is polling. `None` without `/proc`.
fn is_sleeping(pid: u32) -> Option<bool> {
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).ok()?;
    Some(wchan.contains("nanosleep"))
}

#[test]
fn wait_returns_a_message_sent_by_another_process_during_the_wait() {
    let r = Relay::new();
    r.add(&["q"]);
    let waiter = r.cmd(["recv", "q", "--wait", "30s", "--json"]).spawn();
    // Send only once the receiver is really waiting (when /proc shows it), so
    // the waiting path is what is tested. Polled with a deadline; no fixed
    // sleep stands in for the wait.
    let deadline = waiter.started() + Duration::from_secs(5);
    let mut waiting = is_sleeping(waiter.pid());
    while waiting == Some(false) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
        waiting = is_sleeping(waiter.pid());
    }
    let sent_at = Instant::now();
    let id = r.send("q", "wake up");
    let out = waiter.wait().success();
    assert_eq!(out.json()["id"], id.as_str());
    assert_eq!(out.json()["payload"], "wake up");
    // Well before the 30s deadline, however loaded the machine.
    if sent_at.elapsed() > Duration::from_secs(10) {
        out.fail("recv did not return soon after the message landed");
    }
    assert_eq!(r.files("q", "cur"), [format!("{id}.json")]);
    assert_ne!(waiting, Some(false), "recv --wait was never seen waiting");
}

#[test]
fn fifo_holds_for_messages_sent_in_the_same_millisecond() {
    let r = Relay::new();
    r.add(&["q"]);
    for i in 0..8 {
        r.cmd(["send", "q", &format!("m{i}")])
            .env("RELAY_FAKE_NOW_MS", "1767225600000")
            .success();
    }
    let out = r
        .cmd(["recv", "q", "-n", "8"])
        .env("RELAY_FAKE_NOW_MS", "1767225600001")
        .success();
    let want: String = (0..8).map(|i| format!("m{i}\n")).collect();
    out.stdout_is(&want);
}

/// The calls `relay ARGS` makes that move or flush a message (strace, with
/// each descriptor named by its path): `(call, its path argument)` in order,
/// for paths in a mailbox, and `write`s to stdout.
fn durable_steps(r: &Relay, args: &[&str]) -> Vec<(String, String)> {
    let log = r.scratch().join("strace.log");
    let mut c = std::process::Command::new("strace");
    c.args(["-f", "-qq", "-y", "-o"])
        .arg(&log)
        .args([
            "-e",
            "trace=fsync,fdatasync,rename,renameat,renameat2,unlink,unlinkat,write",
        ])
        .arg(crate::harness::BIN)
        .args(args);
    let out = r.clean_env(&mut c).output().unwrap_or_else(|e| {
        panic!("cannot run strace ({e}): this test needs it, never skipped (apt-get install strace; .ci/run does)")
    });
    assert!(out.status.success(), "relay {args:?}: {out:?}");
    let text = std::fs::read_to_string(&log).expect("strace log");
    text.lines()
        .filter_map(|line| {
            // `PID call(args) = result`; the path is the first quoted
            // argument, or the descriptor's (`3</path>`).
            let call = line
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start();
            let (name, rest) = call.split_once('(')?;
            if name == "write" {
                return rest
                    .starts_with("1<")
                    .then(|| (name.to_string(), String::new()));
            }
            let path = match rest.split('"').nth(1) {
                Some(quoted) => quoted,
                None => rest.split(['<', '>']).nth(1)?,
            };
            path.contains("/mailboxes/")
                .then(|| (name.to_string(), path.to_string()))
        })
        .collect()
}

/// Which mailbox directory `path` is or is in (`new`, `cur`, ...).
fn sub_of(path: &str) -> &str {
    let mut parts = path.rsplit('/');
    match parts.next() {
        Some(last) if last.ends_with(".json") => parts.next().unwrap_or_default(),
        Some(last) => last,
        None => "",
    }
}

/// `recv --ack` claims, prints and removes with the two fsyncs of the bare
/// Maildir consume, after the removals: `cur/` (the removals, and any
/// claim left unremoved), then `new/` (the claims' other half). Before
/// them a crash leaves each message in new/ or cur/: redelivered.
#[test]
fn recv_ack_fsyncs_cur_then_new_once_after_removing() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    for i in 0..3 {
        r.send("agent.b", &i.to_string());
    }
    r.cmd(["status"]).success();
    for args in [
        &["recv", "agent.b", "--ack"][..],
        &["recv", "agent.b", "-n", "2", "--ack"],
    ] {
        let steps = durable_steps(&r, args);
        let syncs: Vec<&str> = steps
            .iter()
            .filter(|(c, _)| c == "fsync")
            .map(|(_, p)| sub_of(p))
            .collect();
        assert_eq!(syncs, ["cur", "new"], "{args:?}: {steps:?}");
        let first_sync = steps.iter().position(|(c, _)| c == "fsync");
        let last_unlink = steps.iter().rposition(|(c, _)| c.starts_with("unlink"));
        assert!(last_unlink < first_sync, "{args:?}: {steps:?}");
    }
    assert!(r.files("agent.b", "new").is_empty());
    assert!(r.files("agent.b", "cur").is_empty());
}

/// `recv -n N --ack` from 16 messages on removes them on two threads
/// (their removals overlap), all before its two fsyncs, and prints and
/// acks every one, in order.
#[test]
fn a_large_recv_ack_removes_on_two_threads_before_its_fsyncs() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    let ids: Vec<String> = (0..20).map(|i| r.send("agent.b", &i.to_string())).collect();
    r.cmd(["status"]).success();
    let log = r.scratch().join("threads.log");
    let mut c = std::process::Command::new("strace");
    c.args(["-f", "-qq", "-o"])
        .arg(&log)
        .args(["-e", "trace=unlink,unlinkat,fsync", crate::harness::BIN])
        .args(["recv", "agent.b", "-n", "20", "--ack", "--json"]);
    let out = r.clean_env(&mut c).output().unwrap_or_else(|e| {
        panic!("cannot run strace ({e}): this test needs it, never skipped (apt-get install strace; .ci/run does)")
    });
    assert!(out.status.success(), "{out:?}");
    let printed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("a JSON line")["id"].to_string()
        })
        .collect();
    let quoted: Vec<String> = ids.iter().map(|i| format!("\"{i}\"")).collect();
    assert_eq!(printed, quoted);
    let text = std::fs::read_to_string(&log).expect("strace log");
    let calls: Vec<(&str, &str)> = text
        .lines()
        // strace pads the pid to a width of 5 ("494   unlink(...)").
        .filter_map(|l| {
            l.split_once(' ')
                .map(|(pid, call)| (pid, call.trim_start()))
        })
        .filter(|(_, call)| {
            call.starts_with("unlink") && call.contains("/mailboxes/") || call.starts_with("fsync")
        })
        .collect();
    let unlinkers: std::collections::BTreeSet<&str> = calls
        .iter()
        .filter(|(_, call)| call.starts_with("unlink"))
        .map(|(pid, _)| *pid)
        .collect();
    assert_eq!(unlinkers.len(), 2, "{text}");
    let first_sync = calls.iter().position(|(_, c)| c.starts_with("fsync"));
    let last_unlink = calls.iter().rposition(|(_, c)| c.starts_with("unlink"));
    assert!(last_unlink < first_sync, "{text}");
    assert_eq!(calls.len(), 22, "{text}");
    assert!(r.files("agent.b", "new").is_empty());
    assert!(r.files("agent.b", "cur").is_empty());
    let m = r.cmd(["metrics", "--json"]).success().json();
    assert_eq!(m["deliveredCount"], 20, "{m}");
}

/// A claim not acked at once on the fast path is fsynced (`cur/`, then
/// `new/`) on its own: a plain `recv` before it prints it, and a
/// `recv --ack` whose ack must go through the index (here: the sender's
/// breaker has a failure) before that ack, which then fsyncs its removal.
#[test]
fn claims_not_acked_at_once_are_fsynced_before_they_are_printed() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    for i in 0..3 {
        r.cmd(["send", "agent.b", &i.to_string(), "--from", "hook.x"])
            .success();
    }
    r.cmd(["status"]).success();
    let plain = durable_steps(&r, &["recv", "agent.b", "--json"]);
    let calls: Vec<(&str, &str)> = plain.iter().map(|(c, p)| (c.as_str(), sub_of(p))).collect();
    assert_eq!(
        calls,
        [
            ("rename", "new"),
            ("fsync", "cur"),
            ("fsync", "new"),
            ("write", "")
        ],
        "{plain:?}"
    );
    let id = r.cmd(["recv", "agent.b", "--json"]).success().json()["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    r.cmd(["nack", "agent.b", &id, "--reason", "no"]).success();
    let slow = durable_steps(&r, &["recv", "agent.b", "--ack"]);
    let calls: Vec<(&str, &str)> = slow.iter().map(|(c, p)| (c.as_str(), sub_of(p))).collect();
    assert_eq!(
        calls,
        [
            ("rename", "new"),
            ("write", ""),
            ("fsync", "cur"),
            ("fsync", "new"),
            ("unlink", "cur"),
            ("fsync", "cur")
        ],
        "{slow:?}"
    );
}
