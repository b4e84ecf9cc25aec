//! Every `RELAY_*` environment variable, in one registry: its name, what it
//! means and its default. relay reads its variables through these entries,
//! and the man pages' ENVIRONMENT section and the README's table are
//! generated from [`ALL`] (a test fails when either drifts, or when a
//! `RELAY_*` name appears in `src/` without an entry here).

use std::ffi::OsString;

/// Who sets a variable, and who reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Set by you; relay reads it.
    User,
    /// Set by `recv --follow --exec` for each handler (about its message).
    Handler,
    /// Set by the test suite to inject time, restarts or small limits;
    /// not for production.
    Testing,
    /// Read by the test suite or the benchmarks, never by relay.
    Suite,
}

/// One environment variable.
#[derive(Debug)]
pub struct Var {
    pub name: &'static str,
    pub scope: Scope,
    /// What it means, one sentence or two.
    pub meaning: &'static str,
    /// What holds when it is unset (or "-" when nothing does).
    pub default: &'static str,
}

impl Var {
    /// The value, if set and UTF-8.
    #[must_use]
    pub fn get(&self) -> Option<String> {
        std::env::var(self.name).ok()
    }

    /// The raw value, if set.
    #[must_use]
    pub fn get_os(&self) -> Option<OsString> {
        std::env::var_os(self.name)
    }
}

pub const HOME: Var = Var {
    name: "RELAY_HOME",
    scope: Scope::User,
    meaning: "The relay home (mailboxes, index, config.json); --home overrides it. A handler gets its consumer's home.",
    default: "~/.dork/relay",
};
pub const FROM: Var = Var {
    name: "RELAY_FROM",
    scope: Scope::User,
    meaning: "The sender of `send` and `request` when --from is not given. A handler gets its endpoint, so its sends speak for it.",
    default: "cli",
};
pub const TRACE_ID: Var = Var {
    name: "RELAY_TRACE_ID",
    scope: Scope::User,
    meaning: "The trace a `send` or `request` joins when --trace-id is not given (also written as DorkOS's dispatchId). A handler gets its message's trace.",
    default: "the message's own id",
};
pub const BUDGET: Var = Var {
    name: "RELAY_BUDGET",
    scope: Scope::User,
    meaning: "A budget object (JSON) a `send` continues: the hops, ancestors and call budget already spent. A handler gets its message's budget.",
    default: "a fresh budget",
};
pub const LOCK_TIMEOUT_MS: Var = Var {
    name: "RELAY_LOCK_TIMEOUT_MS",
    scope: Scope::User,
    meaning: "How long a command waits for a lock another process holds, in milliseconds, before it exits 75; overrides locks.timeoutMs.",
    default: "locks.timeoutMs (10000)",
};
pub const SERVE_TOKEN: Var = Var {
    name: "RELAY_SERVE_TOKEN",
    scope: Scope::User,
    meaning: "The bearer token `relay serve` requires (of writes; of every request with --allow-remote, which needs it).",
    default: "no token: loopback Host names only",
};
pub const NATS_URL: Var = Var {
    name: "RELAY_NATS_URL",
    scope: Scope::User,
    meaning: "The NATS server URL(s) of `relay bridge` when --nats is not given.",
    default: "bridge.url, else nats://127.0.0.1:4222",
};
pub const ENDPOINT: Var = Var {
    name: "RELAY_ENDPOINT",
    scope: Scope::Handler,
    meaning: "The endpoint the message was claimed from.",
    default: "-",
};
pub const MESSAGE_ID: Var = Var {
    name: "RELAY_MESSAGE_ID",
    scope: Scope::Handler,
    meaning: "The message's id.",
    default: "-",
};
pub const SUBJECT: Var = Var {
    name: "RELAY_SUBJECT",
    scope: Scope::Handler,
    meaning: "The subject it was sent to.",
    default: "-",
};
pub const SENDER: Var = Var {
    name: "RELAY_SENDER",
    scope: Scope::Handler,
    meaning: "Its sender (the envelope's from).",
    default: "-",
};
pub const REPLY_TO: Var = Var {
    name: "RELAY_REPLY_TO",
    scope: Scope::Handler,
    meaning: "Where a reply goes (the envelope's replyTo); unset when it has none.",
    default: "unset",
};
pub const PRIORITY: Var = Var {
    name: "RELAY_PRIORITY",
    scope: Scope::Handler,
    meaning: "Its priority lane (critical, high, normal, low, background).",
    default: "-",
};
pub const DELIVERY_COUNT: Var = Var {
    name: "RELAY_DELIVERY_COUNT",
    scope: Scope::Handler,
    meaning: "How many claims of it ran out before this one (0 on a first delivery).",
    default: "-",
};
pub const FAKE_NOW_MS: Var = Var {
    name: "RELAY_FAKE_NOW_MS",
    scope: Scope::Testing,
    meaning: "Pins relay's clock (milliseconds since the epoch).",
    default: "the system clock",
};
pub const FAKE_BOOT_ID: Var = Var {
    name: "RELAY_FAKE_BOOT_ID",
    scope: Scope::Testing,
    meaning: "Stands for the boot id, so a test restarts the machine by changing it (empty: unknown).",
    default: "/proc/sys/kernel/random/boot_id",
};
pub const BATCH_LOG_MAX_BYTES: Var = Var {
    name: "RELAY_BATCH_LOG_MAX_BYTES",
    scope: Scope::Testing,
    meaning: "Lowers the size past which a running batch retires its log and begins another.",
    default: "67108864 (64 MiB)",
};
pub const BRIDGE_IDLE_MS: Var = Var {
    name: "RELAY_BRIDGE_IDLE_MS",
    scope: Scope::Testing,
    meaning: "How long the bridge's publisher waits for a filesystem notification before it looks at the outbox anyway (a test makes it long, so only notifications wake it).",
    default: "250",
};
pub const MCP_IDLE_SWEEP_MS: Var = Var {
    name: "RELAY_MCP_IDLE_SWEEP_MS",
    scope: Scope::Testing,
    meaning: "How often an MCP server without calls (`relay mcp`, `relay serve`'s /mcp) sweeps its idle relay_send_async inboxes, in milliseconds (a test makes it short).",
    default: "300000 (5 min)",
};
pub const BLESS: Var = Var {
    name: "RELAY_BLESS",
    scope: Scope::Suite,
    meaning: "1: the generated-files test rewrites man/, completions/ and the README's generated tables instead of failing.",
    default: "check only",
};
pub const CRASH_KILLS: Var = Var {
    name: "RELAY_CRASH_KILLS",
    scope: Scope::Suite,
    meaning: "How many kill -9 the crash harness aims for (the long mode).",
    default: "a short run",
};
pub const CRASH_ROUNDS: Var = Var {
    name: "RELAY_CRASH_ROUNDS",
    scope: Scope::Suite,
    meaning: "Rounds of the crash harness.",
    default: "a short run",
};
pub const CRASH_SEED: Var = Var {
    name: "RELAY_CRASH_SEED",
    scope: Scope::Suite,
    meaning: "Replays a crash-harness run (its seed is printed at the start).",
    default: "random",
};
pub const TEST_TMPDIR: Var = Var {
    name: "RELAY_TEST_TMPDIR",
    scope: Scope::Suite,
    meaning: "Where the tests put their temporary homes.",
    default: "/dev/shm if usable, else the system temp dir",
};
pub const BENCH_DIR: Var = Var {
    name: "RELAY_BENCH_DIR",
    scope: Scope::Suite,
    meaning: "Where the benchmarks put their scratch directories.",
    default: "the system temp dir",
};

/// Every variable, users' first, then handlers', then the test hooks.
pub static ALL: &[&Var] = &[
    &HOME,
    &FROM,
    &TRACE_ID,
    &BUDGET,
    &LOCK_TIMEOUT_MS,
    &SERVE_TOKEN,
    &NATS_URL,
    &ENDPOINT,
    &MESSAGE_ID,
    &SUBJECT,
    &SENDER,
    &REPLY_TO,
    &PRIORITY,
    &DELIVERY_COUNT,
    &FAKE_NOW_MS,
    &FAKE_BOOT_ID,
    &BATCH_LOG_MAX_BYTES,
    &BRIDGE_IDLE_MS,
    &MCP_IDLE_SWEEP_MS,
    &BLESS,
    &CRASH_KILLS,
    &CRASH_ROUNDS,
    &CRASH_SEED,
    &TEST_TMPDIR,
    &BENCH_DIR,
];

/// The README's table of every variable (Markdown), as generated.
#[must_use]
pub fn markdown_table() -> String {
    let mut out = String::from("| variable | set by | meaning | default |\n|---|---|---|---|\n");
    for v in ALL {
        let who = match v.scope {
            Scope::User => "you",
            Scope::Handler => "`recv --exec`, for its handler",
            Scope::Testing => "tests (relay reads it)",
            Scope::Suite => "you, for the test suite or benchmarks",
        };
        out.push_str(&format!(
            "| `{}` | {who} | {} | {} |\n",
            v.name,
            v.meaning.replace('|', "\\|"),
            v.default
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_relay_prefixed() {
        let mut names: Vec<&str> = ALL.iter().map(|v| v.name).collect();
        assert!(names.iter().all(|n| n.starts_with("RELAY_")));
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "a variable is listed twice");
    }
}
