//! `relay mcp`: a real MCP client (the Python SDK's `ClientSession`, from
//! the venv `tests/mcp/venv.sh` makes; `.ci/run` makes it) drives the server
//! over stdio and over `relay serve`'s `/mcp`: initialize, the tool list and
//! its schemas, each tool's happy path and refusals, an identity that cannot
//! be spoofed, send-and-wait against a `recv --follow --exec` responder, and
//! malformed calls. EOF and SIGTERM are driven with raw JSON-RPC lines.
//!
//! Without the venv these tests fail under CI=1 and are skipped (visibly,
//! on stderr) elsewhere.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Lines, Proc, Server, http, secs, wait_until};
use crate::harness::{BIN, Relay};

/// The venv's python: `$RELAY_MCP_VENV/bin/python`, else
/// `tests/mcp/.venv/bin/python`. `None` (after saying so) when it is not
/// there, outside CI; under CI=1 its absence fails the test.
fn python(test: &str) -> Option<PathBuf> {
    let venv = std::env::var_os("RELAY_MCP_VENV").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/.venv"),
        PathBuf::from,
    );
    let py = venv.join("bin/python");
    if py.exists() {
        return Some(py);
    }
    let why = format!(
        "no MCP client venv at {} (make it with: tests/mcp/venv.sh)",
        venv.display()
    );
    assert!(
        std::env::var_os("CI").is_none_or(|v| v.is_empty() || v == "0" || v == "false"),
        "{test}: {why}"
    );
    eprintln!("SKIPPED {test}: {why}");
    None
}

/// The driver script (`tests/mcp/client.py`).
fn client_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/client.py")
}

/// A Python MCP client connected to a server, taking one command at a time.
struct Mcp {
    child: Child,
    stdin: ChildStdin,
    out: Lines,
    err: Lines,
    /// The `initialize` result.
    init: Value,
}

impl Mcp {
    /// A client of `relay mcp --as SENDER` (spawned by the client, in
    /// `r`'s clean environment).
    fn stdio(r: &Relay, test: &str, sender: &str) -> Option<Mcp> {
        Mcp::stdio_env(r, test, sender, &[])
    }

    /// `stdio`, the client and the server it spawns also given `env`.
    fn stdio_env(r: &Relay, test: &str, sender: &str, env: &[(&str, &str)]) -> Option<Mcp> {
        Mcp::start(r, test, &["stdio", BIN, "mcp", "--as", sender], env)
    }

    /// A client of the streamable-HTTP server at `url`, sending `headers`
    /// (`NAME=VALUE`).
    fn http(r: &Relay, test: &str, url: &str, headers: &[&str]) -> Option<Mcp> {
        let mut args = vec!["http", url];
        args.extend_from_slice(headers);
        Mcp::start(r, test, &args, &[])
    }

    fn start(r: &Relay, test: &str, args: &[&str], env: &[(&str, &str)]) -> Option<Mcp> {
        let py = python(test)?;
        let mut c = Command::new(py);
        r.clean_env(c.arg(client_script()).args(args))
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the MCP client: {e}"));
        let stdin = child.stdin.take().expect("stdin is piped");
        let out = Lines::new(child.stdout.take().expect("stdout is piped"));
        let err = Lines::new(child.stderr.take().expect("stderr is piped"));
        let mut m = Mcp {
            child,
            stdin,
            out,
            err,
            init: Value::Null,
        };
        let first = m.next_line("the initialize result");
        m.init = first["initialize"].clone();
        if m.init.is_null() {
            m.fail(&format!("no initialize result: {first}"));
        }
        Some(m)
    }

    #[track_caller]
    fn fail(&mut self, msg: &str) -> ! {
        self.err.drain(Instant::now() + secs(1));
        panic!(
            "{msg}\n--- client stdout:\n{}\n--- client/server stderr:\n{}",
            self.out.seen.join("\n"),
            self.err.seen.join("\n")
        )
    }

    #[track_caller]
    fn next_line(&mut self, what: &str) -> Value {
        let Some(line) = self.out.next_matching(Instant::now() + secs(90), |_| true) else {
            self.fail(&format!("no answer with {what} within 90s"))
        };
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| self.fail(&format!("not JSON ({e}): {line}")));
        if let Some(e) = v.get("exception") {
            self.fail(&format!("the client failed: {e}"));
        }
        v
    }

    #[track_caller]
    fn send(&mut self, cmd: &Value) -> Value {
        if let Err(e) = writeln!(self.stdin, "{cmd}").and_then(|()| self.stdin.flush()) {
            self.fail(&format!("cannot write {cmd}: {e}"));
        }
        self.next_line(&cmd.to_string())
    }

    /// `tools/list`: the tools.
    #[track_caller]
    fn tools(&mut self) -> Vec<Value> {
        let v = self.send(&json!({"op": "list"}));
        v["tools"].as_array().cloned().unwrap_or_default()
    }

    /// `tools/call`: `{isError, text, json, structured}`.
    #[track_caller]
    fn call(&mut self, name: &str, args: Value) -> Value {
        self.send(&json!({"op": "call", "name": name, "args": args}))
    }

    /// A call that must succeed: its JSON.
    #[track_caller]
    fn ok(&mut self, name: &str, args: Value) -> Value {
        let v = self.call(name, args.clone());
        if v["isError"] != false {
            self.fail(&format!("{name} {args} failed: {v}"));
        }
        v["json"].clone()
    }

    /// A call that must be an error result: its JSON (`{error, code, ...}`),
    /// or for argument errors `{"text": ...}`.
    #[track_caller]
    fn err(&mut self, name: &str, args: Value) -> Value {
        let v = self.call(name, args.clone());
        if v["isError"] != true {
            self.fail(&format!("{name} {args} did not fail: {v}"));
        }
        if v["json"].is_object() {
            v["json"].clone()
        } else {
            json!({ "text": v["text"] })
        }
    }
}

impl Drop for Mcp {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"op": "close"}));
        let deadline = Instant::now() + secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Mailboxes named like a private reply endpoint (query inbox).
fn query_inboxes(r: &Relay) -> Vec<String> {
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

/// A responder on `ep` running `handler` (sh) per message.
fn responder(r: &Relay, ep: &str, handler: &str) -> Proc {
    let handler = handler.replace("relay ", &format!("'{BIN}' "));
    Proc::start(r, &["recv", ep, "--follow", "--exec", &handler], &[])
}

/// Replies with `{"echo": <the request's envelope>}`.
const ECHO: &str = r#"relay send "$RELAY_REPLY_TO" "{\"echo\":$(cat)}" >/dev/null"#;

const TOOLS: [&str; 13] = [
    "relay_send",
    "relay_inbox",
    "relay_list_endpoints",
    "relay_register_endpoint",
    "relay_unregister_endpoint",
    "relay_send_and_wait",
    "relay_send_async",
    "relay_get_trace",
    "relay_get_metrics",
    "relay_ack",
    "relay_nack",
    "relay_dead_letters",
    "relay_status",
];

#[test]
fn initialize_and_the_tool_list_with_dorkos_names_and_schemas() {
    let r = Relay::new();
    let Some(mut c) = Mcp::stdio(&r, "initialize", "agent.a") else {
        return;
    };
    assert_eq!(c.init["serverInfo"]["name"], "relay", "{}", c.init);
    assert!(c.init["capabilities"]["tools"].is_object(), "{}", c.init);
    assert!(c.init["protocolVersion"].is_string(), "{}", c.init);
    let tools = c.tools();
    let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, TOOLS);
    let tool = |n: &str| {
        tools
            .iter()
            .find(|t| t["name"] == n)
            .cloned()
            .unwrap_or(Value::Null)
    };
    for t in &tools {
        let s = &t["inputSchema"];
        assert_eq!(s["type"], "object", "{t}");
        assert!(
            t["description"].as_str().is_some_and(|d| d.len() > 20),
            "{t}"
        );
        // The sender is never an argument.
        for key in ["from", "sender"] {
            assert!(s["properties"].get(key).is_none(), "{t}");
        }
    }
    let send = tool("relay_send");
    assert_eq!(
        send["inputSchema"]["required"],
        json!(["subject", "payload"])
    );
    let props = &send["inputSchema"]["properties"];
    assert!(
        props["replyTo"].is_object() && props["budget"].is_object(),
        "{send}"
    );
    assert_eq!(
        props["budget"]["properties"]["maxHops"]["minimum"], 1,
        "{send}"
    );
    let inbox = tool("relay_inbox")["inputSchema"].clone();
    assert_eq!(inbox["required"], json!(["endpoint_subject"]));
    assert_eq!(inbox["properties"]["limit"]["maximum"], 100);
    assert_eq!(inbox["properties"]["limit"]["default"], 50);
    assert_eq!(inbox["properties"]["status"]["default"], "pending");
    assert!(inbox["properties"]["ack"].is_object());
    let wait = tool("relay_send_and_wait")["inputSchema"].clone();
    assert_eq!(wait["required"], json!(["to_subject", "payload"]));
    let timeout = &wait["properties"]["timeout_ms"];
    assert_eq!(
        (
            &timeout["minimum"],
            &timeout["maximum"],
            &timeout["default"]
        ),
        (&json!(1000), &json!(600_000), &json!(60_000))
    );
    assert_eq!(
        tool("relay_send_async")["inputSchema"]["required"],
        json!(["to_subject", "payload"])
    );
    assert_eq!(
        tool("relay_get_trace")["inputSchema"]["required"],
        json!(["messageId"])
    );
    assert_eq!(
        tool("relay_nack")["inputSchema"]["required"],
        json!(["endpoint_subject", "ids", "reason"])
    );
    // DorkOS's annotations: the reads are read-only, unregister destroys.
    for read in [
        "relay_list_endpoints",
        "relay_get_trace",
        "relay_get_metrics",
    ] {
        assert_eq!(tool(read)["annotations"]["readOnlyHint"], true, "{read}");
    }
    assert_eq!(
        tool("relay_unregister_endpoint")["annotations"]["destructiveHint"],
        true
    );
    assert_eq!(tool("relay_send")["annotations"]["readOnlyHint"], false);
}

#[test]
fn relay_send_speaks_as_the_as_identity_which_no_argument_changes() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    let Some(mut c) = Mcp::stdio(&r, "relay_send", "agent.a") else {
        return;
    };
    let sent = c.ok(
        "relay_send",
        json!({"subject": "agent.b", "payload": {"task": 1}, "replyTo": "agent.a"}),
    );
    assert_eq!(sent["deliveredTo"], 1, "{sent}");
    assert_eq!(sent["queued"], false, "{sent}");
    let id = sent["messageId"].as_str().unwrap_or_default().to_string();
    let msgs = r.cmd(["peek", "agent.b", "--json"]).success().json_lines();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["id"], id.as_str());
    assert_eq!(msgs[0]["from"], "agent.a");
    assert_eq!(msgs[0]["replyTo"], "agent.a");
    assert_eq!(msgs[0]["payload"]["task"], 1);
    // A `from` (or `sender`) argument is refused, never obeyed.
    for key in ["from", "sender"] {
        let e = c.err(
            "relay_send",
            json!({"subject": "agent.b", "payload": 2, key: "agent.b"}),
        );
        let text = e["text"].as_str().unwrap_or_default();
        assert!(
            text.contains("Invalid arguments for tool relay_send") && text.contains("--as"),
            "{e}"
        );
    }
    assert_eq!(r.files("agent.b", "new").len(), 1, "{}", r.listing());
    // Another server for another identity sends as that one.
    let Some(mut b) = Mcp::stdio(&r, "relay_send", "agent.c") else {
        return;
    };
    b.ok("relay_send", json!({"subject": "agent.b", "payload": 3}));
    let froms: Vec<Value> = r
        .cmd(["peek", "agent.b", "--json"])
        .success()
        .json_lines()
        .iter()
        .map(|m| m["from"].clone())
        .collect();
    assert_eq!(froms, vec![json!("agent.a"), json!("agent.c")]);
}

#[test]
fn relay_send_to_an_unknown_endpoint_is_queued_as_in_dorkos() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    let Some(mut c) = Mcp::stdio(&r, "unknown endpoint", "agent.a") else {
        return;
    };
    let v = c.ok(
        "relay_send",
        json!({"subject": "nobody.home", "payload": "hi"}),
    );
    assert_eq!(v["deliveredTo"], 0, "{v}");
    assert_eq!(v["queued"], true, "{v}");
    let id = v["messageId"].as_str().unwrap_or_default();
    assert!(crate::harness::is_ulid(id), "{v}");
    // Dead-lettered under its subject, as relay send does.
    assert_eq!(
        r.files("nobody.home", "failed"),
        vec![format!("{id}.json"), format!("{id}.reason.json")],
        "{}",
        r.listing()
    );
}

#[test]
fn refusals_are_error_results_with_code_message_and_retry_after() {
    let r = Relay::new();
    r.add(&["agent.b", "agent.full", "agent.shut"]);
    r.write_file(
        "config.json",
        r#"{"reliability":{"rateLimit":{"maxPerWindow":5,"windowSecs":60},
            "backpressure":{"maxMailboxSize":1}}}"#,
    );
    r.write_file(
        "access-rules.json",
        r#"[{"from": "agent.a", "to": "agent.b", "action": "deny", "priority": 10}]"#,
    );
    r.cmd(["send", "agent.full", "first", "--from", "other"])
        .success();
    r.cmd(["breakers", "open", "agent.a", "agent.shut"])
        .success();
    let Some(mut c) = Mcp::stdio(&r, "refusals", "agent.a") else {
        return;
    };
    // Backpressure: DorkOS's REJECTED with the per-endpoint list.
    let e = c.err("relay_send", json!({"subject": "agent.full", "payload": 1}));
    assert_eq!(e["code"], "REJECTED", "{e}");
    assert_eq!(e["error"], "Message rejected: backpressure", "{e}");
    assert_eq!(e["rejected"][0]["endpointHash"], "agent.full", "{e}");
    assert_eq!(e["rejected"][0]["reason"], "backpressure", "{e}");
    assert_eq!(e["exitCode"], 75, "{e}");
    // An open breaker: its retry-after.
    let e = c.err("relay_send", json!({"subject": "agent.shut", "payload": 1}));
    assert_eq!(e["code"], "REJECTED", "{e}");
    assert_eq!(e["rejected"][0]["reason"], "circuit_open", "{e}");
    assert!(e["retryAfterMs"].as_u64().is_some_and(|ms| ms > 0), "{e}");
    // Denied by the access rules: ACCESS_DENIED, 77.
    let e = c.err("relay_send", json!({"subject": "agent.b", "payload": 1}));
    assert_eq!(e["code"], "ACCESS_DENIED", "{e}");
    assert_eq!(e["exitCode"], 77, "{e}");
    assert!(
        e["error"].as_str().is_some_and(|m| m.contains("agent.a")),
        "{e}"
    );
    // A bad subject: INVALID_SUBJECT, naming it.
    let e = c.err(
        "relay_send",
        json!({"subject": "bad..subject", "payload": 1}),
    );
    assert_eq!(e["code"], "INVALID_SUBJECT", "{e}");
    assert!(
        e["error"]
            .as_str()
            .is_some_and(|m| m.contains("bad..subject")),
        "{e}"
    );
    // The rate limit (5 a minute, the refused sends counted): REJECTED at
    // `*`, with the retry-after.
    let mut last = Value::Null;
    for _ in 0..6 {
        last = c.call(
            "relay_send",
            json!({"subject": "agent.c.none", "payload": 1}),
        );
        if last["isError"] == true {
            break;
        }
    }
    let e = &last["json"];
    assert_eq!(e["code"], "REJECTED", "{last}");
    assert_eq!(e["rejected"][0]["endpointHash"], "*", "{last}");
    assert_eq!(e["rejected"][0]["reason"], "rate_limited", "{last}");
    assert!(
        e["retryAfterMs"].as_u64().is_some_and(|ms| ms > 0),
        "{last}"
    );
    // The server lives on.
    let tools = c.tools();
    assert_eq!(tools.len(), TOOLS.len());
}

#[test]
fn relay_inbox_looks_without_claiming_and_ack_consumes() {
    let r = Relay::new();
    r.add(&["agent.a", "agent.b"]);
    for i in 0..3 {
        r.cmd(["send", "agent.a", &format!("m{i}"), "--from", "agent.z"])
            .success();
    }
    let Some(mut c) = Mcp::stdio(&r, "relay_inbox", "agent.a") else {
        return;
    };
    let v = c.ok("relay_inbox", json!({"endpoint_subject": "agent.a"}));
    let msgs = v["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(msgs.len(), 3, "{v}");
    assert_eq!(msgs[0]["payload"], "m0");
    assert_eq!(msgs[0]["status"], "pending");
    assert_eq!(msgs[0]["sender"], "agent.z");
    assert_eq!(msgs[0]["endpointHash"], "agent.a");
    assert_eq!(r.files("agent.a", "new").len(), 3, "never claims");
    // limit: the oldest first, and a cursor saying there is more.
    let v = c.ok(
        "relay_inbox",
        json!({"endpoint_subject": "agent.a", "limit": 2}),
    );
    assert_eq!(v["messages"].as_array().map(Vec::len), Some(2), "{v}");
    assert!(v["nextCursor"].is_string(), "{v}");
    let v = c.ok(
        "relay_inbox",
        json!({"endpoint_subject": "agent.a", "status": "failed"}),
    );
    assert_eq!(v["messages"], json!([]), "{v}");
    // ack: claimed and acknowledged as returned (DorkOS's consume).
    let v = c.ok(
        "relay_inbox",
        json!({"endpoint_subject": "agent.a", "ack": true, "limit": 2}),
    );
    let got: Vec<Value> = v["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| m["payload"].clone())
        .collect();
    assert_eq!(got, vec![json!("m0"), json!("m1")], "{v}");
    assert_eq!(r.files("agent.a", "new").len(), 1, "{}", r.listing());
    assert!(r.files("agent.a", "cur").is_empty(), "{}", r.listing());
    // Refusals: someone else's endpoint, one that does not exist, a bad
    // limit or status.
    let e = c.err("relay_inbox", json!({"endpoint_subject": "agent.b"}));
    assert_eq!(e["code"], "ENDPOINT_ACCESS_DENIED", "{e}");
    let e = c.err("relay_inbox", json!({"endpoint_subject": "agent.a.none"}));
    assert_eq!(e["code"], "ENDPOINT_NOT_FOUND", "{e}");
    assert_eq!(e["error"], "Endpoint not found: agent.a.none", "{e}");
    for bad in [
        json!({"limit": 101}),
        json!({"limit": 0}),
        json!({"status": "done"}),
    ] {
        let mut args = json!({"endpoint_subject": "agent.a"});
        args.as_object_mut()
            .into_iter()
            .for_each(|o| o.extend(bad.as_object().cloned().unwrap_or_default()));
        let e = c.err("relay_inbox", args);
        assert!(
            e["text"]
                .as_str()
                .is_some_and(|t| t.contains("Invalid arguments for tool relay_inbox")),
            "{e}"
        );
    }
}

#[test]
fn claim_then_relay_ack_and_relay_nack_finish_as_the_cli_does() {
    let r = Relay::new();
    r.add(&["agent.a"]);
    let first = r.send("agent.a", "one");
    let second = r.send("agent.a", "two");
    let Some(mut c) = Mcp::stdio(&r, "relay_ack", "agent.a") else {
        return;
    };
    let v = c.ok(
        "relay_inbox",
        json!({"endpoint_subject": "agent.a", "claim": true}),
    );
    assert_eq!(v["messages"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v["messages"][0]["status"], "claimed", "{v}");
    assert_eq!(r.files("agent.a", "cur").len(), 2, "{}", r.listing());
    let v = c.ok(
        "relay_ack",
        json!({"endpoint_subject": "agent.a", "ids": [first]}),
    );
    assert_eq!(v["acked"], json!([first]), "{v}");
    let v = c.ok(
        "relay_nack",
        json!({"endpoint_subject": "agent.a", "ids": [second], "reason": "cannot parse"}),
    );
    assert_eq!(v["nacked"], json!([second]), "{v}");
    assert!(r.files("agent.a", "cur").is_empty(), "{}", r.listing());
    let sidecar = r.read_json(&format!("mailboxes/agent.a/failed/{second}.reason.json"));
    assert_eq!(sidecar["reason"], "cannot parse", "{sidecar}");
    // Finished already: nothing to ack, an error result naming why.
    let e = c.err(
        "relay_ack",
        json!({"endpoint_subject": "agent.a", "ids": [first]}),
    );
    assert_eq!(e["code"], "NOT_CLAIMED", "{e}");
    assert_eq!(e["notClaimed"], json!([first]), "{e}");
    let e = c.err(
        "relay_ack",
        json!({"endpoint_subject": "agent.a", "ids": ["../../etc"]}),
    );
    assert!(
        e["text"].as_str().is_some_and(|t| t.contains("relay_ack")),
        "{e}"
    );
    let e = c.err(
        "relay_nack",
        json!({"endpoint_subject": "agent.a", "ids": [first]}),
    );
    assert!(
        e["text"].as_str().is_some_and(|t| t.contains("reason")),
        "{e}"
    );
}

#[test]
fn endpoints_are_registered_owned_listed_and_unregistered() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    let Some(mut c) = Mcp::stdio(&r, "endpoints", "agent.a") else {
        return;
    };
    let v = c.ok(
        "relay_register_endpoint",
        json!({"subject": "agent.a.tasks", "description": "my work"}),
    );
    assert_eq!(v["endpoint"]["subject"], "agent.a.tasks", "{v}");
    assert_eq!(v["endpoint"]["hash"], "agent.a.tasks", "{v}");
    assert_eq!(v["endpoint"]["owner"], "agent.a", "{v}");
    assert_eq!(v["note"], "my work", "{v}");
    // DorkOS's owner marker: the principal, no newline.
    let owner =
        std::fs::read_to_string(r.mailbox("agent.a.tasks").join(".owner")).unwrap_or_default();
    assert_eq!(owner, "agent.a");
    let list = c.ok("relay_list_endpoints", json!({}));
    assert_eq!(list["count"], 2, "{list}");
    let subjects: Vec<&str> = list["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["subject"].as_str())
        .collect();
    assert_eq!(subjects, ["agent.a.tasks", "agent.b"], "{list}");
    assert_eq!(list["endpoints"][0]["type"], "unknown", "{list}");
    assert!(list["endpoints"][0].get("owner").is_none(), "{list}");
    // It is ours to read; another identity may not.
    c.ok("relay_inbox", json!({"endpoint_subject": "agent.a.tasks"}));
    if let Some(mut other) = Mcp::stdio(&r, "endpoints", "agent.b") {
        let e = other.err("relay_inbox", json!({"endpoint_subject": "agent.a.tasks"}));
        assert_eq!(e["code"], "ENDPOINT_ACCESS_DENIED", "{e}");
        let e = other.err(
            "relay_unregister_endpoint",
            json!({"subject": "agent.a.tasks"}),
        );
        assert_eq!(e["code"], "ENDPOINT_ACCESS_DENIED", "{e}");
        let e = other.err(
            "relay_register_endpoint",
            json!({"subject": "agent.a.tasks"}),
        );
        assert_eq!(e["code"], "ENDPOINT_ACCESS_DENIED", "{e}");
    }
    // DorkOS's managed namespaces, an existing endpoint, a bad subject.
    let e = c.err(
        "relay_register_endpoint",
        json!({"subject": "relay.agent.x.y"}),
    );
    assert_eq!(e["code"], "RESERVED_SUBJECT", "{e}");
    let e = c.err("relay_register_endpoint", json!({"subject": "agent.b"}));
    assert_eq!(e["code"], "REGISTRATION_FAILED", "{e}");
    let e = c.err("relay_register_endpoint", json!({"subject": "a/../b"}));
    assert_eq!(e["code"], "INVALID_SUBJECT", "{e}");
    let e = c.err("relay_unregister_endpoint", json!({"subject": "agent.b"}));
    assert_eq!(e["code"], "ENDPOINT_ACCESS_DENIED", "{e}");
    // Unregistered with what it held.
    r.send("agent.a.tasks", "left over");
    let v = c.ok(
        "relay_unregister_endpoint",
        json!({"subject": "agent.a.tasks"}),
    );
    assert_eq!(v["success"], true, "{v}");
    assert_eq!(v["subject"], "agent.a.tasks", "{v}");
    assert!(!r.mailbox("agent.a.tasks").exists(), "{}", r.listing());
    let e = c.err(
        "relay_unregister_endpoint",
        json!({"subject": "agent.a.tasks"}),
    );
    assert_eq!(e["code"], "ENDPOINT_NOT_FOUND", "{e}");
}

#[test]
fn send_and_wait_returns_the_reply_of_a_responder_and_the_trace_joins_them() {
    let r = Relay::new();
    r.add(&["svc"]);
    let _resp = responder(&r, "svc", ECHO);
    let Some(mut c) = Mcp::stdio(&r, "send_and_wait", "agent.a") else {
        return;
    };
    let v = c.ok(
        "relay_send_and_wait",
        json!({"to_subject": "svc", "payload": {"q": 1}, "timeout_ms": 60000}),
    );
    assert_eq!(v["from"], "svc", "{v}");
    let request = &v["reply"]["echo"];
    assert_eq!(request["payload"]["q"], 1, "{v}");
    assert_eq!(request["from"], "agent.a", "{v}");
    assert_eq!(request["id"], v["sentMessageId"], "{v}");
    assert!(v["replyMessageId"].is_string(), "{v}");
    assert_eq!(v["progress"], json!([]), "{v}");
    assert!(query_inboxes(&r).is_empty(), "{}", r.listing());
    // The trace has the request at svc and the reply at the reply endpoint.
    let t = c.ok("relay_get_trace", json!({"messageId": v["sentMessageId"]}));
    assert_eq!(t["traceId"], v["sentMessageId"], "{t}");
    let endpoints: Vec<&str> = t["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["endpoint"].as_str())
        .collect();
    assert!(endpoints.contains(&"svc"), "{t}");
    let reply_to = request["replyTo"].as_str().unwrap_or_default();
    assert!(endpoints.contains(&reply_to), "{t}");
}

#[test]
fn send_and_wait_times_out_or_ends_on_a_failure_notice_and_leaves_no_endpoint() {
    let r = Relay::new();
    r.add(&["quiet", "failing"]);
    let Some(mut c) = Mcp::stdio(&r, "send_and_wait timeout", "agent.a") else {
        return;
    };
    let e = c.err(
        "relay_send_and_wait",
        json!({"to_subject": "quiet", "payload": "anyone?", "timeout_ms": 1000}),
    );
    assert_eq!(e["code"], "TIMEOUT", "{e}");
    let sent = e["sentMessageId"].as_str().unwrap_or_default();
    assert_eq!(
        e["error"],
        format!("relay_send_and_wait timed out after 1000ms (sent {sent})"),
        "{e}"
    );
    assert!(query_inboxes(&r).is_empty(), "{}", r.listing());
    // A handler that fails: its nack's notice ends the wait at once.
    let _resp = responder(&r, "failing", "exit 3");
    let started = Instant::now();
    let e = c.err(
        "relay_send_and_wait",
        json!({"to_subject": "failing", "payload": "x", "timeout_ms": 120_000}),
    );
    assert!(started.elapsed() < secs(100), "waited for the timeout: {e}");
    assert_eq!(e["code"], "DELIVERY_FAILED", "{e}");
    assert_eq!(e["failure"]["code"], "nack", "{e}");
    assert_eq!(e["exitCode"], 65, "{e}");
    assert!(query_inboxes(&r).is_empty(), "{}", r.listing());
    // Out of range, or nothing to answer.
    let e = c.err(
        "relay_send_and_wait",
        json!({"to_subject": "quiet", "payload": 1, "timeout_ms": 999}),
    );
    assert!(
        e["text"].as_str().is_some_and(|t| t.contains("timeout_ms")),
        "{e}"
    );
    let e = c.err(
        "relay_send_and_wait",
        json!({"to_subject": "nobody", "payload": 1}),
    );
    assert_eq!(e["exitCode"], 69, "{e}");
    assert!(query_inboxes(&r).is_empty(), "{}", r.listing());
}

#[test]
fn send_async_gives_an_owned_inbox_that_receives_the_reply() {
    let r = Relay::new();
    r.add(&["svc"]);
    let _resp = responder(&r, "svc", ECHO);
    let Some(mut c) = Mcp::stdio(&r, "send_async", "agent.a") else {
        return;
    };
    let v = c.ok(
        "relay_send_async",
        json!({"to_subject": "svc", "payload": "later"}),
    );
    let inbox = v["inboxSubject"].as_str().unwrap_or_default().to_string();
    assert!(inbox.starts_with("relay.inbox.dispatch."), "{v}");
    assert!(
        v["note"].as_str().is_some_and(|n| n.contains(&inbox)),
        "{v}"
    );
    wait_until(secs(60), "the reply in the inbox", || {
        !r.files(&inbox, "new").is_empty()
    });
    let got = c.ok(
        "relay_inbox",
        json!({"endpoint_subject": inbox, "ack": true}),
    );
    assert_eq!(got["messages"][0]["sender"], "svc", "{got}");
    assert_eq!(
        got["messages"][0]["payload"]["echo"]["id"], v["messageId"],
        "{got}"
    );
    c.ok("relay_unregister_endpoint", json!({"subject": inbox}));
    assert!(!r.mailbox(&inbox).exists(), "{}", r.listing());
    // Refused: the inbox is removed again.
    let e = c.err(
        "relay_send_async",
        json!({"to_subject": "bad subject", "payload": 1}),
    );
    assert_eq!(e["code"], "INVALID_SUBJECT", "{e}");
    r.cmd(["breakers", "open", "agent.a", "svc"]).success();
    let e = c.err(
        "relay_send_async",
        json!({"to_subject": "svc", "payload": 1}),
    );
    assert_eq!(e["code"], "REJECTED", "{e}");
    let left: Vec<String> = r.cmd(["endpoints", "--json"]).success().json()["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["subject"].as_str().map(str::to_string))
        .collect();
    assert_eq!(left, ["svc"], "{}", r.listing());
}

/// The wall clock in ms since the epoch: the sweep tests pin relay's clock
/// to minutes from it.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A `relay_send_async` inbox idle for 30 minutes (no read, no delivery) is
/// removed, as DorkOS's dispatch-inbox sweeper does: each step is a server
/// of its own with the clock at that minute, so the activity is what the
/// inboxes keep on disk, and a later session sweeps what an earlier left.
/// One read at 20 min and one delivered to at 25 min stay at 31 min and
/// go at 56; another agent's inbox is never this agent's to sweep.
#[test]
fn idle_dispatch_inboxes_are_swept_after_30_minutes() {
    let r = Relay::new();
    r.add(&["svc"]);
    let start = now_ms();
    let at = |min: u64| (start + min * 60_000).to_string();
    let session = |sender: &str, min: u64| {
        Mcp::stdio_env(
            &r,
            "dispatch sweep",
            sender,
            &[("RELAY_FAKE_NOW_MS", at(min).as_str())],
        )
    };
    let make = |c: &mut Mcp| -> String {
        let v = c.ok(
            "relay_send_async",
            json!({"to_subject": "svc", "payload": 1}),
        );
        v["inboxSubject"].as_str().unwrap_or_default().to_string()
    };
    let listed = |c: &mut Mcp| -> Vec<String> {
        let v = c.ok("relay_list_endpoints", json!({}));
        v["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["subject"].as_str().map(String::from))
            .collect()
    };
    let Some(mut c) = session("agent.a", 0) else {
        return;
    };
    let (idle, read, delivered) = (make(&mut c), make(&mut c), make(&mut c));
    drop(c);
    let Some(mut c) = session("agent.b", 0) else {
        return;
    };
    let theirs = make(&mut c);
    drop(c);
    let Some(mut c) = session("agent.a", 20) else {
        return;
    };
    c.ok("relay_inbox", json!({"endpoint_subject": read}));
    drop(c);
    // A reply lands at minute 25 (its new/ changed then).
    r.cmd(["send", &delivered, "reply"]).success();
    let new = std::fs::File::open(r.mailbox(&delivered).join("new")).expect("open new/");
    new.set_modified(std::time::UNIX_EPOCH + Duration::from_millis(start + 25 * 60_000))
        .expect("set the mtime of new/");
    let Some(mut c) = session("agent.a", 31) else {
        return;
    };
    let left = listed(&mut c);
    drop(c);
    assert!(!left.contains(&idle), "{left:?}");
    assert!(!r.mailbox(&idle).exists(), "{}", r.listing());
    for kept in [&read, &delivered, &theirs] {
        assert!(left.contains(kept), "{kept} kept at 31 min: {left:?}");
    }
    let Some(mut c) = session("agent.a", 56) else {
        return;
    };
    let left = listed(&mut c);
    drop(c);
    assert!(
        !left.contains(&read) && !left.contains(&delivered),
        "{left:?}"
    );
    assert!(
        left.contains(&theirs),
        "agent.b's is not agent.a's: {left:?}"
    );
    assert!(r.mailbox(&theirs).exists(), "{}", r.listing());
}

/// `relay serve`'s `/mcp` sweeps its idle `relay_send_async` inboxes also
/// while no call comes, as `relay mcp` does: inboxes made over HTTP at
/// minute 0 by one server; at minute 31 another server, which gets no call
/// at all, removes the idle one within its idle period (shortened by
/// `RELAY_MCP_IDLE_SWEEP_MS`) and keeps one delivered to at minute 25 and
/// one of another identity (`relay mcp --as agent.b`).
#[test]
fn serve_sweeps_idle_dispatch_inboxes_while_no_call_comes() {
    let r = Relay::new();
    r.add(&["svc"]);
    let start = now_ms();
    let at = |min: u64| (start + min * 60_000).to_string();
    let make = |c: &mut Mcp| -> String {
        let v = c.ok(
            "relay_send_async",
            json!({"to_subject": "svc", "payload": 1}),
        );
        v["inboxSubject"].as_str().unwrap_or_default().to_string()
    };
    let server = Server::start(&r, "127.0.0.1:0", &[], &[("RELAY_FAKE_NOW_MS", &at(0))]);
    let url = format!("http://{}/mcp", server.addr);
    let Some(mut c) = Mcp::http(&r, "serve idle sweep", &url, &[]) else {
        return;
    };
    let (idle, delivered) = (make(&mut c), make(&mut c));
    drop(c);
    drop(server);
    let Some(mut c) = Mcp::stdio_env(
        &r,
        "serve idle sweep",
        "agent.b",
        &[("RELAY_FAKE_NOW_MS", at(0).as_str())],
    ) else {
        return;
    };
    let theirs = make(&mut c);
    drop(c);
    // A reply lands at minute 25 (its new/ changed then).
    r.cmd(["send", &delivered, "reply"]).success();
    let new = std::fs::File::open(r.mailbox(&delivered).join("new")).expect("open new/");
    new.set_modified(std::time::UNIX_EPOCH + Duration::from_millis(start + 25 * 60_000))
        .expect("set the mtime of new/");
    for ep in [&idle, &delivered, &theirs] {
        assert!(r.mailbox(ep).exists(), "{ep}: {}", r.listing());
    }
    let server = Server::start(
        &r,
        "127.0.0.1:0",
        &[],
        &[
            ("RELAY_FAKE_NOW_MS", &at(31)),
            ("RELAY_MCP_IDLE_SWEEP_MS", "50"),
        ],
    );
    wait_until(secs(10), "the idle inbox swept with no call", || {
        !r.mailbox(&idle).exists()
    });
    drop(server);
    for kept in [&delivered, &theirs] {
        assert!(r.mailbox(kept).exists(), "{kept}: {}", r.listing());
    }
}

/// `relay mcp` also sweeps while no call comes (its idle timer, shortened
/// by `RELAY_MCP_IDLE_SWEEP_MS`): a session at minute 31 that makes no
/// call removes this identity's inbox idle since minute 0, not agent.b's.
#[test]
fn relay_mcp_sweeps_idle_dispatch_inboxes_while_no_call_comes() {
    let r = Relay::new();
    r.add(&["svc"]);
    let start = now_ms();
    let at = |min: u64| (start + min * 60_000).to_string();
    let mut made = Vec::new();
    for sender in ["agent.a", "agent.b"] {
        let Some(mut c) = Mcp::stdio_env(
            &r,
            "relay mcp idle sweep",
            sender,
            &[("RELAY_FAKE_NOW_MS", at(0).as_str())],
        ) else {
            return;
        };
        let v = c.ok(
            "relay_send_async",
            json!({"to_subject": "svc", "payload": 1}),
        );
        made.push(v["inboxSubject"].as_str().unwrap_or_default().to_string());
    }
    let (idle, theirs) = (&made[0], &made[1]);
    let Some(c) = Mcp::stdio_env(
        &r,
        "relay mcp idle sweep",
        "agent.a",
        &[
            ("RELAY_FAKE_NOW_MS", at(31).as_str()),
            ("RELAY_MCP_IDLE_SWEEP_MS", "50"),
        ],
    ) else {
        return;
    };
    wait_until(secs(10), "the idle inbox swept with no call", || {
        !r.mailbox(idle).exists()
    });
    drop(c);
    assert!(r.mailbox(theirs).exists(), "{}", r.listing());
}

#[test]
fn dead_letters_of_your_endpoints_are_listed_and_requeued() {
    let r = Relay::new();
    r.add(&["agent.a", "agent.b"]);
    let mine = r.send("agent.a", "poison");
    r.cmd(["recv", "agent.a", "--exec", "exit 1"]).success();
    let theirs = r.send("agent.b", "not yours");
    r.cmd(["recv", "agent.b", "--exec", "exit 1"]).success();
    let Some(mut c) = Mcp::stdio(&r, "dead letters", "agent.a") else {
        return;
    };
    let v = c.ok("relay_dead_letters", json!({}));
    assert_eq!(v["total"], 1, "{v}");
    let d = &v["deadLetters"][0];
    assert_eq!(d["messageId"], mine.as_str(), "{v}");
    assert_eq!(d["endpointHash"], "agent.a", "{v}");
    assert_eq!(d["code"], "nack", "{v}");
    assert_eq!(d["envelope"]["payload"], "poison", "{v}");
    // Someone else's dead letter is neither shown nor requeued.
    let e = c.err(
        "relay_dead_letters",
        json!({"action": "requeue", "ids": [theirs]}),
    );
    assert_eq!(e["code"], "REQUEUE_FAILED", "{e}");
    assert_eq!(r.files("agent.b", "failed").len(), 2, "{}", r.listing());
    let v = c.ok(
        "relay_dead_letters",
        json!({"action": "requeue", "ids": [mine]}),
    );
    assert_eq!(v["requeued"][0]["id"], mine.as_str(), "{v}");
    assert_eq!(r.files("agent.a", "new"), [format!("{mine}.json")]);
    let e = c.err("relay_dead_letters", json!({"action": "requeue"}));
    assert!(e["text"].as_str().is_some_and(|t| t.contains("ids")), "{e}");
    let e = c.err("relay_dead_letters", json!({"action": "purge"}));
    assert!(
        e["text"].as_str().is_some_and(|t| t.contains("purge")),
        "{e}"
    );
}

#[test]
fn status_metrics_and_trace_read_the_bus() {
    let r = Relay::new();
    r.add(&["agent.a"]);
    let id = r.send("agent.a", "hello");
    let Some(mut c) = Mcp::stdio(&r, "status", "agent.a") else {
        return;
    };
    let s = c.ok("relay_status", json!({}));
    assert_eq!(s["endpoints"][0]["subject"], "agent.a", "{s}");
    assert_eq!(s["endpoints"][0]["new"], 1, "{s}");
    // Metrics come as text and as structured content.
    let m = c.call("relay_get_metrics", json!({}));
    assert_eq!(m["isError"], false, "{m}");
    assert!(
        m["structured"]["totalMessages"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{m}"
    );
    assert_eq!(m["structured"], m["json"], "{m}");
    let t = c.ok("relay_get_trace", json!({"messageId": id}));
    assert_eq!(t["traceId"], id.as_str(), "{t}");
    let e = c.err(
        "relay_get_trace",
        json!({"messageId": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}),
    );
    assert_eq!(e["error"], "Trace not found", "{e}");
    assert_eq!(e["messageId"], "01ARZ3NDEKTSV4RRFFQ69G5FAV", "{e}");
}

/// `relay_status` waits for no writer, as `relay serve`'s status route:
/// with another process (an operator's sqlite3 session) holding the
/// index's write lock, a send in the journal the index has not read and a
/// claim past its lease (both want that lock to be recorded), it answers
/// from the index as it stands. The lock timeout is far beyond the
/// client's patience (90 s), so a tool that waited for the lock would not
/// answer at all. Once the lock is free, the next call records the lease.
#[test]
fn relay_status_answers_while_another_process_holds_the_index() {
    use crate::harness::T;
    let r = Relay::new();
    r.add(&["agent.a"]);
    let one = r.cmd(["send", "agent.a", "one"]).at(T).success().id();
    r.cmd(["recv", "agent.a", "--lease", "1s"]).at(T).success();
    r.cmd(["status"]).at(T).success();
    let db = rusqlite::Connection::open(r.path("relay.db")).expect("open relay.db");
    db.execute_batch("BEGIN IMMEDIATE").expect("hold the index");
    r.cmd(["send", "agent.a", "two"]).at(T).success();
    let later = (T + 60_000).to_string();
    let env = [
        ("RELAY_FAKE_NOW_MS", later.as_str()),
        ("RELAY_LOCK_TIMEOUT_MS", "600000"),
    ];
    let Some(mut c) = Mcp::stdio_env(&r, "status under a held index", "agent.a", &env) else {
        return;
    };
    let kinds = |s: &Value| -> Vec<String> {
        s["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["kind"].as_str().map(String::from))
            .collect()
    };
    let s = c.ok("relay_status", json!({}));
    let ep = &s["endpoints"][0];
    assert_eq!(
        (&ep["subject"], &ep["new"], &ep["cur"]),
        (&json!("agent.a"), &json!(1), &json!(1)),
        "{s}"
    );
    assert!(
        !kinds(&s).iter().any(|k| k == "lease_expired"),
        "nothing recorded under another's lock: {s}"
    );
    // The other read tools, each the first call of its server (the one
    // that opens the index), do not wait either.
    let Some(mut t) = Mcp::stdio_env(&r, "trace under a held index", "agent.a", &env) else {
        return;
    };
    let trace = t.ok("relay_get_trace", json!({"messageId": one}));
    assert_eq!(trace["traceId"], one.as_str(), "{trace}");
    drop(t);
    let Some(mut m) = Mcp::stdio_env(&r, "metrics under a held index", "agent.a", &env) else {
        return;
    };
    let metrics = m.call("relay_get_metrics", json!({}));
    assert_eq!(metrics["isError"], false, "{metrics}");
    drop(m);
    drop(db); // rolls back: the lock is free
    let s = c.ok("relay_status", json!({}));
    assert!(
        kinds(&s).iter().any(|k| k == "lease_expired"),
        "the expired lease recorded once the lock is free: {s}"
    );
}

#[test]
fn malformed_calls_are_error_results_and_the_server_lives_on() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    let Some(mut c) = Mcp::stdio(&r, "malformed", "agent.a") else {
        return;
    };
    for (name, args, needle) in [
        (
            "relay_send",
            json!({"subject": 7, "payload": 1}),
            "invalid type",
        ),
        (
            "relay_send",
            json!({"payload": 1}),
            "missing field `subject`",
        ),
        (
            "relay_send",
            json!({"subject": "agent.b", "payload": 1, "colour": "red"}),
            "unknown field `colour`",
        ),
        (
            "relay_get_trace",
            json!({"messageId": ["x"]}),
            "invalid type",
        ),
        ("relay_status", json!({"verbose": true}), "unknown field"),
        (
            "relay_send_and_wait",
            json!({"to_subject": "agent.b", "payload": 1, "timeout_ms": "soon"}),
            "invalid type",
        ),
        (
            "relay_no_such_tool",
            json!({}),
            "Tool relay_no_such_tool not found",
        ),
    ] {
        let e = c.err(name, args);
        let text = e["text"].as_str().unwrap_or_default();
        assert!(text.starts_with("MCP error -32602: "), "{name}: {e}");
        assert!(text.contains(needle), "{name}: {e}");
    }
    assert!(r.files("agent.b", "new").is_empty(), "{}", r.listing());
    c.ok(
        "relay_send",
        json!({"subject": "agent.b", "payload": "still here"}),
    );
    assert_eq!(r.files("agent.b", "new").len(), 1);
}

/// `relay mcp` spoken to with raw JSON-RPC lines (no SDK needed): EOF and
/// signals.
struct Raw {
    proc: Child,
    stdin: Option<ChildStdin>,
    out: std::sync::mpsc::Receiver<String>,
}

impl Raw {
    fn start(r: &Relay, sender: &str) -> Raw {
        let mut c = Command::new(BIN);
        r.clean_env(c.args(["mcp", "--as", sender]))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut proc = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start relay mcp: {e}"));
        let stdin = proc.stdin.take();
        let stdout = proc.stdout.take().expect("stdout is piped");
        let (tx, out) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout)
                .lines()
                .map_while(std::result::Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut raw = Raw { proc, stdin, out };
        raw.line(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}}}),
        );
        let init = raw.answer(1);
        assert_eq!(init["result"]["serverInfo"]["name"], "relay", "{init}");
        raw.line(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        raw
    }

    fn line(&mut self, v: &Value) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{v}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("cannot write to relay mcp: {e}"));
    }

    /// The response to request `id`.
    fn answer(&mut self, id: u64) -> Value {
        let deadline = Instant::now() + secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .out
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no answer to request {id}: {e}"));
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("stdout line is not JSON-RPC ({e}): {line}"));
            if v["id"] == id {
                return v;
            }
        }
    }

    /// The exit code within `limit` (-1 for a signal).
    fn exit(&mut self, limit: Duration) -> i32 {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = self.proc.try_wait() {
                return s.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "relay mcp still running after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

#[test]
fn eof_on_stdin_ends_the_server_with_0() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    let mut raw = Raw::start(&r, "agent.a");
    raw.line(
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "relay_send", "arguments": {"subject": "agent.b", "payload": 1}}}),
    );
    let v = raw.answer(2);
    assert_eq!(v["result"]["isError"], false, "{v}");
    drop(raw.stdin.take());
    assert_eq!(raw.exit(secs(20)), 0);
    // Before the handshake too.
    let mut c = Command::new(BIN);
    let out = r
        .clean_env(c.args(["mcp", "--as", "agent.a"]))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run relay mcp: {e}"));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn sigterm_ends_the_server_with_0_and_a_waiting_call_removes_its_reply_endpoint() {
    let r = Relay::new();
    r.add(&["svc"]);
    let mut raw = Raw::start(&r, "agent.a");
    raw.line(
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "relay_send_and_wait",
        "arguments": {"to_subject": "svc", "payload": 1, "timeout_ms": 600_000}}}),
    );
    wait_until(secs(20), "the request", || {
        !r.files("svc", "new").is_empty()
    });
    assert_eq!(query_inboxes(&r).len(), 1, "{}", r.listing());
    let ok = Command::new("kill")
        .args(["-TERM", &raw.proc.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "cannot signal relay mcp");
    assert_eq!(raw.exit(secs(20)), 0);
    assert!(query_inboxes(&r).is_empty(), "{}", r.listing());
}

/// SIGTERM to `relay serve` ends a `relay_send_and_wait` running over its
/// `/mcp` (as `relay mcp` does), so the server stops within its grace with
/// nothing left open, and the waiting client gets an answer.
#[test]
fn sigterm_to_serve_ends_a_send_and_wait_over_mcp() {
    let r = Relay::new();
    r.add(&["quiet"]);
    let mut server = Server::start(&r, "127.0.0.1:0", &[], &[]);
    let url = format!("http://{}/mcp", server.addr);
    let Some(mut c) = Mcp::http(&r, "serve stop ends waits", &url, &[]) else {
        return;
    };
    let waiting = std::thread::spawn(move || {
        let v = c.call(
            "relay_send_and_wait",
            json!({"to_subject": "quiet", "payload": "anyone?", "timeout_ms": 120_000}),
        );
        (v, c)
    });
    wait_until(secs(20), "the request sent", || {
        !r.cmd(["peek", "quiet", "--json"])
            .success()
            .json_lines()
            .is_empty()
    });
    let stopped = Instant::now();
    server.proc.signal("TERM");
    assert_eq!(server.proc.finish(secs(30)), 0, "{}", server.proc.dump());
    let dump = server.proc.dump();
    assert!(
        !dump.contains("still open"),
        "a connection outlived the grace: {dump}"
    );
    assert!(stopped.elapsed() < secs(5), "waited out the grace: {dump}");
    let (v, _c) = waiting
        .join()
        .unwrap_or_else(|_| panic!("the waiting client panicked"));
    assert_eq!(v["json"]["code"], "CANCELLED", "{v}");
    assert_eq!(v["json"]["kind"], "interrupted", "{v}");
}

#[test]
fn mcp_over_http_is_behind_the_token_and_the_origin_check() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    let server = Server::start(&r, "127.0.0.1:0", &[], &[("RELAY_SERVE_TOKEN", "s3cret")]);
    let url = format!("http://{}/mcp", server.addr);
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let post = |headers: &[(&str, &str)]| {
        let mut h = vec![
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ];
        h.extend_from_slice(headers);
        post_body(server.addr, "/mcp", &h, init)
    };
    // No token, a wrong one: 401 before the MCP server sees anything.
    assert_eq!(post(&[]).status, 401);
    assert_eq!(post(&[("Authorization", "Bearer wrong")]).status, 401);
    // A browser page from elsewhere, even with the token: 403.
    let resp = post(&[
        ("Authorization", "Bearer s3cret"),
        ("Origin", "http://evil.example"),
    ]);
    assert_eq!(resp.status, 403, "{resp:?}");
    // A GET without a session (which only a POST with the token opens)
    // opens no stream.
    let get = http(
        server.addr,
        "GET",
        "/mcp",
        &[("Accept", "text/event-stream")],
    );
    assert_ne!(get.status, 200, "{get:?}");
    // With the token, a real client: its sends are relay.external.mcp's.
    let Some(mut c) = Mcp::http(&r, "mcp over http", &url, &["Authorization=Bearer s3cret"]) else {
        return;
    };
    assert_eq!(c.init["serverInfo"]["name"], "relay", "{}", c.init);
    assert_eq!(c.tools().len(), TOOLS.len());
    c.ok(
        "relay_send",
        json!({"subject": "agent.b", "payload": "over http"}),
    );
    let msgs = r.cmd(["peek", "agent.b", "--json"]).success().json_lines();
    assert_eq!(msgs[0]["from"], "relay.external.mcp", "{msgs:?}");
    let e = c.err("relay_inbox", json!({"endpoint_subject": "agent.b"}));
    assert_eq!(e["code"], "ENDPOINT_ACCESS_DENIED", "{e}");
}

/// `POST path` with `body`, read to the end.
fn post_body(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> super::Resp {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect_timeout(&addr, secs(5))
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    s.set_read_timeout(Some(secs(10)))
        .unwrap_or_else(|e| panic!("cannot set a timeout: {e}"));
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())
        .unwrap_or_else(|e| panic!("cannot send POST {path}: {e}"));
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    super::parse_response(&raw)
}

/// A refusal reads alike over DorkOS's two surfaces (DorkOS's MCP send
/// tools pass the publish's `rejected` on as its HTTP route answers it):
/// the same sends, refused by backpressure, an open breaker and the rate
/// limit, give the same entries field by field over
/// `POST /api/relay/messages` and `relay_send` on the same server's `/mcp`
/// (one sender, one pinned clock, so even the retry-afters agree).
#[test]
fn http_and_mcp_give_the_same_rejected_entries() {
    let r = Relay::new();
    r.add(&["agent.full", "agent.shut"]);
    // Endpoints of one message each (the mailboxes hold one).
    let spare: Vec<String> = (0..9).map(|n| format!("agent.spare{n}")).collect();
    r.cmd(
        ["endpoints", "add"]
            .into_iter()
            .chain(spare.iter().map(String::as_str)),
    )
    .success();
    r.write_file(
        "config.json",
        r#"{"reliability":{"rateLimit":{"maxPerWindow":6,"windowSecs":60},
            "backpressure":{"maxMailboxSize":1}}}"#,
    );
    r.cmd(["send", "agent.full", "first", "--from", "other"])
        .at(crate::harness::T)
        .success();
    r.cmd(["breakers", "open", "relay.external.mcp", "agent.shut"])
        .at(crate::harness::T)
        .success();
    let server = crate::dorkos_http::serve(&r);
    let url = format!("{}mcp", server.url);
    let Some(mut c) = Mcp::http(&r, "same rejected entries", &url, &[]) else {
        return;
    };
    let over_http = |subject: &str| -> Value {
        let body = json!({"subject": subject, "from": "relay.external.mcp", "payload": 1});
        let resp = super::send_json(server.addr, "POST", "/api/relay/messages", &body);
        assert_eq!(resp.status, 200, "{resp:?}");
        resp.json()["rejected"].clone()
    };
    for subject in ["agent.full", "agent.shut"] {
        let http_rejected = over_http(subject);
        let mcp = c.err("relay_send", json!({"subject": subject, "payload": 1}));
        assert_eq!(mcp["code"], "REJECTED", "{mcp}");
        let want = if subject == "agent.full" {
            "backpressure"
        } else {
            "circuit_open"
        };
        assert_eq!(http_rejected[0]["reason"], want, "{http_rejected}");
        for field in [
            "endpointHash",
            "reason",
            "code",
            "detail",
            "deadLettered",
            "retryAfterMs",
        ] {
            assert_eq!(
                http_rejected[0][field], mcp["rejected"][0][field],
                "{subject}: {field}: {http_rejected} vs {mcp}"
            );
        }
        assert_eq!(http_rejected, mcp["rejected"], "{subject}");
    }
    // Sends until the limit (6 a minute, the clock pinned): then both
    // refuse at `*`.
    let mut http_rejected = Value::Null;
    for ep in &spare[..8] {
        http_rejected = over_http(ep);
        if !http_rejected.is_null() {
            break;
        }
    }
    assert_eq!(
        http_rejected[0]["reason"], "rate_limited",
        "{http_rejected}"
    );
    let mcp = c.err("relay_send", json!({"subject": spare[8], "payload": 1}));
    assert_eq!(http_rejected, mcp["rejected"], "{mcp}");
    assert!(
        http_rejected[0]["retryAfterMs"]
            .as_u64()
            .is_some_and(|ms| ms > 0),
        "{http_rejected}"
    );
}
