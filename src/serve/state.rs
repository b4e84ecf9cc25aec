//! What every connection and request of `relay serve` shares: the `App`
//! (home, token, config, pooled index contexts, the census, connection and
//! stream slots) and the pooled `Db` contexts. A leaf of `serve`: the
//! routes, the stream and the server loop all name it, and it names none
//! of them (see tests/layout.rs).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::config::{self, Config};
use crate::context::Ctx;
use crate::error::{Error, Result};

/// Connections at most from one non-loopback address.
const PER_REMOTE_CLIENT: usize = 32;

/// A context for index work with the `relay.db` it saw last.
pub(super) struct Db {
    ctx: Ctx,
    db_file: Option<(u64, u64)>,
}

impl Db {
    pub(super) fn open(app: &App) -> Result<Self> {
        let mut ctx = Ctx::new(Some(app.home.clone()), true, false)?;
        ctx.census = Some(Arc::clone(&app.census));
        Ok(Db { ctx, db_file: None })
    }

    /// The context; its index is reopened if `relay.db` was replaced
    /// (`doctor --repair`) since it was last used.
    pub(super) fn ctx(&mut self) -> &mut Ctx {
        use std::os::unix::fs::MetadataExt;
        let now = std::fs::metadata(self.ctx.home.db_file())
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if now != self.db_file {
            self.ctx.close_store();
            self.db_file = now;
        }
        &mut self.ctx
    }
}

/// What every connection and request shares.
pub(super) struct App {
    pub(super) home: PathBuf,
    pub(super) token: Option<String>,
    /// Any `Host` name; the token on every request.
    pub(super) allow_remote: bool,
    pub(super) clock: crate::clock::Clock,
    /// The last config that parsed: a bad edit keeps serving with it.
    pub(super) config: Mutex<Config>,
    /// Contexts (each with its index open) not in use by a request.
    pub(super) pool: Mutex<Vec<Db>>,
    /// The mailbox counts every context shares (`census`): a status or
    /// endpoint listing counts only the mailboxes that changed.
    pub(super) census: Arc<crate::census::Census>,
    pub(super) max_connections: usize,
    pub(super) max_streams: usize,
    pub(super) connections: AtomicUsize,
    pub(super) streams: AtomicUsize,
    pub(super) per_client: Mutex<HashMap<IpAddr, usize>>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl App {
    /// A server for `home` with nothing open yet; streams may take at most
    /// half of `max_connections`.
    pub(super) fn new(
        home: PathBuf,
        token: Option<String>,
        config: Config,
        max_connections: usize,
    ) -> Arc<Self> {
        Arc::new(App {
            home,
            token,
            allow_remote: false,
            clock: crate::clock::Clock::from_env(),
            config: Mutex::new(config),
            pool: Mutex::new(Vec::new()),
            census: Arc::new(crate::census::Census::new()),
            max_connections,
            max_streams: max_connections / 2,
            connections: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
        })
    }

    /// The time now (relay's clock: `RELAY_FAKE_NOW_MS` in tests).
    pub(super) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Runs `f` on a pooled context (with the current config) on a worker
    /// thread: index work never blocks the connections.
    pub(super) async fn blocking<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Ctx) -> Result<T> + Send + 'static,
    {
        let app = Arc::clone(self);
        tokio::task::spawn_blocking(move || app.with_ctx(f))
            .await
            .map_err(|e| Error::Store(format!("a request's worker stopped: {e}")))?
    }

    fn with_ctx<T>(&self, f: impl FnOnce(&mut Ctx) -> Result<T>) -> Result<T> {
        let pooled = lock(&self.pool).pop();
        let mut db = match pooled {
            Some(db) => db,
            None => Db::open(self)?,
        };
        let ctx = db.ctx();
        ctx.config = self.current_config(ctx);
        if !ctx.has_store() {
            // Opened without waiting for another process's write (its
            // journal catch-up is left to the lock's holder or the next
            // writer), so no route waits merely to open the index; one
            // that fails to open is opened again, and its failure told,
            // by the route's own `ctx.store()`.
            let _ = ctx.store_without_waiting();
        }
        let result = f(ctx);
        if matches!(result, Err(Error::Store(_) | Error::Io { .. })) {
            // Start afresh next time: the index may have been replaced.
            db.ctx.close_store();
        }
        lock(&self.pool).push(db);
        result
    }

    /// The config as it is now, or the last one that parsed.
    fn current_config(&self, ctx: &Ctx) -> Config {
        let mut last = lock(&self.config);
        if let Ok(c) = config::load(&ctx.home.config_file()) {
            *last = c;
        }
        last.clone()
    }

    /// A connection slot for `peer`, or why there is none.
    pub(super) fn admit(self: &Arc<Self>, peer: IpAddr) -> std::result::Result<Slot, String> {
        let open = self.connections.fetch_add(1, Ordering::SeqCst);
        let mut slot = Slot {
            app: Arc::clone(self),
            remote: None,
        };
        if open >= self.max_connections {
            return Err(format!(
                "too many connections ({} open, the most this server takes); retry shortly",
                self.max_connections
            ));
        }
        if !peer.is_loopback() {
            let mut per = lock(&self.per_client);
            let n = per.entry(peer).or_insert(0);
            if *n >= PER_REMOTE_CLIENT {
                return Err(format!(
                    "too many connections from {peer} ({PER_REMOTE_CLIENT} at most); retry shortly"
                ));
            }
            *n += 1;
            slot.remote = Some(peer);
        }
        Ok(slot)
    }

    /// A slot for one more SSE stream, unless streams have half the
    /// connections already.
    pub(super) fn stream_slot(self: &Arc<Self>) -> Option<StreamSlot> {
        let open = self.streams.fetch_add(1, Ordering::SeqCst);
        let slot = StreamSlot(Arc::clone(self));
        (open < self.max_streams).then_some(slot)
    }
}

/// One open connection; freed when the connection ends.
pub(super) struct Slot {
    app: Arc<App>,
    remote: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.app.connections.fetch_sub(1, Ordering::SeqCst);
        if let Some(ip) = self.remote {
            let mut per = lock(&self.app.per_client);
            if let Some(n) = per.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per.remove(&ip);
                }
            }
        }
    }
}

/// One open SSE stream; freed when its response body is dropped (the
/// client left, or the server stops).
pub(super) struct StreamSlot(Arc<App>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(max_connections: usize) -> Arc<App> {
        App::new(
            PathBuf::from("/nonexistent"),
            None,
            Config::default(),
            max_connections,
        )
    }

    #[test]
    fn slots_are_capped_in_total_and_per_remote_address_and_freed_on_drop() {
        let app = app(PER_REMOTE_CLIENT + 4);
        let remote: IpAddr = [192, 0, 2, 7].into();
        let local: IpAddr = [127, 0, 0, 1].into();
        let mut held: Vec<Slot> = (0..PER_REMOTE_CLIENT)
            .map(|_| app.admit(remote).expect("under the per-address cap"))
            .collect();
        let refused = app.admit(remote).err().unwrap_or_default();
        assert!(refused.contains("192.0.2.7"), "{refused}");
        // Loopback clients are not capped per address, only in total.
        held.extend((0..4).map(|_| app.admit(local).expect("under the total cap")));
        assert!(app.admit(local).is_err(), "past the total cap");
        assert_eq!(
            app.connections.load(Ordering::SeqCst),
            PER_REMOTE_CLIENT + 4
        );
        held.clear();
        assert_eq!(app.connections.load(Ordering::SeqCst), 0);
        assert!(lock(&app.per_client).is_empty(), "per-address counts freed");
        assert!(app.admit(remote).is_ok());
    }

    #[test]
    fn streams_take_at_most_half() {
        let app = app(8);
        let held: Vec<StreamSlot> = (0..4)
            .map(|_| app.stream_slot().expect("under half"))
            .collect();
        assert!(app.stream_slot().is_none());
        drop(held);
        assert_eq!(app.streams.load(Ordering::SeqCst), 0);
        assert!(app.stream_slot().is_some());
    }
}
