//! `relay request`: a private reply endpoint as `replyTo`, the first reply
//! printed (claimed and acked), a timeout exits 75, a failure notice ends
//! the wait at once with its code, a refused send exits as `relay send`,
//! SIGTERM ends the wait (130), and in every case the reply endpoint is
//! gone afterwards. The reply joins the request's trace.

use std::time::Duration;

use serde_json::Value;

use super::{Proc, secs, wait_until};
use crate::harness::{BIN, Relay};

/// A responder on `ep` running `handler` (sh) per message, `relay` being
/// the binary under test.
fn responder(r: &Relay, ep: &str, handler: &str, env: &[(&str, &str)]) -> Proc {
    let handler = handler.replace("relay ", &format!("'{BIN}' "));
    Proc::start(r, &["recv", ep, "--follow", "--exec", &handler], env)
}

/// Mailbox names other than the test's own endpoints: leftover reply
/// endpoints (or dead-letter directories made for them).
fn reply_dirs(r: &Relay) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(r.home().join("mailboxes"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("relay.inbox.query."))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

const ECHO: &str = r#"relay send "$RELAY_REPLY_TO" "{\"echo\":$(cat)}" >/dev/null"#;

#[test]
fn a_reply_is_printed_acked_and_joins_the_trace() {
    let r = Relay::new();
    r.add(&["svc"]);
    let mut resp = responder(&r, "svc", ECHO, &[]);
    let out = r
        .cmd([
            "request",
            "svc",
            r#"{"q":1}"#,
            "--timeout",
            "50s",
            "--from",
            "agent.a",
        ])
        .success();
    // The payload, as recv prints it: the echo of the request's envelope.
    let reply: Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| out.fail(&format!("not JSON: {e}")));
    let request = &reply["echo"];
    assert_eq!(request["payload"]["q"], 1);
    assert_eq!(request["from"], "agent.a");
    let reply_to = request["replyTo"].as_str().unwrap_or_default().to_string();
    assert!(reply_to.starts_with("relay.inbox.query."), "{request}");
    let request_id = request["id"].as_str().unwrap_or_default().to_string();

    // --json: the reply's envelope, from the responder, in the same trace.
    let env = r
        .cmd(["request", "svc", "again", "--json", "--timeout", "50s"])
        .success()
        .json();
    assert_eq!(env["from"], "svc");
    assert_eq!(env["payload"]["echo"]["payload"], "again");
    assert_eq!(env["traceId"], env["payload"]["echo"]["id"], "{env}");

    // The trace of the first request has its span at svc and the reply's
    // at the reply endpoint.
    let trace = r.cmd(["trace", &request_id, "--json"]).success().json();
    assert_eq!(trace["traceId"], request_id.as_str());
    let spans = trace["spans"].as_array().cloned().unwrap_or_default();
    let endpoints: Vec<&str> = spans
        .iter()
        .filter_map(|s| s["endpoint"].as_str())
        .collect();
    assert!(endpoints.contains(&"svc"), "{trace}");
    assert!(endpoints.contains(&reply_to.as_str()), "{trace}");
    // Every message settled; no reply endpoint left.
    assert!(reply_dirs(&r).is_empty(), "{}", r.listing());
    wait_until(secs(20), "the responder's acks", || {
        r.files("svc", "cur").is_empty()
    });
    assert!(r.files("svc", "new").is_empty(), "{}", r.listing());
    assert!(resp.running(), "{}", resp.dump());
}

#[test]
fn progress_steps_are_not_the_reply() {
    let r = Relay::new();
    r.add(&["svc"]);
    let step =
        r#"{"type":"progress","step":1,"step_type":"message","text":"working","done":false}"#;
    let handler = format!(
        r#"relay send "$RELAY_REPLY_TO" '{step}' >/dev/null && relay send "$RELAY_REPLY_TO" done >/dev/null"#
    );
    let _resp = responder(&r, "svc", &handler, &[]);
    r.cmd(["request", "svc", "go", "--timeout", "50s"])
        .success()
        .stdout_is("done\n");
    assert!(reply_dirs(&r).is_empty(), "{}", r.listing());
}

#[test]
fn a_timeout_exits_75_naming_the_request_and_removes_the_endpoint() {
    let r = Relay::new();
    r.add(&["svc"]);
    let out = r
        .cmd(["request", "svc", "anyone?", "--timeout", "200ms", "--json"])
        .code(75);
    let err = out.stderr_json();
    let message = err["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("no reply to request"), "{message}");
    assert!(message.contains("within 200ms"), "{message}");
    // The request is still there for a responder; its reply endpoint is not.
    let pending = r.cmd(["peek", "svc", "--json"]).success().json_lines();
    assert_eq!(pending.len(), 1);
    let id = pending[0]["id"].as_str().unwrap_or_default();
    assert!(message.contains(id), "{message} does not name {id}");
    assert!(reply_dirs(&r).is_empty(), "{}", r.listing());
}

#[test]
fn a_nack_ends_the_wait_at_once_with_65() {
    let r = Relay::new();
    r.add(&["svc"]);
    let _resp = responder(&r, "svc", "exit 3", &[]);
    // Were the notice not taken for the end, this would wait 50 s and exit 75.
    let out = r
        .cmd(["request", "svc", "do it", "--timeout", "50s"])
        .code(65);
    assert!(
        out.stderr
            .contains("failed at 'svc' (nack): handler exited with status 3"),
        "{}",
        out.stderr
    );
    assert!(reply_dirs(&r).is_empty(), "{}", r.listing());
    // The request itself is a dead letter at svc.
    assert_eq!(r.files("svc", "failed").len(), 2, "{}", r.listing());
}

#[test]
fn an_expired_request_ends_the_wait_at_once_with_75() {
    let r = Relay::new();
    r.add(&["svc"]);
    // The responder's clock is a day ahead: every request it takes has
    // expired, and is dead-lettered with a failure notice.
    let tomorrow = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        + Duration::from_secs(86_400))
    .as_millis()
    .to_string();
    let _resp = responder(&r, "svc", "exit 0", &[("RELAY_FAKE_NOW_MS", &tomorrow)]);
    let out = r
        .cmd(["request", "svc", "late", "--timeout", "50s"])
        .code(75);
    assert!(out.stderr.contains("(ttl_expired)"), "{}", out.stderr);
    assert!(reply_dirs(&r).is_empty(), "{}", r.listing());
}

#[test]
fn a_refused_send_exits_as_send_and_leaves_no_endpoint() {
    let r = Relay::new();
    r.add(&["svc"]);
    // No endpoint: 69, as relay send.
    r.cmd(["request", "nobody.home", "hi", "--timeout", "50s"])
        .code(69)
        .stderr_has(&["no endpoint matches 'nobody.home'"]);
    assert!(reply_dirs(&r).is_empty(), "{}", r.listing());
    // An invalid sender, found once the reply endpoint exists: 65.
    r.cmd([
        "request",
        "svc",
        "hi",
        "--from",
        "not a subject",
        "--timeout",
        "50s",
    ])
    .code(65);
    assert!(reply_dirs(&r).is_empty(), "{}", r.listing());
    // Denied by the access rules: 77, as relay send (its failure notice
    // went to the reply endpoint, which is gone too).
    r.write_file(
        "access-rules.json",
        r#"[{"from": "evil.*", "to": ">", "action": "deny", "priority": 10}]"#,
    );
    r.cmd([
        "request",
        "svc",
        "hi",
        "--from",
        "evil.one",
        "--timeout",
        "50s",
    ])
    .code(77)
    .stderr_has(&["evil.one"]);
    assert!(reply_dirs(&r).is_empty(), "{}", r.listing());
    assert!(r.files("svc", "new").is_empty());
}

#[test]
fn sigterm_and_sigint_end_the_wait_and_remove_the_endpoint() {
    for sig in ["TERM", "INT"] {
        let r = Relay::new();
        r.add(&["svc"]);
        let mut req = Proc::start(&r, &["request", "svc", "hi", "--timeout", "50s"], &[]);
        wait_until(secs(20), "the request to be sent", || {
            !r.files("svc", "new").is_empty()
        });
        assert_eq!(reply_dirs(&r).len(), 1, "{}", r.listing());
        req.signal(sig);
        let code = req.finish(secs(20));
        assert_eq!(code, 130, "SIG{sig}\n{}", req.dump());
        assert!(
            req.err
                .seen
                .iter()
                .any(|l| l.contains("interrupted while waiting")),
            "{}",
            req.dump()
        );
        assert!(reply_dirs(&r).is_empty(), "SIG{sig}\n{}", r.listing());
    }
}

#[test]
fn a_fan_out_fails_only_once_every_copy_failed() {
    let r = Relay::new();
    r.add(&["svc.a", "svc.b"]);
    let _nacker = responder(&r, "svc.a", "exit 3", &[]);
    // svc.b answers only once svc.a's failure notice is out: a wait that
    // ended at the first notice would have missed the reply.
    let late = format!(
        r#"for i in $(seq 2000); do relay events --json --kind failure_notice | grep -q . && break; sleep 0.01; done; {ECHO}"#
    );
    let _replier = responder(&r, "svc.b", &late, &[]);
    let out = r
        .cmd(["request", "svc.*", "anyone", "--timeout", "50s"])
        .success();
    assert!(out.stdout.contains(r#""echo""#), "{}", out.stdout);
    assert!(reply_dirs(&r).is_empty(), "{}", r.listing());
    // Every copy failing ends it with the code of the first.
    r.cmd(["endpoints", "remove", "svc.b", "--force"]).success();
    r.add(&["svc.c"]);
    let _nacker_c = responder(&r, "svc.c", "exit 4", &[]);
    r.cmd(["request", "svc.*", "doomed", "--timeout", "50s"])
        .code(65)
        .stderr_has(&["(nack): handler exited with status"]);
    assert!(reply_dirs(&r).is_empty(), "{}", r.listing());
}

#[test]
fn a_request_to_a_pattern_matching_its_own_endpoint_is_not_its_own_reply() {
    let r = Relay::new();
    r.add(&["svc"]);
    let _resp = responder(&r, "svc", ECHO, &[]);
    let out = r.cmd(["request", ">", "hi", "--timeout", "50s"]).success();
    let reply: Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| out.fail(&format!("not JSON: {e}")));
    assert_eq!(reply["echo"]["payload"], "hi");
    assert!(reply_dirs(&r).is_empty(), "{}", r.listing());
}

#[test]
fn a_busy_index_while_the_reply_arrives_delays_it_and_loses_nothing() {
    let r = Relay::new();
    r.add(&["svc"]);
    r.cmd(["status"]).success(); // the index exists
    let mut req = Proc::start(
        &r,
        &["request", "svc", "hi", "--timeout", "50s"],
        &[("RELAY_LOCK_TIMEOUT_MS", "300")],
    );
    wait_until(secs(20), "the request to be sent", || {
        !r.files("svc", "new").is_empty()
    });
    let reply_to = reply_dirs(&r).pop().unwrap_or_default();
    // An operator's long write transaction on relay.db; sends go to the
    // journal, so the reply still arrives.
    let db = rusqlite::Connection::open(r.path("relay.db")).expect("open relay.db");
    db.execute_batch("BEGIN IMMEDIATE").expect("begin");
    r.cmd(["send", &reply_to, "answer", "--from", "svc"])
        .success();
    // The claim cannot be recorded: given back, and looked at again.
    req.stderr_line(secs(30), "looking again");
    assert!(req.running(), "{}", req.dump());
    db.execute_batch("ROLLBACK").expect("rollback");
    drop(db);
    assert_eq!(req.finish(secs(30)), 0, "{}", req.dump());
    assert_eq!(req.out.seen, vec!["answer".to_string()], "{}", req.dump());
    assert!(reply_dirs(&r).is_empty(), "{}", r.listing());
}

#[test]
fn a_late_reply_or_failure_notice_does_not_make_the_reply_endpoint_again() {
    let r = Relay::new();
    r.add(&["svc"]);
    // Nobody answers in time; the request itself lives on (an hour).
    r.cmd(["request", "svc", "q", "--timeout", "200ms", "--ttl", "1h"])
        .code(75);
    assert!(reply_dirs(&r).is_empty(), "{}", r.listing());
    let msg = r.cmd(["recv", "svc", "--json"]).success().json();
    let reply_to = msg["replyTo"].as_str().unwrap_or_default().to_string();
    let id = msg["id"].as_str().unwrap_or_default().to_string();
    assert!(reply_to.starts_with("relay.inbox.query."), "{msg}");
    // The late reply is refused (69), naming why; nothing is written.
    r.cmd(["send", &reply_to, "too late", "--from", "svc"])
        .code(69)
        .stderr_has(&[&format!("reply endpoint '{reply_to}' is gone")]);
    // A late failure (the handler gives up now): the dead letter stands,
    // its notice is refused and recorded, not dead-lettered anew.
    r.cmd(["nack", "svc", &id, "--reason", "gave up"]).success();
    assert_eq!(r.files("svc", "failed").len(), 2, "{}", r.listing());
    assert!(reply_dirs(&r).is_empty(), "{}", r.listing());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let refused = r.events_of(now, "failure_notice_refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
}
