//! What the bridge's tasks share: the settings, the blocking side (`Local`:
//! the context and the bridge database, one task at a time), the session
//! (the JetStream context, the stop signal, the counters) and `blocking`,
//! which runs work on the blocking side off the runtime's thread. A leaf
//! of `bridge`: every other part names it, it names none of them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::jetstream;
use tokio::sync::watch;

use crate::context::Ctx;
use crate::error::{Error, Result};

/// What `relay bridge` was asked to do.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The relay home (None: the default).
    pub home: Option<PathBuf>,
    /// NATS server URL(s), comma-separated, as shown: passwords and
    /// tokens redacted (`auth::redact`).
    pub url: String,
    /// The servers to connect to, without credentials.
    pub servers: Vec<String>,
    /// The credentials the URL carried.
    pub auth: super::auth::Auth,
    /// This host's name.
    pub host: String,
    /// Stream and bucket replicas (3 for a three-node cluster).
    pub replicas: usize,
    /// The stream's duplicate window.
    pub dedup_window: Duration,
    /// Temporary refusals of one message before it is dead-lettered.
    pub max_deliveries: u32,
    /// How often this host's directory entry is put again.
    pub heartbeat: Duration,
}

/// The blocking side: a context (rebuilt when `config.json` changes, so the
/// bridge follows the configuration) and the bridge database.
pub struct Local {
    home: Option<PathBuf>,
    ctx: Ctx,
    config_stamp: Option<SystemTime>,
    /// The bridge's own database.
    pub state: crate::store::bridge::State,
    /// This host.
    pub host: String,
}

impl Local {
    /// Opens the home (as every relay command does) and the bridge database.
    pub fn open(home: Option<PathBuf>, host: &str) -> Result<Self> {
        let ctx = Ctx::new(home.clone(), false, true)?;
        let config_stamp = stamp(&ctx);
        let state = crate::store::bridge::State::open(ctx.home.root())?;
        Ok(Local {
            home,
            ctx,
            config_stamp,
            state,
            host: host.to_string(),
        })
    }

    /// The context, re-read if `config.json` changed since (a broken file
    /// keeps the last good one, with a warning).
    pub fn ctx(&mut self) -> &mut Ctx {
        let now_stamp = stamp(&self.ctx);
        if now_stamp != self.config_stamp {
            self.config_stamp = now_stamp;
            match Ctx::new(self.home.clone(), false, true) {
                Ok(ctx) => {
                    crate::output::warn("bridge: config.json changed; reloaded");
                    self.ctx = ctx;
                }
                Err(e) => crate::output::warn(&format!(
                    "bridge: config.json changed but cannot be used ({e}); keeping the previous one"
                )),
            }
        }
        &mut self.ctx
    }

    /// Both halves at once.
    pub fn parts(&mut self) -> (&mut Ctx, &crate::store::bridge::State, &str) {
        self.ctx();
        (&mut self.ctx, &self.state, &self.host)
    }
}

fn stamp(ctx: &Ctx) -> Option<SystemTime> {
    std::fs::metadata(ctx.home.config_file())
        .and_then(|m| m.modified())
        .ok()
}

/// The blocking side shared by the tasks.
pub type Shared = Arc<Mutex<Local>>;

/// What the tasks share.
pub struct Session {
    /// The settings.
    pub settings: Settings,
    /// The JetStream context.
    pub js: jetstream::Context,
    /// The blocking side.
    pub local: Shared,
    /// Flipped to true on SIGTERM / SIGINT.
    pub stop: watch::Receiver<bool>,
    /// Whether the client is connected.
    pub connected: AtomicBool,
    /// Counters for `link.json`.
    pub forwarded: AtomicU64,
    /// Messages applied from the stream.
    pub received: AtomicU64,
    /// Copies expired in the outbox.
    pub expired: AtomicU64,
    /// Wakes the outbound publisher: a copy landed in a proxy's `new/`
    /// (filesystem notifications), or the directory made a proxy (which
    /// the notifications do not watch yet).
    pub outbox_wake: Arc<tokio::sync::Notify>,
}

impl Session {
    /// Whether a stop was asked for.
    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps `d`, or less if a stop comes first.
    pub async fn pause(&self, d: Duration) {
        let mut stop = self.stop.clone();
        tokio::select! {
            () = tokio::time::sleep(d) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}

/// Runs `f` on the blocking side, off the runtime's thread.
pub async fn blocking<T, F>(local: &Shared, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&mut Local) -> Result<T> + Send + 'static,
{
    let local = Arc::clone(local);
    tokio::task::spawn_blocking(move || {
        let mut guard = local
            .lock()
            .map_err(|_| Error::Data("bridge: a blocking task panicked".into()))?;
        f(&mut guard)
    })
    .await
    .map_err(|e| Error::Data(format!("bridge: a blocking task failed: {e}")))?
}

/// Brings the directories `w` watches to exactly `dirs` (`watched` is what
/// it watches now): unwatches the others, watches the new ones (one that
/// cannot be watched yet is left out, for the next call to try again).
/// Whether any was added: what landed in it before its watch was named by
/// no notification, so the caller looks at it once.
pub fn watch_exactly(
    w: &mut impl notify::Watcher,
    watched: &mut std::collections::BTreeSet<PathBuf>,
    dirs: std::collections::BTreeSet<PathBuf>,
) -> bool {
    for gone in watched.difference(&dirs) {
        let _ = w.unwatch(gone);
    }
    let mut now = std::collections::BTreeSet::new();
    let mut added = false;
    for d in dirs {
        if watched.contains(&d) {
            now.insert(d);
        } else if w.watch(&d, notify::RecursiveMode::NonRecursive).is_ok() {
            added = true;
            now.insert(d);
        }
    }
    *watched = now;
    added
}
