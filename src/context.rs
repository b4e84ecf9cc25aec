//! What every command starts from: the resolved home, the config read for
//! this invocation, the clock, and the index (opened only when needed).

use std::path::{Path, PathBuf};

use crate::clock::Clock;
use crate::config::{self, Config};
use crate::error::{Error, Result};
use crate::home::Home;
use crate::output;
use crate::store::batchlog;
use crate::store::index::Store;

/// What a command needs of the home.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HomeUse {
    /// Created if missing (commands that write: send, endpoints add, ...).
    Create,
    /// Must exist: a read-only look at a missing home is an error (69) and
    /// creates nothing.
    Existing,
    /// Used if it exists, never created (`config` without `set`: the
    /// defaults apply).
    Optional,
}

/// The message for a home that does not exist yet.
#[must_use]
pub fn no_home(root: &std::path::Path) -> String {
    format!(
        "no relay home at {} yet; start one with: relay endpoints add NAME (or point --home / RELAY_HOME at an existing home)",
        root.display()
    )
}

/// Per-invocation context shared by all subcommands.
pub struct Ctx {
    /// The relay home.
    pub home: Home,
    /// Config as read from `config.json` at start.
    pub config: Config,
    /// Source of `now`.
    pub clock: Clock,
    /// Whether `--json` output was asked for.
    pub json: bool,
    store: Option<Store>,
    /// This command may record claims and acks through the journal
    /// instead of the index (`consumer`): set by the one-shot `recv` and
    /// `ack`, not by long-running consumers, which keep the index open.
    pub fast_consumer: bool,
    /// Mailbox counts kept between calls (`relay serve`'s contexts share
    /// one); `None`: every listing counts afresh.
    pub census: Option<std::sync::Arc<crate::census::Census>>,
}

impl Ctx {
    /// Resolves and prepares the home and reads the config (unless
    /// `load_config` is false: defaults then); config warnings (unknown
    /// keys) are printed to stderr.
    pub fn new(home: Option<PathBuf>, json: bool, load_config: bool) -> Result<Self> {
        Self::with(home, json, load_config, HomeUse::Create)
    }

    /// `new`, with `use_` saying what to do about a home that does not
    /// exist yet.
    pub fn with(
        home: Option<PathBuf>,
        json: bool,
        load_config: bool,
        use_: HomeUse,
    ) -> Result<Self> {
        let mut home = Home::resolve(home)?;
        let missing = std::fs::symlink_metadata(home.root())
            .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
        match (use_, missing) {
            (HomeUse::Existing, true) => return Err(Error::NoHome(no_home(home.root()))),
            (HomeUse::Optional, true) => {}
            _ => home.ensure()?,
        }
        let config = if load_config {
            config::load(&home.config_file())?
        } else {
            Config::default()
        };
        home.set_payload_cap(config.max_payload_bytes);
        crate::lockwait::configure(config.lock_timeout_ms)?;
        for w in &config.warnings {
            output::warn(w);
        }
        Ok(Ctx {
            home,
            config,
            clock: Clock::from_env(),
            json,
            store: None,
            fast_consumer: false,
            census: None,
        })
    }

    /// Whether the index is open (a consumer that has opened it records
    /// through it; see `consumer`).
    #[must_use]
    pub fn has_store(&self) -> bool {
        self.store.is_some()
    }

    /// Whether a consumer may leave the index closed (see
    /// `consumer`'s module doc).
    /// Never while this process has it open: its reads there do not see what
    /// it journaled (a long-running consumer's sweeps would miss leases).
    #[must_use]
    pub fn may_skip_index(&self) -> bool {
        let root = self.home.root();
        self.fast_consumer
            && !self.has_store()
            && index_looks_sound(&self.home.db_file())
            && !crate::store::log::pending(root)
    }

    /// Closes the index if it is open; the next `store` opens it again.
    pub fn close_store(&mut self) {
        self.store = None;
    }

    /// The index, opened (and migrated) on first use; opening it also
    /// settles the batch logs that are due (`batchlog::settle`).
    pub fn store(&mut self) -> Result<&mut Store> {
        self.store_opened(true)
    }

    /// `store`, but if the index is not open yet it is opened without
    /// waiting for another process's write (`Store::open_without_waiting`):
    /// for a server's read routes, which must not wait on writers.
    pub fn store_without_waiting(&mut self) -> Result<&mut Store> {
        self.store_opened(false)
    }

    fn store_opened(&mut self, wait: bool) -> Result<&mut Store> {
        let store = match self.store.take() {
            Some(s) => s,
            None => {
                let path = self.home.db_file();
                let mut store = if wait {
                    Store::open(&path)?
                } else {
                    Store::open_without_waiting(&path)?
                };
                // A log that cannot be settled is kept (and tried again by
                // the next command): no reason to refuse this one. (Only
                // a log left by a crash is due: settling it may wait.)
                match batchlog::settle(&self.home, &mut store, self.clock.now_ms(), false) {
                    Ok(_) => {}
                    // Another relay is still replaying: its mailboxes are
                    // not to be read before it is done.
                    Err(e @ crate::error::Error::Locked(_)) => return Err(e),
                    Err(e) => {
                        output::warn(&format!("cannot settle the batch logs: {e}; they are kept"));
                    }
                }
                store
            }
        };
        Ok(self.store.insert(store))
    }
}

/// Whether `relay.db` is absent (a fresh home: the next reader creates it)
/// or a regular file with SQLite's header whose size is a whole number of
/// its pages. Anything else is left to the slow path, which opens it and
/// reports what is wrong (and points at `doctor --repair`).
fn index_looks_sound(path: &Path) -> bool {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return e.kind() == std::io::ErrorKind::NotFound,
    };
    let Ok(md) = file.metadata() else {
        return false;
    };
    let mut header = [0u8; 100];
    if !md.is_file() || file.take(100).read_exact(&mut header).is_err() {
        return false;
    }
    let page = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65_536,
        n => u64::from(n),
    };
    header.starts_with(b"SQLite format 3\0")
        && page >= 512
        && md.len() >= page
        && md.len().is_multiple_of(page)
}
