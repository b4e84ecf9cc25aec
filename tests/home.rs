//! The relay home: created 0700/0600 whatever the umask, and refused (77)
//! when it or a mailbox is a symlink or world-writable.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use crate::harness::Relay;

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Every (path, mode) under `dir` whose mode is not 0700 for directories
/// and 0600 for files.
fn wrong_modes(dir: &Path, out: &mut Vec<String>) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let Ok(md) = fs::symlink_metadata(&path) else {
            continue;
        };
        let mode = md.mode() & 0o7777;
        let want = if md.is_dir() { 0o700 } else { 0o600 };
        if mode != want {
            out.push(format!("{} {mode:o}", path.display()));
        }
        if md.is_dir() {
            wrong_modes(&path, out);
        }
    }
}

#[test]
fn created_dirs_are_0700_and_files_0600_even_with_umask_000() {
    let r = Relay::new();
    let run = |args: &[&str]| r.cmd(args).umask(0o000).success();
    run(&["endpoints", "add", "a.x", "a.y"]);
    let id = run(&["send", "a.*", "one"]).id();
    run(&["send", "a.x", "two"]);
    run(&["recv", "a.x", "-n", "2"]);
    run(&["nack", "a.x", &id, "--reason", "test"]);
    r.cmd(["send", "nobody", "x"]).umask(0o000).code(69);

    let home = r.home();
    let mode = fs::metadata(&home).map(|m| m.mode() & 0o7777).unwrap_or(0);
    assert_eq!(mode, 0o700, "home mode {mode:o}");
    let mut wrong = Vec::new();
    wrong_modes(&home, &mut wrong);
    assert!(wrong.is_empty(), "wrong modes: {wrong:#?}\n{}", r.listing());
    assert!(r.path("relay.db").exists(), "{}", r.listing());
    assert_eq!(r.files("a.x", "failed").len(), 2);
}

#[test]
fn missing_parents_of_the_home_are_created_private() {
    let r = Relay::new();
    let home = r.scratch().join("deep/er/home");
    r.cmd(["endpoints", "add", "a"])
        .env("RELAY_HOME", &home)
        .umask(0o000)
        .success();
    for p in [r.scratch().join("deep"), r.scratch().join("deep/er"), home] {
        let mode = fs::metadata(&p).map(|m| m.mode() & 0o7777).unwrap_or(0);
        assert_eq!(mode, 0o700, "{} mode {mode:o}", p.display());
    }
}

#[test]
fn home_that_is_a_symlink_is_refused_with_77() {
    let r = Relay::new();
    let real = r.scratch().join("real");
    fs::create_dir(&real).unwrap_or_default();
    chmod(&real, 0o700);
    symlink(&real, r.home()).unwrap_or_default();
    r.cmd(["endpoints", "add", "a"])
        .code(77)
        .stderr_has(&["symlink", &r.home().display().to_string()]);
    r.cmd(["send", "a", "x"]).code(77);
    r.cmd(["recv", "a"]).code(77);
    assert_eq!(fs::read_dir(&real).map(Iterator::count).unwrap_or(99), 0);
}

#[test]
fn world_writable_home_is_refused_with_77() {
    let r = Relay::new();
    fs::create_dir(r.home()).unwrap_or_default();
    chmod(&r.home(), 0o777);
    r.cmd(["endpoints", "add", "a"])
        .code(77)
        .stderr_has(&["world-writable", "chmod o-w"]);
    r.cmd(["send", "a", "x"]).code(77);
    assert_eq!(fs::read_dir(r.home()).map(Iterator::count).unwrap_or(99), 0);
}

#[test]
fn world_writable_mailboxes_dir_is_refused_with_77() {
    let r = Relay::new();
    r.add(&["a"]);
    chmod(&r.path("mailboxes"), 0o777);
    let before = r.listing();
    r.cmd(["send", "a", "x"])
        .code(77)
        .stderr_has(&["world-writable"]);
    r.cmd(["recv", "a"]).code(77);
    assert_eq!(r.listing(), before);
}

#[test]
fn mailbox_that_is_a_symlink_is_refused_by_recv_with_77() {
    let r = Relay::new();
    r.add(&["a"]);
    let outside = r.scratch().join("outside");
    for sub in ["tmp", "new", "cur", "failed"] {
        fs::create_dir_all(outside.join(sub)).unwrap_or_default();
    }
    fs::write(outside.join("new/01JZ0000000000000000000000.json"), "{}").unwrap_or_default();
    symlink(&outside, r.mailbox("sym")).unwrap_or_default();
    r.cmd(["recv", "sym"]).code(77).stderr_has(&["symlink"]);
    assert_eq!(
        fs::read_dir(outside.join("new"))
            .map(Iterator::count)
            .unwrap_or(0),
        1
    );
}

#[test]
fn mailbox_that_is_a_symlink_or_world_writable_is_refused_by_send_with_77() {
    let r = Relay::new();
    r.add(&["a", "open"]);
    let outside = r.scratch().join("outside");
    for sub in ["tmp", "new", "cur", "failed"] {
        fs::create_dir_all(outside.join(sub)).unwrap_or_default();
    }
    symlink(&outside, r.mailbox("sym")).unwrap_or_default();
    chmod(&r.mailbox("open"), 0o777);
    r.cmd(["send", "sym", "x"])
        .code(77)
        .stderr_has(&["symlink"]);
    r.cmd(["send", "open", "x"])
        .code(77)
        .stderr_has(&["world-writable"]);
    assert_eq!(
        fs::read_dir(outside.join("new"))
            .map(Iterator::count)
            .unwrap_or(99),
        0
    );
    assert!(r.files("open", "new").is_empty());
}

#[test]
fn endpoints_add_over_a_symlinked_mailbox_is_refused_with_77() {
    let r = Relay::new();
    r.add(&["a"]);
    let outside = r.scratch().join("outside");
    for sub in ["tmp", "new", "cur", "failed"] {
        fs::create_dir_all(outside.join(sub)).unwrap_or_default();
    }
    symlink(&outside, r.mailbox("sym")).unwrap_or_default();
    r.cmd(["endpoints", "add", "sym"])
        .code(77)
        .stderr_has(&["symlink"]);
}
