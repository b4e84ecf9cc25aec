//! The batch log: how a durable `send --batch` makes a chunk of messages
//! durable with one fsync of one file.
//!
//! Each message is a file of its own, so flushing the files themselves
//! (one `syncfs`) writes a 4 KiB block per message. Instead, a chunk's
//! message files are first appended to the batch's log
//! (`batches/<ulid>.log`) and that one file is fsynced; then the files are
//! delivered Maildir-atomically (`tmp/`, rename into `new/`) without fsync.
//! Once the kernel has written them back, the log is no longer needed.
//!
//! Any command that opens the index settles the logs (`settle`):
//! - a log written on this boot is retired once older than
//!   `RETIRE_AFTER_MS` (the kernel writes dirty pages back within about
//!   35 s): one `syncfs` makes sure, then the log is removed;
//! - a log from another boot (the machine restarted, perhaps losing power)
//!   is replayed first: every message in it that is not in its mailbox
//!   (`new/`, `cur/`, `failed/`) and not acknowledged or dead-lettered in the
//!   index is written again, durably, with its index row.
//!
//! A batch holds an exclusive `flock` on its log while it runs, so a log
//! being written is never retired; settling takes it without waiting.
//! Without a boot id (not Linux), durable batches fsync every message.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use crate::envelope::{self, Envelope};
use crate::error::{Error, IoContext, Result};
use crate::home::{self, FILE_MODE, Home};
use crate::maildir::Mailbox;
use crate::store::{Status, Store};

/// Environment variable that sets the boot id (tests stand for a restart
/// with it; empty: unknown); documented as test-only.
pub const FAKE_BOOT_ENV: &str = "RELAY_FAKE_BOOT_ID";
/// Size past which a running batch retires its log and begins another.
pub const MAX_BYTES: u64 = 64 << 20;
/// Environment variable that lowers `MAX_BYTES` (for tests).
pub const MAX_ENV: &str = "RELAY_BATCH_LOG_MAX_BYTES";
/// Age after which a log of this boot is retired.
pub const RETIRE_AFTER_MS: u64 = 60_000;
const MAGIC: &str = "relay-batch-log 1";
/// Longest header line read (a boot id is 36 characters).
const HEADER_MAX: usize = 256;

/// This boot's id (Linux), or the test override.
#[must_use]
pub fn boot_id() -> Option<String> {
    if let Some(id) = std::env::var_os(FAKE_BOOT_ENV) {
        return id.into_string().ok().filter(|s| !s.is_empty());
    }
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && !s.contains(char::is_whitespace))
}

/// `batches/` in the home.
fn dir(home: &Home) -> PathBuf {
    home.root().join("batches")
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
        let max_bytes = std::env::var(MAX_ENV)
            .ok()
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
            buf.extend_from_slice(format!("{ep} {id} {}\n", bytes.len()).as_bytes());
            buf.extend_from_slice(bytes);
            buf.push(b'\n');
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
        let (file, path, len) = match &mut self.file {
            Some(open) => open,
            None => self.file.insert(create(home, &self.boot)?),
        };
        file.write_all(&buf)
            .and_then(|()| file.sync_data())
            .ctx("cannot write the batch log", path)?;
        *len += buf.len() as u64;
        Ok(())
    }
}

/// Creates a new log (0600, locked, header written) and makes its name
/// durable.
fn create(home: &Home, boot: &str) -> Result<(File, PathBuf, u64)> {
    let dir = dir(home);
    if !dir.is_dir() {
        home::create_dir_secure(&dir, false)?;
        home::sync_dir(home.root())?;
    }
    let path = dir.join(format!("{}.log", envelope::random_ulid()));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&path)
        .ctx("cannot create the batch log", &path)?;
    f.lock().ctx("cannot lock", &path)?;
    let header = format!("{MAGIC} {boot}\n");
    f.write_all(header.as_bytes())
        .ctx("cannot write the batch log", &path)?;
    home::sync_dir(&dir)?;
    Ok((f, path, header.len() as u64))
}

/// One message in a log.
#[derive(Debug, PartialEq)]
struct Entry<'a> {
    endpoint: &'a str,
    id: &'a str,
    bytes: &'a [u8],
}

/// A log's boot id and what follows its header line.
fn header(data: &[u8]) -> Option<(&str, &[u8])> {
    let nl = data.iter().take(HEADER_MAX).position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&data[..nl]).ok()?;
    Some((
        line.strip_prefix(MAGIC)?.strip_prefix(' ')?,
        &data[nl + 1..],
    ))
}

/// A log's boot id and whole entries; `torn` when it ends in a partial
/// entry (a batch killed mid-append: that chunk was never reported sent).
fn parse(data: &[u8]) -> Option<(&str, Vec<Entry<'_>>, bool)> {
    let (boot, mut rest) = header(data)?;
    let mut entries = Vec::new();
    while !rest.is_empty() {
        let entry = (|| {
            let nl = rest.iter().position(|&b| b == b'\n')?;
            let line = std::str::from_utf8(&rest[..nl]).ok()?;
            let mut parts = line.split(' ');
            let (endpoint, id) = (parts.next()?, parts.next()?);
            let len: usize = parts.next()?.parse().ok()?;
            let body = rest.get(nl + 1..nl + 1 + len)?;
            (rest.get(nl + 1 + len) == Some(&b'\n')).then_some(())?;
            let entry = Entry {
                endpoint,
                id,
                bytes: body,
            };
            Some((entry, nl + len + 2))
        })();
        match entry {
            Some((e, used)) => {
                entries.push(e);
                rest = &rest[used..];
            }
            None => return Some((boot, entries, true)),
        }
    }
    Some((boot, entries, false))
}

/// Whether any log could be settled now (cheap: reads headers only).
#[must_use]
pub fn due(home: &Home, now: u64) -> bool {
    !scan(home, now).is_empty()
}

/// Logs that can be settled at `now`, locked: (path, file, whether it is
/// of another boot). Reads the headers only: a young log of this boot can
/// be megabytes that every command would otherwise read.
fn scan(home: &Home, now: u64) -> Vec<(PathBuf, File, bool)> {
    let Ok(rd) = fs::read_dir(dir(home)) else {
        return Vec::new();
    };
    let boot = boot_id();
    let mut due = Vec::new();
    for entry in rd.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let Ok(mut f) = File::open(&path) else {
            continue;
        };
        // Held by the batch writing it, or by another process settling it.
        if f.try_lock().is_err() {
            continue;
        }
        let mut head = Vec::with_capacity(HEADER_MAX);
        if (&mut f)
            .take(HEADER_MAX as u64)
            .read_to_end(&mut head)
            .is_err()
        {
            continue;
        }
        let foreign = header(&head).is_none_or(|(b, _)| boot.as_deref() != Some(b));
        let age = f
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(u64::MAX, |d| {
                now.saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            });
        if foreign || age >= RETIRE_AFTER_MS {
            due.push((path, f, foreign));
        }
    }
    due
}

/// Settles the logs that are due (see the module doc); returns how many
/// messages were written again.
pub fn settle(home: &Home, store: &mut Store, now: u64) -> Result<usize> {
    let due = scan(home, now);
    if due.is_empty() {
        return Ok(0);
    }
    let mut restored = 0;
    for (path, f, foreign) in &due {
        if !foreign {
            continue;
        }
        let mut data = Vec::new();
        let mut f = f;
        f.seek(SeekFrom::Start(0))
            .and_then(|_| f.read_to_end(&mut data))
            .ctx("cannot read the batch log", path)?;
        // A log without a whole header died before its first fsync.
        let Some((_, entries, torn)) = parse(&data) else {
            continue;
        };
        restored += replay(home, store, &entries, now)?;
        if torn {
            eprintln!(
                "relay: warning: {} ends in a partial entry (a batch killed mid-write, which reported none of that chunk sent); skipped it",
                path.display()
            );
        }
    }
    if restored > 0 {
        eprintln!(
            "relay: warning: restored {restored} message(s) from batch logs written before a restart (they had not reached the disk)"
        );
    }
    // Everything the logs cover is on disk once this returns.
    home::sync_filesystem(&home.mailboxes())?;
    for (path, _lock, _) in due {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("cannot remove", &path, e)),
        }
    }
    Ok(restored)
}

/// Writes again, durably, every entry whose file is missing or does not
/// hold what the log does: where it is (`new/`, `cur/`, `failed/`), or in
/// `new/` with its index row unless the index has it acked or dead-lettered.
fn replay(home: &Home, store: &mut Store, entries: &[Entry<'_>], now: u64) -> Result<usize> {
    let tx = store.begin()?;
    let mut restored = 0;
    for e in entries {
        let mb = Mailbox::at(home, e.endpoint);
        if !mb.is_endpoint() {
            continue;
        }
        if let Some(sub) = ["new", "cur", "failed"]
            .into_iter()
            .find(|s| mb.has(s, e.id))
        {
            restored += usize::from(mb.restore(sub, e.id, e.bytes)?);
            continue;
        }
        let status = tx.row(e.endpoint, e.id)?.map(|r| r.status);
        if matches!(status.as_deref(), Some("acked" | "failed")) {
            continue;
        }
        let Ok(env) = Envelope::parse(e.bytes) else {
            continue;
        };
        if env.id == e.id && mb.restore("new", e.id, e.bytes)? {
            tx.index_found(e.endpoint, &env, Status::Pending, None, now)?;
            restored += 1;
        }
    }
    tx.commit()?;
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::{Entry, parse};

    #[test]
    fn parse_reads_whole_entries_and_flags_a_torn_tail() {
        let mut log = b"relay-batch-log 1 boot-a\n".to_vec();
        log.extend_from_slice(b"q 01A 5\nhello\n");
        log.extend_from_slice(b"r.s 01B 2\n{}\n");
        let (boot, entries, torn) = parse(&log).expect("header");
        assert_eq!(boot, "boot-a");
        assert!(!torn);
        assert_eq!(
            entries,
            vec![
                Entry {
                    endpoint: "q",
                    id: "01A",
                    bytes: b"hello"
                },
                Entry {
                    endpoint: "r.s",
                    id: "01B",
                    bytes: b"{}"
                },
            ]
        );
        // Every cut inside the second entry leaves the first, flagged torn.
        for cut in 1..13 {
            let (_, entries, torn) = parse(&log[..log.len() - cut]).expect("header");
            assert_eq!(entries.len(), 1, "cut {cut}");
            assert!(torn, "cut {cut}");
        }
        let (_, entries, torn) = parse(&log[..log.len() - 13]).expect("header");
        assert_eq!((entries.len(), torn), (1, false));
        assert!(parse(b"relay-batch-log 1 boot").is_none());
        assert!(parse(b"something else\n").is_none());
    }
}
