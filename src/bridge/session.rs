//! One run of the bridge: connect (checking the server's version), make
//! sure the stream, the bucket and this host's consumer exist, then run the
//! directory, outbound, inbound and span tasks until a signal stops them.
//! A lost connection is the client's to win back; the tasks give their
//! work back and try again, and the outbox holds what is sent meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use tokio::sync::watch;

use super::auth::Auth;
use super::shared::{Session, Settings, Shared, blocking};
use super::{link, wire};
use crate::error::{Error, Result};
use crate::output;
use crate::vocab::EventKind;

/// Oldest server whose JetStream API the bridge's requests fit.
pub const MIN_SERVER: (u64, u64) = (2, 9);

/// Parses "2.9.10" into (2, 9).
#[must_use]
pub fn server_version(v: &str) -> Option<(u64, u64)> {
    let mut it = v.trim_start_matches('v').split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// How long a stop waits for a task still waiting on the server, and for
/// the client to flush what it buffered.
const STOP_GRACE: Duration = Duration::from_millis(500);

/// Connects (retrying until the server answers), then runs every task
/// until a signal.
pub async fn serve(settings: Settings, local: Shared) -> Result<()> {
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop_tx.send(true);
    });
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let host = settings.host.clone();
    let url = settings.url.clone();
    output::notice(&format!(
        "bridge for host '{host}' connecting to {url} (stop with SIGTERM or Ctrl-C)"
    ));
    let client = loop {
        let tx = events_tx.clone();
        let opts = async_nats::ConnectOptions::new()
            .name(format!("relay-bridge-{host}"))
            .connection_timeout(Duration::from_secs(2))
            .max_reconnects(None)
            .reconnect_delay_callback(|n| Duration::from_millis((100 * n as u64).min(2000)))
            .event_callback(move |ev| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(ev);
                }
            });
        let opts = match &settings.auth {
            Auth::None => opts,
            Auth::User { user, password } => opts.user_and_password(user.clone(), password.clone()),
            Auth::Token(t) => opts.token(t.clone()),
        };
        let servers: Vec<&str> = settings.servers.iter().map(String::as_str).collect();
        match opts.connect(servers.as_slice()).await {
            Ok(c) => break c,
            Err(e) => {
                if *stop.borrow() {
                    return Ok(());
                }
                // Trying again would not change the answer: said once, as
                // a configuration problem (exit 78).
                if let Some(e) = refused(&e, &url, &settings.auth) {
                    return Err(e);
                }
                output::warn(&format!(
                    "bridge: cannot reach NATS at {url} ({e}); trying again"
                ));
                let mut s = stop.clone();
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = s.wait_for(|s| *s) => return Ok(()),
                }
            }
        }
    };
    let version = client.server_info().version;
    check_version(&version, &url)?;
    let js = jetstream::new(client.clone());
    let session = Arc::new(Session {
        settings,
        js,
        local,
        stop,
        connected: AtomicBool::new(true),
        forwarded: AtomicU64::new(0),
        received: AtomicU64::new(0),
        expired: AtomicU64::new(0),
        outbox_wake: Arc::new(tokio::sync::Notify::new()),
    });
    let (stream, kv) = loop {
        match setup(&session).await {
            Ok(v) => break v,
            Err(e) => {
                if session.stopping() {
                    return Ok(());
                }
                output::warn(&format!("bridge: JetStream not ready ({e}); trying again"));
                session.pause(Duration::from_secs(1)).await;
            }
        }
    };
    let recovered = blocking(&session.local, |l| {
        let now = l.ctx().clock.now_ms();
        l.state
            .prune(now.saturating_sub(crate::store::bridge::APPLIED_KEEP_MS))?;
        super::outbox::recover(l.ctx())
    })
    .await?;
    let queued = blocking(&session.local, |l| super::outbox::queued(l.ctx())).await?;
    {
        let detail = serde_json::json!({
            "url": session.settings.url,
            "serverVersion": version,
            "queued": queued,
            "recovered": recovered,
        });
        let h = host.clone();
        blocking(&session.local, move |l| {
            let now = l.ctx().clock.now_ms();
            link::event(l.ctx(), &h, EventKind::BridgeConnected, detail, now)
        })
        .await?;
    }
    output::notice(&format!(
        "bridge for host '{host}' connected to NATS {version} at {url}; {queued} queued"
    ));

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(super::directory::publish_loop(
        Arc::clone(&session),
        kv.clone(),
    ));
    tasks.spawn(super::directory::watch_loop(Arc::clone(&session), kv));
    tasks.spawn(super::outbound::run_loop(Arc::clone(&session)));
    tasks.spawn(super::inbound::run_loop(Arc::clone(&session), stream));
    tasks.spawn(super::spans::report_loop(Arc::clone(&session)));
    tasks.spawn(status_loop(Arc::clone(&session), version.clone()));

    // Connection events: the reconnection handshake.
    let mut down_since: Option<(u64, u64)> = None;
    let mut refused_since_down = false;
    let mut stop = session.stop.clone();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            Some(res) = tasks.join_next() => {
                match res {
                    Ok(Err(e)) => {
                        session_down(&session).await;
                        return Err(e);
                    }
                    Ok(Ok(())) => {}
                    Err(e) => return Err(Error::Data(format!("bridge: a task failed: {e}"))),
                }
            }
            Some(ev) = events.recv() => {
                on_event(&session, &host, ev, &mut down_since, &mut refused_since_down).await;
            }
        }
    }
    // Every task looks at the stop between two pieces of work; one still
    // waiting on the server after `STOP_GRACE` (a request to a server that
    // is gone waits for its timeout) is let go. That is safe as a kill -9
    // is: whatever it owes is durable or done again on the next start.
    let grace = tokio::time::sleep(STOP_GRACE);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            res = tasks.join_next() => match res {
                None => break,
                Some(Ok(Err(e))) => output::warn(&format!("bridge: {e}")),
                Some(_) => {}
            },
            () = &mut grace => {
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            }
        }
    }
    session_down(&session).await;
    let _ = tokio::time::timeout(STOP_GRACE, client.drain()).await;
    output::notice(&format!("bridge for host '{host}' stopped"));
    Ok(())
}

async fn session_down(session: &Arc<Session>) {
    let h = session.settings.host.clone();
    let _ = blocking(&session.local, move |l| {
        let now = l.ctx().clock.now_ms();
        link::clear(&l.ctx().home);
        link::event(
            l.ctx(),
            &h,
            EventKind::BridgeStopped,
            serde_json::json!({}),
            now,
        )
    })
    .await;
}

/// The error for a connect the server refused for its credentials (none,
/// or wrong ones), naming the server (`url`, redacted) and what was given
/// (never the secret); `None` for any other failure (tried again).
fn refused(e: &async_nats::ConnectError, url: &str, auth: &Auth) -> Option<Error> {
    use async_nats::ConnectErrorKind;
    matches!(
        e.kind(),
        ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication
    )
    .then(|| {
        Error::Config(format!(
            "the NATS server at {url} refused the bridge: authentication failed ({}); put the right ones in the URL: nats://USER:PASSWORD@HOST:PORT or nats://TOKEN@HOST:PORT (--nats, RELAY_NATS_URL or bridge.url)",
            auth.describe()
        ))
    })
}

/// Refuses a server older than 2.9 (its JetStream API lacks what the
/// bridge relies on), naming the version and the fix.
fn check_version(version: &str, url: &str) -> Result<()> {
    match server_version(version) {
        Some(v) if v >= MIN_SERVER => Ok(()),
        _ => Err(Error::Config(format!(
            "the NATS server at {url} is version '{version}'; relay bridge needs 2.9 or newer with JetStream (nats-server -js)"
        ))),
    }
}

/// The stream, the directory bucket and this host's consumer, made if missing.
async fn setup(
    s: &Session,
) -> std::result::Result<(consumer::PullConsumer, kv::Store), async_nats::Error> {
    let st =
        s.js.get_or_create_stream(stream::Config {
            name: wire::STREAM.to_string(),
            subjects: vec![wire::STREAM_SUBJECTS.to_string()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: s.settings.replicas,
            duplicate_window: s.settings.dedup_window,
            ..Default::default()
        })
        .await?;
    // The bucket's stream is made here, as the client would make it:
    // `create_key_value` first reads the account info, whose 2.9 shape the
    // client cannot parse (it lacks the reserved_* fields).
    let kv = match s.js.get_key_value(wire::BUCKET).await {
        Ok(kv) => kv,
        Err(_) => {
            s.js.get_or_create_stream(stream::Config {
                name: format!("KV_{}", wire::BUCKET),
                subjects: vec![format!("$KV.{}.>", wire::BUCKET)],
                max_messages_per_subject: 1,
                storage: stream::StorageType::File,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                num_replicas: s.settings.replicas,
                ..Default::default()
            })
            .await?;
            s.js.get_key_value(wire::BUCKET).await?
        }
    };
    let host = &s.settings.host;
    let consumer = st
        .get_or_create_consumer(
            &wire::durable(host),
            consumer::pull::Config {
                durable_name: Some(wire::durable(host)),
                filter_subject: wire::filter_subject(host),
                ack_policy: consumer::AckPolicy::Explicit,
                // A bridge killed mid-batch holds its messages this long.
                ack_wait: Duration::from_secs(10),
                // Unlimited: relay dead-letters past its own maximum, with a
                // notice, instead of the server dropping it silently.
                max_deliver: -1,
                max_ack_pending: 4096,
                num_replicas: s.settings.replicas,
                ..Default::default()
            },
        )
        .await?;
    Ok((consumer, kv))
}

async fn on_event(
    session: &Arc<Session>,
    host: &str,
    ev: async_nats::Event,
    down_since: &mut Option<(u64, u64)>,
    refused_since_down: &mut bool,
) {
    match ev {
        async_nats::Event::Disconnected => {
            session.connected.store(false, Ordering::SeqCst);
            let h = host.to_string();
            let expired = session.expired.load(Ordering::SeqCst);
            let at = blocking(&session.local, move |l| {
                let now = l.ctx().clock.now_ms();
                link::event(
                    l.ctx(),
                    &h,
                    EventKind::BridgeDisconnected,
                    serde_json::json!({}),
                    now,
                )?;
                Ok(now)
            })
            .await
            .unwrap_or(0);
            output::warn("bridge: lost the connection to NATS; sends are queued locally");
            *down_since = Some((at, expired));
        }
        async_nats::Event::Connected => {
            session.connected.store(true, Ordering::SeqCst);
            *refused_since_down = false;
            let Some((since, expired_before)) = down_since.take() else {
                return;
            };
            let h = host.to_string();
            let expired = session
                .expired
                .load(Ordering::SeqCst)
                .saturating_sub(expired_before);
            let res = blocking(&session.local, move |l| {
                let now = l.ctx().clock.now_ms();
                link::back(l.ctx(), &h, now)?;
                let queued = super::outbox::queued(l.ctx())?;
                let peers: serde_json::Map<String, serde_json::Value> = l
                    .state
                    .peers()?
                    .into_iter()
                    .map(|(h, id, _)| (h, serde_json::Value::String(id)))
                    .collect();
                let detail = serde_json::json!({
                    "queued": queued,
                    "expiredDuringOutage": expired,
                    "outageMs": now.saturating_sub(since),
                    "lastReceived": peers,
                });
                link::event(l.ctx(), &h, EventKind::BridgeReconnected, detail, now)?;
                Ok(queued)
            })
            .await;
            match res {
                Ok(q) => {
                    output::notice(&format!("bridge: reconnected to NATS; {q} queued to drain"))
                }
                Err(e) => output::warn(&format!("bridge: {e}")),
            }
        }
        // Reconnecting, the server refuses the credentials (changed on
        // it meanwhile): said once per outage; the client keeps trying.
        async_nats::Event::ClientError(async_nats::ClientError::Other(e))
            if !*refused_since_down
                && e == async_nats::ConnectErrorKind::AuthorizationViolation.to_string() =>
        {
            *refused_since_down = true;
            output::warn(&format!(
                "bridge: the NATS server at {} refuses the bridge's credentials on reconnect: authentication failed ({}); still trying",
                session.settings.url,
                session.settings.auth.describe()
            ));
        }
        async_nats::Event::ServerError(e) => {
            output::warn(&format!("bridge: NATS server error: {e}"));
        }
        _ => {}
    }
}

/// Keeps `link.json` current (every second).
async fn status_loop(session: Arc<Session>, version: String) -> Result<()> {
    let mut reconnect_base = None;
    let since = crate::clock::Clock::from_env().now_ms();
    while !session.stopping() {
        let s = Arc::clone(&session);
        let v = version.clone();
        let connected = s.connected.load(Ordering::SeqCst);
        let counters = (
            s.forwarded.load(Ordering::SeqCst),
            s.received.load(Ordering::SeqCst),
            s.expired.load(Ordering::SeqCst),
        );
        let _ = reconnect_base.get_or_insert(0u64);
        let res = blocking(&session.local, move |l| {
            let queued = super::outbox::queued(l.ctx())?;
            let last_received = l
                .state
                .peers()?
                .into_iter()
                .map(|(h, id, _)| (h, id))
                .collect();
            let status = link::Status {
                host: l.host.clone(),
                url: s.settings.url.clone(),
                pid: std::process::id(),
                connected,
                server_version: Some(v),
                since,
                reconnects: 0,
                queued,
                expired: counters.2,
                forwarded: counters.0,
                received: counters.1,
                last_received,
            };
            link::write(&l.ctx().home, &status)
        })
        .await;
        if let Err(e) = res {
            output::warn(&format!("bridge: {e}"));
        }
        session.pause(Duration::from_secs(1)).await;
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
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

    #[test]
    fn servers_older_than_2_9_are_refused_naming_the_version() {
        assert!(super::check_version("2.9.10", "u").is_ok());
        assert!(super::check_version("2.10.3", "u").is_ok());
        let e = super::check_version("2.8.4", "nats://x:4222")
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|m| m.contains("'2.8.4'") && m.contains("nats://x:4222")),
            "{e:?}"
        );
        assert!(super::check_version("", "u").is_err());
    }
}
