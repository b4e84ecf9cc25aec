//! The batch log: how a durable `send --batch` makes a chunk of messages
//! durable with one fsync of one file.
//!
//! Each message is a file of its own, so flushing the files themselves
//! (one `syncfs`) writes a 4 KiB block per message. Instead, a chunk's
//! message files are first appended to the batch's log
//! (`batches/<ulid>.log`) and that one file is fsynced; then the files are
//! delivered (whole, at once) without fsync. A copy whose delivery failed
//! is cancelled in the log (fsynced) before the failure is reported. Once
//! the kernel has written the files back, the log is no longer needed.
//! The log is in the one log format (`log`): a header naming the boot,
//! then a `message` record per copy (its file as the body) and a `cancel`
//! record per cancelled copy; the previous version's logs are read alike.
//!
//! Any command that opens the index settles the logs (`settle`):
//! - a log written on this boot is retired once older than
//!   `RETIRE_AFTER_MS` (the kernel writes dirty pages back within about
//!   35 s): one `syncfs` makes sure, then the log is removed;
//! - a log from another boot (the machine restarted, perhaps losing power)
//!   is replayed first: every message in it whose file is missing or does
//!   not hold what the log does is written again, durably; a missing one
//!   only if the index does not have it acked or dead-lettered. While logs
//!   remain, every index transaction commits durably (`Store::begin`), so
//!   an ack cannot be lost while the file's removal survives; `dlq purge`
//!   retires the logs first (and waits for running batches). Messages a
//!   program outside relay removed cannot be told from lost ones and come
//!   back: at least once, never lost.
//!
//! A batch holds an exclusive `flock` on its log while it runs (a log is
//! locked before it gets its name), so a log being written is never
//! retired. A log of another boot is waited for, not skipped, so every
//! relay command after a restart reads the mailboxes after the replay.
//! Without a boot id (not Linux), durable batches fsync every message, and
//! logs (written under one) are kept: nothing could tell a restart.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::clock::system_time_ms;
use crate::envelope::{self, Envelope};
use crate::error::{Error, IoContext, Result};
use crate::home::{self, FILE_MODE, Home};
use crate::maildir::Mailbox;
use crate::output;
use crate::store::index::Store;
use crate::store::log::{self, Record};
use crate::store::rows::Event;
use crate::vocab::EventKind;
use crate::vocab::Status;
use serde_json::json;

/// Environment variable that sets the boot id (tests stand for a restart
/// with it; empty: unknown); documented as test-only.
pub const FAKE_BOOT_ENV: &str = crate::envvars::FAKE_BOOT_ID.name;
/// Size past which a running batch retires its log and begins another.
pub const MAX_BYTES: u64 = 64 << 20;
/// Environment variable that lowers `MAX_BYTES` (for tests).
pub const MAX_ENV: &str = crate::envvars::BATCH_LOG_MAX_BYTES.name;
/// Age after which a log of this boot is retired.
pub const RETIRE_AFTER_MS: u64 = 60_000;

/// This boot's id (Linux), or the test override.
#[must_use]
pub fn boot_id() -> Option<String> {
    let id = match crate::envvars::FAKE_BOOT_ID.get_os() {
        Some(id) => id.into_string().ok()?,
        None => fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?,
    };
    let id = id.trim();
    // A header line must hold it whole (a uuid is 36 characters).
    let ok = (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    ok.then(|| id.to_owned())
}

/// `batches/` in the home.
fn dir(home: &Home) -> PathBuf {
    crate::store::log::batches_dir(home.root())
}

/// One batch's log, created on the first append.
pub struct Log {
    boot: String,
    max_bytes: u64,
    file: Option<(File, PathBuf, u64)>,
}

impl Log {
    /// A log for this boot; `None` when the boot id is unknown.
    #[must_use]
    pub fn new() -> Option<Self> {
        let max_bytes = crate::envvars::BATCH_LOG_MAX_BYTES
            .get()
            .and_then(|v| v.parse().ok())
            .unwrap_or(MAX_BYTES);
        boot_id().map(|boot| Log {
            boot,
            max_bytes,
            file: None,
        })
    }

    /// Appends `copies` (endpoint, id, file bytes) and fsyncs the log: on
    /// return they survive a power loss. Past its size bound, the log is
    /// first retired (one `syncfs` for what it covers) and a new one begun,
    /// so a long batch does not keep a second copy of everything it sent.
    pub fn append<'a>(
        &mut self,
        home: &Home,
        copies: impl Iterator<Item = (&'a str, &'a str, &'a [u8])>,
    ) -> Result<()> {
        let mut buf = Vec::new();
        for (ep, id, bytes) in copies {
            let r = Record::Message {
                endpoint: ep.to_owned(),
                id: id.to_owned(),
            };
            log::push(&mut buf, &r, bytes);
        }
        if buf.is_empty() {
            return Ok(());
        }
        if let Some((_, path, len)) = &self.file
            && *len > self.max_bytes
        {
            home::sync_filesystem(&home.mailboxes())?;
            fs::remove_file(path).ctx("cannot remove", path)?;
            self.file = None;
        }
        let open = match &mut self.file {
            Some(open) => open,
            None => self.file.insert(create(home, &self.boot)?),
        };
        write_synced(open, &buf)
    }

    /// Cancels appended copies whose delivery failed (they are reported
    /// failed, and the sender will retry them), fsynced: a replay skips them.
    pub fn cancel<'a>(&mut self, copies: impl Iterator<Item = (&'a str, &'a str)>) -> Result<()> {
        let mut buf = Vec::new();
        for (ep, id) in copies {
            let r = Record::Cancel {
                endpoint: ep.to_owned(),
                id: id.to_owned(),
            };
            log::push(&mut buf, &r, &[]);
        }
        match &mut self.file {
            Some(open) if !buf.is_empty() => write_synced(open, &buf),
            _ => Ok(()),
        }
    }
}

/// Appends `buf` to an open log (file, path, length) and fdatasyncs it.
fn write_synced((file, path, len): &mut (File, PathBuf, u64), buf: &[u8]) -> Result<()> {
    file.write_all(buf)
        .and_then(|()| file.sync_data())
        .ctx("cannot write the batch log", path)?;
    *len += buf.len() as u64;
    Ok(())
}

/// Creates a new log: locked and given its header under a name settling
/// ignores (`.new`), then renamed to `.log`, so no settler sees it unlocked;
/// both names are made durable.
fn create(home: &Home, boot: &str) -> Result<(File, PathBuf, u64)> {
    let dir = dir(home);
    home::create_dir_secure(&dir, false)?;
    home::check_dir(&dir, "batch log directory")?;
    home::sync_dir(home.root())?;
    let name = envelope::random_ulid();
    let (new, path) = (
        dir.join(format!("{name}.new")),
        dir.join(format!("{name}.log")),
    );
    let mut f = OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&new)
        .ctx("cannot create the batch log", &new)?;
    crate::lockwait::flock(&f, &new, "the batch log lock")?;
    let header = log::header(boot);
    f.write_all(header.as_bytes())
        .ctx("cannot write the batch log", &new)?;
    fs::rename(&new, &path).ctx("cannot name the batch log", &path)?;
    home::sync_dir(&dir)?;
    Ok((f, path, header.len() as u64))
}

/// Whether any log could be settled now (reads headers only).
#[must_use]
pub fn due(home: &Home, now: u64) -> bool {
    // A log another settler holds too long is due: opening the index says so.
    scan(home, now, false).map_or(true, |(due, _)| !due.is_empty())
}

/// A log to settle, locked.
struct Due {
    path: PathBuf,
    file: File,
    /// Of another boot: to replay.
    foreign: bool,
}

/// Logs that can be settled at `now`, and whether others remain. Reads the
/// headers only: a young log of this boot can be megabytes, and every
/// command that opens the index scans. Fails only when a log of another
/// boot stays locked past the lock timeout (its replay is not done).
fn scan(home: &Home, now: u64, force: bool) -> Result<(Vec<Due>, bool)> {
    let dir = dir(home);
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => {
            // A symlink out of the home is neither read nor replayed.
            if let Err(e) = home::check_dir(&dir, "batch log directory") {
                output::warn(&format!("{e}; its batch logs wait"));
                return Ok((Vec::new(), true));
            }
            rd
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
        Err(e) => {
            output::warn(&format!(
                "cannot read {}: {e}; its batch logs wait",
                dir.display()
            ));
            return Ok((Vec::new(), true));
        }
    };
    let boot = boot_id();
    let (mut due, mut remain) = (Vec::new(), false);
    // One order for every settler: they lock logs one after another.
    let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let age = age(&path, now);
        match path.extension().and_then(|e| e.to_str()) {
            Some("log") => {}
            // A batch killed before naming its log: a header at most (a
            // live one holds its lock).
            Some("new") if age >= RETIRE_AFTER_MS => {
                if home::open_regular(&path, rustix::fs::OFlags::RDONLY, 0)
                    .is_ok_and(|(f, _)| f.try_lock().is_ok())
                {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            _ => continue,
        }
        let age = if force { u64::MAX } else { age };
        match open_due(&path, boot.as_deref(), age) {
            Ok(Some(d)) => due.push(d),
            Ok(None) => remain = true,
            Err(e @ Error::Locked(_)) => return Err(e),
            Err(e) => {
                output::warn(&format!(
                    "cannot read the batch log {}: {e}; it waits",
                    path.display()
                ));
                remain = true;
            }
        }
    }
    Ok((due, remain))
}

/// Milliseconds since `path` was last written, at `now` (unknown: oldest).
fn age(path: &Path, now: u64) -> u64 {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .map_or(u64::MAX, |t| now.saturating_sub(system_time_ms(t)))
}

/// The log at `path`, locked, if it is due (`Ok(None)`: not yet, or gone).
fn open_due(path: &Path, boot: Option<&str>, age: u64) -> Result<Option<Due>> {
    let mut file = match home::open_regular(path, rustix::fs::OFlags::RDONLY, 0) {
        Ok((f, _)) => f,
        Err(home::Unreadable::Missing) => return Ok(None),
        Err(home::Unreadable::NotRegular(kind)) => {
            return Err(Error::io(
                "cannot read",
                path,
                std::io::Error::other(format!(
                    "it is a {kind}, not a regular file (remove it: relay never follows or reads it)"
                )),
            ));
        }
        Err(e) => return Err(Error::io("cannot open", path, e.into_io())),
    };
    let mut head = Vec::with_capacity(log::HEADER_MAX);
    (&mut file)
        .take(log::HEADER_MAX as u64)
        .read_to_end(&mut head)
        .ctx("cannot read", path)?;
    // Without a boot id to compare, no log can be told safe to retire.
    let Some(boot) = boot else {
        return Ok(None);
    };
    let foreign = log::read_header(&head).is_none_or(|(b, _, _)| b != boot);
    if foreign {
        // Only another settler can hold it (its batch died with the boot):
        // wait, so nothing reads the mailboxes before the replay is done.
        crate::lockwait::flock(
            &file,
            path,
            "the batch log (being replayed by another relay)",
        )?;
        if file.metadata().ctx("cannot stat", path)?.nlink() == 0 {
            return Ok(None);
        }
    } else if age < RETIRE_AFTER_MS || file.try_lock().is_err() {
        // Young, or held by the batch writing it or by another settler.
        return Ok(None);
    }
    Ok(Some(Due {
        path: path.to_path_buf(),
        file,
        foreign,
    }))
}

/// Settles the logs that are due (see the module doc), each on its own: a
/// log that cannot be replayed is kept, with a warning. `force` retires
/// this boot's logs whatever their age (before removing dead letters for
/// good: a replay could not tell them from lost messages). Returns whether
/// logs remain (the caller then commits to the index durably).
pub fn settle(home: &Home, store: &mut Store, now: u64, force: bool) -> Result<bool> {
    let (due, mut remain) = scan(home, now, force)?;
    if due.is_empty() {
        return Ok(remain);
    }
    let mut restored = 0;
    let mut done = Vec::with_capacity(due.len());
    for d in due {
        if d.foreign {
            match replay_file(home, store, &d, now) {
                Ok(n) => restored += n,
                Err(e) => {
                    output::warn(&format!(
                        "cannot replay the batch log {}: {e}; it is kept",
                        d.path.display()
                    ));
                    remain = true;
                    continue;
                }
            }
        }
        done.push(d);
    }
    if restored > 0 {
        output::warn(&format!(
            "restored {restored} message(s) from batch logs written before a restart (they had not reached the disk)"
        ));
    }
    // Everything the logs cover (and every file replayed) is on disk once
    // this returns.
    home::sync_filesystem(&home.mailboxes())?;
    for d in done {
        match fs::remove_file(&d.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("cannot remove", &d.path, e)),
        }
    }
    home::sync_dir(&dir(home))?;
    Ok(remain)
}

/// A log of another boot that could not be replayed because the index
/// that knew what was acked was set aside (`doctor --repair`).
#[derive(Debug)]
pub struct Unreplayed {
    /// Where the log now is (`batches/<name>.unreplayed`), or where it was
    /// if nothing in it was missing (then it is removed).
    pub path: PathBuf,
    /// Messages of the log that are not in their mailbox: acked, or lost
    /// with the power; nothing can tell which any more.
    pub missing: Vec<(String, String)>,
    /// Files present but damaged that were written again from the log.
    pub restored: usize,
}

/// Disarms the logs of another boot after the index was set aside: the new
/// index has no record of what was acked, so a normal replay would bring
/// acked messages back. Files that are present but damaged are written
/// again (present means not acked); missing ones are left missing and
/// reported, and a log with any is kept as `<name>.unreplayed` (which
/// nothing replays) for a person to decide; the others are removed.
pub fn disarm_foreign(home: &Home, now: u64) -> Result<Vec<Unreplayed>> {
    let (due, _) = scan(home, now, false)?;
    let mut out = Vec::new();
    for d in due.into_iter().filter(|d| d.foreign) {
        let mut data = Vec::new();
        let mut f = &d.file;
        f.seek(SeekFrom::Start(0))
            .and_then(|_| f.read_to_end(&mut data))
            .ctx("cannot read the batch log", &d.path)?;
        let (mut missing, mut restored) = (Vec::new(), 0);
        let parsed = read(&data);
        for e in parsed
            .as_ref()
            .map(log::Parsed::messages)
            .unwrap_or_default()
        {
            let e = Msg::from(e);
            let mb = Mailbox::at(home, e.endpoint);
            if crate::subject::validate_subject(e.endpoint, "endpoint").is_err()
                || crate::maildir::validate_id(e.id).is_err()
                || !mb.is_endpoint()
            {
                continue;
            }
            match ["new", "cur", "failed"]
                .into_iter()
                .find(|s| mb.has(s, e.id))
            {
                Some(sub) => {
                    if Envelope::parse(e.bytes).is_ok_and(|env| env.id == e.id)
                        && mb.restore(sub, e.id, e.bytes)?
                    {
                        restored += 1;
                    }
                }
                None => missing.push((e.endpoint.to_owned(), e.id.to_owned())),
            }
        }
        home::sync_filesystem(&home.mailboxes())?;
        let path = if missing.is_empty() {
            fs::remove_file(&d.path).ctx("cannot remove", &d.path)?;
            d.path.clone()
        } else {
            let kept = d.path.with_extension("unreplayed");
            fs::rename(&d.path, &kept).ctx("cannot set aside", &d.path)?;
            kept
        };
        home::sync_dir(&dir(home))?;
        out.push(Unreplayed {
            path,
            missing,
            restored,
        });
    }
    Ok(out)
}

/// Reads and replays one log of another boot; how many messages it wrote.
fn replay_file(home: &Home, store: &mut Store, d: &Due, now: u64) -> Result<usize> {
    let mut data = Vec::new();
    let mut f = &d.file;
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.read_to_end(&mut data))
        .ctx("cannot read the batch log", &d.path)?;
    let Some(parsed) = read(&data) else {
        return Ok(0);
    };
    if parsed.partial || parsed.damaged {
        output::warn(&format!(
            "{} ends in a partial line or damaged record (a batch killed mid-write, before it reported that chunk); skipped it",
            d.path.display()
        ));
    }
    let entries: Vec<Msg<'_>> = parsed.messages().into_iter().map(Msg::from).collect();
    replay(home, store, &entries, now)
}

/// A log's records, in either version's format (`log::parse`, stopping at
/// damage: one writer, so damage is a torn tail); `None` without a whole
/// header (the log died before its first fsync).
fn read(data: &[u8]) -> Option<log::Parsed<'_>> {
    let parsed = log::parse(data, log::OnDamage::Stop);
    parsed.boot.is_some().then_some(parsed)
}

/// A message of a log to replay.
struct Msg<'a> {
    endpoint: &'a str,
    id: &'a str,
    bytes: &'a [u8],
}

impl<'a> From<(&'a str, &'a str, &'a [u8])> for Msg<'a> {
    fn from((endpoint, id, bytes): (&'a str, &'a str, &'a [u8])) -> Self {
        Msg {
            endpoint,
            id,
            bytes,
        }
    }
}

/// Writes again every entry whose file is missing or does not hold what
/// the log does: where it is (`new/`, `cur/`, `failed/`), or in `new/`,
/// with its index row, unless the index has it acked or dead-lettered. The
/// files are not fsynced one by one (`settle` flushes them all), and the
/// index is written to only at the end, so nobody waits on its lock.
fn replay(home: &Home, store: &mut Store, entries: &[Msg<'_>], now: u64) -> Result<usize> {
    // (endpoint, envelope, where it was written, whether it needs a row)
    let mut restored = Vec::new();
    for e in entries {
        // A log is relay's own file, but a damaged or planted one must not
        // lead a write out of the mailboxes.
        if crate::subject::validate_subject(e.endpoint, "endpoint").is_err()
            || crate::maildir::validate_id(e.id).is_err()
        {
            output::warn(&format!(
                "batch log entry for endpoint '{}' id '{}' names no mailbox file; skipped it",
                e.endpoint, e.id
            ));
            continue;
        }
        let mb = Mailbox::at(home, e.endpoint);
        // Not through a mailbox (or subdirectory) that is a symlink.
        if !mb.is_endpoint() || mb.check().is_err() {
            continue;
        }
        let found = ["new", "cur", "failed"]
            .into_iter()
            .find(|s| mb.has(s, e.id));
        if found.is_none() {
            let status = store.status(e.endpoint, e.id)?;
            if status.is_some_and(Status::is_settled) {
                continue;
            }
        }
        let Ok(env) = Envelope::parse(e.bytes) else {
            continue;
        };
        let sub = found.unwrap_or("new");
        if env.id == e.id && mb.restore(sub, e.id, e.bytes)? {
            restored.push((e.endpoint, env, sub, found.is_none()));
        }
    }
    if !restored.is_empty() {
        let mut tx = store.begin()?;
        for (ep, env, sub, missing) in &restored {
            if *missing {
                tx.index_found(ep, env, Status::Pending, None, now)?;
            }
            tx.event(
                &Event {
                    kind: EventKind::Restored,
                    sender: Some(&env.from),
                    endpoint: Some(ep),
                    message_id: Some(&env.id),
                    detail: json!({ "into": sub, "was": if *missing { "missing" } else { "damaged" } }),
                },
                now,
            )?;
        }
        tx.commit()?;
    }
    Ok(restored.len())
}
