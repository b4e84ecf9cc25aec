//! The test harness: runs the real `relay` binary against a private relay
//! home in a temp directory, with a clean environment, and on any failed
//! assertion prints the command, its status and output, and the home's files.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_relay");

/// 2026-01-01T00:00:00Z in ms: the pinned clock most tests run at.
pub const T: u64 = 1_767_225_600_000;

/// A child still running after this long is killed and the test fails.
const WATCHDOG: Duration = Duration::from_secs(60);

/// One test's world: a temp directory whose `home/` is `RELAY_HOME` and whose
/// `user/` is `HOME`. Every command built by [`Relay::cmd`] shares it.
pub struct Relay {
    tmp: TempDir,
}

impl Relay {
    /// A fresh world. The relay home itself is not created: relay does that.
    pub fn new() -> Self {
        let tmp = scratch_parent()
            .map_or_else(
                || tempfile::Builder::new().prefix("relay-test-").tempdir(),
                |dir| {
                    tempfile::Builder::new()
                        .prefix("relay-test-")
                        .tempdir_in(dir)
                },
            )
            .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        let relay = Relay { tmp };
        mkdir_private(&relay.user_home().join(".config"));
        relay
    }

    /// `RELAY_HOME` of every command of this test.
    pub fn home(&self) -> PathBuf {
        self.tmp.path().join("home")
    }

    /// The temp directory holding the home; free for the test's own files.
    pub fn scratch(&self) -> &Path {
        self.tmp.path()
    }

    /// `HOME` of every command (a fallback must never reach the real one).
    pub fn user_home(&self) -> PathBuf {
        self.tmp.path().join("user")
    }

    /// `<home>/<rel>`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.home().join(rel)
    }

    /// The mailbox directory of endpoint `ep`.
    pub fn mailbox(&self, ep: &str) -> PathBuf {
        self.home().join("mailboxes").join(ep)
    }

    /// Sorted file names in `mailboxes/<ep>/<sub>` (empty if it is missing).
    pub fn files(&self, ep: &str, sub: &str) -> Vec<String> {
        let dir = self.mailbox(ep).join(sub);
        let mut names: Vec<String> = match fs::read_dir(&dir) {
            Ok(rd) => rd
                .map(|e| {
                    e.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("cannot list {}: {e}", dir.display()),
        };
        names.sort();
        names
    }

    /// Writes `<home>/<rel>` (mode 0600), creating missing parents (0700),
    /// as another program (DorkOS, `mv`, a crashed writer) would.
    pub fn write_file(&self, rel: &str, bytes: impl AsRef<[u8]>) {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            mkdir_private(parent);
        }
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(bytes.as_ref()))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    /// Parses `<home>/<rel>` as JSON.
    #[track_caller]
    pub fn read_json(&self, rel: &str) -> Value {
        let path = self.path(rel);
        let bytes = fs::read(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}\n{}", path.display(), self.listing()));
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
    }

    /// Every path under the home with its kind, mode and size, sorted, one per
    /// line: what a failing test prints, and a snapshot to compare.
    pub fn listing(&self) -> String {
        let home = self.home();
        let mut rows = Vec::new();
        walk(&home, &home, &mut rows);
        rows.sort();
        if rows.is_empty() {
            return format!("RELAY_HOME {} (empty or missing)", home.display());
        }
        format!("RELAY_HOME {}:\n{}", home.display(), rows.join("\n"))
    }

    /// Paths (relative to the home) of every entry under `mailboxes/`.
    pub fn mailbox_tree(&self) -> Vec<String> {
        let root = self.home();
        let mut rows = Vec::new();
        walk(&root, &root.join("mailboxes"), &mut rows);
        let mut paths: Vec<String> = rows
            .into_iter()
            .map(|r| r.split_whitespace().next().unwrap_or_default().to_string())
            .collect();
        paths.sort();
        paths
    }

    /// One invocation of relay in this world.
    pub fn cmd<I, S>(&self, args: I) -> Cmd<'_>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Cmd {
            relay: self,
            args: args.into_iter().map(|a| a.as_ref().to_owned()).collect(),
            env: Vec::new(),
            stdin: None,
            umask: None,
            data_limit_kib: None,
            no_dac_override: false,
        }
    }

    /// Clears `c`'s environment down to what every relay run here gets:
    /// PATH, a private HOME and XDG_CONFIG_HOME, this world's RELAY_HOME,
    /// no colour, no backtraces.
    pub fn clean_env<'c>(&self, c: &'c mut Command) -> &'c mut Command {
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.user_home())
            .env("XDG_CONFIG_HOME", self.user_home().join(".config"))
            .env("RELAY_HOME", self.home())
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "0")
    }

    /// `relay endpoints add EP...`, asserting success.
    #[track_caller]
    pub fn add(&self, endpoints: &[&str]) {
        let mut args = vec!["endpoints", "add"];
        args.extend_from_slice(endpoints);
        self.cmd(args).success();
    }

    /// `relay send SUBJECT PAYLOAD`, asserting success; returns the id.
    #[track_caller]
    pub fn send(&self, subject: &str, payload: &str) -> String {
        self.cmd(["send", subject, payload]).success().id()
    }
}

impl Relay {
    /// Every recorded event (`status --json`), oldest first, read with the
    /// clock pinned at `now_ms`.
    #[track_caller]
    pub fn events(&self, now_ms: u64) -> Vec<Value> {
        let out = self
            .cmd(["status", "--json", "--events", "100000"])
            .at(now_ms)
            .success();
        let mut events = match out.json().get("events") {
            Some(Value::Array(events)) => events.clone(),
            _ => out.fail("status --json has no events array"),
        };
        events.reverse();
        events
    }

    /// The events of `kind` (see [`Relay::events`]), oldest first.
    #[track_caller]
    pub fn events_of(&self, now_ms: u64, kind: &str) -> Vec<Value> {
        self.events(now_ms)
            .into_iter()
            .filter(|e| e["kind"] == kind)
            .collect()
    }
}

/// A command being built; nothing runs until `run`, `success`, `code` or
/// `spawn`.
#[must_use]
pub struct Cmd<'a> {
    relay: &'a Relay,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    stdin: Option<Vec<u8>>,
    umask: Option<u32>,
    /// `ulimit -d` (KiB): a bound on the heap relay may allocate.
    data_limit_kib: Option<u64>,
    no_dac_override: bool,
}

impl<'a> Cmd<'a> {
    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable on top of the clean base environment
    /// (may override `RELAY_HOME`).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Removes a variable of the base environment (e.g. `RELAY_HOME`).
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// Feeds `bytes` on stdin (default: stdin is `/dev/null`).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Pins relay's clock: `RELAY_FAKE_NOW_MS=ms` (ms since the epoch).
    pub fn at(self, ms: u64) -> Self {
        self.env("RELAY_FAKE_NOW_MS", ms.to_string())
    }

    /// Runs relay under this umask (through `sh -c 'umask ..; exec relay'`).
    pub fn umask(mut self, mask: u32) -> Self {
        self.umask = Some(mask);
        self
    }

    /// Runs relay with its data segment (heap and private mappings) capped
    /// at `kib` KiB (through `sh -c 'ulimit -d ..; exec relay'`): an
    /// allocation past it aborts relay.
    pub fn data_limit_kib(mut self, kib: u64) -> Self {
        self.data_limit_kib = Some(kib);
        self
    }

    /// Runs relay without the capabilities that let root ignore permission
    /// bits (through util-linux's `setpriv`), so a chmod stops it as it
    /// stops any other user. Not combined with `umask`.
    pub fn without_dac_override(mut self) -> Self {
        self.no_dac_override = true;
        self
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(m) = self.umask {
            let _ = write!(s, "(umask {m:03o}) ");
        }
        if let Some(k) = self.data_limit_kib {
            let _ = write!(s, "(ulimit -d {k}) ");
        }
        for (k, v) in &self.env {
            match v {
                Some(v) => write!(s, "{}={} ", k.to_string_lossy(), v.to_string_lossy()),
                None => write!(s, "-u {} ", k.to_string_lossy()),
            }
            .unwrap_or_default();
        }
        s.push_str("relay");
        for a in &self.args {
            let _ = write!(s, " {:?}", a.to_string_lossy());
        }
        if let Some(b) = &self.stdin {
            let _ = write!(s, " <stdin: {} bytes>", b.len());
        }
        s
    }

    fn command(&self) -> Command {
        let mut shell = Vec::new();
        if let Some(m) = self.umask {
            shell.push(format!("umask {m:03o}"));
        }
        if let Some(k) = self.data_limit_kib {
            shell.push(format!("ulimit -d {k}"));
        }
        let mut c = if !shell.is_empty() {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("{} && exec \"$0\" \"$@\"", shell.join(" && ")))
                .arg(BIN);
            c
        } else if self.no_dac_override {
            let mut c = Command::new("setpriv");
            c.args([
                "--bounding-set=-dac_override,-dac_read_search,-fowner",
                "--",
                BIN,
            ]);
            c
        } else {
            Command::new(BIN)
        };
        self.relay.clean_env(c.args(&self.args));
        for (k, v) in &self.env {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        c
    }

    /// Starts the process and returns at once (for concurrency tests).
    pub fn spawn(self) -> Running<'a> {
        let command = self.describe();
        let mut child = self
            .command()
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command}: {e}"));
        let feeder = match (self.stdin, child.stdin.take()) {
            // A write error means relay stopped reading (e.g. the payload
            // was too big): what it did is judged by its exit status.
            (Some(bytes), Some(mut pipe)) => Some(thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            })),
            _ => None,
        };
        Running {
            relay: self.relay,
            command,
            started: Instant::now(),
            child,
            feeder,
        }
    }

    /// Runs to completion and returns what happened, asserting nothing.
    pub fn run(self) -> Output<'a> {
        self.spawn().wait()
    }

    /// Runs and asserts exit status 0.
    #[track_caller]
    pub fn success(self) -> Output<'a> {
        self.run().success()
    }

    /// Runs and asserts exit status `code`.
    #[track_caller]
    pub fn code(self, code: i32) -> Output<'a> {
        self.run().code(code)
    }
}

/// A started relay process.
pub struct Running<'a> {
    relay: &'a Relay,
    command: String,
    started: Instant,
    child: Child,
    feeder: Option<JoinHandle<()>>,
}

impl<'a> Running<'a> {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// When the process was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Waits for the process (killing it after a generous watchdog timeout,
    /// so a hung relay fails the test instead of hanging it).
    pub fn wait(mut self) -> Output<'a> {
        let (stop, stopped) = mpsc::channel::<()>();
        let pid = self.child.id();
        let watchdog = thread::spawn(move || {
            if stopped.recv_timeout(WATCHDOG) == Err(mpsc::RecvTimeoutError::Timeout) {
                // Only this child, by its id.
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        });
        let stdout = drain(self.child.stdout.take());
        let stderr = drain(self.child.stderr.take());
        let status = self.child.wait();
        let _ = stop.send(());
        let _ = watchdog.join();
        if let Some(f) = self.feeder.take() {
            let _ = f.join();
        }
        let status = status.unwrap_or_else(|e| panic!("cannot wait for {}: {e}", self.command));
        let elapsed = self.started.elapsed();
        let code = status.code().unwrap_or(-1);
        let mut out = Output {
            relay: self.relay,
            command: self.command,
            code,
            stdout: join_text(stdout),
            stderr: join_text(stderr),
            elapsed,
        };
        if status.code().is_none() {
            out.stderr
                .push_str(&format!("\n<harness: killed by a signal: {status}>"));
        }
        out
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

fn join_text(h: JoinHandle<Vec<u8>>) -> String {
    String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned()
}

/// What one relay invocation did.
pub struct Output<'a> {
    relay: &'a Relay,
    command: String,
    /// Exit status (-1 if killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
}

impl Output<'_> {
    /// Fails the test with `msg` and everything needed to debug it.
    #[track_caller]
    pub fn fail(&self, msg: &str) -> ! {
        panic!(
            "{msg}\n--- command: {}\n--- status: {} (after {:?})\n--- stdout:\n{}\n--- stderr:\n{}\n--- {}\n",
            self.command,
            self.code,
            self.elapsed,
            self.stdout,
            self.stderr,
            self.relay.listing()
        )
    }

    /// Asserts exit status 0.
    #[track_caller]
    pub fn success(self) -> Self {
        self.code(0)
    }

    /// Asserts exit status `code`.
    #[track_caller]
    pub fn code(self, code: i32) -> Self {
        if self.code != code {
            self.fail(&format!("expected exit status {code}, got {}", self.code));
        }
        self
    }

    /// Asserts stdout is exactly `expected`.
    #[track_caller]
    pub fn stdout_is(self, expected: &str) -> Self {
        if self.stdout != expected {
            self.fail(&format!("stdout differs; expected:\n{expected}"));
        }
        self
    }

    /// Asserts stdout contains `needle`.
    #[track_caller]
    pub fn stdout_contains(self, needle: &str) -> Self {
        if !self.stdout.contains(needle) {
            self.fail(&format!("stdout lacks {needle:?}"));
        }
        self
    }

    /// Asserts stderr contains every one of `needles`.
    #[track_caller]
    pub fn stderr_has(self, needles: &[&str]) -> Self {
        for n in needles {
            if !self.stderr.contains(n) {
                self.fail(&format!("stderr lacks {n:?}"));
            }
        }
        self
    }

    /// Asserts stderr is empty (no warnings, no noise).
    #[track_caller]
    pub fn stderr_empty(self) -> Self {
        if !self.stderr.is_empty() {
            self.fail("stderr is not empty");
        }
        self
    }

    /// The message id `send` printed (stdout, trimmed), which must be a ULID.
    #[track_caller]
    pub fn id(&self) -> String {
        let id = self.stdout.trim().to_string();
        if !is_ulid(&id) {
            self.fail(&format!("printed {id:?}, not a message id (ULID)"));
        }
        id
    }

    /// stdout parsed as one JSON value.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| self.fail(&format!("stdout is not one JSON value: {e}")))
    }

    /// stderr parsed as one JSON value (a `--json` error report).
    #[track_caller]
    pub fn stderr_json(&self) -> Value {
        serde_json::from_str(self.stderr.trim())
            .unwrap_or_else(|e| self.fail(&format!("stderr is not one JSON value: {e}")))
    }

    /// stdout parsed as NDJSON (one value per line).
    #[track_caller]
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| self.fail(&format!("line {l:?} is not JSON: {e}")))
            })
            .collect()
    }
}

/// Whether `s` looks like a ULID: 26 characters of Crockford base32.
pub fn is_ulid(s: &str) -> bool {
    s.len() == 26
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b.is_ascii_uppercase() && !b"ILOU".contains(&b)))
}

/// A DorkOS-shaped envelope for `id` on `subject`, as another program writes
/// it: pretty JSON, no trailing newline, no fields of ours.
pub fn dorkos_envelope(id: &str, subject: &str, payload: &Value) -> Value {
    serde_json::json!({
        "id": id,
        "subject": subject,
        "from": "agent:legacy",
        "budget": {
            "hopCount": 1,
            "maxHops": 5,
            "ancestorChain": [subject],
            "ttl": 4_102_444_800_000_u64,
            "callBudgetRemaining": 9
        },
        "createdAt": "2026-01-01T00:00:00.000Z",
        "payload": payload,
    })
}

/// Where temp dirs go: `RELAY_TEST_TMPDIR` if set, else `/dev/shm` when
/// usable (fsync is free on tmpfs, which keeps the suite fast), else the
/// system temp dir.
fn scratch_parent() -> Option<&'static Path> {
    static PARENT: OnceLock<Option<PathBuf>> = OnceLock::new();
    PARENT
        .get_or_init(|| {
            if let Some(dir) = std::env::var_os("RELAY_TEST_TMPDIR") {
                return Some(PathBuf::from(dir));
            }
            let shm = Path::new("/dev/shm");
            let usable = tempfile::Builder::new()
                .prefix("relay-probe-")
                .tempdir_in(shm)
                .is_ok();
            usable.then(|| shm.to_path_buf())
        })
        .as_deref()
}

fn mkdir_private(dir: &Path) {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
}

fn walk(root: &Path, dir: &Path, rows: &mut Vec<String>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for entry in rd.flatten() {
        let path = entry.path();
        let Ok(md) = fs::symlink_metadata(&path) else {
            continue;
        };
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        let kind = if md.file_type().is_symlink() {
            "link"
        } else if md.is_dir() {
            "dir"
        } else {
            "file"
        };
        rows.push(format!(
            "  {rel}  {kind} {:04o} {}",
            md.mode() & 0o7777,
            md.len()
        ));
        if md.is_dir() {
            walk(root, &path, rows);
        }
    }
}

/// Whether this run is CI (`CI` set to anything but empty, `0` or `false`,
/// as `.ci/run` sets it): there a missing tool fails its test, never skips it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// `tool` as found on `PATH`, if it is there.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// The one way a test skips: visibly on stderr (`SKIPPED <test>: <why>`),
/// and under CI ([`in_ci`]) not at all: the test fails with `why`. Call it
/// and `return`.
#[track_caller]
pub fn skip(test: &str, why: &str) {
    skip_or_fail(in_ci(), test, why);
}

/// [`skip`] with CI given: panics if `ci`, else prints the skip.
#[track_caller]
pub fn skip_or_fail(ci: bool, test: &str, why: &str) {
    assert!(
        !ci,
        "{test} cannot run: {why}; under CI=1 no test is skipped (.ci/run installs what the tests need)"
    );
    eprintln!("SKIPPED {test}: {why} (under CI=1 this fails)");
}
