//! The MCP tools: DorkOS's relay tools (names, arguments, defaults, limits
//! and result shapes of `dorkos-http.md` §6) plus relay's own (`relay_ack`,
//! `relay_nack`, `relay_dead_letters`, `relay_status`), each a thin layer
//! over the code the commands run: the same access rules, rate limits,
//! breakers and backpressure apply as for `relay send`.
//!
//! Blocking and runtime-free: the server runs each call on a worker thread.
//! The sender is the server's `--as` identity, never an argument: unknown
//! arguments (a `from`, say) are refused, not ignored.

use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::cmd::send::{self, Outgoing, Published};
use crate::cmd::{ack, dlq, endpoints, metrics, recv, status, trace};
use crate::context::Ctx;
use crate::envelope::Budget;
use crate::error::{Error, Result};
use crate::inbox::{self, Filter};
use crate::maildir::{self, Mailbox, SUBDIRS};
use crate::mcp::dispatch;
use crate::pressure::Priority;
use crate::request::{self, Cancel, Outcome, Request};
use crate::subject::{self, DISPATCH_INBOX_PREFIX};
use crate::vocab::{Code, Status};

/// Subject prefixes DorkOS manages: an agent may register one only as its
/// own identity (`relay/lib/reserved-subjects.ts`).
const RESERVED: [&str; 6] = [
    "relay.agent.",
    "relay.system.",
    "relay.human.",
    "relay.control.",
    "relay.inbox.dispatch.",
    "relay.inbox.query.",
];
/// Longest accepted nack reason (as `relay nack`).
const MAX_REASON: usize = 4096;

/// One tool: its name, what it does, its input schema (JSON Schema), and
/// DorkOS's annotations.
pub struct ToolDef {
    /// The tool name.
    pub name: &'static str,
    /// One or two sentences for the model.
    pub description: &'static str,
    /// The JSON Schema of its arguments.
    pub schema: Value,
    /// Whether it only reads.
    pub read_only: bool,
    /// Whether it deletes something.
    pub destructive: bool,
    /// Whether repeating it changes nothing more.
    pub idempotent: bool,
}

/// The `budget` argument's schema (DorkOS's `RelayBudget` input).
fn budget_schema() -> Value {
    json!({
        "type": "object",
        "description": "Limits carried with the message",
        "properties": {
            "maxHops": {"type": "integer", "minimum": 1, "description": "Hop ceiling (default 5)"},
            "ttl": {"type": "integer", "description": "Absolute expiry, Unix epoch milliseconds (default: 1 hour from now)"},
            "callBudgetRemaining": {"type": "integer", "minimum": 0, "description": "Paid calls the chain may still make"}
        },
        "additionalProperties": false
    })
}

fn object(properties: Value, required: &[&str]) -> Value {
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

/// Every tool, in the order `tools/list` gives them.
#[must_use]
pub fn definitions() -> Vec<ToolDef> {
    let def = |name, description, schema, read_only, destructive, idempotent| ToolDef {
        name,
        description,
        schema,
        read_only,
        destructive,
        idempotent,
    };
    let subject = |d: &str| json!({"type": "string", "minLength": 1, "description": d});
    let payload = json!({"description": "The message: any JSON value"});
    let ids = json!({"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 100,
                     "description": "Message ids (ULIDs)"});
    vec![
        def(
            "relay_send",
            "Send a message to an endpoint subject or pattern (fan-out). You are the sender. Returns the message id and how many endpoints took it; refusals (rate limit, backpressure, open breaker) come back as errors with a retry-after.",
            object(
                json!({
                    "subject": subject("Endpoint subject or pattern, e.g. agent.backend or agent.*"),
                    "payload": payload,
                    "replyTo": subject("Subject replies and failure notices go to"),
                    "budget": budget_schema(),
                }),
                &["subject", "payload"],
            ),
            false,
            false,
            false,
        ),
        def(
            "relay_inbox",
            "List messages of an endpoint you own (your identity, or one you registered), oldest first, without claiming them. ack: true claims and acknowledges the pending ones returned (they are consumed); claim: true claims them with a lease, to finish with relay_ack or relay_nack.",
            object(
                json!({
                    "endpoint_subject": subject("The endpoint to read"),
                    "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50,
                              "description": "At most this many messages"},
                    "status": {"type": "string", "enum": ["pending", "claimed", "delivered", "failed", "all"],
                               "default": "pending",
                               "description": "pending (waiting), claimed (taken, not finished; DorkOS's delivered), failed (dead letters) or all"},
                    "ack": {"type": "boolean", "default": false,
                            "description": "Consume the pending messages returned (claim and acknowledge)"},
                    "claim": {"type": "boolean", "default": false,
                              "description": "Claim the pending messages returned with a lease; finish each with relay_ack or relay_nack"},
                }),
                &["endpoint_subject"],
            ),
            false,
            false,
            true,
        ),
        def(
            "relay_list_endpoints",
            "List every endpoint (mailbox) with its type and queue depth.",
            object(json!({}), &[]),
            true,
            false,
            true,
        ),
        def(
            "relay_register_endpoint",
            "Create an endpoint (mailbox) owned by you, so you can read it with relay_inbox.",
            object(
                json!({
                    "subject": subject("The endpoint subject, e.g. agent.me.tasks"),
                    "description": {"type": "string", "description": "What it is for (echoed back as the note)"},
                }),
                &["subject"],
            ),
            false,
            false,
            false,
        ),
        def(
            "relay_unregister_endpoint",
            "Remove an endpoint you own, with every message still in it.",
            object(
                json!({"subject": subject("The endpoint subject")}),
                &["subject"],
            ),
            false,
            true,
            false,
        ),
        def(
            "relay_send_and_wait",
            "Send a message with a private reply endpoint and wait for the first reply (progress messages are collected). Returns the reply; a timeout, a refusal or a failure notice (nacked, expired, denied) is an error.",
            object(
                json!({
                    "to_subject": subject("Endpoint subject or pattern to ask"),
                    "payload": payload,
                    "timeout_ms": {"type": "integer", "minimum": 1000, "maximum": 600_000, "default": 60_000,
                                   "description": "How long to wait for the reply, in milliseconds"},
                    "budget": budget_schema(),
                }),
                &["to_subject", "payload"],
            ),
            false,
            false,
            false,
        ),
        def(
            "relay_send_async",
            "Send a message whose replies go to a new inbox owned by you; returns at once with the inbox subject. Read replies with relay_inbox (ack: true), remove the inbox with relay_unregister_endpoint.",
            object(
                json!({
                    "to_subject": subject("Endpoint subject or pattern"),
                    "payload": payload,
                    "budget": budget_schema(),
                }),
                &["to_subject", "payload"],
            ),
            false,
            false,
            false,
        ),
        def(
            "relay_get_trace",
            "Every span of a message's trace (the request and its replies): endpoint, status, times.",
            object(
                json!({"messageId": subject("A message id (or trace id)")}),
                &["messageId"],
            ),
            true,
            false,
            true,
        ),
        def(
            "relay_get_metrics",
            "Delivery metrics of the last 24 hours: counts, latencies, budget rejections.",
            object(json!({}), &[]),
            true,
            false,
            true,
        ),
        def(
            "relay_ack",
            "Acknowledge messages you claimed (relay_inbox with claim: true): done, removed.",
            object(
                json!({"endpoint_subject": subject("The endpoint they were claimed from"), "ids": ids}),
                &["endpoint_subject", "ids"],
            ),
            false,
            true,
            true,
        ),
        def(
            "relay_nack",
            "Reject messages you claimed: dead-lettered with your reason; the sender's breaker counts a failure and a sender waiting for a reply is told.",
            object(
                json!({
                    "endpoint_subject": subject("The endpoint they were claimed from"),
                    "ids": ids,
                    "reason": {"type": "string", "minLength": 1, "maxLength": MAX_REASON, "description": "Why they failed"},
                }),
                &["endpoint_subject", "ids", "reason"],
            ),
            false,
            true,
            true,
        ),
        def(
            "relay_dead_letters",
            "List dead letters of endpoints you own or messages you sent (action list), or requeue them to their endpoint (action requeue, with ids).",
            object(
                json!({
                    "action": {"type": "string", "enum": ["list", "requeue"], "default": "list"},
                    "endpoint_subject": subject("Only this endpoint's dead letters"),
                    "ids": ids,
                    "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50,
                              "description": "At most this many (list)"},
                }),
                &[],
            ),
            false,
            false,
            false,
        ),
        def(
            "relay_status",
            "One view of the bus: endpoints with depth and pressure, open breakers, rate-limited senders, recent events.",
            object(json!({}), &[]),
            true,
            false,
            true,
        ),
    ]
}

/// What a call returns: its JSON (or, for arguments that do not fit the
/// schema, a plain text as DorkOS's SDK gives), and whether it is an error.
#[derive(Debug)]
pub struct ToolResult {
    /// The result: a JSON value (shown as pretty JSON text).
    pub value: Value,
    /// Plain text instead of `value` (argument errors).
    pub text: Option<String>,
    /// `isError`.
    pub is_error: bool,
    /// Also give `value` as `structuredContent` (`relay_get_metrics`).
    pub structured: bool,
}

impl ToolResult {
    fn ok(value: Value) -> Self {
        ToolResult {
            value,
            text: None,
            is_error: false,
            structured: false,
        }
    }

    fn err(value: Value) -> Self {
        ToolResult {
            value,
            text: None,
            is_error: true,
            structured: false,
        }
    }

    fn invalid(tool: &str, why: &str) -> Self {
        ToolResult {
            value: Value::Null,
            text: Some(format!(
                "MCP error -32602: Input validation error: Invalid arguments for tool {tool}: {why}"
            )),
            is_error: true,
            structured: false,
        }
    }

    /// The error result for a call that could not start (the home or its
    /// config cannot be read).
    #[must_use]
    pub fn setup_failed(e: &Error) -> Self {
        ToolResult::err(failure(
            if matches!(e, Error::Config(_)) {
                "CONFIG_INVALID"
            } else {
                "HOME_UNAVAILABLE"
            },
            e,
        ))
    }

    /// The result's text: pretty JSON, as DorkOS renders it.
    #[must_use]
    pub fn text(&self) -> String {
        match &self.text {
            Some(t) => t.clone(),
            None => serde_json::to_string_pretty(&self.value).unwrap_or_default(),
        }
    }
}

/// An error result `{error, code, kind, exitCode, retryAfterMs?}`: DorkOS's
/// `{error, code}` plus relay's kind and the exit code `relay` would give.
fn failure(code: &str, e: &Error) -> Value {
    let mut v = json!({
        "error": e.to_string(),
        "code": code,
        "kind": e.kind(),
        "exitCode": e.exit_code(),
    });
    if let Some(ms) = e.retry_after_ms() {
        v["retryAfterMs"] = ms.into();
    }
    v
}

/// The DorkOS code for an error from a relay function; `other` when none
/// of the common ones fits.
fn code_of(e: &Error, other: &'static str) -> &'static str {
    match e {
        Error::Denied(_) => "ACCESS_DENIED",
        Error::Refused { .. } => "REJECTED",
        Error::NoEndpoint(_) => "ENDPOINT_NOT_FOUND",
        _ => other,
    }
}

/// Runs tool `name` for `sender` with `args` (the call's `arguments`).
pub fn call(ctx: &mut Ctx, sender: &str, cancel: &Cancel, name: &str, args: Value) -> ToolResult {
    let args = match args {
        Value::Null => Value::Object(Map::new()),
        other => other,
    };
    let result = match name {
        "relay_send" => parse(name, args).map(|a| send_tool(ctx, sender, a)),
        "relay_inbox" => parse(name, args).map(|a| inbox_tool(ctx, sender, a)),
        "relay_list_endpoints" => parse::<NoArgs>(name, args).map(|_| list_endpoints(ctx)),
        "relay_register_endpoint" => parse(name, args).map(|a| register(ctx, sender, a)),
        "relay_unregister_endpoint" => parse(name, args).map(|a| unregister(ctx, sender, a)),
        "relay_send_and_wait" => parse(name, args).map(|a| send_and_wait(ctx, sender, cancel, a)),
        "relay_send_async" => parse(name, args).map(|a| send_async(ctx, sender, a)),
        "relay_get_trace" => parse(name, args).map(|a| get_trace(ctx, a)),
        "relay_get_metrics" => parse::<NoArgs>(name, args).map(|_| get_metrics(ctx)),
        "relay_ack" => parse(name, args).map(|a| finish(ctx, sender, a, None)),
        "relay_nack" => parse::<NackArgs>(name, args).and_then(|a| {
            if a.reason.is_empty() || a.reason.len() > MAX_REASON {
                return Err(ToolResult::invalid(
                    name,
                    &format!("reason must be 1-{MAX_REASON} bytes"),
                ));
            }
            let reason = a.reason.clone();
            Ok(finish(
                ctx,
                sender,
                AckArgs {
                    endpoint_subject: a.endpoint_subject,
                    ids: a.ids,
                },
                Some(&reason),
            ))
        }),
        "relay_dead_letters" => parse(name, args).map(|a| dead_letters(ctx, sender, a)),
        "relay_status" => parse::<NoArgs>(name, args).map(|_| status_tool(ctx)),
        other => Err(ToolResult {
            value: Value::Null,
            text: Some(format!(
                "MCP error -32602: Tool {} not found",
                other.escape_debug()
            )),
            is_error: true,
            structured: false,
        }),
    };
    result.unwrap_or_else(|e| e)
}

/// Parses a call's arguments; arguments outside the schema are refused
/// with DorkOS's SDK text, naming the sender for a `from`.
fn parse<T: DeserializeOwned>(tool: &str, args: Value) -> std::result::Result<T, ToolResult> {
    if let Some(obj) = args.as_object() {
        for key in ["from", "sender", "as"] {
            if obj.contains_key(key) {
                return Err(ToolResult::invalid(
                    tool,
                    &format!(
                        "there is no `{key}` argument: the sender is fixed by `relay mcp --as` and cannot be chosen per call"
                    ),
                ));
            }
        }
    }
    serde_json::from_value(args).map_err(|e| ToolResult::invalid(tool, &e.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

/// DorkOS's budget argument.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BudgetArg {
    #[serde(default)]
    max_hops: Option<u32>,
    #[serde(default)]
    ttl: Option<u64>,
    #[serde(default)]
    call_budget_remaining: Option<u32>,
}

impl BudgetArg {
    /// A fresh budget with these limits (`None` if none was given).
    fn budget(arg: Option<BudgetArg>, now: u64) -> std::result::Result<Option<Budget>, String> {
        let Some(b) = arg else { return Ok(None) };
        if b.max_hops == Some(0) {
            return Err("budget.maxHops must be 1 or more".into());
        }
        let mut budget = Budget::fresh(b.max_hops.unwrap_or(5), now, 3_600_000);
        if let Some(ttl) = b.ttl {
            budget.ttl = ttl;
        }
        if let Some(c) = b.call_budget_remaining {
            budget.call_budget_remaining = c;
        }
        Ok(Some(budget))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SendArgs {
    subject: String,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    budget: Option<BudgetArg>,
}

/// An `Outgoing` from `sender` (the MCP lane is normal priority).
fn outgoing(subject: String, payload: Value, sender: &str, budget: Option<Budget>) -> Outgoing {
    Outgoing {
        subject,
        payload,
        from: sender.to_string(),
        reply_to: None,
        ttl: None,
        max_hops: None,
        trace_id: None,
        priority: Priority::Normal,
        budget,
    }
}

/// DorkOS's per-endpoint rejection list from relay's (`{endpoint, code,
/// reason, ...}`): each entry as `POST /api/relay/messages` has it
/// (`send::dorkos_rejection`).
fn dorkos_rejected(rejected: &Value) -> Value {
    let list = rejected.as_array().cloned().unwrap_or_default();
    Value::Array(
        list.iter()
            .map(|r| {
                send::dorkos_rejection(
                    r["endpoint"].as_str().unwrap_or_default(),
                    r["code"].as_str().unwrap_or_default(),
                    r["reason"].as_str().unwrap_or_default(),
                    r["deadLettered"].as_bool().unwrap_or_default(),
                    r["retryAfterMs"].as_u64(),
                )
            })
            .collect(),
    )
}

fn invalid_subject(e: &Error) -> Value {
    failure("INVALID_SUBJECT", e)
}

/// How a publish went, in the terms the tools answer with.
enum Sendout {
    /// At least one endpoint took it.
    Sent {
        id: String,
        delivered: Vec<String>,
        /// relay's refusals (`endpoint, code, reason, retryAfterMs,
        /// deadLettered`).
        rejected: Value,
        warnings: Vec<String>,
    },
    /// Nothing matched: dead-lettered under its subject.
    Unmatched { id: String },
    /// Refused everywhere: the refusals and the error `relay send` gives.
    Refused {
        id: String,
        rejected: Value,
        error: Error,
    },
}

fn refusals_json(rejected: &[send::Refusal]) -> Value {
    Value::Array(
        rejected
            .iter()
            .map(|r| {
                json!({ "endpoint": r.endpoint, "code": r.code, "reason": r.reason,
                        "retryAfterMs": r.retry_after_ms, "deadLettered": r.dead_lettered })
            })
            .collect(),
    )
}

/// `send::publish` as the tools see it: a send no endpoint took gets the
/// error `relay send` would exit with (75 with the soonest retry-after
/// while a refusal may pass later, 74 for disk failures, else 65).
fn publish(ctx: &mut Ctx, msg: Outgoing) -> Result<Sendout> {
    Ok(match send::publish(ctx, msg, None)? {
        Published::Done {
            id,
            delivered,
            rejected,
            warnings,
        } if !delivered.is_empty() => Sendout::Sent {
            id,
            delivered,
            rejected: refusals_json(&rejected),
            warnings,
        },
        Published::Done { id, rejected, .. } => {
            let detail = rejected
                .iter()
                .map(|r| r.reason.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            let retryable: Vec<&send::Refusal> = rejected
                .iter()
                .filter(|r| !r.dead_lettered && !r.code.is_io())
                .collect();
            let error = if !retryable.is_empty() {
                Error::Refused {
                    message: detail,
                    retry_after_ms: retryable.iter().filter_map(|r| r.retry_after_ms).min(),
                }
            } else if rejected.iter().all(|r| r.code.is_io()) {
                Error::Io {
                    what: format!("message {id} could not be delivered"),
                    source: std::io::Error::other(detail),
                }
            } else {
                Error::Data(format!(
                    "message {id} was dead-lettered at every endpoint: {detail}"
                ))
            };
            Sendout::Refused {
                rejected: refusals_json(&rejected),
                id,
                error,
            }
        }
        Published::NoMatch { id } => Sendout::Unmatched { id },
        Published::RateLimited {
            id,
            reason,
            retry_after_ms,
        } => Sendout::Refused {
            id,
            rejected: json!([{ "endpoint": "*", "code": Code::RateLimited, "reason": reason,
                               "retryAfterMs": retry_after_ms, "deadLettered": false }]),
            error: Error::Refused {
                message: reason,
                retry_after_ms,
            },
        },
        // No idempotency key is given here; kept for completeness.
        Published::Duplicate { original } => Sendout::Sent {
            id: original,
            delivered: Vec::new(),
            rejected: json!([]),
            warnings: vec!["a repeat of an earlier message; nothing sent".into()],
        },
    })
}

fn send_tool(ctx: &mut Ctx, sender: &str, a: SendArgs) -> ToolResult {
    if let Err(e) = subject::validate_pattern(&a.subject, "subject") {
        return ToolResult::err(invalid_subject(&e));
    }
    let budget = match BudgetArg::budget(a.budget, ctx.clock.now_ms()) {
        Ok(b) => b,
        Err(why) => return ToolResult::invalid("relay_send", &why),
    };
    let subject = a.subject.clone();
    let mut msg = outgoing(a.subject, a.payload, sender, budget);
    msg.reply_to = a.reply_to;
    match publish(ctx, msg) {
        Ok(Sendout::Sent {
            id,
            delivered,
            rejected,
            warnings,
        }) => {
            let mut v = json!({
                "messageId": id,
                "deliveredTo": delivered.len(),
                "queued": delivered.is_empty(),
                "traceId": id,
                "endpoints": delivered,
            });
            let rejected = dorkos_rejected(&rejected);
            if rejected.as_array().is_some_and(|r| !r.is_empty()) {
                v["rejected"] = rejected;
            }
            if !warnings.is_empty() {
                v["warnings"] = json!(warnings);
            }
            ToolResult::ok(v)
        }
        // DorkOS: a publish that matched nothing is a success, queued
        // (dead-lettered under its subject).
        Ok(Sendout::Unmatched { id }) => ToolResult::ok(json!({
            "messageId": id,
            "deliveredTo": 0,
            "queued": true,
            "note": format!("no endpoint matches '{subject}'; the message is dead-lettered under it (relay dlq shows it)"),
        })),
        Ok(Sendout::Refused {
            id,
            rejected,
            error,
        }) => ToolResult::err(rejection(&id, &rejected, &error)),
        Err(e) => {
            let mut v = failure(code_of(&e, "PUBLISH_FAILED"), &e);
            if matches!(e, Error::Denied(_)) {
                v["hint"] = "the access rules (access-rules.json in the relay home) refuse this sender to this subject; only the operator can change them".into();
            }
            ToolResult::err(v)
        }
    }
}

/// DorkOS's REJECTED error: `"Message rejected: <first reason>"`, the
/// rejections, relay's message and the retry-after.
fn rejection(id: &str, rejected: &Value, error: &Error) -> Value {
    let list = dorkos_rejected(rejected);
    let first = list[0]["reason"].as_str().unwrap_or("refused").to_string();
    let mut v = failure("REJECTED", error);
    v["error"] = format!("Message rejected: {first}").into();
    v["message"] = error.to_string().into();
    v["reason"] = first.into();
    v["rejected"] = list;
    if !id.is_empty() {
        v["messageId"] = id.into();
    }
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InboxArgs {
    endpoint_subject: String,
    #[serde(default = "fifty")]
    limit: u32,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    ack: bool,
    #[serde(default)]
    claim: bool,
}

fn fifty() -> u32 {
    50
}

/// The recorded owner of a mailbox (DorkOS's `.owner` marker), trimmed.
pub fn owner_of(mb: &Mailbox) -> Option<String> {
    let path = mb.dir().join(".owner");
    let meta = std::fs::symlink_metadata(&path).ok()?;
    if !meta.is_file() || meta.len() > 1024 {
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let owner = text.trim();
    (!owner.is_empty()).then(|| owner.to_string())
}

/// Whether `sender` owns endpoint `subject`: it is its identity, or the
/// recorded owner (DorkOS's rule).
fn owns(ctx: &Ctx, sender: &str, subject: &str) -> bool {
    subject == sender || owner_of(&Mailbox::at(&ctx.home, subject)).as_deref() == Some(sender)
}

/// The endpoint `subject`, if it exists and `sender` owns it; else the
/// error result (not found, not yours).
fn owned(ctx: &Ctx, sender: &str, subject: &str) -> std::result::Result<Mailbox, Value> {
    if let Err(e) = subject::validate_subject(subject, "endpoint") {
        return Err(invalid_subject(&e));
    }
    let mb = Mailbox::at(&ctx.home, subject);
    if !mb.is_endpoint() {
        return Err(not_found(subject));
    }
    if !owns(ctx, sender, subject) {
        return Err(json!({
            "error": format!(
                "You do not own the endpoint \"{subject}\": only its owner reads or changes it (you are {sender}; you own your identity's endpoint and those you registered)"
            ),
            "code": "ENDPOINT_ACCESS_DENIED",
            "kind": "denied",
            "exitCode": crate::error::code::NOPERM,
        }));
    }
    Ok(mb)
}

fn not_found(subject: &str) -> Value {
    json!({
        "error": format!("Endpoint not found: {subject}"),
        "code": "ENDPOINT_NOT_FOUND",
        "kind": "no_endpoint",
        "exitCode": crate::error::code::UNAVAILABLE,
    })
}

/// One message as `relay_inbox` lists it: DorkOS's InboxMessage fields
/// (`id, subject, endpointHash, status, createdAt, expiresAt, sender,
/// payload`) plus relay's (`replyTo`, `traceId`, `deliveryCount`,
/// `failure`, `problem`).
fn inbox_item(endpoint: &str, p: &inbox::Peeked) -> Value {
    let full = p.to_json();
    let env = p.envelope.as_ref();
    let mut v = json!({
        "id": p.id,
        "subject": env.map(|e| e.subject.clone()),
        "endpointHash": endpoint,
        "status": p.state.as_str(),
        "createdAt": env.map(|e| e.created_at.clone()),
        "expiresAt": env.map(|e| crate::clock::iso8601(e.budget.ttl)),
        "sender": env.map(|e| e.from.clone()),
        "payload": env.map_or(Value::Null, |e| e.payload.clone()),
    });
    for key in [
        "replyTo",
        "traceId",
        "deliveryCount",
        "failure",
        "problem",
        "claimedAt",
    ] {
        if let Some(x) = full.get(key) {
            v[key] = x.clone();
        }
    }
    v
}

fn claimed_item(endpoint: &str, env: &crate::envelope::Envelope, status: Status) -> Value {
    json!({
        "id": env.id,
        "subject": env.subject,
        "endpointHash": endpoint,
        "status": status,
        "createdAt": env.created_at,
        "expiresAt": crate::clock::iso8601(env.budget.ttl),
        "sender": env.from,
        "payload": env.payload,
        "replyTo": env.reply_to,
        "traceId": env.trace(),
        "deliveryCount": env.delivery_count,
    })
}

fn inbox_tool(ctx: &mut Ctx, sender: &str, a: InboxArgs) -> ToolResult {
    const TOOL: &str = "relay_inbox";
    if !(1..=100).contains(&a.limit) {
        return ToolResult::invalid(TOOL, "limit must be an integer from 1 to 100");
    }
    let filter = match a.status.as_deref().unwrap_or("pending") {
        "delivered" => Filter::Claimed,
        other => match other.parse::<Filter>() {
            Ok(f) => f,
            Err(e) => return ToolResult::invalid(TOOL, &e.to_string()),
        },
    };
    if a.ack && a.claim {
        return ToolResult::invalid(TOOL, "ack and claim exclude each other");
    }
    let mb = match owned(ctx, sender, &a.endpoint_subject) {
        Ok(mb) => mb,
        Err(e) => return ToolResult::err(e),
    };
    if mb.name.starts_with(DISPATCH_INBOX_PREFIX) {
        // A read keeps a dispatch inbox from being swept as idle.
        dispatch::touch(&mb, ctx.clock.now_ms());
    }
    let limit = a.limit as usize;
    let mut messages = Vec::new();
    let take_pending = (a.ack || a.claim) && matches!(filter, Filter::Pending | Filter::All);
    if take_pending {
        let lease = a.claim.then(|| crate::lease::default_ms(&ctx.config));
        let claimed = match recv::take(ctx, &mb, limit, lease) {
            Ok(c) => c,
            Err(e) => return ToolResult::err(failure(code_of(&e, "INBOX_READ_FAILED"), &e)),
        };
        for c in claimed {
            let env = c.envelope;
            if a.ack {
                // At most once, as DorkOS: acked as it is returned.
                if let Err(e) = ack::settle(ctx, &mb, &env.id, None, Some(env.delivery_count)) {
                    crate::output::warn(&format!("cannot ack {}: {e}", env.id));
                }
                messages.push(claimed_item(&mb.name, &env, Status::Pending));
            } else {
                messages.push(claimed_item(&mb.name, &env, Status::Claimed));
            }
        }
    }
    let rest = match filter {
        Filter::All if take_pending => Some(Filter::All),
        Filter::Pending if take_pending => None,
        f => Some(f),
    };
    let mut total = messages.len();
    if let Some(f) = rest {
        let left = limit.saturating_sub(messages.len());
        match inbox::peek(&ctx.home, &mb.name, f, left) {
            Ok(listing) => {
                let taken: Vec<String> = messages
                    .iter()
                    .filter_map(|m| m["id"].as_str().map(str::to_string))
                    .collect();
                // Claimed just now (claim: true) and listed again: once.
                let again = listing
                    .messages
                    .iter()
                    .filter(|p| taken.contains(&p.id))
                    .count();
                total += listing.total - again;
                messages.extend(
                    listing
                        .messages
                        .iter()
                        // Just claimed above: already listed.
                        .filter(|p| !taken.contains(&p.id))
                        .map(|p| inbox_item(&mb.name, p)),
                );
            }
            Err(e) => return ToolResult::err(failure(code_of(&e, "INBOX_READ_FAILED"), &e)),
        }
    }
    let mut v = json!({ "messages": messages, "total": total });
    if let Some(last) = messages.last().filter(|_| total > messages.len()) {
        v["nextCursor"] = format!("{} {}", last["id"].as_str().unwrap_or_default(), mb.name).into();
    }
    ToolResult::ok(v)
}

/// The endpoint type DorkOS's list gives (`relay/types.ts`).
fn endpoint_type(subject: &str) -> &'static str {
    if subject.starts_with(DISPATCH_INBOX_PREFIX) {
        "dispatch"
    } else if subject.starts_with(request::REPLY_PREFIX) {
        "query"
    } else if subject.starts_with("relay.inbox.") {
        "persistent"
    } else if subject.starts_with("relay.agent.") {
        "agent"
    } else {
        "unknown"
    }
}

/// When a mailbox was made (its birth time, else its change time), ms.
fn registered_at(mb: &Mailbox) -> u64 {
    std::fs::metadata(mb.dir())
        .ok()
        .and_then(|m| m.created().or_else(|_| m.modified()).ok())
        .map_or(0, crate::clock::system_time_ms)
}

/// DorkOS's EndpointInfo (`subject, hash, maildirPath, registeredAt`, and
/// `owner` when recorded).
fn endpoint_info(mb: &Mailbox) -> Value {
    let mut v = json!({
        "subject": mb.name,
        "hash": mb.name,
        "maildirPath": mb.dir().display().to_string(),
        "registeredAt": crate::clock::iso8601(registered_at(mb)),
    });
    if let Some(o) = owner_of(mb) {
        v["owner"] = o.into();
    }
    v
}

fn list_endpoints(ctx: &mut Ctx) -> ToolResult {
    let infos = match endpoints::infos(ctx) {
        Ok(i) => i,
        Err(e) => return ToolResult::err(failure("LIST_FAILED", &e)),
    };
    let list: Vec<Value> = infos
        .iter()
        .map(|i| {
            let mb = Mailbox::at(&ctx.home, &i.subject);
            let at = registered_at(&mb);
            let kind = endpoint_type(&i.subject);
            json!({
                "subject": i.subject,
                "hash": i.subject,
                "maildirPath": mb.dir().display().to_string(),
                "registeredAt": crate::clock::iso8601(at),
                "type": kind,
                "expiresAt": (kind == "dispatch").then(|| crate::clock::iso8601(at + dispatch::TTL_MS)),
                "pending": i.new,
                "claimed": i.cur,
                "failed": i.failed,
            })
        })
        .collect();
    ToolResult::ok(json!({ "count": list.len(), "endpoints": list }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterArgs {
    subject: String,
    #[serde(default)]
    description: Option<String>,
}

/// Creates endpoint `subject` owned by `sender` (its `.owner` marker, as
/// DorkOS writes it: the principal, no newline).
fn create_owned(ctx: &Ctx, sender: &str, subject: &str) -> Result<Mailbox> {
    let mb = Mailbox::at(&ctx.home, subject);
    mb.create(&SUBDIRS)?;
    let path = mb.dir().join(".owner");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io("cannot record the owner in", &path, e))?;
        f.write_all(sender.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::io("cannot record the owner in", &path, e))?;
    }
    crate::home::sync_dir(mb.dir())?;
    crate::home::sync_dir(&ctx.home.mailboxes())?;
    Ok(mb)
}

fn register(ctx: &mut Ctx, sender: &str, a: RegisterArgs) -> ToolResult {
    let s = a.subject.as_str();
    if let Err(e) = subject::validate_subject(s, "endpoint") {
        return ToolResult::err(invalid_subject(&e));
    }
    if s != sender && RESERVED.iter().any(|p| s.starts_with(p)) {
        return ToolResult::err(json!({
            "error": format!("Subject \"{s}\" is in a namespace DorkOS manages (relay.agent., relay.system., relay.human., relay.control., relay.inbox.dispatch., relay.inbox.query.); register it only as your own identity ({sender})"),
            "code": "RESERVED_SUBJECT",
            "kind": "denied",
            "exitCode": crate::error::code::NOPERM,
        }));
    }
    let denied = |msg: String| {
        ToolResult::err(json!({
            "error": msg, "code": "ENDPOINT_ACCESS_DENIED", "kind": "denied",
            "exitCode": crate::error::code::NOPERM,
        }))
    };
    let mb = Mailbox::at(&ctx.home, s);
    if mb.is_endpoint() {
        if let Some(o) = owner_of(&mb).filter(|o| o != sender) {
            return denied(format!("Endpoint \"{s}\" belongs to another owner ({o})"));
        }
        return ToolResult::err(json!({
            "error": format!("Endpoint \"{s}\" is already registered"),
            "code": "REGISTRATION_FAILED", "kind": "data",
            "exitCode": crate::error::code::DATAERR,
        }));
    }
    match maildir::mailbox_dir_names(&ctx.home) {
        Ok(names) => {
            if let Some(other) = maildir::case_twin(s, names.iter()) {
                return denied(format!(
                    "Endpoint \"{s}\" collides with \"{other}\" (they differ only in case)"
                ));
            }
        }
        Err(e) => return ToolResult::err(failure("REGISTRATION_FAILED", &e)),
    }
    match create_owned(ctx, sender, s) {
        Ok(mb) => ToolResult::ok(json!({
            "endpoint": endpoint_info(&mb),
            "note": a.description.unwrap_or_else(|| "Endpoint registered".into()),
        })),
        Err(e) => ToolResult::err(failure("REGISTRATION_FAILED", &e)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubjectArg {
    subject: String,
}

fn unregister(ctx: &mut Ctx, sender: &str, a: SubjectArg) -> ToolResult {
    if let Err(e) = owned(ctx, sender, &a.subject) {
        return ToolResult::err(e);
    }
    match endpoints::remove_endpoint(&ctx.home, &a.subject, true) {
        Ok(deleted) => ToolResult::ok(json!({
            "success": true, "subject": a.subject, "deletedMessages": deleted,
        })),
        Err(Error::NoEndpoint(_)) => ToolResult::err(not_found(&a.subject)),
        Err(e) => ToolResult::err(failure("UNREGISTER_FAILED", &e)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitArgs {
    to_subject: String,
    #[serde(default)]
    payload: Value,
    #[serde(default = "sixty_seconds")]
    timeout_ms: u64,
    #[serde(default)]
    budget: Option<BudgetArg>,
}

fn sixty_seconds() -> u64 {
    60_000
}

/// The failure text of an agent's reply (DorkOS's AGENT_ERROR): a payload
/// `{type:"error", data:{message}}` or `{type:"agent_result", error}`.
fn agent_error(payload: &Value) -> Option<String> {
    match payload.get("type").and_then(Value::as_str) {
        Some("error") => Some(
            payload
                .pointer("/data/message")
                .and_then(Value::as_str)
                .unwrap_or("the agent failed")
                .to_string(),
        ),
        Some("agent_result") => payload
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}

fn send_and_wait(ctx: &mut Ctx, sender: &str, cancel: &Cancel, a: WaitArgs) -> ToolResult {
    const TOOL: &str = "relay_send_and_wait";
    if !(1000..=600_000).contains(&a.timeout_ms) {
        return ToolResult::invalid(TOOL, "timeout_ms must be an integer from 1000 to 600000");
    }
    if let Err(e) = subject::validate_pattern(&a.to_subject, "subject") {
        return ToolResult::err(invalid_subject(&e));
    }
    let budget = match BudgetArg::budget(a.budget, ctx.clock.now_ms()) {
        Ok(b) => b,
        Err(why) => return ToolResult::invalid(TOOL, &why),
    };
    let timeout = Duration::from_millis(a.timeout_ms);
    let mut req = Request::new(&a.to_subject, a.payload, sender, timeout);
    req.budget = budget;
    let exchange = match request::request(ctx, req, cancel) {
        Ok(x) => x,
        Err(e @ Error::Refused { .. }) => {
            let mut v = failure("REJECTED", &e);
            v["error"] = format!("Message rejected: {e}").into();
            v["reason"] = e.to_string().into();
            return ToolResult::err(v);
        }
        Err(e @ Error::NoEndpoint(_)) => {
            // Nothing can answer: DorkOS would wait out the timeout.
            return ToolResult::err(failure("QUERY_FAILED", &e));
        }
        Err(e) => return ToolResult::err(failure(code_of(&e, "QUERY_FAILED"), &e)),
    };
    let sent_id = exchange.sent.id.clone();
    let base = json!({
        "sentMessageId": sent_id,
        "traceId": exchange.trace_id,
        "progress": exchange.progress,
        "waitedMs": crate::clock::ms(exchange.waited),
    });
    let with = |mut v: Value| {
        if let (Some(v), Some(b)) = (v.as_object_mut(), base.as_object()) {
            for (k, x) in b {
                v.entry(k.clone()).or_insert_with(|| x.clone());
            }
        }
        v
    };
    match &exchange.outcome {
        Outcome::Replied(reply) => {
            if let Some(m) = agent_error(&reply.payload) {
                return ToolResult::err(with(json!({
                    "error": format!("Agent turn failed: {m}"),
                    "code": "AGENT_ERROR",
                    "from": reply.from,
                    "partialText": reply.payload.get("text").cloned().unwrap_or(Value::Null),
                    "replyMessageId": reply.id,
                })));
            }
            ToolResult::ok(with(json!({
                "reply": reply.payload,
                "from": reply.from,
                "replyMessageId": reply.id,
            })))
        }
        Outcome::TimedOut => {
            let e = exchange.clone().into_reply().err();
            let mut v = json!({
                "error": format!("relay_send_and_wait timed out after {}ms (sent {sent_id})", a.timeout_ms),
                "code": "TIMEOUT",
                "kind": "refused",
                "exitCode": crate::error::code::TEMPFAIL,
            });
            if let Some(e) = e {
                v["message"] = e.to_string().into();
            }
            ToolResult::err(with(v))
        }
        Outcome::Failed(n) => {
            let e = exchange.clone().into_reply().err();
            let mut v = json!({
                "error": e.as_ref().map(ToString::to_string),
                "code": "DELIVERY_FAILED",
                "failure": {"code": n.code_str(), "reason": n.reason, "endpoint": n.endpoint},
            });
            if let Some(e) = e {
                v["kind"] = e.kind().into();
                v["exitCode"] = e.exit_code().into();
            }
            ToolResult::err(with(v))
        }
        Outcome::Cancelled => ToolResult::err(with(json!({
            "error": format!("the server is stopping; stopped waiting for a reply to {sent_id}"),
            "code": "CANCELLED",
            "kind": "interrupted",
            "exitCode": crate::error::code::INTERRUPTED,
        }))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AsyncArgs {
    to_subject: String,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    budget: Option<BudgetArg>,
}

fn send_async(ctx: &mut Ctx, sender: &str, a: AsyncArgs) -> ToolResult {
    if let Err(e) = subject::validate_pattern(&a.to_subject, "subject") {
        return ToolResult::err(invalid_subject(&e));
    }
    let budget = match BudgetArg::budget(a.budget, ctx.clock.now_ms()) {
        Ok(b) => b,
        Err(why) => return ToolResult::invalid("relay_send_async", &why),
    };
    let inbox = format!("{DISPATCH_INBOX_PREFIX}{}", crate::envelope::random_ulid());
    match create_owned(ctx, sender, &inbox) {
        // Idle from now on, by the clock that judges it (`dispatch::sweep`).
        Ok(mb) => dispatch::touch(&mb, ctx.clock.now_ms()),
        Err(e) => return ToolResult::err(failure("REGISTRATION_FAILED", &e)),
    }
    let mut msg = outgoing(a.to_subject, a.payload, sender, budget);
    msg.reply_to = Some(inbox.clone());
    let drop_inbox = |ctx: &Ctx| {
        if let Err(e) = endpoints::remove_endpoint(&ctx.home, &inbox, true) {
            crate::output::warn(&format!("cannot remove the inbox '{inbox}': {e}"));
        }
    };
    match publish(ctx, msg) {
        Ok(Sendout::Sent { id, delivered, .. }) => ToolResult::ok(json!({
            "messageId": id,
            "inboxSubject": inbox,
            "traceId": id,
            "deliveredTo": delivered.len(),
            "note": format!("Replies arrive at {inbox}: read them with relay_inbox (endpoint_subject \"{inbox}\", ack: true); remove the inbox with relay_unregister_endpoint when done"),
        })),
        Ok(Sendout::Unmatched { id }) => {
            drop_inbox(ctx);
            ToolResult::err(json!({
                "error": "no endpoint matches the subject: the message is dead-lettered under it, and nothing will reply",
                "code": "DISPATCH_FAILED", "messageId": id,
                "kind": "no_endpoint", "exitCode": crate::error::code::UNAVAILABLE,
            }))
        }
        Ok(Sendout::Refused {
            id,
            rejected,
            error,
        }) => {
            drop_inbox(ctx);
            ToolResult::err(rejection(&id, &rejected, &error))
        }
        Err(e) => {
            drop_inbox(ctx);
            ToolResult::err(failure(code_of(&e, "DISPATCH_FAILED"), &e))
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TraceArg {
    message_id: String,
}

/// Opens the index for a read-only tool without waiting for another
/// process's write (`Ctx::store_without_waiting`): a server never stalls
/// on a writer; the journal is moved in once the lock is free.
fn open_for_reading(ctx: &mut Ctx) -> Result<()> {
    ctx.store_without_waiting().map(|_| ())
}

fn get_trace(ctx: &mut Ctx, a: TraceArg) -> ToolResult {
    match open_for_reading(ctx).and_then(|()| trace::lookup(ctx, &a.message_id)) {
        Ok(Some((trace_id, spans))) => {
            ToolResult::ok(json!({ "traceId": trace_id, "spans": spans }))
        }
        Ok(None) => {
            ToolResult::err(json!({ "error": "Trace not found", "messageId": a.message_id }))
        }
        Err(e) => ToolResult::err(failure("TRACE_FAILED", &e)),
    }
}

fn get_metrics(ctx: &mut Ctx) -> ToolResult {
    let since = ctx.clock.now_ms().saturating_sub(24 * 3_600_000);
    match open_for_reading(ctx).and_then(|()| metrics::compute(ctx, since)) {
        Ok(v) => ToolResult {
            structured: true,
            ..ToolResult::ok(v)
        },
        Err(e) => ToolResult::err(failure("METRICS_FAILED", &e)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckArgs {
    endpoint_subject: String,
    ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NackArgs {
    endpoint_subject: String,
    ids: Vec<String>,
    reason: String,
}

/// `relay_ack` (`reason` None) and `relay_nack`: the same settle as `relay
/// ack`/`relay nack`, one id at a time; an error when none was finished.
fn finish(ctx: &mut Ctx, sender: &str, a: AckArgs, reason: Option<&str>) -> ToolResult {
    let tool = if reason.is_some() {
        "relay_nack"
    } else {
        "relay_ack"
    };
    if a.ids.is_empty() || a.ids.len() > 100 {
        return ToolResult::invalid(tool, "ids must hold 1 to 100 message ids");
    }
    for id in &a.ids {
        if let Err(e) = maildir::validate_id(id) {
            return ToolResult::invalid(tool, &e.to_string());
        }
    }
    let mb = match owned(ctx, sender, &a.endpoint_subject) {
        Ok(mb) => mb,
        Err(e) => return ToolResult::err(e),
    };
    let (mut done, mut gone, mut refused) = (Vec::new(), Vec::new(), Vec::new());
    for id in &a.ids {
        match ack::settle(ctx, &mb, id, reason, None) {
            Ok(ack::Settled::Done) => done.push(id.clone()),
            Ok(ack::Settled::Gone) => gone.push(id.clone()),
            Ok(ack::Settled::Refused(why)) => refused.push(json!({ "id": id, "reason": why })),
            Err(e) => return ToolResult::err(failure(code_of(&e, "SETTLE_FAILED"), &e)),
        }
    }
    let key = if reason.is_some() { "nacked" } else { "acked" };
    let mut v = json!({
        "endpoint": mb.name,
        key: done,
        "notClaimed": gone,
        "refused": refused,
    });
    if done.is_empty() {
        v["error"] = format!(
            "nothing {key}: the messages are not claimed in '{}' (finished already, never claimed, or their lease ran out)",
            mb.name
        )
        .into();
        v["code"] = "NOT_CLAIMED".into();
        return ToolResult::err(v);
    }
    ToolResult::ok(v)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadLetterArgs {
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    endpoint_subject: Option<String>,
    #[serde(default)]
    ids: Option<Vec<String>>,
    #[serde(default = "fifty")]
    limit: u32,
}

/// Whether `sender` may see (and requeue) dead letter `d`: it owns the
/// endpoint, or sent the message.
fn visible(ctx: &Ctx, sender: &str, d: &dlq::DeadLetter) -> bool {
    owns(ctx, sender, d.endpoint())
        || d.envelope()
            .and_then(|e| e.get("from"))
            .and_then(Value::as_str)
            == Some(sender)
}

fn dead_letters(ctx: &mut Ctx, sender: &str, a: DeadLetterArgs) -> ToolResult {
    const TOOL: &str = "relay_dead_letters";
    if !(1..=100).contains(&a.limit) {
        return ToolResult::invalid(TOOL, "limit must be an integer from 1 to 100");
    }
    if let Some(e) = &a.endpoint_subject
        && let Err(e) = subject::validate_pattern(e, "endpoint")
    {
        return ToolResult::err(invalid_subject(&e));
    }
    let endpoint = a.endpoint_subject.as_deref();
    let letters = match dlq::collect(ctx, endpoint, true) {
        Ok(l) => l,
        Err(e) => return ToolResult::err(failure("DEAD_LETTERS_FAILED", &e)),
    };
    let mine: Vec<&dlq::DeadLetter> = letters.iter().filter(|d| visible(ctx, sender, d)).collect();
    match a.action.as_deref().unwrap_or("list") {
        "list" => {
            let entries: Vec<Value> = mine
                .iter()
                .take(a.limit as usize)
                .map(|d| {
                    let v = serde_json::to_value(d).unwrap_or(Value::Null);
                    json!({
                        "messageId": d.id(),
                        "endpointHash": d.endpoint(),
                        "reason": v["reason"].as_str().unwrap_or("unknown"),
                        "code": v["code"],
                        "failedAt": v["failedAt"],
                        "envelope": d.envelope(),
                    })
                })
                .collect();
            ToolResult::ok(json!({ "total": mine.len(), "deadLetters": entries }))
        }
        "requeue" => {
            let Some(ids) = a.ids.filter(|i| !i.is_empty() && i.len() <= 100) else {
                return ToolResult::invalid(TOOL, "requeue needs ids: 1 to 100 message ids");
            };
            let (allowed, hidden): (Vec<String>, Vec<String>) = ids
                .into_iter()
                .partition(|id| mine.iter().any(|d| d.id() == id));
            let requeued = if allowed.is_empty() {
                None
            } else {
                match dlq::requeue_letters(ctx, endpoint, &allowed, false) {
                    Ok(r) => Some(r),
                    Err(e) => return ToolResult::err(failure(code_of(&e, "REQUEUE_FAILED"), &e)),
                }
            };
            let (done, failed) = requeued.map_or((Vec::new(), Vec::new()), |r| (r.done, r.failed));
            let done: Vec<Value> = done
                .iter()
                .map(|(ep, env, _)| json!({ "id": env.id, "endpoint": ep }))
                .collect();
            let mut failures: Vec<Value> = failed
                .iter()
                .flat_map(|(letters, e)| {
                    let one = |id: Option<&str>| {
                        json!({ "id": id, "code": e.kind(), "exitCode": e.exit_code(), "message": e.to_string() })
                    };
                    if letters.is_empty() {
                        vec![one(None)]
                    } else {
                        letters.iter().map(|d| one(Some(d.id()))).collect()
                    }
                })
                .collect();
            failures.extend(hidden.iter().map(|id| {
                json!({ "id": id, "code": "not_found",
                        "message": format!("no dead letter '{id}' of an endpoint you own or a message you sent") })
            }));
            let mut v = json!({ "requeued": done, "failed": failures });
            if done.is_empty() {
                v["error"] = "nothing requeued (see failed)".into();
                v["code"] = "REQUEUE_FAILED".into();
                return ToolResult::err(v);
            }
            ToolResult::ok(v)
        }
        other => ToolResult::invalid(
            TOOL,
            &format!("action '{}' is not list or requeue", other.escape_debug()),
        ),
    }
}

/// `relay status --json`, as `relay serve`'s status route answers it: a
/// server never waits for the index's write lock (see
/// `status::snapshot_without_waiting`).
fn status_tool(ctx: &mut Ctx) -> ToolResult {
    match status::snapshot_without_waiting(ctx, 20) {
        Ok(s) => ToolResult::ok(serde_json::to_value(s).unwrap_or(Value::Null)),
        Err(e) => ToolResult::err(failure("STATUS_FAILED", &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_has_an_object_schema_and_a_short_description() {
        let defs = definitions();
        assert_eq!(defs.len(), 13);
        for d in &defs {
            assert_eq!(d.schema["type"], "object", "{}", d.name);
            assert!(d.description.len() < 300, "{}", d.name);
            for r in d.schema["required"].as_array().into_iter().flatten() {
                let r = r.as_str().unwrap_or_default();
                assert!(d.schema["properties"].get(r).is_some(), "{}: {r}", d.name);
            }
            assert!(
                d.schema["properties"].get("from").is_none(),
                "{}: no sender argument",
                d.name
            );
        }
    }

    #[test]
    fn dorkos_reason_words() {
        let r = dorkos_rejected(&json!([
            {"endpoint": "a", "code": "backpressure", "reason": "full", "deadLettered": false, "retryAfterMs": 5},
            {"endpoint": "b", "code": "circuit_open", "reason": "open", "deadLettered": false},
            {"endpoint": "c", "code": "hop_limit", "reason": "hops", "deadLettered": true},
            {"endpoint": "d", "code": "access_denied", "reason": "no", "deadLettered": true},
            {"endpoint": "e", "code": "someone_elses", "reason": "?", "deadLettered": true},
        ]));
        assert_eq!(r[0]["endpointHash"], "a");
        assert_eq!(r[0]["reason"], "backpressure");
        assert_eq!(r[0]["retryAfterMs"], 5);
        assert_eq!(r[1]["reason"], "circuit_open");
        assert_eq!(r[2]["reason"], "budget_exceeded");
        assert_eq!(r[2]["code"], "hop_limit");
        assert_eq!(r[3]["reason"], "initiate_denied");
        assert_eq!(r[3]["code"], "access_denied");
        assert_eq!(r[3]["detail"], "no");
        assert_eq!(r[4]["reason"], "someone_elses");
    }

    /// Every code relay refuses with reads the same in `relay_send`'s
    /// `rejected` as in `POST /api/relay/messages`'s (`Refusal::dorkos`),
    /// field by field.
    #[test]
    fn rejected_entries_are_those_of_the_http_route() {
        for &code in Code::ALL {
            for (dead_lettered, retry) in [(true, None), (false, Some(250))] {
                let refusal = send::Refusal {
                    endpoint: "agent.x".into(),
                    code,
                    reason: format!("refused: {code}"),
                    dead_lettered,
                    retry_after_ms: retry,
                };
                let mcp = dorkos_rejected(&refusals_json(std::slice::from_ref(&refusal)));
                assert_eq!(mcp, json!([refusal.dorkos()]), "{code}");
            }
        }
        let denied = send::Refusal {
            endpoint: "agent.x".into(),
            code: Code::AccessDenied,
            reason: "no".into(),
            dead_lettered: true,
            retry_after_ms: None,
        };
        assert_eq!(
            denied.dorkos(),
            json!({"endpointHash": "agent.x", "reason": "initiate_denied",
                   "code": "access_denied", "detail": "no", "deadLettered": true})
        );
    }

    #[test]
    fn agent_errors_are_recognised() {
        assert_eq!(
            agent_error(&json!({"type": "error", "data": {"message": "boom"}})).as_deref(),
            Some("boom")
        );
        assert_eq!(
            agent_error(
                &json!({"type": "agent_result", "text": "t", "done": true, "error": "bad"})
            )
            .as_deref(),
            Some("bad")
        );
        assert_eq!(
            agent_error(&json!({"type": "agent_result", "done": true})),
            None
        );
        assert_eq!(agent_error(&json!("hello")), None);
    }
}
