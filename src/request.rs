//! Request/reply (`relay request`, the MCP server's `relay_send_and_wait`):
//! send a message whose `replyTo` is a private endpoint made for it, wait
//! (filesystem notifications, no polling) for the first reply there, and
//! remove the endpoint afterwards, whatever happened.
//!
//! Blocking and runtime-free: an async caller runs it on a blocking thread
//! and ends it early with `Cancel::cancel`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::clock::{human_ms, ms};
use crate::cmd::send::{self, Outgoing, Sent};
use crate::context::Ctx;
use crate::envelope::{Budget, Envelope};
use crate::error::{Error, Result};
use crate::maildir::{Mailbox, SUBDIRS};
use crate::pressure::Priority;
use crate::vocab::{Code, Unknown};
use crate::{notice, output};

/// Prefix of private reply endpoints: DorkOS's query inboxes, so DorkOS
/// lists them as type `query`.
pub const REPLY_PREFIX: &str = crate::subject::QUERY_INBOX_PREFIX;

/// Payload `type` of relay's failure notices.
pub const FAILURE_NOTICE: &str = "relay.failure_notice";

/// Longest look-again pause when filesystem notifications are unavailable.
const FALLBACK_POLL: Duration = Duration::from_millis(1000);

/// Claims taken per look at the reply endpoint.
const TAKE: usize = 16;

/// A request to send.
#[derive(Debug, Clone)]
pub struct Request {
    /// Subject (or pattern) to send to.
    pub subject: String,
    /// The payload.
    pub payload: Value,
    /// The sender (rate limits, breakers and access rules apply to it).
    pub from: String,
    /// How long to wait for a reply.
    pub timeout: Duration,
    /// Time to live of the request [default: the timeout: a request nobody
    /// took in time is dead-lettered rather than answered to no one].
    pub ttl: Option<Duration>,
    /// Hop ceiling [default: 5, or the budget's].
    pub max_hops: Option<u32>,
    /// Trace to join [default: the request's id].
    pub trace_id: Option<String>,
    /// Priority lane.
    pub priority: Priority,
    /// A spent budget to continue from.
    pub budget: Option<Budget>,
    /// How many more times a send refused for now (75) is tried (`--retry`).
    pub retry: u32,
    /// The cap on each of those waits (`--retry-max-wait`).
    pub retry_max_wait: Duration,
}

impl Request {
    /// A request with every option at its default.
    #[must_use]
    pub fn new(subject: &str, payload: Value, from: &str, timeout: Duration) -> Self {
        Request {
            subject: subject.to_string(),
            payload,
            from: from.to_string(),
            timeout,
            ttl: None,
            max_hops: None,
            trace_id: None,
            priority: Priority::Normal,
            budget: None,
            retry: 0,
            retry_max_wait: Duration::from_secs(60),
        }
    }
}

/// A failure notice about the request: it was dead-lettered for good.
#[derive(Debug, Clone)]
pub struct FailureNotice {
    /// Why (see `Code::is_notifiable`); a code relay does not know is
    /// another writer's.
    pub code: Result<Code, Unknown>,
    /// The reason as the dead letter gives it.
    pub reason: String,
    /// Where it was dead-lettered.
    pub endpoint: String,
    /// The notice itself.
    pub envelope: Envelope,
}

impl FailureNotice {
    /// The code as the notice writes it.
    #[must_use]
    pub fn code_str(&self) -> &str {
        match &self.code {
            Ok(c) => c.as_str(),
            Err(u) => &u.word,
        }
    }

    /// Reads a failure notice about message `about`; `None` for anything
    /// else (a reply, a notice about another message).
    #[must_use]
    pub fn of(env: &Envelope, about: &str) -> Option<Self> {
        let p = &env.payload;
        let text = |k: &str| p.get(k).and_then(Value::as_str);
        if env.from != notice::NOTICE_SENDER
            || text("type") != Some(FAILURE_NOTICE)
            || text("messageId") != Some(about)
        {
            return None;
        }
        Some(FailureNotice {
            code: text("code").unwrap_or("unknown").parse(),
            reason: text("reason").unwrap_or_default().to_string(),
            endpoint: text("endpoint").unwrap_or_default().to_string(),
            envelope: env.clone(),
        })
    }
}

/// How the wait ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The first reply (claimed and acked).
    Replied(Box<Envelope>),
    /// A failure notice about the request ended the wait (for a fan-out:
    /// once every copy failed; the first notice is given).
    Failed(Box<FailureNotice>),
    /// No reply within the timeout.
    TimedOut,
    /// `Cancel::cancel` (a signal) ended the wait.
    Cancelled,
}

/// A request that was sent, and how its wait ended.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The request as `relay send` reports it (its id, trace, endpoints).
    pub sent: Sent,
    /// The request's trace id (the reply joins it when its responder
    /// continues the trace).
    pub trace_id: String,
    /// The private reply endpoint (removed by now).
    pub reply_to: String,
    /// DorkOS progress payloads (`{"type":"progress","done":false,...}`)
    /// that arrived before the reply, in order.
    pub progress: Vec<Value>,
    /// How long the wait took.
    pub waited: Duration,
    /// The timeout it had.
    pub timeout: Duration,
    /// How it ended.
    pub outcome: Outcome,
    /// Problems worth telling the sender (the send's warnings, a reply
    /// endpoint that could not be removed).
    pub warnings: Vec<String>,
}

impl Exchange {
    /// The reply, or the error `relay request` exits with: a timeout or a
    /// temporary failure (expiry, handlers that never finished) 75, a
    /// budget refusal or a nack 65, an access denial 77, a cancel 130.
    pub fn into_reply(self) -> Result<Envelope> {
        let id = &self.sent.id;
        match self.outcome {
            Outcome::Replied(env) => Ok(*env),
            Outcome::TimedOut => Err(Error::Refused {
                message: format!(
                    "no reply to request {id} (sent to '{}') within {}; its reply endpoint {} was removed; retry later or with a longer --timeout",
                    self.sent
                        .report
                        .get("subject")
                        .and_then(Value::as_str)
                        .unwrap_or("?"),
                    human_ms(ms(self.timeout)),
                    self.reply_to
                ),
                retry_after_ms: None,
            }),
            Outcome::Cancelled => Err(Error::Interrupted(format!(
                "interrupted while waiting for a reply to request {id}; its reply endpoint {} was removed",
                self.reply_to
            ))),
            Outcome::Failed(n) => {
                let message = format!(
                    "request {id} failed at '{}' ({}): {}",
                    n.endpoint,
                    n.code_str(),
                    n.reason
                );
                Err(match n.code {
                    Ok(Code::AccessDenied) => Error::Denied(message),
                    Ok(Code::TtlExpired | Code::MaxDeliveries) => Error::Refused {
                        message,
                        retry_after_ms: None,
                    },
                    _ => Error::Data(message),
                })
            }
        }
    }
}

/// Ends waiting requests early, from another thread (or a signal's).
/// Clones share the same state; once cancelled, it stays cancelled.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<CancelInner>);

#[derive(Debug, Default)]
struct CancelInner {
    cancelled: AtomicBool,
    next: AtomicU64,
    wakers: Mutex<HashMap<u64, mpsc::Sender<()>>>,
}

impl Cancel {
    /// A cancel not yet given.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends every wait using this (or a clone) now and any started later.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        if let Ok(wakers) = self.0.wakers.lock() {
            for w in wakers.values() {
                let _ = w.send(());
            }
        }
    }

    /// Whether `cancel` was called.
    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// Wakes `waker` on cancel until the returned guard drops.
    fn register(&self, waker: mpsc::Sender<()>) -> Registered<'_> {
        let id = self.0.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut wakers) = self.0.wakers.lock() {
            wakers.insert(id, waker);
        }
        Registered { cancel: self, id }
    }
}

struct Registered<'a> {
    cancel: &'a Cancel,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Ok(mut wakers) = self.cancel.0.wakers.lock() {
            wakers.remove(&self.id);
        }
    }
}

/// The private reply endpoint; removed (with anything left in it) when
/// dropped, if `remove` was not called.
struct ReplyInbox {
    mb: Mailbox,
    home: crate::home::Home,
    removed: bool,
}

impl ReplyInbox {
    fn create(ctx: &Ctx) -> Result<Self> {
        let name = format!("{REPLY_PREFIX}{}", crate::envelope::random_ulid());
        let mb = Mailbox::at(&ctx.home, &name);
        mb.create(&SUBDIRS)?;
        Ok(ReplyInbox {
            mb,
            home: ctx.home.clone(),
            removed: false,
        })
    }

    /// Removes the endpoint; a problem doing so is returned as a warning.
    fn remove(&mut self) -> Option<String> {
        self.removed = true;
        crate::cmd::endpoints::remove_endpoint(&self.home, &self.mb.name, true)
            .err()
            .map(|e| {
                format!(
                    "cannot remove the reply endpoint '{}' ({e}); remove it with: relay endpoints remove {} --force",
                    self.mb.name, self.mb.name
                )
            })
    }
}

impl Drop for ReplyInbox {
    fn drop(&mut self) {
        if !self.removed
            && let Some(w) = self.remove()
        {
            output::warn(&w);
        }
    }
}

/// Waits `d` as `ctx`'s clock does (a pinned clock moves on at once),
/// ending early on `cancel`.
fn pause(ctx: &mut Ctx, cancel: &Cancel, d: Duration) {
    if ctx.clock.is_pinned() {
        ctx.clock.sleep(d);
        return;
    }
    let (tx, rx) = mpsc::channel();
    let _registered = cancel.register(tx);
    if !cancel.is_cancelled() {
        let _ = rx.recv_timeout(d);
    }
}

/// Sends `req` with a private reply endpoint as its `replyTo` and waits
/// for the first reply there, or a failure notice about it, until the
/// timeout or `cancel`. What arrives there is claimed and acked; DorkOS
/// progress messages are collected, not taken for the reply. The endpoint
/// is made before the send and removed before this returns, in every case.
/// A send refused outright is the error `relay send` gives.
pub fn request(ctx: &mut Ctx, req: Request, cancel: &Cancel) -> Result<Exchange> {
    if cancel.is_cancelled() {
        return Err(Error::Interrupted(
            "interrupted before the request was sent; nothing was sent".into(),
        ));
    }
    let mut inbox = ReplyInbox::create(ctx)?;
    // Every look at the reply endpoint reads the index: open it now, so
    // the first look need not move this request's own rows in first (a
    // busy index then only delays the claims, which are given back).
    ctx.store()?;
    let (tx, rx) = mpsc::channel();
    // Watching before the send: a reply can never slip in unseen.
    let watcher = crate::cmd::consume::watch(ctx, &inbox.mb, tx.clone());
    let _registered = cancel.register(tx);
    let outgoing = Outgoing {
        subject: req.subject,
        payload: req.payload,
        from: req.from,
        reply_to: Some(inbox.mb.name.clone()),
        ttl: Some(req.ttl.unwrap_or(req.timeout)),
        max_hops: req.max_hops,
        trace_id: req.trace_id,
        priority: req.priority,
        budget: req.budget,
    };
    // A send refused for now is tried again as `--retry` asks (it was not
    // sent); once sent, it never is.
    let mut retries = 0;
    let sent = loop {
        let e = match send::send_message(ctx, outgoing.clone()) {
            Ok(sent) => break sent,
            Err(e) => e,
        };
        let Some((wait, note)) = send::retry_wait(&e, &mut retries, req.retry, req.retry_max_wait)
        else {
            return Err(e);
        };
        output::warn(&note);
        pause(ctx, cancel, wait);
        if cancel.is_cancelled() {
            return Err(Error::Interrupted(
                "interrupted before the request was sent; nothing was sent".into(),
            ));
        }
    };
    let started = Instant::now();
    let deadline = started + req.timeout;
    let mut wait = Wait {
        id: sent.id.clone(),
        copies: copies(&sent, &inbox.mb.name),
        failed: Vec::new(),
        progress: Vec::new(),
    };
    let outcome = loop {
        if cancel.is_cancelled() {
            break Outcome::Cancelled;
        }
        // A busy index gives the claims back to new/ (waking the watch at
        // once): then the next look waits out the fallback pause.
        let busy = match look(ctx, &inbox.mb, &mut wait) {
            Ok(Some(end)) => break end,
            Ok(None) => false,
            // A busy index (its lock held past the lock timeout) is waited
            // out the same way: nothing was claimed.
            Err(e @ (Error::Refused { .. } | Error::Locked(_))) => {
                output::warn(&format!("{e}; looking again"));
                true
            }
            Err(e) => return Err(e),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Outcome::TimedOut;
        }
        let pause = if watcher.is_some() && !busy {
            left
        } else {
            left.min(FALLBACK_POLL)
        };
        if busy {
            while rx.try_recv().is_ok() {}
        }
        if rx.recv_timeout(pause).is_ok() {
            while rx.try_recv().is_ok() {}
        }
    };
    drop(watcher);
    let mut warnings = sent.warnings.clone();
    warnings.extend(inbox.remove());
    let trace_id = sent
        .report
        .get("traceId")
        .and_then(Value::as_str)
        .unwrap_or(&sent.id)
        .to_string();
    Ok(Exchange {
        trace_id,
        reply_to: inbox.mb.name.clone(),
        progress: wait.progress,
        waited: started.elapsed(),
        timeout: req.timeout,
        outcome,
        warnings,
        sent,
    })
}

/// What a wait has seen so far.
struct Wait {
    /// The request's id.
    id: String,
    /// Endpoints holding a copy of the request (delivered there, or
    /// dead-lettered there with a notice to come): the wait fails only
    /// once each of them has sent a failure notice.
    copies: usize,
    /// Endpoints whose copy failed (from their notices).
    failed: Vec<FailureNotice>,
    /// DorkOS progress payloads, in order.
    progress: Vec<Value>,
}

/// The endpoints of `sent` that hold a copy, the reply endpoint itself
/// (which a pattern can match) left out.
fn copies(sent: &Sent, reply_to: &str) -> usize {
    let list = |key: &str| sent.report[key].as_array().cloned().unwrap_or_default();
    let delivered = list("deliveredTo");
    let dead = list("rejected");
    let dead = dead
        .iter()
        .filter(|r| r["deadLettered"] == true)
        .filter_map(|r| r["endpoint"].as_str());
    delivered
        .iter()
        .filter_map(Value::as_str)
        .chain(dead)
        .filter(|ep| *ep != reply_to)
        .count()
        .max(1)
}

/// Claims and acks what has arrived at the reply endpoint; the outcome if
/// it ends the wait: the first reply, or the failure notices about the
/// request from every endpoint that holds a copy.
fn look(ctx: &mut Ctx, mb: &Mailbox, wait: &mut Wait) -> Result<Option<Outcome>> {
    loop {
        let claimed = crate::cmd::recv::take(ctx, mb, TAKE, None)?;
        if claimed.is_empty() {
            return Ok(None);
        }
        let mut end = None;
        for c in claimed {
            let env = c.envelope;
            // What is not acked goes with the endpoint when it is removed.
            if let Err(e) =
                crate::cmd::ack::settle(ctx, mb, &env.id, None, Some(env.delivery_count))
            {
                output::warn(&format!("cannot ack {}: {e}", env.id));
            }
            if end.is_some() || env.id == wait.id {
                // The request itself, sent to a pattern that matches its
                // own reply endpoint: not a reply.
                continue;
            }
            if let Some(n) = FailureNotice::of(&env, &wait.id) {
                if !wait.failed.iter().any(|f| f.endpoint == n.endpoint) {
                    wait.failed.push(n);
                }
                if wait.failed.len() >= wait.copies {
                    end = wait
                        .failed
                        .first()
                        .cloned()
                        .map(|n| Outcome::Failed(Box::new(n)));
                }
            } else if env.from == notice::NOTICE_SENDER {
                // A notice about some other message: not for this wait.
            } else if is_progress(&env.payload) {
                wait.progress.push(env.payload);
            } else {
                end = Some(Outcome::Replied(Box::new(env)));
            }
        }
        if end.is_some() {
            return Ok(end);
        }
    }
}

/// A DorkOS progress step (`{"type":"progress","done":false,...}`), which
/// comes before the reply and is not it.
fn is_progress(payload: &Value) -> bool {
    payload.get("type").and_then(Value::as_str) == Some("progress")
        && payload.get("done").and_then(Value::as_bool) == Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notice_codes_round_trip() {
        for code in [
            "nack",
            "hop_limit",
            "cycle_detected",
            "ttl_expired",
            "budget_exhausted",
            "access_denied",
            "max_deliveries",
            "something_else",
        ] {
            let n = FailureNotice::of(&notice(code), "01REQ").map(|n| n.code_str().to_string());
            assert_eq!(n.as_deref(), Some(code));
        }
    }

    fn exchange(outcome: Outcome) -> Exchange {
        Exchange {
            sent: Sent {
                id: "01REQ".into(),
                report: serde_json::json!({"id": "01REQ", "subject": "svc"}),
                warnings: Vec::new(),
            },
            trace_id: "01REQ".into(),
            reply_to: format!("{REPLY_PREFIX}X"),
            progress: Vec::new(),
            waited: Duration::ZERO,
            timeout: Duration::from_secs(30),
            outcome,
            warnings: Vec::new(),
        }
    }

    fn notice(code: &str) -> Envelope {
        let mut env: Envelope = serde_json::from_value(serde_json::json!({
            "id": "01NOTICE", "subject": "x", "from": notice::NOTICE_SENDER,
            "budget": {"hopCount": 0, "maxHops": 1, "ancestorChain": [], "ttl": 1,
                       "callBudgetRemaining": 1},
            "createdAt": "2026-01-01T00:00:00.000Z",
            "payload": null,
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        env.payload = serde_json::json!({
            "type": FAILURE_NOTICE, "messageId": "01REQ", "code": code,
            "reason": "why", "endpoint": "svc",
        });
        env
    }

    #[test]
    fn each_ending_has_its_exit_code() {
        use crate::error::code;
        let exit = |o: Outcome| exchange(o).into_reply().map_err(|e| e.exit_code()).err();
        assert_eq!(exit(Outcome::TimedOut), Some(code::TEMPFAIL));
        assert_eq!(exit(Outcome::Cancelled), Some(code::INTERRUPTED));
        for (c, want) in [
            ("nack", code::DATAERR),
            ("hop_limit", code::DATAERR),
            ("cycle_detected", code::DATAERR),
            ("budget_exhausted", code::DATAERR),
            ("access_denied", code::NOPERM),
            ("ttl_expired", code::TEMPFAIL),
            ("max_deliveries", code::TEMPFAIL),
            ("made_up", code::DATAERR),
        ] {
            let n = FailureNotice::of(&notice(c), "01REQ");
            assert!(n.is_some(), "{c}");
            assert!(FailureNotice::of(&notice(c), "01OTHER").is_none());
            let got = n.map(|n| exit(Outcome::Failed(Box::new(n))));
            assert_eq!(got, Some(Some(want)), "{c}");
        }
        let timeout = exchange(Outcome::TimedOut)
            .into_reply()
            .err()
            .map(|e| e.to_string());
        assert!(
            timeout
                .is_some_and(|m| m.contains("01REQ") && m.contains("'svc'") && m.contains("30.0s")),
        );
    }

    #[test]
    fn progress_is_not_a_reply() {
        let step = serde_json::json!({"type": "progress", "step": 1, "done": false});
        assert!(is_progress(&step));
        assert!(!is_progress(
            &serde_json::json!({"type": "agent_result", "done": true})
        ));
        assert!(!is_progress(&Value::String("progress".into())));
    }

    #[test]
    fn cancel_wakes_registered_waiters_and_stays_cancelled() {
        let cancel = Cancel::new();
        let (tx, rx) = mpsc::channel();
        let reg = cancel.register(tx);
        cancel.clone().cancel();
        assert!(rx.try_recv().is_ok());
        assert!(cancel.is_cancelled());
        drop(reg);
        assert!(cancel.0.wakers.lock().is_ok_and(|w| w.is_empty()));
    }
}
