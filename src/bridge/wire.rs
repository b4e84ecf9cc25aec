//! What crosses the wire: the stream, subject and bucket names, the headers
//! a forwarded message carries, and the span updates sent back to the
//! sender's host. Everything here is a name or a shape; nothing does I/O.
//!
//! Layout (one stream, one consumer per host, each with one filter subject,
//! so a 2.9 server honours all of it):
//! - `relay.<host>.msg.<endpoint>`: a message for `<endpoint>` on `<host>`;
//! - `relay.<host>.span`: span updates about messages `<host>` sent;
//! - consumer `relay-<host>` filters `relay.<host>.>`;
//! - key-value bucket `relay-directory`, key `<host>`: its endpoints.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The one stream every bridge publishes to.
pub const STREAM: &str = "RELAY";
/// Its subjects.
pub const STREAM_SUBJECTS: &str = "relay.>";
/// The directory bucket.
pub const BUCKET: &str = "relay-directory";

/// Header: the trace id (the same on every host).
pub const H_TRACE: &str = "Relay-Trace-Id";
/// Header: the sender, as claimed by the sending host.
pub const H_FROM: &str = "Relay-From";
/// Header: where replies and failure notices go.
pub const H_REPLY_TO: &str = "Relay-Reply-To";
/// Header: the priority lane.
pub const H_PRIORITY: &str = "Relay-Priority";
/// Header: the budget, as JSON.
pub const H_BUDGET: &str = "Relay-Budget";
/// Header: the host that sent it (where span updates go).
pub const H_ORIGIN: &str = "Relay-Origin";

/// Longest host name.
const MAX_HOST: usize = 64;

/// Checks a host name: 1 to 64 of `[A-Za-z0-9_-]`, so it is one subject
/// token and one key of the directory bucket.
pub fn validate_host(host: &str) -> Result<()> {
    let ok = !host.is_empty()
        && host.len() <= MAX_HOST
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "invalid host name '{}': use 1 to {MAX_HOST} letters, digits, '-' or '_' (it becomes a NATS subject token)",
            crate::output::printable(host)
        )))
    }
}

/// Subject of a message for `endpoint` on `host`.
#[must_use]
pub fn msg_subject(host: &str, endpoint: &str) -> String {
    format!("relay.{host}.msg.{endpoint}")
}

/// Subject of span updates for messages `host` sent.
#[must_use]
pub fn span_subject(host: &str) -> String {
    format!("relay.{host}.span")
}

/// The single filter subject of `host`'s consumer.
#[must_use]
pub fn filter_subject(host: &str) -> String {
    format!("relay.{host}.>")
}

/// The durable name of `host`'s consumer.
#[must_use]
pub fn durable(host: &str) -> String {
    format!("relay-{host}")
}

/// `Nats-Msg-Id` of a message copy: fan-out copies share the ULID, so the
/// endpoint keeps them apart within the stream's dedup window.
#[must_use]
pub fn msg_id(id: &str, endpoint: &str) -> String {
    format!("{id}.{endpoint}")
}

/// What an inbound subject addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A message for this local endpoint.
    Message(String),
    /// A span update about a message this host sent.
    Span,
}

/// Parses a subject of `host`'s consumer.
#[must_use]
pub fn parse_inbound(host: &str, subject: &str) -> Option<Inbound> {
    let rest = subject.strip_prefix("relay.")?.strip_prefix(host)?;
    if rest == ".span" {
        return Some(Inbound::Span);
    }
    let ep = rest.strip_prefix(".msg.")?;
    crate::subject::validate_subject(ep, "endpoint").ok()?;
    Some(Inbound::Message(ep.to_string()))
}

/// Where a message is on the receiving host, as its span says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum SpanState {
    /// Refused for now (backpressure, rate limit, breaker): redelivered later.
    Retrying,
    /// In the endpoint's `new/`.
    Delivered,
    /// A consumer claimed it.
    Claimed,
    /// A consumer acked it.
    Acked,
    /// Dead-lettered (nack, budget, access, expiry, max deliveries).
    Failed,
}

impl SpanState {
    /// The stored name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            SpanState::Retrying => "retrying",
            SpanState::Delivered => "delivered",
            SpanState::Claimed => "claimed",
            SpanState::Acked => "acked",
            SpanState::Failed => "failed",
        }
    }

    /// The state of a stored name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        [
            SpanState::Retrying,
            SpanState::Delivered,
            SpanState::Claimed,
            SpanState::Acked,
            SpanState::Failed,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }

    /// How far along it is: a pair's reported state only rises (both final
    /// states rank alike).
    #[must_use]
    pub fn rank(self) -> u8 {
        match self {
            SpanState::Retrying => 0,
            SpanState::Delivered => 1,
            SpanState::Claimed => 2,
            SpanState::Acked | SpanState::Failed => 3,
        }
    }

    /// Whether nothing follows it.
    #[must_use]
    pub fn is_final(self) -> bool {
        matches!(self, SpanState::Acked | SpanState::Failed)
    }
}

/// A span update: message `message_id` at `endpoint` on `host` reached `state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    /// The message.
    pub message_id: String,
    /// The endpoint on `host`.
    pub endpoint: String,
    /// The host the endpoint is on.
    pub host: String,
    /// Where it is now.
    pub state: SpanState,
    /// Dead-letter or refusal code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Why, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When, on `host`'s clock (ms).
    pub at: u64,
}

impl Span {
    /// Its `Nats-Msg-Id`: one per (message, endpoint, state).
    #[must_use]
    pub fn msg_id(&self) -> String {
        format!(
            "{}.{}.{}",
            self.message_id,
            self.endpoint,
            self.state.as_str()
        )
    }
}

/// The body of a message on a span subject: the updates of one look or
/// one applied batch, to one origin (or one update alone, as bridges
/// before batching sent it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Spans {
    /// Several updates.
    Many(Vec<Span>),
    /// One update.
    One(Span),
}

impl Spans {
    /// The updates it carries.
    #[must_use]
    pub fn into_vec(self) -> Vec<Span> {
        match self {
            Spans::Many(v) => v,
            Spans::One(s) => vec![s],
        }
    }
}

/// Most updates in one span message, and about the most bytes (a server's
/// default `max_payload` is 1 MiB).
pub const SPANS_PER_MESSAGE: usize = 256;
/// See `SPANS_PER_MESSAGE`.
pub const SPAN_BYTES_PER_MESSAGE: usize = 256 * 1024;

/// The `Nats-Msg-Id` of a span message: that of its update when it carries
/// one; else made of every update's, so the same updates published again
/// within the dedup window are dropped, and other updates never are.
#[must_use]
pub fn spans_msg_id(spans: &[Span]) -> String {
    if let [one] = spans {
        return one.msg_id();
    }
    // FNV-1a over the updates' ids: the same on every host and build.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for s in spans {
        for b in s.msg_id().bytes().chain([b'\n']) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    let first = spans.first().map_or_else(String::new, Span::msg_id);
    format!("{first}+{}.{h:016x}", spans.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, state: SpanState) -> Span {
        Span {
            message_id: id.into(),
            endpoint: "agent.b".into(),
            host: "hostb".into(),
            state,
            code: None,
            reason: None,
            at: 1,
        }
    }

    #[test]
    fn a_span_message_carries_one_update_or_many_and_its_id_names_exactly_them() {
        let one = span("01A", SpanState::Delivered);
        let two = span("01B", SpanState::Delivered);
        let single = serde_json::to_vec(&one).unwrap_or_default();
        let parsed: Spans = serde_json::from_slice(&single).unwrap_or(Spans::Many(Vec::new()));
        assert_eq!(parsed.into_vec(), vec![one.clone()]);
        let many = serde_json::to_vec(&vec![one.clone(), two.clone()]).unwrap_or_default();
        let parsed: Spans = serde_json::from_slice(&many).unwrap_or(Spans::Many(Vec::new()));
        assert_eq!(parsed.into_vec(), vec![one.clone(), two.clone()]);
        assert_eq!(spans_msg_id(std::slice::from_ref(&one)), one.msg_id());
        let ab = spans_msg_id(&[one.clone(), two.clone()]);
        assert_eq!(ab, spans_msg_id(&[one.clone(), two.clone()]));
        assert_ne!(
            ab,
            spans_msg_id(&[one.clone(), span("01C", SpanState::Delivered)])
        );
        assert_ne!(
            ab,
            spans_msg_id(&[one.clone(), span("01B", SpanState::Claimed)])
        );
        assert_ne!(ab, spans_msg_id(&[two, one]));
    }

    #[test]
    fn inbound_subjects_parse() {
        assert_eq!(
            parse_inbound("hostb", "relay.hostb.msg.agent.b"),
            Some(Inbound::Message("agent.b".into()))
        );
        assert_eq!(
            parse_inbound("hostb", "relay.hostb.span"),
            Some(Inbound::Span)
        );
        assert_eq!(parse_inbound("hostb", "relay.hostbb.span"), None);
        assert_eq!(parse_inbound("hostb", "relay.hostb.msg."), None);
        assert_eq!(parse_inbound("hostb", "relay.hostb.other"), None);
    }

    #[test]
    fn host_names() {
        assert!(validate_host("host-a_1").is_ok());
        for bad in ["", "a.b", "a b", "a*", &"x".repeat(65)] {
            assert!(validate_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn span_states_round_trip() {
        for s in [
            SpanState::Retrying,
            SpanState::Delivered,
            SpanState::Claimed,
            SpanState::Acked,
            SpanState::Failed,
        ] {
            assert_eq!(SpanState::parse(s.as_str()), Some(s));
        }
    }
}
