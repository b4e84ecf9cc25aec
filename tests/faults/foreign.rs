//! Fault class 2: foreign files. The DorkOS protocol lets any program write
//! into a mailbox, so relay must survive whatever it finds there: FIFOs,
//! directories, symlinks, devices and huge files are dead-lettered unread
//! (or skipped), never hang a command or stop a consumer, and no field of a
//! foreign envelope leads relay to a path outside the home.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::harness::{Relay, T, dorkos_envelope};
use crate::surfaces::{Proc, secs};

const A: &str = "01JZ0000000000000000000001";
const B: &str = "01JZ0000000000000000000002";
const C: &str = "01JZ0000000000000000000003";
const D: &str = "01JZ0000000000000000000004";

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo")
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "cannot mkfifo {}", path.display());
}

fn new_file(r: &Relay, ep: &str, id: &str) -> std::path::PathBuf {
    r.mailbox(ep).join("new").join(format!("{id}.json"))
}

/// The reason sidecar of dead letter `id` at `ep`.
fn sidecar(r: &Relay, ep: &str, id: &str) -> Value {
    r.read_json(&format!("mailboxes/{ep}/failed/{id}.reason.json"))
}

#[test]
fn a_fifo_in_new_hangs_neither_gc_nor_doctor_nor_recv_and_is_dead_lettered_unread() {
    let r = Relay::new();
    r.add(&["q"]);
    let real = r.send("q", "real");
    mkfifo(&new_file(&r, "q", A));

    // Each would block forever in open/read of the FIFO before (the
    // harness's watchdog then kills it: status -1).
    let gc = r.cmd(["gc"]).run();
    assert!(gc.code == 0, "gc: {} {}", gc.code, gc.stderr);
    let doctor = r.cmd(["doctor"]).run();
    assert!(doctor.code >= 0, "doctor hung: {}", doctor.stderr);
    r.cmd(["dlq"]).success();

    r.cmd(["recv", "q", "-n", "2"])
        .success()
        .stdout_is("real\n")
        .stderr_has(&[A, "FIFO"]);
    assert_eq!(r.files("q", "cur"), [format!("{real}.json")]);
    assert!(r.files("q", "new").is_empty());
    let failed = r.mailbox("q").join("failed").join(format!("{A}.json"));
    let kind = fs::symlink_metadata(&failed).map(|m| m.file_type());
    assert!(
        kind.is_ok_and(|k| std::os::unix::fs::FileTypeExt::is_fifo(&k)),
        "the FIFO itself is moved to failed/"
    );
    let reason = sidecar(&r, "q", A);
    assert_eq!(reason["code"], "malformed", "{reason}");
    assert_eq!(reason["envelope"], Value::Null, "{reason}");
    // Listing and showing the dead letter does not open the FIFO either.
    r.cmd(["dlq"]).success();
    r.cmd(["dlq", "show", A]).success();
}

#[test]
fn a_directory_named_like_a_message_does_not_stop_a_follow_consumer() {
    let r = Relay::new();
    r.add(&["q"]);
    r.cmd(["status"]).success();
    fs::create_dir(new_file(&r, "q", A)).unwrap_or_else(|e| panic!("mkdir: {e}"));
    let mut f = Proc::start(&r, &["recv", "q", "--follow", "--json"], &[]);
    let id = r.send("q", "after the directory");
    let v = f.json_line(secs(10), "id", &id);
    assert_eq!(v["payload"], "after the directory", "{v}");
    assert!(f.running(), "the consumer must keep running\n{}", f.dump());
    f.signal("TERM");
    let code = f.finish(secs(10));
    assert_eq!(code, 0, "{}", f.dump());
    assert!(
        r.mailbox("q")
            .join("failed")
            .join(format!("{A}.json"))
            .is_dir(),
        "the directory is dead-lettered as it is"
    );
    assert_eq!(sidecar(&r, "q", A)["code"], "malformed");
}

#[test]
fn symlinks_in_new_are_moved_never_followed_nor_copied() {
    let r = Relay::new();
    r.add(&["q"]);
    // A file outside the home that happens to be a valid envelope: before,
    // relay delivered its content (and copied it into sidecars).
    let outside = r.scratch().join("secret.json");
    let env = dorkos_envelope(A, "q", &json!("TOP SECRET"));
    fs::write(&outside, env.to_string()).unwrap_or_else(|e| panic!("write: {e}"));
    symlink(&outside, new_file(&r, "q", A)).unwrap_or_else(|e| panic!("symlink: {e}"));

    let out = r.cmd(["recv", "q"]).code(66);
    assert!(!out.stdout.contains("TOP SECRET"), "{}", out.stdout);
    let moved = r.mailbox("q").join("failed").join(format!("{A}.json"));
    assert!(
        fs::symlink_metadata(&moved).is_ok_and(|m| m.file_type().is_symlink()),
        "the link itself is dead-lettered"
    );
    let reason = sidecar(&r, "q", A);
    assert_eq!(reason["code"], "malformed", "{reason}");
    assert!(!reason.to_string().contains("TOP SECRET"), "{reason}");
    assert!(
        reason["reason"]
            .as_str()
            .is_some_and(|s| s.contains("symlink"))
    );
    let shown = r.cmd(["dlq", "show", A]).success();
    assert!(!shown.stdout.contains("TOP SECRET"), "{}", shown.stdout);

    // To /dev/zero: before, read until out of memory.
    symlink("/dev/zero", new_file(&r, "q", B)).unwrap_or_else(|e| panic!("symlink: {e}"));
    r.cmd(["gc"]).success();
    r.cmd(["recv", "q"]).code(66).stderr_has(&[B, "symlink"]);
    assert_eq!(sidecar(&r, "q", B)["code"], "malformed");
    assert!(r.files("q", "new").is_empty());
}

#[test]
fn oversize_files_and_devices_are_dead_lettered_without_being_read() {
    let r = Relay::new();
    r.add(&["q"]);
    r.cmd(["config", "set", "maxPayloadBytes", "1024"])
        .success();
    // A valid envelope, far beyond what a 1 KiB payload cap lets relay
    // write (6 x 1 KiB escaped + 64 KiB of envelope): before, read whole
    // and delivered.
    let big = "x".repeat(1 << 20);
    let env = dorkos_envelope(A, "q", &json!(big));
    r.write_file(&format!("mailboxes/q/new/{A}.json"), env.to_string());
    // A character device (/dev/null's numbers): not a message file.
    let dev = new_file(&r, "q", B);
    let ok = Command::new("mknod")
        .args([dev.as_os_str(), "c".as_ref(), "1".as_ref(), "3".as_ref()])
        .status()
        .is_ok_and(|s| s.success());
    // One within the cap is still received.
    let small = dorkos_envelope(C, "q", &json!("small"));
    r.write_file(&format!("mailboxes/q/new/{C}.json"), small.to_string());

    let out = r.cmd(["recv", "q", "-n", "3"]).success();
    assert_eq!(out.stdout, "small\n");
    let reason = sidecar(&r, "q", A);
    assert_eq!(reason["code"], "malformed", "{reason}");
    assert!(
        reason["reason"]
            .as_str()
            .is_some_and(|s| s.contains("bytes")),
        "{reason}"
    );
    assert_eq!(reason["envelope"], Value::Null, "the big file is not read");
    if ok {
        let reason = sidecar(&r, "q", B);
        assert!(
            reason["reason"]
                .as_str()
                .is_some_and(|s| s.contains("device")),
            "{reason}"
        );
    }
}

/// A foreign message to `q` whose `replyTo` is `reply_to`, past its TTL
/// at `T` when `expired`.
fn foreign_with_reply_to(r: &Relay, id: &str, reply_to: &str, expired: bool) {
    let mut env = dorkos_envelope(id, "q", &json!("x"));
    env["replyTo"] = json!(reply_to);
    if expired {
        env["budget"]["ttl"] = json!(T - 1000);
    }
    r.write_file(&format!("mailboxes/q/new/{id}.json"), env.to_string());
}

#[test]
fn a_foreign_reply_to_never_leads_a_failure_notice_out_of_the_home() {
    let r = Relay::new();
    r.add(&["q"]);
    let abs = r.scratch().join("abs");
    // `<home>/mailboxes/../../rel` is the scratch directory's `rel`.
    let rel = r.scratch().join("rel");
    foreign_with_reply_to(&r, A, &abs.display().to_string(), true);
    foreign_with_reply_to(&r, B, "../../rel", true);
    foreign_with_reply_to(&r, C, "../../rel", false);
    foreign_with_reply_to(&r, D, "ok.notices", false);

    // A and B expire at recv, C is nacked: each would notify its replyTo.
    r.cmd(["recv", "q"]).at(T).success().stdout_is("x\n");
    r.cmd(["nack", "q", C]).at(T).success();
    r.cmd(["recv", "q"]).at(T).success().stdout_is("x\n");
    r.cmd(["nack", "q", D]).at(T).success();
    assert!(!abs.exists(), "{} was created", abs.display());
    assert!(!rel.exists(), "{} was created", rel.display());
    assert!(r.scratch().join("home").is_dir());
    let refused = r.events_of(T, "failure_notice_refused");
    assert_eq!(refused.len(), 3, "{refused:?}");
    for id in [A, B, C] {
        assert!(
            refused.iter().any(|e| e["messageId"] == id),
            "no refused-notice event for {id}: {refused:?}"
        );
    }
    // A valid replyTo still gets its notice (dead-lettered: no endpoint).
    assert_eq!(r.events_of(T, "failure_notice").len(), 1);
    assert!(r.mailbox("ok.notices").join("failed").is_dir());

    // A valid replyTo whose mailbox has a `failed/` linked out of the home.
    let outside = r.scratch().join("outside-failed");
    fs::create_dir(&outside).unwrap_or_else(|e| panic!("mkdir: {e}"));
    fs::create_dir_all(r.mailbox("linked.box").join("tmp")).unwrap_or_else(|e| panic!("{e}"));
    symlink(&outside, r.mailbox("linked.box").join("failed"))
        .unwrap_or_else(|e| panic!("symlink: {e}"));
    const E: &str = "01JZ0000000000000000000005";
    foreign_with_reply_to(&r, E, "linked.box", false);
    r.cmd(["recv", "q"]).at(T).success().stdout_is("x\n");
    r.cmd(["nack", "q", E]).at(T).success();
    let left: Vec<_> = fs::read_dir(&outside)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "a notice was written through the link: {left:?}"
    );
    assert_eq!(r.events_of(T, "failure_notice_refused").len(), 4);
}

#[test]
fn batch_log_replay_does_not_follow_dot_dot_in_an_endpoint_or_id() {
    let r = Relay::new();
    r.add(&["q"]);
    r.cmd(["status"]).success();
    // A mailbox-shaped directory outside the home, next to it.
    let evil = r.scratch().join("evil");
    for sub in ["tmp", "cur", "failed", "new"] {
        fs::create_dir_all(evil.join(sub)).unwrap_or_else(|e| panic!("mkdir: {e}"));
    }
    let body = dorkos_envelope(A, "q", &json!("replayed")).to_string();
    let mut log = String::from("relay-batch-log 1 boot-before\n");
    for (endpoint, id) in [("../../evil", A), ("q", "../../../evil/new/x")] {
        log.push_str(&format!("{endpoint} {id} {}\n{body}\n", body.len()));
    }
    r.write_file("batches/01JZ0000000000000000000009.log", log);

    r.cmd(["status"])
        .env("RELAY_FAKE_BOOT_ID", "boot-after")
        .success();
    for sub in ["tmp", "cur", "failed", "new"] {
        let left: Vec<_> = fs::read_dir(evil.join(sub))
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "replay wrote into {sub}/ outside the home: {left:?}"
        );
    }
    assert!(!r.scratch().join("x").exists());

    // Nor through a mailbox that is a symlink out of the home.
    symlink(&evil, r.mailbox("linked")).unwrap_or_else(|e| panic!("symlink: {e}"));
    let body = dorkos_envelope(B, "linked", &json!("replayed")).to_string();
    let log = format!(
        "relay-batch-log 1 boot-before\nlinked {B} {}\n{body}\n",
        body.len()
    );
    r.write_file("batches/01JZ0000000000000000000010.log", log);
    r.cmd(["status"])
        .env("RELAY_FAKE_BOOT_ID", "boot-after")
        .success();
    for sub in ["tmp", "cur", "failed", "new"] {
        let left: Vec<_> = fs::read_dir(evil.join(sub))
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "replay wrote into {sub}/ through a link: {left:?}"
        );
    }
}

#[test]
fn names_with_newlines_and_escapes_are_printed_escaped_in_dlq_list() {
    let r = Relay::new();
    r.add(&["q"]);
    let name = "evil\nFAKE-ROW\u{1b}[31m";
    r.write_file(&format!("mailboxes/q/new/{name}.json"), "not json");
    r.cmd(["recv", "q"]).code(66);
    assert_eq!(
        r.files("q", "failed").len(),
        2,
        "{:?}",
        r.files("q", "failed")
    );
    let out = r.cmd(["dlq"]).success();
    assert!(!out.stdout.contains('\u{1b}'), "{:?}", out.stdout);
    assert!(
        !out.stdout.lines().any(|l| l.starts_with("FAKE-ROW")),
        "a newline in a name must not forge a row: {:?}",
        out.stdout
    );
    assert_eq!(out.stdout.lines().count(), 2, "{:?}", out.stdout);
    assert!(out.stdout.contains("evil\\nFAKE-ROW"), "{:?}", out.stdout);

    // An event whose detail another program chose (a replyTo).
    foreign_with_reply_to(&r, A, "\u{1b}]0;owned\u{7}", true);
    r.cmd(["recv", "q"]).at(T).code(66);
    let events = r.cmd(["events"]).at(T).success();
    assert!(
        events.stdout.contains("failure_notice_refused"),
        "{}",
        events.stdout
    );
    assert!(!events.stdout.contains('\u{1b}'), "{:?}", events.stdout);
}

#[test]
fn a_fifo_as_config_json_or_access_rules_is_refused_instead_of_hanging() {
    let r = Relay::new();
    r.add(&["q"]);
    mkfifo(&r.path("config.json"));
    // Every command reads the config first: before, each blocked forever.
    r.cmd(["send", "q", "hi"])
        .code(74)
        .stderr_has(&["cannot read config", "FIFO"]);
    r.cmd(["recv", "q"]).code(74);
    fs::remove_file(r.path("config.json")).unwrap_or_else(|e| panic!("rm: {e}"));

    let access = r.path("access-rules.json");
    mkfifo(&access);
    let out = r.cmd(["send", "q", "hi"]).run();
    assert!(
        out.code > 0,
        "with unreadable rules nothing is allowed: {}",
        out.code
    );
    assert!(r.files("q", "new").is_empty());
}

#[test]
fn a_foreign_directory_that_cannot_be_dead_lettered_is_reported_and_passed_over() {
    let r = Relay::new();
    r.add(&["q"]);
    // failed/ already holds something of the same name that a directory
    // cannot replace.
    fs::create_dir_all(
        r.mailbox("q")
            .join("failed")
            .join(format!("{A}.json"))
            .join("x"),
    )
    .unwrap_or_else(|e| panic!("mkdir: {e}"));
    fs::create_dir(new_file(&r, "q", A)).unwrap_or_else(|e| panic!("mkdir: {e}"));
    let id = r.send("q", "real");
    r.cmd(["recv", "q"])
        .success()
        .stdout_is("real\n")
        .stderr_has(&[A, "directory", "left in cur/"]);
    r.cmd(["ack", "q", &id]).success();
    r.cmd(["recv", "q"]).code(66);
}
