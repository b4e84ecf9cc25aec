//! config.json: the knob table, parsing, validation and defaults.
//!
//! Every key is one row of `KNOBS`; parsing, validation, defaults and any
//! listing of keys come from that table, so they cannot disagree.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value as Json;

use crate::error::{Error, Result};

/// The name of the configuration file inside `$RELAY_HOME`.
pub const FILE_NAME: &str = "config.json";

/// Upper bound of count-like knobs and of the `u32` fields: past it a value
/// is nonsense, and callers may rely on it fitting in a `u32`.
const COUNT_MAX: u64 = u32::MAX as u64;
/// Upper bound of durations: a year.
const YEAR_SECS: u64 = 365 * 86_400;
/// Upper bound of `maxPayloadBytes`: 64 MiB.
const PAYLOAD_MAX: u64 = 64 * 1024 * 1024;
/// Longest rendering of an offending value in a message.
const SHOW_MAX: usize = 40;

/// The validated configuration: every field lies within its knob's range.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Largest accepted payload in bytes, `1..=64 MiB` (relay's own key).
    pub max_payload_bytes: u64,
    /// The DorkOS-compatible `reliability` section.
    pub reliability: Reliability,
    /// `idempotency.windowSecs`: how long a `send --idempotency-key` is
    /// remembered, `1..=` a year (relay's own key).
    pub idempotency_window_secs: u64,
    /// `retention.days`: age after which `gc` prunes finished index rows
    /// and events, `1..=3650` (relay's own key).
    pub retention_days: u64,
    /// `retention.tmpMaxAgeSecs`: age after which `gc` deletes files left
    /// in `tmp/` by crashed writers, `60..=` a year (relay's own key).
    pub tmp_max_age_secs: u64,
    /// `index.journalMaxBytes`: size past which a send moves the journal
    /// into the index itself, `64 KiB..=1 GiB` (relay's own key).
    pub journal_max_bytes: u64,
    /// The `delivery` section: leases and redelivery (relay's own keys).
    pub delivery: Delivery,
    /// `locks.timeoutMs`: how long a command waits for a lock another
    /// process holds (a mailbox, the state, the index, ...) before it gives
    /// up with exit 75, `1..=` an hour (relay's own key; the environment
    /// variable `RELAY_LOCK_TIMEOUT_MS` overrides it).
    pub lock_timeout_ms: u64,
    /// The `bridge` section: `relay bridge` (relay's own keys).
    pub bridge: Bridge,
    /// problems that are not fatal (unknown keys), one human line each
    pub warnings: Vec<String>,
}

/// `bridge`: how `relay bridge` joins this home to others over NATS.
#[derive(Debug, Clone, PartialEq)]
pub struct Bridge {
    /// `bridge.url`: the NATS URL when neither `--nats` nor
    /// `RELAY_NATS_URL` gives one, or null (`nats://127.0.0.1:4222`).
    pub url: Option<String>,
    /// `bridge.host`: this host's name when `--host` does not give it.
    pub host: Option<String>,
    /// `bridge.replicas`: stream and bucket replicas, `1..=5`, or null (1).
    pub replicas: Option<usize>,
    /// `bridge.dedupWindowMs`: JetStream's duplicate window for the stream,
    /// `1000..=` a day; 120000 (2 min) as JetStream's default.
    pub dedup_window_ms: u64,
    /// `bridge.maxDeliveries`: temporary refusals of one forwarded message
    /// before it is dead-lettered (`max_deliveries`), `1..=1000`.
    pub max_deliveries: u32,
}

/// `delivery`: how long a claim is held and how often it is handed out.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// `delivery.leaseSecs`: the lease of a claim made without `--lease`
    /// (and of a claim the index does not know, counted from its rename
    /// into `cur/`), `1..=` a year; 1800 (30 min) as DorkOS.
    pub lease_secs: u64,
    /// `delivery.maxDeliveries`: claims whose lease may run out before the
    /// message is dead-lettered as `max_deliveries`, `1..=1000`.
    pub max_deliveries: u32,
}

/// The `reliability` section, as DorkOS names it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reliability {
    /// `reliability.rateLimit`: per-sender rate limiting.
    pub rate_limit: RateLimit,
    /// `reliability.circuitBreaker`: per-endpoint circuit breakers.
    pub circuit_breaker: CircuitBreaker,
    /// `reliability.backpressure`: per-endpoint mailbox depth limits.
    pub backpressure: Backpressure,
}

/// `reliability.rateLimit`: at most `max_per_window` messages per sender in
/// any `window_secs`, unless an override prefix matches the sender.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// Whether the limit is enforced at all.
    pub enabled: bool,
    /// Window length in seconds, `1..=31536000` (a year).
    pub window_secs: u64,
    /// Default capacity per window, `1..=u32::MAX`.
    pub max_per_window: u64,
    /// Sender prefix (non-empty) -> capacity (`1..=u32::MAX`); see
    /// [`RateLimit::limit_for`]. Empty by default, unlike DorkOS.
    pub per_sender_overrides: BTreeMap<String, u64>,
    /// Bucket capacity overriding `max_per_window` (relay's own key); `None`
    /// = the sender's window limit.
    pub burst: Option<u64>,
    /// Fraction of the bucket in use at which senders are warned, `0 < x <= 1`.
    pub soft_limit_ratio: f64,
}

/// `reliability.circuitBreaker`: per-endpoint breaker thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitBreaker {
    /// Whether breakers are consulted at all.
    pub enabled: bool,
    /// Consecutive failures that open a closed breaker, `>= 1`.
    pub failure_threshold: u32,
    /// Time an open breaker refuses before half-opening, `1000..=` a year, in ms.
    pub cooldown_ms: u64,
    /// Probes a half-open breaker lets through, `>= 1`.
    pub half_open_probe_count: u32,
    /// Successes that close a half-open breaker, `>= 1`.
    pub success_to_close: u32,
    /// Cooldown growth factor per repeated trip, `1..=10` (1 = constant).
    pub cooldown_backoff: f64,
    /// Ceiling of the grown cooldown, in ms.
    pub max_cooldown_ms: u64,
}

/// `reliability.backpressure`: per-endpoint mailbox capacity.
#[derive(Debug, Clone, PartialEq)]
pub struct Backpressure {
    /// Whether mailbox depth is checked at all.
    pub enabled: bool,
    /// Pending messages at which sends are refused, `1..=u32::MAX`.
    pub max_mailbox_size: u64,
    /// Fraction of capacity at which senders are warned, `0 < x <= 1`.
    pub pressure_warning_at: f64,
    /// Fraction of capacity at which `low` priority sends are refused.
    pub shed_low_at: f64,
    /// Fraction of capacity at which `background` sends are refused (at most `shed_low_at`).
    pub shed_background_at: f64,
    /// Room above capacity for `critical` (all of it) and `high` (half), as a fraction, `0..=1`.
    pub priority_headroom: f64,
}

/// One configuration key: everything about it lives in this row.
struct Knob {
    /// Dotted path of JSON object keys, e.g. `reliability.rateLimit.enabled`.
    key: &'static str,
    kind: Kind,
    default: Value,
    get: fn(&Config) -> Value,
    /// Only ever given a value that `kind` produced.
    set: fn(&mut Config, Value),
}

/// What a knob accepts.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Bool,
    /// A JSON integer in `min..=max`.
    Int {
        min: u64,
        max: u64,
    },
    /// A JSON number `x` with `min < x <= max` (`min <= x` if `min_inclusive`).
    Num {
        min: f64,
        min_inclusive: bool,
        max: f64,
    },
    /// Like `Int`, or `null` for "not set".
    OptInt {
        min: u64,
        max: u64,
    },
    /// An object of sender prefix ("" matches every sender) -> integer in
    /// `1..=COUNT_MAX`.
    Overrides,
    /// A string passing `check` (which says what it expects), or `null`
    /// for "not set".
    OptStr {
        check: fn(&str) -> bool,
        expected: &'static str,
    },
}

/// A validated knob value; the variant always matches the knob's `Kind`.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Bool(bool),
    Int(u64),
    Num(f64),
    Map(BTreeMap<String, u64>),
    OptInt(Option<u64>),
    OptStr(Option<String>),
}

/// A fraction of something: `0 < x <= 1`.
const RATIO: Kind = Kind::Num {
    min: 0.0,
    min_inclusive: false,
    max: 1.0,
};

static KNOBS: &[Knob] = &[
    Knob {
        key: "maxPayloadBytes",
        kind: Kind::Int {
            min: 1,
            max: PAYLOAD_MAX,
        },
        default: Value::Int(1_048_576),
        get: |c| Value::Int(c.max_payload_bytes),
        set: |c, v| c.max_payload_bytes = v.int(),
    },
    Knob {
        key: "idempotency.windowSecs",
        kind: Kind::Int {
            min: 1,
            max: YEAR_SECS,
        },
        default: Value::Int(86_400),
        get: |c| Value::Int(c.idempotency_window_secs),
        set: |c, v| c.idempotency_window_secs = v.int(),
    },
    Knob {
        key: "retention.days",
        kind: Kind::Int { min: 1, max: 3650 },
        default: Value::Int(7),
        get: |c| Value::Int(c.retention_days),
        set: |c, v| c.retention_days = v.int(),
    },
    Knob {
        key: "retention.tmpMaxAgeSecs",
        kind: Kind::Int {
            min: 60,
            max: YEAR_SECS,
        },
        default: Value::Int(3600),
        get: |c| Value::Int(c.tmp_max_age_secs),
        set: |c, v| c.tmp_max_age_secs = v.int(),
    },
    Knob {
        key: "index.journalMaxBytes",
        kind: Kind::Int {
            min: 64 * 1024,
            max: 1 << 30,
        },
        default: Value::Int(16 << 20),
        get: |c| Value::Int(c.journal_max_bytes),
        set: |c, v| c.journal_max_bytes = v.int(),
    },
    Knob {
        key: "delivery.leaseSecs",
        kind: Kind::Int {
            min: 1,
            max: YEAR_SECS,
        },
        default: Value::Int(1800),
        get: |c| Value::Int(c.delivery.lease_secs),
        set: |c, v| c.delivery.lease_secs = v.int(),
    },
    Knob {
        key: "delivery.maxDeliveries",
        kind: Kind::Int { min: 1, max: 1000 },
        default: Value::Int(5),
        get: |c| Value::Int(u64::from(c.delivery.max_deliveries)),
        set: |c, v| c.delivery.max_deliveries = v.int32(),
    },
    Knob {
        key: "bridge.url",
        kind: Kind::OptStr {
            check: |s| {
                !s.is_empty()
                    && s.len() <= 4096
                    && !s.chars().any(|c| c.is_whitespace() || c.is_control())
            },
            expected: "a NATS URL such as \"nats://127.0.0.1:4222\" (comma-separated for a cluster)",
        },
        default: Value::OptStr(None),
        get: |c| Value::OptStr(c.bridge.url.clone()),
        set: |c, v| c.bridge.url = v.opt_str(),
    },
    Knob {
        key: "bridge.host",
        kind: Kind::OptStr {
            check: |s| crate::bridge::wire::validate_host(s).is_ok(),
            expected: "a host name of 1 to 64 letters, digits, '-' or '_'",
        },
        default: Value::OptStr(None),
        get: |c| Value::OptStr(c.bridge.host.clone()),
        set: |c, v| c.bridge.host = v.opt_str(),
    },
    Knob {
        key: "bridge.replicas",
        kind: Kind::OptInt { min: 1, max: 5 },
        default: Value::OptInt(None),
        get: |c| Value::OptInt(c.bridge.replicas.map(|n| n as u64)),
        set: |c, v| c.bridge.replicas = v.opt_int().map(|n| usize::try_from(n).unwrap_or(1)),
    },
    Knob {
        key: "bridge.dedupWindowMs",
        kind: Kind::Int {
            min: 1000,
            max: 86_400_000,
        },
        default: Value::Int(120_000),
        get: |c| Value::Int(c.bridge.dedup_window_ms),
        set: |c, v| c.bridge.dedup_window_ms = v.int(),
    },
    Knob {
        key: "bridge.maxDeliveries",
        kind: Kind::Int { min: 1, max: 1000 },
        default: Value::Int(100),
        get: |c| Value::Int(u64::from(c.bridge.max_deliveries)),
        set: |c, v| c.bridge.max_deliveries = v.int32(),
    },
    Knob {
        key: "locks.timeoutMs",
        kind: Kind::Int {
            min: 1,
            max: 3_600_000,
        },
        default: Value::Int(crate::lockwait::DEFAULT_MS),
        get: |c| Value::Int(c.lock_timeout_ms),
        set: |c, v| c.lock_timeout_ms = v.int(),
    },
    Knob {
        key: "reliability.rateLimit.enabled",
        kind: Kind::Bool,
        default: Value::Bool(true),
        get: |c| Value::Bool(c.reliability.rate_limit.enabled),
        set: |c, v| c.reliability.rate_limit.enabled = v.bool(),
    },
    Knob {
        key: "reliability.rateLimit.windowSecs",
        kind: Kind::Int {
            min: 1,
            max: YEAR_SECS,
        },
        default: Value::Int(60),
        get: |c| Value::Int(c.reliability.rate_limit.window_secs),
        set: |c, v| c.reliability.rate_limit.window_secs = v.int(),
    },
    Knob {
        key: "reliability.rateLimit.maxPerWindow",
        kind: Kind::Int {
            min: 1,
            max: COUNT_MAX,
        },
        default: Value::Int(100),
        get: |c| Value::Int(c.reliability.rate_limit.max_per_window),
        set: |c, v| c.reliability.rate_limit.max_per_window = v.int(),
    },
    Knob {
        key: "reliability.rateLimit.burst",
        kind: Kind::OptInt {
            min: 1,
            max: COUNT_MAX,
        },
        default: Value::OptInt(None),
        get: |c| Value::OptInt(c.reliability.rate_limit.burst),
        set: |c, v| c.reliability.rate_limit.burst = v.opt_int(),
    },
    Knob {
        key: "reliability.rateLimit.softLimitRatio",
        kind: RATIO,
        default: Value::Num(0.8),
        get: |c| Value::Num(c.reliability.rate_limit.soft_limit_ratio),
        set: |c, v| c.reliability.rate_limit.soft_limit_ratio = v.num(),
    },
    Knob {
        key: "reliability.rateLimit.perSenderOverrides",
        kind: Kind::Overrides,
        // DorkOS defaults to `{"agent:": 2000}`, which can never match a
        // subject-shaped sender (dorkos-contract.md section 6).
        default: Value::Map(BTreeMap::new()),
        get: |c| Value::Map(c.reliability.rate_limit.per_sender_overrides.clone()),
        set: |c, v| c.reliability.rate_limit.per_sender_overrides = v.map(),
    },
    Knob {
        key: "reliability.circuitBreaker.enabled",
        kind: Kind::Bool,
        default: Value::Bool(true),
        get: |c| Value::Bool(c.reliability.circuit_breaker.enabled),
        set: |c, v| c.reliability.circuit_breaker.enabled = v.bool(),
    },
    Knob {
        key: "reliability.circuitBreaker.failureThreshold",
        kind: Kind::Int {
            min: 1,
            max: COUNT_MAX,
        },
        default: Value::Int(5),
        get: |c| Value::Int(c.reliability.circuit_breaker.failure_threshold.into()),
        set: |c, v| c.reliability.circuit_breaker.failure_threshold = v.int32(),
    },
    Knob {
        key: "reliability.circuitBreaker.cooldownMs",
        kind: Kind::Int {
            min: 1000,
            max: YEAR_SECS * 1000,
        },
        default: Value::Int(30_000),
        get: |c| Value::Int(c.reliability.circuit_breaker.cooldown_ms),
        set: |c, v| c.reliability.circuit_breaker.cooldown_ms = v.int(),
    },
    Knob {
        key: "reliability.circuitBreaker.halfOpenProbeCount",
        kind: Kind::Int {
            min: 1,
            max: COUNT_MAX,
        },
        default: Value::Int(1),
        get: |c| Value::Int(c.reliability.circuit_breaker.half_open_probe_count.into()),
        set: |c, v| c.reliability.circuit_breaker.half_open_probe_count = v.int32(),
    },
    Knob {
        key: "reliability.circuitBreaker.successToClose",
        kind: Kind::Int {
            min: 1,
            max: COUNT_MAX,
        },
        default: Value::Int(2),
        get: |c| Value::Int(c.reliability.circuit_breaker.success_to_close.into()),
        set: |c, v| c.reliability.circuit_breaker.success_to_close = v.int32(),
    },
    Knob {
        key: "reliability.circuitBreaker.cooldownBackoff",
        kind: Kind::Num {
            min: 1.0,
            min_inclusive: true,
            max: 10.0,
        },
        default: Value::Num(1.0),
        get: |c| Value::Num(c.reliability.circuit_breaker.cooldown_backoff),
        set: |c, v| c.reliability.circuit_breaker.cooldown_backoff = v.num(),
    },
    Knob {
        key: "reliability.circuitBreaker.maxCooldownMs",
        kind: Kind::Int {
            min: 1000,
            max: YEAR_SECS * 1000,
        },
        default: Value::Int(300_000),
        get: |c| Value::Int(c.reliability.circuit_breaker.max_cooldown_ms),
        set: |c, v| c.reliability.circuit_breaker.max_cooldown_ms = v.int(),
    },
    Knob {
        key: "reliability.backpressure.enabled",
        kind: Kind::Bool,
        default: Value::Bool(true),
        get: |c| Value::Bool(c.reliability.backpressure.enabled),
        set: |c, v| c.reliability.backpressure.enabled = v.bool(),
    },
    Knob {
        key: "reliability.backpressure.maxMailboxSize",
        kind: Kind::Int {
            min: 1,
            max: COUNT_MAX,
        },
        default: Value::Int(1000),
        get: |c| Value::Int(c.reliability.backpressure.max_mailbox_size),
        set: |c, v| c.reliability.backpressure.max_mailbox_size = v.int(),
    },
    Knob {
        key: "reliability.backpressure.pressureWarningAt",
        // DorkOS: a number in 0..=1 (0 warns on every send).
        kind: Kind::Num {
            min: 0.0,
            min_inclusive: true,
            max: 1.0,
        },
        default: Value::Num(0.8),
        get: |c| Value::Num(c.reliability.backpressure.pressure_warning_at),
        set: |c, v| c.reliability.backpressure.pressure_warning_at = v.num(),
    },
    Knob {
        key: "reliability.backpressure.shedLowAt",
        kind: RATIO,
        default: Value::Num(0.9),
        get: |c| Value::Num(c.reliability.backpressure.shed_low_at),
        set: |c, v| c.reliability.backpressure.shed_low_at = v.num(),
    },
    Knob {
        key: "reliability.backpressure.shedBackgroundAt",
        kind: RATIO,
        default: Value::Num(0.75),
        get: |c| Value::Num(c.reliability.backpressure.shed_background_at),
        set: |c, v| c.reliability.backpressure.shed_background_at = v.num(),
    },
    Knob {
        key: "reliability.backpressure.priorityHeadroom",
        kind: Kind::Num {
            min: 0.0,
            min_inclusive: true,
            max: 1.0,
        },
        default: Value::Num(0.1),
        get: |c| Value::Num(c.reliability.backpressure.priority_headroom),
        set: |c, v| c.reliability.backpressure.priority_headroom = v.num(),
    },
];

/// Whether `key` is a knob holding a string (`bridge.url`, `bridge.host`).
#[must_use]
pub fn is_string_knob(key: &str) -> bool {
    KNOBS
        .iter()
        .any(|k| k.key == key && matches!(k.kind, Kind::OptStr { .. }))
}

/// The dotted keys of every knob, in table order (e.g.
/// `reliability.rateLimit.maxPerWindow`); each is accepted by [`Config::get`].
pub fn knobs() -> impl Iterator<Item = &'static str> {
    KNOBS.iter().map(|k| k.key)
}

impl Default for Config {
    /// Every knob at its table default, no warnings.
    fn default() -> Self {
        // Placeholders only: the loop below overwrites every field, which
        // `tests::every_field_has_a_knob` checks.
        let mut config = Config {
            max_payload_bytes: 0,
            idempotency_window_secs: 0,
            retention_days: 0,
            tmp_max_age_secs: 0,
            journal_max_bytes: 0,
            delivery: Delivery {
                lease_secs: 0,
                max_deliveries: 0,
            },
            lock_timeout_ms: 0,
            bridge: Bridge {
                url: Some(String::new()),
                host: Some(String::new()),
                replicas: Some(0),
                dedup_window_ms: 0,
                max_deliveries: 0,
            },
            reliability: Reliability {
                rate_limit: RateLimit {
                    enabled: false,
                    window_secs: 0,
                    max_per_window: 0,
                    per_sender_overrides: BTreeMap::new(),
                    burst: None,
                    soft_limit_ratio: 0.0,
                },
                circuit_breaker: CircuitBreaker {
                    enabled: false,
                    failure_threshold: 0,
                    cooldown_ms: 0,
                    half_open_probe_count: 0,
                    success_to_close: 0,
                    cooldown_backoff: 0.0,
                    max_cooldown_ms: 0,
                },
                backpressure: Backpressure {
                    enabled: false,
                    max_mailbox_size: 0,
                    pressure_warning_at: 0.0,
                    shed_low_at: 0.0,
                    shed_background_at: 0.0,
                    priority_headroom: 0.0,
                },
            },
            warnings: Vec::new(),
        };
        for knob in KNOBS {
            (knob.set)(&mut config, knob.default.clone());
        }
        config
    }
}

impl Default for Reliability {
    /// The defaults of every reliability knob.
    fn default() -> Self {
        Config::default().reliability
    }
}

impl Default for RateLimit {
    /// Enabled, 100 messages per 60 s, no overrides.
    fn default() -> Self {
        Reliability::default().rate_limit
    }
}

impl Default for CircuitBreaker {
    /// Enabled, opens after 5 failures, 30 s cooldown, 1 probe, 2 successes to close.
    fn default() -> Self {
        Reliability::default().circuit_breaker
    }
}

impl Default for Backpressure {
    /// Enabled, capacity 1000, warning at 80%.
    fn default() -> Self {
        Reliability::default().backpressure
    }
}

impl Config {
    /// The current value of the knob `key` (one of [`knobs`]) as JSON, as it
    /// would be written in config.json; `None` for an unknown key.
    pub fn get(&self, key: &str) -> Option<Json> {
        KNOBS
            .iter()
            .find(|k| k.key == key)
            .map(|k| (k.get)(self).to_json())
    }
}

impl RateLimit {
    /// capacity for a sender: longest matching prefix in per_sender_overrides, else max_per_window
    ///
    /// Prefixes match raw characters, as DorkOS's `startsWith` does: `agent`
    /// matches `agents.x` too; write `agent.` to mean the `agent` subtree.
    pub fn limit_for(&self, sender: &str) -> u64 {
        self.per_sender_overrides
            .iter()
            .filter(|(prefix, _)| sender.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or(self.max_per_window, |(_, limit)| *limit)
    }
}

/// Loads `path`; a missing file yields defaults. Errors name the file.
///
/// Other read failures are `Error::Io` (exit 74); invalid UTF-8 or content is
/// `Error::Config` (exit 78).
pub fn load(path: &Path) -> Result<Config> {
    let Some(bytes) = read_file(path)? else {
        return Ok(Config::default());
    };
    let origin = path.display().to_string();
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::Config(format!(
            "config {origin}: not valid UTF-8 (bad byte at offset {}); fix or remove the file",
            e.utf8_error().valid_up_to()
        ))
    })?;
    parse(&text, &origin)
}

/// Longest `config.json` read: far more than any real one.
const FILE_MAX: u64 = 16 << 20;

/// The bytes of the config file at `path`, `None` when there is none. A
/// FIFO, device or directory there is a read error (74), never waited on.
pub fn read_file(path: &Path) -> Result<Option<Vec<u8>>> {
    match crate::home::read_operator_file(path, FILE_MAX) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(crate::home::Unreadable::Missing) => Ok(None),
        Err(e) => Err(Error::io("cannot read config", path, e.into_io())),
    }
}

/// Parses config text; `origin` (the file path as displayed) is used in messages.
///
/// Blank text means `{}`. Missing keys take their defaults; unknown keys are
/// skipped with a line in `warnings`; anything invalid is `Error::Config`
/// naming `origin`, the dotted key, what was expected and what was found.
pub fn parse(text: &str, origin: &str) -> Result<Config> {
    // Editors on some systems prepend a byte-order mark; it is not content.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut config = Config::default();
    if text.trim_ascii().is_empty() {
        return Ok(config);
    }
    let json: Json = serde_json::from_str(text).map_err(|e| invalid_json(origin, &e))?;
    let Json::Object(top) = &json else {
        return Err(invalid(
            origin,
            format!("the top level must be an object, got {}", show(&json)),
        ));
    };
    apply(top, "", &mut config, origin)?;
    let bp = &config.reliability.backpressure;
    if bp.shed_background_at > bp.shed_low_at {
        return Err(invalid(
            origin,
            format!(
                "reliability.backpressure.shedBackgroundAt ({}) must be <= reliability.backpressure.shedLowAt ({}): background messages are shed before low ones",
                bp.shed_background_at, bp.shed_low_at
            ),
        ));
    }
    let cb = &mut config.reliability.circuit_breaker;
    if cb.max_cooldown_ms < cb.cooldown_ms {
        if json
            .pointer("/reliability/circuitBreaker/maxCooldownMs")
            .is_some()
        {
            return Err(invalid(
                origin,
                format!(
                    "reliability.circuitBreaker.maxCooldownMs ({}) must be >= reliability.circuitBreaker.cooldownMs ({})",
                    cb.max_cooldown_ms, cb.cooldown_ms
                ),
            ));
        }
        // Only the cooldown was raised: the ceiling follows it.
        cb.max_cooldown_ms = cb.cooldown_ms;
    }
    Ok(config)
}

/// Applies the members of the object at `prefix` ("" for the top level).
fn apply(
    object: &serde_json::Map<String, Json>,
    prefix: &str,
    config: &mut Config,
    origin: &str,
) -> Result<()> {
    for (name, value) in object {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        // A dotted name is one JSON key, never a path into nested objects.
        let knob = KNOBS
            .iter()
            .find(|k| k.key == path)
            .filter(|_| !name.contains('.'));
        if let Some(knob) = knob {
            let fitted;
            let value = if DORKOS_KEYS.contains(&path.as_str()) {
                fitted = dorkos_fit(knob.kind, &path, value, origin, &mut config.warnings)?;
                &fitted
            } else {
                value
            };
            let parsed = knob.kind.read(&path, value);
            (knob.set)(config, parsed.map_err(|m| invalid(origin, m))?);
        } else if is_section(&path) && !name.contains('.') {
            let Json::Object(inner) = value else {
                return Err(invalid(
                    origin,
                    format!("{path} must be an object, got {}", show(value)),
                ));
            };
            apply(inner, &path, config, origin)?;
        } else {
            config
                .warnings
                .push(unknown_key(origin, prefix, name, &path));
        }
    }
    Ok(())
}

/// The keys DorkOS validates (`ReliabilityConfigSchema`, dorkos-contract.md
/// section 6): relay accepts exactly what DorkOS accepts for them.
const DORKOS_KEYS: &[&str] = &[
    "reliability.rateLimit.enabled",
    "reliability.rateLimit.windowSecs",
    "reliability.rateLimit.maxPerWindow",
    "reliability.rateLimit.perSenderOverrides",
    "reliability.circuitBreaker.enabled",
    "reliability.circuitBreaker.failureThreshold",
    "reliability.circuitBreaker.cooldownMs",
    "reliability.circuitBreaker.halfOpenProbeCount",
    "reliability.circuitBreaker.successToClose",
    "reliability.backpressure.enabled",
    "reliability.backpressure.maxMailboxSize",
    "reliability.backpressure.pressureWarningAt",
];

/// JavaScript's `Number.MAX_SAFE_INTEGER`: Zod's `int()` takes nothing larger.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// A DorkOS key's value as relay reads it: an integer DorkOS accepts
/// (any safe integer) above relay's own ceiling is taken as that ceiling,
/// with a warning; one above the safe integers is refused, as DorkOS does.
fn dorkos_fit(
    kind: Kind,
    key: &str,
    v: &Json,
    origin: &str,
    warnings: &mut Vec<String>,
) -> Result<Json> {
    let mut fit = |key: &str, v: &Json, max: u64| -> Result<Json> {
        let Some(n) = v.as_u64().or_else(|| {
            v.as_f64()
                .filter(|f| f.fract() == 0.0 && *f > 0.0)
                .map(|f| f as u64)
        }) else {
            return Ok(v.clone());
        };
        if n <= max {
            return Ok(v.clone());
        }
        if v.as_f64().is_some_and(|f| f > MAX_SAFE_INTEGER as f64) || n > MAX_SAFE_INTEGER {
            return Err(invalid(
                origin,
                format!(
                    "{key} must be an integer <= {MAX_SAFE_INTEGER} (the largest DorkOS accepts), got {}",
                    show(v)
                ),
            ));
        }
        warnings.push(format!(
            "config {origin}: {key} is {n}, above relay's ceiling of {max}; relay uses {max}"
        ));
        Ok(Json::from(max))
    };
    match kind {
        Kind::Int { max, .. } => fit(key, v, max),
        Kind::Overrides => match v {
            Json::Object(map) => {
                let mut out = serde_json::Map::new();
                for (prefix, limit) in map {
                    let k = format!("{key}[{}]", Json::from(prefix.as_str()));
                    out.insert(prefix.clone(), fit(&k, limit, COUNT_MAX)?);
                }
                Ok(Json::Object(out))
            }
            other => Ok(other.clone()),
        },
        _ => Ok(v.clone()),
    }
}

impl Kind {
    /// Validates `v` for the knob at `key`; the error is the message after
    /// `config FILE: `.
    fn read(self, key: &str, v: &Json) -> std::result::Result<Value, String> {
        let bad = |expected: String| format!("{key} must be {expected}, got {}", show(v));
        match self {
            Kind::Bool => v
                .as_bool()
                .map(Value::Bool)
                .ok_or_else(|| bad("true or false".into())),
            Kind::Int { min, max } => read_int(v, min, max).map(Value::Int).map_err(bad),
            Kind::Num {
                min,
                min_inclusive,
                max,
            } => v
                .as_f64()
                .filter(|x| (*x > min || (min_inclusive && *x == min)) && *x <= max)
                .map(Value::Num)
                .ok_or_else(|| {
                    let op = if min_inclusive { ">=" } else { ">" };
                    bad(format!("a number {op} {min} and <= {max}"))
                }),
            Kind::OptInt { .. } if v.is_null() => Ok(Value::OptInt(None)),
            Kind::OptInt { min, max } => read_int(v, min, max)
                .map(|n| Value::OptInt(Some(n)))
                .map_err(|e| bad(format!("{e} (or null)"))),
            Kind::OptStr { .. } if v.is_null() => Ok(Value::OptStr(None)),
            Kind::OptStr { check, expected } => v
                .as_str()
                .filter(|s| check(s))
                .map(|s| Value::OptStr(Some(s.to_string())))
                .ok_or_else(|| bad(format!("{expected} (or null)"))),
            Kind::Overrides => {
                let Json::Object(object) = v else {
                    return Err(bad(format!(
                        "an object of sender prefix -> integer >= 1 and <= {COUNT_MAX}"
                    )));
                };
                let mut map = BTreeMap::new();
                // Any key, "" included (it matches every sender), as DorkOS.
                for (prefix, limit) in object {
                    let limit = read_int(limit, 1, COUNT_MAX).map_err(|expected| {
                        format!(
                            "{key}[{}] must be {expected}, got {}",
                            Json::from(prefix.as_str()),
                            show(limit)
                        )
                    })?;
                    map.insert(prefix.clone(), limit);
                }
                Ok(Value::Map(map))
            }
        }
    }
}

/// An integer in `min..=max`, or the expectation the value failed. JSON
/// numbers with no fraction (`2.0`, `1e3`) count: JavaScript writes and reads
/// them as the same integers.
fn read_int(v: &Json, min: u64, max: u64) -> std::result::Result<u64, String> {
    let n: Option<i128> = v.as_number().and_then(|n| {
        n.as_u64()
            .map(i128::from)
            .or_else(|| n.as_i64().map(i128::from))
            // Float to int casts saturate, so 1e300 reads as "too big".
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i128))
    });
    match n {
        Some(n) if n > i128::from(max) => Err(format!("an integer <= {max}")),
        Some(n) if n >= i128::from(min) => {
            u64::try_from(n).map_err(|_| format!("an integer <= {max}"))
        }
        _ => Err(format!("an integer >= {min}")),
    }
}

impl Value {
    fn bool(self) -> bool {
        matches!(self, Value::Bool(true))
    }

    fn int(self) -> u64 {
        match self {
            Value::Int(n) => n,
            _ => 0,
        }
    }

    /// Knobs set through this have `max <= COUNT_MAX`, so nothing saturates.
    fn int32(self) -> u32 {
        u32::try_from(self.int()).unwrap_or(u32::MAX)
    }

    fn num(self) -> f64 {
        match self {
            Value::Num(x) => x,
            _ => 0.0,
        }
    }

    fn opt_int(self) -> Option<u64> {
        match self {
            Value::OptInt(n) => n,
            _ => None,
        }
    }

    fn opt_str(self) -> Option<String> {
        match self {
            Value::OptStr(s) => s,
            _ => None,
        }
    }

    fn map(self) -> BTreeMap<String, u64> {
        match self {
            Value::Map(m) => m,
            _ => BTreeMap::new(),
        }
    }

    fn to_json(&self) -> Json {
        match self {
            Value::Bool(b) => Json::from(*b),
            Value::Int(n) => Json::from(*n),
            Value::Num(x) => Json::from(*x),
            Value::Map(m) => {
                Json::Object(m.iter().map(|(k, v)| (k.clone(), Json::from(*v))).collect())
            }
            Value::OptInt(n) => n.map_or(Json::Null, Json::from),
            Value::OptStr(v) => v.as_deref().map_or(Json::Null, Json::from),
        }
    }
}

/// Whether `path` is an object that holds knobs (`reliability`, ...).
fn is_section(path: &str) -> bool {
    KNOBS.iter().any(|k| {
        k.key
            .strip_prefix(path)
            .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// Every knob key and every section path, sorted.
fn known_paths() -> Vec<&'static str> {
    let mut paths: Vec<&'static str> = KNOBS
        .iter()
        .flat_map(|k| {
            k.key
                .match_indices('.')
                .filter_map(|(i, _)| k.key.get(..i))
                .chain([k.key])
        })
        .collect();
    paths.sort_unstable();
    paths.dedup();
    paths
}

fn unknown_key(origin: &str, prefix: &str, name: &str, path: &str) -> String {
    let mut line = format!("config {origin}: unknown key '{path}' ignored");
    if name.contains('.') {
        if known_paths().contains(&path) {
            line.push_str("; nest it as objects, not as one dotted name");
        }
    } else if let Some(known) = suggest(prefix, name) {
        line.push_str("; did you mean '");
        line.push_str(known);
        line.push_str("'?");
    }
    line
}

/// The known key `name` (found under `parent`) was probably meant to be: a
/// sibling a few edits away (case ignored), else the one key anywhere with
/// the same last name (a key put in the wrong section).
fn suggest(parent: &str, name: &str) -> Option<&'static str> {
    let known = known_paths();
    let split = |path: &'static str| path.rsplit_once('.').unwrap_or(("", path));
    let lower = name.to_ascii_lowercase();
    let sibling = known
        .iter()
        .filter(|path| split(path).0 == parent)
        .map(|path| {
            (
                edit_distance(&lower, &split(path).1.to_ascii_lowercase()),
                *path,
            )
        })
        .min();
    if let Some((distance, path)) = sibling
        && distance <= (name.chars().count() / 3).max(1)
    {
        return Some(path);
    }
    let mut moved = known
        .iter()
        .filter(|path| split(path).1.eq_ignore_ascii_case(name));
    match (moved.next(), moved.next()) {
        (Some(path), None) => Some(path),
        _ => None,
    }
}

/// The knob or section a mistyped dotted key (`relay config get/set`) was
/// probably meant to be: the nearest known path a few edits away (case
/// ignored), else the one key anywhere ending in the same name.
#[must_use]
pub fn nearest_key(key: &str) -> Option<&'static str> {
    let lower = key.to_ascii_lowercase();
    let (distance, best) = known_paths()
        .into_iter()
        .map(|path| (edit_distance(&lower, &path.to_ascii_lowercase()), path))
        .min()?;
    if distance <= (key.chars().count() / 6).max(2) {
        return Some(best);
    }
    let last = key.rsplit('.').next().unwrap_or(key);
    let (parent, _) = key.rsplit_once('.').unwrap_or(("", key));
    suggest(parent, last).or_else(|| {
        let mut ends = KNOBS.iter().map(|k| k.key).filter(|k| {
            k.rsplit('.')
                .next()
                .is_some_and(|n| n.eq_ignore_ascii_case(last))
        });
        match (ends.next(), ends.next()) {
            (Some(k), None) => Some(k),
            _ => None,
        }
    })
}

/// Levenshtein distance in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(above + 1)
                .min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// `v` as JSON text, shortened so one message stays one readable line.
fn show(v: &Json) -> String {
    let text = v.to_string();
    if text.chars().count() <= SHOW_MAX {
        return text;
    }
    let mut short: String = text.chars().take(SHOW_MAX - 3).collect();
    short.push_str("...");
    short
}

fn invalid(origin: &str, message: String) -> Error {
    Error::Config(format!("config {origin}: {message}"))
}

fn invalid_json(origin: &str, e: &serde_json::Error) -> Error {
    let (line, column) = (e.line(), e.column());
    let full = e.to_string();
    let what = full
        .strip_suffix(&format!(" at line {line} column {column}"))
        .unwrap_or(&full);
    invalid(
        origin,
        format!("invalid JSON at line {line} column {column}: {what}; fix or remove the file"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "/h/config.json";

    fn ok(text: &str) -> Config {
        match parse(text, ORIGIN) {
            Ok(config) => config,
            Err(e) => panic!("expected {text} to parse, got: {e}"),
        }
    }

    fn err(text: &str) -> String {
        match parse(text, ORIGIN) {
            Ok(config) => panic!("expected {text} to be rejected, got {config:?}"),
            Err(e) => {
                assert_eq!(e.exit_code(), crate::error::code::CONFIG, "{e}");
                assert!(matches!(e, Error::Config(_)), "{e:?}");
                let message = e.to_string();
                assert!(message.starts_with("config /h/config.json: "), "{message}");
                message
            }
        }
    }

    /// `{"a":{"b":{"c":v}}}` for the dotted key `a.b.c`.
    fn nest(key: &str, value: &str) -> String {
        key.rsplit('.').fold(value.to_owned(), |inner, name| {
            format!("{{\"{name}\": {inner}}}")
        })
    }

    #[test]
    fn defaults_are_the_documented_values() {
        let c = Config::default();
        assert_eq!(c.max_payload_bytes, 1_048_576);
        assert_eq!(c.journal_max_bytes, 16 << 20);
        assert!(c.warnings.is_empty());
        let r = &c.reliability;
        assert!(r.rate_limit.enabled);
        assert_eq!(r.rate_limit.window_secs, 60);
        assert_eq!(r.rate_limit.max_per_window, 100);
        assert!(r.rate_limit.per_sender_overrides.is_empty());
        assert!(r.circuit_breaker.enabled);
        assert_eq!(r.circuit_breaker.failure_threshold, 5);
        assert_eq!(r.circuit_breaker.cooldown_ms, 30_000);
        assert_eq!(r.circuit_breaker.half_open_probe_count, 1);
        assert_eq!(r.circuit_breaker.success_to_close, 2);
        assert!(r.backpressure.enabled);
        assert_eq!(r.backpressure.max_mailbox_size, 1000);
        assert!((r.backpressure.pressure_warning_at - 0.8).abs() < f64::EPSILON);
    }

    #[test]
    fn section_defaults_agree_with_config_default() {
        let c = Config::default();
        assert_eq!(Reliability::default(), c.reliability);
        assert_eq!(RateLimit::default(), c.reliability.rate_limit);
        assert_eq!(CircuitBreaker::default(), c.reliability.circuit_breaker);
        assert_eq!(Backpressure::default(), c.reliability.backpressure);
    }

    #[test]
    fn blank_text_and_empty_objects_yield_defaults() {
        for text in [
            "",
            "   ",
            "\n\t\r\n ",
            "{}",
            " { } \n",
            r#"{"reliability": {}}"#,
            r#"{"reliability": {"rateLimit": {}, "circuitBreaker": {}, "backpressure": {}}}"#,
        ] {
            assert_eq!(ok(text), Config::default(), "{text:?}");
        }
    }

    #[test]
    fn byte_order_mark_is_ignored() {
        assert_eq!(ok("\u{feff}{}"), Config::default());
        assert_eq!(ok("\u{feff}"), Config::default());
    }

    #[test]
    fn partial_section_keeps_other_defaults() {
        let c = ok(r#"{"reliability": {"rateLimit": {"maxPerWindow": 5}}}"#);
        let mut want = Config::default();
        want.reliability.rate_limit.max_per_window = 5;
        assert_eq!(c, want);
    }

    #[test]
    fn every_key_is_read() {
        let c = ok(r#"{
            "maxPayloadBytes": 2048,
            "reliability": {
                "rateLimit": {"enabled": false, "windowSecs": 10, "maxPerWindow": 7,
                              "perSenderOverrides": {"ci.": 50, "ci.bot.": 500}},
                "circuitBreaker": {"enabled": false, "failureThreshold": 3, "cooldownMs": 1000,
                                   "halfOpenProbeCount": 4, "successToClose": 6},
                "backpressure": {"enabled": false, "maxMailboxSize": 9, "pressureWarningAt": 1}
            }
        }"#);
        let want = Config {
            max_payload_bytes: 2048,
            reliability: Reliability {
                rate_limit: RateLimit {
                    enabled: false,
                    window_secs: 10,
                    max_per_window: 7,
                    per_sender_overrides: [("ci.".to_owned(), 50), ("ci.bot.".to_owned(), 500)]
                        .into_iter()
                        .collect(),
                    ..RateLimit::default()
                },
                circuit_breaker: CircuitBreaker {
                    enabled: false,
                    failure_threshold: 3,
                    cooldown_ms: 1000,
                    half_open_probe_count: 4,
                    success_to_close: 6,
                    ..CircuitBreaker::default()
                },
                backpressure: Backpressure {
                    enabled: false,
                    max_mailbox_size: 9,
                    pressure_warning_at: 1.0,
                    ..Backpressure::default()
                },
            },
            warnings: Vec::new(),
            ..Config::default()
        };
        assert_eq!(c, want);
    }

    #[test]
    fn dorkos_default_file_is_accepted() {
        let c = ok(r#"{"reliability": {
            "rateLimit": {"enabled": true, "windowSecs": 60, "maxPerWindow": 100,
                          "perSenderOverrides": {"agent:": 2000}},
            "circuitBreaker": {"enabled": true, "failureThreshold": 5, "cooldownMs": 30000,
                               "halfOpenProbeCount": 1, "successToClose": 2},
            "backpressure": {"enabled": true, "maxMailboxSize": 1000, "pressureWarningAt": 0.8}
        }}"#);
        assert!(c.warnings.is_empty());
        assert_eq!(
            c.reliability.rate_limit.per_sender_overrides.get("agent:"),
            Some(&2000)
        );
    }

    #[test]
    fn message_for_out_of_range_is_exact() {
        assert_eq!(
            err(r#"{"reliability": {"rateLimit": {"maxPerWindow": 0}}}"#),
            "config /h/config.json: reliability.rateLimit.maxPerWindow must be an integer >= 1, got 0"
        );
        assert_eq!(
            err(r#"{"maxPayloadBytes": 67108865}"#),
            "config /h/config.json: maxPayloadBytes must be an integer <= 67108864, got 67108865"
        );
        assert_eq!(
            err(&nest("reliability.backpressure.pressureWarningAt", "-0.1")),
            "config /h/config.json: reliability.backpressure.pressureWarningAt must be a number >= 0 and <= 1, got -0.1"
        );
        assert_eq!(
            err(&nest("reliability.circuitBreaker.enabled", r#""yes""#)),
            "config /h/config.json: reliability.circuitBreaker.enabled must be true or false, got \"yes\""
        );
    }

    #[test]
    fn each_out_of_range_value_is_rejected_naming_its_key() {
        let cases = [
            ("maxPayloadBytes", "0", ">= 1"),
            ("maxPayloadBytes", "67108865", "<= 67108864"),
            ("reliability.rateLimit.windowSecs", "0", ">= 1"),
            (
                "reliability.rateLimit.windowSecs",
                "9007199254740992",
                "<= 9007199254740991",
            ),
            ("reliability.rateLimit.maxPerWindow", "0", ">= 1"),
            (
                "reliability.rateLimit.maxPerWindow",
                "9007199254740992",
                "<= 9007199254740991",
            ),
            ("reliability.circuitBreaker.failureThreshold", "0", ">= 1"),
            (
                "reliability.circuitBreaker.failureThreshold",
                "9007199254740992",
                "<= 9007199254740991",
            ),
            ("reliability.circuitBreaker.cooldownMs", "999", ">= 1000"),
            (
                "reliability.circuitBreaker.cooldownMs",
                "9007199254740992",
                "<= 9007199254740991",
            ),
            ("reliability.circuitBreaker.halfOpenProbeCount", "0", ">= 1"),
            (
                "reliability.circuitBreaker.halfOpenProbeCount",
                "9007199254740992",
                "<= 9007199254740991",
            ),
            ("reliability.circuitBreaker.successToClose", "0", ">= 1"),
            (
                "reliability.circuitBreaker.successToClose",
                "9007199254740992",
                "<= 9007199254740991",
            ),
            ("reliability.backpressure.maxMailboxSize", "0", ">= 1"),
            (
                "reliability.backpressure.maxMailboxSize",
                "9007199254740992",
                "<= 9007199254740991",
            ),
            (
                "reliability.backpressure.pressureWarningAt",
                "-0.5",
                "a number >= 0 and <= 1",
            ),
            (
                "reliability.backpressure.pressureWarningAt",
                "1.0001",
                "a number >= 0 and <= 1",
            ),
        ];
        for (key, value, expected) in cases {
            let message = err(&nest(key, value));
            assert!(
                message.contains(&format!("{key} must be")) && message.contains(expected),
                "{key}={value}: {message}"
            );
            assert!(
                message.ends_with(&format!(", got {value}")) || value.len() > 15,
                "{message}"
            );
        }
    }

    #[test]
    fn boundary_values_are_accepted() {
        let c = ok(&nest("maxPayloadBytes", "67108864"));
        assert_eq!(c.max_payload_bytes, PAYLOAD_MAX);
        let c = ok(&nest("reliability.rateLimit.windowSecs", "31536000"));
        assert_eq!(c.reliability.rate_limit.window_secs, 31_536_000);
        let c = ok(&nest("reliability.circuitBreaker.cooldownMs", "1000"));
        assert_eq!(c.reliability.circuit_breaker.cooldown_ms, 1000);
        let c = ok(&nest(
            "reliability.circuitBreaker.failureThreshold",
            "4294967295",
        ));
        assert_eq!(c.reliability.circuit_breaker.failure_threshold, u32::MAX);
        let c = ok(&nest(
            "reliability.backpressure.pressureWarningAt",
            "0.0001",
        ));
        assert!((c.reliability.backpressure.pressure_warning_at - 0.0001).abs() < f64::EPSILON);
    }

    #[test]
    fn wrong_types_are_rejected_naming_the_key() {
        for knob in KNOBS {
            let bad_values: &[&str] = match knob.kind {
                Kind::Bool => &["1", "0", "\"true\"", "null", "[]", "{}"],
                Kind::Int { .. } => &["1.5", "-1", "\"5\"", "true", "null", "[5]", "{}"],
                Kind::Num { .. } => &["\"0.5\"", "true", "null", "[0.5]"],
                Kind::Overrides => &["[]", "5", "\"a\"", "null", "true"],
                Kind::OptInt { .. } => &["1.5", "-1", "\"5\"", "true", "[5]", "{}"],
                Kind::OptStr { .. } => &["5", "true", "[]", "{}", "\"\"", "\"a b\""],
            };
            for value in bad_values {
                let message = err(&nest(knob.key, value));
                assert!(
                    message.contains(&format!(": {} must be ", knob.key)),
                    "{message}"
                );
                assert!(message.ends_with(&format!(", got {value}")), "{message}");
            }
        }
    }

    #[test]
    fn integral_floats_count_as_integers() {
        let c = ok(r#"{"reliability": {"rateLimit": {"maxPerWindow": 2.0, "windowSecs": 1e2}}}"#);
        assert_eq!(c.reliability.rate_limit.max_per_window, 2);
        assert_eq!(c.reliability.rate_limit.window_secs, 100);
        let message = err(&nest("reliability.rateLimit.maxPerWindow", "1e300"));
        assert!(
            message.contains(
                "must be an integer <= 9007199254740991 (the largest DorkOS accepts), got 1e+300"
            ),
            "{message}"
        );
    }

    #[test]
    fn non_object_sections_are_rejected_naming_the_key() {
        for (text, want) in [
            (
                r#"{"reliability": 5}"#,
                "reliability must be an object, got 5",
            ),
            (
                r#"{"reliability": null}"#,
                "reliability must be an object, got null",
            ),
            (
                r#"{"reliability": {"rateLimit": []}}"#,
                "reliability.rateLimit must be an object, got []",
            ),
            (
                r#"{"reliability": {"circuitBreaker": true}}"#,
                "reliability.circuitBreaker must be an object, got true",
            ),
            (
                r#"{"reliability": {"backpressure": "off"}}"#,
                "reliability.backpressure must be an object, got \"off\"",
            ),
        ] {
            assert_eq!(err(text), format!("config /h/config.json: {want}"));
        }
    }

    #[test]
    fn non_object_top_level_is_rejected() {
        for (text, got) in [
            ("[]", "[]"),
            ("null", "null"),
            ("\"x\"", "\"x\""),
            ("7", "7"),
        ] {
            assert_eq!(
                err(text),
                format!("config /h/config.json: the top level must be an object, got {got}")
            );
        }
    }

    #[test]
    fn long_values_are_shortened_in_messages() {
        let long = format!("[{}]", vec!["1"; 100].join(","));
        let message = err(&format!(r#"{{"reliability": {long}}}"#));
        assert!(message.ends_with("...") && message.len() < 120, "{message}");
    }

    #[test]
    fn overrides_are_validated_per_entry() {
        let key = "reliability.rateLimit.perSenderOverrides";
        assert_eq!(
            err(&nest(key, r#"{"agent.a": 0}"#)),
            format!("config /h/config.json: {key}[\"agent.a\"] must be an integer >= 1, got 0")
        );
        for value in ["1.5", "\"10\"", "-3", "null", "9007199254740992"] {
            let message = err(&nest(key, &format!(r#"{{"ci.": {value}}}"#)));
            assert!(
                message.contains(&format!("{key}[\"ci.\"] must be an integer")),
                "{message}"
            );
        }
        let c = ok(&nest(key, "{}"));
        assert!(c.reliability.rate_limit.per_sender_overrides.is_empty());
    }

    #[test]
    fn dorkos_valid_values_are_accepted() {
        // DorkOS's schema: pressureWarningAt 0..=1, any override key.
        let c = ok(&nest("reliability.backpressure.pressureWarningAt", "0"));
        assert!(c.reliability.backpressure.pressure_warning_at.abs() < f64::EPSILON);
        let key = "reliability.rateLimit.perSenderOverrides";
        let c = ok(&nest(key, r#"{"": 7}"#));
        assert_eq!(c.reliability.rate_limit.per_sender_overrides[""], 7);
        assert_eq!(c.reliability.rate_limit.limit_for("anyone"), 7);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn dorkos_safe_integers_above_relay_ceilings_are_taken_as_the_ceiling() {
        let c = ok(&nest(
            "reliability.backpressure.maxMailboxSize",
            "9007199254740991",
        ));
        assert_eq!(c.reliability.backpressure.max_mailbox_size, COUNT_MAX);
        assert_eq!(
            c.warnings,
            [
                "config /h/config.json: reliability.backpressure.maxMailboxSize is 9007199254740991, above relay's ceiling of 4294967295; relay uses 4294967295"
            ]
        );
        let key = "reliability.rateLimit.perSenderOverrides";
        let c = ok(&nest(key, r#"{"ci.": 4294967296}"#));
        assert_eq!(
            c.reliability.rate_limit.per_sender_overrides["ci."],
            COUNT_MAX
        );
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        // relay's own keys keep their ceilings.
        assert!(err(&nest("reliability.rateLimit.burst", "4294967296")).contains("<= 4294967295"));
    }

    #[test]
    fn override_keys_are_not_unknown_keys() {
        let c = ok(&nest(
            "reliability.rateLimit.perSenderOverrides",
            r#"{"anything": 3}"#,
        ));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn unknown_keys_warn_with_a_suggestion() {
        let c = ok(r#"{"reliability": {"rateLimit": {"maxPerWindw": 5, "maxPerWindow": 6}}}"#);
        assert_eq!(c.reliability.rate_limit.max_per_window, 6);
        assert_eq!(
            c.warnings,
            [
                "config /h/config.json: unknown key 'reliability.rateLimit.maxPerWindw' ignored; \
              did you mean 'reliability.rateLimit.maxPerWindow'?"
            ]
        );
    }

    #[test]
    fn unknown_keys_at_every_level_are_warnings() {
        let c = ok(
            r#"{"relability": {}, "reliability": {"ratelimit": {}, "backpressure":
            {"enable": false, "colour": "red"}}, "zzz": [1]}"#,
        );
        assert_eq!(c.reliability, Reliability::default());
        assert_eq!(
            c.warnings,
            [
                "config /h/config.json: unknown key 'relability' ignored; did you mean 'reliability'?",
                "config /h/config.json: unknown key 'reliability.ratelimit' ignored; \
                 did you mean 'reliability.rateLimit'?",
                "config /h/config.json: unknown key 'reliability.backpressure.enable' ignored; \
                 did you mean 'reliability.backpressure.enabled'?",
                "config /h/config.json: unknown key 'reliability.backpressure.colour' ignored",
                "config /h/config.json: unknown key 'zzz' ignored",
            ]
        );
    }

    #[test]
    fn misplaced_keys_suggest_their_home() {
        let c = ok(
            r#"{"rateLimit": {"maxPerWindow": 1}, "reliability": {"maxMailboxSize": 3},
            "enabled": false}"#,
        );
        assert_eq!(c.reliability, Reliability::default());
        assert_eq!(
            c.warnings,
            [
                "config /h/config.json: unknown key 'rateLimit' ignored; did you mean 'reliability.rateLimit'?",
                "config /h/config.json: unknown key 'reliability.maxMailboxSize' ignored; \
                 did you mean 'reliability.backpressure.maxMailboxSize'?",
                // `enabled` lives in three sections: no single guess.
                "config /h/config.json: unknown key 'enabled' ignored",
            ]
        );
    }

    #[test]
    fn dotted_names_are_not_paths() {
        let c = ok(r#"{"reliability.rateLimit": {"maxPerWindow": 1}, "a.b": 1}"#);
        assert_eq!(c.reliability, Reliability::default());
        assert_eq!(
            c.warnings,
            [
                "config /h/config.json: unknown key 'reliability.rateLimit' ignored; \
                 nest it as objects, not as one dotted name",
                "config /h/config.json: unknown key 'a.b' ignored",
            ]
        );
    }

    #[test]
    fn invalid_json_names_line_and_column() {
        let message = err("{\n  \"reliability\": {\n    rateLimit: {}\n  }\n}\n");
        assert!(
            message.starts_with(
                "config /h/config.json: invalid JSON at line 3 column 5: key must be a string"
            ),
            "{message}"
        );
        assert!(message.ends_with("; fix or remove the file"), "{message}");
        assert!(
            !message.contains("at line 3 column 5;"),
            "position given twice: {message}"
        );

        let message = err("{} {}");
        assert!(
            message.contains("invalid JSON at line 1 column 4: trailing characters"),
            "{message}"
        );
        let message = err(r#"{"maxPayloadBytes": 1,}"#);
        assert!(
            message.contains("invalid JSON at line 1 column"),
            "{message}"
        );
    }

    #[test]
    fn limit_for_uses_the_longest_matching_prefix() {
        let rl = RateLimit {
            per_sender_overrides: [
                ("ci.".to_owned(), 50),
                ("ci.bot.".to_owned(), 500),
                ("c".to_owned(), 7),
            ]
            .into_iter()
            .collect(),
            ..RateLimit::default()
        };
        assert_eq!(rl.limit_for("ci.bot.deploy"), 500);
        assert_eq!(rl.limit_for("ci.bot."), 500);
        assert_eq!(rl.limit_for("ci.lint"), 50);
        assert_eq!(rl.limit_for("ci"), 7);
        assert_eq!(rl.limit_for("cron"), 7);
        assert_eq!(rl.limit_for("agent.a"), 100);
        assert_eq!(rl.limit_for(""), 100);
        assert_eq!(RateLimit::default().limit_for("anyone"), 100);
    }

    #[test]
    fn knobs_lists_every_key_once() {
        let keys: Vec<&str> = knobs().collect();
        assert_eq!(keys.len(), 32);
        assert!(keys.contains(&"reliability.rateLimit.maxPerWindow"));
        assert!(keys.contains(&"maxPayloadBytes"));
        let mut unique = keys.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), keys.len());
    }

    #[test]
    fn table_defaults_are_valid_and_round_trip() {
        let defaults = Config::default();
        for knob in KNOBS {
            let json = knob.default.to_json();
            assert_eq!(
                knob.kind.read(knob.key, &json),
                Ok(knob.default.clone()),
                "{}",
                knob.key
            );
            assert_eq!(defaults.get(knob.key), Some(json), "{}", knob.key);
            // Writing the default into a file changes nothing.
            assert_eq!(
                ok(&nest(knob.key, &knob.default.to_json().to_string())),
                defaults
            );
        }
    }

    #[test]
    fn every_field_has_a_knob() {
        // Each knob, set to a value unlike its default, changes what `get`
        // reports for it and for no other knob: so no two knobs share a
        // field and `Config::default` leaves no placeholder behind.
        for knob in KNOBS {
            let other = match knob.kind {
                Kind::Bool => Value::Bool(!knob.default.clone().bool()),
                Kind::Int { max, .. } => Value::Int(max),
                Kind::Num { .. } => Value::Num(0.5),
                Kind::Overrides => Value::Map([("x.".to_owned(), 3)].into_iter().collect()),
                Kind::OptInt { max, .. } => Value::OptInt(Some(max)),
                Kind::OptStr { .. } => Value::OptStr(Some("x".into())),
            };
            assert_ne!(other, knob.default, "{}", knob.key);
            let mut config = Config::default();
            (knob.set)(&mut config, other.clone());
            for each in KNOBS {
                let want = if each.key == knob.key {
                    &other
                } else {
                    &each.default
                };
                assert_eq!(
                    &(each.get)(&config),
                    want,
                    "set {} then get {}",
                    knob.key,
                    each.key
                );
            }
        }
        assert_eq!(Config::default().get("nope"), None);
    }

    #[test]
    fn load_missing_file_yields_defaults() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            load(&dir.path().join(FILE_NAME)).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn load_reads_the_file_and_names_it_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(
            &path,
            r#"{"reliability": {"backpressure": {"maxMailboxSize": 5}}}"#,
        )
        .unwrap();
        assert_eq!(
            load(&path)
                .unwrap()
                .reliability
                .backpressure
                .max_mailbox_size,
            5
        );

        std::fs::write(&path, "{\n").unwrap();
        let e = load(&path).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::code::CONFIG);
        assert!(
            e.to_string().starts_with(&format!(
                "config {}: invalid JSON at line 2",
                path.display()
            )),
            "{e}"
        );
    }

    #[test]
    fn load_rejects_invalid_utf8_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, b"{\"a\": \"\xff\"}").unwrap();
        let e = load(&path).unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "config {}: not valid UTF-8 (bad byte at offset 7); fix or remove the file",
                path.display()
            )
        );
    }

    #[test]
    fn load_reports_other_read_errors_as_io() {
        let dir = tempfile::tempdir().unwrap();
        // Reading a directory fails with something other than NotFound.
        let e = load(dir.path()).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        assert_eq!(e.exit_code(), crate::error::code::IOERR);
        assert!(
            e.to_string()
                .starts_with(&format!("cannot read config {}: ", dir.path().display())),
            "{e}"
        );
    }

    #[test]
    fn edit_distance_counts_characters() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("maxperwindw", "maxperwindow"), 1);
        assert_eq!(edit_distance("é", "e"), 1);
    }
}
