//! `GET /api/relay/stream` (dorkos-http.md §4) read as an EventSource
//! reads it: headers, `relay_connected` first, `relay_message` carrying
//! the stored envelope with `id:` the envelope id, resumption by
//! `Last-Event-ID`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};

use super::{assert_envelope, assert_iso, serve};
use crate::harness::{Relay, T};
use crate::surfaces::{Sse, secs};

/// The response head of `GET path` on a stream, lowercased header names.
fn head(addr: std::net::SocketAddr, path: &str) -> Vec<String> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(secs(10))).expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("send");
    let mut r = BufReader::new(s);
    let mut lines = Vec::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap_or(0) == 0 {
            break;
        }
        let l = l.trim_end().to_string();
        if l.is_empty() {
            break;
        }
        lines.push(l.to_ascii_lowercase());
    }
    lines
}

#[test]
fn the_stream_opens_with_relay_connected_then_streams_stored_envelopes_with_their_ids() {
    let r = Relay::new();
    r.add(&["agent.b", "relay.human.console.u1"]);
    let s = serve(&r);
    let h = head(s.addr, "/api/relay/stream?subject=agent.b");
    assert_eq!(
        h.first().map(String::as_str),
        Some("http/1.1 200 ok"),
        "{h:?}"
    );
    for want in [
        "content-type: text/event-stream",
        "cache-control: no-cache",
        "x-accel-buffering: no",
    ] {
        assert!(h.iter().any(|l| l == want), "no {want:?} in {h:?}");
    }

    // No subject: DorkOS's default pattern.
    let mut console = Sse::open(s.addr, "/api/relay/stream");
    let hello = console.until(secs(10), "relay_connected", |_| true);
    assert_eq!(hello.event, "relay_connected", "first: {hello:?}");
    assert_eq!(hello.id, None, "relay_connected has no id: {hello:?}");
    assert_eq!(hello.data["pattern"], "relay.human.console.>");
    assert_iso(&hello.data["connectedAt"]);
    assert_eq!(hello.data["connectedAt"], "2026-01-01T00:00:00.000Z");

    let mut sse = Sse::open(s.addr, "/api/relay/stream?subject=agent.b");
    sse.until(secs(10), "relay_connected", |e| {
        e.event == "relay_connected"
    });
    let other = r
        .cmd(["send", "agent.b", "{\"n\":1}", "--from", "agent.a"])
        .at(T)
        .success()
        .id();
    let id = r
        .cmd([
            "send",
            "relay.human.console.u1",
            "{\"text\":\"hi\"}",
            "--from",
            "agent.a",
        ])
        .at(T + 1)
        .success()
        .id();
    let ev = console.until(secs(10), "the console message", |e| {
        e.event == "relay_message"
    });
    assert_eq!(
        ev.id.as_deref(),
        Some(id.as_str()),
        "id: is the envelope id: {ev:?}"
    );
    assert_envelope(&ev.data);
    let stored = r.read_json(&format!("mailboxes/relay.human.console.u1/new/{id}.json"));
    assert_eq!(ev.data, stored, "the envelope as stored");
    let mine = sse.until(secs(10), "agent.b's message", |e| {
        e.event == "relay_message"
    });
    assert_eq!(mine.data["id"], other.as_str());
    assert!(
        console.seen.iter().all(|e| e.data["id"] != other.as_str()),
        "agent.b is not under relay.human.console.>: {:?}",
        console.seen
    );
    // The stream observes: the copy is still there for its consumer.
    assert_eq!(r.files("agent.b", "new"), vec![format!("{other}.json")]);
}

#[test]
fn a_client_reconnecting_with_last_event_id_gets_what_it_missed_in_order() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    let s = serve(&r);
    let send = |i: u64| {
        r.cmd([
            "send",
            "agent.b",
            &format!("{{\"n\":{i}}}"),
            "--from",
            "agent.a",
        ])
        .at(T + i)
        .success()
        .id()
    };
    let mut sse = Sse::open(s.addr, "/api/relay/stream?subject=agent.b");
    sse.until(secs(10), "relay_connected", |e| {
        e.event == "relay_connected"
    });
    let first: Vec<String> = (0..3).map(send).collect();
    let mut last = None;
    for id in &first {
        let ev = sse.until(secs(10), "a message", |e| e.event == "relay_message");
        assert_eq!(ev.data["id"], id.as_str());
        last = ev.id;
    }
    drop(sse);
    // Sent while the client was away.
    let missed: Vec<String> = (3..5).map(send).collect();
    let last = last.unwrap_or_default();
    assert_eq!(last, first[2]);
    for (path, headers) in [
        (
            "/api/relay/stream?subject=agent.b".to_string(),
            vec![("Last-Event-ID", last.as_str())],
        ),
        (
            format!("/api/relay/stream?subject=agent.b&after={last}"),
            vec![],
        ),
    ] {
        let mut again = Sse::open_with(s.addr, &path, &headers);
        let hello = again.until(secs(10), "relay_connected", |_| true);
        assert_eq!(hello.event, "relay_connected");
        let got: Vec<Value> = (0..2)
            .map(|_| {
                again
                    .until(secs(10), "a missed message", |e| e.event == "relay_message")
                    .data["id"]
                    .clone()
            })
            .collect();
        assert_eq!(got, vec![json!(missed[0]), json!(missed[1])], "{path}");
        assert!(
            again
                .next(std::time::Instant::now() + Duration::from_millis(600))
                .is_none(),
            "nothing else: {:?}",
            again.seen
        );
    }
}

#[test]
fn bad_patterns_and_positions_are_400_before_the_stream_starts() {
    let r = Relay::new();
    let s = serve(&r);
    for bad in ["a..b", "relay.system.", "%3E.x"] {
        let resp = s.get(&format!("/api/relay/stream?subject={bad}"));
        let v = resp.assert_error(400);
        assert_eq!(v["error"], "Invalid subscription pattern", "{v}");
        assert_eq!(
            v["allowedPrefixes"],
            json!(["relay.human.console.", "relay.system.", "relay.signal."]),
            "{v}"
        );
    }
    s.get("/api/relay/stream?subject=agent.b&after=not%20an%20id")
        .assert_error(400);
}

/// Event ids go on rising across `doctor --repair`, which sets a damaged
/// index aside and starts a new one: a client resuming with the
/// `Last-Event-ID` it had before the repair gets the events after it
/// (before, the new index numbered its events from 1 again, so a resumed
/// stream skipped them until the ids caught up).
#[test]
fn a_stream_resumes_across_a_repair_of_the_index() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    let breakers = |action: &str, sender: &str| {
        r.cmd(["breakers", action, sender, "agent.b"])
            .at(T)
            .success();
    };
    for _ in 0..3 {
        breakers("open", "agent.x");
        breakers("reset", "agent.x");
    }
    let s = serve(&r);
    // From the first event on: the six above.
    let mut sse = Sse::open(s.addr, "/api/relay/stream?subject=%3E&after=0");
    let mut last = String::new();
    for _ in 0..6 {
        let ev = sse.until(secs(10), "an event", |e| e.event == "relay_event");
        last = ev.id.unwrap_or_default();
    }
    drop(sse);
    drop(s);
    let event_part = |id: &str| -> i64 {
        id.split(':')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a stream position: {id:?}"))
    };
    assert!(event_part(&last) >= 6, "{last}");
    // The index damaged beyond reading; the repair starts a new one.
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(r.path(&format!("relay.db{suffix}")));
    }
    r.write_file("relay.db", b"this is not an SQLite database, not at all");
    r.cmd(["doctor", "--repair"]).at(T).run();
    assert!(
        std::fs::read(r.path("relay.db")).is_ok_and(|b| b.starts_with(b"SQLite format 3")),
        "a new index: {}",
        r.listing()
    );
    // After the repair, one event.
    breakers("open", "agent.y");
    let s = serve(&r);
    let mut again = Sse::open_with(
        s.addr,
        "/api/relay/stream?subject=%3E",
        &[("Last-Event-ID", last.as_str())],
    );
    let ev = again.until(secs(10), "the event after the repair", |e| {
        e.event == "relay_event"
    });
    assert_eq!(ev.data["kind"], "breaker_opened", "{:?}", again.seen);
    assert_eq!(ev.data["sender"], "agent.y", "{:?}", again.seen);
    let id = ev.id.unwrap_or_default();
    assert!(event_part(&id) > event_part(&last), "{id} after {last}");
}
