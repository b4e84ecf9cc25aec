//! Fault class tests: see `tests/faults.rs`.
//!
//! Class 5, leases and delivery counts (SPEC §2): every claim not made with
//! `--ack` holds a lease (default 30 min, `delivery.leaseSecs`); when it
//! runs out the message goes back to `new/` with `deliveryCount` raised
//! (a breaker failure and an event), past `delivery.maxDeliveries` it is
//! dead-lettered as `max_deliveries` with a failure notice, and a late ack
//! or nack from the old holder is refused. Expiry is found by whatever runs
//! next (recv, gc, a consumer's loop). Also the stranded claims of issue
//! 11: a consumer killed mid-handler, a consumer whose index is busy, and
//! the second-signal give-back under the mailbox lock.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Relay, T};
use crate::surfaces::{Proc, breaker, exists, scratch_dir, secs, send_from, wait_until};

const MIN: u64 = 60_000;

/// Endpoints `eps`, the index created, `config` (if any) written.
fn world(eps: &[&str], config: Option<&str>) -> Relay {
    let r = Relay::new();
    r.add(eps);
    if let Some(c) = config {
        r.write_file("config.json", c);
    }
    r.cmd(["status"]).success();
    r
}

fn file(id: &str) -> String {
    format!("{id}.json")
}

/// The one envelope `recv EP --json` prints at `at` (extra args appended).
#[track_caller]
fn recv_one(r: &Relay, ep: &str, at: u64, extra: &[&str]) -> Value {
    let out = r.cmd(["recv", ep, "--json"]).args(extra).at(at).success();
    let lines = out.json_lines();
    if lines.len() != 1 {
        out.fail("expected exactly one envelope");
    }
    lines[0].clone()
}

/// Kills a process group (a handler) by its leader's pid, if it still runs.
fn kill_group(pid: &str) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", pid.trim())])
        .stderr(std::process::Stdio::null())
        .status();
}

#[test]
fn a_claim_made_without_lease_holds_the_default_lease_then_comes_back_with_its_count_raised() {
    let r = world(
        &["agent.b"],
        Some(r#"{"reliability": {"circuitBreaker": {"failureThreshold": 1}}}"#),
    );
    let id = send_from(&r, "agent.a", "agent.b", "work", Some(T));
    let first = recv_one(&r, "agent.b", T, &[]);
    assert_eq!(first["id"], id.as_str());
    assert_eq!(first["deliveryCount"], 0, "{first}");

    // Within the 30 minutes nothing comes back.
    r.cmd(["recv", "agent.b"]).at(T + 29 * MIN).code(66);
    assert_eq!(r.files("agent.b", "cur"), vec![file(&id)]);

    // Past them the next recv gets it again, as its second delivery.
    let again = r
        .cmd(["recv", "agent.b", "--json"])
        .at(T + 31 * MIN)
        .success();
    let v = &again.json_lines()[0];
    assert_eq!(v["id"], id.as_str(), "{v}");
    assert_eq!(v["deliveryCount"], 1, "{v}");
    again.stderr_has(&["lease ran out", "delivery 2 of at most 5"]);
    // The count is in the file, for any reader.
    let on_disk = r.read_json(&format!("mailboxes/agent.b/cur/{}", file(&id)));
    assert_eq!(on_disk["deliveryCount"], 1, "{on_disk}");

    // It counted against the sender's breaker and was recorded.
    assert_eq!(
        breaker(&r, "agent.a", "agent.b", Some(T + 31 * MIN))["state"],
        "open"
    );
    let redelivered = r.events_of(T + 31 * MIN, "redelivered");
    assert_eq!(redelivered.len(), 1, "{redelivered:?}");
    assert_eq!(redelivered[0]["messageId"], id.as_str());
    assert_eq!(redelivered[0]["detail"]["deliveryCount"], 1);
    assert_eq!(r.events_of(T + 31 * MIN, "lease_expired").len(), 1);
}

#[test]
fn the_lease_and_the_delivery_limit_are_configurable_and_validated() {
    let r = world(&["agent.b"], Some(r#"{"delivery": {"leaseSecs": 60}}"#));
    r.cmd(["config", "validate"]).success();
    let id = r.send("agent.b", "work");
    recv_one(&r, "agent.b", T, &[]);
    r.cmd(["recv", "agent.b"]).at(T + 59_000).code(66);
    let v = recv_one(&r, "agent.b", T + 61_000, &[]);
    assert_eq!(
        (v["id"].as_str(), v["deliveryCount"].as_u64()),
        (Some(id.as_str()), Some(1))
    );
    // --lease still overrides per claim: after 5 minutes only the claim
    // on the default lease came back.
    let long = r.send("agent.b", "long");
    let v = recv_one(&r, "agent.b", T + 61_000, &["--lease", "10m"]);
    assert_eq!(v["id"], long.as_str());
    let v = recv_one(&r, "agent.b", T + 61_000 + 5 * MIN, &["-n", "5"]);
    assert_eq!(
        (v["id"].as_str(), v["deliveryCount"].as_u64()),
        (Some(id.as_str()), Some(2))
    );

    for (key, bad) in [
        ("delivery.leaseSecs", "0"),
        ("delivery.maxDeliveries", "0"),
        ("delivery.maxDeliveries", "-1"),
    ] {
        r.cmd(["config", "set", key, bad])
            .code(78)
            .stderr_has(&[key]);
    }
    r.write_file("config.json", r#"{"delivery": {"maxDeliveries": "many"}}"#);
    r.cmd(["recv", "agent.b"])
        .code(78)
        .stderr_has(&["delivery.maxDeliveries"]);
}

#[test]
fn past_max_deliveries_a_message_is_dead_lettered_with_a_failure_notice() {
    let r = world(
        &["agent.a", "agent.b"],
        Some(r#"{"delivery": {"maxDeliveries": 2}}"#),
    );
    let id = r
        .cmd([
            "send",
            "agent.b",
            "work",
            "--from",
            "agent.a",
            "--reply-to",
            "agent.a",
        ])
        .at(T)
        .success()
        .id();
    recv_one(&r, "agent.b", T, &["--lease", "1s"]);
    // gc finds the first expiry.
    let gc = r.cmd(["gc", "--json"]).at(T + 2000).success();
    assert_eq!(gc.json()["redelivered"], 1, "{}", gc.stdout);
    assert_eq!(r.files("agent.b", "new"), vec![file(&id)]);
    let v = recv_one(&r, "agent.b", T + 2000, &["--lease", "1s"]);
    assert_eq!(v["deliveryCount"], 1, "{v}");

    // The second expiry is the last delivery allowed.
    r.cmd(["recv", "agent.b"])
        .at(T + 4000)
        .code(66)
        .stderr_has(&["max_deliveries"]);
    assert!(r.files("agent.b", "cur").is_empty());
    assert!(r.files("agent.b", "new").is_empty());
    let reason = r.read_json(&format!("mailboxes/agent.b/failed/{id}.reason.json"));
    assert_eq!(reason["code"], "max_deliveries", "{reason}");
    assert_eq!(reason["envelope"]["deliveryCount"], 2, "{reason}");

    // The sender hears of it at its replyTo.
    let notice = recv_one(&r, "agent.a", T + 5000, &[]);
    assert_eq!(notice["payload"]["code"], "max_deliveries", "{notice}");
    assert_eq!(notice["payload"]["messageId"], id.as_str(), "{notice}");

    // status and metrics show the redeliveries.
    let status = r.cmd(["status", "--json"]).at(T + 5000).success().json();
    assert_eq!(status["redeliveries"], 1, "{status}");
    assert_eq!(status["maxDeliveriesDeadLettered"], 1, "{status}");
    let text = r.cmd(["status"]).at(T + 5000).success();
    if !text.stdout.contains("redeliveries: 1") {
        text.fail("status does not show the redelivery");
    }
    let m = r.cmd(["metrics", "--json"]).at(T + 5000).success().json();
    assert_eq!(
        (m["redeliveries"].as_u64(), m["maxDeliveries"].as_u64()),
        (Some(1), Some(1)),
        "{m}"
    );
    // A late ack says why.
    r.cmd(["ack", "agent.b", &id])
        .at(T + 5000)
        .code(65)
        .stderr_has(&["dead-lettered as max_deliveries"]);
}

#[test]
fn a_requeued_max_deliveries_letter_starts_counting_its_deliveries_again() {
    let r = world(&["rq.b"], Some(r#"{"delivery": {"maxDeliveries": 2}}"#));
    let id = r.cmd(["send", "rq.b", "work"]).at(T).success().id();
    recv_one(&r, "rq.b", T, &["--lease", "1s"]);
    r.cmd(["gc"]).at(T + 2000).success();
    recv_one(&r, "rq.b", T + 2000, &["--lease", "1s"]);
    r.cmd(["gc"]).at(T + 4000).success();
    let reason = r.read_json(&format!("mailboxes/rq.b/failed/{id}.reason.json"));
    assert_eq!(reason["code"], "max_deliveries", "{reason}");
    // The letter is the file as it was claimed last: it counts one lease
    // run out, enough to be dead-lettered again at the next one.
    let letter = r.read_json(&format!("mailboxes/rq.b/failed/{id}.json"));
    assert_eq!(letter["deliveryCount"], 1, "{letter}");

    r.cmd(["dlq", "requeue", &id]).at(T + 5000).success();
    assert!(r.files("rq.b", "failed").is_empty(), "{}", r.listing());
    assert!(r.files("rq.b", "tmp").is_empty(), "{}", r.listing());
    let requeued = r.read_json(&format!("mailboxes/rq.b/new/{id}.json"));
    assert!(
        requeued.get("deliveryCount").is_none(),
        "the requeued file still counts its deliveries: {requeued}"
    );
    assert_eq!(
        (&requeued["id"], &requeued["payload"], &requeued["budget"]),
        (&letter["id"], &letter["payload"], &letter["budget"]),
        "only the count changes"
    );

    // Its next lease to run out is its first again, not a third.
    let v = recv_one(&r, "rq.b", T + 5000, &["--lease", "1s"]);
    assert_eq!(v["deliveryCount"], 0, "{v}");
    let gc = r.cmd(["gc", "--json"]).at(T + 7000).success();
    assert_eq!(gc.json()["redelivered"], 1, "{}", gc.stdout);
    assert_eq!(r.files("rq.b", "new"), vec![file(&id)], "{}", r.listing());
    let v = recv_one(&r, "rq.b", T + 7000, &[]);
    assert_eq!(v["deliveryCount"], 1, "{v}");
}

#[test]
fn a_late_ack_or_nack_from_the_old_holder_is_refused() {
    let r = world(&["agent.b"], None);
    let id = r.send("agent.b", "work");
    recv_one(&r, "agent.b", T, &["--lease", "1s"]);

    // Expired, not yet swept: refused, and the message goes back.
    r.cmd(["ack", "agent.b", &id])
        .at(T + 2000)
        .code(65)
        .stderr_has(&["refused", "lease ran out at 2026-01-01T00:00:01.000Z"]);
    assert_eq!(r.files("agent.b", "new"), vec![file(&id)]);
    assert!(r.files("agent.b", "cur").is_empty());
    // Already back in new/: refused, saying so.
    r.cmd(["nack", "agent.b", &id])
        .at(T + 2500)
        .code(65)
        .stderr_has(&["lease ran out at", "it was redelivered"]);

    // A new holder has it: the old holder's ack (it held delivery 0) is
    // refused, the new holder's goes through.
    let v = recv_one(&r, "agent.b", T + 3000, &[]);
    assert_eq!(v["deliveryCount"], 1, "{v}");
    for verb in ["ack", "nack"] {
        r.cmd([verb, "agent.b", &id, "--delivery-count", "0"])
            .at(T + 3000)
            .code(65)
            .stderr_has(&["redelivered since that claim"]);
    }
    assert_eq!(r.files("agent.b", "cur"), vec![file(&id)]);
    r.cmd(["ack", "agent.b", &id, "--delivery-count", "1"])
        .at(T + 3000)
        .success();
    assert!(r.files("agent.b", "cur").is_empty());
    assert!(r.files("agent.b", "new").is_empty());
}

#[test]
fn the_delivery_count_survives_an_index_rebuild_and_dorkos_can_still_read_the_file() {
    let r = world(&["agent.b"], None);
    let id = r.send("agent.b", "work");
    recv_one(&r, "agent.b", T, &["--lease", "1s"]);
    r.cmd(["gc"]).at(T + 2000).success();
    for f in ["relay.db", "relay.db-wal", "relay.db-shm"] {
        let _ = fs::remove_file(r.path(f));
    }
    let raw = r.read_json(&format!("mailboxes/agent.b/new/{}", file(&id)));
    for key in ["id", "subject", "from", "budget", "createdAt", "payload"] {
        assert!(raw.get(key).is_some(), "{key} missing: {raw}");
    }
    assert_eq!(raw["deliveryCount"], 1, "{raw}");
    let v = recv_one(&r, "agent.b", T + 3000, &[]);
    assert_eq!(v["deliveryCount"], 1, "{v}");
}

#[test]
fn a_consumer_killed_mid_handler_does_not_strand_its_claim() {
    let r = world(&["agent.b"], None);
    let d = scratch_dir(&r, "h");
    let d_str = d.display().to_string();
    let t = T.to_string();
    let id = r.send("agent.b", "work");
    // Runs (at most 30 s) until killed.
    let handler =
        r#"echo $$ > "$D/pid"; i=0; while [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done"#;
    let mut c = Proc::start(
        &r,
        &[
            "recv", "agent.b", "--follow", "--exec", handler, "--lease", "2s",
        ],
        &[("D", &d_str), ("RELAY_FAKE_NOW_MS", &t)],
    );
    wait_until(secs(10), "the handler to start", || exists(&d, "pid"));
    let _ = Command::new("kill")
        .args(["-KILL", &c.pid().to_string()])
        .status();
    c.finish(secs(10));
    kill_group(&fs::read_to_string(d.join("pid")).unwrap_or_default());
    assert_eq!(r.files("agent.b", "cur"), vec![file(&id)]);

    // Before the lease runs out it stays claimed.
    r.cmd(["recv", "agent.b"]).at(T + 1000).code(66);
    // After it, the next consumer's loop hands it out again.
    let done = r
        .cmd([
            "recv",
            "agent.b",
            "--exec",
            r#"echo "$RELAY_DELIVERY_COUNT" > "$D/count.$RELAY_MESSAGE_ID""#,
        ])
        .env("D", &d_str)
        .at(T + 3000)
        .success();
    let count = fs::read_to_string(d.join(format!("count.{id}"))).unwrap_or_default();
    if count.trim() != "1" {
        done.fail(&format!("the handler saw RELAY_DELIVERY_COUNT {count:?}"));
    }
    assert!(r.files("agent.b", "cur").is_empty());
    assert!(r.files("agent.b", "new").is_empty());
}

#[test]
fn a_consumer_whose_index_is_busy_waits_and_never_strands_its_claim() {
    let r = world(&["agent.b"], None);
    let id = r.send("agent.b", "work");
    r.cmd(["status"]).success(); // the send's journal is in the index
    // An operator's long write transaction on relay.db.
    let db = rusqlite::Connection::open(r.path("relay.db")).expect("open relay.db");
    db.execute_batch("BEGIN IMMEDIATE").expect("begin");
    // A short lock timeout keeps the test quick (10 s by default).
    let mut c = Proc::start(
        &r,
        &["recv", "agent.b", "--follow", "--exec", "true", "--json"],
        &[("RELAY_LOCK_TIMEOUT_MS", "500")],
    );
    // It cannot record the claim: it gives it back and tries again.
    c.stderr_line(secs(30), "gave them back to new/");
    if !c.running() {
        c.fail("the consumer stopped over a busy index");
    }
    assert!(
        r.files("agent.b", "new") == vec![file(&id)]
            || r.files("agent.b", "cur") == vec![file(&id)],
        "{}",
        c.dump()
    );
    db.execute_batch("ROLLBACK").expect("rollback");
    drop(db);
    let v = c.json_line(secs(30), "id", &id);
    assert_eq!(v["outcome"], "acked", "{v}");
    c.signal("TERM");
    let code = c.finish(secs(10));
    if code != 0 {
        c.fail(&format!("expected exit 0 after SIGTERM, got {code}"));
    }
    assert!(r.files("agent.b", "cur").is_empty());
    assert!(r.files("agent.b", "new").is_empty());
}

#[test]
fn a_plain_recv_and_ack_need_no_index_and_it_catches_up() {
    let r = world(&["agent.b"], None);
    let id = r.send("agent.b", "work");
    recv_one(&r, "agent.b", T, &[]); // the index learns no priority is there
    r.cmd(["ack", "agent.b", &id]).at(T).success();
    let (a, b) = (r.send("agent.b", "a"), r.send("agent.b", "b"));
    let db = rusqlite::Connection::open(r.path("relay.db")).expect("open relay.db");
    db.execute_batch("BEGIN IMMEDIATE").expect("begin");
    // Claims and acks go to the journal: a busy index holds up neither.
    r.cmd(["recv", "agent.b", "--ack"])
        .env("RELAY_LOCK_TIMEOUT_MS", "500")
        .at(T)
        .success()
        .stdout_is("a\n");
    assert_eq!(recv_one(&r, "agent.b", T, &[])["id"], b.as_str());
    r.cmd(["ack", "agent.b", &b])
        .env("RELAY_LOCK_TIMEOUT_MS", "500")
        .at(T)
        .success();
    assert!(r.files("agent.b", "cur").is_empty());
    assert!(r.files("agent.b", "new").is_empty());
    drop(db);
    for m in [&a, &b] {
        let t = r.cmd(["trace", m, "--json"]).at(T).success().json();
        assert_eq!(t["spans"][0]["state"], "acked", "{t}");
        assert!(t["spans"][0]["deliveredAt"].is_string(), "{t}");
    }
}

#[test]
fn a_plain_recv_that_must_record_in_a_busy_index_gives_its_claim_back() {
    let r = world(&["agent.b"], None);
    let first = r.send("agent.b", "first");
    let id = r.send("agent.b", "work");
    recv_one(&r, "agent.b", T, &["--lease", "60s"]);
    r.cmd(["ack", "agent.b", &first]).at(T).success();
    let db = rusqlite::Connection::open(r.path("relay.db")).expect("open relay.db");
    db.execute_batch("BEGIN IMMEDIATE").expect("begin");
    // Past that lease's deadline the next claim needs the index, where
    // leases are counted: it cannot record the claim and gives it back.
    r.cmd(["recv", "agent.b"])
        .env("RELAY_LOCK_TIMEOUT_MS", "500")
        .at(T + 2 * MIN)
        .code(75)
        .stderr_has(&["gave them back to new/", "retry later"]);
    assert_eq!(r.files("agent.b", "new"), vec![file(&id)]);
    assert!(r.files("agent.b", "cur").is_empty());
    drop(db);
    recv_one(&r, "agent.b", T + 2 * MIN, &[]);
}

#[test]
fn the_second_signal_gives_claims_back_under_the_mailbox_lock() {
    let r = world(&["agent.b"], None);
    let d = scratch_dir(&r, "h");
    let d_str = d.display().to_string();
    let handler =
        r#"touch "$D/started"; i=0; while [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done"#;
    let id = r.send("agent.b", "work");
    let mut c = Proc::start(
        &r,
        &["recv", "agent.b", "--follow", "--exec", handler, "--json"],
        &[("D", &d_str)],
    );
    wait_until(secs(10), "the handler to start", || exists(&d, "started"));

    // Someone (an `endpoints remove`, a gc) holds the mailbox lock.
    let lock = fs::File::open(r.mailbox("agent.b")).expect("open mailbox");
    lock.lock().expect("lock mailbox");
    c.signal("INT");
    c.stderr_line(secs(10), "signal again to stop now");
    c.signal("INT");
    // While the lock is held, the give-back waits: nothing moves.
    let until = Instant::now() + Duration::from_millis(800);
    while Instant::now() < until {
        if !r.files("agent.b", "new").is_empty() {
            c.fail("the message went back to new/ while the mailbox lock was held");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(r.files("agent.b", "cur"), vec![file(&id)]);
    drop(lock);
    let code = c.finish(secs(10));
    if code != 130 {
        c.fail(&format!("expected exit 130, got {code}"));
    }
    assert_eq!(r.files("agent.b", "new"), vec![file(&id)]);
    assert!(r.files("agent.b", "cur").is_empty());
}

#[test]
fn a_claim_the_index_does_not_know_runs_out_the_default_lease_from_its_rename() {
    // A DorkOS consumer claimed this one (new/ -> cur/) and crashed; relay's
    // index has no row for it.
    let r = world(&["agent.b"], None);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let id = "01KDVDNA00AZN6WGYRKYDJ5P4S";
    let mut env = crate::harness::dorkos_envelope(id, "agent.b", &Value::from("theirs"));
    env["budget"]["ttl"] = Value::from(now + 24 * 60 * MIN);
    r.write_file(
        &format!("mailboxes/agent.b/cur/{}", file(id)),
        env.to_string(),
    );
    // Within 30 minutes of the rename it is left alone, also by gc ...
    assert_eq!(
        r.cmd(["gc", "--json"]).at(now + 29 * MIN).success().json()["redelivered"],
        0
    );
    r.cmd(["recv", "agent.b"]).at(now + 29 * MIN).code(66);
    // ... after them the next recv gets it back.
    let v = recv_one(&r, "agent.b", now + 31 * MIN, &[]);
    assert_eq!(
        (v["id"].as_str(), v["deliveryCount"].as_u64()),
        (Some(id), Some(1)),
        "{v}"
    );
    assert_eq!(r.events_of(now + 31 * MIN, "lease_expired").len(), 1);
}

#[test]
fn a_claim_the_index_does_not_know_is_timed_from_its_rename_whatever_its_file_times_say() {
    // As above, but the claimed file's times were set since (`cp -p`,
    // `rsync -t`, `touch -d`): its modification time says a day ago, which
    // is when it was written, not claimed. The lease still runs from the
    // rename into cur/ (the change time, as DorkOS's crash recovery reads
    // it; setting the other times moves it to now, never back).
    let r = world(&["agent.b"], None);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let id = "01KDVDNA00AZN6WGYRKYDJ5P4T";
    let mut env = crate::harness::dorkos_envelope(id, "agent.b", &Value::from("theirs"));
    env["budget"]["ttl"] = Value::from(now + 48 * 60 * MIN);
    let path = format!("mailboxes/agent.b/cur/{}", file(id));
    r.write_file(&path, env.to_string());
    let day_ago = std::time::SystemTime::now() - Duration::from_secs(24 * 3600);
    fs::File::options()
        .write(true)
        .open(r.path(&path))
        .and_then(|f| {
            f.set_times(
                fs::FileTimes::new()
                    .set_modified(day_ago)
                    .set_accessed(day_ago),
            )
        })
        .expect("set the file's times");
    // Timed from the file's modification time it would be due at once.
    assert_eq!(
        r.cmd(["gc", "--json"]).at(now + 29 * MIN).success().json()["redelivered"],
        0
    );
    r.cmd(["recv", "agent.b"]).at(now + 29 * MIN).code(66);
    assert_eq!(r.files("agent.b", "cur"), vec![file(id)]);
    let v = recv_one(&r, "agent.b", now + 31 * MIN, &[]);
    assert_eq!(
        (v["id"].as_str(), v["deliveryCount"].as_u64()),
        (Some(id), Some(1)),
        "{v}"
    );
}
