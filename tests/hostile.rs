//! Hostile input, table-driven: every row is one bad input to one subcommand
//! (traversal and symlinked paths, control characters, oversize and invalid
//! UTF-8 payloads, invalid JSON, every invalid config knob, malformed access
//! rules, damaged `relay.db`, broken mailbox directories). Each row asserts
//! the exit code, that stderr names the bad value or file, that no panic or
//! raw escape sequence comes out, and what was written: by default nothing
//! at all (the home's listing before and after must be equal, ignoring
//! `relay.db*`, `journal`, the `state.*` slots and `locks/`; files outside the home are compared too).
//!
//! Each row is its own `#[test]`, named after the row (see `hostile!`).
//! Rows about permission bits (`as_any_user`) run relay without root's
//! override, so they are judged as root too.
//!
//! Run: `cargo test --test integration hostile -- --nocapture`, or one
//! row: `cargo test --test integration hostile::send_subject_dotdot_x`.

use std::collections::{BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use crate::harness::{Output, Relay, dorkos_envelope};

/// Values a setup hands to its row: `{claimed}`, `{pending}`, `{port}`, ...
/// (`{home}` and `{scratch}` are always there).
type Vars = HashMap<&'static str, String>;

/// Prepares the world of one row.
type Setup = Box<dyn Fn(&Relay, &mut Vars)>;

/// A check run after a row's command (and its write check).
type After = fn(&Relay, &Vars) -> Result<(), String>;

/// What the row's command may change on disk.
enum Writes {
    /// Nothing under the home (but `relay.db*`, `journal`, `state.*`
    /// and `locks/`) or beside it.
    Nothing,
    /// Exactly one dead letter (`<id>.json` + `<id>.reason.json`) in
    /// `mailboxes/<endpoint>/failed/` with this code, nothing else.
    DeadLetter(&'static str, &'static str),
    /// Checked by the function instead.
    Check(fn(&Relay, &Vars, &Output) -> Result<(), String>),
}

/// One hostile input.
struct Case {
    name: &'static str,
    setup: Setup,
    /// Arguments; `{var}` is replaced from the setup's values and `{ff}` by
    /// the byte 0xff (invalid UTF-8).
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    stdin: Option<Vec<u8>>,
    code: i32,
    /// Substrings stderr must contain (after `{var}` substitution).
    stderr_has: &'static [&'static str],
    writes: Writes,
    /// Runs after the command and the write check (e.g. repair, then check
    /// that nothing was lost).
    after: Option<After>,
    /// Run relay without root's permission-bit override (`as_any_user`).
    drop_dac_override: bool,
}

impl Default for Case {
    fn default() -> Self {
        Case {
            name: "",
            setup: Box::new(base),
            args: &[],
            env: &[],
            stdin: None,
            code: 0,
            stderr_has: &[],
            writes: Writes::Nothing,
            after: None,
            drop_dac_override: false,
        }
    }
}

// ---------------------------------------------------------------------------
// Setups.

/// Endpoints `a` and `b`; `a` holds `{claimed}` in cur/ and `{pending}` in new/.
fn base(r: &Relay, v: &mut Vars) {
    r.add(&["a", "b"]);
    let claimed = r.send("a", "one");
    let pending = r.send("a", "two");
    r.cmd(["recv", "a"]).success().stdout_is("one\n");
    v.insert("claimed", claimed);
    v.insert("pending", pending);
}

/// [`base`] plus `config.json` with `text`.
fn config(text: &'static str) -> Setup {
    Box::new(move |r, v| {
        base(r, v);
        r.write_file("config.json", text);
    })
}

/// [`base`] plus raw bytes as `config.json`.
fn config_bytes(bytes: &'static [u8]) -> Setup {
    Box::new(move |r, v| {
        base(r, v);
        r.write_file("config.json", bytes);
    })
}

/// [`base`] plus `access-rules.json` with `text`.
fn rules(text: &'static str) -> Setup {
    Box::new(move |r, v| {
        base(r, v);
        r.write_file("access-rules.json", text);
    })
}

/// [`base`], then `f`.
fn then(f: fn(&Relay, &mut Vars)) -> Setup {
    Box::new(move |r, v| {
        base(r, v);
        f(r, v);
    })
}

/// [`base`] with a payload cap of 100 bytes and payload files in scratch.
fn small_cap(r: &Relay, v: &mut Vars) {
    base(r, v);
    r.write_file("config.json", r#"{"maxPayloadBytes": 100}"#);
    write(&r.scratch().join("big.txt"), &[b'x'; 5000]);
    v.insert("x101", "x".repeat(101));
}

fn write(path: &Path, bytes: &[u8]) {
    fs::write(path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn mkdirs(path: &Path) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
}

fn rm(path: &Path) {
    let res = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => Ok(()),
    };
    res.unwrap_or_else(|e| panic!("rm {}: {e}", path.display()));
}

fn ln(target: &Path, link: &Path) {
    symlink(target, link)
        .unwrap_or_else(|e| panic!("ln -s {} {}: {e}", target.display(), link.display()));
}

/// Replaces a directory by a regular file.
fn dir_to_file(path: &Path) {
    rm(path);
    write(path, b"not a directory");
}

/// Moves every entry of `from` into `to`.
fn move_all(from: &Path, to: &Path) {
    mkdirs(to);
    for e in fs::read_dir(from).into_iter().flatten().flatten() {
        fs::rename(e.path(), to.join(e.file_name()))
            .unwrap_or_else(|err| panic!("mv {}: {err}", e.path().display()));
    }
}

/// The home itself is a symlink to `scratch/real` (which must stay empty).
fn symlinked_home(r: &Relay, _: &mut Vars) {
    let real = r.scratch().join("real");
    mkdirs(&real);
    ln(&real, &r.home());
}

/// [`base`], and mailbox `b` is a symlink to `scratch/elsewhere`, which holds
/// a message in new/ and one in cur/ (that must stay where they are).
fn symlinked_mailbox(r: &Relay, v: &mut Vars) {
    base(r, v);
    let elsewhere = r.scratch().join("elsewhere");
    for sub in ["tmp", "new", "cur", "failed"] {
        mkdirs(&elsewhere.join(sub));
    }
    for (sub, id) in [
        ("new", "01JZ0000000000000000000001"),
        ("cur", "01JZ0000000000000000000002"),
    ] {
        let env = dorkos_envelope(id, "b", &serde_json::json!("outside"));
        write(
            &elsewhere.join(sub).join(format!("{id}.json")),
            env.to_string().as_bytes(),
        );
    }
    v.insert("outside", "01JZ0000000000000000000002".into());
    rm(&r.mailbox("b"));
    ln(&elsewhere, &r.mailbox("b"));
}

/// Deterministic garbage (xorshift64).
fn garbage(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed.to_le_bytes()[0]
        })
        .collect()
}

fn remove_wal(r: &Relay) {
    for f in ["relay.db-wal", "relay.db-shm"] {
        rm(&r.path(f));
    }
}

/// `relay.db` replaced by 4 KiB of random bytes (no WAL left).
fn garbage_db(r: &Relay, v: &mut Vars) {
    base(r, v);
    remove_wal(r);
    write(&r.path("relay.db"), &garbage(4096, 0x9e37_79b9_7f4a_7c15));
}

/// `relay.db` truncated to 100 bytes after real use (WAL gone too, as
/// after a checkpoint).
fn truncated_db(r: &Relay, v: &mut Vars) {
    base(r, v);
    r.cmd(["nack", "a", &v["claimed"], "--reason", "for the index"])
        .success();
    r.cmd(["recv", "a"]).success();
    v.insert("claimed", v["pending"].clone());
    let extra = r.send("a", "three");
    v.insert("pending", extra);
    remove_wal(r);
    truncate(&r.path("relay.db"), 100);
}

/// `relay.db` and its WAL both truncated to 100 bytes.
fn truncated_db_and_wal(r: &Relay, v: &mut Vars) {
    base(r, v);
    r.cmd(["status"]).success(); // the index and its WAL exist
    truncate(&r.path("relay.db"), 100);
    truncate(&r.path("relay.db-wal"), 100);
}

fn truncate(path: &Path, len: u64) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len))
        .unwrap_or_else(|e| panic!("truncate {}: {e}", path.display()));
}

/// A budget whose `ttl` does not fit SQLite's signed 64-bit integers.
const HUGE_TTL_BUDGET: &str = r#"{"hopCount":0,"maxHops":5,"ancestorChain":[],"ttl":18446744073709551615,"callBudgetRemaining":9}"#;

/// A listener on a loopback port, kept open for the rest of the test run.
fn port_in_use(r: &Relay, v: &mut Vars) {
    base(r, v);
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"));
    let port = l.local_addr().map(|a| a.port()).unwrap_or_default();
    v.insert("port", port.to_string());
    std::mem::forget(l);
}

// ---------------------------------------------------------------------------
// Checks after the command.

/// `doctor` names the damage, `doctor --repair` fixes it without touching a
/// message, and afterwards every command works and nothing was lost: the
/// pending message is received, a new one is sent and received.
fn repair_then_works(r: &Relay, v: &Vars) -> Result<(), String> {
    let messages = |r: &Relay| -> BTreeSet<String> {
        r.mailbox_tree()
            .into_iter()
            .filter(|p| p.ends_with(".json"))
            .collect()
    };
    let before = messages(r);
    let doctor = r.cmd(["doctor"]).run();
    if doctor.code != 65 || !doctor.stderr.contains("relay doctor --repair") {
        return Err(format!(
            "doctor on the damaged index: status {}, stdout {}, stderr {}",
            doctor.code, doctor.stdout, doctor.stderr
        ));
    }
    let repair = r.cmd(["doctor", "--repair"]).run();
    if repair.code != 0 || !repair.stdout.contains("relay.db") {
        return Err(format!(
            "doctor --repair: status {}, stdout {}, stderr {}",
            repair.code, repair.stdout, repair.stderr
        ));
    }
    let after = messages(r);
    if before != after {
        return Err(format!(
            "repair changed the messages: before {before:#?} after {after:#?}"
        ));
    }
    let set_aside = fs::read_dir(r.home())
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("relay.db.corrupt-")
        });
    if !set_aside {
        return Err(format!(
            "the damaged relay.db was not kept\n{}",
            r.listing()
        ));
    }
    let check = r.cmd(["doctor"]).run();
    if check.code != 0 {
        return Err(format!(
            "doctor after repair: {} {}",
            check.code, check.stdout
        ));
    }
    let got = r.cmd(["recv", "a", "--json", "-n", "10"]).run();
    let ids: Vec<String> = got
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|j| j["id"].as_str().map(String::from))
        .collect();
    if got.code != 0 || ids != [v["pending"].clone()] {
        return Err(format!(
            "recv after repair: status {}, ids {ids:?}, want [{}]; {}",
            got.code, v["pending"], got.stderr
        ));
    }
    let ack = r.cmd(["ack", "a", &v["claimed"], &v["pending"]]).run();
    if ack.code != 0 {
        return Err(format!("ack after repair: {} {}", ack.code, ack.stderr));
    }
    let sent = r.cmd(["send", "a", "after repair"]).run();
    let next = r.cmd(["recv", "a"]).run();
    if sent.code != 0 || next.stdout != "after repair\n" {
        return Err(format!(
            "send/recv after repair: {} {} / {} {:?}",
            sent.code, sent.stderr, next.code, next.stdout
        ));
    }
    Ok(())
}

/// A send past a damaged index: delivered, its index row left in the
/// journal, the index itself untouched; `doctor` still reports the damage
/// and after `--repair` the message is indexed and received.
fn sent_past_a_damaged_index(r: &Relay, v: &Vars, out: &Output) -> Result<(), String> {
    let id = out.stdout.trim();
    let file = format!("{id}.json");
    if !r.files("a", "new").contains(&file) {
        return Err(format!("{file} not in new/\n{}", r.listing()));
    }
    let journal = fs::read_to_string(r.path("journal")).unwrap_or_default();
    if !journal.contains(id) {
        return Err(format!("no journal record for {id}: {journal:?}"));
    }
    let doctor = r.cmd(["doctor"]).run();
    if doctor.code == 0 {
        return Err(format!("doctor missed the damage: {}", doctor.stdout));
    }
    let repair = r.cmd(["doctor", "--repair"]).run();
    if repair.code != 0 {
        return Err(format!(
            "doctor --repair: {} {}",
            repair.code, repair.stderr
        ));
    }
    let t = r.cmd(["trace", id, "--json"]).run();
    if t.code != 0 || !t.stdout.contains("pending") {
        return Err(format!(
            "trace after repair: {} {} {}",
            t.code, t.stdout, t.stderr
        ));
    }
    let got = r.cmd(["recv", "a", "-n", "10"]).run();
    if got.code != 0 || !got.stdout.lines().any(|l| l == "hi") {
        return Err(format!("recv after repair: {} {:?}", got.code, got.stdout));
    }
    let _ = v;
    Ok(())
}

/// The claimed message is still in cur/ and the pending one in new/.
fn nothing_lost(r: &Relay, v: &Vars) -> Result<(), String> {
    let cur = r.files("a", "cur");
    let new = r.files("a", "new");
    let want_cur = format!("{}.json", v["claimed"]);
    let want_new = format!("{}.json", v["pending"]);
    if cur.contains(&want_cur) && new.contains(&want_new) {
        Ok(())
    } else {
        Err(format!(
            "messages moved: cur {cur:?} new {new:?}\n{}",
            r.listing()
        ))
    }
}

/// The good message next to a hostile one is received, and the store can
/// be made consistent.
fn received_and_repairable(r: &Relay, _: &Vars, out: &Output) -> Result<(), String> {
    if !out.stdout.lines().any(|l| l == "two") {
        return Err(format!(
            "the good message was not received: {:?}",
            out.stdout
        ));
    }
    for args in [&["doctor", "--repair"][..], &["doctor"][..]] {
        let o = r.cmd(args).run();
        if o.code != 0 {
            return Err(format!(
                "{args:?}: status {}: {} {}",
                o.code, o.stdout, o.stderr
            ));
        }
    }
    Ok(())
}

/// The files outside the home are untouched (already compared) and the
/// symlinked mailbox's messages are still there.
fn outside_untouched(r: &Relay, _: &Vars, _: &Output) -> Result<(), String> {
    let e = r.scratch().join("elsewhere");
    let ok = e.join("new/01JZ0000000000000000000001.json").exists()
        && e.join("cur/01JZ0000000000000000000002.json").exists();
    if ok {
        Ok(())
    } else {
        Err("the symlinked mailbox's messages are gone".into())
    }
}

/// A wildcard send delivers to `a` only: nothing through the symlink.
fn delivered_to_a_only(r: &Relay, v: &Vars, out: &Output) -> Result<(), String> {
    let id = out.stdout.trim();
    let new = r.files("a", "new");
    if !new.contains(&format!("{id}.json")) || new.len() != 2 {
        return Err(format!("a/new: {new:?}"));
    }
    outside_untouched(r, v, out)?;
    if r.scratch()
        .join("elsewhere/new")
        .read_dir()
        .map_or(0, Iterator::count)
        != 1
    {
        return Err("something was delivered through the symlinked mailbox".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The table.

/// 300 characters: one token longer than a file name may be (NAME_MAX 255).
const LONG: &str = "tttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttt";

/// One `#[test]` per row, named by its identifier, so a row can be run
/// and filtered alone: `cargo test --test integration hostile::recv_`.
/// A row is a `Case`, or `as_any_user(Case { .. })`.
macro_rules! hostile {
    ($($name:ident: $case:expr,)*) => {
        $(
            #[test]
            fn $name() {
                check($case);
            }
        )*
    };
}

hostile! {
    // --- traversal and absolute paths ---
    send_subject_dotdot_x: Case {
        name: "send: subject ../x",
        args: &["send", "../x", "hi"],
        code: 65,
        stderr_has: &["'../x'", "'/'"],
        ..Case::default()
    },
    send_subject_a_dotdot_dotdot_b: Case {
        name: "send: subject a/../../b",
        args: &["send", "a/../../b", "hi"],
        code: 65,
        stderr_has: &["'a/../../b'"],
        ..Case::default()
    },
    send_absolute_path_as_subject: Case {
        name: "send: absolute path as subject",
        args: &["send", "/etc/passwd", "hi"],
        code: 65,
        stderr_has: &["'/etc/passwd'"],
        ..Case::default()
    },
    send_subject_dotdot: Case {
        name: "send: subject ..",
        args: &["send", "..", "hi"],
        code: 65,
        stderr_has: &["'..'", "empty token"],
        ..Case::default()
    },
    send_reply_to_dotdot_x: Case {
        name: "send: --reply-to ../x",
        args: &["send", "a", "hi", "--reply-to", "../x"],
        code: 65,
        stderr_has: &["reply-to", "'../x'"],
        ..Case::default()
    },
    send_from_dotdot_dotdot_x: Case {
        name: "send: --from ../../x",
        args: &["send", "a", "hi", "--from", "../../x"],
        code: 65,
        stderr_has: &["sender", "'../../x'"],
        ..Case::default()
    },
    recv_endpoint_dotdot_a: Case {
        name: "recv: endpoint ../a",
        args: &["recv", "../a"],
        code: 65,
        stderr_has: &["'../a'"],
        ..Case::default()
    },
    ack_id_dotdot_x: Case {
        name: "ack: id ../x",
        args: &["ack", "a", "../x"],
        code: 65,
        stderr_has: &["'../x'"],
        ..Case::default()
    },
    ack_absolute_path_as_id: Case {
        name: "ack: absolute path as id",
        args: &["ack", "a", "/etc/passwd"],
        code: 65,
        stderr_has: &["'/etc/passwd'"],
        ..Case::default()
    },
    ack_id_dotdot: Case {
        name: "ack: id ..",
        args: &["ack", "a", ".."],
        code: 65,
        stderr_has: &["'..'"],
        ..Case::default()
    },
    ack_id_of_another_mailbox_s_file: Case {
        name: "ack: id of another mailbox's file",
        args: &["ack", "b", "../../a/cur/{claimed}"],
        code: 65,
        stderr_has: &["invalid message id"],
        ..Case::default()
    },
    nack_id_a_dotdot_dotdot_b: Case {
        name: "nack: id a/../../b",
        args: &["nack", "a", "a/../../b"],
        code: 65,
        stderr_has: &["'a/../../b'"],
        ..Case::default()
    },
    endpoints_add_dotdot_evil: Case {
        name: "endpoints add: ../evil",
        args: &["endpoints", "add", "../evil"],
        code: 65,
        stderr_has: &["'../evil'"],
        ..Case::default()
    },
    endpoints_remove_dotdot_force: Case {
        name: "endpoints remove: .. --force",
        args: &["endpoints", "remove", "..", "--force"],
        code: 65,
        stderr_has: &["'..'"],
        ..Case::default()
    },
    endpoints_remove_absolute_path: Case {
        name: "endpoints remove: absolute path",
        args: &["endpoints", "remove", "{scratch}", "--force"],
        code: 65,
        stderr_has: &["'{scratch}'"],
        ..Case::default()
    },
    dlq_show_id_dotdot_x: Case {
        name: "dlq show: id ../x",
        args: &["dlq", "show", "../x"],
        code: 65,
        stderr_has: &["'../x'"],
        ..Case::default()
    },
    dlq_requeue_absolute_path: Case {
        name: "dlq requeue: absolute path",
        args: &["dlq", "requeue", "/etc/passwd"],
        code: 65,
        stderr_has: &["'/etc/passwd'"],
        ..Case::default()
    },
    dlq_endpoint_dotdot_x: Case {
        name: "dlq: --endpoint ../x",
        args: &["dlq", "--endpoint", "../x"],
        code: 65,
        stderr_has: &["'../x'"],
        ..Case::default()
    },
    trace_id_dotdot_dotdot_x: Case {
        name: "trace: id ../../x",
        args: &["trace", "../../x"],
        code: 65,
        stderr_has: &["'../../x'"],
        ..Case::default()
    },
    breakers_open_endpoint_dotdot_b: Case {
        name: "breakers open: endpoint ../b",
        args: &["breakers", "open", "a", "../b"],
        code: 65,
        stderr_has: &["'../b'"],
        ..Case::default()
    },
    breakers_reset_sender_dotdot_x: Case {
        name: "breakers reset: sender ../x",
        args: &["breakers", "reset", "../x"],
        code: 65,
        stderr_has: &["'../x'"],
        ..Case::default()
    },
    limits_reset_sender_dotdot_x: Case {
        name: "limits reset: sender ../x",
        args: &["limits", "reset", "../x"],
        code: 65,
        stderr_has: &["'../x'"],
        ..Case::default()
    },
    config_validate_a_directory: Case {
        name: "config validate: a directory",
        args: &["config", "validate", "{scratch}"],
        code: 74,
        stderr_has: &["{scratch}"],
        ..Case::default()
    },
    flag_home_is_a_regular_file: Case {
        name: "--home is a regular file",
        setup: Box::new(|r, v| {
            base(r, v);
            write(&r.scratch().join("plain"), b"x");
        }),
        args: &["--home", "{scratch}/plain", "status"],
        code: 74,
        stderr_has: &["{scratch}/plain", "not a directory"],
        ..Case::default()
    },
    flag_home_under_a_regular_file: Case {
        name: "--home under a regular file",
        setup: Box::new(|r, v| {
            base(r, v);
            write(&r.scratch().join("plain"), b"x");
        }),
        args: &["--home", "{scratch}/plain/sub", "status"],
        code: 74,
        stderr_has: &["{scratch}/plain/sub"],
        ..Case::default()
    },
    relay_home_empty: Case {
        name: "RELAY_HOME empty",
        args: &["status"],
        env: &[("RELAY_HOME", "")],
        code: 64,
        stderr_has: &["RELAY_HOME"],
        ..Case::default()
    },
    // --- symlinks ---
    status_home_is_a_symlink: Case {
        name: "status: home is a symlink",
        setup: Box::new(symlinked_home),
        args: &["status"],
        code: 77,
        stderr_has: &["{home}", "symlink"],
        ..Case::default()
    },
    send_home_is_a_symlink: Case {
        name: "send: home is a symlink",
        setup: Box::new(symlinked_home),
        args: &["send", "a", "hi"],
        code: 77,
        stderr_has: &["symlink"],
        ..Case::default()
    },
    config_set_home_is_a_symlink: Case {
        name: "config set: home is a symlink",
        setup: Box::new(symlinked_home),
        args: &["config", "set", "maxPayloadBytes", "10"],
        code: 77,
        stderr_has: &["symlink"],
        ..Case::default()
    },
    send_mailbox_is_a_symlink: Case {
        name: "send: mailbox is a symlink",
        setup: Box::new(symlinked_mailbox),
        args: &["send", "b", "hi"],
        code: 77,
        stderr_has: &["mailboxes/b", "symlink"],
        writes: Writes::Check(outside_untouched),
        ..Case::default()
    },
    recv_mailbox_is_a_symlink: Case {
        name: "recv: mailbox is a symlink",
        setup: Box::new(symlinked_mailbox),
        args: &["recv", "b"],
        code: 77,
        stderr_has: &["mailboxes/b", "symlink"],
        writes: Writes::Check(outside_untouched),
        ..Case::default()
    },
    ack_mailbox_is_a_symlink: Case {
        name: "ack: mailbox is a symlink",
        setup: Box::new(symlinked_mailbox),
        args: &["ack", "b", "{outside}"],
        code: 77,
        stderr_has: &["mailboxes/b", "symlink"],
        writes: Writes::Check(outside_untouched),
        ..Case::default()
    },
    endpoints_remove_force_mailbox_is_a_symlink: Case {
        name: "endpoints remove --force: mailbox is a symlink",
        setup: Box::new(symlinked_mailbox),
        args: &["endpoints", "remove", "b", "--force"],
        code: 77,
        stderr_has: &["mailboxes/b", "symlink"],
        writes: Writes::Check(outside_untouched),
        ..Case::default()
    },
    send_a_symlinked_mailbox_gets_nothing: Case {
        name: "send >: a symlinked mailbox gets nothing",
        setup: Box::new(symlinked_mailbox),
        args: &["send", ">", "hi"],
        code: 0,
        writes: Writes::Check(delivered_to_a_only),
        ..Case::default()
    },
    doctor_mailbox_is_a_symlink: Case {
        name: "doctor: mailbox is a symlink",
        setup: Box::new(symlinked_mailbox),
        args: &["doctor"],
        code: 65,
        stderr_has: &["problem"],
        ..Case::default()
    },
    send_mailbox_tmp_is_a_symlink_out_of_the_home: Case {
        name: "send: mailbox tmp/ is a symlink out of the home",
        setup: then(|r, _| {
            let out = r.scratch().join("outside-tmp");
            mkdirs(&out);
            rm(&r.mailbox("a").join("tmp"));
            ln(&out, &r.mailbox("a").join("tmp"));
        }),
        args: &["send", "a", "hi"],
        code: 77,
        stderr_has: &["mailboxes/a/tmp", "symlink"],
        ..Case::default()
    },
    recv_mailbox_cur_is_a_symlink_out_of_the_home: Case {
        name: "recv: mailbox cur/ is a symlink out of the home",
        setup: then(|r, _| {
            let out = r.scratch().join("outside-cur");
            let cur = r.mailbox("a").join("cur");
            move_all(&cur, &out);
            rm(&cur);
            ln(&out, &cur);
        }),
        args: &["recv", "a"],
        code: 77,
        stderr_has: &["mailboxes/a/cur", "symlink"],
        ..Case::default()
    },
    // --- control characters (NUL cannot be passed in argv) ---
    send_newline_in_subject: Case {
        name: "send: newline in subject",
        args: &["send", "a\nb", "hi"],
        code: 65,
        stderr_has: &["'a\\nb'", "control character"],
        ..Case::default()
    },
    send_tab_in_subject: Case {
        name: "send: tab in subject",
        args: &["send", "a\tb", "hi"],
        code: 65,
        stderr_has: &["'a\\tb'"],
        ..Case::default()
    },
    send_escape_sequence_in_subject: Case {
        name: "send: escape sequence in subject",
        args: &["send", "a\x1b[31m", "hi"],
        code: 65,
        stderr_has: &["\\u{1b}"],
        ..Case::default()
    },
    send_newline_in_from: Case {
        name: "send: newline in --from",
        args: &["send", "a", "hi", "--from", "x\ny"],
        code: 65,
        stderr_has: &["sender", "'x\\ny'"],
        ..Case::default()
    },
    send_escape_in_relay_from: Case {
        name: "send: escape in RELAY_FROM",
        args: &["send", "a", "hi"],
        env: &[("RELAY_FROM", "ag\x1b]0;pwned\x07")],
        code: 65,
        stderr_has: &["sender", "\\u{1b}"],
        ..Case::default()
    },
    send_escape_in_trace_id: Case {
        name: "send: escape in --trace-id",
        args: &["send", "a", "hi", "--trace-id", "t\x1b[2J"],
        code: 65,
        stderr_has: &["trace id", "\\u{1b}"],
        ..Case::default()
    },
    send_newline_in_relay_trace_id: Case {
        name: "send: newline in RELAY_TRACE_ID",
        args: &["send", "a", "hi"],
        env: &[("RELAY_TRACE_ID", "t\nx")],
        code: 65,
        stderr_has: &["trace id", "'t\\nx'"],
        ..Case::default()
    },
    send_space_in_trace_id: Case {
        name: "send: space in --trace-id",
        args: &["send", "a", "hi", "--trace-id", "a b"],
        code: 65,
        stderr_has: &["trace id", "'a b'"],
        ..Case::default()
    },
    send_newline_in_idempotency_key: Case {
        name: "send: newline in --idempotency-key",
        args: &["send", "a", "hi", "--idempotency-key", "k\n"],
        code: 65,
        stderr_has: &["idempotency key", "'k\\n'"],
        ..Case::default()
    },
    send_tab_in_reply_to: Case {
        name: "send: tab in --reply-to",
        args: &["send", "a", "hi", "--reply-to", "r\tx"],
        code: 65,
        stderr_has: &["reply-to", "'r\\tx'"],
        ..Case::default()
    },
    send_invalid_utf_8_in_argv: Case {
        name: "send: invalid UTF-8 in argv",
        args: &["send", "a{ff}", "hi"],
        code: 64,
        stderr_has: &["UTF-8"],
        ..Case::default()
    },
    recv_newline_in_endpoint: Case {
        name: "recv: newline in endpoint",
        args: &["recv", "a\n"],
        code: 65,
        stderr_has: &["'a\\n'"],
        ..Case::default()
    },
    ack_newline_in_id: Case {
        name: "ack: newline in id",
        args: &["ack", "a", "01\nX"],
        code: 65,
        stderr_has: &["'01\\nX'"],
        ..Case::default()
    },
    nack_tab_in_id: Case {
        name: "nack: tab in id",
        args: &["nack", "a", "01\tX"],
        code: 65,
        stderr_has: &["'01\\tX'"],
        ..Case::default()
    },
    trace_newline_in_id: Case {
        name: "trace: newline in id",
        args: &["trace", "x\ny"],
        code: 65,
        stderr_has: &["'x\\ny'"],
        ..Case::default()
    },
    dlq_show_escape_as_id: Case {
        name: "dlq show: escape as id",
        args: &["dlq", "show", "\x1b"],
        code: 65,
        stderr_has: &["\\u{1b}"],
        ..Case::default()
    },
    breakers_reset_newline_in_sender: Case {
        name: "breakers reset: newline in sender",
        args: &["breakers", "reset", "a\n"],
        code: 65,
        stderr_has: &["'a\\n'"],
        ..Case::default()
    },
    limits_reset_escape_in_sender: Case {
        name: "limits reset: escape in sender",
        args: &["limits", "reset", "a\x1b"],
        code: 65,
        stderr_has: &["\\u{1b}"],
        ..Case::default()
    },
    endpoints_add_del_character: Case {
        name: "endpoints add: DEL character",
        args: &["endpoints", "add", "a\x7f"],
        code: 65,
        stderr_has: &["\\u{7f}"],
        ..Case::default()
    },
    config_get_newline_in_key: Case {
        name: "config get: newline in key",
        args: &["config", "get", "a\nb"],
        code: 64,
        stderr_has: &["'a\\nb'"],
        ..Case::default()
    },
    events_escape_sequence_as_kind: Case {
        name: "events: escape sequence as --kind",
        args: &["events", "--kind", "\x1b[2J"],
        code: 64,
        stderr_has: &["\\u{1b}"],
        ..Case::default()
    },
    dlq_nack_reason_with_an_escape_sequence_is_not_printed_raw: Case {
        name: "dlq: nack reason with an escape sequence is not printed raw",
        setup: then(|r, v| {
            r.cmd(["nack", "a", &v["claimed"], "--reason", "bad\x1b[2Jthing"])
                .success();
        }),
        args: &["dlq"],
        code: 0,
        ..Case::default()
    },
    send_129_character_trace_id: Case {
        name: "send: 129-character trace id",
        args: &[
            "send",
            "a",
            "hi",
            "--trace-id",
            "ttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttt",
        ],
        code: 65,
        stderr_has: &["trace id"],
        ..Case::default()
    },
    nack_5000_byte_reason: Case {
        name: "nack: 5000-byte reason",
        setup: then(|r, v| {
            v.insert("reason", "r".repeat(5000));
            let _ = r;
        }),
        args: &["nack", "a", "{claimed}", "--reason", "{reason}"],
        code: 65,
        stderr_has: &["--reason"],
        ..Case::default()
    },
    // --- sizes ---
    send_17_tokens: Case {
        name: "send: 17 tokens",
        args: &["send", "a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a", "hi"],
        code: 65,
        stderr_has: &["17 tokens"],
        ..Case::default()
    },
    endpoints_add_300_character_token: Case {
        name: "endpoints add: 300-character token",
        args: &["endpoints", "add", LONG],
        code: 65,
        stderr_has: &["ttttt"],
        ..Case::default()
    },
    send_300_character_token: Case {
        name: "send: 300-character token",
        args: &["send", LONG, "hi"],
        code: 65,
        stderr_has: &["ttttt"],
        ..Case::default()
    },
    send_oversize_argument: Case {
        name: "send: oversize argument",
        setup: Box::new(small_cap),
        args: &["send", "a", "{x101}"],
        code: 65,
        stderr_has: &["101 bytes", "limit of 100"],
        ..Case::default()
    },
    send_oversize_file: Case {
        name: "send: oversize --file",
        setup: Box::new(small_cap),
        args: &["send", "a", "--file", "{scratch}/big.txt"],
        code: 65,
        stderr_has: &["{scratch}/big.txt", "limit of 100"],
        ..Case::default()
    },
    send_oversize_stdin: Case {
        name: "send: oversize stdin",
        setup: Box::new(small_cap),
        args: &["send", "a"],
        stdin: Some(vec![b'x'; 5000]),
        code: 65,
        stderr_has: &["stdin", "limit of 100"],
        ..Case::default()
    },
    send_endless_file_dev_zero: Case {
        name: "send: endless --file /dev/zero",
        setup: Box::new(small_cap),
        args: &["send", "a", "--file", "/dev/zero"],
        code: 65,
        stderr_has: &["/dev/zero", "limit of 100"],
        ..Case::default()
    },
    send_stdin_one_byte_over_the_default_1_mib_cap: Case {
        name: "send: stdin one byte over the default 1 MiB cap",
        args: &["send", "a"],
        stdin: Some(vec![b'x'; 1_048_577]),
        code: 65,
        stderr_has: &["stdin", "1048576"],
        ..Case::default()
    },
    // --- payload encoding and sources ---
    send_invalid_utf_8_on_stdin: Case {
        name: "send: invalid UTF-8 on stdin",
        args: &["send", "a"],
        stdin: Some(b"ab\xff\xfecd".to_vec()),
        code: 65,
        stderr_has: &["not valid UTF-8", "offset 2"],
        ..Case::default()
    },
    send_invalid_utf_8_in_file: Case {
        name: "send: invalid UTF-8 in --file",
        setup: then(|r, _| write(&r.scratch().join("bad.txt"), b"ok\xc3\x28")),
        args: &["send", "a", "--file", "{scratch}/bad.txt"],
        code: 65,
        stderr_has: &["not valid UTF-8"],
        ..Case::default()
    },
    send_empty_stdin: Case {
        name: "send: empty stdin",
        args: &["send", "a"],
        stdin: Some(Vec::new()),
        code: 65,
        stderr_has: &["empty"],
        ..Case::default()
    },
    send_file_is_a_directory: Case {
        name: "send: --file is a directory",
        args: &["send", "a", "--file", "{scratch}"],
        code: 74,
        stderr_has: &["{scratch}"],
        ..Case::default()
    },
    send_file_does_not_exist: Case {
        name: "send: --file does not exist",
        args: &["send", "a", "--file", "{scratch}/nope"],
        code: 66,
        stderr_has: &["{scratch}/nope", "does not exist"],
        ..Case::default()
    },
    // --- invalid JSON where JSON is required ---
    config_set_value_is_not_json: Case {
        name: "config set: value is not JSON",
        args: &["config", "set", "maxPayloadBytes", "{"],
        code: 78,
        stderr_has: &["'{'", "maxPayloadBytes"],
        ..Case::default()
    },
    config_set_overrides_not_an_object: Case {
        name: "config set: overrides not an object",
        args: &[
            "config",
            "set",
            "reliability.rateLimit.perSenderOverrides",
            "[1]",
        ],
        code: 78,
        stderr_has: &["perSenderOverrides", "[1]"],
        ..Case::default()
    },
    config_set_zero_window: Case {
        name: "config set: zero window",
        args: &["config", "set", "reliability.rateLimit.windowSecs", "0"],
        code: 78,
        stderr_has: &["reliability.rateLimit.windowSecs", "got 0"],
        ..Case::default()
    },
    config_set_shedbackgroundat_above_shedlowat: Case {
        name: "config set: shedBackgroundAt above shedLowAt",
        args: &[
            "config",
            "set",
            "reliability.backpressure.shedBackgroundAt",
            "0.95",
        ],
        code: 78,
        stderr_has: &["shedBackgroundAt (0.95)"],
        ..Case::default()
    },
    config_set_unknown_key: Case {
        name: "config set: unknown key",
        args: &["config", "set", "nonexistent.key", "1"],
        code: 64,
        stderr_has: &["'nonexistent.key'"],
        ..Case::default()
    },
    config_validate_file_with_invalid_json: Case {
        name: "config validate: file with invalid JSON",
        setup: then(|r, _| write(&r.scratch().join("c.json"), b"{\"maxPayloadBytes\": }")),
        args: &["config", "validate", "{scratch}/c.json"],
        code: 78,
        stderr_has: &["{scratch}/c.json", "invalid JSON"],
        ..Case::default()
    },
    send_parent_is_not_json: Case {
        name: "send: --parent is not JSON",
        setup: then(|r, _| write(&r.scratch().join("parent.json"), b"{")),
        args: &["send", "a", "hi", "--parent", "{scratch}/parent.json"],
        code: 65,
        stderr_has: &["--parent {scratch}/parent.json"],
        ..Case::default()
    },
    send_parent_is_json_but_no_envelope: Case {
        name: "send: --parent is JSON but no envelope",
        setup: then(|r, _| write(&r.scratch().join("parent.json"), b"{\"a\":1}")),
        args: &["send", "a", "hi", "--parent", "{scratch}/parent.json"],
        code: 65,
        stderr_has: &["{scratch}/parent.json", "not a relay envelope"],
        ..Case::default()
    },
    send_parent_does_not_exist: Case {
        name: "send: --parent does not exist",
        args: &["send", "a", "hi", "--parent", "{scratch}/nope.json"],
        code: 66,
        stderr_has: &["{scratch}/nope.json"],
        ..Case::default()
    },
    send_relay_budget_truncated_json: Case {
        name: "send: RELAY_BUDGET truncated JSON",
        args: &["send", "a", "hi"],
        env: &[("RELAY_BUDGET", "{\"hopCount\":")],
        code: 65,
        stderr_has: &["RELAY_BUDGET"],
        ..Case::default()
    },
    send_relay_budget_is_an_array: Case {
        name: "send: RELAY_BUDGET is an array",
        args: &["send", "a", "hi"],
        env: &[("RELAY_BUDGET", "[]")],
        code: 65,
        stderr_has: &["RELAY_BUDGET"],
        ..Case::default()
    },
    send_relay_budget_negative_hop_count: Case {
        name: "send: RELAY_BUDGET negative hop count",
        args: &["send", "a", "hi"],
        env: &[(
            "RELAY_BUDGET",
            "{\"hopCount\":-1,\"maxHops\":5,\"ttl\":1,\"callBudgetRemaining\":1}",
        )],
        code: 65,
        stderr_has: &["RELAY_BUDGET", "-1"],
        ..Case::default()
    },
    recv_foreign_envelope_with_ttl_beyond_i64_in_new: Case {
        name: "recv: foreign envelope with ttl beyond i64 in new/",
        setup: then(|r, _| {
            let mut e =
                dorkos_envelope("01JZ0000000000000000000009", "a", &serde_json::json!(1));
            e["budget"]["ttl"] = serde_json::json!(u64::MAX);
            r.write_file(
                "mailboxes/a/new/01JZ0000000000000000000009.json",
                e.to_string(),
            );
        }),
        args: &["recv", "a", "-n", "5"],
        code: 0,
        writes: Writes::Check(received_and_repairable),
        ..Case::default()
    },
    // --- every invalid config knob, each under a different subcommand ---
    config_json_zero_rate_window_send: Case {
        name: "config.json: zero rate window (send)",
        setup: config(r#"{"reliability":{"rateLimit":{"windowSecs":0}}}"#),
        args: &["send", "a", "hi"],
        code: 78,
        stderr_has: &["config.json", "reliability.rateLimit.windowSecs", "got 0"],
        ..Case::default()
    },
    config_json_negative_maxperwindow_recv: Case {
        name: "config.json: negative maxPerWindow (recv)",
        setup: config(r#"{"reliability":{"rateLimit":{"maxPerWindow":-5}}}"#),
        args: &["recv", "a"],
        code: 78,
        stderr_has: &["config.json", "maxPerWindow", "-5"],
        ..Case::default()
    },
    config_json_string_for_a_bool_ack: Case {
        name: "config.json: string for a bool (ack)",
        setup: config(r#"{"reliability":{"rateLimit":{"enabled":"yes"}}}"#),
        args: &["ack", "a", "{claimed}"],
        code: 78,
        stderr_has: &["reliability.rateLimit.enabled", "\"yes\""],
        ..Case::default()
    },
    config_json_ratio_above_1_nack: Case {
        name: "config.json: ratio above 1 (nack)",
        setup: config(r#"{"reliability":{"backpressure":{"pressureWarningAt":1.5}}}"#),
        args: &["nack", "a", "{claimed}"],
        code: 78,
        stderr_has: &["pressureWarningAt", "1.5"],
        ..Case::default()
    },
    config_json_shedbackgroundat_shedlowat_endpoints_add: Case {
        name: "config.json: shedBackgroundAt > shedLowAt (endpoints add)",
        setup: config(
            r#"{"reliability":{"backpressure":{"shedBackgroundAt":0.95,"shedLowAt":0.9}}}"#,
        ),
        args: &["endpoints", "add", "c"],
        code: 78,
        stderr_has: &["shedBackgroundAt (0.95)", "shedLowAt (0.9)"],
        ..Case::default()
    },
    config_json_maxcooldownms_cooldownms_breakers: Case {
        name: "config.json: maxCooldownMs < cooldownMs (breakers)",
        setup: config(
            r#"{"reliability":{"circuitBreaker":{"cooldownMs":60000,"maxCooldownMs":5000}}}"#,
        ),
        args: &["breakers"],
        code: 78,
        stderr_has: &["maxCooldownMs (5000)", "cooldownMs (60000)"],
        ..Case::default()
    },
    config_json_huge_float_payload_cap_limits: Case {
        name: "config.json: huge float payload cap (limits)",
        setup: config(r#"{"maxPayloadBytes":1e300}"#),
        args: &["limits"],
        code: 78,
        stderr_has: &["maxPayloadBytes", "1e+300"],
        ..Case::default()
    },
    config_json_2_64_maxperwindow_status: Case {
        name: "config.json: 2^64 maxPerWindow (status)",
        setup: config(r#"{"reliability":{"rateLimit":{"maxPerWindow":18446744073709551616}}}"#),
        args: &["status"],
        code: 78,
        stderr_has: &["maxPerWindow", "<= 9007199254740991"],
        ..Case::default()
    },
    config_json_reliability_is_an_array_dlq: Case {
        name: "config.json: reliability is an array (dlq)",
        setup: config(r#"{"reliability":[]}"#),
        args: &["dlq"],
        code: 78,
        stderr_has: &["reliability must be an object"],
        ..Case::default()
    },
    config_json_ratelimit_is_a_number_trace: Case {
        name: "config.json: rateLimit is a number (trace)",
        setup: config(r#"{"reliability":{"rateLimit":5}}"#),
        args: &["trace", "{pending}"],
        code: 78,
        stderr_has: &["reliability.rateLimit must be an object"],
        ..Case::default()
    },
    config_json_top_level_is_an_array_events: Case {
        name: "config.json: top level is an array (events)",
        setup: config("[1,2]"),
        args: &["events"],
        code: 78,
        stderr_has: &["top level must be an object"],
        ..Case::default()
    },
    config_json_zero_override_gc: Case {
        name: "config.json: zero override (gc)",
        setup: config(r#"{"reliability":{"rateLimit":{"perSenderOverrides":{"":0}}}}"#),
        args: &["gc"],
        code: 78,
        stderr_has: &["perSenderOverrides", ">= 1"],
        ..Case::default()
    },
    config_json_zero_soft_ratio_doctor_repair: Case {
        name: "config.json: zero soft ratio (doctor --repair)",
        setup: config(r#"{"reliability":{"rateLimit":{"softLimitRatio":0}}}"#),
        args: &["doctor", "--repair"],
        code: 78,
        stderr_has: &["softLimitRatio"],
        ..Case::default()
    },
    config_json_backoff_above_10_serve: Case {
        name: "config.json: backoff above 10 (serve)",
        setup: config(r#"{"reliability":{"circuitBreaker":{"cooldownBackoff":11}}}"#),
        args: &["serve", "--listen", "127.0.0.1:0"],
        code: 78,
        stderr_has: &["cooldownBackoff", "11"],
        ..Case::default()
    },
    config_json_tmp_age_below_60_s_metrics: Case {
        name: "config.json: tmp age below 60 s (metrics)",
        setup: config(r#"{"retention":{"tmpMaxAgeSecs":59}}"#),
        args: &["metrics"],
        code: 78,
        stderr_has: &["retention.tmpMaxAgeSecs", "59"],
        ..Case::default()
    },
    config_json_zero_idempotency_window_send_idempotency_key: Case {
        name: "config.json: zero idempotency window (send --idempotency-key)",
        setup: config(r#"{"idempotency":{"windowSecs":0}}"#),
        args: &["send", "a", "hi", "--idempotency-key", "k"],
        code: 78,
        stderr_has: &["idempotency.windowSecs"],
        ..Case::default()
    },
    config_json_zero_burst_send: Case {
        name: "config.json: zero burst (send)",
        setup: config(r#"{"reliability":{"rateLimit":{"burst":0}}}"#),
        args: &["send", "a", "hi"],
        code: 78,
        stderr_has: &["reliability.rateLimit.burst"],
        ..Case::default()
    },
    config_json_fractional_window_recv: Case {
        name: "config.json: fractional window (recv)",
        setup: config(r#"{"reliability":{"rateLimit":{"windowSecs":1.5}}}"#),
        args: &["recv", "a"],
        code: 78,
        stderr_has: &["windowSecs", "1.5"],
        ..Case::default()
    },
    config_json_null_capacity_endpoints_list: Case {
        name: "config.json: null capacity (endpoints list)",
        setup: config(r#"{"reliability":{"backpressure":{"maxMailboxSize":null}}}"#),
        args: &["endpoints"],
        code: 78,
        stderr_has: &["maxMailboxSize", "null"],
        ..Case::default()
    },
    config_json_nan_is_not_json_send: Case {
        name: "config.json: NaN is not JSON (send)",
        setup: config(r#"{"maxPayloadBytes":NaN}"#),
        args: &["send", "a", "hi"],
        code: 78,
        stderr_has: &["config.json", "invalid JSON"],
        ..Case::default()
    },
    config_json_invalid_utf_8_send: Case {
        name: "config.json: invalid UTF-8 (send)",
        setup: config_bytes(b"\xff\xfe{}"),
        args: &["send", "a", "hi"],
        code: 78,
        stderr_has: &["config.json", "UTF-8"],
        ..Case::default()
    },
    config_json_2_53_failure_threshold_breakers_reset_all: Case {
        name: "config.json: 2^53 failure threshold (breakers reset --all)",
        setup: config(
            r#"{"reliability":{"circuitBreaker":{"failureThreshold":9007199254740992}}}"#,
        ),
        args: &["breakers", "reset", "--all"],
        code: 78,
        stderr_has: &["failureThreshold"],
        ..Case::default()
    },
    config_json_cooldown_below_1_s_breakers_open: Case {
        name: "config.json: cooldown below 1 s (breakers open)",
        setup: config(r#"{"reliability":{"circuitBreaker":{"cooldownMs":999}}}"#),
        args: &["breakers", "open", "x", "a"],
        code: 78,
        stderr_has: &["cooldownMs", "999"],
        ..Case::default()
    },
    config_json_zero_probes_send: Case {
        name: "config.json: zero probes (send)",
        setup: config(r#"{"reliability":{"circuitBreaker":{"halfOpenProbeCount":0}}}"#),
        args: &["send", "a", "hi"],
        code: 78,
        stderr_has: &["halfOpenProbeCount"],
        ..Case::default()
    },
    config_json_negative_successtoclose_ack: Case {
        name: "config.json: negative successToClose (ack)",
        setup: config(r#"{"reliability":{"circuitBreaker":{"successToClose":-1}}}"#),
        args: &["ack", "a", "{claimed}"],
        code: 78,
        stderr_has: &["successToClose", "-1"],
        ..Case::default()
    },
    config_json_headroom_above_1_send: Case {
        name: "config.json: headroom above 1 (send)",
        setup: config(r#"{"reliability":{"backpressure":{"priorityHeadroom":1.01}}}"#),
        args: &["send", "a", "hi", "--priority", "critical"],
        code: 78,
        stderr_has: &["priorityHeadroom", "1.01"],
        ..Case::default()
    },
    config_json_retention_over_10_years_gc_dry_run: Case {
        name: "config.json: retention over 10 years (gc --dry-run)",
        setup: config(r#"{"retention":{"days":3651}}"#),
        args: &["gc", "--dry-run"],
        code: 78,
        stderr_has: &["retention.days", "3651"],
        ..Case::default()
    },
    config_json_number_as_a_string_limits_reset: Case {
        name: "config.json: number as a string (limits reset)",
        setup: config(r#"{"maxPayloadBytes":"1024"}"#),
        args: &["limits", "reset", "--all"],
        code: 78,
        stderr_has: &["maxPayloadBytes", "\"1024\""],
        ..Case::default()
    },
    config_json_section_is_a_string_dlq_requeue: Case {
        name: "config.json: section is a string (dlq requeue)",
        setup: config(r#"{"reliability":{"backpressure":"off"}}"#),
        args: &["dlq", "requeue", "--all"],
        code: 78,
        stderr_has: &["reliability.backpressure must be an object"],
        ..Case::default()
    },
    config_json_is_a_directory_send: Case {
        name: "config.json is a directory (send)",
        setup: then(|r, _| mkdirs(&r.path("config.json"))),
        args: &["send", "a", "hi"],
        code: 74,
        stderr_has: &["{home}/config.json"],
        ..Case::default()
    },
    // --- malformed access rules: fail closed (77), the message dead-lettered ---
    access_rules_not_an_array: Case {
        name: "access rules: not an array",
        setup: rules("{}"),
        args: &["send", "a", "hi"],
        code: 77,
        stderr_has: &["access-rules.json", "not a JSON array"],
        writes: Writes::DeadLetter("a", "access_denied"),
        ..Case::default()
    },
    access_rules_bad_action: Case {
        name: "access rules: bad action",
        setup: rules(r#"[{"from":">","to":">","action":"maybe"}]"#),
        args: &["send", "a", "hi"],
        code: 77,
        stderr_has: &["access-rules.json", "maybe"],
        writes: Writes::DeadLetter("a", "access_denied"),
        ..Case::default()
    },
    access_rules_no_priority: Case {
        name: "access rules: no priority",
        setup: rules(r#"[{"from":"a..b","to":">","action":"allow"}]"#),
        args: &["send", "a", "hi"],
        code: 77,
        stderr_has: &["access-rules.json", "'priority' is missing"],
        writes: Writes::DeadLetter("a", "access_denied"),
        ..Case::default()
    },
    access_rules_fractional_priority: Case {
        name: "access rules: fractional priority",
        setup: rules(r#"[{"from":">","to":">","action":"allow","priority":0.5,"extra":1}]"#),
        args: &["send", "a", "hi"],
        code: 77,
        stderr_has: &["access-rules.json", "0.5"],
        writes: Writes::DeadLetter("a", "access_denied"),
        ..Case::default()
    },
    access_rules_missing_action: Case {
        name: "access rules: missing action",
        setup: rules(r#"[{"from":">","to":">"}]"#),
        args: &["send", "a", "hi"],
        code: 77,
        stderr_has: &["access-rules.json", "action"],
        writes: Writes::DeadLetter("a", "access_denied"),
        ..Case::default()
    },
    access_rules_string_priority: Case {
        name: "access rules: string priority",
        setup: rules(r#"[{"from":">","to":">","action":"allow","priority":"high"}]"#),
        args: &["send", "a", "hi"],
        code: 77,
        stderr_has: &["access-rules.json", "\"high\""],
        writes: Writes::DeadLetter("a", "access_denied"),
        ..Case::default()
    },
    access_rules_empty_file: Case {
        name: "access rules: empty file",
        setup: rules(""),
        args: &["send", "a", "hi"],
        code: 77,
        stderr_has: &["access-rules.json"],
        writes: Writes::DeadLetter("a", "access_denied"),
        ..Case::default()
    },
    access_rules_file_is_a_directory: Case {
        name: "access rules: file is a directory",
        setup: then(|r, _| mkdirs(&r.path("access-rules.json"))),
        args: &["send", "a", "hi"],
        code: 77,
        stderr_has: &["access-rules.json"],
        writes: Writes::DeadLetter("a", "access_denied"),
        ..Case::default()
    },
    // --- damaged relay.db: 74 pointing at doctor --repair; repair loses nothing ---
    relay_db_garbage_send_still_delivers_it_never_opens_the_index: Case {
        name: "relay.db garbage: send still delivers (it never opens the index)",
        setup: Box::new(garbage_db),
        args: &["send", "a", "hi"],
        writes: Writes::Check(sent_past_a_damaged_index),
        ..Case::default()
    },
    relay_db_garbage_recv_claims_nothing: Case {
        name: "relay.db garbage: recv claims nothing",
        setup: Box::new(garbage_db),
        args: &["recv", "a"],
        code: 74,
        stderr_has: &["relay doctor --repair"],
        after: Some(repair_then_works),
        ..Case::default()
    },
    relay_db_garbage_gc_deletes_nothing: Case {
        name: "relay.db garbage: gc deletes nothing",
        setup: Box::new(garbage_db),
        args: &["gc"],
        code: 74,
        stderr_has: &["relay doctor --repair"],
        after: Some(nothing_lost),
        ..Case::default()
    },
    relay_db_truncated_ack_keeps_the_file: Case {
        name: "relay.db truncated: ack keeps the file",
        setup: Box::new(truncated_db),
        args: &["ack", "a", "{claimed}"],
        code: 74,
        stderr_has: &["relay doctor --repair"],
        after: Some(repair_then_works),
        ..Case::default()
    },
    relay_db_truncated_nack_keeps_the_file: Case {
        name: "relay.db truncated: nack keeps the file",
        setup: Box::new(truncated_db),
        args: &["nack", "a", "{claimed}"],
        code: 74,
        stderr_has: &["relay doctor --repair"],
        ..Case::default()
    },
    relay_db_truncated_status: Case {
        name: "relay.db truncated: status",
        setup: Box::new(truncated_db),
        args: &["status"],
        code: 74,
        stderr_has: &["{home}/relay.db", "relay doctor --repair"],
        after: Some(repair_then_works),
        ..Case::default()
    },
    relay_db_and_wal_truncated_send_still_delivers: Case {
        name: "relay.db and WAL truncated: send still delivers",
        setup: Box::new(truncated_db_and_wal),
        args: &["send", "a", "hi"],
        writes: Writes::Check(sent_past_a_damaged_index),
        ..Case::default()
    },
    relay_db_garbage_doctor_without_repair: Case {
        name: "relay.db garbage: doctor without --repair",
        setup: Box::new(garbage_db),
        args: &["doctor"],
        code: 65,
        stderr_has: &["relay doctor --repair"],
        ..Case::default()
    },
    relay_db_is_a_directory_send_still_delivers: Case {
        name: "relay.db is a directory: send still delivers",
        setup: then(|r, _| {
            remove_wal(r);
            rm(&r.path("relay.db"));
            mkdirs(&r.path("relay.db"));
        }),
        args: &["send", "a", "hi"],
        writes: Writes::Check(sent_past_a_damaged_index),
        ..Case::default()
    },
    // --- broken mailbox directories (the faults root cannot ignore) ---
    send_tmp_missing: Case {
        name: "send: tmp/ missing",
        setup: then(|r, _| rm(&r.mailbox("a").join("tmp"))),
        args: &["send", "a", "hi"],
        code: 74,
        stderr_has: &["{home}/mailboxes/a/tmp"],
        ..Case::default()
    },
    send_tmp_is_a_regular_file: Case {
        name: "send: tmp/ is a regular file",
        setup: then(|r, _| dir_to_file(&r.mailbox("a").join("tmp"))),
        args: &["send", "a", "hi"],
        code: 74,
        stderr_has: &["{home}/mailboxes/a/tmp", "not a directory"],
        ..Case::default()
    },
    send_new_is_a_regular_file_not_an_endpoint_any_more: Case {
        name: "send: new/ is a regular file (not an endpoint any more)",
        setup: then(|r, _| dir_to_file(&r.mailbox("b").join("new"))),
        args: &["send", "b", "hi"],
        code: 69,
        stderr_has: &["'b'"],
        writes: Writes::DeadLetter("b", "no_match"),
        ..Case::default()
    },
    config_set_locks_is_a_regular_file: Case {
        name: "config set: locks/ is a regular file",
        setup: then(|r, _| {
            rm(&r.path("locks"));
            write(&r.path("locks"), b"x");
        }),
        args: &["config", "set", "maxPayloadBytes", "5"],
        code: 74,
        stderr_has: &["{home}/locks"],
        ..Case::default()
    },
    recv_cur_is_a_regular_file: Case {
        name: "recv: cur/ is a regular file",
        setup: then(|r, _| dir_to_file(&r.mailbox("a").join("cur"))),
        args: &["recv", "a"],
        code: 74,
        stderr_has: &["{home}/mailboxes/a/"],
        ..Case::default()
    },
    recv_cur_missing: Case {
        name: "recv: cur/ missing",
        setup: then(|r, _| {
            let cur = r.mailbox("a").join("cur");
            move_all(&cur, &r.scratch().join("saved-cur"));
            rm(&cur);
        }),
        args: &["recv", "a"],
        code: 74,
        stderr_has: &["{home}/mailboxes/a/cur"],
        ..Case::default()
    },
    nack_failed_is_a_regular_file: Case {
        name: "nack: failed/ is a regular file",
        setup: then(|r, _| dir_to_file(&r.mailbox("a").join("failed"))),
        args: &["nack", "a", "{claimed}"],
        code: 74,
        stderr_has: &["{home}/mailboxes/a/failed", "not a directory"],
        after: Some(nothing_lost),
        ..Case::default()
    },
    nack_failed_missing: Case {
        name: "nack: failed/ missing",
        setup: then(|r, _| rm(&r.mailbox("a").join("failed"))),
        args: &["nack", "a", "{claimed}"],
        code: 74,
        stderr_has: &["{home}/mailboxes/a/failed"],
        ..Case::default()
    },
    home_is_a_regular_file: Case {
        name: "home is a regular file",
        setup: Box::new(|r, _| write(&r.home(), b"x")),
        args: &["status"],
        code: 74,
        stderr_has: &["{home}", "not a directory"],
        ..Case::default()
    },
    mailboxes_is_a_regular_file: Case {
        name: "mailboxes/ is a regular file",
        setup: then(|r, _| {
            rm(&r.path("mailboxes"));
            write(&r.path("mailboxes"), b"x");
        }),
        args: &["send", "a", "hi"],
        code: 74,
        stderr_has: &["{home}/mailboxes", "not a directory"],
        ..Case::default()
    },
    // --- serve ---
    serve_non_loopback_without_allow_remote: Case {
        name: "serve: non-loopback without --allow-remote",
        args: &["serve", "--listen", "0.0.0.0:0"],
        code: 64,
        stderr_has: &["--allow-remote"],
        ..Case::default()
    },
    serve_allow_remote_with_an_empty_token: Case {
        name: "serve: --allow-remote with an empty token",
        args: &["serve", "--allow-remote", "--listen", "0.0.0.0:0"],
        env: &[("RELAY_SERVE_TOKEN", "")],
        code: 64,
        stderr_has: &["RELAY_SERVE_TOKEN"],
        ..Case::default()
    },
    serve_port_already_in_use: Case {
        name: "serve: port already in use",
        setup: Box::new(port_in_use),
        args: &["serve", "--listen", "127.0.0.1:{port}"],
        code: 74,
        stderr_has: &["127.0.0.1:{port}"],
        ..Case::default()
    },
    serve_unparsable_address: Case {
        name: "serve: unparsable address",
        args: &["serve", "--listen", "localhost:http"],
        code: 64,
        stderr_has: &["localhost:http"],
        ..Case::default()
    },
    // --- numbers out of range on the command line ---
    recv_n_0: Case {
        name: "recv: -n 0",
        args: &["recv", "a", "-n", "0"],
        code: 64,
        stderr_has: &["'0'"],
        ..Case::default()
    },
    send_ttl_0s: Case {
        name: "send: --ttl 0s",
        args: &["send", "a", "hi", "--ttl", "0s"],
        code: 64,
        stderr_has: &["'0s'"],
        ..Case::default()
    },
    events_since_beyond_any_clock: Case {
        name: "events: --since beyond any clock",
        args: &["events", "--since", "99999999999999d"],
        code: 64,
        stderr_has: &["99999999999999d", "too large"],
        ..Case::default()
    },
    dlq_purge_older_than_1e999d: Case {
        name: "dlq purge: --older-than 1e999d",
        args: &["dlq", "purge", "--older-than", "1e999d", "--yes"],
        code: 64,
        stderr_has: &["1e999d"],
        ..Case::default()
    },
    // Permission bits only stop writes for a non-root user.
    send_new_read_only_chmod_500: as_any_user(Case {
        name: "send: new/ read-only (chmod 500)",
        setup: then(|r, _| chmod(&r.mailbox("a").join("new"), 0o500)),
        args: &["send", "a", "hi"],
        code: 74,
        stderr_has: &["{home}/mailboxes/a/new"],
        ..Case::default()
    }),
    recv_cur_read_only_chmod_500: as_any_user(Case {
        name: "recv: cur/ read-only (chmod 500)",
        setup: then(|r, _| chmod(&r.mailbox("a").join("cur"), 0o500)),
        args: &["recv", "a"],
        code: 74,
        stderr_has: &["{home}/mailboxes/a/"],
        ..Case::default()
    }),
    send_tmp_read_only_chmod_500: as_any_user(Case {
        name: "send: tmp/ read-only (chmod 500)",
        setup: then(|r, _| chmod(&r.mailbox("a").join("tmp"), 0o500)),
        args: &["send", "a", "hi"],
        code: 74,
        stderr_has: &["{home}/mailboxes/a/tmp/"],
        ..Case::default()
    }),
}

/// A row about permission bits, which do not stop root: relay runs without
/// root's DAC override (`Cmd::without_dac_override`), so the row runs and is
/// judged as root too (CI runs as root).
fn as_any_user(case: Case) -> Case {
    Case {
        drop_dac_override: true,
        ..case
    }
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------
// The runner.

fn subst(s: &str, v: &Vars) -> String {
    let mut out = s.to_string();
    for (k, val) in v {
        out = out.replace(&format!("{{{k}}}"), val);
    }
    out
}

fn arg(s: &str, v: &Vars) -> OsString {
    let text = subst(s, v);
    let mut bytes = Vec::new();
    for (i, part) in text.split("{ff}").enumerate() {
        if i > 0 {
            bytes.push(0xff);
        }
        bytes.extend_from_slice(part.as_bytes());
    }
    OsStr::from_bytes(&bytes).to_owned()
}

/// The home's listing without `relay.db*`, `locks/` and directory sizes,
/// plus every path beside the home in the scratch directory.
fn snapshot(r: &Relay) -> BTreeSet<String> {
    let mut rows: BTreeSet<String> = r
        .listing()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                // The index and its bookkeeping: the journal, the state file.
                [p, ..]
                    if ["relay.db", "locks", "journal", "state."]
                        .iter()
                        .any(|i| p.starts_with(i)) =>
                {
                    None
                }
                [p, "dir", mode, _] => Some(format!("home/{p} dir {mode}")),
                _ => Some(format!("home/{}", l.trim())),
            }
        })
        .collect();
    walk_outside(r.scratch(), r.scratch(), &mut rows);
    rows
}

fn walk_outside(root: &Path, dir: &Path, rows: &mut BTreeSet<String>) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        if rel == "home" {
            continue;
        }
        let Ok(md) = fs::symlink_metadata(&path) else {
            continue;
        };
        if md.is_dir() {
            rows.insert(format!("{rel}/"));
            walk_outside(root, &path, rows);
        } else {
            rows.insert(format!("{rel} {}", md.len()));
        }
    }
}

/// Runs one row; the first assertion that fails.
fn run(case: &Case) -> Result<(), String> {
    let r = Relay::new();
    let mut v: Vars = HashMap::new();
    v.insert("home", r.home().display().to_string());
    v.insert("scratch", r.scratch().display().to_string());
    (case.setup)(&r, &mut v);
    let before = snapshot(&r);
    let mut cmd = r.cmd(case.args.iter().map(|a| arg(a, &v)));
    if case.drop_dac_override {
        cmd = cmd.without_dac_override();
    }
    for (k, val) in case.env {
        cmd = cmd.env(k, arg(val, &v));
    }
    if let Some(bytes) = &case.stdin {
        cmd = cmd.stdin(bytes.clone());
    }
    let out = cmd.run();
    let show = |msg: String| {
        format!(
            "{msg}\n    status {}, stdout {:?}\n    stderr {:?}",
            out.code, out.stdout, out.stderr
        )
    };
    if out.code != case.code {
        return Err(show(format!(
            "exit status {}, want {}",
            out.code, case.code
        )));
    }
    for needle in case.stderr_has {
        let needle = subst(needle, &v);
        if !out.stderr.contains(&needle) {
            return Err(show(format!("stderr lacks {needle:?}")));
        }
    }
    if out.stderr.contains("panicked") {
        return Err(show("relay panicked".into()));
    }
    for (what, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        if text.contains('\u{1b}') || text.contains('\u{7f}') || text.contains('\r') {
            return Err(show(format!("raw control character in {what}")));
        }
    }
    let after = snapshot(&r);
    let added: Vec<&String> = after.difference(&before).collect();
    let removed: Vec<&String> = before.difference(&after).collect();
    match &case.writes {
        Writes::Nothing => {
            if !added.is_empty() || !removed.is_empty() {
                return Err(show(format!(
                    "the command changed files: added {added:#?}, removed {removed:#?}"
                )));
            }
        }
        Writes::DeadLetter(ep, code) => {
            let prefix = format!("home/mailboxes/{ep}/failed/");
            let ok = removed.is_empty()
                && added.len() == 2
                && added.iter().all(|a| a.starts_with(&prefix));
            if !ok {
                return Err(show(format!(
                    "want exactly one dead letter in {prefix}: added {added:#?}, removed {removed:#?}"
                )));
            }
            let reason = r
                .files(ep, "failed")
                .into_iter()
                .find(|f| f.ends_with(".reason.json"));
            let json = reason.map(|f| r.read_json(&format!("mailboxes/{ep}/failed/{f}")));
            if json.as_ref().map(|j| j["code"] != *code).unwrap_or(true) {
                return Err(show(format!("dead letter code is not {code}: {json:?}")));
            }
        }
        Writes::Check(f) => f(&r, &v, &out).map_err(show)?,
    }
    if let Some(f) = case.after {
        f(&r, &v)?;
    }
    Ok(())
}

/// Runs one row as its own test, its assertions enforced.
fn check(case: Case) {
    if let Err(e) = run(&case) {
        panic!("[{}] {e}", case.name);
    }
}

/// A TTL past i64::MAX (a foreign writer's "never expires") is accepted and
/// indexed, not refused half-way: the index clamps what SQLite cannot hold.
#[test]
fn a_ttl_beyond_i64_is_accepted_and_indexed() {
    let r = Relay::new();
    r.add(&["a"]);
    let id = r
        .cmd(["send", "a", "hi"])
        .env("RELAY_BUDGET", HUGE_TTL_BUDGET)
        .success()
        .id();
    r.cmd(["doctor"]).success();
    let got = r.cmd(["recv", "a", "--json"]).success().json();
    assert_eq!(got["id"], id.as_str());
    assert_eq!(got["budget"]["ttl"], u64::MAX);
}
