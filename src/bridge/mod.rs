//! `relay bridge`: joins this home to others through NATS JetStream. Each
//! home keeps its own daemon-less bus; the bridge is the only part of relay
//! on a tokio runtime, started by `run` and by nothing else.
//!
//! One module per concern: `wire` (names and shapes on the wire), `auth`
//! (credentials in the NATS URL, kept apart and redacted),
//! `directory` (the endpoint bucket and the proxy mailboxes), `dead`
//! (what follows a dead letter in a proxy: notice, index row, event), `peers`
//! (which hosts are alive, by their heartbeats in the bucket), `outbox` and
//! `outbound` (durable locally first, removed after the publish ack),
//! `inbound` (the one pull consumer, through the local send pipeline),
//! `spans` (the return path to the sender's host), `link` (the link's
//! breaker, events and status), `session` (one run: connect, set up, run
//! the tasks), `shared` (what the tasks share: the settings, the session,
//! the blocking side). The bridge's own database is `store::bridge`. The
//! Maildir and index work runs on blocking threads (`shared::Local`), one
//! at a time.

pub mod auth;
pub mod dead;
pub mod directory;
pub mod inbound;
pub mod link;
pub mod outbound;
pub mod outbox;
pub mod peers;
pub mod session;
pub mod shared;
pub mod spans;
pub mod wire;

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

pub use shared::Settings;

/// Runs the bridge until SIGTERM or SIGINT, on its own runtime.
pub fn run(settings: &Settings) -> Result<()> {
    wire::validate_host(&settings.host)?;
    let local = shared::Local::open(settings.home.clone(), &settings.host)?;
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
