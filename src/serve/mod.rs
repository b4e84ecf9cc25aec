//! The server behind `relay serve`: axum on a current-thread tokio runtime.
//! Only `relay serve` starts it (`run`); no other command starts a runtime.
//!
//! Routes: DorkOS's core relay API under `/api/relay` (`dorkos`), relay's
//! own routes beside it (`routes`), the SSE stream (`sse`), Prometheus text
//! at `/metrics` and the panel at `/`.
//!
//! Hostile clients are held to limits: the whole request head must arrive
//! within `HEAD_TIMEOUT` (hyper's header-read deadline, which also closes
//! idle keep-alive connections), a body within 10 s and 1 MiB; connections
//! are capped by the open-file limit, at most `PER_REMOTE_CLIENT` per
//! non-loopback address, and SSE streams may take only half of them, so
//! idle subscribers never lock out API calls. A slot is freed as soon as
//! its client leaves. Unless `--allow-remote`, only requests whose `Host`
//! is a loopback name are answered (DNS rebinding); write requests must
//! come from the server's own origin (CSRF) and present the token when one
//! is set; with `--allow-remote` every request presents it.
//! SIGINT/SIGTERM stop it gracefully.

mod dorkos;
mod prometheus;
pub mod query;
mod reply;
mod routes;
mod sse;
mod views;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::http::StatusCode;
use tokio::net::TcpStream;

use crate::config::{self, Config};
use crate::context::Ctx;
use crate::error::{Error, Result};

/// The deadline for a whole request head (and for an idle keep-alive
/// connection's next one).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (and read buffer) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Connections at most, whatever the open-file limit allows.
const MAX_CONNECTIONS: usize = 1024;
/// Open files kept for the index, the journal and the mailboxes.
const RESERVED_FILES: u64 = 64;
/// Connections at most from one non-loopback address.
const PER_REMOTE_CLIENT: usize = 32;
/// Threads running index work at once (one pooled context each).
const WORKERS: usize = 8;
/// How long a graceful stop waits for open requests.
const GRACE: Duration = Duration::from_secs(5);

/// What the server needs from the command: where it listens and the token.
pub struct Settings {
    /// Bound already (the command printed its address).
    pub listener: std::net::TcpListener,
    /// `RELAY_SERVE_TOKEN`, when set: write requests must present it (and
    /// every request with `allow_remote`).
    pub token: Option<String>,
    /// `--allow-remote`: any `Host` name, the token on every request.
    pub allow_remote: bool,
}

/// Serves until SIGINT or SIGTERM, then stops gracefully.
pub fn run(ctx: &Ctx, settings: Settings) -> Result<()> {
    let max_connections = connection_limit();
    let mut app = App::new(
        ctx.home.root().to_path_buf(),
        settings.token,
        ctx.config.clone(),
        max_connections,
    );
    if let Some(a) = Arc::get_mut(&mut app) {
        a.allow_remote = settings.allow_remote;
    }
    sse::start_poller(&app)?;
    settings
        .listener
        .set_nonblocking(true)
        .map_err(|e| io_error("cannot configure the listening socket", e))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(WORKERS)
        .build()
        .map_err(|e| io_error("cannot start the server runtime", e))?;
    runtime.block_on(serve(app, settings.listener))
}

fn io_error(what: &str, source: std::io::Error) -> Error {
    Error::Io {
        what: what.into(),
        source,
    }
}

/// The open-file limit raised to its hard maximum, less what relay itself
/// needs, up to `MAX_CONNECTIONS`.
fn connection_limit() -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if let (Some(cur), hard) = (lim.current, lim.maximum) {
        let want = hard.unwrap_or(u64::MAX).min(65_536);
        if want > cur
            && setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(want),
                    maximum: hard,
                },
            )
            .is_ok()
        {
            lim.current = Some(want);
        }
    }
    let files = lim.current.unwrap_or(u64::MAX);
    let usable = usize::try_from(files.saturating_sub(RESERVED_FILES)).unwrap_or(usize::MAX);
    usable.clamp(2, MAX_CONNECTIONS)
}

/// A context for index work with the `relay.db` it saw last.
struct Db {
    ctx: Ctx,
    db_file: Option<(u64, u64)>,
}

impl Db {
    fn open(app: &App) -> Result<Self> {
        let mut ctx = Ctx::new(Some(app.home.clone()), true, false)?;
        ctx.census = Some(Arc::clone(&app.census));
        Ok(Db { ctx, db_file: None })
    }

    /// The context; its index is reopened if `relay.db` was replaced
    /// (`doctor --repair`) since it was last used.
    fn ctx(&mut self) -> &mut Ctx {
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
pub(crate) struct App {
    home: PathBuf,
    token: Option<String>,
    /// Any `Host` name; the token on every request.
    allow_remote: bool,
    clock: crate::clock::Clock,
    /// The last config that parsed: a bad edit keeps serving with it.
    config: Mutex<Config>,
    /// Contexts (each with its index open) not in use by a request.
    pool: Mutex<Vec<Db>>,
    /// The mailbox counts every context shares (`census`): a status or
    /// endpoint listing counts only the mailboxes that changed.
    census: Arc<crate::census::Census>,
    hub: Arc<sse::Hub>,
    max_connections: usize,
    max_streams: usize,
    connections: AtomicUsize,
    streams: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl App {
    /// A server for `home` with nothing open yet; streams may take at most
    /// half of `max_connections`.
    fn new(
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
            hub: Arc::new(sse::Hub::default()),
            max_connections,
            max_streams: max_connections / 2,
            connections: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
        })
    }

    /// The time now (relay's clock: `RELAY_FAKE_NOW_MS` in tests).
    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Runs `f` on a pooled context (with the current config) on a worker
    /// thread: index work never blocks the connections.
    pub(crate) async fn blocking<T, F>(self: &Arc<Self>, f: F) -> Result<T>
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
    fn admit(self: &Arc<Self>, peer: IpAddr) -> std::result::Result<Slot, String> {
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
    fn stream_slot(self: &Arc<Self>) -> Option<StreamSlot> {
        let open = self.streams.fetch_add(1, Ordering::SeqCst);
        let slot = StreamSlot(Arc::clone(self));
        (open < self.max_streams).then_some(slot)
    }
}

/// One open connection; freed when the connection ends.
struct Slot {
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
pub(crate) struct StreamSlot(Arc<App>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(app: Arc<App>, listener: std::net::TcpListener) -> Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;
    use tokio::signal::unix::{SignalKind, signal};

    let listener =
        tokio::net::TcpListener::from_std(listener).map_err(|e| io_error("cannot listen", e))?;
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| io_error("cannot handle SIGTERM", e))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| io_error("cannot handle SIGINT", e))?;
    let router = routes::router(Arc::clone(&app));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let signal = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors (or a connection reset
                        // before it was taken): let the others finish.
                        if matches!(e.raw_os_error(), Some(23 | 24)) {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        continue;
                    }
                };
                match app.admit(peer.ip()) {
                    Ok(slot) => {
                        let routes = router.clone().layer(axum::Extension(routes::Peer(peer.ip())));
                        let service = TowerToHyperService::new(routes);
                        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                        tokio::spawn(async move {
                            let _ = conn.await;
                            drop(slot);
                        });
                    }
                    Err(why) => {
                        tokio::spawn(refuse(stream, why));
                    }
                }
            }
        }
    };
    drop(listener);
    eprintln!("relay: {signal}: stopping (no new connections; streams end, requests finish)");
    app.hub.close();
    if tokio::time::timeout(GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!(
            "relay: {} connection(s) still open after {}s; closing them",
            app.connections.load(Ordering::SeqCst),
            GRACE.as_secs()
        );
    }
    Ok(())
}

/// Answers a connection over the limits with a 503 without reading its
/// request, then closes it.
async fn refuse(stream: TcpStream, why: String) {
    let status = StatusCode::SERVICE_UNAVAILABLE;
    let body = error_body(status, &why);
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nRetry-After: 1\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default(),
        body.len()
    );
    let bytes = [head.into_bytes(), body.into_bytes()].concat();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut sent = 0;
        while sent < bytes.len() {
            if stream.writable().await.is_err() {
                return;
            }
            match stream.try_write(&bytes[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
        // Read what the client sent (closing with unread data would reset
        // the connection and could lose the answer) until it hangs up.
        let mut sink = [0u8; 4096];
        loop {
            if stream.readable().await.is_err() {
                return;
            }
            match stream.try_read(&mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    })
    .await;
}

/// `{"error": message, "code": ...}` for a refusal written by hand.
fn error_body(status: StatusCode, message: &str) -> String {
    let code = match status {
        StatusCode::SERVICE_UNAVAILABLE => "UNAVAILABLE",
        _ => "ERROR",
    };
    reply::error_body(message, Some(code))
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
