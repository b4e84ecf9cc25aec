//! `relay send`: validate, build the envelope, fan out to every matching
//! endpoint with durable Maildir delivery, dead-letter what cannot go.

use std::io::{IsTerminal, Read};
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use crate::cli::SendArgs;
use crate::context::Ctx;
use crate::envelope::{Budget, Envelope};
use crate::error::{Error, IoContext, Result};
use crate::maildir::{self, Mailbox};
use crate::output;
use crate::store::SentRow;
use crate::subject;

/// Longest accepted trace id.
const MAX_TRACE_ID: usize = 128;

/// What happened at one endpoint.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Rejection {
    endpoint: String,
    code: String,
    reason: String,
}

/// `--json` result of a send.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SendReport<'a> {
    id: &'a str,
    trace_id: &'a str,
    subject: &'a str,
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
    let payload = read_payload(args, ctx.config.max_payload_bytes)?;

    let now = ctx.clock.now_ms();
    let ttl_ms = u64::try_from(args.ttl.as_millis()).unwrap_or(u64::MAX);
    let id = ulid::Ulid::from_datetime(UNIX_EPOCH + Duration::from_millis(now)).to_string();
    let envelope = Envelope {
        id: id.clone(),
        subject: args.subject.clone(),
        from: args.from.clone(),
        reply_to: args.reply_to.clone(),
        budget: Budget::fresh(args.max_hops, now, ttl_ms),
        created_at: crate::clock::iso8601(now),
        payload,
        dispatch_id: None,
        trace_id: Some(args.trace_id.clone().unwrap_or_else(|| id.clone())),
        extra: serde_json::Map::new(),
    };

    let targets = matching_endpoints(ctx, &args.subject)?;
    if targets.is_empty() {
        return dead_letter_unmatched(ctx, &envelope);
    }

    let mut delivered = Vec::new();
    let mut rejected = Vec::new();
    let mut copies = Vec::new();
    for ep in &targets {
        let mb = Mailbox::at(&ctx.home, ep);
        match deliver_one(&mb, &envelope, now) {
            Ok(copy) => {
                delivered.push(ep.clone());
                copies.push((ep.clone(), copy, None));
            }
            Err((code, reason)) => {
                rejected.push(Rejection {
                    endpoint: ep.clone(),
                    code: code.clone(),
                    reason: reason.clone(),
                });
                copies.push((ep.clone(), envelope.clone(), Some((code, reason))));
            }
        }
    }
    let rows: Vec<SentRow<'_>> = copies
        .iter()
        .map(|(ep, env, failure)| SentRow {
            endpoint: ep,
            envelope: env,
            failure: failure.as_ref().map(|(c, r)| (c.as_str(), r.as_str())),
        })
        .collect();
    ctx.store()?.record_sent(&rows, now)?;

    let warnings: Vec<String> = rejected
        .iter()
        .map(|r| {
            format!(
                "not delivered to '{}' ({}): {}",
                r.endpoint, r.code, r.reason
            )
        })
        .collect();
    if delivered.is_empty() {
        // Every endpoint refused: budget codes are permanent, I/O errors are not.
        let detail = warnings.join("; ");
        return Err(if rejected.iter().all(|r| r.code == "io_error") {
            Error::Io {
                what: format!("message {id} could not be delivered: {detail}"),
                source: std::io::Error::other("delivery failed at every endpoint"),
            }
        } else {
            Error::Data(format!(
                "message {id} was dead-lettered at every endpoint: {detail}"
            ))
        });
    }
    if ctx.json {
        output::json_line(&SendReport {
            id: &id,
            trace_id: envelope.trace(),
            subject: &args.subject,
            delivered_to: delivered,
            rejected,
            warnings,
        })
    } else {
        for w in &warnings {
            output::warn(w);
        }
        output::line(&id)
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

/// Delivers the hop-updated copy, or dead-letters it in that mailbox.
/// Returns the copy written, or the `(code, reason)` of the refusal.
fn deliver_one(mb: &Mailbox, env: &Envelope, now: u64) -> Result<Envelope, (String, String)> {
    let io_err = |e: Error| ("io_error".to_string(), e.to_string());
    crate::home::check_dir(mb.dir(), "mailbox").map_err(io_err)?;
    match env.budget.hop(&mb.name, now) {
        Ok(budget) => {
            let copy = Envelope {
                budget,
                ..env.clone()
            };
            mb.deliver(&copy, true).map_err(io_err)?;
            Ok(copy)
        }
        Err((code, reason)) => {
            let code = code.as_str().to_string();
            mb.dead_letter(env, &reason, &code, now).map_err(io_err)?;
            Err((code, reason))
        }
    }
}

/// Nothing matched: dead-letter under the subject itself (as DorkOS does)
/// and fail with 69, listing what exists.
fn dead_letter_unmatched(ctx: &mut Ctx, env: &Envelope) -> Result<()> {
    let now = ctx.clock.now_ms();
    let reason = "no matching endpoints";
    let mb = Mailbox::at(&ctx.home, &env.subject);
    mb.dead_letter(env, reason, "no_match", now)?;
    ctx.store()?.record_sent(
        &[SentRow {
            endpoint: &env.subject,
            envelope: env,
            failure: Some(("no_match", reason)),
        }],
        now,
    )?;
    Err(Error::NoEndpoint(format!(
        "no endpoint matches '{}'; message {} dead-lettered to {}; {}",
        env.subject,
        env.id,
        mb.sub("failed").display(),
        maildir::known_endpoints_hint(&ctx.home)
    )))
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
            let f = std::fs::File::open(path).ctx("cannot open payload file", path)?;
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
