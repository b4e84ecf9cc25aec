//! Bounded lock waits. Every lock relay waits for (a mailbox, the state
//! slots, the config lock, a batch log, the index) is tried without
//! blocking first, so an uncontended lock costs what it always did; a
//! contended one is waited for until the lock timeout
//! (`locks.timeoutMs`, overridden by `RELAY_LOCK_TIMEOUT_MS`), then the
//! command gives up with exit 75, naming the lock and, when the kernel
//! tells (`/proc/locks`), the pid holding it.

use std::fs::{File, TryLockError};
use std::path::Path;
use std::sync::{OnceLock, mpsc};
use std::time::Duration;

use crate::error::{Error, Result};

/// Environment variable that overrides `locks.timeoutMs` (milliseconds).
pub const ENV: &str = crate::envvars::LOCK_TIMEOUT_MS.name;
/// The default lock timeout, in milliseconds.
pub const DEFAULT_MS: u64 = 10_000;

static TIMEOUT: OnceLock<Duration> = OnceLock::new();

/// Sets this process's lock timeout from the config (`locks.timeoutMs`),
/// unless `RELAY_LOCK_TIMEOUT_MS` overrides it. Called once, at start.
pub fn configure(config_ms: u64) -> Result<()> {
    let ms = match crate::envvars::LOCK_TIMEOUT_MS.get() {
        Some(v) => v.trim().parse::<u64>().map_err(|_| {
            Error::Usage(format!(
                "{ENV}='{v}' is not a number of milliseconds; set it like {ENV}=10000, or unset it to use locks.timeoutMs"
            ))
        })?,
        None => config_ms,
    };
    let _ = TIMEOUT.set(Duration::from_millis(ms));
    Ok(())
}

/// How long a lock is waited for.
#[must_use]
pub fn timeout() -> Duration {
    *TIMEOUT.get_or_init(|| {
        let ms = crate::envvars::LOCK_TIMEOUT_MS
            .get()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_MS);
        Duration::from_millis(ms)
    })
}

/// Takes an exclusive `flock` on `file` (opened from `path`), waiting at
/// most the lock timeout; `what` names the lock in the error.
///
/// The lock is tried without blocking first (no extra cost when it is
/// free). A contended lock is waited for by a thread blocked in `flock` on
/// a clone of the same open file (so the kernel wakes it the moment the
/// lock is free, and lists it as a waiter in `/proc/locks`); on timeout the
/// caller gives up and drops its handle, and the thread, should it get the
/// lock later, lets it go at once by closing the last handle.
pub fn flock(file: &File, path: &Path, what: &str) -> Result<()> {
    match file.try_lock() {
        Ok(()) => return Ok(()),
        Err(TryLockError::WouldBlock) => {}
        Err(TryLockError::Error(e)) => return Err(Error::io("cannot lock", path, e)),
    }
    let waiter = file
        .try_clone()
        .map_err(|e| Error::io("cannot lock", path, e))?;
    let (done, result) = mpsc::channel();
    std::thread::Builder::new()
        .name("lock-wait".into())
        .spawn(move || {
            let _ = done.send(waiter.lock());
        })
        .map_err(|e| Error::io("cannot wait for the lock on", path, e))?;
    match result.recv_timeout(timeout()) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::io("cannot lock", path, e)),
        Err(_) => {
            let pid = file.metadata().ok().and_then(|m| holder(&m, Kind::Flock));
            Err(timed_out(what, path, pid))
        }
    }
}

/// The error for a lock not obtained within the timeout.
#[must_use]
pub fn timed_out(what: &str, path: &Path, holder: Option<u32>) -> Error {
    let held = holder.map_or_else(
        || "held by another process".to_string(),
        |pid| format!("held by pid {pid}"),
    );
    Error::Locked(format!(
        "timed out after {} waiting for {what} {} ({held}); retry later, or raise locks.timeoutMs (or {ENV})",
        crate::clock::human_ms(u64::try_from(timeout().as_millis()).unwrap_or(u64::MAX)),
        path.display()
    ))
}

/// Which kind of lock to look for in `/proc/locks`.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A whole-file `flock`.
    Flock,
    /// A POSIX (`fcntl`) write lock covering this byte, as SQLite takes.
    PosixByte(u64),
}

/// The pid holding a `kind` lock on the file `md` describes, other than
/// this process, if the kernel tells (`/proc/locks`). Takes metadata, not
/// a file: closing a second descriptor of a file would drop this process's
/// own POSIX locks on it (SQLite's).
#[must_use]
pub fn holder(md: &std::fs::Metadata, kind: Kind) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let want = format!(
        "{:02x}:{:02x}:{}",
        rustix::fs::major(md.dev()),
        rustix::fs::minor(md.dev()),
        md.ino()
    );
    let me = std::process::id();
    let table = std::fs::read_to_string("/proc/locks").ok()?;
    table.lines().find_map(|line| {
        // `1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF`; waiters are
        // marked `->` and skipped.
        let mut f = line.split_whitespace().skip(1);
        let class = f.next()?;
        let (_, mode, pid, dev_ino, start, end) = (
            f.next()?,
            f.next()?,
            f.next()?,
            f.next()?,
            f.next()?,
            f.next()?,
        );
        let pid: u32 = pid.parse().ok()?;
        if pid == me || pid == 0 || dev_ino != want {
            return None;
        }
        let matches = match kind {
            Kind::Flock => class == "FLOCK",
            Kind::PosixByte(b) => {
                class == "POSIX"
                    && mode == "WRITE"
                    && start.parse::<u64>().is_ok_and(|s| s <= b)
                    && (end == "EOF" || end.parse::<u64>().is_ok_and(|e| e >= b))
            }
        };
        matches.then_some(pid)
    })
}
