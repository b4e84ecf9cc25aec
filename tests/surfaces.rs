//! Operator and agent surfaces: `recv --follow/--exec` consumers, `relay
//! serve` (every HTTP route, the token, SSE, Prometheus) and the panel in a
//! headless browser.
//!
//! Long-running relays (followers, servers) are started by [`Proc`], which
//! reads their stdout and stderr line by line as they come and kills the
//! process (by its id) when dropped, also when a test panics. Every wait has
//! a deadline; nothing sleeps to let time pass.

mod consumers; // recv --follow / --exec: ack, nack, breaker, timeout, concurrency, signals, env, hot reload
mod mcp; // relay mcp through a real MCP client (Python SDK): tools, schemas, identity, refusals, send-and-wait, EOF, SIGTERM, /mcp
mod panel; // the panel in headless chromium: a tripped breaker and a rate-limit hit on the page
mod peek; // relay peek: never claims, every status, foreign entries listed safely, no home created
mod request; // relay request: reply, progress, timeout, failure notices, refusals, signals, cleanup, trace
mod serve; // relay serve: relay's own routes, 404/405/400, the token, SSE, /metrics

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{BIN, Cmd, Relay};

/// 2026-01-01T00:00:00.000Z: the pinned clock of tests where time matters.
pub use crate::harness::T;

/// `n` seconds.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after `limit`.
#[track_caller]
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// A fresh directory under the test's scratch space (for handler files).
pub fn scratch_dir(r: &Relay, name: &str) -> PathBuf {
    let dir = r.scratch().join(name);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// The lines a process writes to one of its pipes, as they arrive.
pub struct Lines {
    rx: Receiver<String>,
    /// Every line received so far (for failure messages).
    pub seen: Vec<String>,
}

impl Lines {
    fn new(pipe: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// The next line satisfying `pred` (earlier ones are skipped), or `None`
    /// at `deadline` or when the pipe closes first.
    pub fn next_matching(
        &mut self,
        deadline: Instant,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Option<String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return Some(line);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Collects what is left until the pipe closes (or `deadline`).
    fn drain(&mut self, deadline: Instant) {
        while self.next_matching(deadline, |_| false).is_some() {}
    }
}

/// A long-running relay (follower, server) with its output read as it
/// comes; killed by its pid when dropped.
pub struct Proc {
    child: Child,
    what: String,
    pub out: Lines,
    pub err: Lines,
}

impl Proc {
    /// Starts relay with `args` in `r`'s clean environment (as the harness
    /// builds it) plus `env`.
    pub fn start(r: &Relay, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut c = Command::new(BIN);
        r.clean_env(c.args(args))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let what = format!("{env:?} relay {}", args.join(" "));
        let mut child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let out = Lines::new(child.stdout.take().expect("stdout is piped"));
        let err = Lines::new(child.stderr.take().expect("stderr is piped"));
        Proc {
            child,
            what,
            out,
            err,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` (e.g. "INT", "TERM") to this process only.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot send SIG{sig} to {}", self.what);
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything seen so far, for failure messages.
    pub fn dump(&self) -> String {
        format!(
            "--- {}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.what,
            self.out.seen.join("\n"),
            self.err.seen.join("\n")
        )
    }

    /// Panics with `msg` and what the process printed.
    #[track_caller]
    pub fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\n{}", self.dump())
    }

    /// The next stdout line satisfying `pred` within `limit`.
    #[track_caller]
    pub fn stdout_line(
        &mut self,
        limit: Duration,
        what: &str,
        pred: impl FnMut(&str) -> bool,
    ) -> String {
        match self.out.next_matching(Instant::now() + limit, pred) {
            Some(l) => l,
            None => self.fail(&format!("no stdout line {what} within {limit:?}")),
        }
    }

    /// The next NDJSON stdout line whose `key` is `value`, within `limit`.
    #[track_caller]
    pub fn json_line(&mut self, limit: Duration, key: &str, value: &str) -> Value {
        let line = self.stdout_line(limit, &format!("with {key} = {value:?}"), |l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| v[key] == value)
        });
        serde_json::from_str(&line).unwrap_or_else(|e| self.fail(&format!("{line:?}: {e}")))
    }

    /// Waits (within `limit`) for a stderr line containing `needle`.
    #[track_caller]
    pub fn stderr_line(&mut self, limit: Duration, needle: &str) -> String {
        match self
            .err
            .next_matching(Instant::now() + limit, |l| l.contains(needle))
        {
            Some(l) => l,
            None => self.fail(&format!(
                "no stderr line containing {needle:?} within {limit:?}"
            )),
        }
    }

    /// Waits (within `limit`) for the process to exit, then collects the
    /// rest of its output; the exit status (-1 if killed by a signal).
    #[track_caller]
    pub fn finish(&mut self, limit: Duration) -> i32 {
        let deadline = Instant::now() + limit;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => self.fail(&format!("still running after {limit:?}")),
                Err(e) => self.fail(&format!("cannot wait: {e}")),
            }
        };
        // Handlers may hold the pipes a little longer; don't wait forever.
        let drain_by = Instant::now() + secs(2);
        self.out.drain(drain_by);
        self.err.drain(drain_by);
        status.code().unwrap_or(-1)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A running `relay serve` and the address it listens on.
pub struct Server {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// The URL it printed first.
    pub url: String,
}

impl Server {
    /// `relay serve --listen LISTEN ARGS` with `env`; reads the URL from the
    /// first stdout line. The returned address is where to connect (loopback
    /// for a wildcard bind).
    pub fn start(r: &Relay, listen: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut all = vec!["serve", "--listen", listen];
        all.extend_from_slice(args);
        let mut proc = Proc::start(r, &all, env);
        let url = proc.stdout_line(secs(10), "with the URL", |_| true);
        let port = url
            .strip_prefix("http://")
            .and_then(|rest| rest.strip_suffix('/'))
            .and_then(|hp| hp.rsplit_once(':'))
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .unwrap_or_else(|| proc.fail(&format!("first line {url:?} is not http://ADDR:PORT/")));
        Server {
            proc,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            url,
        }
    }

    /// `GET path`.
    #[track_caller]
    pub fn get(&self, path: &str) -> Resp {
        http(self.addr, "GET", path, &[])
    }

    /// `GET path`, asserting 200 and a JSON body.
    #[track_caller]
    pub fn get_json(&self, path: &str) -> Value {
        let resp = self.get(path);
        if resp.status != 200 || resp.header("content-type") != Some(JSON) {
            self.proc
                .fail(&format!("GET {path}: expected 200 {JSON}, got {resp:?}"));
        }
        resp.json()
    }
}

/// `Content-Type` of every JSON answer (DorkOS's).
pub const JSON: &str = "application/json; charset=utf-8";

/// One HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }

    /// Asserts a JSON error `{"error": "...", "code"?: "..."}` (DorkOS's
    /// error body) with `status`; the body.
    #[track_caller]
    pub fn assert_error(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("content-type"), Some(JSON), "{self:?}");
        let v = self.json();
        assert!(
            v["error"].as_str().is_some_and(|m| !m.is_empty()),
            "error without a message: {self:?}"
        );
        assert!(
            v.get("code").is_none_or(Value::is_string),
            "code is not a string: {self:?}"
        );
        v
    }

    /// Asserts an error with `status` and `code`; the body.
    #[track_caller]
    pub fn assert_code(&self, status: u16, code: &str) -> Value {
        let v = self.assert_error(status);
        assert_eq!(v["code"], code, "{self:?}");
        v
    }
}

/// The status line, headers and body of `head` + `body` as read from a
/// connection.
fn parse_response(raw: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_string(),
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, secs(5))
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    s.set_read_timeout(Some(secs(10)))
        .and_then(|()| s.set_write_timeout(Some(secs(10))))
        .unwrap_or_else(|e| panic!("cannot set socket timeouts: {e}"));
    s
}

/// One request (`Connection: close`), read to the end.
#[track_caller]
pub fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut s = connect(addr);
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .unwrap_or_else(|e| panic!("cannot send {method} {path}: {e}"));
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("cannot read the response to {method} {path}: {e}"));
    parse_response(&raw)
}

/// One request with a body (`Connection: close`), read to the end.
#[track_caller]
pub fn http_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut s = connect(addr);
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes)
        .unwrap_or_else(|e| panic!("cannot send {method} {path}: {e}"));
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("cannot read the response to {method} {path}: {e}"));
    parse_response(&raw)
}

/// `METHOD path` with `body` as JSON.
#[track_caller]
pub fn send_json(addr: SocketAddr, method: &str, path: &str, body: &Value) -> Resp {
    http_body(
        addr,
        method,
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: Value,
}

/// An open SSE connection, read event by event with deadlines.
pub struct Sse {
    reader: BufReader<TcpStream>,
    /// Every event read so far (for failure messages).
    pub seen: Vec<SseEvent>,
}

impl Sse {
    /// Opens `GET path` and checks the 200 `text/event-stream` head.
    #[track_caller]
    pub fn open(addr: SocketAddr, path: &str) -> Sse {
        Sse::open_with(addr, path, &[])
    }

    /// `open` with extra request headers (`Last-Event-ID`).
    #[track_caller]
    pub fn open_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
        let mut s = connect(addr);
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())
            .unwrap_or_else(|e| panic!("cannot send GET {path}: {e}"));
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap_or_else(|e| panic!("cannot set a read timeout: {e}"));
        let mut sse = Sse {
            reader: BufReader::new(s),
            seen: Vec::new(),
        };
        let deadline = Instant::now() + secs(10);
        let mut head = Vec::new();
        loop {
            let line = sse
                .line(deadline)
                .unwrap_or_else(|| panic!("no response head to GET {path}: {head:?}"));
            if line.is_empty() {
                break;
            }
            head.push(line);
        }
        assert!(
            head.first().is_some_and(|l| l.starts_with("HTTP/1.1 200")),
            "GET {path}: {head:?}"
        );
        assert!(
            head.iter()
                .any(|h| h.eq_ignore_ascii_case("content-type: text/event-stream")),
            "GET {path} is not an event stream: {head:?}"
        );
        sse
    }

    /// One line without its line ending, or `None` at `deadline` / EOF.
    fn line(&mut self, deadline: Instant) -> Option<String> {
        let mut buf = Vec::new();
        loop {
            match self.reader.read_until(b'\n', &mut buf) {
                Ok(0) => return None,
                Ok(_) if buf.ends_with(b"\n") => {
                    let s = String::from_utf8_lossy(&buf).into_owned();
                    return Some(s.trim_end_matches(['\r', '\n']).to_string());
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if Instant::now() >= deadline {
                        return None;
                    }
                }
                Err(e) => panic!("SSE read failed: {e}"),
            }
        }
    }

    /// The next event (comments skipped), or `None` at `deadline`.
    pub fn next(&mut self, deadline: Instant) -> Option<SseEvent> {
        let (mut event, mut id, mut data) = (None, None, String::new());
        loop {
            let line = self.line(deadline)?;
            if line.is_empty() {
                if event.is_none() && data.is_empty() {
                    continue; // the end of a comment block
                }
                let ev = SseEvent {
                    event: event.unwrap_or_else(|| "message".to_string()),
                    id,
                    data: serde_json::from_str(&data)
                        .unwrap_or_else(|e| panic!("SSE data {data:?} is not JSON: {e}")),
                };
                self.seen.push(ev.clone());
                return Some(ev);
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line.as_str(), ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => event = Some(value.to_string()),
                "id" => id = Some(value.to_string()),
                "data" => {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value);
                }
                _ => {}
            }
        }
    }

    /// The next event satisfying `pred` within `limit` (earlier ones are
    /// kept in `seen`).
    #[track_caller]
    pub fn until(
        &mut self,
        limit: Duration,
        what: &str,
        mut pred: impl FnMut(&SseEvent) -> bool,
    ) -> SseEvent {
        let deadline = Instant::now() + limit;
        loop {
            match self.next(deadline) {
                Some(ev) if pred(&ev) => return ev,
                Some(_) => {}
                None => panic!(
                    "no SSE event {what} within {limit:?}; seen: {:#?}",
                    self.seen
                ),
            }
        }
    }
}

/// `cmd` with relay's clock pinned at `at`, if any.
pub fn pinned(cmd: Cmd<'_>, at: Option<u64>) -> Cmd<'_> {
    match at {
        Some(ms) => cmd.at(ms),
        None => cmd,
    }
}

/// `relay send SUBJECT PAYLOAD --from FROM` (clock pinned at `at`, if any),
/// asserting success; the id.
#[track_caller]
pub fn send_from(r: &Relay, from: &str, subject: &str, payload: &str, at: Option<u64>) -> String {
    pinned(r.cmd(["send", subject, payload, "--from", from]), at)
        .success()
        .id()
}

/// The `breakers --json` row of (sender, ep), or `Value::Null`.
#[track_caller]
pub fn breaker(r: &Relay, sender: &str, ep: &str, at: Option<u64>) -> Value {
    let cmd = pinned(r.cmd(["breakers", "--json"]), at);
    let out = cmd.success();
    let v = out.json();
    let Some(rows) = v["breakers"].as_array() else {
        out.fail("breakers --json has no breakers array")
    };
    rows.iter()
        .find(|b| b["sender"] == sender && b["endpoint"] == ep)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Rate limit 6 per sender (2 for agent.x), mailboxes of 4 warning at 50%,
/// breakers that stay open for 10 minutes.
const CONFIG: &str = r#"{"reliability":{
  "rateLimit":{"maxPerWindow":6,"perSenderOverrides":{"agent.x":2}},
  "circuitBreaker":{"cooldownMs":600000},
  "backpressure":{"maxMailboxSize":4,"pressureWarningAt":0.5}}}"#;

/// A home (clock pinned at `at`, if any) in a known state: five failing
/// handlers on agent.a's messages at agent.b (breaker open, five dead
/// letters), agent.c full (4/4), agent.e at the warning level (2/4) after
/// agent.x hit its hard rate limit. Returns the first dead-lettered id.
pub fn known_state(r: &Relay, at: Option<u64>) -> String {
    r.add(&["agent.b", "agent.c", "agent.e"]);
    r.write_file("config.json", CONFIG);
    let mut first = String::new();
    for i in 0..5 {
        let id = send_from(r, "agent.a", "agent.b", &format!("doomed {i}"), at);
        if i == 0 {
            first = id;
        }
        pinned(r.cmd(["recv", "agent.b", "--exec", "exit 1"]), at).success();
    }
    for i in 0..4 {
        send_from(r, "agent.y", "agent.c", &format!("c{i}"), at);
    }
    send_from(r, "agent.x", "agent.e", "e0", at);
    send_from(r, "agent.x", "agent.e", "e1", at);
    pinned(r.cmd(["send", "agent.e", "e2", "--from", "agent.x"]), at).code(75);
    first
}

/// Whether `dir` holds an entry named `name`.
pub fn exists(dir: &Path, name: &str) -> bool {
    dir.join(name).exists()
}
