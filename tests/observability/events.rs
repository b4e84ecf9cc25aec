//! `relay events`: filters, and `--follow` streaming NDJSON until stopped.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{MIN, T0, recv_at, send_at};
use crate::harness::{BIN, Relay};

/// How long a streaming test waits for something that should be prompt.
const DEADLINE: Duration = Duration::from_secs(10);

/// `relay events --follow --json` in `r`'s world (same clean environment as
/// the harness), with stdout piped so lines can be read as they come.
fn follow(r: &Relay) -> Child {
    r.clean_env(Command::new(BIN).args(["events", "--follow", "--json"]))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start relay events --follow")
}

/// Reads lines of `out` on a thread; they arrive on the returned channel.
fn lines(out: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for the next line whose event is of `kind`, up to [`DEADLINE`].
fn next_of(rx: &mpsc::Receiver<String>, kind: &str) -> Value {
    let end = Instant::now() + DEADLINE;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no {kind} event streamed within {DEADLINE:?}: {e}"));
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"));
        if v["kind"] == kind {
            return v;
        }
    }
}

/// Waits up to [`DEADLINE`] for `child` to exit; kills it (by its pid, ours)
/// and returns None if it does not.
fn exits(child: &mut Child) -> Option<ExitStatus> {
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return Some(st);
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Makes one `dead_letter` event (a send nothing matches), with the real
/// clock so a follower sees it whatever the fake time.
fn cause_dead_letter(r: &Relay, subject: &str) {
    r.cmd(["send", subject, "x"]).code(69);
}

fn kinds(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|e| e["kind"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
fn kind_and_since_filter_the_log() {
    let r = Relay::new();
    r.add(&["a.x"]);
    // A dead letter at T0, a requeue of it at T0 + 20 min.
    let id = send_at(&r, T0, &["a.x", "p"]);
    recv_at(&r, T0 + 1, "a.x");
    r.cmd(["nack", "a.x", &id, "--reason", "nope"])
        .at(T0 + 2)
        .success();
    r.cmd(["dlq", "requeue", &id]).at(T0 + 20 * MIN).success();

    let all = r
        .cmd(["events", "--json"])
        .at(T0 + 21 * MIN)
        .success()
        .json_lines();
    assert_eq!(kinds(&all), ["dead_letter", "requeued"], "{all:?}");
    let dl = &all[0];
    assert_eq!(dl["messageId"], id.as_str(), "{dl}");
    assert_eq!(dl["endpoint"], "a.x", "{dl}");
    assert_eq!(dl["at"], T0 + 2, "{dl}");
    assert_eq!(dl["detail"]["code"], "nack", "{dl}");
    assert!(dl["id"].is_number() && dl.get("sender").is_some(), "{dl}");

    let only = r
        .cmd(["events", "--json", "--kind", "requeued"])
        .at(T0 + 21 * MIN)
        .success()
        .json_lines();
    assert_eq!(kinds(&only), ["requeued"]);
    let both = r
        .cmd([
            "events",
            "--json",
            "--kind",
            "requeued",
            "--kind",
            "dead_letter",
        ])
        .at(T0 + 21 * MIN)
        .success()
        .json_lines();
    assert_eq!(both.len(), 2);
    let none = r
        .cmd(["events", "--json", "--kind", "breaker_opened"])
        .at(T0 + 21 * MIN)
        .success()
        .json_lines();
    assert!(none.is_empty(), "{none:?}");

    let recent = r
        .cmd(["events", "--json", "--since", "10m"])
        .at(T0 + 21 * MIN)
        .success()
        .json_lines();
    assert_eq!(kinds(&recent), ["requeued"], "{recent:?}");

    r.cmd(["events", "--kind", "no_such_kind"])
        .at(T0)
        .code(64)
        .stderr_has(&["no_such_kind", "dead_letter", "requeued"]);
    // Every kind relay records can be asked for, the bridge's too.
    for kind in relay::vocab::EventKind::ALL {
        r.cmd(["events", "--json", "--kind", kind.as_str()])
            .at(T0)
            .success();
    }
}

#[test]
fn follow_streams_new_events_as_they_happen() {
    let r = Relay::new();
    r.add(&["a.x"]);
    let mut child = follow(&r);
    let rx = lines(child.stdout.take().expect("stdout"));

    cause_dead_letter(&r, "first.subject");
    let e = next_of(&rx, "dead_letter");
    assert_eq!(e["endpoint"], "first.subject", "{e}");
    cause_dead_letter(&r, "second.subject");
    let e = next_of(&rx, "dead_letter");
    assert_eq!(e["endpoint"], "second.subject", "{e}");

    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "still following"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn follow_ends_on_sigint() {
    let r = Relay::new();
    r.add(&["a.x"]);
    cause_dead_letter(&r, "early");
    let mut child = follow(&r);
    let rx = lines(child.stdout.take().expect("stdout"));
    next_of(&rx, "dead_letter");
    let pid = child.id().to_string();
    let sent = Command::new("kill").args(["-INT", &pid]).status();
    assert!(sent.is_ok_and(|s| s.success()), "kill -INT {pid}");
    let st = exits(&mut child).expect("relay events --follow ignored SIGINT");
    assert!(
        st.success() || st.signal() == Some(2) || st.code() == Some(130),
        "ends on SIGINT: {st}"
    );
}

#[test]
fn follow_ends_cleanly_when_its_reader_goes_away() {
    let r = Relay::new();
    r.add(&["a.x"]);
    cause_dead_letter(&r, "one");
    let mut child = follow(&r);
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    out.read_line(&mut first).expect("read a line");
    assert!(first.contains("dead_letter"), "{first}");
    drop(out); // the reader is gone, like `| head -n 1` exiting
    // The next event it would write finds the pipe closed.
    cause_dead_letter(&r, "two");
    let st = exits(&mut child).expect("relay events --follow kept running after its reader left");
    assert!(
        st.success() || st.signal() == Some(13),
        "a closed pipe is a normal end, not an error: {st}"
    );
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert!(
        err.trim().is_empty(),
        "no error output on a closed pipe: {err}"
    );
}

#[test]
fn follow_piped_into_head_returns_once_one_event_exists() {
    let r = Relay::new();
    r.add(&["a.x"]);
    cause_dead_letter(&r, "only.one");
    let mut child = follow(&r);
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    out.read_line(&mut first).expect("read a line");
    assert!(first.contains("only.one"), "{first}");
    drop(out); // `head -n 1` exits after its line; no further event happens
    let st = exits(&mut child).expect("relay events --follow outlived its reader");
    assert!(st.success() || st.signal() == Some(13), "{st}");
}
