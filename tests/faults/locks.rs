//! Class 4, bounded lock waits: a lock held by another process (here: the
//! test itself, with `flock` or a SQLite write transaction) makes relay
//! give up after the lock timeout with exit 75, naming the lock's path and
//! the pid holding it, and write nothing. On the original main every flock
//! wait was unbounded (the harness watchdog kills the child after 60 s) and
//! a busy index waited 10 s, then exited 74.

use std::fs::{self, File};
use std::path::Path;

use crate::harness::{Relay, T};

/// Lock timeout given to the commands under test (ms).
const SHORT: &str = "300";

/// An exclusive `flock` on `path` (a file or a directory), held until dropped.
fn hold_flock(path: &Path) -> File {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.lock()
        .unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
    f
}

fn pid_note() -> String {
    format!("held by pid {}", std::process::id())
}

#[test]
fn a_held_mailbox_lock_times_out_with_75_naming_the_mailbox_and_holder() {
    let r = Relay::new();
    r.add(&["lk.a"]);
    let mailbox = r.mailbox("lk.a");
    let _held = hold_flock(&mailbox);
    let out = r
        .cmd(["send", "lk.a", "blocked"])
        .env("RELAY_LOCK_TIMEOUT_MS", SHORT)
        .at(T)
        .code(75);
    out.stderr_has(&[
        "timed out",
        "mailbox lock",
        &mailbox.display().to_string(),
        &pid_note(),
        "locks.timeoutMs",
    ]);
    assert!(
        r.files("lk.a", "new").is_empty(),
        "nothing delivered\n{}",
        r.listing()
    );
}

#[test]
fn the_config_knob_bounds_the_wait_as_well() {
    let r = Relay::new();
    r.add(&["lk.a"]);
    r.write_file("config.json", r#"{"locks": {"timeoutMs": 200}}"#);
    let _held = hold_flock(&r.mailbox("lk.a"));
    r.cmd(["send", "lk.a", "blocked", "--json"])
        .at(T)
        .code(75)
        .stderr_has(&["\"kind\":\"lock_timeout\"", "mailbox lock"]);
}

#[test]
fn a_held_state_lock_times_out_with_75_naming_the_state_file() {
    let r = Relay::new();
    r.add(&["lk.a"]);
    r.cmd(["send", "lk.a", "first"]).at(T).success();
    let state = r.path("state.0");
    let _held = hold_flock(&state);
    r.cmd(["send", "lk.a", "second"])
        .env("RELAY_LOCK_TIMEOUT_MS", SHORT)
        .at(T)
        .code(75)
        .stderr_has(&["state lock", &state.display().to_string(), &pid_note()]);
    assert_eq!(r.files("lk.a", "new").len(), 1, "{}", r.listing());
}

#[test]
fn a_held_config_lock_times_out_with_75_naming_config_lock() {
    let r = Relay::new();
    r.cmd(["config", "set", "retention.days", "3"]).success();
    let lock = r.path("locks/config.lock");
    let _held = hold_flock(&lock);
    r.cmd(["config", "set", "retention.days", "4"])
        .env("RELAY_LOCK_TIMEOUT_MS", SHORT)
        .code(75)
        .stderr_has(&["config lock", &lock.display().to_string(), &pid_note()]);
    let cfg = fs::read_to_string(r.path("config.json")).unwrap_or_default();
    assert!(cfg.contains('3') && !cfg.contains('4'), "unchanged: {cfg}");
}

#[test]
fn a_busy_index_times_out_with_75_naming_relay_db_and_the_writer() {
    let r = Relay::new();
    r.add(&["lk.a"]);
    r.cmd(["send", "lk.a", "one"]).at(T).success();
    r.cmd(["status"]).at(T).success(); // the index exists and has the send
    r.cmd(["send", "lk.a", "two"]).at(T).success(); // journal: the next open ingests
    let db = r.path("relay.db");
    let conn = rusqlite::Connection::open(&db).expect("open relay.db");
    conn.execute_batch("BEGIN IMMEDIATE")
        .expect("hold the write lock");
    let out = r
        .cmd(["status"])
        .env("RELAY_LOCK_TIMEOUT_MS", SHORT)
        .at(T)
        .code(75);
    out.stderr_has(&["the index", &db.display().to_string(), &pid_note()]);
    conn.execute_batch("ROLLBACK").expect("release");
    r.cmd(["recv", "lk.a", "-n", "2"]).at(T).success();
}

#[test]
fn a_batch_log_held_by_another_replayer_times_out_with_75_naming_it() {
    let r = Relay::new();
    r.add(&["lk.a"]);
    r.cmd(["status"]).at(T).success();
    fs::create_dir_all(r.path("batches")).expect("batches/");
    let log = r.path("batches/01KFAKEBATCHLOG00000000000.log");
    fs::write(&log, b"relay-batch-log 1 boot-before\n").expect("log");
    let _held = hold_flock(&log);
    r.cmd(["recv", "lk.a"])
        .env("RELAY_FAKE_BOOT_ID", "boot-after")
        .env("RELAY_LOCK_TIMEOUT_MS", SHORT)
        .at(T)
        .code(75)
        .stderr_has(&["batch log", &log.display().to_string(), &pid_note()]);
}

#[test]
fn a_held_mailbox_lock_makes_dlq_purge_time_out_with_75_deleting_nothing() {
    let r = Relay::new();
    r.add(&["lk.a", "lk.b"]);
    for ep in ["lk.a", "lk.b"] {
        let id = r.cmd(["send", ep, "doomed"]).at(T).success().id();
        r.cmd(["recv", ep]).at(T).success();
        r.cmd(["nack", ep, &id, "--reason", "broken"])
            .at(T)
            .success();
    }
    let before = r.listing();
    let mailbox = r.mailbox("lk.b");
    let held = hold_flock(&mailbox);
    r.cmd(["dlq", "purge", "--older-than", "1s", "--yes"])
        .env("RELAY_LOCK_TIMEOUT_MS", SHORT)
        .at(T + 60_000)
        .code(75)
        .stderr_has(&[
            "timed out",
            "mailbox lock",
            &mailbox.display().to_string(),
            &pid_note(),
        ]);
    assert_eq!(r.listing(), before, "nothing deleted, in either mailbox");
    let listed = r.cmd(["dlq", "--json"]).at(T + 60_000).success().json();
    assert_eq!(
        listed["deadLetters"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
    drop(held);
    let out = r
        .cmd(["dlq", "purge", "--older-than", "1s", "--yes", "--json"])
        .at(T + 60_000)
        .success()
        .json();
    assert_eq!(out["purged"], 2, "{out}");
    assert!(r.files("lk.a", "failed").is_empty() && r.files("lk.b", "failed").is_empty());
}
