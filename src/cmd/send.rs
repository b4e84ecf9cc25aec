//! `relay send`: validate, build the envelope, and hand it to the pipeline
//! (fan-out, reliability checks, durable delivery); `--batch` does the same
//! for every NDJSON line on stdin with one group commit per chunk.

use std::io::{BufRead, IsTerminal, Read};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::access;
use crate::cli::SendArgs;
use crate::context::Ctx;
use crate::envelope::{Budget, Envelope};
use crate::error::{Error, Result};
use crate::maildir::{self, Mailbox};
use crate::notice;
use crate::output;
use crate::pipeline::{self, Delivery, Durability, Fate, Job};
use crate::pressure::Priority;
use crate::reliability::{self, RateOutcome};
use crate::store::batchlog;
use crate::store::journal::Outbox;
use crate::store::rows::SentRow;
use crate::store::state::Slots;
use crate::subject;
use crate::vocab::Code;

/// Longest accepted trace id.
const MAX_TRACE_ID: usize = 128;
/// The job index of a blank `--batch` line (text mode answers it with a
/// blank line).
const BLANK: usize = usize::MAX;
/// Lines processed per transaction and group commit in `--batch`.
const BATCH_CHUNK: usize = 5000;

/// An endpoint the message did not reach.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Rejection {
    endpoint: String,
    code: Code,
    reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
    dead_lettered: bool,
}

/// `--json` result of a send.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SendReport<'a> {
    id: &'a str,
    trace_id: &'a str,
    subject: &'a str,
    priority: &'a str,
    delivered_to: Vec<String>,
    rejected: Vec<Rejection>,
    warnings: Vec<String>,
}

/// One message to send, from the command line or a `--batch` line.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Request {
    subject: String,
    payload: Value,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    reply_to: Option<String>,
    /// Milliseconds, or a duration string such as "30s".
    #[serde(default)]
    ttl: Option<Value>,
    #[serde(default)]
    max_hops: Option<u32>,
    #[serde(default)]
    trace_id: Option<String>,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
    /// A parent's spent budget to continue from.
    #[serde(default)]
    budget: Option<Budget>,
    /// Warnings found while reading it (a payload that looks like JSON but
    /// is not); never read from a batch line.
    #[serde(skip)]
    warnings: Vec<String>,
}

/// Runs `relay send`.
pub fn run(ctx: &mut Ctx, args: &SendArgs) -> Result<()> {
    if args.batch {
        return batch(ctx, args);
    }
    let subject = args.subject.clone().unwrap_or_default();
    // Everything the user gave is checked before anything is written.
    subject::validate_pattern(&subject, "subject")?;
    let parent = read_parent(args)?;
    let (payload, warning) = read_payload(args, ctx.config.max_payload_bytes)?;
    let req = Request {
        warnings: warning.into_iter().collect(),
        subject,
        payload,
        from: None,
        reply_to: args.reply_to.clone(),
        ttl: None,
        max_hops: None,
        trace_id: args.trace_id.clone().or(parent.trace_id),
        priority: None,
        idempotency_key: args.idempotency_key.clone(),
        budget: parent.budget,
    };
    let line = send_retrying(ctx, args, req)?;
    print_result(ctx, &line)
}

/// Refuses flags that do not go together (before the home is touched):
/// `--batch` with `--retry`, with what to do instead.
pub fn refuse_flags(args: &SendArgs) -> Result<()> {
    if args.batch && args.retry > 0 {
        return Err(Error::Usage(RETRY_BATCH.into()));
    }
    Ok(())
}

/// Why `send --batch` takes no `--retry`, and what to do instead.
const RETRY_BATCH: &str = "--retry does not apply to send --batch: a batch reports each line refused for now (`error 75: ...`, with --json {\"line\", \"error\"} of code 75) and goes on with the next; leave out --retry, then send the refused lines again (another send --batch), or one by one with relay send SUBJECT PAYLOAD --retry N";

/// `send_single`, tried again after each temporary refusal (75) as
/// `--retry N` asks: after the refusal's retry-after (1 s if it names
/// none) plus 0-10% jitter, at most `--retry-max-wait`.
fn send_retrying(ctx: &mut Ctx, args: &SendArgs, mut req: Request) -> Result<Line> {
    let mut retries = 0;
    loop {
        let e = match send_single(ctx, args, req.clone()) {
            Err(e) => e,
            done => return done,
        };
        let Some((wait, note)) = retry_wait(&e, &mut retries, args.retry, args.retry_max_wait)
        else {
            return Err(e);
        };
        // People see each retry as it happens; programs find them in the
        // report's warnings.
        if ctx.json {
            req.warnings.push(note);
        } else {
            output::warn(&note);
        }
        ctx.clock.sleep(wait);
    }
}

/// The wait before trying again after `e`, as `--retry times` (each wait
/// at most `max_wait`) asks, and the sentence that reports it; counts the
/// retry in `retries`. `None` when `e` is not a temporary refusal (75) or
/// the retries are spent. The wait is the refusal's retry-after (1 s if it
/// names none) plus 0-10% jitter.
pub fn retry_wait(
    e: &Error,
    retries: &mut u32,
    times: u32,
    max_wait: std::time::Duration,
) -> Option<(std::time::Duration, String)> {
    if e.exit_code() != crate::error::code::TEMPFAIL || *retries >= times {
        return None;
    }
    *retries += 1;
    let base = e.retry_after_ms().unwrap_or(1000);
    let wait =
        std::time::Duration::from_millis(base.saturating_add(jitter(base / 10))).min(max_wait);
    let note = format!(
        "{e}; retry {} of {times} in {}",
        *retries,
        crate::clock::human_ms(crate::clock::ms(wait))
    );
    Some((wait, note))
}

/// A random number of milliseconds in `0..=max` (spreads retrying senders).
fn jitter(max: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    if max == 0 {
        return 0;
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() % (max + 1)
}

/// One message to send from library code (`relay request`, the MCP
/// server): the same checks, limits and delivery as `relay send`.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Subject or pattern.
    pub subject: String,
    /// The payload, as JSON.
    pub payload: Value,
    /// The sender.
    pub from: String,
    /// Where replies and failure notices go.
    pub reply_to: Option<String>,
    /// Time to live [default: 1 h, or the budget's].
    pub ttl: Option<std::time::Duration>,
    /// Hop ceiling [default: 5, or the budget's].
    pub max_hops: Option<u32>,
    /// Trace to join [default: the message id].
    pub trace_id: Option<String>,
    /// Priority lane.
    pub priority: Priority,
    /// A spent budget to continue from.
    pub budget: Option<Budget>,
}

/// A send that reached at least one endpoint.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The message id (the original's, for an idempotent repeat).
    pub id: String,
    /// The `--json` report of `relay send` (`id`, `traceId`, `deliveredTo`,
    /// `rejected`, `warnings`, ...).
    pub report: Value,
    /// Warnings for the sender (soft limits, partial refusals).
    pub warnings: Vec<String>,
}

/// Sends one message as `relay send` does (access rules, rate limits,
/// breakers, backpressure, durable delivery, failure notices); a send no
/// endpoint took is the error `relay send` exits with.
pub fn send_message(ctx: &mut Ctx, msg: Outgoing) -> Result<Sent> {
    subject::validate_pattern(&msg.subject, "subject")?;
    let (args, req) = outgoing(msg, None);
    let line = send_single(ctx, &args, req)?;
    let report = serde_json::from_str(&line.json)
        .map_err(|e| Error::Data(format!("cannot read the send report back: {e}")))?;
    Ok(Sent {
        id: line.id,
        report,
        warnings: line.warnings,
    })
}

/// The `relay send` arguments and request line that send `msg` (what
/// [`send_message`] and [`publish`] both run).
fn outgoing(msg: Outgoing, idempotency_key: Option<String>) -> (SendArgs, Request) {
    let args = SendArgs {
        subject: None,
        payload: None,
        file: None,
        text: false,
        json_payload: false,
        retry: 0,
        retry_max_wait: std::time::Duration::ZERO,
        from: msg.from,
        reply_to: None,
        ttl: msg.ttl,
        max_hops: msg.max_hops,
        parent: None,
        idempotency_key: None,
        batch: false,
        no_fsync: false,
        trace_id: None,
        priority: msg.priority,
    };
    let req = Request {
        subject: msg.subject,
        payload: msg.payload,
        reply_to: msg.reply_to,
        trace_id: msg.trace_id,
        budget: msg.budget,
        idempotency_key,
        ..Request::default()
    };
    (args, req)
}

/// What became of one message sent with [`publish`].
#[derive(Debug)]
pub enum Published {
    /// The send ran: the endpoints that got a copy and those that did not
    /// (endpoint, code, reason, dead-lettered).
    Done {
        /// The message id.
        id: String,
        /// Endpoints holding a copy now.
        delivered: Vec<String>,
        /// Endpoints refused (nothing written) or dead-lettered.
        rejected: Vec<Refusal>,
        /// Warnings for the sender (soft rate limit, backpressure warning).
        warnings: Vec<String>,
    },
    /// No endpoint matched: dead-lettered under the subject.
    NoMatch {
        /// The message id.
        id: String,
    },
    /// The sender is over its hard rate limit: nothing was written.
    RateLimited {
        /// The message id it would have had.
        id: String,
        /// Why, with the limit.
        reason: String,
        /// When a token is back, ms.
        retry_after_ms: Option<u64>,
    },
    /// The idempotency key was used by this earlier message: nothing sent.
    Duplicate {
        /// The original message id.
        original: String,
    },
}

/// One endpoint a [`publish`] did not reach.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The endpoint.
    pub endpoint: String,
    /// Machine-readable cause (`backpressure`, `circuit_open`, budget codes, ...).
    pub code: Code,
    /// For people.
    pub reason: String,
    /// Written to the endpoint's `failed/` (else nothing was written).
    pub dead_lettered: bool,
    /// When retrying may work (a refusal that wrote nothing), ms.
    pub retry_after_ms: Option<u64>,
}

impl Refusal {
    /// This refusal in DorkOS's `PublishResult.rejected` (see
    /// `dorkos_rejection`).
    #[must_use]
    pub fn dorkos(&self) -> Value {
        dorkos_rejection(
            &self.endpoint,
            self.code.as_str(),
            &self.reason,
            self.dead_lettered,
            self.retry_after_ms,
        )
    }
}

/// One entry of DorkOS's `PublishResult.rejected`, as both `relay serve`'s
/// `POST /api/relay/messages` and `relay mcp`'s send tools answer it
/// (DorkOS's MCP tools pass the publish's list on as it is):
/// `endpointHash` and `reason`, DorkOS's word for relay's `code`
/// (`Code::dorkos_reason`; a code relay does not know is passed as it
/// is), then relay's `code`, `detail` (for people), `deadLettered` and,
/// when known, `retryAfterMs`.
#[must_use]
pub fn dorkos_rejection(
    endpoint: &str,
    code: &str,
    detail: &str,
    dead_lettered: bool,
    retry_after_ms: Option<u64>,
) -> Value {
    let reason: &str = match code.parse::<Code>() {
        Ok(c) => c.dorkos_reason(),
        Err(_) => code,
    };
    let mut v = json!({
        "endpointHash": endpoint,
        "reason": reason,
        "code": code,
        "detail": detail,
        "deadLettered": dead_lettered,
    });
    if let Some(ms) = retry_after_ms {
        v["retryAfterMs"] = ms.into();
    }
    v
}

/// Sends one message as `relay send` does and reports every endpoint's
/// fate, also when none took it (what `relay serve` answers DorkOS's
/// publish with). Errors are only a bad request (subject, sender, budget),
/// an access-rule refusal (the message is dead-lettered under its
/// subject) and disk or index failures.
pub fn publish(ctx: &mut Ctx, msg: Outgoing, idempotency_key: Option<String>) -> Result<Published> {
    let (args, req) = outgoing(msg, idempotency_key);
    let now = ctx.clock.now_ms();
    let (envelope, key, warnings) = envelope_for(&args, req, now)?;
    let id = envelope.id.clone();
    let private = subject::is_private_inbox(&envelope.subject);
    let job = match route(ctx, &mut Lookups::default(), envelope, key, warnings) {
        Ok(job) => job,
        // A gone reply endpoint: refused, nothing dead-lettered.
        Err(e @ Error::NoEndpoint(_)) if private => return Err(e),
        Err(Error::NoEndpoint(_)) => return Ok(Published::NoMatch { id }),
        Err(Error::Refused {
            message,
            retry_after_ms,
        }) => {
            return Ok(Published::RateLimited {
                id,
                reason: message,
                retry_after_ms,
            });
        }
        Err(e) => return Err(e),
    };
    let mut jobs = [job];
    pipeline::deliver(ctx, &mut jobs, Durability::PerMessage, now)?;
    let [mut job] = jobs;
    let (fates, warnings) = match job.take_result() {
        Ok(Delivery::Duplicate(original)) => return Ok(Published::Duplicate { original }),
        Ok(Delivery::Done { fates, warnings }) => (fates, warnings),
        Err(Error::Refused {
            message,
            retry_after_ms,
        }) => {
            return Ok(Published::RateLimited {
                id,
                reason: message,
                retry_after_ms,
            });
        }
        Err(e) => return Err(e),
    };
    let mut delivered = Vec::new();
    let mut rejected = Vec::new();
    for (endpoint, fate) in fates {
        match fate {
            Fate::Delivered(..) => delivered.push(endpoint),
            Fate::DeadLettered(code, reason) => rejected.push(Refusal {
                endpoint,
                code,
                reason,
                dead_lettered: true,
                retry_after_ms: None,
            }),
            Fate::Refused(code, reason, retry_after_ms) => rejected.push(Refusal {
                endpoint,
                code,
                reason,
                dead_lettered: false,
                retry_after_ms,
            }),
        }
    }
    Ok(Published::Done {
        id,
        delivered,
        rejected,
        warnings,
    })
}

/// Prepares and delivers one request (fsynced unless `--no-fsync`).
fn send_single(ctx: &mut Ctx, args: &SendArgs, req: Request) -> Result<Line> {
    let now = ctx.clock.now_ms();
    let job = prepare(ctx, args, req, &mut Lookups::default(), now)?;
    let mut jobs = [job];
    let durability = if args.no_fsync {
        Durability::None
    } else {
        Durability::PerMessage
    };
    pipeline::deliver(ctx, &mut jobs, durability, now)?;
    let [mut job] = jobs;
    let delivery = job.take_result()?;
    summarize(job.envelope(), job.key(), delivery)
}

/// What `prepare` looks up on disk, kept across the lines of a batch (one
/// access-rules read, one endpoint lookup per subject).
#[derive(Default)]
struct Lookups {
    rules: Option<access::Rules>,
    targets: std::collections::HashMap<String, Vec<String>>,
}

/// Validates a request (command-line defaults filling what it lacks),
/// builds its envelope, applies access rules and finds its endpoints.
/// Sends refused here are dead-lettered under their subject as DorkOS does.
fn prepare(
    ctx: &mut Ctx,
    args: &SendArgs,
    req: Request,
    seen: &mut Lookups,
    now: u64,
) -> Result<Job> {
    let (envelope, key, warnings) = envelope_for(args, req, now)?;
    route(ctx, seen, envelope, key, warnings)
}

/// Validates a request (command-line defaults filling what it lacks) and
/// builds its envelope; nothing is looked up or written.
/// Also the request's idempotency key and warnings for the sender.
fn envelope_for(
    args: &SendArgs,
    req: Request,
    now: u64,
) -> Result<(Envelope, Option<String>, Vec<String>)> {
    subject::validate_pattern(&req.subject, "subject")?;
    let from = req.from.unwrap_or_else(|| args.from.clone());
    subject::validate_subject(&from, "sender (--from)")?;
    let reply_to = req.reply_to;
    if let Some(r) = &reply_to {
        subject::validate_subject(r, "reply-to subject")?;
    }
    if let Some(t) = &req.trace_id {
        validate_trace_id(t)?;
    }
    if let Some(k) = &req.idempotency_key {
        validate_key(k)?;
    }
    let priority = match &req.priority {
        Some(p) => <Priority as clap::ValueEnum>::from_str(p, false).map_err(|_| {
            Error::Data(format!(
                "invalid priority '{p}': use critical, high, normal, low or background"
            ))
        })?,
        None => args.priority,
    };
    let ttl_ms = match &req.ttl {
        None => args.ttl.map(crate::clock::ms),
        Some(Value::Number(n)) if n.as_u64().is_some_and(|v| v > 0) => n.as_u64(),
        Some(Value::String(s)) => Some(
            crate::clock::parse_positive_duration(s)
                .map(crate::clock::ms)
                .map_err(Error::Data)?,
        ),
        Some(other) => {
            return Err(Error::Data(format!(
                "invalid ttl {other}: use milliseconds > 0 or a duration such as \"30s\""
            )));
        }
    };
    let max_hops = req.max_hops.or(args.max_hops);
    if max_hops == Some(0) {
        return Err(Error::Data("invalid maxHops 0: use 1 or more".into()));
    }
    let id = crate::envelope::new_id(now);
    let envelope = Envelope {
        id: id.clone(),
        subject: req.subject,
        from,
        reply_to,
        budget: budget_for(req.budget, ttl_ms, max_hops, now),
        created_at: crate::clock::iso8601(now),
        payload: req.payload,
        // A trace the caller chose is DorkOS's dispatchId (its trace id);
        // without one, DorkOS's trace id is the message id, as relay's.
        dispatch_id: req.trace_id.clone(),
        trace_id: Some(req.trace_id.unwrap_or_else(|| id.clone())),
        priority: (priority != Priority::Normal).then(|| priority.as_str().to_string()),
        delivery_count: 0,
        extra: serde_json::Map::new(),
    };
    Ok((envelope, req.idempotency_key, req.warnings))
}

/// Applies access rules to `envelope` and finds its endpoints; a send
/// refused here is dead-lettered under its subject as DorkOS does.
fn route(
    ctx: &mut Ctx,
    seen: &mut Lookups,
    envelope: Envelope,
    key: Option<String>,
    warnings: Vec<String>,
) -> Result<Job> {
    let rules = seen
        .rules
        .get_or_insert_with(|| access::Rules::load(&ctx.home.root().join(access::FILE_NAME)));
    if let Err(denied) = rules.check(&envelope.from, &envelope.subject) {
        dead_letter_at_subject(ctx, &envelope, Code::AccessDenied, &denied.to_string())?;
        return Err(denied);
    }
    let targets = match seen.targets.get(&envelope.subject) {
        Some(t) => t.clone(),
        None => {
            let t = matching_endpoints(ctx, &envelope.subject)?;
            // A mailbox that is a symlink or world-writable is refused
            // before anything is written anywhere.
            for ep in &t {
                Mailbox::at(&ctx.home, ep).check()?;
            }
            seen.targets.insert(envelope.subject.clone(), t.clone());
            t
        }
    };
    if targets.is_empty() && subject::is_private_inbox(&envelope.subject) {
        // A late reply (or a reply to a request that was never made here):
        // its endpoint is not made again only to hold a dead letter no one
        // will read.
        return Err(Error::NoEndpoint(format!(
            "reply endpoint '{}' is gone: the request it answers is no longer waiting (answered, timed out or cancelled); nothing was sent",
            envelope.subject
        )));
    }
    if targets.is_empty() {
        dead_letter_at_subject(ctx, &envelope, Code::NoMatch, "no matching endpoints")?;
        return Err(Error::NoEndpoint(format!(
            "no endpoint matches '{}'; message {} dead-lettered to {}; {}",
            envelope.subject,
            envelope.id,
            Mailbox::at(&ctx.home, &envelope.subject)
                .sub("failed")
                .display(),
            maildir::known_endpoints_hint(&ctx.home)
        )));
    }
    let mut job = Job::new(envelope, targets, key);
    for w in warnings {
        job.warn(w);
    }
    Ok(job)
}

/// What one send reports.
struct Line {
    /// The `--json` report, encoded.
    json: String,
    /// The id printed for people.
    id: String,
    /// Warnings for stderr.
    warnings: Vec<String>,
}

/// Turns a delivery into its report, or an all-refused send into its error.
fn summarize(env: &Envelope, key: Option<&str>, delivery: Delivery) -> Result<Line> {
    let (fates, mut warnings) = match delivery {
        Delivery::Duplicate(original) => {
            let key_note = format!(
                "idempotency key '{}' already used by message {original}; nothing sent",
                key.unwrap_or_default()
            );
            return Ok(Line {
                json: json!({ "id": original, "duplicate": true, "idempotencyKey": key })
                    .to_string(),
                id: original,
                warnings: vec![key_note],
            });
        }
        Delivery::Done { fates, warnings } => (fates, warnings),
    };
    let mut delivered = Vec::new();
    let mut rejected = Vec::new();
    let mut retryable: Vec<Option<u64>> = Vec::new();
    for (ep, fate) in fates {
        match fate {
            Fate::Delivered(..) => delivered.push(ep),
            Fate::DeadLettered(code, reason) => rejected.push(Rejection {
                endpoint: ep,
                code,
                reason,
                retry_after_ms: None,
                dead_lettered: true,
            }),
            Fate::Refused(code, reason, retry) => {
                if !code.is_io() {
                    retryable.push(retry);
                }
                rejected.push(Rejection {
                    endpoint: ep,
                    code,
                    reason,
                    retry_after_ms: retry,
                    dead_lettered: false,
                });
            }
        }
    }
    for r in &rejected {
        warnings.push(if r.dead_lettered {
            format!(
                "not delivered to '{}' ({}), dead-lettered: {}",
                r.endpoint, r.code, r.reason
            )
        } else {
            r.reason.clone()
        });
    }
    if delivered.is_empty() {
        let detail = rejected
            .iter()
            .map(|r| r.reason.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(if !retryable.is_empty() {
            // Worth retrying: report the soonest moment it may work.
            Error::Refused {
                message: detail,
                retry_after_ms: retryable.into_iter().flatten().min(),
            }
        } else if rejected.iter().all(|r| r.code == Code::DiskFull) {
            Error::Full(format!(
                "message {} was not sent (nothing is left of it): {detail}",
                env.id
            ))
        } else if rejected.iter().all(|r| r.code.is_io()) {
            Error::Io {
                what: format!("message {} could not be delivered", env.id),
                source: std::io::Error::other(detail),
            }
        } else {
            Error::Data(format!(
                "message {} was dead-lettered at every endpoint: {detail}",
                env.id
            ))
        });
    }
    let report = SendReport {
        id: &env.id,
        trace_id: env.trace(),
        subject: &env.subject,
        priority: env.priority().as_str(),
        delivered_to: delivered,
        rejected,
        warnings: warnings.clone(),
    };
    Ok(Line {
        json: serde_json::to_string(&report)
            .map_err(|e| Error::Data(format!("cannot encode the send report: {e}")))?,
        id: env.id.clone(),
        warnings,
    })
}

fn print_result(ctx: &Ctx, line: &Line) -> Result<()> {
    output::line(&render(ctx, line))
}

/// The stdout line of a result (its warnings go to stderr now, unless `--json`).
fn render(ctx: &Ctx, line: &Line) -> String {
    if ctx.json {
        line.json.clone()
    } else {
        for w in &line.warnings {
            output::warn(w);
        }
        line.id.clone()
    }
}

/// `relay send --batch`: one request per NDJSON line on stdin (`subject`,
/// `payload`, optional `from`, `replyTo`, `ttl`, `maxHops`, `traceId`,
/// `priority`, `idempotencyKey`, `budget`; command-line options are the
/// defaults). Every line goes through the same checks; each chunk of lines
/// shares one transaction and one group commit. Prints one result per line
/// (the id or `error CODE: MESSAGE`, a blank line for a blank one; with
/// `--json` the report or `{"line", "error"}`); exits with
/// the code of the first failed line, 0 if none failed.
fn batch(ctx: &mut Ctx, args: &SendArgs) -> Result<()> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(Error::Usage(
            "--batch reads NDJSON requests on stdin, e.g. relay send --batch < requests.ndjson"
                .into(),
        ));
    }
    // Logs of earlier batches due to be retired (or replayed after a
    // restart) are settled when the index opens: so the logs stay few also
    // when nothing but sends run.
    if !args.no_fsync && batchlog::due(&ctx.home, ctx.clock.now_ms()) {
        ctx.store()?;
    }
    let mut log = if args.no_fsync {
        None
    } else {
        batchlog::Log::new()
    };
    let mut progress = output::Progress::new("batch: sent");
    let mut first_error: Option<Error> = None;
    let cap = ctx.config.max_payload_bytes;
    let mut lines = CappedLines::new(stdin.lock(), cap.saturating_add(LINE_OVERHEAD));
    let (mut number, mut sent) = (0usize, 0usize);
    let mut seen = Lookups::default();
    loop {
        let now = ctx.clock.now_ms();
        let mut jobs = Vec::new();
        let mut outcomes: Vec<(usize, std::result::Result<usize, Error>)> = Vec::new();
        for line in lines.by_ref() {
            number += 1;
            let line = match line.map_err(|e| Error::Io {
                what: format!("cannot read stdin line {number}"),
                source: e,
            })? {
                BatchLine::Text(line) => line,
                BatchLine::TooLong(size) => {
                    outcomes.push((number, Err(too_big(&size, cap, &format!("line {number}")))));
                    continue;
                }
            };
            if line.trim().is_empty() {
                // In text mode a blank line answers a blank line, so the
                // output still zips with the input.
                if !ctx.json {
                    outcomes.push((number, Ok(BLANK)));
                }
                continue;
            }
            let parsed = serde_json::from_str::<Request>(&line)
                .map_err(|e| {
                    Error::Data(format!("not a send request {{subject, payload, ...}}: {e}"))
                })
                .and_then(|req| {
                    let size = payload_size(&req.payload);
                    if size > cap {
                        return Err(too_big(&size.to_string(), cap, &format!("line {number}")));
                    }
                    Ok(req)
                });
            match parsed.and_then(|req| prepare(ctx, args, req, &mut seen, now)) {
                Ok(job) => {
                    outcomes.push((number, Ok(jobs.len())));
                    jobs.push(job);
                }
                Err(e) => outcomes.push((number, Err(e))),
            }
            if outcomes.len() >= BATCH_CHUNK {
                break;
            }
        }
        if outcomes.is_empty() {
            break;
        }
        let durability = match (&mut log, args.no_fsync) {
            (_, true) => Durability::None,
            (Some(log), false) => Durability::Logged(log),
            // No boot id to tell a restart by: fsync every message.
            (None, false) => Durability::PerMessage,
        };
        pipeline::deliver(ctx, &mut jobs, durability, now)?;
        // One write per chunk: results are many and small.
        let mut out = Vec::with_capacity(outcomes.len());
        for (n, outcome) in outcomes {
            if matches!(outcome, Ok(BLANK)) {
                out.push(String::new());
                continue;
            }
            let result = outcome.and_then(|j| {
                let job = &mut jobs[j];
                let delivery = job.take_result()?;
                summarize(job.envelope(), job.key(), delivery)
            });
            match result {
                Ok(line) => {
                    sent += 1;
                    out.push(render(ctx, &line));
                }
                Err(e) => {
                    if ctx.json {
                        out.push(
                            json!({
                                "line": n,
                                "error": { "kind": e.kind(), "code": e.exit_code(), "message": e.to_string() },
                            })
                            .to_string(),
                        );
                    } else {
                        // One stdout line per input line: the id, or this.
                        out.push(format!(
                            "error {}: {}",
                            e.exit_code(),
                            output::printable(&e.to_string())
                        ));
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        if !out.is_empty() {
            output::line(&out.join("\n"))?;
        }
        progress.tick(sent, None);
    }
    progress.finish();
    if !ctx.json && sent > 0 && std::io::stderr().is_terminal() {
        eprintln!("relay: sent {sent} of {number} line(s)");
    }
    match first_error {
        Some(e) => Err(Error::Batch {
            code: e.exit_code(),
            message: format!("some lines failed (the first: {e})"),
        }),
        None => Ok(()),
    }
}

/// What a `--batch` line may hold beyond its payload: the request's other
/// fields and the payload's JSON quoting.
const LINE_OVERHEAD: u64 = 64 * 1024;

/// A line of `--batch` input.
enum BatchLine {
    /// The line, without its line ending.
    Text(String),
    /// Longer than the limit: its size in bytes (`over N` if not measured
    /// to its end); only the first limit + 1 bytes were kept in memory.
    TooLong(String),
}

/// `BufRead::lines` that holds at most `limit + 1` bytes of a line: a
/// longer line is skipped to its end (measured, to `MEASURE_MAX` past the
/// limit) instead of read into memory, so a runaway line (`yes | tr -d
/// '\n'`) costs neither memory nor the lines after it. A line that does
/// not end within that bound ends the input: nothing after it is read.
struct CappedLines<R> {
    r: R,
    limit: u64,
    done: bool,
}

impl<R: BufRead> CappedLines<R> {
    fn new(r: R, limit: u64) -> Self {
        CappedLines {
            r,
            limit,
            done: false,
        }
    }

    /// Consumes the rest of an over-long line whose last byte read so far
    /// is `last`: the bytes before its LF, whether it was found (or the
    /// input ended), and whether a CR came just before it.
    fn skip_line(&mut self, mut last: u8) -> std::io::Result<(u64, bool, bool)> {
        let mut skipped = 0u64;
        while skipped < MEASURE_MAX {
            let chunk = match self.r.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                return Ok((skipped, true, false));
            }
            if let Some(i) = chunk.iter().position(|&b| b == b'\n') {
                if i > 0 {
                    last = chunk[i - 1];
                }
                self.r.consume(i + 1);
                return Ok((skipped + i as u64, true, last == b'\r'));
            }
            let n = chunk.len();
            last = chunk[n - 1];
            self.r.consume(n);
            skipped += n as u64;
        }
        Ok((skipped, false, false))
    }
}

impl<R: BufRead> Iterator for CappedLines<R> {
    type Item = std::io::Result<BatchLine>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        // Room for the line, its CR and its LF.
        let room = self.limit.saturating_add(2);
        let mut buf = Vec::new();
        match (&mut self.r).take(room).read_until(b'\n', &mut buf) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) => return Some(Err(e)),
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        } else if buf.len() as u64 == room {
            let last = buf.last().copied().unwrap_or_default();
            let (rest, ended, cr) = match self.skip_line(last) {
                Ok(r) => r,
                Err(e) => return Some(Err(e)),
            };
            let size = buf.len() as u64 + rest - u64::from(cr);
            if ended {
                return Some(Ok(BatchLine::TooLong(size.to_string())));
            }
            self.done = true;
            output::warn(&format!(
                "stopped reading stdin: a line ran over {size} bytes without ending; the lines after it were not read"
            ));
            return Some(Ok(BatchLine::TooLong(format!("over {size}"))));
        }
        if buf.len() as u64 > self.limit {
            return Some(Ok(BatchLine::TooLong(buf.len().to_string())));
        }
        Some(String::from_utf8(buf).map(BatchLine::Text).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "stream did not contain valid UTF-8",
            )
        }))
    }
}

/// What a parent message (`--parent FILE`, `$RELAY_BUDGET`) passes on.
#[derive(Default)]
struct Parent {
    budget: Option<Budget>,
    trace_id: Option<String>,
}

fn read_parent(args: &SendArgs) -> Result<Parent> {
    if let Some(path) = &args.parent {
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Error::NoInput(format!("parent envelope {} does not exist", path.display()))
            }
            _ => Error::io("cannot read parent envelope", path, e),
        })?;
        // `recv --json -n N` writes NDJSON: the first line is the parent.
        let first = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
        let env = Envelope::parse(first)
            .map_err(|e| Error::Data(format!("--parent {}: {e}", path.display())))?;
        return Ok(Parent {
            trace_id: Some(env.trace().to_string()),
            budget: Some(env.budget),
        });
    }
    match crate::envvars::BUDGET.get() {
        Some(text) if !text.trim().is_empty() => {
            let budget = serde_json::from_str(&text).map_err(|e| {
                Error::Data(format!(
                    "RELAY_BUDGET is not a budget object {{hopCount, maxHops, ancestorChain, ttl, callBudgetRemaining}}: {e}"
                ))
            })?;
            Ok(Parent {
                budget: Some(budget),
                trace_id: None,
            })
        }
        _ => Ok(Parent::default()),
    }
}

/// A fresh budget, or the parent's spent one (its TTL shortened by the
/// given TTL, its ceiling replaced by the given max hops).
fn budget_for(
    parent: Option<Budget>,
    ttl_ms: Option<u64>,
    max_hops: Option<u32>,
    now: u64,
) -> Budget {
    match parent {
        Some(mut b) => {
            if let Some(ms) = ttl_ms {
                b.ttl = b.ttl.min(now.saturating_add(ms));
            }
            if let Some(m) = max_hops {
                b.max_hops = m;
            }
            b
        }
        None => Budget::fresh(
            max_hops.unwrap_or(DEFAULT_MAX_HOPS),
            now,
            ttl_ms.unwrap_or(DEFAULT_TTL_MS),
        ),
    }
}

/// Endpoints a subject or pattern reaches.
fn matching_endpoints(ctx: &Ctx, subj: &str) -> Result<Vec<String>> {
    if subject::is_pattern(subj) {
        Ok(maildir::list_endpoints(&ctx.home)?
            .into_iter()
            .filter(|ep| subject::matches(subj, ep))
            .collect())
    } else if Mailbox::at(&ctx.home, subj).is_endpoint() {
        Ok(vec![subj.to_string()])
    } else {
        Ok(Vec::new())
    }
}

/// Dead-letters a message refused before fan-out (no endpoint matches, or
/// access denied) under its subject itself, as DorkOS does, with its index
/// row, event and failure notice.
fn dead_letter_at_subject(ctx: &mut Ctx, env: &Envelope, code: Code, reason: &str) -> Result<()> {
    // Subjects are case-sensitive, but a mailbox differing only in case
    // would collide on case-insensitive filesystems: refuse, write nothing.
    let names = maildir::mailbox_dir_names(&ctx.home)?;
    if let Some(other) = maildir::case_twin(&env.subject, names.iter()) {
        return Err(Error::Data(format!(
            "subject '{}' differs only in case from mailbox '{other}'; subjects are case-sensitive (did you mean '{other}'?)",
            env.subject
        )));
    }
    let now = ctx.clock.now_ms();
    // A refused send costs its sender a token like a delivered one, so a
    // runaway sender cannot fill failed/ with sends that match nothing or
    // are denied: past its limit they are refused and nothing is written.
    let (mut slots, mut out) = (Slots::new(ctx.home.root()), Outbox::default());
    let limits = &ctx.config.reliability.rate_limit;
    let rate = reliability::rate_limit(&mut slots, &mut out, limits, &env.from, now)?;
    slots.release()?;
    if let RateOutcome::Hard {
        message,
        retry_after_ms,
    } = rate
    {
        out.commit(&mut slots, ctx.home.root())?;
        return Err(Error::Refused {
            message: format!("{message}; message {} was not sent", env.id),
            retry_after_ms: Some(retry_after_ms),
        });
    }
    let mb = Mailbox::at(&ctx.home, &env.subject);
    mb.dead_letter(env, reason, code, now)?;
    if code == Code::NoMatch {
        // DorkOS's publish: accounted (`*` row), nobody took it.
        let out = crate::store::dorkos::Outcome {
            no_match: true,
            ..crate::store::dorkos::Outcome::default()
        };
        crate::store::dorkos::published(ctx.home.root(), env, &out, now);
    }
    let notice = notice::send(&ctx.home, env, &env.subject, code, reason, now)?;
    // Accounted like the pipeline's dead letters: in the journal, no index.
    out.dead_letter(
        &SentRow {
            endpoint: &env.subject,
            envelope: env,
            failure: Some((code, reason)),
            probe: false,
        },
        now,
    );
    if let Some(n) = &notice {
        notice::record(&mut out, n, now);
    }
    out.commit(&mut slots, ctx.home.root()).map(|_| ())
}

/// Default hop ceiling, as in DorkOS.
const DEFAULT_MAX_HOPS: u32 = 5;
/// Default time to live (1 h), as in DorkOS.
const DEFAULT_TTL_MS: u64 = 3_600_000;

fn validate_key(k: &str) -> Result<()> {
    if k.is_empty() || k.len() > 256 || k.chars().any(char::is_control) {
        return Err(Error::Data(format!(
            "invalid idempotency key '{}': use 1-256 characters without control characters",
            k.escape_debug()
        )));
    }
    Ok(())
}

fn validate_trace_id(t: &str) -> Result<()> {
    if t.is_empty()
        || t.len() > MAX_TRACE_ID
        || t.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(Error::Data(format!(
            "invalid trace id '{}': use 1-{MAX_TRACE_ID} characters without spaces or control characters",
            t.escape_debug()
        )));
    }
    Ok(())
}

/// How a payload's text becomes its JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadMode {
    /// JSON stays JSON, anything else is a string (text that looks like
    /// JSON but does not parse is a string, with a warning).
    Auto,
    /// Always a string (`--text`).
    Text,
    /// Must be JSON (`--json-payload`): anything else is refused (65).
    Json,
}

impl PayloadMode {
    /// The mode the `--text` / `--json-payload` flags ask for.
    #[must_use]
    pub fn from_flags(text: bool, json: bool) -> Self {
        match (text, json) {
            (true, _) => PayloadMode::Text,
            (false, true) => PayloadMode::Json,
            (false, false) => PayloadMode::Auto,
        }
    }
}

/// Reads the payload from the argument, `--file` (`-` = stdin) or stdin,
/// enforcing the size cap before anything is written. See `payload_from`.
fn read_payload(args: &SendArgs, cap: u64) -> Result<(Value, Option<String>)> {
    payload_from(
        args.payload.as_deref(),
        args.file.as_deref(),
        PayloadMode::from_flags(args.text, args.json_payload),
        cap,
    )
}

/// `read_payload` from its parts: the argument, else the file (`-` =
/// stdin), else stdin. JSON stays JSON (unless `Text`); other text becomes
/// a JSON string, minus one trailing newline when it came from a file or
/// stdin. Returns a warning for text that starts like JSON (`{`, `[`) but
/// does not parse, stored as a string (`Json` refuses it instead).
pub fn payload_from(
    arg: Option<&str>,
    file: Option<&std::path::Path>,
    mode: PayloadMode,
    cap: u64,
) -> Result<(Value, Option<String>)> {
    let (bytes, from_stream) = match (arg, file) {
        (Some(p), _) => (p.as_bytes().to_vec(), false),
        (None, Some(path)) if path.as_os_str() != "-" => {
            let f = std::fs::File::open(path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    Error::NoInput(format!("payload file {} does not exist", path.display()))
                }
                _ => Error::io("cannot open payload file", path, e),
            })?;
            (read_capped(f, cap, &path.display().to_string())?, true)
        }
        (None, _) => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                return Err(Error::Usage(
                    "no payload: pass it as an argument, with --file PATH, or on stdin".into(),
                ));
            }
            (read_capped(stdin.lock(), cap, "stdin")?, true)
        }
    };
    if bytes.len() as u64 > cap {
        return Err(too_big(&bytes.len().to_string(), cap, "the argument"));
    }
    if bytes.is_empty() && from_stream {
        // Almost always a forgotten pipe; an empty message is still possible.
        return Err(Error::Data(
            "the payload read from the file or stdin is empty; to send an empty string, pass it as an argument: relay send SUBJECT ''".into(),
        ));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::Data(format!(
            "payload is not valid UTF-8 (invalid byte at offset {}); send text or JSON",
            e.utf8_error().valid_up_to()
        ))
    })?;
    let mut warning = None;
    if mode != PayloadMode::Text {
        match serde_json::from_str::<Value>(&text) {
            Ok(v) => return Ok((v, None)),
            Err(e) if mode == PayloadMode::Json => {
                return Err(Error::Data(format!(
                    "payload is not valid JSON ({e}) and --json-payload asks for JSON; nothing was sent"
                )));
            }
            Err(e) => {
                if let Some(c) = text
                    .trim_start()
                    .chars()
                    .next()
                    .filter(|c| matches!(c, '{' | '['))
                {
                    warning = Some(format!(
                        "payload starts with '{c}' but is not valid JSON ({e}); sent as a string (--json-payload refuses such payloads, --text sends text without this warning)"
                    ));
                }
            }
        }
    }
    let text = if from_stream {
        text.strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .map_or(text.clone(), str::to_string)
    } else {
        text
    };
    Ok((Value::String(text), warning))
}

fn read_capped(mut r: impl Read, cap: u64, what: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let read_err = |e| Error::Io {
        what: format!("cannot read payload from {what}"),
        source: e,
    };
    r.by_ref()
        .take(cap.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(read_err)?;
    if buf.len() as u64 > cap {
        // Measure the rest (to a bound: stdin may never end) so the error
        // can say how big the payload is.
        let rest =
            std::io::copy(&mut r.take(MEASURE_MAX), &mut std::io::sink()).map_err(read_err)?;
        let size = buf.len() as u64 + rest;
        let size = if rest == MEASURE_MAX {
            format!("over {size}")
        } else {
            size.to_string()
        };
        return Err(too_big(&size, cap, what));
    }
    Ok(buf)
}

/// How far past the cap an oversize payload is measured for its error.
const MEASURE_MAX: u64 = 64 * 1024 * 1024;

/// A batch line's payload measured as a single send measures its own: a
/// string by its text, other JSON by its compact encoding (as stored).
fn payload_size(payload: &Value) -> u64 {
    /// Counts what is written to it.
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    match payload {
        Value::String(text) => text.len() as u64,
        other => {
            let mut count = Count(0);
            // Writing to a counter cannot fail.
            let _ = serde_json::to_writer(&mut count, other);
            count.0
        }
    }
}

fn too_big(size: &str, cap: u64, what: &str) -> Error {
    let want = size.parse::<u64>().ok().filter(|n| *n <= MEASURE_MAX);
    Error::Data(format!(
        "payload from {what} is {size} bytes, more than the limit of {cap} bytes (maxPayloadBytes); nothing was sent; to raise the cap (up to 64 MiB): relay config set maxPayloadBytes {}",
        want.map_or_else(|| "BYTES".to_string(), |n| n.to_string())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: impl Read, limit: u64) -> Vec<String> {
        CappedLines::new(std::io::BufReader::new(input), limit)
            .map(|l| match l.expect("read") {
                BatchLine::Text(t) => format!("text {t}"),
                BatchLine::TooLong(size) => format!("too long {size}"),
            })
            .collect()
    }

    #[test]
    fn capped_lines_keep_lines_to_the_limit_and_skip_longer_ones() {
        let got = lines(&b"abcd\r\nabcde\nab\n\nabcdef\r\nabcde"[..], 4);
        assert_eq!(
            got,
            [
                "text abcd",
                "too long 5",
                "text ab",
                "text ",
                "too long 6",
                "too long 5"
            ]
        );
        assert_eq!(lines(&b"abc"[..], 4), ["text abc"]);
        // Past the room read at once (limit + 2), measured to the end.
        let long = format!("{}\r\nok\n", "y".repeat(100_000));
        assert_eq!(lines(long.as_bytes(), 4), ["too long 100000", "text ok"]);
        // A CR read at once, its LF not yet.
        assert_eq!(lines(&b"abcde\r\nok"[..], 4), ["too long 5", "text ok"]);
    }

    #[test]
    fn a_line_without_end_ends_the_input_once_measured_to_the_bound() {
        let got = lines(std::io::repeat(b'x'), 10);
        let size = got[0].strip_prefix("too long over ").map(str::parse::<u64>);
        assert!(
            got.len() == 1 && size.is_some_and(|s| s.is_ok_and(|s| s >= 12 + MEASURE_MAX)),
            "{got:?}"
        );
    }
}
