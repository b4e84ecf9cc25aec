//! Failure notices: when a message that named a `replyTo` is dead-lettered
//! for good (nack, budget, expiry, access), the sender learns it at that
//! subject. Notices carry no `replyTo`, so there is never a notice about a
//! notice.

use serde_json::json;

use crate::clock::iso8601;
use crate::envelope::{Budget, DEFAULT_CALL_BUDGET, Envelope};
use crate::error::Result;
use crate::home::Home;
use crate::maildir::Mailbox;
use crate::vocab::{Code, EventKind};

/// Sender of every notice.
pub const NOTICE_SENDER: &str = "relay.notice";

/// Where a notice went.
#[derive(Debug)]
pub enum Sent {
    /// Written: delivered, or dead-lettered where no endpoint took it.
    Written {
        /// The mailbox it landed in (or was dead-lettered under).
        endpoint: String,
        /// The notice as written.
        envelope: Box<Envelope>,
        /// Whether it was delivered (false: dead-lettered, no endpoint).
        delivered: bool,
    },
    /// Not written: the original's `replyTo` (written by another program)
    /// is no subject, so it cannot name a mailbox inside the home; or the
    /// notice could not be written (a full disk).
    Refused {
        /// The message the notice was about.
        about: String,
        /// The `replyTo` as found.
        reply_to: String,
        /// Why it is not a subject.
        problem: String,
        /// The dead-letter code of the original.
        code: Code,
    },
}

/// Builds and delivers the notice for `original` dead-lettered at
/// `endpoint`; `None` when no notice is due (no `replyTo`, a notice itself,
/// or a code that is not final).
pub fn send(
    home: &Home,
    original: &Envelope,
    endpoint: &str,
    code: Code,
    reason: &str,
    now: u64,
) -> Result<Option<Sent>> {
    if !code.is_notifiable() {
        return Ok(None);
    }
    send_accepted(home, original, endpoint, code, reason, now)
}

/// `send` for a copy whose send was accepted (it exited 0) and that is
/// dead-lettered later with any code: also `no_match`, which at send time
/// is the send's own exit status (69) but here, a proxy retired under a
/// queued copy (its remote endpoint or host gone), only a notice can say.
pub fn send_accepted(
    home: &Home,
    original: &Envelope,
    endpoint: &str,
    code: Code,
    reason: &str,
    now: u64,
) -> Result<Option<Sent>> {
    let Some(reply_to) = original.reply_to.as_deref() else {
        return Ok(None);
    };
    if original.from == NOTICE_SENDER {
        return Ok(None);
    }
    // Another program may have written anything there ("/tmp/x", "../..").
    if let Err(e) = crate::subject::validate_subject(reply_to, "replyTo") {
        return Ok(Some(Sent::Refused {
            about: original.id.clone(),
            reply_to: reply_to.to_string(),
            problem: e.to_string(),
            code,
        }));
    }
    let id = crate::envelope::new_id(now);
    let mut notice = Envelope {
        id,
        subject: reply_to.to_string(),
        from: NOTICE_SENDER.to_string(),
        reply_to: None,
        budget: Budget {
            hop_count: 0,
            max_hops: 1,
            ancestor_chain: Vec::new(),
            ttl: original.budget.ttl.max(now.saturating_add(3_600_000)),
            call_budget_remaining: DEFAULT_CALL_BUDGET,
        },
        created_at: iso8601(now),
        payload: json!({
            "type": "relay.failure_notice",
            "messageId": original.id,
            "traceId": original.trace(),
            "subject": original.subject,
            "endpoint": endpoint,
            "code": code,
            "reason": reason,
            "failedAt": iso8601(now),
        }),
        dispatch_id: original.dispatch_id.clone(),
        trace_id: Some(original.trace().to_string()),
        priority: None,
        delivery_count: 0,
        extra: serde_json::Map::new(),
    };
    let mb = Mailbox::at(home, reply_to);
    let delivered = mb.is_endpoint();
    if !delivered && crate::subject::is_private_inbox(reply_to) {
        // The request stopped waiting and removed its reply endpoint: no
        // directory is made again for a notice no one will read.
        return Ok(Some(Sent::Refused {
            about: original.id.clone(),
            reply_to: reply_to.to_string(),
            problem: "its reply endpoint is gone: the request is no longer waiting".into(),
            code,
        }));
    }
    // A mailbox or subdirectory that is a symlink is never written through.
    if std::fs::symlink_metadata(mb.dir()).is_ok()
        && let Err(e) = mb.check_present()
    {
        return Ok(Some(Sent::Refused {
            about: original.id.clone(),
            reply_to: reply_to.to_string(),
            problem: e.to_string(),
            code,
        }));
    }
    let written = if delivered {
        notice.budget.hop_count = 1;
        notice.budget.ancestor_chain.push(reply_to.to_string());
        notice.budget.call_budget_remaining -= 1;
        let root = home.root();
        let expected = crate::store::dorkos::Outcome {
            delivered: vec![(reply_to, &notice)],
            ..crate::store::dorkos::Outcome::default()
        };
        crate::store::dorkos::delivering(root, &[(&notice, expected)], now);
        let done = mb.deliver(&notice, true).map(|unsynced| {
            if let Some(e) = unsynced {
                crate::output::warn(&format!("failure notice {} delivered, but: {e}", notice.id));
            }
        });
        if done.is_err() {
            crate::store::dorkos::unsent(root, reply_to, &notice.id);
            let failed = crate::store::dorkos::Outcome {
                refused: vec![(Code::IoError, "the failure notice could not be written")],
                ..crate::store::dorkos::Outcome::default()
            };
            crate::store::dorkos::retraced(root, &notice, &failed, now);
        }
        done
    } else {
        mb.dead_letter(
            &notice,
            "no endpoint for the failure notice's replyTo",
            Code::NoMatch,
            now,
        )
    };
    // The dead letter it is about stands: a notice that cannot be written
    // (a full disk) is recorded as refused, and does not fail the command.
    if let Err(e) = written {
        crate::output::warn(&format!(
            "no failure notice for message {} at '{reply_to}': {e}",
            original.id
        ));
        return Ok(Some(Sent::Refused {
            about: original.id.clone(),
            reply_to: reply_to.to_string(),
            problem: format!("not written: {e}"),
            code,
        }));
    }
    Ok(Some(Sent::Written {
        endpoint: reply_to.to_string(),
        envelope: Box::new(notice),
        delivered,
    }))
}

/// Indexes a sent notice and records a `failure_notice` event, or a
/// `failure_notice_refused` event for a notice not written.
pub fn record(out: &mut crate::store::journal::Outbox, sent: &Sent, now: u64) {
    let (endpoint, envelope, delivered) = match sent {
        Sent::Written {
            endpoint,
            envelope,
            delivered,
        } => (endpoint, envelope, *delivered),
        Sent::Refused {
            about,
            reply_to,
            problem,
            code,
        } => {
            out.event(
                &crate::store::rows::Event {
                    kind: EventKind::FailureNoticeRefused,
                    sender: Some(NOTICE_SENDER),
                    endpoint: None,
                    message_id: Some(about),
                    detail: json!({ "replyTo": reply_to, "code": code, "problem": problem }),
                },
                now,
            );
            return;
        }
    };
    let failure = (!delivered).then_some((
        Code::NoMatch,
        "no endpoint for the failure notice's replyTo",
    ));
    out.sent(
        &[crate::store::rows::SentRow {
            endpoint,
            envelope,
            failure,
            probe: false,
        }],
        now,
    );
    out.event(
        &crate::store::rows::Event {
            kind: EventKind::FailureNotice,
            sender: Some(NOTICE_SENDER),
            endpoint: Some(endpoint),
            message_id: Some(&envelope.id),
            detail: json!({
                "about": envelope.payload.get("messageId"),
                "code": envelope.payload.get("code"),
                "delivered": delivered,
            }),
        },
        now,
    );
}
