//! `relay bridge`: settles the settings (flags, then `RELAY_NATS_URL`,
//! then config.json's `bridge` section) and runs `crate::bridge`.

use std::time::Duration;

use crate::bridge::{self, Settings};
use crate::cli::BridgeArgs;
use crate::context::Ctx;
use crate::error::{Error, Result};

/// Default NATS URL.
const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// Runs `relay bridge` until SIGTERM or SIGINT.
pub fn run(ctx: &Ctx, args: &BridgeArgs) -> Result<()> {
    let cfg = &ctx.config.bridge;
    let url = args
        .nats
        .clone()
        .or_else(|| cfg.url.clone())
        .unwrap_or_else(|| DEFAULT_URL.to_string());
    let Some(host) = args.host.clone().or_else(|| cfg.host.clone()) else {
        return Err(Error::Usage(
            "relay bridge needs this host's name: pass --host NAME (or set bridge.host in config.json)".into(),
        ));
    };
    bridge::wire::validate_host(&host)?;
    let servers = bridge::auth::parse(&url)?;
    let replicas = args.replicas.or(cfg.replicas).unwrap_or(1);
    if !(1..=5).contains(&replicas) {
        return Err(Error::Usage(format!(
            "invalid --replicas {replicas}: use 1 to 5 (3 on a three-node cluster)"
        )));
    }
    bridge::run(&Settings {
        home: Some(ctx.home.root().to_path_buf()),
        url: servers.shown,
        servers: servers.addrs,
        auth: servers.auth,
        host,
        replicas,
        dedup_window: Duration::from_millis(cfg.dedup_window_ms),
        max_deliveries: cfg.max_deliveries,
        heartbeat: Duration::from_millis(cfg.heartbeat_ms),
    })
}
