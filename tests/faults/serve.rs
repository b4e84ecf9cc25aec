//! Fault class 9: `relay serve` under hostile clients. A head trickled one
//! byte at a time, clients that leave, a crowd of idle streams and slow
//! connections, a batch of more than a page of messages sent in one
//! millisecond, foreign `Host` names (DNS rebinding), and the status line of
//! every answer, a 503 included.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{BIN, Relay, T};
use crate::surfaces::{JSON, Server, Sse, secs, send_from, wait_until};

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, secs(5))
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    s.set_read_timeout(Some(secs(10)))
        .and_then(|()| s.set_write_timeout(Some(secs(10))))
        .unwrap_or_else(|e| panic!("cannot set socket timeouts: {e}"));
    s
}

/// An answer as read off the wire: the status line kept whole.
#[derive(Debug)]
struct Answer {
    status_line: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn parse(raw: &[u8]) -> Answer {
        let text = String::from_utf8_lossy(raw).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of headers in {text:?}"));
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default().to_string();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Answer {
            status_line,
            headers,
            body: body.to_string(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the status line and a JSON error of that code.
    #[track_caller]
    fn assert_error(&self, status_line: &str) {
        assert_eq!(self.status_line, status_line, "{self:?}");
        assert_eq!(self.header("content-type"), Some(JSON), "{self:?}");
        let v: Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"));
        assert!(
            v["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{self:?}"
        );
    }
}

/// `METHOD PATH` with exactly `headers` (no Host unless given), read to the
/// end.
#[track_caller]
fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut s = connect(addr);
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .unwrap_or_else(|e| panic!("cannot send {method} {path}: {e}"));
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("cannot read the answer to {method} {path}: {e}"));
    Answer::parse(&raw)
}

/// `GET path` with a loopback Host.
#[track_caller]
fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, "GET", path, &[("Host", &addr.to_string())])
}

/// The value of the Prometheus sample `series` in `/metrics`.
fn gauge(addr: SocketAddr, series: &str) -> Option<f64> {
    let a = get(addr, "/metrics");
    a.body
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// An SSE stream opened and past its `relay_connected`.
#[track_caller]
fn stream(addr: SocketAddr, path: &str) -> Sse {
    let mut sse = Sse::open(addr, path);
    sse.until(secs(10), "relay_connected", |e| {
        e.event == "relay_connected"
    });
    sse
}

#[test]
fn a_request_head_trickled_one_byte_at_a_time_is_cut_off_at_the_deadline() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    let s = Server::start(&r, "127.0.0.1:0", &[], &[]);
    let mut c = connect(s.addr);
    c.write_all(b"GET /api/relay/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .expect("the head's start is sent");
    c.set_read_timeout(Some(Duration::from_millis(1)))
        .expect("a short read timeout");
    // A byte every 100 ms: every read the server makes gets something, the
    // head never ends. A deadline per read never fires; one for the whole
    // head (10 s) does.
    let limit = Instant::now() + secs(40);
    let mut buf = [0u8; 512];
    let cut = loop {
        if Instant::now() > limit {
            break false;
        }
        if c.write_all(b"a").is_err() {
            break true;
        }
        match c.read(&mut buf) {
            Ok(_) => break true, // closed (0) or answered: either way, cut off
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break true,
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert!(
        cut,
        "a client trickling its head was still connected after 40 s"
    );
    // The server is none the worse for it.
    assert_eq!(
        get(s.addr, "/api/relay/status").status_line,
        "HTTP/1.1 200 OK"
    );
}

#[test]
fn slots_are_freed_as_soon_as_clients_leave() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    let s = Server::start(&r, "127.0.0.1:0", &[], &[]);
    // Twice 40 streams, more than the old server's 64 slots together: the
    // second 40 get in only if the first freed theirs when they left (the
    // old server noticed at the next keep-alive, 15 s later).
    for round in 0..2 {
        let streams: Vec<Sse> = (0..40)
            .map(|_| stream(s.addr, "/api/relay/stream"))
            .collect();
        if round == 1 {
            assert_eq!(gauge(s.addr, "relay_serve_streams"), Some(40.0));
        }
        drop(streams);
    }
    // Well within the keep-alive: the server notices the hang-ups.
    wait_until(secs(5), "the streams' slots to be freed", || {
        gauge(s.addr, "relay_serve_streams") == Some(0.0)
            && gauge(s.addr, "relay_serve_connections") == Some(1.0)
    });
    assert_eq!(
        get(s.addr, "/api/relay/status").status_line,
        "HTTP/1.1 200 OK"
    );
}

#[test]
fn idle_streams_and_slow_clients_do_not_lock_out_the_api() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    let s = Server::start(&r, "127.0.0.1:0", &[], &[]);
    let mut streams: Vec<Sse> = (0..100)
        .map(|_| stream(s.addr, "/api/relay/stream?subject=agent.b"))
        .collect();
    // 100 connections that say nothing, or half a request head.
    let slow: Vec<TcpStream> = (0..100)
        .map(|i| {
            let mut c = connect(s.addr);
            if i % 2 == 1 {
                c.write_all(b"GET /api/relay/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                    .expect("half a head is sent");
            }
            c
        })
        .collect();
    for path in [
        "/api/relay/status",
        "/api/relay/endpoints",
        "/api/relay/breakers",
        "/metrics",
    ] {
        let a = get(s.addr, path);
        assert_eq!(a.status_line, "HTTP/1.1 200 OK", "{path}: {a:?}");
    }
    // And the streams still stream, every one of them.
    let id = send_from(&r, "agent.a", "agent.b", "to all of you", None);
    for i in [0, 99] {
        let sse = &mut streams[i];
        sse.until(secs(10), "the new message", |e| {
            e.event == "relay_message" && e.data["id"] == id.as_str()
        });
    }
    drop(slow);
}

/// `(id line, data)` of each `relay_message` on a raw stream opened with
/// `headers`, until `n` are read.
fn raw_messages(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> Vec<(String, Value)> {
    let mut s = connect(addr);
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("the request is sent");
    let mut lines = BufReader::new(s).lines();
    let status = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(status, "HTTP/1.1 200 OK", "GET {path} {headers:?}");
    let (mut out, mut id, mut event) = (Vec::new(), String::new(), String::new());
    while out.len() < n {
        let Some(Ok(line)) = lines.next() else {
            panic!("the stream ended after {} messages", out.len())
        };
        if let Some(v) = line.strip_prefix("id: ") {
            id = v.to_string();
        } else if let Some(v) = line.strip_prefix("event: ") {
            event = v.to_string();
        } else if let Some(v) = line.strip_prefix("data: ") {
            if event == "relay_message" {
                let data = serde_json::from_str(v).expect("data is JSON");
                out.push((id.clone(), data));
            }
        } else if line.is_empty() {
            event.clear();
        }
    }
    out
}

#[test]
fn the_stream_resumes_from_its_id_after_a_batch_sent_in_one_millisecond() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    r.write_file(
        "config.json",
        r#"{"reliability":{"rateLimit":{"enabled":false},"backpressure":{"enabled":false}}}"#,
    );
    let s = Server::start(
        &r,
        "127.0.0.1:0",
        &[],
        &[("RELAY_FAKE_NOW_MS", &T.to_string())],
    );
    let mut sse = stream(s.addr, "/api/relay/stream?subject=agent.b");
    // 1,500 messages in one millisecond: more than one page of the index.
    let batch: String = (0..1500)
        .map(|i| format!("{{\"subject\":\"agent.b\",\"payload\":\"m{i}\"}}\n"))
        .collect();
    let out = r
        .cmd(["send", "--batch", "--from", "agent.a"])
        .at(T)
        .stdin(batch)
        .success();
    let mut sent: HashSet<String> = out.stdout.lines().map(str::to_string).collect();
    assert_eq!(sent.len(), 1500, "{}", out.stdout);
    let after = send_from(&r, "agent.a", "agent.b", "after the batch", Some(T));
    sent.insert(after.clone());

    // All of them, though they share one millisecond (the old stream
    // re-read the same first 1,000 forever).
    let mut events = Vec::new();
    while events.len() < 1501 {
        events.push(sse.until(
            secs(30),
            &format!("relay_message #{} of 1501", events.len() + 1),
            |e| e.event == "relay_message",
        ));
    }
    let got: Vec<(String, String)> = events
        .iter()
        .map(|ev| {
            let id = ev
                .id
                .clone()
                .unwrap_or_else(|| panic!("no id: line on {ev:?}"));
            (id, ev.data["id"].as_str().unwrap_or_default().to_string())
        })
        .collect();
    let streamed: HashSet<String> = got.iter().map(|(_, m)| m.clone()).collect();
    assert_eq!(streamed.len(), 1501, "each message exactly once");
    assert_eq!(streamed, sent);
    let ids: HashSet<&String> = got.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 1501, "every event has its own id");

    // Reconnecting with the 700th id gets the rest, in the same order, by
    // Last-Event-ID as an EventSource sends it, and by ?after=.
    let rest: Vec<&String> = got[700..].iter().map(|(_, m)| m).collect();
    let resumed = raw_messages(
        s.addr,
        "/api/relay/stream?subject=agent.b",
        &[("Last-Event-ID", &got[699].0)],
        rest.len(),
    );
    let resumed_ids: Vec<&str> = resumed
        .iter()
        .map(|(_, d)| d["id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        resumed_ids, rest,
        "resumed after the 700th by Last-Event-ID"
    );
    let last_two = raw_messages(
        s.addr,
        &format!("/api/relay/stream?subject=agent.b&after={}", got[1498].0),
        &[],
        2,
    );
    assert_eq!(last_two[0].1["id"], got[1499].1.as_str());
    assert_eq!(last_two[1].1["id"], after.as_str());
}

#[test]
fn a_tokenless_loopback_server_refuses_other_host_names() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    let s = Server::start(&r, "127.0.0.1:0", &[], &[]);
    let port = s.addr.port();
    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
        format!("localhost.evil.example:{port}"),
        "192.0.2.1".to_string(),
    ] {
        for path in ["/api/relay/status", "/", "/metrics", "/api/relay/stream"] {
            let a = request(s.addr, "GET", path, &[("Host", &host)]);
            a.assert_error("HTTP/1.1 403 Forbidden");
            assert!(
                a.body.contains(&host) && a.body.contains("RELAY_SERVE_TOKEN"),
                "the refusal names the Host and the way out: {a:?}"
            );
        }
    }
    request(s.addr, "GET", "/api/relay/status", &[]).assert_error("HTTP/1.1 403 Forbidden");
    for host in [
        format!("localhost:{port}"),
        "LOCALHOST".to_string(),
        "127.0.0.1".to_string(),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "[::1]".to_string(),
    ] {
        let a = request(s.addr, "GET", "/api/relay/status", &[("Host", &host)]);
        assert_eq!(a.status_line, "HTTP/1.1 200 OK", "{host}: {a:?}");
    }
    drop(s);

    // A token alone does not open other names; --allow-remote does, and
    // then every request presents the token.
    let s = Server::start(&r, "127.0.0.1:0", &[], &[("RELAY_SERVE_TOKEN", "t")]);
    let a = request(
        s.addr,
        "GET",
        "/api/relay/status?token=t",
        &[("Host", "relay.example")],
    );
    a.assert_error("HTTP/1.1 403 Forbidden");
    drop(s);
    let s = Server::start(
        &r,
        "127.0.0.1:0",
        &["--allow-remote"],
        &[("RELAY_SERVE_TOKEN", "t")],
    );
    let a = request(
        s.addr,
        "GET",
        "/api/relay/status?token=t",
        &[("Host", "relay.example")],
    );
    assert_eq!(a.status_line, "HTTP/1.1 200 OK", "{a:?}");
    let a = request(
        s.addr,
        "GET",
        "/api/relay/status",
        &[("Host", "relay.example")],
    );
    a.assert_error("HTTP/1.1 401 Unauthorized");
}

/// `relay serve` with at most `files` open files (hard limit too), and the
/// address it listens on; killed when dropped.
struct Limited {
    child: Child,
    addr: SocketAddr,
}

impl Limited {
    fn start(r: &Relay, files: u32) -> Limited {
        let mut c = Command::new("prlimit");
        c.arg(format!("--nofile={files}:{files}")).args([
            "--",
            BIN,
            "serve",
            "--listen",
            "127.0.0.1:0",
        ]);
        r.clean_env(&mut c)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start prlimit relay serve: {e}"));
        let mut url = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut url);
        }
        let port = url
            .trim()
            .strip_suffix('/')
            .and_then(|u| u.rsplit_once(':'))
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("no URL from relay serve: {url:?}"));
        Limited {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first line a raw stream request gets, and its connection.
fn open_raw_stream(addr: SocketAddr) -> (String, BufReader<TcpStream>) {
    let mut s = connect(addr);
    write!(
        s,
        "GET /api/relay/stream HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
    )
    .expect("the request is sent");
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    let _ = reader.read_line(&mut line);
    (line.trim_end().to_string(), reader)
}

#[test]
fn every_answer_has_the_status_line_of_its_code() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    // Out of room: with 512 open files, streams are refused at some point
    // (the old server: at 65, "503 Unknown"), with a proper 503 ...
    let srv = Limited::start(&r, 512);
    let mut open = Vec::new();
    let refused = loop {
        assert!(open.len() < 400, "400 streams and none refused");
        let (line, conn) = open_raw_stream(srv.addr);
        if line != "HTTP/1.1 200 OK" {
            let mut rest = Vec::new();
            let mut conn = conn;
            let _ = conn.read_to_end(&mut rest);
            break Answer::parse(&[format!("{line}\r\n").into_bytes(), rest].concat());
        }
        open.push(conn);
    };
    refused.assert_error("HTTP/1.1 503 Service Unavailable");
    // ... while API calls still get in.
    assert_eq!(
        get(srv.addr, "/api/relay/status").status_line,
        "HTTP/1.1 200 OK"
    );

    // Connections past the limit are answered 503 at once, unread.
    let mut idle: Vec<TcpStream> = (0..300).map(|_| connect(srv.addr)).collect();
    for c in &idle {
        c.set_nonblocking(true).expect("nonblocking");
    }
    let mut answer = None;
    wait_until(secs(5), "a connection to be refused", || {
        for c in &mut idle {
            let mut buf = vec![0u8; 4096];
            if let Ok(n @ 1..) = c.read(&mut buf) {
                buf.truncate(n);
                answer = Some(buf);
                return true;
            }
        }
        false
    });
    let raw = answer.unwrap_or_default();
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{text:?}"
    );
    drop(srv);

    // And every other answer.
    let s = Server::start(&r, "127.0.0.1:0", &[], &[]);
    let host = s.addr.to_string();
    let h = [("Host", host.as_str())];
    assert_eq!(
        get(s.addr, "/api/relay/status").status_line,
        "HTTP/1.1 200 OK"
    );
    get(s.addr, "/nope").assert_error("HTTP/1.1 404 Not Found");
    request(s.addr, "POST", "/api/relay/status", &h)
        .assert_error("HTTP/1.1 405 Method Not Allowed");
    get(s.addr, "/api/relay/stream?subject=a..b").assert_error("HTTP/1.1 400 Bad Request");
    get(s.addr, "/api/relay/trace/metrics?since=xx").assert_error("HTTP/1.1 400 Bad Request");
    request(s.addr, "GET", "/", &[("Host", "evil.example")]).assert_error("HTTP/1.1 403 Forbidden");
}

#[test]
fn sigterm_and_sigint_stop_the_server_gracefully() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    for sig in ["TERM", "INT"] {
        let mut s = Server::start(&r, "127.0.0.1:0", &[], &[]);
        let mut sse = stream(s.addr, "/api/relay/stream");
        s.proc.signal(sig);
        // The open stream ends (not cut mid-event), and relay exits 0.
        let deadline = Instant::now() + secs(10);
        while sse.next(deadline).is_some() {}
        assert_eq!(s.proc.finish(secs(10)), 0, "SIG{sig}\n{}", s.proc.dump());
        assert!(
            s.proc.err.seen.iter().any(|l| l.contains("stopping")),
            "SIG{sig}: {}",
            s.proc.dump()
        );
    }
}

#[test]
fn a_copy_indexed_after_the_stream_passed_its_place_is_still_streamed() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    let s = Server::start(
        &r,
        "127.0.0.1:0",
        &[],
        &[("RELAY_FAKE_NOW_MS", &T.to_string())],
    );
    let mut sse = stream(s.addr, "/api/relay/stream?subject=agent.b");
    let later = send_from(&r, "agent.a", "agent.b", "later clock", Some(T + 5_000));
    sse.until(secs(10), "the later message", |e| {
        e.event == "relay_message" && e.data["id"] == later.as_str()
    });
    // A send that read the clock before the other's but reached the
    // journal after it: the stream has passed its place in the order.
    let earlier = send_from(&r, "agent.a", "agent.b", "earlier clock", Some(T));
    let ev = sse.until(secs(10), "the message indexed late", |e| {
        e.event == "relay_message" && e.data["id"] == earlier.as_str()
    });
    assert!(ev.id.is_some(), "{ev:?}");
    // Once.
    let again = send_from(&r, "agent.a", "agent.b", "after", Some(T + 6_000));
    sse.until(secs(10), "the next message", |e| {
        e.event == "relay_message" && e.data["id"] == again.as_str()
    });
    let n = sse
        .seen
        .iter()
        .filter(|e| e.data["id"] == earlier.as_str())
        .count();
    assert_eq!(n, 1, "{:#?}", sse.seen);
}

/// The server's read routes wait for no writer: started while another
/// process (an operator's sqlite3 session) holds the index's write lock,
/// with a send in the journal the index has not read and a claim past its
/// lease (both want that lock to be recorded), the first status, the
/// breakers, Prometheus and a stream all answer. The lock timeout is set
/// far beyond the client's patience, so a route that waited for the lock
/// (as the stream's first look once did, before the server answered
/// anything) would not answer at all: the cause is tested, not a time.
/// Once the lock is free, the next status records the expired lease and
/// the stream passes on the journaled send.
#[test]
fn read_routes_answer_while_another_process_holds_the_index() {
    let r = Relay::new();
    r.add(&["agent.a"]);
    r.cmd(["send", "agent.a", "one"]).at(T).success();
    r.cmd(["recv", "agent.a", "--lease", "1s"]).at(T).success();
    // The claim is in the index, its lease deadline in the state slots.
    r.cmd(["status"]).at(T).success();
    let db = rusqlite::Connection::open(r.path("relay.db")).expect("open relay.db");
    db.execute_batch("BEGIN IMMEDIATE").expect("hold the index");
    // A send needs no index: it waits in the journal.
    let two = r.cmd(["send", "agent.a", "two"]).at(T).success().id();
    assert!(
        std::fs::metadata(r.path("journal")).is_ok_and(|m| m.len() > 0),
        "the send is in the journal"
    );
    let later = (T + 60_000).to_string();
    let s = Server::start(
        &r,
        "127.0.0.1:0",
        &[],
        &[
            ("RELAY_FAKE_NOW_MS", &later),
            ("RELAY_LOCK_TIMEOUT_MS", "600000"),
        ],
    );
    let st = s.get_json("/api/relay/status");
    let ep = &st["endpoints"][0];
    assert_eq!(
        (&ep["subject"], &ep["new"], &ep["cur"]),
        (&Value::from("agent.a"), &Value::from(1), &Value::from(1)),
        "{st}"
    );
    let kinds = |st: &Value| -> Vec<String> {
        st["events"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["kind"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        !kinds(&st).iter().any(|k| k == "lease_expired"),
        "nothing recorded under another's lock: {st}"
    );
    assert!(s.get_json("/api/relay/breakers")["breakers"].is_array());
    assert_eq!(get(s.addr, "/metrics").status_line, "HTTP/1.1 200 OK");
    let mut sse = stream(s.addr, "/api/relay/stream?subject=agent.a");
    drop(db); // rolls back: the lock is free
    let st = s.get_json("/api/relay/status");
    assert!(
        kinds(&st).iter().any(|k| k == "lease_expired"),
        "the expired lease recorded once the lock is free: {st}"
    );
    let ev = sse.until(secs(10), "the journaled send", |e| {
        e.event == "relay_message"
    });
    assert_eq!(ev.id.as_deref(), Some(two.as_str()), "{:?}", sse.seen);
}

/// Whichever read route comes first after the server starts, it does not
/// wait to open the index while another process holds its write lock
/// (with a send in the journal to move in): each on a server of its own,
/// the lock timeout far beyond the client's patience, as above.
#[test]
fn no_first_read_route_waits_to_open_a_held_index() {
    let r = Relay::new();
    r.add(&["agent.a"]);
    r.cmd(["status"]).at(T).success();
    let db = rusqlite::Connection::open(r.path("relay.db")).expect("open relay.db");
    db.execute_batch("BEGIN IMMEDIATE").expect("hold the index");
    r.cmd(["send", "agent.a", "one"]).at(T).success();
    for path in [
        "/api/relay/messages",
        "/api/relay/endpoints",
        "/api/relay/endpoints/agent.a/inbox",
        "/api/relay/dead-letters",
        "/api/relay/dead-letters/aggregated",
        "/api/relay/metrics",
        "/api/relay/trace/metrics",
        "/api/relay/conversations",
        "/api/relay/events",
        "/api/relay/backpressure",
        "/api/relay/limits",
        "/api/relay/redeliveries",
    ] {
        let s = Server::start(
            &r,
            "127.0.0.1:0",
            &[],
            &[
                ("RELAY_FAKE_NOW_MS", &T.to_string()),
                ("RELAY_LOCK_TIMEOUT_MS", "600000"),
            ],
        );
        let a = get(s.addr, path);
        assert_eq!(a.status_line, "HTTP/1.1 200 OK", "{path}: {a:?}");
    }
    drop(db);
}
