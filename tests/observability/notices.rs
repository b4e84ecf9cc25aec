//! Failure notices: a dead-lettered message with a replyTo tells its sender,
//! and a notice is never itself the subject of a notice.

use serde_json::Value;

use super::{DAY, HOUR, T0, budget, ids, json_at, parent_file, recv_at, send_at};
use crate::harness::Relay;

/// The single notice waiting in `inbox`/new, checked against the dead
/// letter it reports.
#[track_caller]
fn notice(r: &Relay, inbox: &str, about: &str, ep: &str, code: &str) -> Value {
    let waiting = ids(r, inbox, "new");
    assert_eq!(
        waiting.len(),
        1,
        "one notice in {inbox}: {waiting:?}\n{}",
        r.listing()
    );
    let n = r.read_json(&format!("mailboxes/{inbox}/new/{}.json", waiting[0]));
    assert_eq!(n["from"], "relay.notice", "{n}");
    assert_eq!(n["subject"], inbox, "{n}");
    assert!(
        n.get("replyTo").is_none_or(Value::is_null),
        "a notice has no replyTo: {n}"
    );
    let p = &n["payload"];
    assert_eq!(p["type"], "relay.failure_notice", "{n}");
    assert_eq!(p["messageId"], about, "{n}");
    assert_eq!(p["endpoint"], ep, "{n}");
    assert_eq!(p["code"], code, "{n}");
    assert!(p["reason"].as_str().is_some_and(|s| !s.is_empty()), "{n}");
    assert!(p["failedAt"].is_string(), "{n}");
    assert_eq!(
        n["traceId"], p["traceId"],
        "the notice joins the trace: {n}"
    );
    n
}

#[test]
fn nack_sends_a_notice_to_reply_to() {
    let r = Relay::new();
    r.add(&["work.q", "client.inbox"]);
    let id = send_at(
        &r,
        T0,
        &[
            "work.q",
            "job",
            "--reply-to",
            "client.inbox",
            "--trace-id",
            "tr-n",
        ],
    );
    recv_at(&r, T0 + 1, "work.q");
    r.cmd(["nack", "work.q", &id, "--reason", "cannot parse"])
        .at(T0 + 2)
        .success();
    let n = notice(&r, "client.inbox", &id, "work.q", "nack");
    assert_eq!(n["traceId"], "tr-n");
    assert_eq!(n["payload"]["subject"], "work.q");
    assert_eq!(n["payload"]["reason"], "cannot parse");
    assert_eq!(n["payload"]["failedAt"], "2027-01-15T08:00:00.002Z");
    // The sender can receive it like any message.
    let got = recv_at(&r, T0 + 3, "client.inbox");
    assert_eq!(got["payload"]["messageId"], id.as_str());
    assert_eq!(json_at(&r, T0 + 4, &["metrics"])["failureNotices"], 1);
    let ev = r
        .cmd([
            "events",
            "--json",
            "--kind",
            "failure_notice",
            "--since",
            "1h",
        ])
        .at(T0 + 4)
        .success()
        .json_lines();
    assert_eq!(ev.len(), 1, "{ev:?}");
}

#[test]
fn an_ack_sends_no_notice() {
    let r = Relay::new();
    r.add(&["work.q", "client.inbox"]);
    let id = send_at(&r, T0, &["work.q", "job", "--reply-to", "client.inbox"]);
    recv_at(&r, T0 + 1, "work.q");
    r.cmd(["ack", "work.q", &id]).at(T0 + 2).success();
    assert!(ids(&r, "client.inbox", "new").is_empty());
}

#[test]
fn a_budget_rejection_sends_a_notice() {
    let r = Relay::new();
    r.add(&["work.q", "client.inbox"]);
    let parent = parent_file(&r, "p.json", "tr-b", &budget(5, 5, &["up"], T0 + DAY, 9));
    r.cmd([
        "send",
        "work.q",
        "job",
        "--reply-to",
        "client.inbox",
        "--parent",
    ])
    .args([&parent])
    .at(T0)
    .code(65);
    let id = ids(&r, "work.q", "failed").pop().expect("dead letter");
    let n = notice(&r, "client.inbox", &id, "work.q", "hop_limit");
    assert_eq!(n["traceId"], "tr-b");
}

#[test]
fn gc_ttl_expiry_sends_a_notice() {
    let r = Relay::new();
    r.add(&["work.q", "client.inbox"]);
    let id = send_at(
        &r,
        T0,
        &[
            "work.q",
            "job",
            "--ttl",
            "10m",
            "--reply-to",
            "client.inbox",
        ],
    );
    r.cmd(["gc"]).at(T0 + HOUR).success();
    assert_eq!(ids(&r, "work.q", "failed"), vec![id.clone()]);
    notice(&r, "client.inbox", &id, "work.q", "ttl_expired");
}

#[test]
fn access_denial_sends_a_notice() {
    let r = Relay::new();
    r.add(&["work.q", "client.inbox"]);
    r.write_file(
        "access-rules.json",
        r#"[{"from": "client", "to": "work.q", "action": "deny", "priority": 1}]"#,
    );
    r.cmd([
        "send",
        "work.q",
        "job",
        "--from",
        "client",
        "--reply-to",
        "client.inbox",
    ])
    .at(T0)
    .code(77);
    let id = ids(&r, "work.q", "failed").pop().expect("dead letter");
    notice(&r, "client.inbox", &id, "work.q", "access_denied");
}

#[test]
fn nacking_a_notice_sends_no_further_notice() {
    let r = Relay::new();
    r.add(&["loop.q"]);
    // Replies go back to the very endpoint that rejects everything.
    let id = send_at(&r, T0, &["loop.q", "job", "--reply-to", "loop.q"]);
    recv_at(&r, T0 + 1, "loop.q");
    r.cmd(["nack", "loop.q", &id]).at(T0 + 2).success();
    let n = notice(&r, "loop.q", &id, "loop.q", "nack");
    let nid = n["id"].as_str().expect("notice id").to_string();

    let got = recv_at(&r, T0 + 3, "loop.q");
    assert_eq!(got["id"], nid.as_str());
    r.cmd(["nack", "loop.q", &nid]).at(T0 + 4).success();

    assert!(
        ids(&r, "loop.q", "new").is_empty(),
        "no notice about a notice"
    );
    assert!(ids(&r, "loop.q", "cur").is_empty());
    let mut dead = ids(&r, "loop.q", "failed");
    dead.sort();
    let mut want = vec![id, nid];
    want.sort();
    assert_eq!(dead, want);
    // gc has nothing to add either.
    r.cmd(["gc"]).at(T0 + 2 * HOUR).success();
    assert!(ids(&r, "loop.q", "new").is_empty());
    assert_eq!(
        json_at(&r, T0 + 2 * HOUR, &["metrics"])["failureNotices"],
        1
    );
}

#[test]
fn a_notice_to_a_subject_without_endpoint_is_dead_lettered_there() {
    let r = Relay::new();
    r.add(&["work.q"]);
    let id = send_at(&r, T0, &["work.q", "job", "--reply-to", "gone.inbox"]);
    recv_at(&r, T0 + 1, "work.q");
    r.cmd(["nack", "work.q", &id]).at(T0 + 2).success();
    let dead = ids(&r, "gone.inbox", "failed");
    assert_eq!(dead.len(), 1, "{}", r.listing());
    let car = r.read_json(&format!(
        "mailboxes/gone.inbox/failed/{}.reason.json",
        dead[0]
    ));
    assert_eq!(car["code"], "no_match", "{car}");
    assert_eq!(car["envelope"]["from"], "relay.notice", "{car}");
    assert_eq!(
        car["envelope"]["payload"]["messageId"],
        id.as_str(),
        "{car}"
    );
    assert!(ids(&r, "gone.inbox", "new").is_empty());
}
