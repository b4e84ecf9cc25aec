//! config.json: the knob table, parsing, validation and defaults.
//!
//! Every key is declared once, as one row of the knob table (`KNOBS`): its
//! dotted path, what it accepts, its default, whether DorkOS defines it, what
//! it means and the field it sets. Parsing, validation, defaults, `relay
//! config get/set`, the README's table of keys ([`markdown_table`]) and the
//! man pages' CONFIGURATION section ([`crate::generate::man_pages`]) all come
//! from that table, so they cannot disagree.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value as Json;

use crate::error::{Error, Result};

/// The name of the configuration file inside `$RELAY_HOME`.
pub const FILE_NAME: &str = crate::home::CONFIG_FILE;

/// Upper bound of count-like knobs and of the `u32` fields: past it a value
/// is nonsense, and callers may rely on it fitting in a `u32`.
const COUNT_MAX: u64 = u32::MAX as u64;
/// Upper bound of durations: a year.
const YEAR_SECS: u64 = 365 * 86_400;
/// Upper bound of `maxPayloadBytes`: 64 MiB.
const PAYLOAD_MAX: u64 = 64 * 1024 * 1024;
/// Longest rendering of an offending value in a message.
const SHOW_MAX: usize = 40;

/// The validated configuration: each field is one knob of the table (named
/// in its doc), and lies within that knob's range.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `maxPayloadBytes`
    pub max_payload_bytes: u64,
    /// `reliability`, the section DorkOS defines.
    pub reliability: Reliability,
    /// `idempotency.windowSecs`
    pub idempotency_window_secs: u64,
    /// `retention.days`
    pub retention_days: u64,
    /// `retention.tmpMaxAgeSecs`
    pub tmp_max_age_secs: u64,
    /// `index.journalMaxBytes`
    pub journal_max_bytes: u64,
    /// `delivery`
    pub delivery: Delivery,
    /// `locks.timeoutMs` (`RELAY_LOCK_TIMEOUT_MS` overrides it)
    pub lock_timeout_ms: u64,
    /// `bridge`
    pub bridge: Bridge,
    /// problems that are not fatal (unknown keys), one human line each
    pub warnings: Vec<String>,
}

/// `bridge`: how `relay bridge` joins this home to others over NATS.
#[derive(Debug, Clone, PartialEq)]
pub struct Bridge {
    /// `bridge.url`
    pub url: Option<String>,
    /// `bridge.host`
    pub host: Option<String>,
    /// `bridge.replicas`
    pub replicas: Option<usize>,
    /// `bridge.dedupWindowMs`
    pub dedup_window_ms: u64,
    /// `bridge.maxDeliveries`
    pub max_deliveries: u32,
    /// `bridge.heartbeatMs`
    pub heartbeat_ms: u64,
}

/// `delivery`: how long a claim is held and how often it is handed out.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// `delivery.leaseSecs`
    pub lease_secs: u64,
    /// `delivery.maxDeliveries`
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
    /// `enabled`
    pub enabled: bool,
    /// `windowSecs`
    pub window_secs: u64,
    /// `maxPerWindow`
    pub max_per_window: u64,
    /// `perSenderOverrides`; see [`RateLimit::limit_for`].
    pub per_sender_overrides: BTreeMap<String, u64>,
    /// `burst`; `None` = the sender's window limit.
    pub burst: Option<u64>,
    /// `softLimitRatio`
    pub soft_limit_ratio: f64,
}

/// `reliability.circuitBreaker`: per-endpoint breaker thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitBreaker {
    /// `enabled`
    pub enabled: bool,
    /// `failureThreshold`
    pub failure_threshold: u32,
    /// `cooldownMs`
    pub cooldown_ms: u64,
    /// `halfOpenProbeCount`
    pub half_open_probe_count: u32,
    /// `successToClose`
    pub success_to_close: u32,
    /// `cooldownBackoff`
    pub cooldown_backoff: f64,
    /// `maxCooldownMs` (never below `cooldown_ms`)
    pub max_cooldown_ms: u64,
}

/// `reliability.backpressure`: per-endpoint mailbox capacity.
#[derive(Debug, Clone, PartialEq)]
pub struct Backpressure {
    /// `enabled`
    pub enabled: bool,
    /// `maxMailboxSize`
    pub max_mailbox_size: u64,
    /// `pressureWarningAt`
    pub pressure_warning_at: f64,
    /// `shedLowAt`
    pub shed_low_at: f64,
    /// `shedBackgroundAt` (never above `shed_low_at`)
    pub shed_background_at: f64,
    /// `priorityHeadroom`
    pub priority_headroom: f64,
}

/// One configuration key: everything about it lives in this row.
struct Knob {
    /// Dotted path of JSON object keys, e.g. `reliability.rateLimit.enabled`.
    key: &'static str,
    kind: Kind,
    default: Value,
    /// Who defines the key.
    origin: Origin,
    /// What it means, for the README and the man pages; what it accepts
    /// and its default are rendered from `kind` and `default`.
    about: &'static str,
    get: fn(&Config) -> Value,
    /// Only ever given a value that `kind` produced.
    set: fn(&mut Config, Value),
}

/// Who defines a knob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// DorkOS's `ReliabilityConfigSchema` (dorkos-contract.md section 6):
    /// relay accepts exactly what DorkOS accepts.
    DorkOs,
    /// relay's own key.
    Relay,
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

/// An integer in `min..=max`.
const fn int(min: u64, max: u64) -> Kind {
    Kind::Int { min, max }
}

/// A number in `min..=max`.
const fn num(min: f64, max: f64) -> Kind {
    Kind::Num {
        min,
        min_inclusive: true,
        max,
    }
}

/// A fraction of something: `0 < x <= 1`.
const RATIO: Kind = Kind::Num {
    min: 0.0,
    min_inclusive: false,
    max: 1.0,
};

/// A count: `1..=COUNT_MAX`.
const COUNT: Kind = int(1, COUNT_MAX);

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

/// A `Config` field's type, as a knob [`Value`].
trait Field: Sized {
    fn to_value(&self) -> Value;
    /// Only ever given the variant `to_value` makes.
    fn from_value(v: Value) -> Self;
}

impl Field for bool {
    fn to_value(&self) -> Value {
        Value::Bool(*self)
    }
    fn from_value(v: Value) -> Self {
        matches!(v, Value::Bool(true))
    }
}

impl Field for u64 {
    fn to_value(&self) -> Value {
        Value::Int(*self)
    }
    fn from_value(v: Value) -> Self {
        match v {
            Value::Int(n) => n,
            _ => 0,
        }
    }
}

impl Field for u32 {
    fn to_value(&self) -> Value {
        Value::Int(u64::from(*self))
    }
    /// Knobs of `u32` fields have `max <= COUNT_MAX`, so nothing saturates.
    fn from_value(v: Value) -> Self {
        u32::try_from(u64::from_value(v)).unwrap_or(u32::MAX)
    }
}

impl Field for f64 {
    fn to_value(&self) -> Value {
        Value::Num(*self)
    }
    fn from_value(v: Value) -> Self {
        match v {
            Value::Num(x) => x,
            _ => 0.0,
        }
    }
}

impl Field for BTreeMap<String, u64> {
    fn to_value(&self) -> Value {
        Value::Map(self.clone())
    }
    fn from_value(v: Value) -> Self {
        match v {
            Value::Map(m) => m,
            _ => BTreeMap::new(),
        }
    }
}

impl Field for Option<u64> {
    fn to_value(&self) -> Value {
        Value::OptInt(*self)
    }
    fn from_value(v: Value) -> Self {
        match v {
            Value::OptInt(n) => n,
            _ => None,
        }
    }
}

impl Field for Option<usize> {
    fn to_value(&self) -> Value {
        Value::OptInt(self.map(|n| n as u64))
    }
    /// Knobs of `usize` fields have small maxima, so nothing saturates.
    fn from_value(v: Value) -> Self {
        Option::<u64>::from_value(v).map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }
}

impl Field for Option<String> {
    fn to_value(&self) -> Value {
        Value::OptStr(self.clone())
    }
    fn from_value(v: Value) -> Self {
        match v {
            Value::OptStr(s) => s,
            _ => None,
        }
    }
}

/// One row of [`KNOBS`].
macro_rules! knob {
    ($key:literal, $kind:expr, $default:expr, $origin:ident, $($field:ident).+, $about:literal $(,)?) => {
        Knob {
            key: $key,
            kind: $kind,
            default: $default,
            origin: Origin::$origin,
            about: $about,
            get: |c| Field::to_value(&c.$($field).+),
            set: |c, v| c.$($field).+ = Field::from_value(v),
        }
    };
}

/// Every knob, in the order `relay config show` and the docs list them:
/// `knob! { key, kind, default, origin, field, about }`, where `field` is
/// the path of the `Config` field it sets.
#[rustfmt::skip]
static KNOBS: &[Knob] = &[
    knob! { "maxPayloadBytes", int(1, PAYLOAD_MAX), Value::Int(1_048_576), Relay, max_payload_bytes,
        "Largest payload a message may carry, in bytes (64 MiB at most); a larger one is refused \
         with exit 65." },
    knob! { "idempotency.windowSecs", int(1, YEAR_SECS), Value::Int(86_400), Relay, idempotency_window_secs,
        "How long, in seconds, a `send --idempotency-key` is remembered: the same key again within \
         it is the first message again." },
    knob! { "retention.days", int(1, 3650), Value::Int(7), Relay, retention_days,
        "Age in days after which `relay gc` prunes finished index rows and events." },
    knob! { "retention.tmpMaxAgeSecs", int(60, YEAR_SECS), Value::Int(3600), Relay, tmp_max_age_secs,
        "Age in seconds after which `relay gc` deletes files a crashed writer left in a mailbox's \
         `tmp/`." },
    knob! { "index.journalMaxBytes", int(64 << 10, 1 << 30), Value::Int(16 << 20), Relay, journal_max_bytes,
        "Size in bytes past which a send moves the journal into `relay.db` itself, so the journal \
         stays bounded when only sends run." },
    knob! { "delivery.leaseSecs", int(1, YEAR_SECS), Value::Int(1800), Relay, delivery.lease_secs,
        "Lease in seconds of a claim made without `recv --lease` (and of a claim the index does not \
         know, counted from its rename into `cur/`): when it runs out, the message is handed out \
         again. 30 minutes, as DorkOS." },
    knob! { "delivery.maxDeliveries", int(1, 1000), Value::Int(5), Relay, delivery.max_deliveries,
        "Claims whose lease may run out before the message is dead-lettered as `max_deliveries`." },
    knob! { "bridge.url", NATS_URL, Value::OptStr(None), Relay, bridge.url,
        "The NATS server of `relay bridge` when neither `--nats` nor `RELAY_NATS_URL` gives one; \
         null means `nats://127.0.0.1:4222`." },
    knob! { "bridge.host", HOST, Value::OptStr(None), Relay, bridge.host,
        "This host's name in `relay bridge` when `--host` does not give it (one or the other is \
         needed)." },
    knob! { "bridge.replicas", Kind::OptInt { min: 1, max: 5 }, Value::OptInt(None), Relay, bridge.replicas,
        "Replicas of the bridge's stream and bucket when `--replicas` does not give them (3 on a \
         three-node cluster); null means 1." },
    knob! { "bridge.dedupWindowMs", int(1000, 86_400_000), Value::Int(120_000), Relay, bridge.dedup_window_ms,
        "JetStream's duplicate window for the bridge's stream, in milliseconds (2 minutes, \
         JetStream's default)." },
    knob! { "bridge.maxDeliveries", int(1, 1000), Value::Int(100), Relay, bridge.max_deliveries,
        "Temporary refusals of one forwarded message before the bridge dead-letters it as \
         `max_deliveries`." },
    knob! { "bridge.heartbeatMs", int(100, 3_600_000), Value::Int(5000), Relay, bridge.heartbeat_ms,
        "How often, in milliseconds, the bridge puts this host's directory entry again (its \
         heartbeat). A host whose entry goes unrefreshed for three of its heartbeats, by the NATS \
         server's clock, is gone for the other hosts: its endpoints leave their `relay endpoints` \
         until it refreshes again." },
    knob! { "locks.timeoutMs", int(1, 3_600_000), Value::Int(crate::lockwait::DEFAULT_MS), Relay, lock_timeout_ms,
        "How long, in milliseconds, a command waits for a lock another process holds (a mailbox, \
         the state, the index, ...) before it gives up with exit 75; `RELAY_LOCK_TIMEOUT_MS` \
         overrides it." },
    knob! { "reliability.rateLimit.enabled", Kind::Bool, Value::Bool(true), DorkOs,
        reliability.rate_limit.enabled,
        "Whether per-sender rate limits are enforced." },
    knob! { "reliability.rateLimit.windowSecs", int(1, YEAR_SECS), Value::Int(60), DorkOs,
        reliability.rate_limit.window_secs,
        "The rate-limit window, in seconds: a sender's bucket refills `maxPerWindow` tokens per \
         window." },
    knob! { "reliability.rateLimit.maxPerWindow", COUNT, Value::Int(100), DorkOs,
        reliability.rate_limit.max_per_window,
        "Messages a sender may send per window: its bucket's capacity, unless `burst` is set." },
    knob! { "reliability.rateLimit.burst", Kind::OptInt { min: 1, max: COUNT_MAX }, Value::OptInt(None), Relay,
        reliability.rate_limit.burst,
        "A bucket capacity overriding the sender's `maxPerWindow` (the refill rate stays the same); \
         null means none." },
    knob! { "reliability.rateLimit.softLimitRatio", RATIO, Value::Num(0.8), Relay,
        reliability.rate_limit.soft_limit_ratio,
        "Fraction of the bucket in use at which a send is accepted with a warning." },
    // DorkOS defaults to `{"agent:": 2000}`, which can never match a
    // subject-shaped sender (dorkos-contract.md section 6).
    knob! { "reliability.rateLimit.perSenderOverrides", Kind::Overrides, Value::Map(BTreeMap::new()), DorkOs,
        reliability.rate_limit.per_sender_overrides,
        "Sender prefix -> messages per window, by longest matching prefix; prefixes match \
         characters (`agent` matches `agents.x` too, `\"\"` every sender). Empty, unlike DorkOS, \
         whose `{\"agent:\": 2000}` matches no subject." },
    knob! { "reliability.circuitBreaker.enabled", Kind::Bool, Value::Bool(true), DorkOs,
        reliability.circuit_breaker.enabled,
        "Whether per-(sender, endpoint) circuit breakers are consulted." },
    knob! { "reliability.circuitBreaker.failureThreshold", COUNT, Value::Int(5), DorkOs,
        reliability.circuit_breaker.failure_threshold,
        "Consecutive failures (a nack, a lease run out, a delivery I/O error) that open a closed \
         breaker." },
    knob! { "reliability.circuitBreaker.cooldownMs", int(1000, YEAR_SECS * 1000), Value::Int(30_000), DorkOs,
        reliability.circuit_breaker.cooldown_ms,
        "How long an open breaker refuses sends, in milliseconds, before it half-opens." },
    knob! { "reliability.circuitBreaker.halfOpenProbeCount", COUNT, Value::Int(1), DorkOs,
        reliability.circuit_breaker.half_open_probe_count,
        "Probe messages a half-open breaker lets through." },
    knob! { "reliability.circuitBreaker.successToClose", COUNT, Value::Int(2), DorkOs,
        reliability.circuit_breaker.success_to_close,
        "Acked probes that close a half-open breaker; a failed probe reopens it." },
    knob! { "reliability.circuitBreaker.cooldownBackoff", num(1.0, 10.0), Value::Num(1.0), Relay,
        reliability.circuit_breaker.cooldown_backoff,
        "Factor by which the cooldown grows per repeated trip (1 keeps it constant)." },
    knob! { "reliability.circuitBreaker.maxCooldownMs", int(1000, YEAR_SECS * 1000), Value::Int(300_000), Relay,
        reliability.circuit_breaker.max_cooldown_ms,
        "Ceiling of the grown cooldown, in milliseconds; must be at least `cooldownMs` (when only \
         `cooldownMs` is set above it, it follows)." },
    knob! { "reliability.backpressure.enabled", Kind::Bool, Value::Bool(true), DorkOs,
        reliability.backpressure.enabled,
        "Whether mailbox depth is checked." },
    knob! { "reliability.backpressure.maxMailboxSize", COUNT, Value::Int(1000), DorkOs,
        reliability.backpressure.max_mailbox_size,
        "Messages in an endpoint's `new/` and `cur/` at which sends to it are refused with exit 75." },
    // DorkOS: a number in 0..=1 (0 warns on every send).
    knob! { "reliability.backpressure.pressureWarningAt", num(0.0, 1.0), Value::Num(0.8), DorkOs,
        reliability.backpressure.pressure_warning_at,
        "Fraction of `maxMailboxSize` at which a send is accepted with a warning (0 warns on every \
         send)." },
    knob! { "reliability.backpressure.shedLowAt", RATIO, Value::Num(0.9), Relay,
        reliability.backpressure.shed_low_at,
        "Fraction of capacity at which `low` priority sends are refused." },
    knob! { "reliability.backpressure.shedBackgroundAt", RATIO, Value::Num(0.75), Relay,
        reliability.backpressure.shed_background_at,
        "Fraction of capacity at which `background` priority sends are refused; at most \
         `shedLowAt`." },
    knob! { "reliability.backpressure.priorityHeadroom", num(0.0, 1.0), Value::Num(0.1), Relay,
        reliability.backpressure.priority_headroom,
        "Room above capacity, as a fraction of it, for `critical` sends (all of it) and `high` ones \
         (half of it)." },
];

/// `bridge.url`: one URL, or several comma-separated.
const NATS_URL: Kind = Kind::OptStr {
    check: |s| {
        !s.is_empty() && s.len() <= 4096 && !s.chars().any(|c| c.is_whitespace() || c.is_control())
    },
    expected: "a NATS URL such as \"nats://127.0.0.1:4222\" (comma-separated for a cluster)",
};

/// `bridge.host`.
const HOST: Kind = Kind::OptStr {
    check: |s| crate::bridge::wire::validate_host(s).is_ok(),
    expected: "a host name of 1 to 64 letters, digits, '-' or '_'",
};

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

/// A knob as the docs describe it.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    /// The dotted key.
    pub key: &'static str,
    /// What it accepts, in the words of the message that refuses anything else.
    pub accepts: String,
    /// The default, as JSON text.
    pub default: String,
    /// Whether DorkOS defines it (else it is relay's own).
    pub dorkos: bool,
    /// What it means.
    pub about: &'static str,
}

/// Every knob's docs, in table order: the README's table and the man pages'
/// CONFIGURATION section are rendered from these.
pub fn docs() -> impl Iterator<Item = Doc> {
    KNOBS.iter().map(|k| Doc {
        key: k.key,
        accepts: k.kind.accepts(),
        default: k.default.to_json().to_string(),
        dorkos: k.origin == Origin::DorkOs,
        about: k.about,
    })
}

/// The README's table of configuration keys (Markdown), as generated.
#[must_use]
pub fn markdown_table() -> String {
    let mut out =
        String::from("| key | default | accepts | defined by | meaning |\n|---|---|---|---|---|\n");
    for d in docs() {
        out.push_str(&format!(
            "| `{}` | `{}` | {} | {} | {} |\n",
            d.key,
            d.default,
            d.accepts.replace('|', "\\|"),
            if d.dorkos { "DorkOS" } else { "relay" },
            d.about.replace('|', "\\|"),
        ));
    }
    out
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
                heartbeat_ms: 0,
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
            let value = if knob.origin == Origin::DorkOs {
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
    /// What the knob accepts, in the words of the message that refuses a
    /// value of the wrong type (an integer's says only the bound it misses).
    fn accepts(self) -> String {
        match self {
            Kind::Bool => "true or false".into(),
            Kind::Int { min, max } => format!("an integer >= {min} and <= {max}"),
            Kind::Num {
                min,
                min_inclusive,
                max,
            } => {
                let op = if min_inclusive { ">=" } else { ">" };
                format!("a number {op} {min} and <= {max}")
            }
            Kind::OptInt { min, max } => format!("an integer >= {min} and <= {max} (or null)"),
            Kind::OptStr { expected, .. } => format!("{expected} (or null)"),
            Kind::Overrides => {
                format!("an object of sender prefix -> integer >= 1 and <= {COUNT_MAX}")
            }
        }
    }

    /// Validates `v` for the knob at `key`; the error is the message after
    /// `config FILE: `.
    fn read(self, key: &str, v: &Json) -> std::result::Result<Value, String> {
        let bad = |expected: String| format!("{key} must be {expected}, got {}", show(v));
        match self {
            Kind::Bool => v
                .as_bool()
                .map(Value::Bool)
                .ok_or_else(|| bad(self.accepts())),
            Kind::Int { min, max } => read_int(v, min, max).map(Value::Int).map_err(bad),
            Kind::Num {
                min,
                min_inclusive,
                max,
            } => v
                .as_f64()
                .filter(|x| (*x > min || (min_inclusive && *x == min)) && *x <= max)
                .map(Value::Num)
                .ok_or_else(|| bad(self.accepts())),
            Kind::OptInt { .. } if v.is_null() => Ok(Value::OptInt(None)),
            Kind::OptInt { min, max } => read_int(v, min, max)
                .map(|n| Value::OptInt(Some(n)))
                .map_err(|e| bad(format!("{e} (or null)"))),
            Kind::OptStr { .. } if v.is_null() => Ok(Value::OptStr(None)),
            Kind::OptStr { check, .. } => v
                .as_str()
                .filter(|s| check(s))
                .map(|s| Value::OptStr(Some(s.to_string())))
                .ok_or_else(|| bad(self.accepts())),
            Kind::Overrides => {
                let Json::Object(object) = v else {
                    return Err(bad(self.accepts()));
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
        assert_eq!(keys.len(), 33);
        assert!(keys.contains(&"reliability.rateLimit.maxPerWindow"));
        assert!(keys.contains(&"maxPayloadBytes"));
        let mut unique = keys.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), keys.len());
    }

    #[test]
    fn dorkos_keys_are_those_of_its_schema() {
        // ReliabilityConfigSchema, dorkos-contract.md section 6.
        let dorkos: Vec<&str> = docs().filter(|d| d.dorkos).map(|d| d.key).collect();
        assert_eq!(
            dorkos,
            [
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
            ]
        );
        // Only they take DorkOS's integers above relay's ceilings.
        for knob in KNOBS {
            if let Kind::Int { max, .. } = knob.kind
                && max < MAX_SAFE_INTEGER
            {
                let over = (max + 1).to_string();
                let parsed = parse(&nest(knob.key, &over), ORIGIN);
                assert_eq!(
                    parsed.is_ok(),
                    knob.origin == Origin::DorkOs,
                    "{}",
                    knob.key
                );
            }
        }
    }

    #[test]
    fn docs_say_what_validation_accepts() {
        for knob in KNOBS {
            let doc = docs().find(|d| d.key == knob.key).unwrap();
            assert!(
                doc.about.ends_with('.') && doc.about.len() > 20,
                "{}",
                knob.key
            );
            assert_eq!(doc.default, knob.default.to_json().to_string());
            // A value of the wrong type is refused in the docs' words, and
            // each bound of an integer is the one its refusal names.
            match knob.kind {
                Kind::Int { min, max } | Kind::OptInt { min, max } => {
                    if min > 0 {
                        let message = err(&nest(knob.key, &(min - 1).to_string()));
                        assert!(
                            message.contains(&format!("an integer >= {min}")),
                            "{message}"
                        );
                    }
                    assert!(doc.accepts.contains(&format!(">= {min} and <= {max}")));
                    if knob.origin == Origin::Relay {
                        let message = err(&nest(knob.key, &(max + 1).to_string()));
                        assert!(
                            message.contains(&format!("an integer <= {max}")),
                            "{message}"
                        );
                    }
                }
                _ => {
                    let message = err(&nest(knob.key, "[true]"));
                    assert!(
                        message.ends_with(&format!(
                            "{} must be {}, got [true]",
                            knob.key, doc.accepts
                        )),
                        "{message}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_lock_timeout_variable_names_its_knob_default() {
        assert_eq!(
            crate::envvars::LOCK_TIMEOUT_MS.default,
            format!("locks.timeoutMs ({})", Config::default().lock_timeout_ms)
        );
    }

    #[test]
    fn markdown_table_has_one_row_per_knob() {
        let table = markdown_table();
        assert_eq!(table.lines().count(), KNOBS.len() + 2);
        for knob in KNOBS {
            assert!(
                table.contains(&format!("| `{}` |", knob.key)),
                "{}",
                knob.key
            );
        }
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
                Kind::Bool => Value::Bool(!bool::from_value(knob.default.clone())),
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
