//! `GET /api/relay/stream?subject=PATTERN`: server-sent events as DorkOS
//! sends them: `relay_connected` (`{pattern, connectedAt}`), then
//! `relay_message` for each new message copy at a matching endpoint (the
//! envelope as stored, with `id:` the envelope id), `relay_backpressure`
//! (a DorkOS Signal) for backpressure decisions; and relay's other events
//! (dead letters, breakers, rate limits, ...) as `relay_event`, a name
//! DorkOS clients do not listen for. The pattern defaults to DorkOS's
//! `relay.human.console.>`; any pattern is accepted, since relay's stream
//! observes without consuming.
//!
//! One poller thread moves what sends appended to the journal into the
//! index and publishes every new message copy and event, in index order, on
//! a broadcast channel; each stream filters it for its pattern. Message
//! copies are ordered by (sent time, id, endpoint) and events by their id,
//! so a thousand copies sent in one millisecond are passed one by one, never
//! re-read. A `relay_event`'s `id:` is the stream's position
//! `EVENT:SENT_AT:MESSAGE:ENDPOINT`. Reconnecting with the last id seen as
//! `Last-Event-ID` (or `?after=`), a message id or a position, replays what
//! was missed from the index, then goes on live. A stream that falls
//! behind the channel catches up from the index the same way. A copy
//! indexed after the poller passed its place (its send read the clock
//! before another's but reached the journal after) is found by counting the
//! last `LATE_WINDOW_MS` of sent time and passed on to the live streams.

use std::collections::{BTreeSet, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use rusqlite::{Connection, params};
use serde_json::Value;
use serde_json::json;
use tokio::sync::broadcast::{self, error::RecvError};

use super::query::Query;
use super::reply;
use super::state::{App, Db, StreamSlot, lock};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::home::Home;
use crate::store::index::Store;
use crate::store::reports;
use crate::store::rows::EventRow;
use crate::subject;
use crate::vocab::EventKind;

/// The pattern of a stream that names none (DorkOS's).
const DEFAULT_PATTERN: &str = "relay.human.console.>";
/// How often the poller looks for news.
const POLL: Duration = Duration::from_millis(250);
/// A comment line after this long without an event keeps idle streams open
/// through proxies.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Message copies read from the index at once.
const MESSAGE_PAGE: usize = 1000;
/// Events read from the index at once.
const EVENT_PAGE: usize = 500;
/// How far back in sent time (ms) the poller looks for copies indexed
/// after the stream passed their place.
const LATE_WINDOW_MS: u64 = 10_000;
/// Items the channel keeps for a slow stream before it must catch up from
/// the index.
const CHANNEL: usize = 4096;
/// How long a stream asked for before the poller first read the index
/// waits for it (then a 503 says to retry).
const READY_WAIT: Duration = Duration::from_secs(5);

/// Where a message copy is in the stream's order.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
struct MessageKey {
    sent_at: u64,
    id: String,
    endpoint: String,
}

/// A stream position: the last event and the last message copy passed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Cursor {
    event: i64,
    message: MessageKey,
}

impl Cursor {
    /// Whether `pos` was passed already.
    fn covers(&self, pos: &Pos) -> bool {
        match pos {
            Pos::Event(id) => *id <= self.event,
            Pos::Message(key) => *key <= self.message,
        }
    }

    fn advance(&mut self, pos: &Pos) {
        match pos {
            Pos::Event(id) => self.event = self.event.max(*id),
            Pos::Message(key) => {
                if *key > self.message {
                    self.message = key.clone();
                }
            }
        }
    }

    /// Whether it is behind `other` in either order.
    fn behind(&self, other: &Cursor) -> bool {
        self.event < other.event || self.message < other.message
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.message;
        write!(f, "{}:{}:{}:{}", self.event, m.sent_at, m.id, m.endpoint)
    }
}

/// Where a reconnecting client left off: an id this stream sent, or just
/// an event id (messages then from now on).
#[derive(Debug, PartialEq, Eq)]
struct Resume {
    event: i64,
    message: Option<MessageKey>,
}

/// What a reconnecting client sent: a position of this stream, or the id
/// of the last message it saw.
#[derive(Debug, PartialEq, Eq)]
enum Since {
    Position(Resume),
    Message(String),
}

impl Since {
    fn parse(s: &str) -> std::result::Result<Self, String> {
        let t = s.trim();
        if !t.contains(':') && t.parse::<i64>().is_err() {
            crate::maildir::validate_id(t)
                .and_then(|()| {
                    if t.contains(char::is_whitespace) {
                        Err(crate::error::Error::Data(String::new()))
                    } else {
                        Ok(())
                    }
                })
                .map_err(|_| {
                format!(
                    "bad stream position '{}': expected the id: of an event of this stream (a message id, or EVENT:SENT_AT:MESSAGE:ENDPOINT)",
                    t.escape_debug()
                )
            })?;
            return Ok(Since::Message(t.to_string()));
        }
        Resume::parse(t).map(Since::Position)
    }
}

/// The position just after message `id`'s last copy matching `pattern`,
/// events from just before it was sent; `None` if the index has no such
/// copy.
fn after_message(ctx: &mut Ctx, id: &str, pattern: &str) -> Result<Option<Resume>> {
    let store = ctx.store()?;
    let rows = store.read(|c| {
        c.prepare_cached("SELECT sent_at, endpoint FROM messages WHERE id = ?1 ORDER BY endpoint")?
            .query_map([id], |r| Ok((r.get::<_, u64>(0)?, r.get::<_, String>(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()
    })?;
    let Some((sent_at, endpoint)) = rows
        .into_iter()
        .rev()
        .find(|(_, ep)| subject::matches(pattern, ep))
    else {
        return Ok(None);
    };
    let event = store.read(|c| {
        c.query_row(
            "SELECT COALESCE(MAX(id), 0) FROM events WHERE at < ?1",
            [sent_at],
            |r| r.get::<_, i64>(0),
        )
    })?;
    Ok(Some(Resume {
        event,
        message: Some(MessageKey {
            sent_at,
            id: id.to_string(),
            endpoint,
        }),
    }))
}

impl Resume {
    fn parse(s: &str) -> std::result::Result<Self, String> {
        let bad = || {
            format!(
                "bad stream position '{}': expected an id: line of this stream (EVENT:SENT_AT:MESSAGE:ENDPOINT) or an event id",
                s.escape_debug()
            )
        };
        let mut parts = s.trim().splitn(4, ':');
        let event = parts.next().and_then(|e| e.parse().ok()).ok_or_else(bad)?;
        let message = match (parts.next(), parts.next(), parts.next()) {
            (None, None, None) => None,
            (Some(at), Some(id), Some(endpoint)) => Some(MessageKey {
                sent_at: at.parse().map_err(|_| bad())?,
                id: id.to_string(),
                endpoint: endpoint.to_string(),
            }),
            _ => return Err(bad()),
        };
        Ok(Resume { event, message })
    }

    /// The cursor, messages from `live` on if none was given.
    fn at(self, live: &Cursor) -> Cursor {
        Cursor {
            event: self.event,
            message: self.message.unwrap_or_else(|| live.message.clone()),
        }
    }
}

/// A position in the stream's order.
#[derive(Debug, Clone)]
enum Pos {
    Event(i64),
    Message(MessageKey),
}

/// One message copy or event, as every stream gets it.
#[derive(Debug)]
struct Item {
    pos: Pos,
    /// A copy indexed after the stream had passed its place (its send
    /// read the clock before another's but reached the journal after).
    late: bool,
    name: &'static str,
    /// The subject a pattern is matched against.
    concerns: String,
    /// The `id:` to send: the envelope id of a message; `None` for the
    /// stream's position (relay's events) or no id (DorkOS's signals).
    id: Option<String>,
    /// Whether to send an `id:` line at all.
    with_id: bool,
    /// The `data:` JSON.
    data: String,
}

impl Item {
    /// A copy's event: the envelope as stored (a copy consumed before the
    /// stream read it: what the index knows of it).
    fn message(home: &Home, m: &reports::MessageRow) -> Self {
        let mb = crate::maildir::Mailbox::at(home, &m.endpoint);
        let envelope = ["new", "cur", "failed"]
            .iter()
            .find_map(|sub| mb.read_json(sub, &m.id))
            .filter(Value::is_object)
            .unwrap_or_else(|| {
                json!({
                    "id": m.id,
                    "subject": m.subject,
                    "from": m.from,
                    "createdAt": crate::clock::iso8601(m.sent_at),
                    "traceId": m.trace_id,
                })
            });
        Item {
            pos: Pos::Message(MessageKey {
                sent_at: m.sent_at,
                id: m.id.clone(),
                endpoint: m.endpoint.clone(),
            }),
            late: false,
            name: "relay_message",
            concerns: m.endpoint.clone(),
            id: Some(m.id.clone()),
            with_id: true,
            data: envelope.to_string(),
        }
    }

    fn event(e: &EventRow) -> Self {
        let concerns = e
            .endpoint
            .as_deref()
            .or(e.sender.as_deref())
            .unwrap_or("relay")
            .to_string();
        let kind = e.kind.parse::<EventKind>().ok();
        let (name, with_id, data) = match kind {
            Some(EventKind::BackpressureWarning | EventKind::BackpressureRejected) => {
                let depth = e.detail["depth"].as_u64().unwrap_or(0);
                let limit = e.detail["limit"].as_u64().unwrap_or(0).max(1);
                #[allow(clippy::cast_precision_loss)]
                let pressure = (depth as f64 / limit as f64).min(1.0);
                let state = if kind == Some(EventKind::BackpressureWarning) {
                    "warning"
                } else {
                    "critical"
                };
                let signal = json!({
                    "type": "backpressure",
                    "state": state,
                    "endpointSubject": concerns,
                    "timestamp": crate::clock::iso8601(e.at),
                    "data": { "pressure": pressure, "currentSize": depth },
                });
                ("relay_backpressure", false, signal.to_string())
            }
            _ => ("relay_event", true, json!(e).to_string()),
        };
        Item {
            pos: Pos::Event(e.id),
            late: false,
            name,
            concerns,
            id: None,
            with_id,
            data,
        }
    }
}

/// The live feed: the channel and the position the poller has published.
#[derive(Default)]
pub(super) struct Hub {
    live: Mutex<Live>,
    /// Woken when the poller first reads the index, or the server stops.
    ready: tokio::sync::Notify,
}

#[derive(Default)]
struct Live {
    /// `None` once the server stops.
    tx: Option<broadcast::Sender<Arc<Item>>>,
    /// `None` until the index was first read.
    at: Option<Cursor>,
    closed: bool,
}

impl Hub {
    /// Publishes `item`; the position moves with it, under one lock, so a
    /// new subscriber gets every item after the position it reads.
    fn publish(&self, item: Item) {
        let mut live = lock(&self.live);
        if let Some(at) = live.at.as_mut() {
            at.advance(&item.pos);
        }
        if let Some(tx) = &live.tx {
            // No subscriber is no error.
            let _ = tx.send(Arc::new(item));
        }
    }

    /// A receiver and the position from which it gets every item.
    fn subscribe(&self) -> Option<(broadcast::Receiver<Arc<Item>>, Cursor)> {
        let live = lock(&self.live);
        Some((live.tx.as_ref()?.subscribe(), live.at.clone()?))
    }

    fn position(&self) -> Option<Cursor> {
        lock(&self.live).at.clone()
    }

    /// Ends every stream and the poller.
    pub(super) fn close(&self) {
        let mut live = lock(&self.live);
        live.tx = None;
        live.closed = true;
        drop(live);
        self.ready.notify_waiters();
    }

    /// Sets the position the poller starts from (it read the index).
    fn start_at(&self, at: Cursor) {
        lock(&self.live).at = Some(at);
        self.ready.notify_waiters();
    }

    /// `subscribe`, once the poller has read the index, waiting for that
    /// at most `READY_WAIT`; `None` if it has not by then, or the server
    /// is stopping.
    async fn subscribe_when_ready(&self) -> Option<(broadcast::Receiver<Arc<Item>>, Cursor)> {
        let deadline = tokio::time::Instant::now() + READY_WAIT;
        loop {
            let woken = self.ready.notified();
            tokio::pin!(woken);
            // Registered before looking: a wake-up in between is not lost.
            woken.as_mut().enable();
            if let Some(sub) = self.subscribe() {
                return Some(sub);
            }
            if lock(&self.live).closed {
                return None;
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return None;
            }
        }
    }
}

/// Starts the poller thread. Its first look reads the index (the stream
/// starts from what it holds then), on that thread: the server answers
/// meanwhile, and a stream asked for before then waits for it.
pub(super) fn start_poller(app: &Arc<App>, hub: &Arc<Hub>) -> Result<()> {
    let hub = Arc::clone(hub);
    lock(&hub.live).tx = Some(broadcast::channel(CHANNEL).0);
    let mut db = Db::open(app)?;
    let mut recent = Recent::default();
    std::thread::Builder::new()
        .name("relay-stream".into())
        .spawn(move || {
            let mut warned = false;
            let mut first = true;
            while !lock(&hub.live).closed {
                if !std::mem::take(&mut first) {
                    std::thread::sleep(POLL);
                }
                match poll(&hub, db.ctx(), &mut recent) {
                    Ok(()) => warned = false,
                    Err(e) => {
                        if !warned {
                            crate::output::warn(&format!(
                                "the stream cannot read the index: {e}; retrying"
                            ));
                            warned = true;
                        }
                        db.ctx().close_store();
                    }
                }
            }
        })
        .map(drop)
        .map_err(|e| Error::Io {
            what: "cannot start the stream's poller".into(),
            source: e,
        })
}

/// The copies the poller published within `LATE_WINDOW_MS` of its
/// position, to tell a copy indexed late from one already passed.
#[derive(Default)]
struct Recent(BTreeSet<MessageKey>);

/// One look: ingest the journal, then publish everything after the live
/// position (the first look only sets it), then any copy indexed late.
fn poll(hub: &Hub, ctx: &mut Ctx, recent: &mut Recent) -> Result<()> {
    let home = ctx.home.clone();
    let store = ctx.store_without_waiting()?;
    // Sends append to the journal; move what they wrote into the index,
    // unless another process is writing it now (the next look will): the
    // stream goes on with what is indexed meanwhile.
    let _ = store.without_waiting(Store::ingest);
    let Some(mut at) = hub.position() else {
        let now = store.read(|c| {
            Ok(Cursor {
                event: reports::last_event_id(c)?,
                message: last_message(c)?,
            })
        })?;
        let lo = now.message.sent_at.saturating_sub(LATE_WINDOW_MS);
        recent.0 = store
            .read(|c| messages_between(c, lo, &now.message))?
            .iter()
            .map(key_of)
            .collect();
        hub.start_at(now);
        return Ok(());
    };
    loop {
        let rows = store.read(|c| messages_after(c, &at.message, MESSAGE_PAGE))?;
        for m in &rows {
            let item = Item::message(&home, m);
            at.advance(&item.pos);
            recent.0.insert(key_of(m));
            hub.publish(item);
        }
        if rows.len() < MESSAGE_PAGE {
            break;
        }
    }
    // Copies indexed behind the position: the window's count tells.
    let lo = at.message.sent_at.saturating_sub(LATE_WINDOW_MS);
    recent.0 = recent.0.split_off(&MessageKey {
        sent_at: lo,
        ..MessageKey::default()
    });
    let indexed = store.read(|c| count_between(c, lo, &at.message))?;
    if indexed != recent.0.len() {
        let rows = store.read(|c| messages_between(c, lo, &at.message))?;
        let mut now = BTreeSet::new();
        for m in &rows {
            let key = key_of(m);
            if !recent.0.contains(&key) {
                let mut item = Item::message(&home, m);
                item.late = true;
                hub.publish(item);
            }
            now.insert(key);
        }
        recent.0 = now;
    }
    loop {
        let rows = store.read(|c| reports::events_after(c, at.event, 0, &[], EVENT_PAGE as u32))?;
        for e in &rows {
            let item = Item::event(e);
            at.advance(&item.pos);
            hub.publish(item);
        }
        if rows.len() < EVENT_PAGE {
            break;
        }
    }
    Ok(())
}

/// The last message copy in the stream's order.
fn last_message(c: &Connection) -> rusqlite::Result<MessageKey> {
    let mut stmt = c.prepare_cached(
        "SELECT sent_at, id, endpoint FROM messages
         ORDER BY sent_at DESC, id DESC, endpoint DESC LIMIT 1",
    )?;
    let mut rows = stmt.query([])?;
    Ok(match rows.next()? {
        Some(r) => MessageKey {
            sent_at: r.get(0)?,
            id: r.get(1)?,
            endpoint: r.get(2)?,
        },
        None => MessageKey::default(),
    })
}

fn key_of(m: &reports::MessageRow) -> MessageKey {
    MessageKey {
        sent_at: m.sent_at,
        id: m.id.clone(),
        endpoint: m.endpoint.clone(),
    }
}

/// Rows sent at or after `lo` up to `upto` (in the stream's order).
const BETWEEN: &str = "FROM messages WHERE sent_at >= ?1
     AND (sent_at < ?2 OR (sent_at = ?2 AND (id < ?3 OR (id = ?3 AND endpoint <= ?4))))";

fn count_between(c: &Connection, lo: u64, upto: &MessageKey) -> rusqlite::Result<usize> {
    c.prepare_cached(&format!("SELECT COUNT(*) {BETWEEN}"))?
        .query_row(params![lo, upto.sent_at, upto.id, upto.endpoint], |r| {
            r.get::<_, i64>(0)
        })
        .map(|n| usize::try_from(n).unwrap_or(0))
}

fn messages_between(
    c: &Connection,
    lo: u64,
    upto: &MessageKey,
) -> rusqlite::Result<Vec<reports::MessageRow>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT id, endpoint, subject, sender, trace_id, status, sent_at {BETWEEN}
         ORDER BY sent_at, id, endpoint"
    ))?;
    stmt.query_map(
        params![lo, upto.sent_at, upto.id, upto.endpoint],
        row_to_message,
    )?
    .collect()
}

fn row_to_message(r: &rusqlite::Row<'_>) -> rusqlite::Result<reports::MessageRow> {
    Ok(reports::MessageRow {
        id: r.get(0)?,
        endpoint: r.get(1)?,
        subject: r.get(2)?,
        from: r.get(3)?,
        trace_id: r.get(4)?,
        state: r.get(5)?,
        sent_at: r.get(6)?,
    })
}

/// Up to `limit` message copies after `after`, in the stream's order.
fn messages_after(
    c: &Connection,
    after: &MessageKey,
    limit: usize,
) -> rusqlite::Result<Vec<reports::MessageRow>> {
    let mut stmt = c.prepare_cached(
        "SELECT id, endpoint, subject, sender, trace_id, status, sent_at FROM messages
         WHERE sent_at >= ?1 AND (sent_at > ?1 OR id > ?2 OR (id = ?2 AND endpoint > ?3))
         ORDER BY sent_at, id, endpoint LIMIT ?4",
    )?;
    stmt.query_map(
        params![after.sent_at, after.id, after.endpoint, limit as i64],
        row_to_message,
    )?
    .collect()
}

/// One page of what lies after `from` up to `to` in the index, and whether
/// there is more.
fn read_between(ctx: &mut Ctx, from: &Cursor, to: &Cursor) -> Result<(Vec<Item>, bool)> {
    let home = ctx.home.clone();
    let store = ctx.store()?;
    let mut items = Vec::new();
    let mut more = false;
    if from.message < to.message {
        let rows = store.read(|c| messages_after(c, &from.message, MESSAGE_PAGE))?;
        more |= rows.len() == MESSAGE_PAGE;
        items.extend(rows.iter().map(|m| Item::message(&home, m)));
    }
    if from.event < to.event {
        let rows =
            store.read(|c| reports::events_after(c, from.event, 0, &[], EVENT_PAGE as u32))?;
        more |= rows.len() == EVENT_PAGE;
        items.extend(rows.iter().map(Item::event));
    }
    // Past `to` comes from the channel.
    items.retain(|i| to.covers(&i.pos));
    Ok((items, more))
}

/// `GET /api/relay/stream`.
pub(super) async fn stream(
    State(app): State<Arc<App>>,
    axum::Extension(hub): axum::Extension<Arc<Hub>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let q = Query::parse(q.as_deref());
    let pattern = q
        .get("subject")
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_PATTERN)
        .to_string();
    if let Err(e) = subject::validate_pattern(&pattern, "subject filter") {
        return reply::json(
            StatusCode::BAD_REQUEST,
            &json!({
                "error": "Invalid subscription pattern",
                "code": "INVALID_PATTERN",
                "detail": e.to_string(),
                "allowedPrefixes": ["relay.human.console.", "relay.system.", "relay.signal."],
            }),
        );
    }
    // A reconnecting EventSource sends the last id it saw.
    let resume = headers
        .get("last-event-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .or_else(|| q.get("after").map(str::to_string))
        .filter(|s| !s.trim().is_empty());
    let resume = match resume.as_deref().map(Since::parse).transpose() {
        Ok(r) => r,
        Err(m) => return reply::error(StatusCode::BAD_REQUEST, &m, Some("BAD_POSITION")),
    };
    let resume = match resume {
        None => None,
        Some(Since::Position(r)) => Some(r),
        Some(Since::Message(id)) => {
            let p = pattern.clone();
            match app.blocking(move |ctx| after_message(ctx, &id, &p)).await {
                Ok(r) => r,
                Err(e) => return reply::failure(&e),
            }
        }
    };
    let Some(slot) = app.stream_slot() else {
        return reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "too many open streams ({} at most, half the connections); retry shortly",
                app.max_streams
            ),
            Some("UNAVAILABLE"),
        );
    };
    let Some((rx, live)) = hub.subscribe_when_ready().await else {
        return reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the stream is not ready: the index could not be read yet (see the server's stderr); retry shortly",
            Some("UNAVAILABLE"),
        );
    };
    let at = match resume {
        Some(r) => r.at(&live),
        None => live.clone(),
    };
    let now = app.now_ms();
    let hello = Event::default()
        .event("relay_connected")
        .data(json!({ "pattern": pattern, "connectedAt": crate::clock::iso8601(now) }).to_string());
    let sub = Subscriber {
        app: Arc::clone(&app),
        hub,
        rx,
        behind: at.behind(&live).then_some(live),
        at,
        pattern,
        queue: VecDeque::from([hello]),
        _slot: slot,
    };
    let mut resp = Sse::new(futures_util::stream::unfold(sub, Subscriber::next)).into_response();
    let h = resp.headers_mut();
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    h.insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    resp
}

/// One open stream.
struct Subscriber {
    app: Arc<App>,
    hub: Arc<Hub>,
    rx: broadcast::Receiver<Arc<Item>>,
    pattern: String,
    at: Cursor,
    /// Catch up from the index up to this first.
    behind: Option<Cursor>,
    queue: VecDeque<Event>,
    _slot: StreamSlot,
}

impl Subscriber {
    async fn next(mut self) -> Option<(std::result::Result<Event, Infallible>, Self)> {
        loop {
            if let Some(ev) = self.queue.pop_front() {
                return Some((Ok(ev), self));
            }
            if let Some(to) = self.behind.take() {
                let from = self.at.clone();
                let target = to.clone();
                let (items, more) = match self
                    .app
                    .blocking(move |ctx| read_between(ctx, &from, &target))
                    .await
                {
                    Ok(page) => page,
                    Err(e) => {
                        crate::output::warn(&format!("a stream cannot catch up: {e}"));
                        return None;
                    }
                };
                let progressed = !items.is_empty();
                for item in items {
                    self.take(&item);
                }
                if more && progressed {
                    self.behind = Some(to);
                }
                continue;
            }
            match tokio::time::timeout(KEEPALIVE, self.rx.recv()).await {
                Err(_) => return Some((Ok(Event::default().comment("keepalive")), self)),
                Ok(Ok(item)) => self.take(&item),
                // Fell behind the channel: what it dropped is in the index.
                Ok(Err(RecvError::Lagged(_))) => self.behind = self.hub.position(),
                Ok(Err(RecvError::Closed)) => return None,
            }
        }
    }

    /// Passes `item`, queueing its event if the pattern wants it.
    fn take(&mut self, item: &Item) {
        if item.late {
            // Passed already, so only this brings it; one not yet passed
            // comes from the index in order (a catch-up reads it).
            if !self.at.covers(&item.pos) {
                return;
            }
        } else if self.at.covers(&item.pos) {
            return;
        } else {
            self.at.advance(&item.pos);
        }
        if self.pattern != ">" && !subject::matches(&self.pattern, &item.concerns) {
            return;
        }
        let mut ev = Event::default();
        if item.with_id {
            let id = item.id.clone().unwrap_or_else(|| self.at.to_string());
            // An id a client could not send back is left out: it resumes
            // from the one before (this event again, at least once).
            if !id.contains(['\r', '\n', '\0']) {
                ev = ev.id(id);
            }
        }
        self.queue.push_back(ev.event(item.name).data(&item.data));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(at: u64, id: &str, ep: &str) -> MessageKey {
        MessageKey {
            sent_at: at,
            id: id.into(),
            endpoint: ep.into(),
        }
    }

    #[test]
    fn positions_round_trip_and_plain_event_ids_resume_events() {
        let c = Cursor {
            event: 42,
            message: key(1_767_225_600_000, "01JZ", "agent.b"),
        };
        let text = c.to_string();
        assert_eq!(text, "42:1767225600000:01JZ:agent.b");
        let live = Cursor::default();
        assert_eq!(Resume::parse(&text).map(|r| r.at(&live)), Ok(c.clone()));
        let r = Resume::parse("7").map(|r| r.at(&c));
        assert_eq!(r.map(|r| (r.event, r.message)), Ok((7, c.message.clone())));
        for bad in ["", "x", "1:2", "1:x:id:ep", "-:0::"] {
            assert!(Resume::parse(bad).is_err(), "{bad}");
        }
        assert!(Resume::parse("0:0::").is_ok());
    }

    #[test]
    fn a_cursor_passes_each_copy_once_in_order() {
        let mut c = Cursor::default();
        let a = Pos::Message(key(5, "A", "x.b"));
        let b = Pos::Message(key(5, "A", "x.c"));
        assert!(!c.covers(&a));
        c.advance(&a);
        assert!(c.covers(&a));
        assert!(!c.covers(&b), "another copy of the same message, same ms");
        c.advance(&b);
        c.advance(&a);
        assert_eq!(c.message, key(5, "A", "x.c"), "never moves back");
        assert!(!c.covers(&Pos::Event(1)));
        c.advance(&Pos::Event(3));
        assert!(c.covers(&Pos::Event(2)) && !c.covers(&Pos::Event(4)));
    }
}
