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

/// Paths inside a relay home.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
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
            None => match std::env::var_os("RELAY_HOME") {
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
        Ok(Home { root })
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
        self.root.join(crate::config::FILE_NAME)
    }

    /// `<home>/relay.db`.
    #[must_use]
    pub fn db_file(&self) -> PathBuf {
        self.root.join("relay.db")
    }
}

/// Creates `dir` with mode 0700 if it does not exist (parents too when
/// `parents`); an existing directory is left as it is.
pub fn create_dir_secure(dir: &Path, parents: bool) -> Result<()> {
    match DirBuilder::new()
        .recursive(parents)
        .mode(DIR_MODE)
        .create(dir)
    {
        Ok(()) => Ok(()),
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
