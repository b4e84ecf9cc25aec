//! `relay gc`: TTL expiry, stale tmp/ files, dry runs and retention.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{DAY, HOUR, MIN, T0, ids, json_at, recv_at, send_at, sidecar, span};
use crate::harness::Relay;

fn real_now_ms() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(d.as_millis()).expect("ms fit u64")
}

#[test]
fn gc_expires_unclaimed_messages_past_their_ttl() {
    let r = Relay::new();
    r.add(&["a.x"]);
    let short = send_at(&r, T0, &["a.x", "short", "--ttl", "1m"]);
    let long = send_at(&r, T0, &["a.x", "long", "--ttl", "1h"]);
    let also_short = send_at(&r, T0, &["a.x", "also short", "--ttl", "1m"]);
    assert_eq!(ids(&r, "a.x", "new").len(), 3);

    // Before the deadline: nothing expires.
    let g = json_at(&r, T0 + 30_000, &["gc"]);
    assert_eq!(g["expired"], 0, "{g}");
    assert_eq!(ids(&r, "a.x", "new").len(), 3);

    // Just past the deadline of the 1-minute ones.
    let g = json_at(&r, T0 + MIN + 1, &["gc"]);
    assert_eq!(g["dryRun"], false, "{g}");
    assert_eq!(g["expired"], 2, "{g}");
    assert_eq!(ids(&r, "a.x", "new"), vec![long.clone()]);
    let mut dead = ids(&r, "a.x", "failed");
    dead.sort();
    let mut want = vec![short.clone(), also_short];
    want.sort();
    assert_eq!(dead, want);
    let car = sidecar(&r, "a.x", &short);
    assert_eq!(car["code"], "ttl_expired", "{car}");
    assert_eq!(car["envelope"]["payload"], "short", "{car}");
    let t = json_at(&r, T0 + MIN + 2, &["trace", &short]);
    assert_eq!(span(&t, "a.x")["status"], "timeout", "{t}");
    assert_eq!(span(&t, "a.x")["code"], "ttl_expired", "{t}");
    let m = json_at(&r, T0 + MIN + 2, &["metrics"]);
    assert_eq!(m["deadLetteredCount"], 2, "{m}");

    // Running again finds nothing more.
    assert_eq!(json_at(&r, T0 + MIN + 3, &["gc"])["expired"], 0);
}

#[test]
fn gc_leaves_claimed_messages_alone() {
    let r = Relay::new();
    r.add(&["a.x"]);
    let id = send_at(&r, T0, &["a.x", "in hand", "--ttl", "1m"]);
    recv_at(&r, T0 + 1, "a.x");
    // Past its TTL, within its (default, 30 min) lease.
    let g = json_at(&r, T0 + 20 * MIN, &["gc"]);
    assert_eq!(g["expired"], 0, "{g}");
    assert_eq!(ids(&r, "a.x", "cur"), vec![id.clone()]);
    r.cmd(["ack", "a.x", &id]).at(T0 + 20 * MIN + 1).success();
}

#[test]
fn gc_dry_run_changes_nothing() {
    let r = Relay::new();
    r.add(&["a.x"]);
    let id = send_at(&r, T0, &["a.x", "p", "--ttl", "1m"]);
    r.write_file("mailboxes/a.x/tmp/crashed-writer.tmp", "partial");
    let before = r.mailbox_tree();
    let g = json_at(&r, T0 + 10 * DAY, &["gc", "--dry-run"]);
    assert_eq!(g["dryRun"], true, "{g}");
    assert_eq!(g["expired"], 1, "{g}");
    assert_eq!(
        r.mailbox_tree(),
        before,
        "a dry run touches no mailbox file"
    );
    assert_eq!(ids(&r, "a.x", "new"), vec![id.clone()]);
    // The index is untouched too: the message is still pending.
    let t = json_at(&r, T0 + 10 * DAY, &["trace", &id]);
    assert_eq!(span(&t, "a.x")["state"], "pending", "{t}");
    // The real run does what the dry run announced.
    let g = json_at(&r, T0 + 10 * DAY, &["gc"]);
    assert_eq!(g["expired"], 1, "{g}");
    assert_eq!(g["tmpFilesRemoved"], 1, "{g}");
    assert_eq!(ids(&r, "a.x", "failed"), vec![id]);
    assert!(r.files("a.x", "tmp").is_empty());
}

#[test]
fn gc_removes_stale_tmp_files_only() {
    let r = Relay::new();
    r.add(&["a.x"]);
    r.write_file("mailboxes/a.x/tmp/stale.tmp", "left by a crash");
    let now = real_now_ms();
    // Just written: younger than retention.tmpMaxAgeSecs (1h).
    let g = json_at(&r, now, &["gc"]);
    assert_eq!(g["tmpFilesRemoved"], 0, "{g}");
    assert_eq!(r.files("a.x", "tmp"), vec!["stale.tmp".to_string()]);
    // Two hours later it is stale.
    let g = json_at(&r, now + 2 * HOUR, &["gc", "--dry-run"]);
    assert_eq!(g["tmpFilesRemoved"], 1, "{g}");
    assert_eq!(r.files("a.x", "tmp"), vec!["stale.tmp".to_string()]);
    let g = json_at(&r, now + 2 * HOUR, &["gc"]);
    assert_eq!(g["tmpFilesRemoved"], 1, "{g}");
    assert!(r.files("a.x", "tmp").is_empty());
    // Messages are not tmp files: a pending message survives.
    assert!(r.files("a.x", "new").is_empty());
}

#[test]
fn gc_respects_a_configured_tmp_max_age() {
    let r = Relay::new();
    r.add(&["a.x"]);
    r.cmd(["config", "set", "retention.tmpMaxAgeSecs", "600"])
        .success();
    r.write_file("mailboxes/a.x/tmp/stale.tmp", "x");
    let now = real_now_ms();
    assert_eq!(json_at(&r, now + 5 * MIN, &["gc"])["tmpFilesRemoved"], 0);
    assert_eq!(json_at(&r, now + 15 * MIN, &["gc"])["tmpFilesRemoved"], 1);
    assert!(r.files("a.x", "tmp").is_empty());
}

#[test]
fn gc_prunes_old_index_rows_events_and_keys_after_retention() {
    let r = Relay::new();
    r.add(&["a.x"]);
    // At T0: one acked, one nacked (an event), one idempotency key.
    let acked = send_at(&r, T0, &["a.x", "done", "--ttl", "30d"]);
    let nacked = send_at(&r, T0, &["a.x", "bad", "--ttl", "30d"]);
    r.cmd(["recv", "a.x", "-n", "2"]).at(T0 + 1).success();
    r.cmd(["ack", "a.x", &acked]).at(T0 + 2).success();
    r.cmd(["nack", "a.x", &nacked]).at(T0 + 3).success();
    let keyed = send_at(
        &r,
        T0,
        &["a.x", "k", "--idempotency-key", "k1", "--ttl", "30d"],
    );
    // Still pending at T0 + 8 days: not finished, so never pruned.
    let events_before = r
        .cmd(["events", "--json", "--since", "30d"])
        .at(T0 + 4)
        .success()
        .json_lines();
    assert_eq!(events_before.len(), 1, "{events_before:?}");

    // Six days later nothing is old enough (retention.days = 7).
    let g = json_at(&r, T0 + 6 * DAY, &["gc"]);
    assert_eq!(g["indexRowsPruned"], 0, "{g}");
    assert_eq!(g["eventsPruned"], 0, "{g}");
    assert_eq!(
        g["idempotencyKeysPruned"], 1,
        "the 1-day window is over: {g}"
    );

    // Eight days: the finished rows and the event go; a dry run first.
    let now = T0 + 8 * DAY;
    let g = json_at(&r, now, &["gc", "--dry-run"]);
    assert_eq!(g["indexRowsPruned"], 2, "{g}");
    assert_eq!(g["eventsPruned"], 1, "{g}");
    assert_eq!(
        json_at(&r, now, &["trace", &acked])["spans"][0]["state"],
        "acked"
    );
    let g = json_at(&r, now, &["gc"]);
    assert_eq!(g["indexRowsPruned"], 2, "{g}");
    assert_eq!(g["eventsPruned"], 1, "{g}");

    let events = r
        .cmd(["events", "--json", "--since", "30d"])
        .at(now)
        .success()
        .json_lines();
    assert!(events.is_empty(), "{events:?}");
    let gone = r.cmd(["trace", &acked]).at(now).run();
    assert_ne!(gone.code, 0, "the acked message's row was pruned");
    let m = json_at(&r, now, &["metrics"]);
    assert_eq!(
        m["totalMessages"], 1,
        "only the pending message is left: {m}"
    );
    assert_eq!(m["pendingCount"], 1, "{m}");
    // The pending message and the dead letter's files are untouched.
    assert_eq!(ids(&r, "a.x", "new"), vec![keyed.clone()]);
    assert_eq!(ids(&r, "a.x", "failed"), vec![nacked]);
    let t = json_at(&r, now, &["trace", &keyed]);
    assert_eq!(span(&t, "a.x")["state"], "pending", "{t}");
}

/// After retention prunes, `gc` hands the freed pages back: the index file
/// shrinks instead of keeping its high-water mark.
#[test]
fn gc_returns_pruned_pages_to_the_filesystem() {
    let r = Relay::new();
    r.add(&["a.x"]);
    r.write_file(
        "config.json",
        r#"{"reliability":{"rateLimit":{"enabled":false},"backpressure":{"maxMailboxSize":100000}}}"#,
    );
    let lines: String = (0..1500)
        .map(|i| {
            format!(
                "{{\"subject\":\"a.x\",\"payload\":{{\"n\":{i},\"pad\":\"{}\"}}}}\n",
                "x".repeat(100)
            )
        })
        .collect();
    r.cmd(["send", "--batch", "--no-fsync"])
        .at(T0)
        .stdin(lines.into_bytes())
        .success();
    let out = r
        .cmd(["recv", "a.x", "--json", "-n", "1500"])
        .at(T0 + 1000)
        .success();
    let claimed: Vec<String> = out
        .json_lines()
        .iter()
        .map(|e| e["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(claimed.len(), 1500);
    let mut ack = vec!["ack".to_string(), "a.x".to_string()];
    ack.extend(claimed);
    r.cmd(ack).at(T0 + 2000).success();

    let pages = |r: &Relay| -> (i64, i64) {
        let db = rusqlite::Connection::open(r.path("relay.db")).expect("open index");
        let count: i64 = db
            .query_row("PRAGMA page_count", [], |row| row.get(0))
            .expect("page_count");
        let free: i64 = db
            .query_row("PRAGMA freelist_count", [], |row| row.get(0))
            .expect("freelist");
        (count, free)
    };
    let (before, _) = pages(&r);
    let g = json_at(&r, T0 + 9 * DAY, &["gc"]);
    assert_eq!(g["indexRowsPruned"], 1500, "{g}");
    let (after, free) = pages(&r);
    assert_eq!(free, 0, "pruned pages are not left on the free list");
    assert!(
        after * 4 < before,
        "index did not shrink: {before} -> {after} pages"
    );
}

#[test]
fn gc_forgets_idle_full_buckets_and_idle_closed_breakers_but_keeps_the_rest() {
    let r = Relay::new();
    r.write_file(
        "config.json",
        r#"{"reliability":{"rateLimit":{"maxPerWindow":5,"windowSecs":60},"circuitBreaker":{"failureThreshold":1}}}"#,
    );
    r.add(&["a.x", "b.y"]);
    // agent.idle sends once; agent.open trips its breaker to b.y.
    send_at(&r, T0, &["a.x", "1", "--from", "agent.idle"]);
    let id = send_at(&r, T0, &["b.y", "2", "--from", "agent.open"]);
    recv_at(&r, T0, "b.y");
    r.cmd(["nack", "b.y", &id]).at(T0).success();
    let limits = |at| {
        json_at(&r, at, &["limits"])["limits"]
            .as_array()
            .map_or(0, Vec::len)
    };
    assert_eq!(limits(T0 + 1), 2);

    // Within retention (7 days) nothing goes.
    assert_eq!(json_at(&r, T0 + 6 * DAY, &["gc"])["stateEntriesPruned"], 0);
    // Past it: both full buckets go; the open breaker stays (it still refuses).
    let g = json_at(&r, T0 + 8 * DAY, &["gc", "--dry-run"]);
    assert_eq!(g["stateEntriesPruned"], 2, "{g}");
    assert_eq!(limits(T0 + 8 * DAY), 2, "a dry run forgets nothing");
    let g = json_at(&r, T0 + 8 * DAY, &["gc"]);
    assert_eq!(g["stateEntriesPruned"], 2, "{g}");
    assert_eq!(limits(T0 + 8 * DAY), 0);
    let b = json_at(&r, T0 + 8 * DAY, &["breakers"]);
    assert_eq!(b["breakers"].as_array().map_or(0, Vec::len), 1, "{b}");
}
