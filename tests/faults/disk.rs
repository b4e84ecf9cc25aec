//! Fault class 1: disk full and inode exhaustion, on a small tmpfs the test
//! mounts itself (as the relay home, or as one mailbox). The suite runs as
//! root, as CI does: a tmpfs that cannot be mounted fails the test loudly.
//!
//! What must hold: a refused send leaves nothing visible (nothing in `new/`
//! without a printed id, nothing in `tmp/`); a send never exits non-zero
//! once its message is visible; the commands that free space (recv, ack,
//! nack, gc, dlq purge) and `breakers` work on the full disk; afterwards
//! `doctor` is clean.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{Relay, T};

/// A tmpfs mounted for one test, unmounted when dropped (declare it after
/// the `Relay` whose directory it is mounted in, so it goes first).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "4m") and `inodes` at `dir`, mode 0700.
    #[track_caller]
    fn mount(dir: &Path, size: &str, inodes: u32) -> Self {
        Self::mount_with(dir, &format!("size={size},nr_inodes={inodes},mode=0700"))
    }

    /// Mounts a tmpfs with mount options `opts` at `dir`.
    #[track_caller]
    fn mount_with(dir: &Path, opts: &str) -> Self {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount: {e}"));
        assert!(
            out.status.success(),
            "cannot mount a tmpfs ({opts}) at {}: {} -- the disk-full tests need root (CI runs as root); they are never skipped",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a relay process a failed test left behind cannot keep it.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Writes `path` until the filesystem holding it has no byte left.
fn fill(path: &Path) {
    let mut f = fs::File::create(path).unwrap_or_else(|e| panic!("create filler: {e}"));
    let block = vec![b'f'; 4096];
    while f.write_all(&block).is_ok() {}
    let _ = f.write_all(b"f");
    let _ = f.sync_all();
}

/// Pads the journal at `path` with empty lines (which ingestion skips)
/// until the full disk refuses more: then no record fits either, not even
/// in the slack of its last block.
fn pad_journal(path: &Path) {
    let Ok(mut f) = fs::OpenOptions::new().append(true).open(path) else {
        return;
    };
    while f.write_all(b"\n").is_ok() {}
}

/// Message ids in `ep`'s `sub/`.
fn ids(r: &Relay, ep: &str, sub: &str) -> BTreeSet<String> {
    r.files(ep, sub)
        .into_iter()
        .filter(|f| !f.ends_with(".reason.json"))
        .filter_map(|f| f.strip_suffix(".json").map(str::to_string))
        .collect()
}

/// Sends `payload` to `ep` until `refusals` sends have been refused (at
/// most `max` tries). After each send: a message is in `new/` only if its
/// send exited 0 and printed its id, a refused send printed nothing, and
/// `tmp/` is empty. Returns the ids sent.
#[track_caller]
fn send_until_refused(
    r: &Relay,
    ep: &str,
    payload: &str,
    refusals: usize,
    max: usize,
) -> Vec<String> {
    let before = ids(r, ep, "new");
    let mut sent = Vec::new();
    let mut refused = 0;
    for _ in 0..max {
        let out = r.cmd(["send", ep, payload]).run();
        match out.code {
            0 => sent.push(out.id()),
            74 => {
                if !out.stdout.trim().is_empty() {
                    out.fail("a refused send printed an id");
                }
                if !(out.stderr.contains("full") || out.stderr.contains("No space left")) {
                    out.fail("a send refused for a full disk does not say so");
                }
                refused += 1;
            }
            _ => out.fail("a send on a full disk neither delivered nor was refused for it"),
        }
        let mut want = before.clone();
        want.extend(sent.iter().cloned());
        if ids(r, ep, "new") != want {
            out.fail("new/ holds a message whose send did not exit 0 with its id (a retry would duplicate it)");
        }
        if !r.files(ep, "tmp").is_empty() {
            out.fail("a refused send left a file in tmp/");
        }
        if refused == refusals {
            return sent;
        }
    }
    panic!(
        "the disk never filled: {} sends, {refused} refused",
        sent.len()
    );
}

/// A home on `disk` with endpoint `ep`, its rate limit off (the tests
/// send a few hundred messages at once).
fn home_with(r: &Relay, ep: &str) {
    r.add(&[ep]);
    r.cmd(["config", "set", "reliability.rateLimit.enabled", "false"])
        .success();
    r.cmd(["status"]).success();
}

/// On the full disk: recv, ack, nack, gc, breakers and dlq purge work and
/// free space; then every message drains, sends work again, and `doctor`
/// is clean.
#[track_caller]
fn drain(r: &Relay, ep: &str, sent: &[String]) {
    let claimed = r.cmd(["recv", ep, "-n", "3", "--json"]).success();
    let claimed: Vec<String> = claimed
        .json_lines()
        .iter()
        .map(|m| m["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(claimed.len(), 3, "recv claimed {claimed:?}");
    r.cmd(["ack", ep, &claimed[0]]).success();
    r.cmd(["nack", ep, &claimed[1], "--reason", "disk full"])
        .success();
    assert!(
        ids(r, ep, "failed").contains(&claimed[1]),
        "the nack did not dead-letter"
    );
    r.cmd(["nack", ep, &claimed[2], "--reason", "again"])
        .success();
    r.cmd(["gc"]).success();
    r.cmd(["breakers"]).success();
    r.cmd(["breakers", "reset", "--all"]).success();
    // Dead letters are dated by the real clock: purge them a day later.
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(T, |d| d.as_millis() as u64)
        + 86_400_000;
    r.cmd(["dlq", "purge", "--older-than", "1h", "--yes"])
        .at(later)
        .success();
    assert!(
        ids(r, ep, "failed").is_empty(),
        "dlq purge left dead letters"
    );
    // Everything else drains, exactly the messages whose send exited 0.
    let mut received: BTreeSet<String> = claimed.iter().cloned().collect();
    loop {
        let out = r.cmd(["recv", ep, "-n", "50", "--ack", "--json"]).run();
        match out.code {
            0 => received.extend(
                out.json_lines()
                    .iter()
                    .map(|m| m["id"].as_str().unwrap_or_default().to_string()),
            ),
            66 => break,
            _ => out.fail("recv --ack on a draining disk failed"),
        }
    }
    let sent: BTreeSet<String> = sent.iter().cloned().collect();
    assert_eq!(
        received, sent,
        "every message sent is received once, no other"
    );
    r.cmd(["send", ep, "room again"]).success();
    r.cmd(["doctor"]).success();
}

#[test]
fn a_full_disk_refuses_sends_whole_and_recv_ack_nack_gc_purge_still_drain_it() {
    let r = Relay::new();
    let _disk = Tmpfs::mount(&r.home(), "4m", 4096);
    home_with(&r, "q");
    let sent = send_until_refused(&r, "q", &"x".repeat(30_000), 3, 400);
    // Whatever room the refusals left, to the last byte.
    fill(&r.home().join("filler"));
    drain(&r, "q", &sent);
}

#[test]
fn inode_exhaustion_refuses_sends_whole_and_recv_ack_nack_gc_purge_still_drain_it() {
    let r = Relay::new();
    let _disk = Tmpfs::mount(&r.home(), "64m", 96);
    home_with(&r, "q");
    let sent = send_until_refused(&r, "q", "small", 3, 400);
    drain(&r, "q", &sent);
}

#[test]
fn a_send_never_fails_once_its_message_is_visible() {
    let r = Relay::new();
    // The home (journal, state, index) on a small disk; the mailbox on a
    // roomy one of its own, so its files fit where the journal does not.
    let _home = Tmpfs::mount(&r.home(), "2m", 4096);
    r.cmd(["status"]).success();
    let _mailbox = Tmpfs::mount(&r.mailbox("q"), "64m", 4096);
    home_with(&r, "q");
    let mut sent = vec![r.send("q", "before")];
    fill(&r.home().join("filler"));
    // The journal fills its last block within a few dozen sends: each one
    // is then refused with nothing visible, or delivered and reported.
    sent.extend(send_until_refused(&r, "q", "journal full", 3, 400));
    fs::remove_file(r.home().join("filler")).unwrap_or_else(|e| panic!("rm filler: {e}"));
    r.cmd(["doctor"]).success();

    // The other way round: the journal has room, the mailbox's disk is
    // full: refused before anything is written or recorded.
    fill(&r.mailbox("q").join("filler"));
    sent.extend(send_until_refused(&r, "q", "mailbox full", 2, 50));
    fs::remove_file(r.mailbox("q").join("filler")).unwrap_or_else(|e| panic!("rm filler: {e}"));
    r.cmd(["doctor"]).success();

    // A delivery failing after its row went to the journal (tmp/ cannot
    // be written): the row is taken back, so the index holds no message
    // that was not delivered.
    let ro = Tmpfs::mount_with(&r.mailbox("q").join("tmp"), "ro,mode=0700");
    for _ in 0..2 {
        let out = r.cmd(["send", "q", "tmp read-only"]).code(74);
        if !out.stdout.trim().is_empty() {
            out.fail("a refused send printed an id");
        }
    }
    drop(ro);
    r.cmd(["doctor"]).success();
    let got = ids(&r, "q", "new");
    assert_eq!(got, sent.into_iter().collect::<BTreeSet<_>>());
}

#[test]
fn with_no_room_left_even_for_the_index_acks_and_nacks_stand_and_claims_are_given_back() {
    let r = Relay::new();
    let _disk = Tmpfs::mount(&r.home(), "4m", 4096);
    home_with(&r, "q");
    let sent: Vec<String> = (0..3).map(|i| r.send("q", &format!("m{i}"))).collect();
    let out = r.cmd(["recv", "q", "-n", "2", "--json"]).success();
    let claimed: Vec<String> = out
        .json_lines()
        .iter()
        .map(|m| m["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(claimed, sent[..2]);
    // Something outside relay takes relay's reserve and the rest.
    let _ = fs::remove_file(r.home().join("reserve"));
    fill(&r.home().join("filler"));
    pad_journal(&r.home().join("journal"));
    // A claim the index cannot record is not made: nothing claimed twice.
    r.cmd(["recv", "q"]).code(75);
    assert_eq!(ids(&r, "q", "new"), BTreeSet::from([sent[2].clone()]));
    // Finishing what was claimed frees space and stands, recorded or not
    // (an ack goes to the journal, which may still have room in its last
    // block; if not, it says so).
    let acked = r.cmd(["ack", "q", &claimed[0]]).success();
    if !acked.stderr.is_empty() {
        acked.stderr_has(&["acked", "doctor --repair"]);
    }
    r.cmd(["nack", "q", &claimed[1], "--reason", "no room"])
        .success();
    assert!(ids(&r, "q", "cur").is_empty(), "both finished");
    assert_eq!(ids(&r, "q", "failed"), BTreeSet::from([claimed[1].clone()]));
    fs::remove_file(r.home().join("filler")).unwrap_or_else(|e| panic!("rm filler: {e}"));
    r.cmd(["doctor", "--repair"]).success();
    r.cmd(["doctor"]).success();
    let last = r.cmd(["recv", "q", "--ack", "--json"]).success().json();
    assert_eq!(last["id"], sent[2].as_str());
}
