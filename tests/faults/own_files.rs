//! Fault class 3: relay's own files in the home. They are never written
//! through a symlink, the journal survives any content, the state slots
//! shrink and cannot freeze, and everything is created 0600/0700 whatever
//! the umask.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;

use serde_json::json;

use crate::harness::{Relay, T};

/// FNV-1a as the state slots use it.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A valid state slot of `generation` holding `state`.
fn slot(generation: u64, state: &serde_json::Value) -> String {
    let json = state.to_string();
    format!(
        "relay-state {generation} {} {:016x}\n{json}\n",
        json.len(),
        checksum(json.as_bytes())
    )
}

fn len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

#[test]
fn own_files_that_are_symlinks_are_refused_not_written_through() {
    // (file in the home, command that writes it)
    let cases: [(&str, &[&str]); 5] = [
        ("journal", &["send", "q", "hi"]),
        ("state.0", &["send", "q", "hi"]),
        ("state.1", &["send", "q", "hi"]),
        ("relay.db", &["status"]),
        (
            "locks/config.lock",
            &["config", "set", "maxPayloadBytes", "2048"],
        ),
    ];
    for (file, args) in cases {
        let r = Relay::new();
        r.add(&["q"]);
        let outside = r.scratch().join("outside");
        fs::write(&outside, "not relay's").unwrap_or_else(|e| panic!("write: {e}"));
        let link = r.path(file);
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir: {e}"));
        }
        let _ = fs::remove_file(&link);
        symlink(&outside, &link).unwrap_or_else(|e| panic!("symlink: {e}"));

        r.cmd(args)
            .code(77)
            .stderr_has(&[&link.display().to_string(), "symlink", "remove it"]);
        assert_eq!(
            fs::read_to_string(&outside).unwrap_or_default(),
            "not relay's",
            "{file}: written through the symlink"
        );
        assert!(
            fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()),
            "{file}: the link is left for the operator"
        );
    }
}

#[test]
fn a_fifo_as_the_journal_is_refused_instead_of_hanging() {
    let r = Relay::new();
    r.add(&["q"]);
    let ok = std::process::Command::new("mkfifo")
        .arg(r.path("journal"))
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "mkfifo");
    r.cmd(["status"]).code(77).stderr_has(&["journal", "FIFO"]);
}

#[test]
fn a_multi_megabyte_journal_line_without_newline_is_skipped_with_an_event() {
    let r = Relay::new();
    r.add(&["q"]);
    r.cmd(["status"]).at(T).success();
    let journal = r.path("journal");

    // Five megabytes without a newline (more than one read chunk), then
    // a real send behind it.
    fs::write(&journal, vec![b'x'; 5 << 20]).unwrap_or_else(|e| panic!("write: {e}"));
    let first = r.send("q", "one");
    r.cmd(["status"]).at(T).success();
    assert_eq!(len(&journal), 0, "the journal is emptied once ingested");
    let trace = r.cmd(["trace", &first, "--json"]).at(T).success();
    assert!(trace.stdout.contains(&first), "{}", trace.stdout);
    // One event per skipped stretch (a read chunk, then the rest of the line).
    assert!(!r.events_of(T, "journal_skipped").is_empty());
}

#[test]
fn a_journal_record_with_out_of_range_numbers_is_skipped_not_fatal() {
    let r = Relay::new();
    r.add(&["q"]);
    r.cmd(["status"]).at(T).success();
    let journal = r.path("journal");
    let first = r.send("q", "one");
    // A record whose numbers the index cannot hold.
    let bad = json!({
        "t": "event", "key": "k.1", "at": u64::MAX, "kind": "x",
        "sender": null, "endpoint": null, "messageId": null, "detail": {}
    });
    fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .and_then(|mut f| writeln!(f, "{bad}"))
        .unwrap_or_else(|e| panic!("append: {e}"));
    r.cmd(["status"]).at(T).success();
    let second = r.send("q", "two");
    r.cmd(["recv", "q", "-n", "2"])
        .at(T)
        .success()
        .stdout_is("one\ntwo\n");
    r.cmd(["ack", "q", &first, &second]).at(T).success();
    // The claims and acks went to the journal too; the next reader moves
    // them in.
    r.cmd(["status"]).at(T).success();
    assert_eq!(len(&journal), 0, "the journal does not grow forever");
    assert_eq!(r.events_of(T, "journal_skipped").len(), 1);
}

#[test]
fn state_slots_shrink_when_the_state_does() {
    let r = Relay::new();
    r.add(&["q"]);
    let buckets: serde_json::Map<String, serde_json::Value> = (0..500)
        .map(|i| {
            (
                format!("sender.{i}"),
                json!({"tokens": 1.0, "updatedAt": T, "softHits": 0, "hardHits": 0, "lastHitAt": null}),
            )
        })
        .collect();
    let big = slot(5, &json!({ "buckets": buckets }));
    assert!(big.len() > 30_000);
    r.write_file("state.1", &big);

    // Writes the small state into slot 0, then (the send) into slot 1.
    r.cmd(["limits", "reset", "--all"]).at(T).success();
    r.send("q", "hi");
    r.cmd(["limits", "reset", "--all"]).at(T).success();
    for s in ["state.0", "state.1"] {
        let n = len(&r.path(s));
        assert!(n < 4096, "{s} is still {n} bytes for a state of a few");
    }
    r.cmd(["limits", "--json"]).at(T).success();
}

#[test]
fn a_slot_at_the_largest_generation_does_not_freeze_the_state() {
    let r = Relay::new();
    r.add(&["q"]);
    let stale = json!({"buckets": {"stale.sender": {
        "tokens": 0.0, "updatedAt": T, "softHits": 0, "hardHits": 7, "lastHitAt": T
    }}});
    r.write_file("state.0", slot(u64::MAX, &stale));
    for _ in 0..3 {
        r.cmd(["send", "q", "hi", "--from", "fresh.sender"])
            .at(T)
            .success();
    }
    let limits = r.cmd(["limits", "--json"]).at(T).success();
    assert!(
        limits.stdout.contains("fresh.sender"),
        "the state must move on: {}",
        limits.stdout
    );
}

/// Every entry under `dir` with its mode bits.
fn modes(dir: &Path, out: &mut Vec<(String, bool, u32)>) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        out.push((p.display().to_string(), md.is_dir(), md.mode() & 0o7777));
        if md.is_dir() {
            modes(&p, out);
        }
    }
}

#[test]
fn files_are_0600_and_directories_0700_whatever_the_umask() {
    let r = Relay::new();
    r.cmd(["endpoints", "add", "q"]).umask(0).success();
    r.cmd(["config", "set", "maxPayloadBytes", "2048"])
        .umask(0)
        .success();
    let id = r.send("q", "one");
    r.cmd(["send", "q", "two"]).umask(0).success();
    r.cmd(["recv", "q"]).umask(0).success();
    r.cmd(["nack", "q", &id]).umask(0).success();
    r.cmd(["status"]).umask(0).success();
    let mut found = Vec::new();
    modes(&r.home(), &mut found);
    assert!(found.iter().any(|(p, ..)| p.ends_with("locks/config.lock")));
    for (path, dir, mode) in &found {
        let want = if *dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{path} is {mode:o} under umask 000");
    }

    // A umask that takes the owner's bits: directories and relay's own
    // files still get theirs.
    let r = Relay::new();
    r.cmd(["endpoints", "add", "q"]).umask(0o277).success();
    r.cmd(["config", "set", "maxPayloadBytes", "2048"])
        .umask(0o277)
        .success();
    r.cmd(["send", "q", "x"]).umask(0o277).success();
    r.cmd(["status"]).umask(0o277).success();
    let mut found = Vec::new();
    modes(&r.home(), &mut found);
    for (path, dir, mode) in &found {
        let own = ["journal", "state.0", "state.1", "relay.db", "config.lock"]
            .iter()
            .any(|f| path.ends_with(f));
        if *dir {
            assert_eq!(*mode, 0o700, "{path} is {mode:o} under umask 277");
        } else if own {
            assert_eq!(*mode, 0o600, "{path} is {mode:o} under umask 277");
        }
    }
}
