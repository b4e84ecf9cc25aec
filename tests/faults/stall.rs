//! Fault class 4 (second bullet): a sender stalled at one endpoint (or on
//! the index) holds up no sender to another endpoint. The stall is a real
//! one: the test holds the stalled endpoint's mailbox `flock` (what a
//! sender stopped mid-delivery holds) or a write transaction on `relay.db`.
//! Whether a process is kept waiting is read from `/proc/locks` (a blocked
//! `flock` waiter is listed with `->`), not from the clock.

use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{BIN, Relay};

/// Bound on polling a child for a state it reaches at once when relay
/// works (a hang fails the test instead of hanging it).
const BOUND: Duration = Duration::from_secs(30);

/// `relay ARGS` started in `r`'s world, outside the harness so the test can
/// poll it while it runs.
fn start(r: &Relay, args: &[&str]) -> Child {
    let mut c = Command::new(BIN);
    r.clean_env(&mut c)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.spawn()
        .unwrap_or_else(|e| panic!("cannot start relay {args:?}: {e}"))
}

/// Whether process `pid` is waiting for an `flock` someone else holds.
fn blocked_on_a_lock(pid: u32) -> bool {
    let locks = std::fs::read_to_string("/proc/locks").expect("/proc/locks");
    locks.lines().any(|l| {
        let mut words = l.split_whitespace().skip(1);
        words.next() == Some("->") && words.nth(3) == Some(pid.to_string().as_str())
    })
}

/// Whether process `pid` has a file named `name` open.
fn has_open(pid: u32, name: &str) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
        fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|p| p.file_name().is_some_and(|n| n == name))
        })
    })
}

/// Polls until `pid` waits on a lock (true) or `done` says it ended (false).
fn wait_until_blocked(child: &mut Child, what: &str) {
    let until = Instant::now() + BOUND;
    while Instant::now() < until {
        if blocked_on_a_lock(child.id()) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} ended ({status}) instead of waiting for the stalled lock");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    panic!("{what} never reached the stalled lock");
}

/// Runs `relay ARGS` to its end and asserts it exits 0 without ever waiting
/// on a lock; returns its stdout.
fn runs_without_waiting(r: &Relay, args: &[&str]) -> String {
    let mut child = start(r, args);
    let until = Instant::now() + BOUND;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if blocked_on_a_lock(child.id()) || Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "relay {args:?} was kept waiting behind a sender stalled elsewhere: {}",
                std::fs::read_to_string("/proc/locks").unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "relay {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn finish(child: Child, what: &str) -> String {
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{what} failed once the stall ended: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The lock a sender holds on a mailbox while it delivers there.
fn hold_mailbox(r: &Relay, ep: &str) -> File {
    let f = File::open(r.mailbox(ep)).expect("open mailbox");
    f.lock().expect("flock mailbox");
    f
}

#[test]
fn a_fan_out_waiting_for_a_stalled_endpoint_keeps_no_other_endpoint_locked() {
    let r = Relay::new();
    r.add(&["team.a", "team.b"]);
    // A sender stalled mid-delivery to team.b holds team.b's lock.
    let stalled = hold_mailbox(&r, "team.b");
    // A fan-out to both must wait for team.b...
    let mut fan = start(&r, &["send", "team.*", "to everyone"]);
    wait_until_blocked(&mut fan, "the fan-out to team.*");
    // ...but while it waits, team.a takes sends as if nothing happened
    // (on the old pipeline the fan-out sat on team.a's lock meanwhile).
    let id = runs_without_waiting(&r, &["send", "team.a", "just for a"]);
    assert_eq!(r.files("team.a", "new"), vec![format!("{id}.json")]);
    drop(stalled);
    let fan_id = finish(fan, "the fan-out");
    let mut a = r.files("team.a", "new");
    a.sort();
    let mut want = vec![format!("{id}.json"), format!("{fan_id}.json")];
    want.sort();
    assert_eq!(a, want, "team.a has both messages, once each");
    assert_eq!(r.files("team.b", "new"), vec![format!("{fan_id}.json")]);
    r.cmd(["doctor"]).success();
}

#[test]
fn a_keyed_send_waiting_for_a_busy_index_keeps_no_mailbox_locked() {
    let r = Relay::new();
    r.add(&["team.a", "team.b"]);
    r.cmd(["status"]).success();
    // An operator's sqlite3 session (or a long gc) holds the index.
    let db = rusqlite::Connection::open(r.path("relay.db")).expect("open relay.db");
    db.execute_batch("BEGIN IMMEDIATE").expect("hold the index");
    // A keyed fan-out needs the index (its key) and has to wait for it...
    let mut keyed = start(&r, &["send", "team.*", "once", "--idempotency-key", "k-1"]);
    // Once it has the index open it is waiting for it (on the old pipeline
    // with both mailboxes locked by then).
    let until = Instant::now() + BOUND;
    while !has_open(keyed.id(), "relay.db") {
        assert!(
            keyed.try_wait().ok().flatten().is_none(),
            "the keyed send ended instead of waiting for the index"
        );
        assert!(
            Instant::now() < until,
            "the keyed send never opened the index"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // ...but plain sends, which never need the index, are not kept waiting
    // behind it, at either endpoint.
    let a = runs_without_waiting(&r, &["send", "team.a", "plain a"]);
    let b = runs_without_waiting(&r, &["send", "team.b", "plain b"]);
    db.execute_batch("ROLLBACK").expect("let the index go");
    drop(db);
    let k = finish(keyed, "the keyed send");
    for (ep, plain) in [("team.a", &a), ("team.b", &b)] {
        let mut got = r.files(ep, "new");
        got.sort();
        let mut want = vec![format!("{plain}.json"), format!("{k}.json")];
        want.sort();
        assert_eq!(got, want, "{ep}");
    }
    r.cmd(["doctor"]).success();
}

/// Sends to `ep`, claims and nacks it: its id, now a dead letter.
fn dead_letter(r: &Relay, ep: &str) -> String {
    let id = r.cmd(["send", ep, "doomed"]).success().id();
    r.cmd(["recv", ep]).success();
    r.cmd(["nack", ep, &id, "--reason", "broken"]).success();
    id
}

#[test]
fn dlq_purge_waits_for_the_mailbox_locks_and_leaves_a_letter_moved_meanwhile() {
    let r = Relay::new();
    r.add(&["dl.a", "dl.b"]);
    let a = dead_letter(&r, "dl.a");
    let b = dead_letter(&r, "dl.b");
    // A requeue of dl.b's letter holds dl.b's lock.
    let requeue = hold_mailbox(&r, "dl.b");
    let mut purge = start(
        &r,
        &["dlq", "purge", "--older-than", "0s", "--yes", "--json"],
    );
    wait_until_blocked(&mut purge, "dlq purge");
    // Waiting for dl.b, the purge has deleted nothing, not even dl.a's.
    assert!(
        r.files("dl.a", "failed").contains(&format!("{a}.json")),
        "{}",
        r.listing()
    );
    // The requeue moves its letter back to new/, as `dlq requeue` does
    // under that lock, and lets go.
    let failed = r.mailbox("dl.b").join("failed");
    std::fs::rename(
        failed.join(format!("{b}.json")),
        r.mailbox("dl.b").join("new").join(format!("{b}.json")),
    )
    .expect("the letter is still in failed/ while its lock is held");
    std::fs::remove_file(failed.join(format!("{b}.reason.json"))).expect("sidecar");
    drop(requeue);
    let out = finish(purge, "dlq purge");
    assert_eq!(
        out,
        r#"{"purged":1}"#,
        "only dl.a's letter: {}",
        r.listing()
    );
    assert!(r.files("dl.a", "failed").is_empty(), "{}", r.listing());
    assert_eq!(r.files("dl.b", "new"), vec![format!("{b}.json")]);
    let got = r.cmd(["recv", "dl.b", "--json"]).success().json();
    assert_eq!(got["id"], b.as_str(), "the requeued letter is received");
}
