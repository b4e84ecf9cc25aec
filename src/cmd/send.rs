//! `relay send`: validate, build the envelope, fan out to every matching
//! endpoint with durable Maildir delivery, dead-letter what cannot go.

use std::io::{IsTerminal, Read};

use serde::Serialize;
use serde_json::{Value, json};

use crate::breaker::{Decision as BreakerDecision, Event as BreakerEvent};
use crate::pressure::{self, Priority};
use crate::reliability::{self, RateOutcome};
use crate::store::Event as StoreEvent;
use crate::{access, notice};

use crate::cli::SendArgs;
use crate::context::Ctx;
use crate::envelope::{Budget, Envelope};
use crate::error::{Error, Result};
use crate::maildir::{self, Mailbox};
use crate::output;
use crate::store::SentRow;
use crate::subject;

/// Longest accepted trace id.
const MAX_TRACE_ID: usize = 128;

/// An endpoint the message did not reach.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Rejection {
    endpoint: String,
    code: String,
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

/// Runs `relay send`.
pub fn run(ctx: &mut Ctx, args: &SendArgs) -> Result<()> {
    // Everything the user gave is checked before anything is written.
    subject::validate_pattern(&args.subject, "subject")?;
    subject::validate_subject(&args.from, "sender (--from)")?;
    if let Some(r) = &args.reply_to {
        subject::validate_subject(r, "reply-to subject")?;
    }
    if let Some(t) = &args.trace_id {
        validate_trace_id(t)?;
    }
    if let Some(k) = &args.idempotency_key {
        validate_key(k)?;
    }
    let parent = read_parent(args)?;
    let payload = read_payload(args, ctx.config.max_payload_bytes)?;

    let now = ctx.clock.now_ms();
    let id = crate::envelope::new_id(now);
    let envelope = Envelope {
        id: id.clone(),
        subject: args.subject.clone(),
        from: args.from.clone(),
        reply_to: args.reply_to.clone(),
        budget: budget_for(args, parent.budget, now),
        created_at: crate::clock::iso8601(now),
        payload,
        dispatch_id: None,
        trace_id: Some(
            args.trace_id
                .clone()
                .or(parent.trace_id)
                .unwrap_or_else(|| id.clone()),
        ),
        priority: (args.priority != Priority::Normal).then(|| args.priority.as_str().to_string()),
        extra: serde_json::Map::new(),
    };

    let rules = access::Rules::load(&ctx.home.root().join(access::FILE_NAME));
    if let Err(denied) = rules.check(&envelope.from, &envelope.subject) {
        dead_letter_at_subject(ctx, &envelope, "access_denied", &denied.to_string())?;
        return Err(denied);
    }
    let targets = matching_endpoints(ctx, &args.subject)?;
    if targets.is_empty() {
        dead_letter_at_subject(ctx, &envelope, "no_match", "no matching endpoints")?;
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
    // A mailbox that is a symlink or world-writable is refused before
    // anything is written anywhere.
    for ep in &targets {
        crate::home::check_dir(Mailbox::at(&ctx.home, ep).dir(), "mailbox")?;
    }
    let key = args.idempotency_key.as_deref();
    match deliver_all(ctx, &envelope, targets, key, now)? {
        Delivery::Done(outcome) => report(ctx, &envelope, outcome),
        Delivery::Duplicate(original) => {
            if ctx.json {
                output::json_line(&json!({
                    "id": original,
                    "duplicate": true,
                    "idempotencyKey": key,
                }))
            } else {
                output::warn(&format!(
                    "idempotency key '{}' already used by message {original}; nothing sent",
                    key.unwrap_or_default()
                ));
                output::line(&original)
            }
        }
    }
}

/// A send either happened or was a repeat of an earlier one.
enum Delivery {
    /// The send ran; what became of each copy.
    Done(Outcome),
    /// The idempotency key was used within its window by this message id.
    Duplicate(String),
}

/// What became of the message at one endpoint.
enum Fate {
    /// Delivered (the copy written, and whether it is a breaker probe).
    Delivered(Box<Envelope>, bool),
    /// Written to the endpoint's `failed/` (code, reason).
    DeadLettered(String, String),
    /// Refused for now; nothing written for it (code, message, retry-after).
    Refused(String, String, Option<u64>),
}

/// Per-endpoint fates plus sender-level warnings of one send.
struct Outcome {
    fates: Vec<(String, Fate)>,
    warnings: Vec<String>,
}

/// The send pipeline after validation: budget per endpoint, then (under the
/// endpoints' locks) backpressure, then in one index transaction the rate
/// limit and the breakers, then durable delivery, then the index rows.
fn deliver_all(
    ctx: &mut Ctx,
    env: &Envelope,
    targets: Vec<String>,
    key: Option<&str>,
    now: u64,
) -> Result<Delivery> {
    let rel = ctx.config.reliability.clone();
    let key_window_ms = ctx.config.idempotency_window_secs.saturating_mul(1000);
    let priority = env.priority();
    let mut warnings = Vec::new();
    let mut fates: Vec<(String, Option<Fate>)> = Vec::with_capacity(targets.len());
    let mut hops = Vec::with_capacity(targets.len());

    // Budget: pure, per endpoint (a wildcard send can revisit a chain member).
    for ep in targets {
        match env.budget.hop(&ep, now) {
            Ok(b) => {
                hops.push(Some(b));
                fates.push((ep, None));
            }
            Err((code, reason)) => {
                hops.push(None);
                fates.push((
                    ep,
                    Some(Fate::DeadLettered(code.as_str().to_string(), reason)),
                ));
            }
        }
    }

    // Backpressure: count and deliver under each endpoint's lock (sorted
    // order, so two fan-outs cannot deadlock). Targets are already sorted.
    let mut locks = Vec::new();
    let mut pressure_events = Vec::new();
    if rel.backpressure.enabled {
        let policy = pressure_policy(&rel.backpressure);
        for (ep, fate) in &mut fates {
            if fate.is_some() {
                continue;
            }
            let mb = Mailbox::at(&ctx.home, ep);
            locks.push(mb.lock(&ctx.home)?);
            let depth = mb.depth()?;
            match pressure::decide(depth, priority, &policy) {
                pressure::Decision::Accept => {}
                pressure::Decision::Warn { depth, limit } => {
                    let pct = depth * 100 / policy.max_mailbox_size.max(1);
                    warnings.push(format!(
                        "mailbox '{ep}' under backpressure: {pct}% full ({depth}/{} messages in new/ and cur/)",
                        policy.max_mailbox_size
                    ));
                    pressure_events.push(("backpressure_warning", ep.clone(), depth, limit));
                }
                pressure::Decision::Reject { depth, limit } => {
                    let why = if priority == Priority::Normal {
                        format!(
                            "mailbox '{ep}' is full ({depth}/{limit} messages in new/ and cur/)"
                        )
                    } else {
                        format!(
                            "mailbox '{ep}' takes no more {priority}-priority messages at depth {limit} (now {depth}; capacity {})",
                            policy.max_mailbox_size
                        )
                    };
                    *fate = Some(Fate::Refused(
                        "backpressure".into(),
                        format!("{why}; retry once its consumer catches up"),
                        None,
                    ));
                    pressure_events.push(("backpressure_rejected", ep.clone(), depth, limit));
                }
            }
        }
    }

    // Rate limit and breakers: one IMMEDIATE transaction, exact across processes.
    let mut probes = vec![false; fates.len()];
    {
        let tx = ctx.store()?.begin()?;
        // A repeat is answered before it can spend a token or a probe.
        if let Some(k) = key
            && let Some(original) = tx.claim_key(&env.from, k, &env.id, key_window_ms, now)?
        {
            tx.commit()?;
            return Ok(Delivery::Duplicate(original));
        }
        // A send no endpoint can take is not charged a token.
        let open = fates.iter().any(|(_, f)| f.is_none());
        let rate = if open {
            reliability::rate_limit(&tx, &rel.rate_limit, &env.from, now)?
        } else {
            RateOutcome::Admit
        };
        match rate {
            RateOutcome::Admit => {}
            RateOutcome::Soft(w) => warnings.push(w),
            RateOutcome::Hard {
                message,
                retry_after_ms,
            } => {
                if let Some(k) = key {
                    tx.release_key(&env.from, k, &env.id)?;
                }
                tx.commit()?;
                return Err(Error::Refused {
                    message,
                    retry_after_ms: Some(retry_after_ms),
                });
            }
        }
        for (kind, ep, depth, limit) in &pressure_events {
            tx.event(
                &StoreEvent {
                    kind,
                    sender: Some(&env.from),
                    endpoint: Some(ep),
                    message_id: Some(&env.id),
                    detail: json!({ "depth": depth, "limit": limit, "priority": priority.as_str() }),
                },
                now,
            )?;
        }
        for (i, (ep, fate)) in fates.iter_mut().enumerate() {
            if fate.is_some() {
                continue;
            }
            reliability::observe_leases(&tx, &rel.circuit_breaker, Some(ep), now)?;
            match reliability::breaker_step(
                &tx,
                &rel.circuit_breaker,
                &env.from,
                ep,
                BreakerEvent::Send,
                now,
            )? {
                BreakerDecision::Reject { retry_after_ms } => {
                    let phase = tx.breaker(&env.from, ep)?.phase;
                    *fate = Some(Fate::Refused(
                        "circuit_open".into(),
                        reliability::breaker_refusal(&env.from, ep, phase, retry_after_ms),
                        Some(retry_after_ms),
                    ));
                }
                BreakerDecision::Probe => probes[i] = true,
                BreakerDecision::Admit | BreakerDecision::Noted => {}
            }
        }
        tx.commit()?;
    }

    // Durable delivery of the hop-updated copies.
    let mut io_failures = Vec::new();
    for (i, (ep, fate)) in fates.iter_mut().enumerate() {
        if fate.is_some() {
            continue;
        }
        let Some(budget) = hops[i].take() else {
            continue;
        };
        let copy = Envelope {
            budget,
            ..env.clone()
        };
        let mb = Mailbox::at(&ctx.home, ep);
        *fate = Some(match mb.deliver(&copy, true) {
            Ok(()) => Fate::Delivered(Box::new(copy), probes[i]),
            Err(e) => {
                io_failures.push((ep.clone(), probes[i]));
                Fate::Refused("io_error".into(), e.to_string(), None)
            }
        });
    }
    drop(locks);

    let mut fates: Vec<(String, Fate)> = fates
        .into_iter()
        .filter_map(|(ep, f)| f.map(|f| (ep, f)))
        .collect();
    let any_delivered = fates.iter().any(|(_, f)| matches!(f, Fate::Delivered(..)));

    // Copies refused while others were delivered are dead-lettered, so an
    // exit 0 never hides a lost copy; when all were refused, nothing is
    // written and the sender retries the whole send.
    let mut notices = Vec::new();
    for (ep, fate) in &mut fates {
        let mb = Mailbox::at(&ctx.home, ep);
        match fate {
            Fate::DeadLettered(code, reason) => {
                mb.dead_letter(env, reason, code, now)?;
                notices.extend(notice::send(&ctx.home, env, ep, code, reason, now)?);
            }
            Fate::Refused(code, reason, _) if any_delivered => {
                let (code, reason) = (std::mem::take(code), std::mem::take(reason));
                mb.dead_letter(env, &reason, &code, now)?;
                *fate = Fate::DeadLettered(code, reason);
            }
            _ => {}
        }
    }

    // Index rows, dead-letter events and I/O failures, in one transaction.
    let tx = ctx.store()?.begin()?;
    let rows: Vec<SentRow<'_>> = fates
        .iter()
        .filter_map(|(ep, fate)| match fate {
            Fate::Delivered(copy, probe) => Some(SentRow {
                endpoint: ep,
                envelope: copy,
                failure: None,
                probe: *probe,
            }),
            Fate::DeadLettered(code, reason) => Some(SentRow {
                endpoint: ep,
                envelope: env,
                failure: Some((code.as_str(), reason.as_str())),
                probe: false,
            }),
            Fate::Refused(..) => None,
        })
        .collect();
    tx.record_sent(&rows, now)?;
    for (ep, fate) in &fates {
        if let Fate::DeadLettered(code, reason) = fate {
            tx.dead_lettered(Some(&env.from), ep, &env.id, code, reason, now)?;
        }
    }
    for n in &notices {
        notice::record(&tx, n, now)?;
    }
    if let Some(k) = key
        && !any_delivered
    {
        // Nothing went out: a retry with the same key must not be a "duplicate".
        tx.release_key(&env.from, k, &env.id)?;
    }
    for (ep, probe) in &io_failures {
        reliability::breaker_step(
            &tx,
            &rel.circuit_breaker,
            &env.from,
            ep,
            BreakerEvent::Failure { probe: *probe },
            now,
        )?;
    }
    tx.commit()?;
    Ok(Delivery::Done(Outcome { fates, warnings }))
}

/// Prints the result of a send, or turns an all-refused send into its error.
fn report(ctx: &Ctx, env: &Envelope, outcome: Outcome) -> Result<()> {
    let Outcome {
        fates,
        mut warnings,
    } = outcome;
    let mut delivered = Vec::new();
    let mut rejected = Vec::new();
    let mut retryable: Vec<(String, Option<u64>)> = Vec::new();
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
                if code != "io_error" {
                    retryable.push((reason.clone(), retry));
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
                retry_after_ms: retryable.iter().filter_map(|r| r.1).min(),
            }
        } else if rejected.iter().all(|r| r.code == "io_error") {
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
    if ctx.json {
        output::json_line(&SendReport {
            id: &env.id,
            trace_id: env.trace(),
            subject: &env.subject,
            priority: env.priority().as_str(),
            delivered_to: delivered,
            rejected,
            warnings,
        })
    } else {
        for w in &warnings {
            output::warn(w);
        }
        output::line(&env.id)
    }
}

fn pressure_policy(cfg: &crate::config::Backpressure) -> pressure::Policy {
    pressure::Policy {
        max_mailbox_size: cfg.max_mailbox_size,
        warning_at: cfg.pressure_warning_at,
        shed_low_at: cfg.shed_low_at,
        shed_background_at: cfg.shed_background_at,
        priority_headroom: cfg.priority_headroom,
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
fn dead_letter_at_subject(ctx: &mut Ctx, env: &Envelope, code: &str, reason: &str) -> Result<()> {
    // Subjects are case-sensitive, but a mailbox differing only in case
    // would collide on case-insensitive filesystems: refuse, write nothing.
    let lower = env.subject.to_lowercase();
    if let Some(other) = maildir::mailbox_dir_names(&ctx.home)?
        .into_iter()
        .find(|n| n.to_lowercase() == lower && *n != env.subject)
    {
        return Err(Error::Data(format!(
            "subject '{}' differs only in case from mailbox '{other}'; subjects are case-sensitive (did you mean '{other}'?)",
            env.subject
        )));
    }
    let now = ctx.clock.now_ms();
    let mb = Mailbox::at(&ctx.home, &env.subject);
    mb.dead_letter(env, reason, code, now)?;
    let notice = notice::send(&ctx.home, env, &env.subject, code, reason, now)?;
    let tx = ctx.store()?.begin()?;
    tx.record_sent(
        &[SentRow {
            endpoint: &env.subject,
            envelope: env,
            failure: Some((code, reason)),
            probe: false,
        }],
        now,
    )?;
    tx.dead_lettered(Some(&env.from), &env.subject, &env.id, code, reason, now)?;
    if let Some(n) = &notice {
        notice::record(&tx, n, now)?;
    }
    tx.commit()
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
    match std::env::var("RELAY_BUDGET") {
        Ok(text) if !text.trim().is_empty() => {
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

/// A fresh budget, or the parent's spent one (its TTL shortened by `--ttl`,
/// its ceiling replaced by `--max-hops`, if given).
fn budget_for(args: &SendArgs, parent: Option<Budget>, now: u64) -> Budget {
    let ttl_ms = args
        .ttl
        .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
    match parent {
        Some(mut b) => {
            if let Some(ms) = ttl_ms {
                b.ttl = b.ttl.min(now.saturating_add(ms));
            }
            if let Some(m) = args.max_hops {
                b.max_hops = m;
            }
            b
        }
        None => Budget::fresh(
            args.max_hops.unwrap_or(DEFAULT_MAX_HOPS),
            now,
            ttl_ms.unwrap_or(DEFAULT_TTL_MS),
        ),
    }
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

/// Reads the payload from the argument, `--file` (`-` = stdin) or stdin,
/// enforcing the size cap before anything is written. JSON stays JSON
/// (unless `--text`); other text becomes a JSON string, minus one trailing
/// newline when it came from a file or stdin.
fn read_payload(args: &SendArgs, cap: u64) -> Result<Value> {
    let (bytes, from_stream) = match (&args.payload, &args.file) {
        (Some(p), _) => (p.clone().into_bytes(), false),
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
    if !args.text
        && let Ok(v) = serde_json::from_str::<Value>(&text)
    {
        return Ok(v);
    }
    let text = if from_stream {
        text.strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .map_or(text.clone(), str::to_string)
    } else {
        text
    };
    Ok(Value::String(text))
}

fn read_capped(r: impl Read, cap: u64, what: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(cap.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| Error::Io {
            what: format!("cannot read payload from {what}"),
            source: e,
        })?;
    if buf.len() as u64 > cap {
        return Err(too_big(&format!("over {cap}"), cap, what));
    }
    Ok(buf)
}

fn too_big(size: &str, cap: u64, what: &str) -> Error {
    Error::Data(format!(
        "payload from {what} is {size} bytes, more than the limit of {cap} bytes; nothing was sent (raise maxPayloadBytes in config.json if this is intended)"
    ))
}
