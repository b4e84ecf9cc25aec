//! Plain rows and events shared by the index (`index`), the log
//! (`journal`) and the reliability layer: what one command decides to
//! record, and what the index answers. No I/O here.

use crate::envelope::Envelope;
use crate::vocab::{Code, EventKind, Status};

/// Index facts about one (message, endpoint) that finishing it needs.
#[derive(Debug, Clone)]
pub struct Row {
    /// Sender of the message.
    pub sender: String,
    /// Current status.
    pub status: Status,
    /// Whether it was sent as a half-open probe.
    pub probe: bool,
}

/// The index's view of a message's claim (see `lease`).
#[derive(Debug, Clone)]
pub struct ClaimRow {
    /// Sender of the message.
    pub sender: String,
    /// Lifecycle status.
    pub status: Status,
    /// Whether it was sent as a half-open probe.
    pub probe: bool,
    /// While claimed: when its lease runs out (`None`: no lease recorded,
    /// e.g. a `recv --ack` claim). Once redelivered: when the lease that
    /// sent it back ran out.
    pub lease_until: Option<u64>,
    /// Whether the lease's running out was counted against the breaker.
    pub lease_counted: bool,
}

/// A claim held past its lease, found by `Tx::expired_leases`.
#[derive(Debug, Clone)]
pub struct ExpiredLease {
    /// Message id.
    pub id: String,
    /// Endpoint it was claimed from.
    pub endpoint: String,
    /// Its sender.
    pub sender: String,
    /// Whether it was a probe.
    pub probe: bool,
}

/// A stored event.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRow {
    /// Sequence number (increasing).
    pub id: i64,
    /// When (ms since the epoch).
    pub at: u64,
    /// Event kind.
    pub kind: String,
    /// Sender concerned.
    pub sender: Option<String>,
    /// Endpoint concerned.
    pub endpoint: Option<String>,
    /// Message concerned.
    pub message_id: Option<String>,
    /// Kind-specific detail.
    pub detail: serde_json::Value,
}

/// One event row to append.
#[derive(Debug)]
pub struct Event<'a> {
    /// What it records.
    pub kind: EventKind,
    /// Sender concerned, if any.
    pub sender: Option<&'a str>,
    /// Endpoint concerned, if any.
    pub endpoint: Option<&'a str>,
    /// Message concerned, if any.
    pub message_id: Option<&'a str>,
    /// Anything else, as a JSON object.
    pub detail: serde_json::Value,
}

impl<'a> Event<'a> {
    /// The `dead_letter` event of message `id` at `endpoint`.
    #[must_use]
    pub fn dead_letter(
        sender: Option<&'a str>,
        endpoint: &'a str,
        id: &'a str,
        code: Code,
        reason: &str,
    ) -> Self {
        Event {
            kind: EventKind::DeadLetter,
            sender,
            endpoint: Some(endpoint),
            message_id: Some(id),
            detail: serde_json::json!({ "code": code, "reason": reason }),
        }
    }
}

/// One row of a send: delivered (`failure` None) or dead-lettered.
pub struct SentRow<'a> {
    /// Mailbox directory name.
    pub endpoint: &'a str,
    /// The envelope as written.
    pub envelope: &'a Envelope,
    /// `(code, reason)` when dead-lettered.
    pub failure: Option<(Code, &'a str)>,
    /// Sent as a half-open probe.
    pub probe: bool,
}
