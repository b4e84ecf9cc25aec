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
mod state;
mod views;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::StatusCode;
use tokio::net::TcpStream;

use crate::context::Ctx;
use crate::error::{Error, Result};
use state::App;

/// The deadline for a whole request head (and for an idle keep-alive
/// connection's next one).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (and read buffer) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Connections at most, whatever the open-file limit allows.
const MAX_CONNECTIONS: usize = 1024;
/// Open files kept for the index, the journal and the mailboxes.
const RESERVED_FILES: u64 = 64;
/// Threads running index work at once (one pooled context each).
const WORKERS: usize = 8;
/// How long a graceful stop waits for open requests.
const GRACE: Duration = Duration::from_secs(5);
/// How long MCP calls whose waits a stop cancelled have to answer before
/// the MCP sessions are ended.
const MCP_ANSWER: Duration = Duration::from_millis(500);

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
    let hub = Arc::new(sse::Hub::default());
    sse::start_poller(&app, &hub)?;
    settings
        .listener
        .set_nonblocking(true)
        .map_err(|e| io_error("cannot configure the listening socket", e))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(WORKERS)
        .build()
        .map_err(|e| io_error("cannot start the server runtime", e))?;
    runtime.block_on(serve(app, hub, settings.listener))
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

async fn serve(app: Arc<App>, hub: Arc<sse::Hub>, listener: std::net::TcpListener) -> Result<()> {
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
    // `/mcp`'s server, whose idle relay_send_async inboxes are swept also
    // while no call comes (as `relay mcp`'s).
    let mcp = crate::mcp::RelayMcp::new(app.home.clone(), crate::mcp::HTTP_SENDER);
    let sweeper = mcp.spawn_idle_sweeper();
    let router = routes::router(Arc::clone(&app), Arc::clone(&hub), mcp.clone());
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
    sweeper.abort();
    eprintln!("relay: {signal}: stopping (no new connections; streams end, requests finish)");
    hub.close();
    // A `relay_send_and_wait` over `/mcp` ends now (as `relay mcp`'s do)
    // and answers; the MCP sessions' event streams end a moment later, so
    // the shutdown does not wait out the grace for them.
    mcp.stop();
    tokio::spawn(async move {
        tokio::time::sleep(MCP_ANSWER).await;
        mcp.end_sessions();
    });
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
