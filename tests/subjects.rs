//! Subject validation (SPEC §1): every bad subject, pattern, endpoint name or
//! sender exits 65, names the bad value, and changes nothing on disk.

use crate::harness::{BIN, Relay};

/// A world with one endpoint, so the home already exists and any later
/// change on disk is the command's doing.
fn world() -> Relay {
    let r = Relay::new();
    r.add(&["ok.ep"]);
    r
}

/// Runs `args`, expects 65 with `needle` (the bad value, quoted) on stderr,
/// and nothing changed under the home.
#[track_caller]
fn rejects(r: &Relay, args: &[&str], needle: &str) {
    let before = r.listing();
    r.cmd(args).code(65).stderr_has(&[needle]);
    assert_eq!(r.listing(), before, "{args:?} changed the disk");
}

#[test]
fn empty_subject() {
    let r = world();
    rejects(&r, &["send", "", "x"], "invalid subject ''");
    rejects(&r, &["endpoints", "add", ""], "invalid endpoint ''");
}

#[test]
fn empty_token() {
    let r = world();
    for bad in [".a", "a.", "a..b", "ok..ep"] {
        rejects(&r, &["send", bad, "x"], &format!("'{bad}'"));
        rejects(&r, &["endpoints", "add", bad], &format!("'{bad}'"));
    }
    let out = r.cmd(["send", "a..b", "x"]).code(65);
    out.stderr_has(&["empty token"]);
}

#[test]
fn dot_dot() {
    let r = world();
    for bad in ["..", "...", "a..", "..b"] {
        rejects(&r, &["send", bad, "x"], &format!("'{bad}'"));
        rejects(&r, &["endpoints", "add", bad], &format!("'{bad}'"));
        rejects(&r, &["recv", bad], &format!("'{bad}'"));
    }
}

#[test]
fn slash() {
    let r = world();
    for bad in ["a/b", "../escape", "/abs", "ok.ep/../x"] {
        rejects(&r, &["send", bad, "x"], &format!("'{bad}'"));
        rejects(&r, &["endpoints", "add", bad], &format!("'{bad}'"));
        rejects(&r, &["recv", bad], &format!("'{bad}'"));
    }
    assert!(!r.scratch().join("escape").exists());
    assert!(!r.home().join("escape").exists());
}

/// NUL cannot reach relay through argv (exec takes C strings; the unit test
/// in `src/subject.rs` covers `a\0b`), so this checks that and then the
/// same rejection path with other control characters, which can.
#[test]
fn nul_and_control_characters() {
    let r = world();
    let spawn = std::process::Command::new(BIN)
        .args(["send", "a\0b", "x"])
        .env("RELAY_HOME", r.home())
        .output();
    assert!(spawn.is_err(), "argv carried a NUL byte: {spawn:?}");
    for bad in ["a\u{1}b", "a\nb", "ok.ep\t", "a\u{7f}"] {
        rejects(&r, &["send", bad, "x"], "control character");
        rejects(&r, &["endpoints", "add", bad], "control character");
    }
    rejects(&r, &["send", "a\u{1}b", "x"], "'a\\u{1}b'");
}

#[test]
fn more_than_16_tokens() {
    let r = world();
    let seventeen = vec!["t"; 17].join(".");
    rejects(&r, &["send", &seventeen, "x"], &format!("'{seventeen}'"));
    rejects(&r, &["endpoints", "add", &seventeen], "17 tokens");
    let pattern = format!("{}.>", vec!["t"; 16].join("."));
    rejects(&r, &["send", &pattern, "x"], "17 tokens");

    // Sixteen is the limit, not past it.
    let sixteen = vec!["t"; 16].join(".");
    r.add(&[&sixteen]);
    r.send(&sixteen, "deep");
    assert_eq!(r.files(&sixteen, "new").len(), 1);
}

#[test]
fn gt_not_last() {
    let r = world();
    for bad in ["a.>.b", ">.a", "ok.>.ep"] {
        rejects(&r, &["send", bad, "x"], &format!("'{bad}'"));
    }
    rejects(&r, &["send", "a.>.b", "x"], "last token");
}

#[test]
fn wildcards_only_as_whole_tokens() {
    let r = world();
    for bad in ["a.b*", "a*.b", "a.>b", "a.**"] {
        rejects(&r, &["send", bad, "x"], &format!("'{bad}'"));
    }
}

#[test]
fn characters_outside_the_token_alphabet() {
    let r = world();
    for bad in ["a b", "caf\u{e9}", "a:b", "a,b", "~"] {
        rejects(&r, &["send", bad, "x"], "character");
        rejects(&r, &["endpoints", "add", bad], "character");
    }
    // Dashes and underscores are fine.
    r.add(&["ns-1.id_2"]);
}

#[test]
fn wildcard_in_an_endpoint_name() {
    let r = world();
    for bad in ["a.*", "*", "a.>", ">"] {
        rejects(&r, &["endpoints", "add", bad], &format!("'{bad}'"));
        rejects(&r, &["recv", bad], &format!("'{bad}'"));
        rejects(
            &r,
            &["ack", bad, "01ARZ3NDEKTSV4RRFFQ69G5FAV"],
            &format!("'{bad}'"),
        );
    }
    rejects(&r, &["endpoints", "add", "a.*"], "wildcard");
}

#[test]
fn case_variant_of_an_existing_endpoint() {
    let r = world();
    rejects(&r, &["endpoints", "add", "OK.ep"], "'OK.ep'");
    rejects(&r, &["endpoints", "add", "ok.EP"], "'ok.ep'");
    assert!(!r.mailbox("OK.ep").exists());
}

#[test]
fn case_variants_within_one_add() {
    let r = world();
    rejects(&r, &["endpoints", "add", "b.y", "B.y"], "'B.y'");
    assert!(!r.mailbox("b.y").exists());
    assert!(!r.mailbox("B.y").exists());
}

#[test]
fn one_bad_name_means_no_endpoint_is_added() {
    let r = world();
    rejects(
        &r,
        &["endpoints", "add", "good.one", "bad..two"],
        "'bad..two'",
    );
    assert!(!r.mailbox("good.one").exists());
}

#[test]
fn send_to_a_case_variant_of_an_endpoint_creates_nothing() {
    let r = world();
    rejects(&r, &["send", "OK.EP", "x"], "'OK.EP'");
    assert!(!r.mailbox("OK.EP").exists());
}

#[test]
fn bad_sender_and_reply_to() {
    let r = world();
    rejects(
        &r,
        &["send", "ok.ep", "x", "--from", "bad/sender"],
        "'bad/sender'",
    );
    rejects(&r, &["send", "ok.ep", "x", "--from", "a.*"], "'a.*'");
    rejects(&r, &["send", "ok.ep", "x", "--reply-to", "a..b"], "'a..b'");
    let before = r.listing();
    r.cmd(["send", "ok.ep", "x"])
        .env("RELAY_FROM", "has space")
        .code(65)
        .stderr_has(&["'has space'"]);
    assert_eq!(r.listing(), before);
}
