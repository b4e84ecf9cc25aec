//! `relay bridge`: joins this home to others through NATS JetStream. Each
//! home keeps its own daemon-less bus; the bridge is the only part of relay
//! on a tokio runtime, started by `run` and by nothing else.
//!
//! One module per concern: `wire` (names and shapes on the wire),
//! `directory` (the endpoint bucket and the proxy mailboxes), `outbox` and
//! `outbound` (durable locally first, removed after the publish ack),
//! `inbound` (the one pull consumer, through the local send pipeline),
//! `spans` (the return path to the sender's host), `link` (the link's
//! breaker, events and status), `state` (the bridge's own database). The
//! Maildir and index work runs on blocking threads (`Local`), one at a time.

pub mod directory;
pub mod inbound;
pub mod link;
pub mod outbound;
pub mod outbox;
pub mod session;
pub mod spans;
pub mod wire;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::jetstream;
use tokio::sync::watch;

use crate::context::Ctx;
use crate::error::{Error, Result};

/// Oldest server whose JetStream API the bridge's requests fit.
pub const MIN_SERVER: (u64, u64) = (2, 9);

/// What `relay bridge` was asked to do.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The relay home (None: the default).
    pub home: Option<PathBuf>,
    /// NATS server URL(s), comma-separated.
    pub url: String,
    /// This host's name.
    pub host: String,
    /// Stream and bucket replicas (3 for a three-node cluster).
    pub replicas: usize,
    /// The stream's duplicate window.
    pub dedup_window: Duration,
    /// Temporary refusals of one message before it is dead-lettered.
    pub max_deliveries: u32,
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

/// Parses "2.9.10" into (2, 9).
#[must_use]
pub fn server_version(v: &str) -> Option<(u64, u64)> {
    let mut it = v.trim_start_matches('v').split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// Runs the bridge until SIGTERM or SIGINT, on its own runtime.
pub fn run(settings: &Settings) -> Result<()> {
    wire::validate_host(&settings.host)?;
    let local = Local::open(settings.home.clone(), &settings.host)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io {
            what: "cannot start the bridge's runtime".into(),
            source: e,
        })?;
    rt.block_on(session::serve(
        settings.clone(),
        Arc::new(Mutex::new(local)),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_versions_parse() {
        assert_eq!(super::server_version("2.9.10"), Some((2, 9)));
        assert_eq!(super::server_version("v2.10.0-beta"), Some((2, 10)));
        assert_eq!(super::server_version("x"), None);
        assert!(super::server_version("2.8.4") < Some(super::MIN_SERVER));
    }
}
