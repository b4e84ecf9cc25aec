//! A nats-server per test and bridges over relay homes.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::harness::{BIN, Relay};

/// How long a test waits for something the bridges do.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The nats-server binary, or `None` (skip) when it is missing and not
/// under CI; under CI a missing server fails the test.
pub fn nats_server() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "0" && v != "false");
        assert!(
            !ci,
            "nats-server is not installed; .ci/run installs it (apt-get install -y nats-server)"
        );
        eprintln!("SKIPPED: nats-server is not installed (apt-get install -y nats-server)");
    }
    found
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// One nats-server with JetStream on a loopback port and its own store.
pub struct Nats {
    bin: PathBuf,
    pub port: u16,
    store: TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Nats {
    /// Starts a server, or `None` when there is none to start (skip).
    pub fn start() -> Option<Self> {
        Self::start_args(&[])
    }

    /// Starts a server that also reads the configuration `conf` (users,
    /// permissions), or `None` when there is none to start (skip).
    pub fn start_conf(conf: &str) -> Option<Self> {
        let dir = tempfile::Builder::new()
            .prefix("relay-nats-conf-")
            .tempdir()
            .unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("server.conf");
        std::fs::write(&path, conf).unwrap_or_else(|e| panic!("{e}"));
        // Read at start and on every restart: kept with the store.
        let mut n = Self::start_args(&["-c", &path.to_string_lossy()])?;
        let kept = n.store.path().join("server.conf");
        std::fs::copy(&path, &kept).unwrap_or_else(|e| panic!("{e}"));
        n.extra = vec!["-c".into(), kept.to_string_lossy().into_owned()];
        Some(n)
    }

    /// Rewrites the configuration of a server started by `start_conf`,
    /// read when it next starts.
    pub fn set_conf(&self, conf: &str) {
        std::fs::write(self.store.path().join("server.conf"), conf)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts a server with the extra flags `args` (`--user u --pass p`,
    /// `--auth TOKEN`), or `None` when there is none to start (skip).
    pub fn start_args(args: &[&str]) -> Option<Self> {
        let bin = nats_server()?;
        let store = tempfile::Builder::new()
            .prefix("relay-nats-")
            .tempdir()
            .unwrap_or_else(|e| panic!("{e}"));
        let mut n = Nats {
            bin,
            port: free_port(),
            store,
            extra: args.iter().map(|a| (*a).to_string()).collect(),
            child: None,
        };
        n.up();
        Some(n)
    }

    /// Server `i` of a three-node cluster on loopback, whose cluster ports
    /// are `cluster_ports`.
    pub fn clustered(i: usize, cluster_ports: [u16; 3]) -> Option<Self> {
        let bin = nats_server()?;
        let store = tempfile::Builder::new()
            .prefix("relay-nats-")
            .tempdir()
            .unwrap_or_else(|e| panic!("{e}"));
        let routes: Vec<String> = cluster_ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
            .collect();
        let mut n = Nats {
            bin,
            port: free_port(),
            store,
            extra: vec![
                "--name".into(),
                format!("n{i}"),
                "--cluster_name".into(),
                "relay-test".into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{}", cluster_ports[i]),
                "--routes".into(),
                routes.join(","),
            ],
            child: None,
        };
        n.up();
        Some(n)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it (again, on the same port and store).
    pub fn up(&mut self) {
        if self.child.is_some() {
            return;
        }
        let log = std::fs::File::create(self.store.path().join("server.log"))
            .unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(&self.bin)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path().join("js"))
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nats-server: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it hard (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `relay bridge` over a relay home.
pub struct Bridge {
    pub host: String,
    url: String,
    home: PathBuf,
    user: PathBuf,
    extra: Vec<(String, String)>,
    /// Run as `relay --json bridge`.
    pub json: bool,
    child: Option<Child>,
    log: PathBuf,
}

impl Bridge {
    /// Starts `relay bridge --nats URL --host HOST` over `relay`'s home.
    pub fn start(relay: &Relay, url: &str, host: &str) -> Self {
        Self::start_with(relay, url, host, &[])
    }

    /// The same, with extra environment variables.
    pub fn start_with(relay: &Relay, url: &str, host: &str, env: &[(&str, &str)]) -> Self {
        let mut b = Bridge {
            host: host.to_string(),
            url: url.to_string(),
            home: relay.home(),
            user: relay.user_home(),
            extra: env
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
            json: false,
            child: None,
            log: relay.scratch().join(format!("bridge-{host}.log")),
        };
        b.up();
        b
    }

    /// Starts `relay --json bridge --nats URL --host HOST` over `relay`'s
    /// home (logging to `bridge-HOST.log` as `start`).
    pub fn start_json(relay: &Relay, url: &str, host: &str) -> Self {
        let mut b = Bridge {
            host: host.to_string(),
            url: url.to_string(),
            home: relay.home(),
            user: relay.user_home(),
            extra: Vec::new(),
            json: true,
            child: None,
            log: relay.scratch().join(format!("bridge-{host}.log")),
        };
        b.up();
        b
    }

    /// Starts `relay bridge` with no flags: URL and host from the
    /// environment `env` and `config.json`.
    pub fn start_flagless(relay: &Relay, env: &[(&str, &str)]) -> Self {
        let mut b = Bridge {
            host: String::new(),
            url: String::new(),
            home: relay.home(),
            user: relay.user_home(),
            extra: env
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
            json: false,
            child: None,
            log: relay.scratch().join("bridge.log"),
        };
        b.up();
        b
    }

    /// Starts it (again).
    pub fn up(&mut self) {
        if self.child.is_some() {
            return;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut c = Command::new(BIN);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.user)
            .env("RELAY_HOME", &self.home)
            .env("NO_COLOR", "1");
        if self.json {
            c.arg("--json");
        }
        c.arg("bridge");
        if !self.url.is_empty() {
            c.args(["--nats", &self.url]);
        }
        if !self.host.is_empty() {
            c.args(["--host", &self.host]);
        }
        for (k, v) in &self.extra {
            c.env(k, v);
        }
        let child = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start relay bridge: {e}"));
        self.child = Some(child);
    }

    /// What it printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills it with SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for it to exit on its own and returns its exit status code,
    /// failing if it still runs after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("relay bridge still ran after {limit:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it with SIGTERM and returns its exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        self.stop_within(Duration::from_secs(15))
    }

    /// Stops it with SIGTERM and returns its exit status code, failing if
    /// it has not exited within `limit`.
    pub fn stop_within(&mut self, limit: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        let pid = rustix::process::Pid::from_raw(i32::try_from(c.id()).ok()?)?;
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "relay bridge did not stop within {limit:?} of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `f` until it returns `Some`, or fails with `what` after `PATIENCE`.
#[track_caller]
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `relay endpoints --json` of `relay`: (subject, host) pairs.
pub fn endpoints(relay: &Relay) -> Vec<(String, Option<String>)> {
    let v = relay.cmd(["endpoints", "--json"]).success().json();
    v["endpoints"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["subject"].as_str().unwrap_or_default().to_string(),
                        e["host"].as_str().map(str::to_string),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `relay` lists `ep` as remote on `host`.
#[track_caller]
pub fn wait_remote(relay: &Relay, ep: &str, host: &str) {
    wait_for(&format!("'{ep}' on host '{host}' to be listed"), || {
        // A bridge just started may not have made its home yet (`relay
        // endpoints` then exits 69, no home): nothing is listed so far.
        if !relay.home().exists() {
            return None;
        }
        endpoints(relay)
            .iter()
            .any(|(s, h)| s == ep && h.as_deref() == Some(host))
            .then_some(())
    });
}

/// Two homes, a server and a bridge on each: hosta and hostb.
pub struct Pair {
    pub nats: Nats,
    pub a: Relay,
    pub b: Relay,
    pub ba: Bridge,
    pub bb: Bridge,
}

impl Pair {
    /// Starts both with the given endpoints on each home, and waits until
    /// each sees the other's; `None` when nats-server is missing (skip).
    pub fn start(on_a: &[&str], on_b: &[&str]) -> Option<Self> {
        Self::start_with(on_a, on_b, "{}", "{}")
    }

    /// The same, with `config.json` of each home written first.
    pub fn start_with(on_a: &[&str], on_b: &[&str], cfg_a: &str, cfg_b: &str) -> Option<Self> {
        Some(Self::start_on(Nats::start()?, on_a, on_b, cfg_a, cfg_b))
    }

    /// `start_with` on the server given.
    pub fn start_on(nats: Nats, on_a: &[&str], on_b: &[&str], cfg_a: &str, cfg_b: &str) -> Self {
        let url = nats.url();
        Self::start_at(nats, &url, on_a, on_b, cfg_a, cfg_b)
    }

    /// `start_on`, the bridges given `url` for the server.
    pub fn start_at(
        nats: Nats,
        url: &str,
        on_a: &[&str],
        on_b: &[&str],
        cfg_a: &str,
        cfg_b: &str,
    ) -> Self {
        let (a, b) = (Relay::new(), Relay::new());
        a.write_file("config.json", cfg_a);
        b.write_file("config.json", cfg_b);
        if !on_a.is_empty() {
            a.add(on_a);
        }
        if !on_b.is_empty() {
            b.add(on_b);
        }
        let ba = Bridge::start(&a, url, "hosta");
        let bb = Bridge::start(&b, url, "hostb");
        for ep in on_b {
            wait_remote(&a, ep, "hostb");
        }
        for ep in on_a {
            wait_remote(&b, ep, "hosta");
        }
        Pair { nats, a, b, ba, bb }
    }
}

/// Message files in `ep`'s `sub` of `relay` (ids).
pub fn ids(relay: &Relay, ep: &str, sub: &str) -> Vec<String> {
    relay
        .files(ep, sub)
        .into_iter()
        .filter_map(|f| f.strip_suffix(".json").map(str::to_string))
        .filter(|f| !f.ends_with(".reason"))
        .collect()
}

/// Now, in ms since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Claims and acks everything waiting at `ep` of `relay`; the ids, in order.
/// `relay send agent.b {} --from agent.a --reply-to agent.a.replies` on
/// `relay` (A), with `extra` arguments; the id it printed.
pub fn send_for_reply(relay: &Relay, extra: &[&str]) -> String {
    let mut args = vec![
        "send",
        "agent.b",
        "{}",
        "--from",
        "agent.a",
        "--reply-to",
        "agent.a.replies",
    ];
    args.extend_from_slice(extra);
    relay.cmd(args).success().id()
}

/// Waits until the bridge of `relay`'s home knows its link is down (its
/// `link.json` says so): a send before that may already be in the client's
/// buffer, published as soon as the server is back.
pub fn wait_link_down(relay: &Relay) {
    wait_for("the bridge to see its link down", || {
        let bytes = std::fs::read(relay.path("bridge/link.json")).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        (v["connected"] == false).then_some(())
    });
}

pub fn drain(relay: &Relay, ep: &str) -> Vec<String> {
    let out = relay
        .cmd(["recv", ep, "--ack", "--json", "-n", "100000"])
        .run();
    assert!(
        out.code == 0 || out.stdout.trim().is_empty(),
        "recv --ack exited {} after printing messages:\n{}\nstderr:\n{}",
        out.code,
        out.stdout,
        out.stderr
    );
    if out.code != 0 {
        return Vec::new();
    }
    out.json_lines()
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect()
}
