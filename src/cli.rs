//! The command-line surface: clap derive types only, no I/O.
//!
//! Conventions: value names in caps; short flags only for the few options
//! typed by hand often (`-f` file, `-n` count, `-w` wait); every option has a
//! `///` doc that is its help text. `--json` is global so it may follow any
//! subcommand. Every DURATION option takes `allow_hyphen_values`, so that
//! `--ttl -5s` reaches relay's own parser (which names the value) instead of
//! clap's "unexpected argument".

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::clock::{parse_duration, parse_positive_duration};
use crate::pressure::Priority;

/// Reliable local messaging for agents, scripts and hooks.
///
/// Messages live in Maildir mailboxes under the relay home (DorkOS-compatible);
/// an SQLite index beside them keeps status and timestamps.
///
/// A DURATION is a number with a unit (ms, s, m, h, d), parts combined as in
/// 1h30m; a bare number is seconds. With --json anywhere on the command
/// line, every error (usage errors too) is one JSON object on stderr.
#[derive(Debug, Parser)]
#[command(name = "relay", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub globals: Globals,

    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Args)]
pub struct Globals {
    /// Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// Print machine-readable JSON (NDJSON for streams) instead of text
    #[arg(long, global = true)]
    pub json: bool,
}

impl Cli {
    /// Parses the commands a script runs per message (`send`, `recv`,
    /// `ack`, `nack`) with a command tree of that subcommand alone, and
    /// `relay --version` with no subcommand at all: building all of clap's
    /// tree costs most of a short command's CPU time. `None` for anything
    /// else, or any other outcome (help, a usage error): the full parser
    /// then does the talking, so output is identical either way.
    pub fn parse_hot(args: &[std::ffi::OsString]) -> Option<Result<Cli, clap::Error>> {
        let mut rest = args.iter().skip(1);
        let first = loop {
            match rest.next()?.to_str()? {
                "--json" => {}
                "--home" => {
                    rest.next()?;
                }
                a if a.starts_with("--home=") => {}
                a => break a,
            }
        };
        let root = || Globals::augment_args(clap::Command::new("relay"));
        let cli = match first {
            "send" => one(args, root(), "send", Command::Send),
            "recv" => one(args, root(), "recv", Command::Recv),
            "ack" => one(args, root(), "ack", Command::Ack),
            "nack" => one(args, root(), "nack", Command::Nack),
            "--version" | "-V" if rest.next().is_none() => {
                let e = root()
                    .version(env!("CARGO_PKG_VERSION"))
                    .try_get_matches_from(args)
                    .err()?;
                return (e.kind() == clap::error::ErrorKind::DisplayVersion).then_some(Err(e));
            }
            _ => None,
        };
        cli.map(Ok)
    }
}

/// `args` parsed against `root` with the one subcommand `name` (arguments
/// `A`, wrapped by `wrap`); `None` on any error.
fn one<A: Args + clap::FromArgMatches>(
    args: &[std::ffi::OsString],
    root: clap::Command,
    name: &'static str,
    wrap: fn(A) -> Command,
) -> Option<Cli> {
    use clap::FromArgMatches;
    let m = root
        .subcommand(A::augment_args(clap::Command::new(name)))
        .try_get_matches_from(args)
        .ok()?;
    let globals = Globals::from_arg_matches(&m).ok()?;
    let sub = A::from_arg_matches(m.subcommand_matches(name)?).ok()?;
    Some(Cli {
        globals,
        command: wrap(sub),
    })
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send a message to every endpoint matching SUBJECT; prints its id
    Send(SendArgs),
    /// Claim the oldest message(s) of an endpoint (new/ -> cur/) and print them
    Recv(RecvArgs),
    /// List an endpoint's messages without claiming them (pending, claimed, failed)
    Peek(PeekArgs),
    /// Send a message and wait for its reply (on a private reply endpoint); prints the reply
    Request(RequestArgs),
    /// Acknowledge claimed messages: done, removed from cur/
    Ack(AckArgs),
    /// Reject claimed messages: dead-lettered to failed/ with a reason
    Nack(NackArgs),
    /// List, add or remove endpoints (mailboxes)
    Endpoints(EndpointsArgs),
    /// One screen: endpoints and pressure, open breakers, limited senders, recent events
    Status(StatusArgs),
    /// Circuit breakers per (sender, endpoint) pair: list, reset, open
    Breakers(BreakersArgs),
    /// Per-sender rate limits: list, reset
    Limits(LimitsArgs),
    /// Show, read, change or check config.json
    Config(ConfigArgs),
    /// Every span of a message's trace: endpoint, status, sent/delivered/processed times
    Trace(TraceArgs),
    /// Delivery metrics: counts, latency percentiles, rejections, per endpoint
    Metrics(MetricsArgs),
    /// Dead letters: list, show, requeue, purge
    Dlq(DlqArgs),
    /// The event log (everything the bus decided); --follow streams it
    Events(EventsArgs),
    /// Expire messages past their TTL, delete stale tmp/ files, prune old index rows, events and idle limits
    Gc(GcArgs),
    /// Serve the read-only HTTP API, the live panel and Prometheus metrics
    Serve(ServeArgs),
    /// MCP server on stdin/stdout: relay's tools for an agent, sending as SENDER
    Mcp(McpArgs),
    /// Check the store against the Maildir; --repair makes the index agree with it
    Doctor(DoctorArgs),
    /// Join this home to others through NATS JetStream (runs until SIGTERM)
    Bridge(BridgeArgs),
    /// Print the shell completion script for SHELL
    Completions {
        /// bash, zsh, fish, elvish or powershell
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the man page, or write all pages (relay.1 and one per subcommand) into DIR
    Man {
        /// Directory to write relay.1 and relay-SUBCOMMAND.1 into
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// Arguments of `relay doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Fix what can be fixed: rebuild index rows from the Maildir, move a
    /// damaged relay.db aside, quarantine unreadable files, delete stale tmp/
    /// files, remove world-write permission. Never deletes a message
    #[arg(long)]
    pub repair: bool,
}

/// Arguments of `relay serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:4242")]
    pub listen: std::net::SocketAddr,

    /// Serve other hosts: allow a non-loopback address and any Host name
    /// (no DNS-rebinding check); requires RELAY_SERVE_TOKEN, which every
    /// request must then present (Authorization: Bearer TOKEN, or ?token=)
    #[arg(long)]
    pub allow_remote: bool,
}

/// Arguments of `relay bridge`.
#[derive(Debug, Args)]
pub struct BridgeArgs {
    /// NATS server URL (comma-separated for a cluster) [default: config
    /// bridge.url, then nats://127.0.0.1:4222]
    #[arg(long, value_name = "URL", env = "RELAY_NATS_URL")]
    pub nats: Option<String>,

    /// This host's name in the directory (letters, digits, '-', '_')
    /// [default: config bridge.host]
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,

    /// Replicas of the stream and the directory bucket (3 on a three-node
    /// cluster) [default: config bridge.replicas, then 1]
    #[arg(long, value_name = "N")]
    pub replicas: Option<usize>,
}

/// Arguments of `relay trace`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// A message id (or a trace id)
    #[arg(value_name = "ID")]
    pub id: String,
}

/// Arguments of `relay metrics`.
#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Only messages sent within this window, e.g. 1h, 7d [default: all history]
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true,
          value_parser = parse_duration)]
    pub since: Option<Duration>,
}

/// Arguments of `relay dlq`.
#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub action: Option<DlqAction>,

    /// Only dead letters of this endpoint (or dead-letter directory)
    #[arg(long, global = true, value_name = "ENDPOINT")]
    pub endpoint: Option<String>,
}

/// What `relay dlq` does; listing is the default.
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// List dead letters: id, endpoint, code, reason, when
    List,
    /// Show a dead letter's envelope and reason
    Show {
        /// Message id
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Put dead letters back into new/ (ids and trace kept)
    Requeue {
        /// Message ids
        #[arg(value_name = "ID", required_unless_present = "all")]
        ids: Vec<String>,
        /// Requeue every dead letter (of --endpoint, if given)
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Delete dead letters older than a given age
    Purge {
        /// Age, e.g. 7d, 12h
        #[arg(long, value_name = "DURATION", allow_hyphen_values = true,
          value_parser = parse_duration)]
        older_than: Duration,
        /// Do not ask for confirmation
        #[arg(long, short)]
        yes: bool,
    },
}

/// Arguments of `relay events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep printing new events as they happen (NDJSON with --json)
    #[arg(short, long)]
    pub follow: bool,

    /// Only events within this window, e.g. 10m [default: the last 50]
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true,
          value_parser = parse_duration)]
    pub since: Option<Duration>,

    /// Only events of this kind (repeatable), e.g. breaker_opened
    #[arg(long, value_name = "KIND")]
    pub kind: Vec<String>,
}

/// Arguments of `relay gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Report what would be done, change nothing
    #[arg(long)]
    pub dry_run: bool,
}

/// Arguments of `relay status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// How many recent events to show
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub events: u32,
}

/// Arguments of `relay breakers`.
#[derive(Debug, Args)]
pub struct BreakersArgs {
    #[command(subcommand)]
    pub action: Option<BreakersAction>,
}

/// What `relay breakers` does; listing is the default.
#[derive(Debug, Subcommand)]
pub enum BreakersAction {
    /// List every breaker that has state
    List,
    /// Close breakers and clear their counters
    Reset {
        /// Sender of the pair
        #[arg(value_name = "SENDER", required_unless_present = "all")]
        sender: Option<String>,
        /// Endpoint of the pair (all of the sender's endpoints if omitted)
        #[arg(value_name = "ENDPOINT")]
        endpoint: Option<String>,
        /// Reset every breaker
        #[arg(long, conflicts_with_all = ["sender", "endpoint"])]
        all: bool,
    },
    /// Open a breaker by hand (maintenance): sends on the pair are refused
    Open {
        /// Sender of the pair
        #[arg(value_name = "SENDER")]
        sender: String,
        /// Endpoint of the pair
        #[arg(value_name = "ENDPOINT")]
        endpoint: String,
        /// How long before it half-opens [default: the configured cooldown]
        #[arg(long = "for", value_name = "DURATION", allow_hyphen_values = true,
          value_parser = parse_duration)]
        duration: Option<Duration>,
    },
}

/// Arguments of `relay limits`.
#[derive(Debug, Args)]
pub struct LimitsArgs {
    #[command(subcommand)]
    pub action: Option<LimitsAction>,
}

/// What `relay limits` does; listing is the default.
#[derive(Debug, Subcommand)]
pub enum LimitsAction {
    /// List every sender with a rate-limit bucket
    List,
    /// Refill senders' buckets (forget their state and hit counts)
    Reset {
        /// Sender to reset
        #[arg(value_name = "SENDER", required_unless_present = "all")]
        sender: Option<String>,
        /// Reset every sender
        #[arg(long, conflicts_with = "sender")]
        all: bool,
    },
}

/// Arguments of `relay config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub action: Option<ConfigAction>,
}

/// What `relay config` does; `show` is the default.
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Every setting with its effective value and where it came from
    Show,
    /// Print one setting's effective value (JSON)
    Get {
        /// Dotted key, e.g. reliability.rateLimit.maxPerWindow
        #[arg(value_name = "KEY")]
        key: String,
    },
    /// Change one setting in config.json (validated, written atomically)
    Set {
        /// Dotted key, e.g. reliability.rateLimit.maxPerWindow
        #[arg(value_name = "KEY")]
        key: String,
        /// New value as JSON: 20, true, 0.5, {"ci.": 500}
        #[arg(value_name = "VALUE", allow_hyphen_values = true)]
        value: String,
    },
    /// Check a config file (the home's by default): a bad value fails, an unknown key warns
    ///
    /// An invalid value or malformed JSON exits 78 naming the file and the
    /// key. An unknown key is a warning and the file is still valid (exit 0),
    /// as DorkOS ignores unknown keys. Without FILE, the home's
    /// access-rules.json is checked too; a FILE named access-rules.json is
    /// checked as access rules.
    Validate {
        /// File to check
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Print the path of config.json
    Path,
}

/// Arguments of `relay send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Subject or pattern to send to (`*` matches one token, `>` the rest)
    #[arg(value_name = "SUBJECT", required_unless_present = "batch")]
    pub subject: Option<String>,

    /// Payload (JSON is stored as JSON, anything else as a string); read from
    /// stdin when neither this nor --file is given
    #[arg(value_name = "PAYLOAD", conflicts_with = "file")]
    pub payload: Option<String>,

    /// Read the payload from a file
    #[arg(short, long, value_name = "PATH")]
    pub file: Option<PathBuf>,

    /// Store the payload as a JSON string even if it parses as JSON
    #[arg(long)]
    pub text: bool,

    /// The payload must be JSON: anything else is refused (exit 65) instead
    /// of being stored as a string
    #[arg(long, conflicts_with = "text")]
    pub json_payload: bool,

    /// Sender subject (used by rate limits, breakers and access rules)
    #[arg(long, value_name = "SENDER", env = "RELAY_FROM", default_value = "cli")]
    pub from: String,

    /// Subject replies (and failure notices) should go to
    #[arg(long, value_name = "SUBJECT")]
    pub reply_to: Option<String>,

    /// Time to live, e.g. 30s, 5m, 1h30m (a bare number is seconds); the
    /// message expires after it [default: 1h, or the parent's]
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true,
          value_parser = parse_positive_duration)]
    pub ttl: Option<Duration>,

    /// Maximum number of hops before the message is dead-lettered [default: 5, or the parent's]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_hops: Option<u32>,

    /// Continue from a received message (an envelope file as printed by
    /// `recv --json`): keep its trace and its spent budget (hops, chain, TTL,
    /// call budget). $RELAY_BUDGET (budget JSON) does the same for the budget
    #[arg(long, value_name = "FILE")]
    pub parent: Option<PathBuf>,

    /// Deliver at most once per key and sender within idempotency.windowSecs;
    /// a repeat prints the original id and delivers nothing
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,

    /// Send many: one JSON request per stdin line ({"subject", "payload",
    /// "from"?, "replyTo"?, "ttl"?, "maxHops"?, "traceId"?, "priority"?,
    /// "idempotencyKey"?}; options here are the defaults), same checks per
    /// message, one group commit per chunk; prints one stdout line per input
    /// line, in order: the id, or `error CODE: MESSAGE` (with --json the
    /// report, or {"line", "error"})
    #[arg(long, conflicts_with_all = ["subject", "payload", "file", "text", "json_payload", "parent", "idempotency_key", "reply_to", "trace_id"])]
    pub batch: bool,

    /// On a temporary refusal (exit 75: rate limit, backpressure, open
    /// breaker, lock timeout), try again up to N more times, each after the
    /// refusal's retry-after plus 0-10% jitter (1s when it gives none), at
    /// most --retry-max-wait; each retry is reported on stderr (not with
    /// --batch, which reports each refused line)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retry: u32,

    /// The cap on each --retry wait
    #[arg(long, value_name = "DURATION", default_value = "1m", requires = "retry",
          allow_hyphen_values = true, value_parser = parse_duration)]
    pub retry_max_wait: Duration,

    /// Skip fsync (UNSAFE: a power loss or kernel crash can lose messages
    /// whose send reported success; a killed process cannot)
    #[arg(long)]
    pub no_fsync: bool,

    /// Trace id to join [default: $RELAY_TRACE_ID, else the message id]
    #[arg(long, value_name = "ID", env = "RELAY_TRACE_ID")]
    pub trace_id: Option<String>,

    /// Priority lane: recv hands out higher first; under backpressure low
    /// lanes are shed first and high ones may use reserved headroom
    #[arg(long, value_name = "LANE", value_enum, default_value_t = Priority::Normal)]
    pub priority: Priority,
}

/// Arguments of `relay recv`.
#[derive(Debug, Args)]
pub struct RecvArgs {
    /// Endpoint to receive from
    #[arg(value_name = "ENDPOINT")]
    pub endpoint: String,

    /// Claim up to N messages (printed one per line; NDJSON with --json)
    #[arg(short = 'n', long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,

    /// Block up to DURATION for a message when the mailbox is empty
    #[arg(short, long, value_name = "DURATION", allow_hyphen_values = true,
          value_parser = parse_duration)]
    pub wait: Option<Duration>,

    /// Promise to ack or nack within DURATION [default: delivery.leaseSecs,
    /// 30m]; a claim held longer goes back to new/ for redelivery (its
    /// deliveryCount raised) and counts against the sender's breaker
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true,
          value_parser = parse_duration)]
    pub lease: Option<Duration>,

    /// Keep receiving: wait for new messages (filesystem notifications)
    /// until interrupted; SIGINT/SIGTERM finish the current message and stop.
    /// Without --exec each message is printed and acked, as with --ack
    /// (at-most-once); give --lease to keep the claims leased instead and
    /// ack or nack each yourself
    #[arg(short, long)]
    pub follow: bool,

    /// Run CMD (with sh -c) per message: the envelope JSON on stdin and
    /// RELAY_MESSAGE_ID, RELAY_TRACE_ID, RELAY_BUDGET, ... in its environment;
    /// exit 0 acks, anything else nacks (and feeds the sender's breaker)
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,

    /// Handlers run at once with --exec
    #[arg(long, value_name = "N", default_value_t = 1, requires = "exec",
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub concurrency: u32,

    /// Nack (and kill) a handler still running after DURATION
    #[arg(long, value_name = "DURATION", requires = "exec", allow_hyphen_values = true,
          value_parser = parse_positive_duration)]
    pub timeout: Option<Duration>,

    /// Ack each message as soon as it is printed (at-most-once consumption)
    #[arg(long, conflicts_with = "exec")]
    pub ack: bool,

    /// Print each message as TEMPLATE instead of its payload, e.g.
    /// '{id} {payload}': placeholders {id}, {payload} (strings raw, other JSON
    /// on one line), {subject}, {endpoint}, {from}, {replyTo}, {traceId},
    /// {createdAt}, {deliveryCount}, {priority}; {{ and }} are literal braces
    #[arg(long, value_name = "TEMPLATE", conflicts_with = "exec")]
    pub format: Option<String>,
}

/// Arguments of `relay mcp`.
#[derive(Debug, Args)]
pub struct McpArgs {
    /// The agent's identity: the sender of every message it sends and the
    /// owner of the endpoints it registers (never a tool argument)
    #[arg(long = "as", value_name = "SENDER")]
    pub sender: String,
}

/// Arguments of `relay peek`.
#[derive(Debug, Args)]
pub struct PeekArgs {
    /// Endpoint to look at
    #[arg(value_name = "ENDPOINT")]
    pub endpoint: String,

    /// List at most N messages, oldest first
    #[arg(short = 'n', long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,

    /// Which messages: pending (new/), claimed (cur/), failed (failed/, with
    /// their reasons) or all
    #[arg(long, value_name = "STATUS", value_enum, default_value_t = crate::inbox::Filter::Pending)]
    pub status: crate::inbox::Filter,
}

/// Arguments of `relay request`.
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// Subject or pattern to send the request to
    #[arg(value_name = "SUBJECT")]
    pub subject: String,

    /// Payload (JSON is stored as JSON, anything else as a string); read from
    /// stdin when neither this nor --file is given
    #[arg(value_name = "PAYLOAD", conflicts_with = "file")]
    pub payload: Option<String>,

    /// Read the payload from a file
    #[arg(short, long, value_name = "PATH")]
    pub file: Option<PathBuf>,

    /// How long to wait for the reply; past it relay exits 75
    #[arg(long, value_name = "DURATION", default_value = "30s", allow_hyphen_values = true,
          value_parser = parse_positive_duration)]
    pub timeout: Duration,

    /// Sender subject (used by rate limits, breakers and access rules)
    #[arg(long, value_name = "SENDER", env = "RELAY_FROM", default_value = "cli")]
    pub from: String,

    /// Time to live of the request [default: the timeout]
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true,
          value_parser = parse_positive_duration)]
    pub ttl: Option<Duration>,

    /// Store the payload as a JSON string even if it parses as JSON
    #[arg(long)]
    pub text: bool,

    /// The payload must be JSON: anything else is refused (exit 65) instead
    /// of being stored as a string
    #[arg(long, conflicts_with = "text")]
    pub json_payload: bool,

    /// Trace id to join [default: $RELAY_TRACE_ID, else the request's id]
    #[arg(long, value_name = "ID", env = "RELAY_TRACE_ID")]
    pub trace_id: Option<String>,

    /// Priority lane of the request
    #[arg(long, value_name = "LANE", value_enum, default_value_t = Priority::Normal)]
    pub priority: Priority,

    /// When the request is refused for now (exit 75: rate limit,
    /// backpressure, open breaker, lock timeout), send it again up to N more
    /// times, each after the refusal's retry-after plus 0-10% jitter, at
    /// most --retry-max-wait; never once it was sent (no reply within
    /// --timeout is not retried); each retry is reported on stderr
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retry: u32,

    /// The cap on each --retry wait
    #[arg(long, value_name = "DURATION", default_value = "1m", requires = "retry",
          allow_hyphen_values = true, value_parser = parse_duration)]
    pub retry_max_wait: Duration,
}

/// Arguments of `relay ack`.
#[derive(Debug, Args)]
pub struct AckArgs {
    /// Endpoint the messages were received from
    #[arg(value_name = "ENDPOINT")]
    pub endpoint: String,

    /// Ids of claimed messages
    #[arg(value_name = "ID", required = true)]
    pub ids: Vec<String>,

    /// The deliveryCount the claim had (as recv --json printed it): refused
    /// if the message was redelivered since
    #[arg(long, value_name = "N")]
    pub delivery_count: Option<u32>,
}

/// Arguments of `relay nack`.
#[derive(Debug, Args)]
pub struct NackArgs {
    /// Endpoint the messages were received from
    #[arg(value_name = "ENDPOINT")]
    pub endpoint: String,

    /// Ids of claimed messages
    #[arg(value_name = "ID", required = true)]
    pub ids: Vec<String>,

    /// Why the message failed (kept in the dead letter's reason sidecar)
    #[arg(long, value_name = "TEXT", default_value = "rejected by consumer")]
    pub reason: String,

    /// The deliveryCount the claim had (as recv --json printed it): refused
    /// if the message was redelivered since
    #[arg(long, value_name = "N")]
    pub delivery_count: Option<u32>,
}

/// Arguments of `relay endpoints`.
#[derive(Debug, Args)]
pub struct EndpointsArgs {
    #[command(subcommand)]
    pub action: Option<EndpointsAction>,
}

/// What `relay endpoints` does; listing is the default.
#[derive(Debug, Subcommand)]
pub enum EndpointsAction {
    /// List endpoints with their depth (new/cur/failed) and last activity
    List,
    /// Register endpoints: create `mailboxes/<SUBJECT>/{tmp,new,cur,failed}`
    #[command(about = "Register endpoints: create mailboxes/<SUBJECT>/{tmp,new,cur,failed}")]
    Add {
        /// Endpoint subjects (no wildcards)
        #[arg(value_name = "SUBJECT", required = true)]
        subjects: Vec<String>,
    },
    /// Remove an endpoint and its mailbox
    Remove {
        /// Endpoint subject
        #[arg(value_name = "SUBJECT")]
        subject: String,
        /// Remove it even if it still holds messages (they are deleted)
        #[arg(long)]
        force: bool,
    },
}
