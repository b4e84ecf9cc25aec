//! The security frame: a foreign `Host` (DNS rebinding), a foreign
//! `Origin` on writes (CSRF), a missing token, bodies too big or too slow,
//! a slow head, and 200 idle SSE clients while API calls go on. Every
//! refusal writes nothing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{post, publish, serve, serve_with};
use crate::harness::Relay;
use crate::surfaces::{Sse, http, http_body, secs};

fn msg() -> serde_json::Value {
    json!({"subject": "agent.b", "from": "agent.a", "payload": "x"})
}

#[test]
fn a_foreign_host_is_refused_before_anything_is_read() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    let s = serve(&r);
    let body = msg().to_string();
    for host in [
        "evil.example",
        "127.0.0.1.nip.io",
        "localhost.evil.example:80",
    ] {
        let h = [("Host", host), ("Content-Type", "application/json")];
        // (http_body adds a loopback Host first; raw requests name only this one.)
        let get = raw(
            s.addr,
            &format!("GET /api/relay/status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        );
        assert!(get.starts_with("HTTP/1.1 403"), "{host}: {get}");
        assert!(
            get.contains("HOST_NOT_ALLOWED") && get.contains(host),
            "{get}"
        );
        let post = raw(
            s.addr,
            &format!(
                "POST /api/relay/messages HTTP/1.1\r\nHost: {host}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                h[1].1,
                body.len()
            ),
        );
        assert!(post.starts_with("HTTP/1.1 403"), "{host}: {post}");
    }
    assert!(r.files("agent.b", "new").is_empty(), "nothing was sent");
}

/// Sends `req` as is and reads the whole answer.
fn raw(addr: SocketAddr, req: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(secs(15))).expect("timeout");
    s.write_all(req.as_bytes()).expect("send");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn writes_from_a_foreign_origin_are_refused_and_change_nothing() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    let s = serve(&r);
    let body = msg().to_string();
    let json_ct = ("Content-Type", "application/json");
    for (k, v) in [
        ("Origin", "http://evil.example"),
        ("Origin", "null"),
        ("Origin", "http://localhost:1"),
        ("Sec-Fetch-Site", "cross-site"),
    ] {
        let resp = http_body(
            s.addr,
            "POST",
            "/api/relay/messages",
            &[json_ct, (k, v)],
            body.as_bytes(),
        );
        resp.assert_code(403, "ORIGIN_NOT_ALLOWED");
        let del = http(s.addr, "DELETE", "/api/relay/endpoints/agent.b", &[(k, v)]);
        del.assert_code(403, "ORIGIN_NOT_ALLOWED");
    }
    assert!(r.files("agent.b", "new").is_empty(), "nothing was sent");
    assert!(r.mailbox("agent.b").is_dir(), "nothing was deleted");
    // The server's own pages (same origin) may write; reads are open.
    let own = format!("http://{}", s.addr);
    let ok = http_body(
        s.addr,
        "POST",
        "/api/relay/messages",
        &[json_ct, ("Origin", &own)],
        body.as_bytes(),
    );
    assert_eq!(ok.status, 200, "{ok:?}");
    let read = http(
        s.addr,
        "GET",
        "/api/relay/endpoints",
        &[("Origin", "http://evil.example")],
    );
    assert_eq!(read.status, 200, "{read:?}");
}

#[test]
fn with_a_token_writes_need_it_and_off_loopback_every_route_does() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    let s = serve_with(&r, &[], &[("RELAY_SERVE_TOKEN", "s3cret")]);
    post(&s, "/api/relay/messages", &msg()).assert_code(401, "AUTH_REQUIRED");
    post(&s, "/api/relay/endpoints", &json!({"subject": "x.y"})).assert_code(401, "AUTH_REQUIRED");
    http(s.addr, "DELETE", "/api/relay/endpoints/agent.b", &[]).assert_code(401, "AUTH_REQUIRED");
    post(&s, "/api/relay/messages?token=wrong", &msg()).assert_code(401, "AUTH_REQUIRED");
    assert!(r.files("agent.b", "new").is_empty() && !r.mailbox("x.y").exists());
    assert_eq!(
        s.get("/api/relay/endpoints").status,
        200,
        "reads stay open on loopback"
    );
    let ok = http_body(
        s.addr,
        "POST",
        "/api/relay/messages",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer s3cret"),
        ],
        msg().to_string().as_bytes(),
    );
    assert_eq!(ok.status, 200, "{ok:?}");
    drop(s);

    let s = crate::surfaces::Server::start(
        &r,
        "0.0.0.0:0",
        &["--allow-remote"],
        &[("RELAY_SERVE_TOKEN", "s3cret")],
    );
    for path in [
        "/api/relay/messages",
        "/api/relay/endpoints",
        "/api/relay/dead-letters",
        "/api/relay/metrics",
    ] {
        s.get(path).assert_code(401, "AUTH_REQUIRED");
        assert_eq!(s.get(&format!("{path}?token=s3cret")).status, 200, "{path}");
    }
    s.get("/api/relay/stream").assert_code(401, "AUTH_REQUIRED");
    post(&s, "/api/relay/messages", &msg()).assert_code(401, "AUTH_REQUIRED");
}

#[test]
fn bodies_over_the_limit_are_413_and_write_nothing() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    r.write_file("config.json", r#"{"maxPayloadBytes": 100}"#);
    let s = serve(&r);
    let big = format!(
        r#"{{"subject":"agent.b","from":"agent.a","payload":"{}"}}"#,
        "x".repeat(1024 * 1024)
    );
    let resp = http_body(
        s.addr,
        "POST",
        "/api/relay/messages",
        &[("Content-Type", "application/json")],
        big.as_bytes(),
    );
    resp.assert_code(413, "PAYLOAD_TOO_LARGE");
    // Declared too big: refused on the head, the body never waited for.
    let started = Instant::now();
    let declared = raw(
        s.addr,
        "POST /api/relay/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\nConnection: close\r\n\r\n",
    );
    assert!(declared.starts_with("HTTP/1.1 413"), "{declared}");
    assert!(started.elapsed() < secs(5), "answered at once");
    // Within the body limit but past maxPayloadBytes.
    let over = post(
        &s,
        "/api/relay/messages",
        &json!({"subject": "agent.b", "from": "agent.a", "payload": "y".repeat(200)}),
    );
    over.assert_code(413, "PAYLOAD_TOO_LARGE");
    assert!(r.files("agent.b", "new").is_empty() && r.files("agent.b", "failed").is_empty());
    assert_eq!(
        publish(&s, &msg())["deliveredTo"],
        1,
        "a small one goes through"
    );
}

#[test]
fn a_slow_head_is_cut_off_and_a_slow_body_gets_408_while_others_are_served() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    let s = serve(&r);
    let addr = s.addr;
    let slow_head = thread::spawn(move || {
        let mut c = TcpStream::connect(addr).expect("connect");
        c.set_read_timeout(Some(secs(30))).expect("timeout");
        c.write_all(b"GET /api/relay/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .expect("half a head");
        let started = Instant::now();
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf);
        (
            started.elapsed(),
            String::from_utf8_lossy(&buf).into_owned(),
        )
    });
    let slow_body = thread::spawn(move || {
        let mut c = TcpStream::connect(addr).expect("connect");
        c.set_read_timeout(Some(secs(30))).expect("timeout");
        c.write_all(b"POST /api/relay/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{\"subject\"")
            .expect("a head and a tenth of the body");
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    });
    // Meanwhile the API answers.
    thread::sleep(Duration::from_millis(200));
    assert_eq!(s.get("/api/relay/status").status, 200);
    assert_eq!(publish(&s, &msg())["deliveredTo"], 1);
    let (took, head_answer) = slow_head.join().expect("slow head thread");
    assert!(
        took < secs(25),
        "the slow head was cut off after {took:?}: {head_answer:?}"
    );
    let body_answer = slow_body.join().expect("slow body thread");
    assert!(body_answer.starts_with("HTTP/1.1 408"), "{body_answer}");
    assert!(body_answer.contains("REQUEST_TIMEOUT"), "{body_answer}");
    assert_eq!(
        r.files("agent.b", "new").len(),
        1,
        "only the whole request was sent"
    );
}

#[test]
fn two_hundred_idle_streams_do_not_lock_out_api_calls() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    let s = serve(&r);
    let mut streams: Vec<Sse> = (0..200)
        .map(|_| Sse::open(s.addr, "/api/relay/stream?subject=agent.b"))
        .collect();
    for sse in &mut streams {
        sse.until(secs(20), "relay_connected", |e| {
            e.event == "relay_connected"
        });
    }
    for path in [
        "/api/relay/status",
        "/api/relay/messages",
        "/api/relay/endpoints",
        "/api/relay/trace/metrics",
        "/metrics",
    ] {
        assert_eq!(s.get(path).status, 200, "{path}");
    }
    let v = publish(&s, &msg());
    let id = v["messageId"].as_str().unwrap_or_default().to_string();
    for i in [0, 99, 199] {
        let ev = streams[i].until(secs(20), "the new message", |e| e.event == "relay_message");
        assert_eq!(ev.data["id"], id.as_str(), "stream {i}");
    }
    let prom = s.get("/metrics").body;
    assert!(
        prom.lines()
            .any(|l| l.starts_with("relay_serve_streams") && l.ends_with(" 200")),
        "{prom}"
    );
}
