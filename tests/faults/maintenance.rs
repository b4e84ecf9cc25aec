//! Classes 8 and 10, maintenance under live traffic: `endpoints remove`,
//! `dlq requeue`, `gc` and `doctor --repair` run beside sends, receivers
//! and batch logs without losing a message, stranding one, bringing an
//! acked one back, or setting a healthy index aside.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Relay, T, dorkos_envelope};

/// Rename syscalls of this architecture (`rename`, `renameat`, `renameat2`).
#[cfg(target_arch = "x86_64")]
const RENAMES: &[u64] = &[82, 264, 316];
#[cfg(target_arch = "aarch64")]
const RENAMES: &[u64] = &[38, 276];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const RENAMES: &[u64] = &[];

/// The pid of the (first) child of `pid`.
fn child_of(pid: u32) -> Option<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Directory removals of this architecture (`rmdir`, `unlinkat`).
#[cfg(target_arch = "x86_64")]
const REMOVALS: &[u64] = &[84, 263];
#[cfg(target_arch = "aarch64")]
const REMOVALS: &[u64] = &[35];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const REMOVALS: &[u64] = &[];

/// Waits (bounded) until the relay child of the strace `tracer` is held at
/// the entry of a rename (strace delays it there).
fn wait_in_rename(tracer: u32) {
    wait_in(tracer, RENAMES, "a rename");
}

/// Waits (bounded) until the relay child of the strace `tracer` is held at
/// the entry of one of the syscalls `nrs` (strace delays it there).
fn wait_in(tracer: u32, nrs: &[u64], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(child) = child_of(tracer) {
            let nr = fs::read_to_string(format!("/proc/{child}/syscall")).unwrap_or_default();
            if nr
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| nrs.contains(&n))
            {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the traced `endpoints remove` never reached {what}");
}

/// `endpoints remove ep` under strace, every rename delayed by a second:
/// the window between its count and its move, held open.
fn remove_slowly(r: &Relay, ep: &str) -> std::process::Child {
    remove_under_strace(
        r,
        ep,
        "inject=rename,renameat,renameat2:delay_enter=1000000",
    )
}

/// `endpoints remove ep` under strace with the fault injection `inject`.
fn remove_under_strace(r: &Relay, ep: &str, inject: &str) -> std::process::Child {
    let mut c = std::process::Command::new("strace");
    c.args([
        "-f",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        inject,
        crate::harness::BIN,
        "endpoints",
        "remove",
        ep,
    ]);
    r.clean_env(&mut c)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run strace ({e}): this race test needs it, never skipped (apt-get install strace; .ci/run does)")
        })
}

/// A send racing `endpoints remove`: exit 0 means the message is kept (the
/// remove then refused), anything else means nothing was delivered.
fn send_races_remove(config: Option<&str>) {
    let r = Relay::new();
    if let Some(c) = config {
        r.write_file("config.json", c);
    }
    r.add(&["rm.a"]);
    let mut remove = remove_slowly(&r, "rm.a");
    wait_in_rename(remove.id());
    let send = r.cmd(["send", "rm.a", "precious"]).run();
    let removed = remove.wait().expect("wait for remove");
    let kept: Vec<String> = r.files("rm.a", "new");
    if send.code == 0 {
        assert_eq!(
            kept.len(),
            1,
            "send exited 0 but its message is gone (remove {removed})\n{}",
            r.listing()
        );
        assert!(!removed.success(), "remove deleted a non-empty mailbox");
    } else {
        assert!(
            send.code == 69 || send.code == 74,
            "send: {} {}",
            send.code,
            send.stderr
        );
        assert!(kept.is_empty(), "{}", r.listing());
    }
}

#[test]
fn endpoints_remove_racing_a_locking_send_loses_nothing() {
    // Backpressure on (the default): the send takes the mailbox lock.
    send_races_remove(None);
}

#[test]
fn endpoints_remove_racing_a_send_that_takes_no_lock_loses_nothing() {
    // Backpressure off: the send takes no mailbox lock; the remove counts
    // again once the directory is out of reach.
    send_races_remove(Some(
        r#"{"reliability": {"backpressure": {"enabled": false}}}"#,
    ));
}

/// A writer that found the mailbox before `endpoints remove` renamed it
/// away puts its message in after the remove looked: what a send taking no
/// mailbox lock (backpressure off) does when it is preempted inside its
/// rename, between the kernel resolving `<mailbox>/tmp` and `<mailbox>/new`
/// and the move itself (seen under load in the crash harness), and what a
/// DorkOS process working in the mailbox directory does. Here the writer
/// holds the mailbox directory open and moves its message in through it
/// while the remove is held at its first directory removal, after every
/// count it makes. Either the move lands and the remove gives the mailbox
/// back with the message in it, or the move fails: never a message moved in
/// and deleted, nor one left in a `.removed-*` directory.
#[test]
fn endpoints_remove_racing_a_writer_that_resolved_the_mailbox_first_loses_nothing() {
    let r = Relay::new();
    r.add(&["rm.w"]);
    let id = "01KC0000000000000000000000";
    let env = dorkos_envelope(id, "rm.w", &json!("precious"));
    r.write_file(&format!("mailboxes/rm.w/tmp/{id}.json"), env.to_string());
    // The writer's hold on the mailbox: a path through this open directory
    // resolves wherever the directory is now, as the kernel's lookup of a
    // rename in flight does.
    let dir = fs::File::open(r.mailbox("rm.w")).expect("open the mailbox");
    let via = |sub: &str| {
        use std::os::fd::AsRawFd;
        format!("/proc/self/fd/{}/{sub}/{id}.json", dir.as_raw_fd())
    };
    let mut remove = remove_under_strace(
        &r,
        "rm.w",
        "inject=rmdir,unlinkat:delay_enter=500000:when=1",
    );
    wait_in(remove.id(), REMOVALS, "a directory removal");
    assert!(
        !r.mailbox("rm.w").exists(),
        "the remove was held before it renamed the mailbox away: this test no longer holds the race open"
    );
    let moved = fs::rename(via("tmp"), via("new"));
    let removed = remove.wait().expect("wait for remove");
    drop(dir);
    let graves: Vec<String> = fs::read_dir(r.path("mailboxes"))
        .expect("list mailboxes")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".removed-"))
        .collect();
    assert!(graves.is_empty(), "left behind {graves:?}\n{}", r.listing());
    if moved.is_ok() {
        assert_eq!(
            r.files("rm.w", "new"),
            [format!("{id}.json")],
            "the message moved in is gone (remove {removed})\n{}",
            r.listing()
        );
        assert!(!removed.success(), "remove deleted a non-empty mailbox");
    } else {
        assert!(removed.success(), "remove {removed}\n{}", r.listing());
        assert!(!r.mailbox("rm.w").exists(), "{}", r.listing());
    }
}

#[test]
fn dlq_requeue_all_is_best_effort() {
    let r = Relay::new();
    r.add(&["dq.a"]);
    let good = r.send("dq.a", "good");
    r.cmd(["recv", "dq.a"]).at(T).success();
    r.cmd(["nack", "dq.a", &good]).at(T).success();
    // A letter that is not an envelope, sorted before the good one.
    r.write_file(
        "mailboxes/dq.a/failed/00000000000000000000000000.json",
        "{not json",
    );
    let out = r.cmd(["dlq", "requeue", "--all"]).at(T).run();
    assert_ne!(out.code, 0, "a letter could not be requeued: non-zero exit");
    out.stderr_has(&["00000000000000000000000000", "requeued 1 message(s)"]);
    assert_eq!(
        r.files("dq.a", "new"),
        vec![format!("{good}.json")],
        "the good letter was requeued past the bad one\n{}",
        r.listing()
    );
    assert!(
        r.files("dq.a", "failed")
            .contains(&"00000000000000000000000000.json".to_string()),
        "the bad letter stays where it was"
    );
}

#[test]
fn a_requeued_ttl_expired_letter_gets_a_fresh_ttl() {
    let r = Relay::new();
    r.add(&["dq.t"]);
    let id = r
        .cmd(["send", "dq.t", "late", "--ttl", "2s"])
        .at(T)
        .success()
        .id();
    r.cmd(["gc"]).at(T + 10_000).success();
    assert_eq!(
        r.files("dq.t", "failed").len(),
        2,
        "expired: letter and sidecar"
    );
    r.cmd(["dlq", "requeue", &id])
        .at(T + 20_000)
        .success()
        .stderr_has(&["fresh TTL"]);
    // A second later it must still be there to be received.
    r.cmd(["gc"]).at(T + 21_000).success();
    let got = r.cmd(["recv", "dq.t"]).at(T + 21_000).success();
    assert_eq!(got.stdout.trim(), "late", "{}", r.listing());
}

#[test]
fn requeue_from_a_dorkos_pattern_directory_does_not_strand_the_letter() {
    let r = Relay::new();
    r.add(&["dq.p"]);
    // DorkOS dead-letters a publish that matched nothing into a directory
    // named after the pattern, with all four subdirectories.
    let dir = "mailboxes/relay.nomatch.>";
    for sub in ["tmp", "new", "cur", "failed"] {
        fs::create_dir_all(r.path(&format!("{dir}/{sub}"))).expect("mkdir");
    }
    let id = "01KAAAAAAAAAAAAAAAAAAAAAAA";
    let env = dorkos_envelope(id, "relay.nomatch.>", &json!("lost?"));
    r.write_file(&format!("{dir}/failed/{id}.json"), env.to_string());
    let out = r.cmd(["dlq", "requeue", "--all"]).at(T).run();
    assert_ne!(out.code, 0, "refused: {}", out.stderr);
    out.stderr_has(&["relay.nomatch.>", "not an endpoint", "relay send"]);
    assert!(
        r.path(&format!("{dir}/failed/{id}.json")).exists(),
        "the letter stays in failed/ where dlq shows it\n{}",
        r.listing()
    );
    assert!(
        fs::read_dir(r.path(&format!("{dir}/new")))
            .map(|d| d.count() == 0)
            .unwrap_or(true),
        "nothing moved into the pattern directory's new/, which nobody reads"
    );
}

/// Every file name under `relay.db*` in the home.
fn index_files(r: &Relay) -> BTreeSet<String> {
    fs::read_dir(r.home())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("relay.db"))
        .collect()
}

#[test]
fn doctor_repair_leaves_a_locked_index_alone_and_keys_survive() {
    let r = Relay::new();
    r.add(&["dr.a"]);
    let id = r
        .cmd(["send", "dr.a", "once", "--idempotency-key", "k-1"])
        .at(T)
        .success()
        .id();
    r.cmd(["send", "dr.a", "more"]).at(T).success(); // in the journal
    let before = index_files(&r);
    // An operator's sqlite3 session holding a write transaction.
    let conn = rusqlite::Connection::open(r.path("relay.db")).expect("open");
    conn.execute_batch("BEGIN IMMEDIATE").expect("write lock");
    let out = r
        .cmd(["doctor", "--repair"])
        .env("RELAY_LOCK_TIMEOUT_MS", "300")
        .at(T)
        .code(75);
    out.stderr_has(&["relay.db", "left as it is"]);
    assert_eq!(index_files(&r), before, "nothing set aside");
    conn.execute_batch("ROLLBACK").expect("release");
    drop(conn);
    let again = r
        .cmd(["send", "dr.a", "once", "--idempotency-key", "k-1"])
        .at(T + 1000)
        .success()
        .id();
    assert_eq!(again, id, "the key survived: not delivered twice");
    assert_eq!(r.files("dr.a", "new").len(), 2, "{}", r.listing());
    r.cmd(["doctor"]).at(T + 1000).success();
}

/// Mounts a tmpfs of `size` at `dir` (root only); unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        fs::create_dir_all(dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the filesystem holding `dir` with one file.
fn fill(dir: &Path) {
    use std::io::Write;
    let mut f = fs::File::create(dir.join("filler")).expect("filler");
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let small = [0u8; 512];
    while f.write_all(&small).is_ok() {}
}

#[test]
fn doctor_repair_leaves_the_index_alone_on_a_full_disk() {
    let r = Relay::new();
    let Some(_fs) = Tmpfs::mount(&r.home(), "2m") else {
        crate::harness::skip(
            "doctor_repair_leaves_the_index_alone_on_a_full_disk",
            "cannot mount a tmpfs (the full-disk tests need root; CI runs as root)",
        );
        return;
    };
    r.add(&["df.a"]);
    let id = r
        .cmd(["send", "df.a", "once", "--idempotency-key", "k-2"])
        .at(T)
        .success()
        .id();
    for i in 0..40 {
        r.cmd(["send", "df.a", &format!("m{i}")]).at(T).success();
    }
    // Without relay's reserve (which would give the index room to catch
    // up), the disk is full for the index too.
    let _ = fs::remove_file(r.home().join("reserve"));
    fill(&r.home());
    let before = index_files(&r);
    let out = r.cmd(["doctor", "--repair"]).at(T).run();
    // It may get by (relay keeps a reserve for a full disk) or fail with
    // 74 saying so; it never takes the full disk for damage.
    assert!(
        out.code == 0 || (out.code == 74 && out.stderr.contains("left as it is")),
        "doctor --repair on a full disk: {} {} {}",
        out.code,
        out.stdout,
        out.stderr
    );
    assert_eq!(index_files(&r), before, "nothing set aside: {}", out.stderr);
    fs::remove_file(r.home().join("filler")).expect("free the disk");
    let again = r
        .cmd(["send", "df.a", "once", "--idempotency-key", "k-2"])
        .at(T + 1000)
        .success()
        .id();
    assert_eq!(again, id, "the key survived: not delivered twice");
    r.cmd(["doctor"]).at(T + 1000).success();
}

/// A durable batch of `n` messages to `ep` on boot `boot`; their ids.
fn batch(r: &Relay, ep: &str, n: usize, boot: &str) -> Vec<String> {
    let lines: String = (0..n)
        .map(|i| format!("{}\n", json!({"subject": ep, "payload": format!("b{i}")})))
        .collect();
    let out = r
        .cmd(["send", "--batch"])
        .env("RELAY_FAKE_BOOT_ID", boot)
        .stdin(lines)
        .success();
    out.stdout.lines().map(str::to_owned).collect()
}

fn ack_one(r: &Relay, ep: &str, boot: &str) -> String {
    let got = r
        .cmd(["recv", ep, "--json"])
        .env("RELAY_FAKE_BOOT_ID", boot)
        .success()
        .json();
    let id = got["id"].as_str().expect("id").to_owned();
    r.cmd(["ack", ep, &id])
        .env("RELAY_FAKE_BOOT_ID", boot)
        .success();
    id
}

/// Every message id on disk at `ep`.
fn on_disk(r: &Relay, ep: &str) -> BTreeSet<String> {
    ["new", "cur", "failed"]
        .iter()
        .flat_map(|s| r.files(ep, s))
        .filter(|f| !f.ends_with(".reason.json"))
        .map(|f| f.trim_end_matches(".json").to_owned())
        .collect()
}

#[test]
fn doctor_repair_of_a_damaged_index_does_not_replay_acked_messages_from_another_boot() {
    let r = Relay::new();
    r.add(&["bl.a"]);
    let ids = batch(&r, "bl.a", 3, "boot-one");
    assert_eq!(ids.len(), 3);
    let acked = ack_one(&r, "bl.a", "boot-one");
    assert!(
        r.path("batches")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some())
    );
    // The machine restarts; the index is found damaged.
    for suffix in ["", "-wal", "-shm"] {
        let _ = fs::remove_file(r.path(&format!("relay.db{suffix}")));
    }
    r.write_file("relay.db", "this is not a database, it is garbage");
    let repair = r
        .cmd(["doctor", "--repair"])
        .env("RELAY_FAKE_BOOT_ID", "boot-two")
        .run();
    let left: BTreeSet<String> = on_disk(&r, "bl.a");
    assert!(
        !left.contains(&acked),
        "the acked message came back from the batch log (doctor {} {} {})\n{}",
        repair.code,
        repair.stdout,
        repair.stderr,
        r.listing()
    );
    assert_eq!(left.len(), 2, "the other two are kept\n{}", r.listing());
    // Later commands do not replay it either.
    r.cmd(["recv", "bl.a", "-n", "10"])
        .env("RELAY_FAKE_BOOT_ID", "boot-two")
        .success();
    r.cmd(["status"])
        .env("RELAY_FAKE_BOOT_ID", "boot-two")
        .success();
    assert!(!on_disk(&r, "bl.a").contains(&acked), "{}", r.listing());
}

#[test]
fn gc_does_not_prune_acked_rows_a_pending_batch_log_could_resurrect() {
    let r = Relay::new();
    r.add(&["bl.g"]);
    let ids = batch(&r, "bl.g", 2, "boot-one");
    assert_eq!(ids.len(), 2);
    // Acked eight days ago by the clock (past the 7-day retention), while
    // the batch's log, written just now, is still young.
    let past = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(0))
        .unwrap_or(0)
        - 8 * 86_400_000;
    let got = r
        .cmd(["recv", "bl.g", "--json"])
        .env("RELAY_FAKE_BOOT_ID", "boot-one")
        .at(past)
        .success()
        .json();
    let acked = got["id"].as_str().expect("id").to_owned();
    r.cmd(["ack", "bl.g", &acked])
        .env("RELAY_FAKE_BOOT_ID", "boot-one")
        .at(past)
        .success();
    r.cmd(["gc"])
        .env("RELAY_FAKE_BOOT_ID", "boot-one")
        .success();
    // Power loss and restart: whatever log is left is replayed.
    r.cmd(["status"])
        .env("RELAY_FAKE_BOOT_ID", "boot-two")
        .success();
    assert!(
        !on_disk(&r, "bl.g").contains(&acked),
        "gc pruned the acked row and the batch log brought the message back\n{}",
        r.listing()
    );
}

#[test]
fn doctor_repair_beside_16_busy_processes_leaves_a_consistent_index() {
    let r = Relay::new();
    let eps = ["tr.a", "tr.b"];
    r.add(&eps);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let home = r.home();
    let mut workers = Vec::new();
    for w in 0..16 {
        let (stop, home) = (stop.clone(), home.clone());
        let user = r.user_home();
        workers.push(std::thread::spawn(move || {
            let ep = ["tr.a", "tr.b"][w % 2];
            let run = |args: &[&str]| {
                std::process::Command::new(crate::harness::BIN)
                    .args(args)
                    .env_clear()
                    .env("RELAY_HOME", &home)
                    .env("HOME", &user)
                    .env("NO_COLOR", "1")
                    .output()
                    .expect("run relay")
            };
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                match w % 4 {
                    0 | 1 => {
                        run(&["send", ep, &format!("w{w}-{n}")]);
                    }
                    role => {
                        let out = run(&["recv", ep, "--json"]);
                        let line = String::from_utf8_lossy(&out.stdout).into_owned();
                        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line.trim())
                            && let Some(id) = v["id"].as_str()
                        {
                            // Some claims stay open: the index must agree.
                            match (role, n % 5) {
                                (_, 0) => {}
                                (2, _) => {
                                    run(&["ack", ep, id]);
                                }
                                _ => {
                                    run(&["nack", ep, id]);
                                }
                            }
                        }
                    }
                }
            }
        }));
    }
    // Let traffic build up, then repair beside it, a few times.
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.files("tr.a", "new").len() < 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut repairs = Vec::new();
    for _ in 0..4 {
        repairs.push(r.cmd(["doctor", "--repair"]).run());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker");
    }
    for (i, o) in repairs.iter().enumerate() {
        assert_eq!(o.code, 0, "repair {i}: {} {}", o.stdout, o.stderr);
    }
    let check = r.cmd(["doctor"]).run();
    assert_eq!(
        check.code, 0,
        "the index disagrees with the mailboxes after repairs under traffic:\n{}\n{}",
        check.stdout, check.stderr
    );
}

#[test]
fn doctor_reports_what_an_interrupted_endpoints_remove_left() {
    let r = Relay::new();
    r.add(&["gr.a", "gr.b"]);
    r.send("gr.a", "kept");
    // `endpoints remove` killed between its rename and its delete.
    let full = r.path("mailboxes/.removed-01KAAAAAAAAAAAAAAAAAAAAAAA");
    let empty = r.path("mailboxes/.removed-01KBBBBBBBBBBBBBBBBBBBBBBB");
    fs::rename(r.mailbox("gr.a"), &full).expect("rename");
    fs::rename(r.mailbox("gr.b"), &empty).expect("rename");
    let out = r.cmd(["doctor"]).code(65);
    assert!(
        out.stdout.contains(".removed-01KAAAAAAAAAAAAAAAAAAAAAAA")
            && out.stdout.contains("holds 1 message"),
        "{}",
        out.stdout
    );
    r.cmd(["doctor", "--repair"]).code(65);
    assert!(
        full.join("new")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some()),
        "kept"
    );
    assert!(!empty.exists(), "the empty leftover is removed on repair");
}
