//! The one error type of relay and the one place that maps it to exit codes.
//!
//! Every error message names the bad value and, where there is one, the fix.
//! Exit codes follow sysexits(3) so scripts can branch without parsing text.

use std::io;
use std::path::Path;

/// Exit codes (sysexits.h); std has no constants for them.
pub mod code {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 64;
    pub const DATAERR: u8 = 65;
    pub const NOINPUT: u8 = 66;
    pub const UNAVAILABLE: u8 = 69;
    pub const IOERR: u8 = 74;
    pub const TEMPFAIL: u8 = 75;
    pub const NOPERM: u8 = 77;
    pub const CONFIG: u8 = 78;
    /// Stopped by a signal (128 + SIGINT), as shells report it.
    pub const INTERRUPTED: u8 = 130;
}

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, by kind. The message is complete and
/// user-facing; `exit_code` is the only mapping from kind to process status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line was wrong (64).
    #[error("{0}")]
    Usage(String),
    /// The input data was wrong: a subject, a payload, an id (65).
    #[error("{0}")]
    Data(String),
    /// No input (66): `recv` found nothing to claim, or an input file is missing.
    #[error("{0}")]
    NoInput(String),
    /// No endpoint matches (69).
    #[error("{0}")]
    NoEndpoint(String),
    /// The relay home does not exist yet (69): a read-only command looked
    /// at it (and created nothing).
    #[error("{0}")]
    NoHome(String),
    /// A filesystem operation failed (74).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The SQLite index failed (74).
    #[error("{0}")]
    Store(String),
    /// The disk is full, of space or of inodes (74): the step that hit it
    /// wrote nothing.
    #[error("{0}")]
    Full(String),
    /// A temporary refusal: retry later (75).
    #[error("{message}")]
    Refused {
        message: String,
        retry_after_ms: Option<u64>,
    },
    /// A lock was not obtained within the lock timeout (75): the message
    /// names the lock and, if known, the pid holding it.
    #[error("{0}")]
    Locked(String),
    /// The index file is damaged (74): not a database, or corrupt. Only
    /// this makes `doctor --repair` set it aside.
    #[error("{0}")]
    Damaged(String),
    /// Permission or safety refusal (77).
    #[error("{0}")]
    Denied(String),
    /// A configuration file is invalid (78).
    #[error("{0}")]
    Config(String),
    /// Some items of a batch failed; the code is the first failure's.
    #[error("{message}")]
    Batch { code: u8, message: String },
    /// Stopped at once by a second SIGINT/SIGTERM (130).
    #[error("{0}")]
    Interrupted(String),
}

impl Error {
    /// The sysexits code for this error. The only such mapping in relay.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => code::USAGE,
            Error::Data(_) => code::DATAERR,
            Error::NoInput(_) => code::NOINPUT,
            Error::NoEndpoint(_) | Error::NoHome(_) => code::UNAVAILABLE,
            Error::Io { .. } | Error::Store(_) | Error::Damaged(_) | Error::Full(_) => code::IOERR,
            Error::Refused { .. } | Error::Locked(_) => code::TEMPFAIL,
            Error::Denied(_) => code::NOPERM,
            Error::Config(_) => code::CONFIG,
            Error::Batch { code, .. } => *code,
            Error::Interrupted(_) => code::INTERRUPTED,
        }
    }

    /// A stable machine-readable name for the kind, used in `--json` errors.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Usage(_) => "usage",
            Error::Data(_) => "data",
            Error::NoInput(_) => "no_input",
            Error::NoEndpoint(_) => "no_endpoint",
            Error::NoHome(_) => "no_home",
            Error::Io { .. } => "io",
            Error::Store(_) => "index",
            Error::Full(_) => "disk_full",
            Error::Refused { .. } => "refused",
            Error::Locked(_) => "lock_timeout",
            Error::Damaged(_) => "index_damaged",
            Error::Denied(_) => "denied",
            Error::Config(_) => "config",
            Error::Batch { .. } => "batch",
            Error::Interrupted(_) => "interrupted",
        }
    }

    /// Milliseconds after which a refused operation may succeed, if known.
    #[must_use]
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Error::Refused { retry_after_ms, .. } => *retry_after_ms,
            _ => None,
        }
    }

    /// Wraps an I/O error with the operation and the path it concerned
    /// (`Full` for a full disk).
    pub fn io(what: impl std::fmt::Display, path: &Path, source: io::Error) -> Self {
        if is_full(&source) {
            return Error::full(format!("{what} {}: {source}", path.display()));
        }
        Error::Io {
            what: format!("{what} {}", path.display()),
            source,
        }
    }

    /// A full disk, `what` saying where it was hit.
    #[must_use]
    pub fn full(what: String) -> Self {
        Error::Full(format!(
            "{what}; the disk is full: free space (relay recv + ack, relay gc, relay dlq purge, or outside relay) and retry"
        ))
    }

    /// Whether this is a full disk.
    #[must_use]
    pub fn is_full(&self) -> bool {
        matches!(self, Error::Full(_))
    }

    /// Whether this is a broken pipe on output (the reader went away): not an
    /// error worth reporting.
    #[must_use]
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// Whether an I/O error means no space or no inodes left (or over quota).
#[must_use]
pub fn is_full(e: &io::Error) -> bool {
    use rustix::io::Errno;
    e.raw_os_error()
        .is_some_and(|n| n == Errno::NOSPC.raw_os_error() || n == Errno::DQUOT.raw_os_error())
}

/// Attaches a path and an operation name to an `io::Result`.
pub trait IoContext<T> {
    /// Maps the error to `Error::Io` naming `what` and `path`.
    fn ctx(self, what: &str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, what: &str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(what, path, e))
    }
}
