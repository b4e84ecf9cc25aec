//! The relay home: where it is, creating it safely (0700 directories, 0600
//! files), and refusing homes or mailboxes that are symlinks or world-writable.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Mode of every directory relay creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file relay creates.
pub const FILE_MODE: u32 = 0o600;

/// The configuration file's name inside the home.
pub const CONFIG_FILE: &str = "config.json";

/// Envelope overhead allowed on top of the payload when reading a message
/// file: ids, subjects, the budget and its ancestor chain, DorkOS extras.
const ENVELOPE_OVERHEAD: u64 = 64 * 1024;
/// How many file bytes one payload byte can take once JSON-escaped
/// (`\u0001`): a message relay wrote with the biggest payload still fits.
const ESCAPE_FACTOR: u64 = 6;

/// Paths inside a relay home.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
    message_cap: u64,
}

impl Home {
    /// Resolves the home: `--home` if given, else `RELAY_HOME`, else
    /// `~/.dork/relay`.
    pub fn resolve(explicit: Option<PathBuf>) -> Result<Self> {
        let root = match explicit {
            Some(p) if p.as_os_str().is_empty() => {
                return Err(Error::Usage(
                    "empty --home: pass a directory, e.g. --home ~/.dork/relay".into(),
                ));
            }
            Some(p) => p,
            None => match crate::envvars::HOME.get_os() {
                Some(p) if p.is_empty() => {
                    return Err(Error::Usage(
                        "RELAY_HOME is set but empty: set it to a directory or unset it to use ~/.dork/relay"
                            .into(),
                    ));
                }
                Some(p) => PathBuf::from(p),
                None => Self::default_root()?,
            },
        };
        Ok(Home {
            root,
            // Set from the configuration once it is loaded (every caller
            // does, before reading a message): until then, no payload.
            message_cap: message_cap(0),
        })
    }

    /// Sets the largest message file relay reads from `maxPayloadBytes`.
    pub fn set_payload_cap(&mut self, max_payload_bytes: u64) {
        self.message_cap = message_cap(max_payload_bytes);
    }

    /// The largest message file relay reads, in bytes: anything bigger in a
    /// mailbox was not written by a relay honouring this home's payload cap.
    #[must_use]
    pub fn message_cap(&self) -> u64 {
        self.message_cap
    }

    fn default_root() -> Result<PathBuf> {
        Ok(match std::env::var_os("HOME") {
            Some(h) if !h.is_empty() => PathBuf::from(h).join(".dork").join("relay"),
            _ => {
                return Err(Error::Usage(
                    "cannot find the relay home: HOME is not set; pass --home DIR or set RELAY_HOME"
                        .into(),
                ));
            }
        })
    }

    /// Creates the home (and `mailboxes/`) if missing, then checks that
    /// neither is a symlink or world-writable.
    pub fn ensure(&self) -> Result<()> {
        create_dir_secure(&self.root, true)?;
        check_dir(&self.root, "relay home")?;
        let mb = self.mailboxes();
        create_dir_secure(&mb, false)?;
        check_dir(&mb, "mailboxes directory")
    }

    /// The home directory itself.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<home>/mailboxes`.
    #[must_use]
    pub fn mailboxes(&self) -> PathBuf {
        self.root.join("mailboxes")
    }

    /// `<home>/config.json`.
    #[must_use]
    pub fn config_file(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }

    /// `<home>/relay.db`.
    #[must_use]
    pub fn db_file(&self) -> PathBuf {
        self.root.join("relay.db")
    }
}

/// The read cap for message files given the payload cap.
fn message_cap(max_payload_bytes: u64) -> u64 {
    max_payload_bytes
        .saturating_mul(ESCAPE_FACTOR)
        .saturating_add(ENVELOPE_OVERHEAD)
}

/// Why a file that must be a regular file was not read.
#[derive(Debug)]
pub enum Unreadable {
    /// Nothing there.
    Missing,
    /// A symlink, FIFO, directory, device or socket (what it is): never
    /// followed, never read.
    NotRegular(&'static str),
    /// Bigger than the cap: not read.
    TooLarge {
        /// Its size (at least), in bytes.
        size: u64,
        /// The cap, in bytes.
        cap: u64,
    },
    /// Any other I/O error.
    Io(std::io::Error),
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreadable::Missing => write!(f, "it does not exist"),
            Unreadable::NotRegular(kind) => write!(f, "it is a {kind}, not a regular file"),
            Unreadable::TooLarge { size, cap } => {
                write!(f, "it is {size} bytes, over the read limit of {cap} bytes")
            }
            Unreadable::Io(e) => write!(f, "{e}"),
        }
    }
}

impl Unreadable {
    /// As an `io::Error`.
    #[must_use]
    pub fn into_io(self) -> std::io::Error {
        match self {
            Unreadable::Io(e) => e,
            Unreadable::Missing => std::io::ErrorKind::NotFound.into(),
            other => std::io::Error::other(other.to_string()),
        }
    }
}

impl From<rustix::io::Errno> for Unreadable {
    fn from(e: rustix::io::Errno) -> Self {
        use rustix::io::Errno;
        match e {
            Errno::NOENT => Unreadable::Missing,
            // O_NOFOLLOW on a symlink; O_NONBLOCK write to a FIFO no one reads.
            Errno::LOOP => Unreadable::NotRegular("symlink"),
            Errno::NXIO => Unreadable::NotRegular("FIFO"),
            Errno::ISDIR => Unreadable::NotRegular("directory"),
            e => Unreadable::Io(e.into()),
        }
    }
}

/// What a file that is not a regular file is, for messages.
fn kind_of(ft: fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_file() {
        None
    } else if ft.is_dir() {
        Some("directory")
    } else if ft.is_symlink() {
        Some("symlink")
    } else if ft.is_fifo() {
        Some("FIFO")
    } else if ft.is_socket() {
        Some("socket")
    } else {
        Some("device")
    }
}

/// Opens `path` with `flags` (plus `O_NOFOLLOW`, `O_NONBLOCK`, `O_NOCTTY`,
/// `O_CLOEXEC`) and `mode` when created, and checks with `fstat` that it is
/// a regular file: a symlink is never followed and a FIFO never blocks.
pub fn open_regular(
    path: &Path,
    flags: rustix::fs::OFlags,
    mode: u32,
) -> std::result::Result<(fs::File, fs::Metadata), Unreadable> {
    open_checked(path, flags | rustix::fs::OFlags::NOFOLLOW, mode)
}

/// `open_regular` that follows a symlink only if `flags` lacks `O_NOFOLLOW`.
fn open_checked(
    path: &Path,
    flags: rustix::fs::OFlags,
    mode: u32,
) -> std::result::Result<(fs::File, fs::Metadata), Unreadable> {
    use rustix::fs::{Mode, OFlags};
    let flags = flags | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let file = fs::File::from(rustix::fs::open(path, flags, Mode::from_raw_mode(mode))?);
    let md = file.metadata().map_err(Unreadable::Io)?;
    match kind_of(md.file_type()) {
        Some(kind) => Err(Unreadable::NotRegular(kind)),
        None => Ok((file, md)),
    }
}

/// Reads the regular file at `path` if it holds at most `cap` bytes, without
/// following a symlink, blocking on a FIFO or reading more than `cap + 1`.
pub fn read_regular(path: &Path, cap: u64) -> std::result::Result<Vec<u8>, Unreadable> {
    read_capped(path, rustix::fs::OFlags::NOFOLLOW, cap)
}

/// Reads a file the operator edits (`config.json`, access rules) if it is
/// a regular file of at most `cap` bytes: a symlink to one is followed (as
/// dotfile managers make them), a FIFO or device is refused, never waited on.
pub fn read_operator_file(path: &Path, cap: u64) -> std::result::Result<Vec<u8>, Unreadable> {
    read_capped(path, rustix::fs::OFlags::empty(), cap)
}

fn read_capped(
    path: &Path,
    flags: rustix::fs::OFlags,
    cap: u64,
) -> std::result::Result<Vec<u8>, Unreadable> {
    use std::io::Read;
    let (file, md) = open_checked(path, rustix::fs::OFlags::RDONLY | flags, 0)?;
    if md.len() > cap {
        return Err(Unreadable::TooLarge {
            size: md.len(),
            cap,
        });
    }
    let mut buf = Vec::with_capacity(usize::try_from(md.len()).unwrap_or(0));
    file.take(cap.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(Unreadable::Io)?;
    if buf.len() as u64 > cap {
        return Err(Unreadable::TooLarge {
            size: buf.len() as u64,
            cap,
        });
    }
    Ok(buf)
}

/// Opens one of relay's own files in the home (`what` names it: "journal",
/// "state slot", ...) with `flags`, creating it 0600 when `flags` asks,
/// and refuses (exit 77) one that is a symlink or not a regular file:
/// relay must never write through it out of the home. `Ok(None)` when it does not exist (and was not to be created);
/// the file comes with its metadata (the one `fstat`).
pub fn open_own(
    path: &Path,
    flags: rustix::fs::OFlags,
    what: &str,
) -> Result<Option<(fs::File, fs::Metadata)>> {
    let (file, md) = match open_regular(path, flags, FILE_MODE) {
        Ok(found) => found,
        Err(Unreadable::Missing) => return Ok(None),
        Err(Unreadable::NotRegular(kind)) => return Err(refuse_own(path, what, kind)),
        Err(e) => return Err(Error::io("cannot open", path, e.into_io())),
    };
    // Created under a umask that left it other than 0600 (or chmod-ed).
    if md.mode() & 0o7777 != FILE_MODE {
        rustix::fs::fchmod(&file, rustix::fs::Mode::from_raw_mode(FILE_MODE))
            .map_err(|e| Error::io("cannot set the mode of", path, e.into()))?;
    }
    Ok(Some((file, md)))
}

/// `open_own` creating the file (0600) if it is missing.
pub fn create_own(
    path: &Path,
    flags: rustix::fs::OFlags,
    what: &str,
) -> Result<(fs::File, fs::Metadata)> {
    open_own(path, flags | rustix::fs::OFlags::CREATE, what)?
        .ok_or_else(|| Error::io("cannot create", path, std::io::ErrorKind::NotFound.into()))
}

/// The refusal of an own file that is not a plain regular file.
fn refuse_own(path: &Path, what: &str, kind: &str) -> Error {
    let target = fs::read_link(path)
        .map(|t| format!(" to {}", t.display()))
        .unwrap_or_default();
    Error::Denied(format!(
        "{what} {} is a {kind}{target}, not a regular file of the relay home; refusing to use it (remove it and relay creates a fresh one, or put the real file there)",
        path.display()
    ))
}

/// Refuses (exit 77) an own file at `path` that exists and is not a
/// regular file (for files another library opens, like SQLite's).
pub fn check_own(path: &Path, what: &str) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(md) => match kind_of(md.file_type()) {
            Some(kind) => Err(refuse_own(path, what, kind)),
            None => Ok(()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("cannot inspect", path, e)),
    }
}

/// Creates `dir` with mode 0700 if it does not exist (parents too when
/// `parents`), whatever the umask; an existing directory is left as it is.
pub fn create_dir_secure(dir: &Path, parents: bool) -> Result<()> {
    let mkdir = || DirBuilder::new().mode(DIR_MODE).create(dir);
    let made = match mkdir() {
        Err(e) if parents && e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                DirBuilder::new()
                    .recursive(true)
                    .mode(DIR_MODE)
                    .create(parent)
                    .ctx("cannot create directory", parent)?;
            }
            mkdir()
        }
        other => other,
    };
    match made {
        // A umask can only have taken bits away: put them back.
        Ok(()) => match fs::symlink_metadata(dir) {
            Ok(md) if md.is_dir() && md.mode() & 0o7777 != DIR_MODE => {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
                    .ctx("cannot set the mode of", dir)
            }
            _ => Ok(()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io("cannot create directory", dir, e)),
    }
}

/// Refuses a directory that is a symlink, not a directory, or world-writable.
pub fn check_dir(dir: &Path, what: &str) -> Result<()> {
    let md = fs::symlink_metadata(dir).ctx("cannot inspect", dir)?;
    if md.file_type().is_symlink() {
        let target = fs::read_link(dir).unwrap_or_default();
        return Err(Error::Denied(format!(
            "{what} {} is a symlink to {}; refusing to follow it (use the real path instead)",
            dir.display(),
            target.display()
        )));
    }
    if !md.is_dir() {
        return Err(Error::io(
            what,
            dir,
            std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    if md.mode() & 0o002 != 0 {
        return Err(Error::Denied(format!(
            "{what} {} is world-writable (mode {:o}); fix it with: chmod o-w {}",
            dir.display(),
            md.mode() & 0o7777,
            dir.display()
        )));
    }
    Ok(())
}

/// Writes `bytes` to a new file at `path` (exclusive create, mode 0600),
/// optionally fsyncing it before closing.
pub fn write_new_file(path: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
        .ctx("cannot create", path)?;
    let res = f
        .write_all(bytes)
        .and_then(|()| if sync { f.sync_all() } else { Ok(()) });
    if let Err(e) = res {
        drop(f);
        let _ = fs::remove_file(path);
        return Err(Error::io("cannot write", path, e));
    }
    Ok(())
}

/// Flushes every dirty file of the filesystem holding `dir` in one call
/// (`syncfs`): the group commit behind batch sends.
pub fn sync_filesystem(dir: &Path) -> Result<()> {
    let f = fs::File::open(dir).ctx("cannot open", dir)?;
    rustix::fs::syncfs(&f).map_err(|e| Error::io("cannot sync the filesystem of", dir, e.into()))
}

/// fsyncs a directory so renames into or out of it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .ctx("cannot sync directory", dir)
}
