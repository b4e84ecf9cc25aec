//! The persistence wing: every file relay keeps in a home. This file is
//! the map only; the code is in its children, none of which names this
//! module:
//!
//! - `rows`: the plain rows and events the others share (a leaf);
//! - `index`: the SQLite index `relay.db` (`Store`, `Tx`, migrations,
//!   ingestion of the journal);
//! - `journal`: the `Outbox` of rows and events, and its appends to
//!   `journal`;
//! - `log`: the one log format of `journal` and `batches/*.log` (framing,
//!   record kinds, the one reader, and the previous version's formats);
//! - `batchlog`: the batch logs of durable `send --batch`, settled and
//!   replayed;
//! - `state`: the two state slots;
//! - `reports`: read-only queries of the index;
//! - `dorkos`: DorkOS's index and its pending files;
//! - `bridge`: the bridge's `bridge.db`.
//!
//! # The map
//!
//! The Maildir is the truth; everything else is an index of it, a record
//! of what to write into an index, or state the reliability layer may lose
//! a little of. Paths are relative to the home (`RELAY_HOME`, default
//! `~/.dork/relay`); every directory is created 0700, every file 0600, and
//! relay's own files are refused (exit 77) when a symlink or not a regular
//! file (`home::open_own`).
//!
//! | File | Format | Written by / read by | Durability (what a power loss costs) | Lock |
//! |---|---|---|---|---|
//! | `mailboxes/<ep>/{tmp,new,cur,failed}/<id>.json` | a DorkOS envelope, JSON (`envelope`) | `send` delivers (`tmp/` then rename into `new/`); `recv` claims (`new/` -> `cur/`); `ack` unlinks; `nack`, expiries and refusals move to `failed/`; read by every reader (`maildir`, `inbox`) | `send`: the file and `new/` fsynced before the send reports; `send --batch`: the batch log fsynced instead, the files not (see `batches/`); a claim fsyncs `cur/` and `new/`, an ack `cur/`, once per batch of messages (`recv --ack` on the fast path: `cur/` then `new/` once, after its removals, covering claims and acks: before them a crash leaves the messages in `new/` or `cur/`, delivered again); a dead letter fsyncs `failed/` (and `new/`/`cur/` it left). An acknowledged send is never lost | the endpoint's mailbox lock (`flock` on `mailboxes/<ep>/` itself, `Mailbox::lock`): senders from the depth count to the rename, `endpoints remove`, `dlq requeue`, `gc`, ack/nack around the check of the holder. A claim is a rename (no lock: exactly one receiver wins it) |
//! | `mailboxes/<ep>/failed/<id>.reason.json` | DorkOS's dead-letter sidecar, JSON (its four keys plus `code`) | written before its dead letter (`maildir`: through `tmp/`, fsynced, renamed in, `failed/` fsynced, then the letter moved in), so a letter is never seen without it; read by `dlq`, `serve`, DorkOS, the bridge's spans (a letter of an older home without one: the index's code and reason) | durable before its letter appears; a crash between the two leaves a sidecar without a letter (the message still in `cur/`), which readers ignore | the mailbox lock |
//! | `mailboxes/<ep>/.owner` | the owning principal, text, no newline (DorkOS's) | `relay mcp` when it registers an endpoint (`mcp::tools`); read by `mcp` and `serve` | file and directory fsynced | none (created once, `O_EXCL`) |
//! | `mailboxes/.removed-<ulid>/` | a mailbox being removed | `endpoints remove` renames the mailbox aside, then empties it or puts it back; `doctor` finishes a killed removal | directory renames fsynced | its mailbox lock |
//! | `relay.db`, `relay.db-wal`, `relay.db-shm` | SQLite, WAL, `PRAGMA user_version` = migrations applied (`MIGRATIONS` below) | every command that needs the index (`Ctx::store`): rows per (message, endpoint), events, idempotency keys, leases, the journal's offset; read by `trace`, `metrics`, `status`, `dlq`, `serve`, `doctor` | `synchronous=NORMAL`: the last commits can be lost, and are rebuilt from the Maildir (a message is indexed when next seen); `synchronous=FULL` while a batch log exists, so an ack cannot be lost while a replay could bring its message back | SQLite's own (a write transaction is `BEGIN IMMEDIATE`, waited for up to the lock timeout) |
//! | `journal` | the log (`log`): no header, then records of the index kinds (`t`: `sent`, `unsent`, `claimed`, `acked`, `event`), each framed `@<head length> <body length> <checksum>` + JSON head; a torn or damaged record is skipped (and the previous version's bare JSON lines are still read) | appended by sends and by the consumer's fast path instead of opening the index (`journal::Journal::flush`: one `write`); moved into the index by whoever opens it (`index::Store::ingest`: from the offset recorded in the index, idempotent), emptied once all in | not fsynced: a power loss costs index rows and events of the last sends (rows come back when the messages are next seen; events do not) | shared `flock` for the one append; ingestion takes none, and empties the file only if it gets the exclusive lock without waiting |
//! | `state.0`, `state.1` | two slots, each a header line `relay-state <generation> <length> <checksum>` and the state as JSON (`state`): token buckets, breakers, lease deadlines, priority marks | every send, and whatever changes limits, breakers or leases (`state::Locked`): rewrites the older slot in place | not fsynced: after a power loss rate limits and breakers may be a little behind (no message is lost); a torn slot fails its checksum and the other holds the state before | exclusive `flock` on `state.0`, for the read-decide-write only |
//! | `batches/<ulid>.log` (`.new` while being named, `.unreplayed` set aside) | the log (`log`): header line `relay-log 2 <boot id>`, then records as in `journal`, of the kinds `message` (the body is the file's bytes) and `cancel` (a copy whose delivery failed); reading stops at a torn or damaged record (one writer: it is the tail). The previous version's `relay-batch-log 1` logs are still read and replayed | `send --batch` (durable): a chunk's message files, before their delivery; settled by whoever opens the index (`batchlog::settle`): retired after `RETIRE_AFTER_MS` and one `syncfs`, replayed first if written on another boot; `doctor --repair` disarms logs whose index was set aside | fdatasynced per chunk (the batch's one fsync): every acknowledged message survives a power loss and is written again on the next boot | exclusive `flock` held by the batch for its whole run (taken before the log gets its name); settlers try it and skip a locked log of this boot, and wait for one of another boot |
//! | `dorkos.<file>.pending` (`dorkos.dork.db.pending`, `dorkos.index.db.pending`) | JSON lines, one `dorkos::Op` each, at most 16 MiB | relay's updates DorkOS's index could not take in time (`dorkos`): appended, then written (in order, before anything newer) by the next command that touches that index, or `doctor --repair` | not fsynced: a power loss costs DorkOS's index those updates (relay's own files are unaffected) | exclusive `flock` on the file around each attempt |
//! | `../dork.db` or `index.db` | DorkOS's index (SQLite, its schema) | written only if it exists with DorkOS's tables (`dorkos`), one short transaction per relay step, `synchronous=NORMAL`; DorkOS reads it | as DorkOS's own writes | SQLite's, waited for at most `dorkos::BUSY_MS` (then the pending file) |
//! | `bridge/bridge.db` | SQLite, WAL (`bridge`): ids applied from the stream, the pairs of a batch being applied (recorded before its delivery), what was reported back, each peer's last id | `relay bridge` of this home only | `synchronous=FULL` | SQLite's |
//! | `bridge/remotes.json` | JSON: remote endpoints by host (`bridge::directory`) | the bridge (tmp file fsynced, renamed); read by the bridge and `endpoints` | the file fsynced before its rename | none (one bridge per home) |
//! | `bridge/link.json` | JSON: the bridge's link status (`bridge::link`) | the bridge (tmp file, renamed); read by `status` | not fsynced: a status, rewritten as it changes | none |
//! | `config.json`, `access-rules.json` | JSON the operator edits (`config`, `access`) | the operator, or `relay config set` (tmp file fsynced, renamed, home fsynced); read at start by every command | as written | `locks/config.lock` (exclusive `flock`) around `relay config set`'s read-modify-write |
//!
//! # How a message travels
//!
//! `send` (`pipeline`): the index only for idempotency keys or a lease past
//! its deadline; then under the mailbox locks and the state lock the
//! admission (backpressure, rate limit, breakers) written to the state
//! slots; the copy's row appended to the journal (before the copy is
//! visible), the copy delivered durably, the events appended. `recv`
//! claims by rename and records the claim (journal on the consumer's fast
//! path, else the index); `ack`/`nack` unlink or dead-letter it and record
//! that likewise. The next command that opens the index ingests the
//! journal and settles the batch logs, so `trace`, `metrics` and `status`
//! see everything that finished.
//!
//! # The one lock order
//!
//! A process that holds more than one lock takes them in this order, and
//! never waits for one while holding a later one:
//!
//! 1. mailbox locks (a send takes all its endpoints' locks, never waiting
//!    for one while it holds another: `pipeline::lock_all`);
//! 2. the index's write transaction (a send's index checks take it before
//!    any mailbox lock and let it go first);
//! 3. the state lock;
//! 4. the journal's shared lock (for one `write`) and the DorkOS pending
//!    file's lock (around one attempt), which nest nothing.
//!
//! A batch log's lock is taken as the log is created (no one else can hold
//! it yet) and held for the whole batch; settlers only try it, except for a
//! log of another boot, which only another settler can hold. The config
//! lock nests nothing. Every wait is bounded by the lock
//! timeout (`lockwait`), then the command exits 75 naming the lock.

pub mod batchlog;
pub mod bridge;
pub mod dorkos;
pub mod index;
pub mod journal;
pub mod log;
pub mod reports;
pub mod rows;
pub mod state;
