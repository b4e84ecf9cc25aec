//! Class 11, a dead letter's reason: its sidecar `<id>.reason.json` is
//! durable in `failed/` before the letter appears there, so a reader (the
//! bridge's spans, `dlq list`, DorkOS) never finds a letter without its
//! reason, and a crash between the two steps leaves the message where it
//! was, not a letter without a reason. The order is read off the system
//! calls (strace), and the crash is a SIGKILL strace injects at the
//! letter's rename.

use crate::harness::Relay;

/// The renames and fsyncs `relay ARGS` makes in the mailboxes (strace,
/// descriptors named by their paths): `(call, target path)` in order, the
/// target of a rename being its last path argument; and its exit code.
/// With `inject`, strace also injects that fault.
fn steps(r: &Relay, args: &[&str], inject: Option<&str>) -> (Vec<(String, String)>, Option<i32>) {
    let log = r.scratch().join("reasons.strace");
    let mut c = std::process::Command::new("strace");
    c.args(["-f", "-qq", "-y", "-o"])
        .arg(&log)
        .args(["-e", "trace=fsync,fdatasync,rename,renameat,renameat2"]);
    if let Some(i) = inject {
        c.args(["-e", i]);
    }
    c.arg(crate::harness::BIN).args(args);
    let out = r.clean_env(&mut c).output().unwrap_or_else(|e| {
        panic!("cannot run strace ({e}): this test needs it, never skipped (apt-get install strace; .ci/run does)")
    });
    let text = std::fs::read_to_string(&log).expect("strace log");
    let calls = text
        .lines()
        .filter_map(|line| {
            let call = line
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start();
            let (name, rest) = call.split_once('(')?;
            let path = if name.starts_with("rename") {
                rest.split('"').rev().nth(1)?
            } else {
                rest.split(['<', '>']).nth(1)?
            };
            path.contains("/mailboxes/")
                .then(|| (name.to_string(), path.to_string()))
        })
        .collect();
    (calls, out.status.code())
}

/// Checks that in `calls` the sidecar of `id` was renamed into `failed/`
/// and `failed/` fsynced before the letter `id` was renamed into it.
#[track_caller]
fn reason_first(calls: &[(String, String)], id: &str) {
    let renamed = |suffix: &str| {
        calls
            .iter()
            .position(|(c, p)| c.starts_with("rename") && p.ends_with(suffix))
            .unwrap_or_else(|| panic!("no rename into {suffix}: {calls:#?}"))
    };
    let sidecar = renamed(&format!("/failed/{id}.reason.json"));
    let letter = renamed(&format!("/failed/{id}.json"));
    assert!(
        sidecar < letter,
        "the letter went into failed/ before its reason: {calls:#?}"
    );
    assert!(
        calls[sidecar..letter]
            .iter()
            .any(|(c, p)| c.contains("sync") && p.ends_with("/failed")),
        "failed/ was not fsynced between the sidecar's rename and the letter's: {calls:#?}"
    );
}

#[test]
fn a_nack_puts_the_reason_in_failed_durably_before_the_letter() {
    let r = Relay::new();
    r.add(&["q"]);
    let id = r.send("q", "m");
    r.cmd(["recv", "q"]).success();
    let (calls, code) = steps(&r, &["nack", "q", &id, "--reason", "tool crashed"], None);
    assert_eq!(code, Some(0), "{calls:#?}");
    reason_first(&calls, &id);
}

#[test]
fn a_send_dead_lettered_at_once_puts_the_reason_in_failed_durably_before_the_letter() {
    let r = Relay::new();
    r.add(&["q"]);
    // No endpoint: dead-lettered under the subject (exit 69).
    let (calls, code) = steps(&r, &["send", "nobody.here", "m"], None);
    assert_eq!(code, Some(69), "{calls:#?}");
    let ids: Vec<String> = r
        .files("nobody.here", "failed")
        .into_iter()
        .filter_map(|f| f.strip_suffix(".reason.json").map(str::to_string))
        .collect();
    assert_eq!(ids.len(), 1, "{}", r.listing());
    reason_first(&calls, &ids[0]);
}

#[test]
fn a_crash_between_the_reason_and_the_letter_leaves_the_message_claimed_and_no_letter() {
    let r = Relay::new();
    r.add(&["q"]);
    let id = r.send("q", "m");
    r.cmd(["recv", "q"]).success();
    // Killed at its second rename of the nack: the letter's, the sidecar's
    // being the first.
    let (calls, code) = steps(
        &r,
        &["nack", "q", &id, "--reason", "tool crashed"],
        Some("inject=rename,renameat,renameat2:signal=SIGKILL:when=2"),
    );
    assert_eq!(code, None, "not killed: {calls:#?}");
    assert_eq!(
        r.files("q", "cur"),
        [format!("{id}.json")],
        "{}",
        r.listing()
    );
    // No letter without its reason: no letter at all, and the sidecar
    // that is no one's is not listed.
    let dlq = r.cmd(["dlq", "list", "--json"]).success().json();
    assert_eq!(dlq["deadLetters"], serde_json::json!([]), "{dlq}");
    // The next nack dead-letters it, with its reason.
    r.cmd(["nack", "q", &id, "--reason", "again"]).success();
    let dlq = r.cmd(["dlq", "list", "--json"]).success().json();
    assert_eq!(dlq["deadLetters"][0]["id"], id.as_str(), "{dlq}");
    assert_eq!(dlq["deadLetters"][0]["reason"], "again", "{dlq}");
    assert_eq!(dlq["deadLetters"][0]["code"], "nack", "{dlq}");
}

#[test]
fn a_letter_of_an_older_home_without_its_reason_is_listed_with_the_index_s() {
    let r = Relay::new();
    r.add(&["q"]);
    let id = r.send("q", "m");
    r.cmd(["recv", "q"]).success();
    r.cmd(["nack", "q", &id, "--reason", "tool crashed"])
        .success();
    // What an older relay killed between the letter and its sidecar left.
    std::fs::remove_file(r.path(&format!("mailboxes/q/failed/{id}.reason.json")))
        .expect("remove the sidecar");
    let dlq = r.cmd(["dlq", "list", "--json"]).success().json();
    assert_eq!(dlq["deadLetters"][0]["id"], id.as_str(), "{dlq}");
    assert_eq!(dlq["deadLetters"][0]["code"], "nack", "{dlq}");
    assert_eq!(dlq["deadLetters"][0]["reason"], "tool crashed", "{dlq}");
    let shown = r.cmd(["dlq", "show", &id]).success().stdout;
    assert!(shown.contains("tool crashed (nack)"), "{shown}");
}

/// Sets the mtime of `path` to `ago` before now.
fn age(path: &std::path::Path, ago: std::time::Duration) {
    let at = std::time::SystemTime::now() - ago;
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(at))
        .unwrap_or_else(|e| panic!("cannot set the mtime of {}: {e}", path.display()));
}

/// The findings of `doctor ARGS --json` of one check: their details and
/// whether each was repaired.
fn findings(out: &serde_json::Value, check: &str) -> Vec<(String, bool)> {
    out["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["check"] == check)
        .map(|f| {
            (
                f["detail"].as_str().unwrap_or_default().to_string(),
                f["repaired"] == true,
            )
        })
        .collect()
}

#[test]
fn doctor_reports_a_sidecar_a_crash_left_without_its_letter_and_repair_removes_only_it() {
    let r = Relay::new();
    r.add(&["q"]);
    // A real orphan: the nack killed between the sidecar and the letter,
    // two minutes ago.
    let crashed = r.send("q", "m");
    r.cmd(["recv", "q"]).success();
    let (calls, code) = steps(
        &r,
        &["nack", "q", &crashed, "--reason", "tool crashed"],
        Some("inject=rename,renameat,renameat2:signal=SIGKILL:when=2"),
    );
    assert_eq!(code, None, "not killed: {calls:#?}");
    let orphan = r.path(&format!("mailboxes/q/failed/{crashed}.reason.json"));
    assert!(orphan.exists(), "{}", r.listing());
    age(&orphan, std::time::Duration::from_secs(120));
    // A real dead letter, an hour old: its sidecar is its letter's.
    let letter = r.send("q", "n");
    r.cmd(["recv", "q"]).success();
    r.cmd(["nack", "q", &letter, "--reason", "bad input"])
        .success();
    let kept = r.path(&format!("mailboxes/q/failed/{letter}.reason.json"));
    age(&kept, std::time::Duration::from_secs(3600));
    let kept_bytes = std::fs::read(&kept).expect("the letter's sidecar");
    // A sidecar of a dead-lettering under way (its letter not there yet):
    // seconds old.
    let fresh_id = "01KBZZZZZZZZZZZZZZZZZZZZZZ";
    r.write_file(
        &format!("mailboxes/q/failed/{fresh_id}.reason.json"),
        std::fs::read(&orphan).expect("the orphan"),
    );
    let fresh = r.path(&format!("mailboxes/q/failed/{fresh_id}.reason.json"));
    age(&fresh, std::time::Duration::from_secs(5));

    let out = r.cmd(["doctor", "--json"]).code(65).json();
    let found = findings(&out, "orphan reason sidecar");
    assert_eq!(found.len(), 1, "{out:#}");
    assert!(
        found[0].0.contains(&format!("{crashed}.reason.json")) && !found[0].1,
        "{out:#}"
    );
    assert_eq!(
        out["findings"].as_array().map(Vec::len),
        Some(1),
        "only the orphan: {out:#}"
    );
    let table = r.cmd(["doctor"]).code(65).stdout;
    assert!(
        table.contains("orphan reason sidecar") && table.contains(&crashed),
        "{table}"
    );
    assert!(orphan.exists(), "doctor without --repair removed it");

    let out = r.cmd(["doctor", "--repair", "--json"]).success().json();
    let found = findings(&out, "orphan reason sidecar");
    assert_eq!(found.len(), 1, "{out:#}");
    assert!(found[0].0.contains(&crashed) && found[0].1, "{out:#}");
    assert!(!orphan.exists(), "{}", r.listing());
    assert!(fresh.exists(), "the fresh one was removed: {}", r.listing());
    assert_eq!(
        std::fs::read(&kept).ok(),
        Some(kept_bytes),
        "the letter's sidecar was touched"
    );
    // The crashed message is still claimed, and dead-letters as before.
    assert_eq!(r.files("q", "cur"), [format!("{crashed}.json")]);
    r.cmd(["doctor"]).success();
    let dlq = r.cmd(["dlq", "list", "--json"]).success().json();
    assert_eq!(dlq["deadLetters"][0]["id"], letter.as_str(), "{dlq}");
    assert_eq!(dlq["deadLetters"][0]["reason"], "bad input", "{dlq}");
}

#[test]
fn doctor_repair_says_why_an_orphan_sidecar_could_not_be_removed() {
    use std::os::unix::fs::PermissionsExt;
    let r = Relay::new();
    r.add(&["q"]);
    let id = "01KBYYYYYYYYYYYYYYYYYYYYYY";
    r.write_file(&format!("mailboxes/q/failed/{id}.reason.json"), "{}");
    let orphan = r.path(&format!("mailboxes/q/failed/{id}.reason.json"));
    age(&orphan, std::time::Duration::from_secs(120));
    let failed = r.path("mailboxes/q/failed");
    std::fs::set_permissions(&failed, std::fs::Permissions::from_mode(0o500)).expect("chmod");
    let out = r
        .cmd(["doctor", "--repair", "--json"])
        .without_dac_override()
        .code(65)
        .json();
    std::fs::set_permissions(&failed, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let found = findings(&out, "orphan reason sidecar");
    assert_eq!(found.len(), 1, "{out:#}");
    assert!(
        !found[0].1 && found[0].0.contains("cannot remove it"),
        "{out:#}"
    );
    assert!(orphan.exists(), "{}", r.listing());
    r.cmd(["doctor", "--repair"]).success();
    assert!(!orphan.exists(), "{}", r.listing());
}
