//! `relay serve`: DorkOS's relay HTTP API (read and write) plus relay's
//! routes for the reliability layer, an SSE stream, Prometheus metrics, and
//! the live panel (one embedded page). Loopback only unless asked, and then
//! only with a token. The server itself is `crate::serve`.

use std::net::TcpListener;

use crate::cli::ServeArgs;
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::serve::{self, Settings};

/// Runs `relay serve` until SIGINT or SIGTERM.
pub fn run(ctx: &Ctx, args: &ServeArgs) -> Result<()> {
    let token = crate::envvars::SERVE_TOKEN.get().filter(|t| !t.is_empty());
    if !args.listen.ip().is_loopback() && !args.allow_remote {
        return Err(Error::Usage(format!(
            "refusing to listen on {} (not loopback) without --allow-remote",
            args.listen
        )));
    }
    if args.allow_remote && token.is_none() {
        return Err(Error::Usage(format!(
            "--allow-remote (listening on {}, any Host name) needs RELAY_SERVE_TOKEN set: every request must present it",
            args.listen
        )));
    }
    let listener = TcpListener::bind(args.listen).map_err(|e| Error::Io {
        what: format!("cannot listen on {}", args.listen),
        source: e,
    })?;
    let addr = listener.local_addr().map_err(|e| Error::Io {
        what: "cannot read the listening address".into(),
        source: e,
    })?;
    // The URL on stdout (scripts read it), the rest for people on stderr.
    crate::output::line(&format!("http://{addr}/"))?;
    eprintln!(
        "relay: serving {} on http://{addr}/ (panel at /, API under /api/relay/, Prometheus at /metrics){}",
        ctx.home.root().display(),
        match (args.allow_remote, token.is_some()) {
            (true, _) => "; any Host, token required on every request",
            (false, true) => "; loopback Host names only, token required for writes",
            (false, false) => "; loopback Host names only",
        }
    );
    serve::run(
        ctx,
        Settings {
            listener,
            token,
            allow_remote: args.allow_remote,
        },
    )
}
