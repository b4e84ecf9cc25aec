//! `relay request`: send a message and wait for its reply (see `request`).
//! SIGINT/SIGTERM end the wait (the reply endpoint is removed, exit 130);
//! a second signal ends relay at once.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::cli::RequestArgs;
use crate::cmd::{recv, send};
use crate::context::Ctx;
use crate::error::{Error, Result, code};
use crate::output;
use crate::request::{self, Cancel, Request};

/// Runs `relay request`: prints the reply as `recv` prints a message (the
/// payload, or with `--json` the envelope).
pub fn run(ctx: &mut Ctx, args: &RequestArgs) -> Result<()> {
    let (payload, warning) = send::payload_from(
        args.payload.as_deref(),
        args.file.as_deref(),
        send::PayloadMode::from_flags(args.text, args.json_payload),
        ctx.config.max_payload_bytes,
    )?;
    if let Some(w) = &warning {
        output::warn(w);
    }
    let cancel = Cancel::new();
    on_signals(&cancel)?;
    let mut req = Request::new(&args.subject, payload, &args.from, args.timeout);
    req.ttl = args.ttl;
    req.trace_id.clone_from(&args.trace_id);
    req.priority = args.priority;
    req.retry = args.retry;
    req.retry_max_wait = args.retry_max_wait;
    let exchange = request::request(ctx, req, &cancel)?;
    for w in &exchange.warnings {
        output::warn(w);
    }
    let reply = exchange.into_reply()?;
    recv::print(ctx.json, &reply)
}

/// The first SIGINT/SIGTERM cancels the wait; a second ends relay at once
/// (130).
fn on_signals(cancel: &Cancel) -> Result<()> {
    let io = |e: std::io::Error| Error::Io {
        what: "cannot install signal handlers".into(),
        source: e,
    };
    let (mut read, write) = UnixStream::pair().map_err(io)?;
    let seen = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(
            sig,
            i32::from(code::INTERRUPTED),
            Arc::clone(&seen),
        )
        .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&seen)))
        .and_then(|_| signal_hook::low_level::pipe::register(sig, write.try_clone()?))
        .map_err(io)?;
    }
    let cancel = cancel.clone();
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        if read.read(&mut byte).is_ok() {
            cancel.cancel();
        }
    });
    Ok(())
}
