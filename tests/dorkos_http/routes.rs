//! DorkOS's core routes (dorkos-http.md §3): statuses, bodies and shapes,
//! and what each leaves on disk.

use serde_json::{Value, json};

use super::{
    assert_dead_letter, assert_delivery_metrics, assert_envelope, assert_indexed, assert_span,
    assert_validation, post, publish, serve,
};
use crate::harness::{Relay, T};
use crate::surfaces::{Server, http, http_body, send_json};

/// The sorted keys of object `v`.
fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

fn file(id: &str) -> String {
    format!("{id}.json")
}

#[test]
fn publish_delivers_through_the_send_pipeline_and_answers_a_publish_result() {
    let r = Relay::new();
    r.add(&["agent.a", "agent.b"]);
    let s = serve(&r);
    let raw = post(
        &s,
        "/api/relay/messages",
        &json!({"subject": "agent.a", "from": "agent.z", "payload": {"n": 1}, "replyTo": "agent.z"}),
    );
    assert_eq!(raw.status, 200, "{raw:?}");
    assert!(
        raw.body.starts_with(r#"{"messageId":""#)
            && raw.body.find("deliveredTo") < raw.body.find("mailboxPressure"),
        "DorkOS's key order: {}",
        raw.body
    );
    let v = raw.json();
    let id = v["messageId"].as_str().unwrap_or_default().to_string();
    assert!(crate::harness::is_ulid(&id), "{v}");
    assert_eq!(v["deliveredTo"], 1, "{v}");
    assert_eq!(v["mailboxPressure"], json!({"agent.a": 0.0}), "{v}");
    assert!(v.get("rejected").is_none(), "{v}");
    // The copy as `relay send` writes it: hop-updated budget, replyTo.
    let env = r.read_json(&format!("mailboxes/agent.a/new/{}", file(&id)));
    assert_envelope(&env);
    assert_eq!(env["payload"], json!({"n": 1}), "{env}");
    assert_eq!(
        (&env["from"], &env["replyTo"]),
        (&json!("agent.z"), &json!("agent.z")),
        "{env}"
    );
    assert_eq!(env["budget"]["hopCount"], 1, "{env}");
    assert_eq!(
        env["createdAt"], "2026-01-01T00:00:00.000Z",
        "the server's clock: {env}"
    );

    // A pattern fans out; pressure is the one before this delivery.
    let v = publish(
        &s,
        &json!({"subject": "agent.*", "from": "agent.z", "payload": "all"}),
    );
    assert_eq!(v["deliveredTo"], 2, "{v}");
    let p = &v["mailboxPressure"];
    assert_eq!(keys(p), vec!["agent.a", "agent.b"], "{v}");
    assert!(
        p["agent.a"].as_f64().unwrap_or(0.0) > 0.0,
        "agent.a held one already: {v}"
    );
    assert_eq!(p["agent.b"], 0.0, "{v}");

    // Nothing matched: 200, deliveredTo 0, dead-lettered under the subject.
    let v = publish(
        &s,
        &json!({"subject": "nobody.home", "from": "agent.z", "payload": 1}),
    );
    assert_eq!(keys(&v), vec!["deliveredTo", "messageId"], "{v}");
    assert_eq!(v["deliveredTo"], 0);
    let nm = v["messageId"].as_str().unwrap_or_default();
    assert_eq!(
        r.files("nobody.home", "failed"),
        vec![file(nm), format!("{nm}.reason.json")]
    );

    // The idempotency key (relay's addition, body or header): a repeat
    // sends nothing and names the original.
    let body =
        json!({"subject": "agent.b", "from": "agent.z", "payload": 2, "idempotencyKey": "k-1"});
    let first = publish(&s, &body);
    let again = publish(&s, &body);
    assert_eq!(again["messageId"], first["messageId"], "{again}");
    assert_eq!(
        (again["deliveredTo"].clone(), again["duplicate"].clone()),
        (json!(0), json!(true))
    );
    assert_eq!(
        r.files("agent.b", "new").len(),
        2,
        "one copy of the keyed message"
    );
}

#[test]
fn publish_refusals_are_200_with_rejected_and_leave_nothing() {
    let r = Relay::new();
    r.add(&["agent.full", "agent.ok", "agent.ok2"]);
    r.write_file(
        "config.json",
        r#"{"reliability":{"backpressure":{"maxMailboxSize":1},"rateLimit":{"maxPerWindow":2,"windowSecs":60}}}"#,
    );
    let s = serve(&r);
    publish(
        &s,
        &json!({"subject": "agent.full", "from": "agent.p", "payload": 0}),
    );
    // Full mailbox: refused, no file, no dead letter (§3.1).
    let v = publish(
        &s,
        &json!({"subject": "agent.full", "from": "agent.q", "payload": 1}),
    );
    assert_eq!(v["deliveredTo"], 0, "{v}");
    assert_eq!(v["rejected"][0]["endpointHash"], "agent.full", "{v}");
    assert_eq!(v["rejected"][0]["reason"], "backpressure", "{v}");
    assert_eq!(v["mailboxPressure"], json!({"agent.full": 1.0}), "{v}");
    assert_eq!(r.files("agent.full", "new").len(), 1);
    assert!(r.files("agent.full", "failed").is_empty());

    // Past the budget's TTL: budget_exceeded, dead-lettered, trace failed
    // with its budgetCode.
    let v = publish(
        &s,
        &json!({"subject": "agent.ok", "from": "agent.q", "payload": 2, "budget": {"ttl": 1}}),
    );
    assert_eq!(v["deliveredTo"], 0, "{v}");
    assert_eq!(v["rejected"][0]["reason"], "budget_exceeded", "{v}");
    let late = v["messageId"].as_str().unwrap_or_default().to_string();
    assert!(r.files("agent.ok", "failed").contains(&file(&late)));
    let t = s.get_json(&format!("/api/relay/messages/{late}/trace"));
    let span = &t["spans"][0];
    assert_span(span);
    assert_eq!(span["status"], "failed", "{t}");
    let meta: Value =
        serde_json::from_str(span["metadata"].as_str().unwrap_or("{}")).unwrap_or_default();
    assert_eq!(meta["budgetCode"], "ttl_expired", "{t}");
    assert_eq!(meta["rejectionCode"], "budget_exceeded", "{t}");

    // The sender's third charged publish in the window (a refused one
    // costs nothing): rate_limited on "*", nothing written anywhere.
    publish(
        &s,
        &json!({"subject": "agent.ok2", "from": "agent.q", "payload": 3}),
    );
    let before = r.mailbox_tree();
    let v = publish(
        &s,
        &json!({"subject": "agent.ok", "from": "agent.q", "payload": 4}),
    );
    assert_eq!(v["deliveredTo"], 0, "{v}");
    assert_eq!(
        v["rejected"],
        json!([{"endpointHash": "*", "reason": "rate_limited", "code": "rate_limited",
                "detail": v["rejected"][0]["detail"], "deadLettered": false,
                "retryAfterMs": v["rejected"][0]["retryAfterMs"]}]),
        "{v}"
    );
    assert_eq!(
        r.mailbox_tree(),
        before,
        "a rate-limited publish writes nothing"
    );
}

#[test]
fn publish_validates_like_dorkos_400_403_422_and_writes_nothing() {
    let r = Relay::new();
    r.add(&["agent.a"]);
    r.write_file(
        "access-rules.json",
        r#"[{"from": "evil.*", "to": ">", "action": "deny", "priority": 100}]"#,
    );
    let s = serve(&r);
    let path = "/api/relay/messages";
    let before = r.mailbox_tree();
    assert_validation(&post(&s, path, &json!({})), &["from", "subject"], false);
    assert_validation(
        &post(&s, path, &json!({"subject": "", "from": "x"})),
        &["subject"],
        false,
    );
    assert_validation(
        &post(&s, path, &json!({"subject": "agent.a", "from": 7})),
        &["from"],
        false,
    );
    assert_validation(
        &post(
            &s,
            path,
            &json!({"subject": "agent.a", "from": "x", "budget": {"maxHops": 0}}),
        ),
        &["budget"],
        false,
    );
    assert_validation(
        &post(
            &s,
            path,
            &json!({"subject": "agent.a", "from": "x", "budget": {"callBudgetRemaining": -1}}),
        ),
        &["budget"],
        false,
    );
    assert_validation(&post(&s, path, &json!([1, 2])), &[], true);
    // A body not sent as JSON is no body at all (express.json).
    let plain = http_body(
        s.addr,
        "POST",
        path,
        &[("Content-Type", "text/plain")],
        br#"{"subject":"agent.a","from":"x"}"#,
    );
    assert_validation(&plain, &[], true);
    assert!(
        plain.json()["details"]["formErrors"][0]
            .as_str()
            .unwrap_or_default()
            .contains("received undefined"),
        "{plain:?}"
    );
    // Malformed JSON.
    http_body(
        s.addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        b"{nope",
    )
    .assert_code(400, "INVALID_JSON");

    for from in [
        "agent:x",
        "relay.system.x",
        "relay.human.console.bot",
        "relay.bridge.y",
    ] {
        let resp = post(
            &s,
            path,
            &json!({"subject": "agent.a", "from": from, "payload": 1}),
        );
        let v = resp.assert_code(403, "RESERVED_SENDER");
        assert!(
            v["error"]
                .as_str()
                .unwrap_or_default()
                .starts_with(&format!("Sender \"{from}\" is a reserved server principal")),
            "{v}"
        );
    }
    // relay.human.* without .bot is not reserved.
    assert_eq!(
        publish(
            &s,
            &json!({"subject": "agent.a", "from": "relay.human.console.u1", "payload": 1})
        )["deliveredTo"],
        1
    );
    let before_bad = r.mailbox_tree();
    post(
        &s,
        path,
        &json!({"subject": "agent..a", "from": "x", "payload": 1}),
    )
    .assert_code(422, "PUBLISH_FAILED");
    assert_eq!(
        r.mailbox_tree(),
        before_bad,
        "an invalid subject writes nothing"
    );
    let denied = post(
        &s,
        path,
        &json!({"subject": "agent.a", "from": "evil.one", "payload": 1}),
    );
    denied.assert_code(422, "PUBLISH_FAILED");
    assert_eq!(
        r.files("agent.a", "new").len(),
        1,
        "denied: no copy delivered (only the relay.human one)"
    );
    assert!(before.len() <= r.mailbox_tree().len());
}

/// m1 → agent.a, m2 → agent.b, m3 → agent.* (both), from agent.s, one
/// millisecond apart; their ids.
fn three_messages(r: &Relay) -> [String; 3] {
    r.add(&["agent.a", "agent.b"]);
    let send = |subj: &str, at: u64| {
        r.cmd(["send", subj, "{\"k\":1}", "--from", "agent.s"])
            .at(at)
            .success()
            .id()
    };
    [
        send("agent.a", T),
        send("agent.b", T + 1),
        send("agent.*", T + 2),
    ]
}

/// `(id, endpointHash)` of a page's rows.
fn pairs(page: &Value) -> Vec<(String, String)> {
    page["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("messages: {page}"))
        .iter()
        .map(|m| {
            assert_indexed(m);
            (
                m["id"].as_str().unwrap_or_default().to_string(),
                m["endpointHash"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn messages_lists_index_rows_newest_first_with_publish_rows_and_cursors() {
    let r = Relay::new();
    let [m1, m2, m3] = three_messages(&r);
    let s = serve(&r);
    let all = s.get_json("/api/relay/messages");
    assert!(all.get("nextCursor").is_none(), "{all}");
    let p = |id: &str, ep: &str| (id.to_string(), ep.to_string());
    let want = vec![
        p(&m3, "agent.b"),
        p(&m3, "agent.a"),
        p(&m3, "*"),
        p(&m2, "agent.b"),
        p(&m2, "*"),
        p(&m1, "agent.a"),
        p(&m1, "*"),
    ];
    assert_eq!(pairs(&all), want);
    let rows = all["messages"].as_array().cloned().unwrap_or_default();
    let star = &rows[2];
    assert_eq!(
        (&star["status"], &star["sender"], &star["subject"]),
        (&json!("delivered"), &json!("agent.s"), &json!("agent.*")),
        "{star}"
    );
    assert_eq!(
        keys(&rows[0]),
        vec![
            "createdAt",
            "endpointHash",
            "expiresAt",
            "id",
            "sender",
            "status",
            "subject"
        ]
    );
    assert_eq!(
        (&rows[0]["status"], &rows[0]["sender"]),
        (&json!("pending"), &Value::Null),
        "{}",
        rows[0]
    );
    assert_eq!(rows[0]["createdAt"], "2026-01-01T00:00:00.002Z");
    assert_eq!(rows[0]["expiresAt"], "2026-01-01T01:00:00.002Z");

    // Pages of two, cursor "<id> <endpointHash>", until the end.
    let mut got = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let q = match &cursor {
            None => "/api/relay/messages?limit=2".to_string(),
            Some(c) => format!(
                "/api/relay/messages?limit=2&cursor={}",
                c.replace(' ', "%20")
            ),
        };
        let page = s.get_json(&q);
        let rows = pairs(&page);
        assert!(rows.len() <= 2, "{page}");
        got.extend(rows.clone());
        match page["nextCursor"].as_str() {
            Some(c) => {
                let last = rows.last().cloned().unwrap_or_default();
                assert_eq!(c, format!("{} {}", last.0, last.1), "{page}");
                cursor = Some(c.to_string());
            }
            None => break,
        }
    }
    assert_eq!(got, want, "the pages together are the whole list");
    // `+` decodes to a space too.
    let page = s.get_json(&format!("/api/relay/messages?cursor={m3}+agent.a"));
    assert_eq!(pairs(&page)[0], p(&m3, "*"));

    // Filters: from matches the publish rows, subject is exact.
    let from = s.get_json("/api/relay/messages?from=agent.s");
    assert_eq!(pairs(&from), vec![p(&m3, "*"), p(&m2, "*"), p(&m1, "*")]);
    assert_eq!(
        s.get_json("/api/relay/messages?from=nobody")["messages"],
        json!([])
    );
    let subj = s.get_json("/api/relay/messages?subject=agent.a");
    assert_eq!(pairs(&subj), vec![p(&m1, "agent.a"), p(&m1, "*")]);
    // relay gives status=new|cur|failed their meaning (DorkOS matches nothing).
    r.cmd(["recv", "agent.a"]).at(T + 10).success();
    let cur = s.get_json("/api/relay/messages?status=cur");
    assert_eq!(pairs(&cur), vec![p(&m1, "agent.a")]);
    assert_eq!(
        pairs(&s.get_json("/api/relay/messages?status=new")).len(),
        3
    );
    assert_eq!(
        s.get_json("/api/relay/messages?status=failed")["messages"],
        json!([])
    );

    for bad in [
        "limit=0",
        "limit=101",
        "limit=abc",
        "limit=",
        "limit=1.5",
        "limit=1&limit=2",
    ] {
        assert_validation(
            &s.get(&format!("/api/relay/messages?{bad}")),
            &["limit"],
            false,
        );
    }
    assert_validation(
        &s.get("/api/relay/messages?status=pending"),
        &["status"],
        false,
    );
    assert_eq!(pairs(&s.get_json("/api/relay/messages?limit=100")).len(), 7);
}

#[test]
fn a_message_detail_has_its_representative_row_and_every_delivery() {
    let r = Relay::new();
    let [_, _, m3] = three_messages(&r);
    let s = serve(&r);
    let d = s.get_json(&format!("/api/relay/messages/{m3}"));
    assert_indexed(&d);
    assert_eq!(
        (&d["endpointHash"], &d["subject"]),
        (&json!("agent.a"), &json!("agent.*")),
        "{d}"
    );
    let eps: Vec<&str> = d["deliveries"]
        .as_array()
        .unwrap_or_else(|| panic!("{d}"))
        .iter()
        .map(|x| {
            assert_indexed(x);
            x["endpointHash"].as_str().unwrap_or_default()
        })
        .collect();
    assert_eq!(eps, vec!["*", "agent.a", "agent.b"], "{d}");
    let nf = s.get("/api/relay/messages/01JZ0000000000000000000000");
    assert_eq!(
        (nf.status, nf.json()),
        (404, json!({"error": "Message not found"}))
    );
}

#[test]
fn endpoints_list_register_and_unregister_as_dorkos_does() {
    let r = Relay::new();
    r.add(&["agent.a"]);
    r.write_file("mailboxes/agent.a/.owner", "agent.boss");
    let s = serve(&r);
    let list = s.get_json("/api/relay/endpoints");
    let a = &list
        .as_array()
        .unwrap_or_else(|| panic!("an array: {list}"))[0];
    assert_eq!(a["subject"], "agent.a");
    assert_eq!(a["hash"], "agent.a");
    assert_eq!(a["maildirPath"], r.mailbox("agent.a").display().to_string());
    super::assert_iso(&a["registeredAt"]);
    assert_eq!(a["owner"], "agent.boss", "{a}");

    let created = post(
        &s,
        "/api/relay/endpoints",
        &json!({"subject": "work.queue", "description": "ignored"}),
    );
    assert_eq!(created.status, 201, "{created:?}");
    let v = created.json();
    assert_eq!(
        (&v["subject"], &v["hash"]),
        (&json!("work.queue"), &json!("work.queue")),
        "{v}"
    );
    assert!(v.get("owner").is_none(), "{v}");
    for sub in ["tmp", "new", "cur", "failed"] {
        assert!(r.mailbox("work.queue").join(sub).is_dir(), "{sub}/ created");
    }
    assert_eq!(
        s.get_json("/api/relay/endpoints").as_array().map(Vec::len),
        Some(2)
    );

    let again = post(
        &s,
        "/api/relay/endpoints",
        &json!({"subject": "work.queue"}),
    );
    assert_eq!(again.status, 422, "{again:?}");
    assert!(
        again.json().get("code").is_none(),
        "no code on registry errors: {again:?}"
    );
    for bad in ["work.*", "work..x", "Work.Queue"] {
        let resp = post(&s, "/api/relay/endpoints", &json!({"subject": bad}));
        assert_eq!(resp.status, 422, "{bad}: {resp:?}");
        assert!(
            resp.json()["error"].is_string() && resp.json().get("code").is_none(),
            "{resp:?}"
        );
    }
    let reserved = post(
        &s,
        "/api/relay/endpoints",
        &json!({"subject": "relay.agent.x"}),
    );
    assert_eq!(reserved.status, 403, "{reserved:?}");
    let rv = reserved.json();
    assert!(
        rv.get("code").is_none()
            && rv["error"]
                .as_str()
                .unwrap_or_default()
                .starts_with("Subject \"relay.agent.x\" is in a namespace DorkOS manages"),
        "{rv}"
    );
    assert!(!r.mailbox("relay.agent.x").exists());
    assert_validation(
        &post(&s, "/api/relay/endpoints", &json!({"description": "x"})),
        &["subject"],
        false,
    );

    let del = http(s.addr, "DELETE", "/api/relay/endpoints/work.queue", &[]);
    assert_eq!(del.status, 200, "{del:?}");
    assert_eq!(del.json()["success"], true);
    assert!(
        !r.mailbox("work.queue").exists(),
        "the whole mailbox is deleted"
    );
    let gone = http(s.addr, "DELETE", "/api/relay/endpoints/work.queue", &[]);
    assert_eq!(
        (gone.status, gone.json()),
        (404, json!({"error": "Endpoint not found"}))
    );
}

#[test]
fn an_inbox_pages_its_rows_oldest_first_with_payloads_by_status() {
    let r = Relay::new();
    r.add(&["agent.a"]);
    let ids: Vec<String> = (0..4)
        .map(|i| {
            r.cmd([
                "send",
                "agent.a",
                &format!("{{\"n\":{i}}}"),
                "--from",
                "agent.s",
            ])
            .at(T + i)
            .success()
            .id()
        })
        .collect();
    // ids[0] acked, ids[1] claimed, ids[2] nacked, ids[3] waiting.
    let c = r
        .cmd(["recv", "agent.a", "--json"])
        .at(T + 10)
        .success()
        .json();
    r.cmd(["ack", "agent.a", c["id"].as_str().unwrap_or_default()])
        .at(T + 11)
        .success();
    r.cmd(["recv", "agent.a"]).at(T + 12).success();
    r.cmd(["recv", "agent.a", "--exec", "exit 3"])
        .at(T + 13)
        .success();
    let s = serve(&r);
    let path = "/api/relay/endpoints/agent.a/inbox";
    let ids_of = |v: &Value| -> Vec<String> {
        v["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|m| {
                assert_indexed(m);
                assert!(m.get("payload").is_some(), "{m}");
                m["id"].as_str().unwrap_or_default().to_string()
            })
            .collect()
    };
    let pending = s.get_json(path);
    assert_eq!(
        ids_of(&pending),
        vec![ids[1].clone(), ids[3].clone()],
        "claimed is still pending: {pending}"
    );
    assert_eq!(
        pending["messages"][0]["payload"],
        json!({"n": 1}),
        "{pending}"
    );
    assert_eq!(
        pending["messages"][1]["payload"],
        json!({"n": 3}),
        "{pending}"
    );
    assert_eq!(pending["messages"][1]["sender"], "agent.s", "{pending}");
    let delivered = s.get_json(&format!("{path}?status=delivered"));
    assert_eq!(ids_of(&delivered), vec![ids[0].clone()]);
    assert_eq!(delivered["messages"][0]["payload"], Value::Null);
    let failed = s.get_json(&format!("{path}?status=failed"));
    assert_eq!(ids_of(&failed), vec![ids[2].clone()]);
    assert_eq!(failed["messages"][0]["payload"], json!({"n": 2}));
    assert_eq!(ids_of(&s.get_json(&format!("{path}?status=all"))), ids);

    let p1 = s.get_json(&format!("{path}?status=all&limit=3"));
    assert_eq!(ids_of(&p1), ids[..3].to_vec());
    let cursor = p1["nextCursor"].as_str().unwrap_or_default().to_string();
    assert_eq!(cursor, format!("{} agent.a", ids[2]));
    let p2 = s.get_json(&format!(
        "{path}?status=all&limit=3&cursor={}",
        cursor.replace(' ', "%20")
    ));
    assert_eq!(ids_of(&p2), ids[3..].to_vec());
    assert!(p2.get("nextCursor").is_none(), "{p2}");

    let nf = s.get("/api/relay/endpoints/agent.nope/inbox");
    assert_eq!(
        (nf.status, nf.json()),
        (404, json!({"error": "Endpoint not found"}))
    );
    assert_validation(&s.get(&format!("{path}?status=new")), &["status"], false);
    assert_validation(&s.get(&format!("{path}?limit=0")), &["limit"], false);
}

#[test]
fn dead_letters_are_a_bare_array_with_envelopes_grouped_and_deleted_by_source_and_reason() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    let nacked = r
        .cmd(["send", "agent.b", "job", "--from", "agent.a"])
        .at(T)
        .success()
        .id();
    r.cmd(["recv", "agent.b", "--exec", "exit 1"])
        .at(T + 5)
        .success();
    r.cmd(["send", "nobody.x", "lost", "--from", "agent.c"])
        .at(T + 10)
        .code(69);
    let s = serve(&r);
    let list = s.get_json("/api/relay/dead-letters");
    let all = list
        .as_array()
        .unwrap_or_else(|| panic!("a bare array: {list}"));
    assert_eq!(all.len(), 2, "{list}");
    for d in all {
        assert_dead_letter(d);
    }
    let first = &all[0];
    assert_eq!(
        (&first["messageId"], &first["endpointHash"]),
        (&json!(nacked), &json!("agent.b")),
        "id ascending: {list}"
    );
    assert_eq!(first["reason"], "handler exited with status 1");
    assert_eq!(first["failedAt"], "2026-01-01T00:00:00.005Z");
    assert_eq!(first["envelope"]["id"], nacked.as_str());
    assert_eq!(all[1]["endpointHash"], "nobody.x");
    assert_eq!(all[1]["envelope"]["from"], "agent.c");
    let only = s.get_json("/api/relay/dead-letters?endpointHash=nobody.x");
    assert_eq!(only.as_array().map(Vec::len), Some(1), "{only}");
    assert_eq!(
        s.get_json("/api/relay/dead-letters?endpointHash=agent.none"),
        json!([])
    );

    let groups = s.get_json("/api/relay/dead-letters/aggregated");
    let g = groups["groups"]
        .as_array()
        .unwrap_or_else(|| panic!("{groups}"));
    assert_eq!(g.len(), 2, "{groups}");
    assert_eq!(
        keys(&g[0]),
        vec![
            "count",
            "firstSeen",
            "lastSeen",
            "reason",
            "sample",
            "source"
        ]
    );
    assert_eq!(
        (&g[0]["source"], &g[0]["reason"], &g[0]["count"]),
        (
            &json!("agent.a"),
            &json!("handler exited with status 1"),
            &json!(1)
        )
    );
    assert_eq!(g[0]["firstSeen"], g[0]["lastSeen"]);
    assert_eq!(g[0]["sample"]["id"], nacked.as_str());

    let path = "/api/relay/dead-letters";
    for body in [
        json!({}),
        json!({"source": "agent.a"}),
        json!({"source": "", "reason": "x"}),
    ] {
        let resp = send_json(s.addr, "DELETE", path, &body);
        assert_eq!(
            (resp.status, resp.json()),
            (400, json!({"error": "source and reason are required"})),
            "{body}"
        );
    }
    let del = send_json(
        s.addr,
        "DELETE",
        path,
        &json!({"source": "agent.a", "reason": "handler exited with status 1"}),
    );
    assert_eq!((del.status, del.json()), (200, json!({"removed": 1})));
    assert!(
        r.files("agent.b", "failed").is_empty(),
        "both files removed"
    );
    let del = send_json(
        s.addr,
        "DELETE",
        path,
        &json!({"source": "agent.a", "reason": "handler exited with status 1"}),
    );
    assert_eq!(del.json(), json!({"removed": 0}));
    assert_eq!(s.get_json(path).as_array().map(Vec::len), Some(1));
}

#[test]
fn metrics_count_every_row_by_status_and_subject() {
    let r = Relay::new();
    three_messages(&r);
    let s = serve(&r);
    let m = s.get_json("/api/relay/metrics");
    assert_eq!(
        keys(&m),
        vec!["byStatus", "bySubject", "totalMessages"],
        "{m}"
    );
    // 4 copies and 3 publish rows.
    assert_eq!(m["totalMessages"], 7, "{m}");
    assert_eq!(m["byStatus"], json!({"delivered": 3, "pending": 4}), "{m}");
    assert_eq!(
        m["bySubject"][0],
        json!({"subject": "agent.*", "count": 3}),
        "{m}"
    );
    assert_eq!(m["bySubject"].as_array().map(Vec::len), Some(3), "{m}");
}

#[test]
fn traces_have_one_span_per_publish_and_delivery_metrics_pass_dorkos_schemas() {
    let r = Relay::new();
    let [m1, _, m3] = three_messages(&r);
    r.cmd(["send", "nobody.x", "lost", "--from", "agent.c"])
        .at(T + 3)
        .code(69);
    let lost = s_last_dead(&r);
    r.cmd(["recv", "agent.a"]).at(T + 50).success();
    let s = serve(&r);
    let t = s.get_json(&format!("/api/relay/messages/{m3}/trace"));
    assert_eq!(t["traceId"], m3.as_str());
    let spans = t["spans"].as_array().unwrap_or_else(|| panic!("{t}"));
    assert_eq!(spans.len(), 1, "one span per publish: {t}");
    let sp = &spans[0];
    assert_span(sp);
    assert_eq!(
        (&sp["subject"], &sp["status"], &sp["kind"]),
        (&json!("agent.*"), &json!("delivered"), &json!("delivery")),
        "{sp}"
    );
    let meta: Value =
        serde_json::from_str(sp["metadata"].as_str().unwrap_or("{}")).unwrap_or_default();
    assert_eq!(
        (
            meta["deliveredTo"].clone(),
            meta["rejectedCount"].clone(),
            meta["hasAdapterResult"].clone()
        ),
        (json!(2), json!(0), json!(false)),
        "{meta}"
    );
    let ns = s.get_json(&format!("/api/relay/messages/{lost}/trace"));
    assert_span(&ns["spans"][0]);
    assert_eq!(
        ns["spans"][0]["status"], "no_subscriber",
        "nothing matched: {ns}"
    );
    assert_eq!(ns["spans"][0]["deliveredAt"], Value::Null);
    let one = s.get_json(&format!("/api/relay/messages/{m1}/trace"));
    assert_eq!(
        one["spans"][0]["deliveredAt"], "2026-01-01T00:00:00.050Z",
        "claimed at T+50: {one}"
    );
    let nf = s.get("/api/relay/messages/01JZ0000000000000000000000/trace");
    assert_eq!(
        (nf.status, nf.json()),
        (404, json!({"error": "Trace not found"}))
    );

    let dm = s.get_json("/api/relay/trace/metrics");
    assert_delivery_metrics(&dm);
    assert_eq!(dm["totalMessages"], 4, "{dm}");
    assert_eq!(dm["deliveredCount"], 3, "{dm}");
    assert_eq!(dm["noSubscriberCount"], 1, "{dm}");
    assert_eq!(dm["failedCount"], 0, "{dm}");
    assert_eq!(dm["deadLetteredCount"], 1, "{dm}");
    assert_eq!(dm["p50DeliveryLatencyMs"], 50.0, "{dm}");
    assert_eq!(dm["activeEndpoints"], 4, "distinct publish subjects: {dm}");
}

/// The id of the only dead letter under nobody.x.
fn s_last_dead(r: &Relay) -> String {
    r.files("nobody.x", "failed")
        .iter()
        .find(|f| !f.ends_with(".reason.json"))
        .and_then(|f| f.strip_suffix(".json"))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn conversations_list_requests_with_dorkos_label_fallbacks() {
    let r = Relay::new();
    r.add(&["relay.agent.helper"]);
    let id = r
        .cmd([
            "send",
            "relay.agent.helper",
            "hi",
            "--from",
            "relay.human.console.u1",
        ])
        .at(T)
        .success()
        .id();
    let s = serve(&r);
    let v = s.get_json("/api/relay/conversations");
    let c = v["conversations"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(c.len(), 1, "{v}");
    let c = &c[0];
    assert_eq!(
        (&c["id"], &c["direction"], &c["status"]),
        (&json!(id), &json!("outbound"), &json!("pending")),
        "{c}"
    );
    assert_eq!(
        c["to"],
        json!({"label": "relay.agent.helper", "raw": "relay.agent.helper"})
    );
    assert_eq!(c["from"]["raw"], "relay.human.console.u1");
    assert!(
        c["from"]["label"].is_string()
            && c["preview"].is_string()
            && c["responseCount"].is_number(),
        "{c}"
    );
    super::assert_iso(&c["sentAt"]);
}

#[test]
fn adapters_bindings_and_webhooks_are_a_clear_501_and_unknown_paths_dorkos_404() {
    let r = Relay::new();
    let s: Server = serve(&r);
    for (method, path) in [
        ("GET", "/api/relay/adapters"),
        ("GET", "/api/relay/adapters/catalog"),
        ("POST", "/api/relay/adapters/reload"),
        ("GET", "/api/relay/bindings"),
        ("PATCH", "/api/relay/bindings/b1"),
        ("POST", "/api/relay/webhooks/telegram"),
        ("GET", "/api/relay/unclaimed-chats"),
    ] {
        let v = http(s.addr, method, path, &[]).assert_code(501, "NOT_IMPLEMENTED");
        assert!(
            v["error"].as_str().unwrap_or_default().contains(path),
            "{v}"
        );
    }
    for path in ["/api/relay/nope", "/api/other", "/api/relay/messages/x/y/z"] {
        let v = s.get(path).assert_code(404, "API_NOT_FOUND");
        assert_eq!(v["error"], "Not found", "{v}");
    }
}
