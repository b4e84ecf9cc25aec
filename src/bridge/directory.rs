//! The directory: which endpoints live on which host. Each bridge puts its
//! host's endpoints under its key of the `relay-directory` bucket and
//! watches the other keys. A remote endpoint is a proxy mailbox here (an
//! ordinary mailbox, so sends, fan-out, backpressure, TTL and breakers
//! apply to it unchanged), listed in `<home>/bridge/remotes.json` with its
//! host; the outbound publisher forwards what lands in it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::home::Home;
use crate::maildir::{self, Mailbox, SUBDIRS};
use crate::vocab::Code;

/// Remote endpoints: endpoint -> host.
pub type Remotes = BTreeMap<String, String>;

/// The value of a host's key in the bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The host.
    pub host: String,
    /// Its endpoints, sorted.
    pub endpoints: Vec<String>,
    /// How often it puts this entry again (ms); absent from bridges
    /// before heartbeats (`peers::UNSTATED_EVERY_MS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_ms: Option<u64>,
}

/// `<home>/bridge/remotes.json`.
#[must_use]
pub fn remotes_file(home: &Home) -> PathBuf {
    crate::store::bridge::dir(home.root()).join("remotes.json")
}

/// The remote endpoints this home knows (none without a bridge).
#[must_use]
pub fn remotes(home: &Home) -> Remotes {
    std::fs::read(remotes_file(home))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The host of `endpoint` if it is remote.
#[must_use]
pub fn host_of(home: &Home, endpoint: &str) -> Option<String> {
    remotes(home).remove(endpoint)
}

fn save(home: &Home, remotes: &Remotes) -> Result<()> {
    let path = remotes_file(home);
    crate::home::create_dir_secure(&crate::store::bridge::dir(home.root()), false)?;
    let bytes = serde_json::to_vec_pretty(remotes)
        .map_err(|e| Error::Data(format!("cannot encode the remote endpoints: {e}")))?;
    let tmp = path.with_extension(format!("json.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    crate::home::write_new_file(&tmp, &bytes, true)?;
    std::fs::rename(&tmp, &path).ctx("cannot replace", &path)
}

/// This host's own endpoints: every endpoint that is not a proxy.
pub fn local_endpoints(home: &Home) -> Result<Vec<String>> {
    let remotes = remotes(home);
    Ok(maildir::list_endpoints(home)?
        .into_iter()
        .filter(|e| !remotes.contains_key(e))
        .collect())
}

/// What one sync changed.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Proxies made.
    pub added: Vec<String>,
    /// Proxies removed.
    pub removed: Vec<String>,
    /// Remote endpoints not proxied because a local endpoint has the name.
    pub shadowed: Vec<String>,
    /// Copies that were still queued in the removed proxies, now dead
    /// letters (`no_match`) owed their notices and index rows
    /// (`dead::dead_lettered`).
    pub dead: Vec<super::dead::Letter>,
}

/// Makes `host`'s proxies here exactly `endpoints` (none: the host is gone).
/// A name that is a local endpoint stays local. Messages still queued in a
/// removed proxy are dead-lettered there (`no_match`, listed in
/// `Changes::dead`), and the directory stops being an endpoint.
pub fn sync_host(home: &Home, host: &str, endpoints: &[String], now: u64) -> Result<Changes> {
    sync_host_as(home, host, endpoints, false, now)
}

/// `sync_host`, saying why proxies go: `silent`, the host missed its
/// heartbeats (`peers`); otherwise it removed them itself.
pub fn sync_host_as(
    home: &Home,
    host: &str,
    endpoints: &[String],
    silent: bool,
    now: u64,
) -> Result<Changes> {
    let mut remotes = remotes(home);
    let want: BTreeSet<&String> = endpoints.iter().collect();
    let mut changes = Changes::default();
    for ep in &want {
        if crate::subject::validate_subject(ep, "endpoint").is_err() {
            continue;
        }
        match remotes.get(*ep) {
            Some(h) if h == host => continue,
            // Another host has it too: the first one seen keeps it.
            Some(_) => continue,
            None => {}
        }
        let mb = Mailbox::at(home, ep);
        if mb.is_endpoint() {
            changes.shadowed.push((*ep).clone());
            continue;
        }
        mb.create(&SUBDIRS)?;
        remotes.insert((*ep).clone(), host.to_string());
        changes.added.push((*ep).clone());
    }
    let gone: Vec<String> = remotes
        .iter()
        .filter(|(ep, h)| *h == host && !want.contains(ep))
        .map(|(ep, _)| ep.clone())
        .collect();
    // Listed first, so a proxy is never taken for a local endpoint.
    if !changes.added.is_empty() {
        save(home, &remotes)?;
    }
    for ep in gone {
        let reason = if silent {
            format!(
                "host '{host}' is gone (its bridge missed {} heartbeats) with endpoint '{ep}'",
                super::peers::MISSED
            )
        } else {
            format!("endpoint '{ep}' was removed on host '{host}'")
        };
        changes.dead.extend(retire(home, &ep, &reason, now)?);
        remotes.remove(&ep);
        changes.removed.push(ep);
    }
    if !changes.removed.is_empty() {
        save(home, &remotes)?;
    }
    Ok(changes)
}

/// Turns proxy `ep` into a dead-letter-only directory: what is queued in
/// `new/` or `cur/` is dead-lettered (`no_match`), then `new/`, `cur/` and
/// `tmp/` go, so it is no endpoint any more. The copies dead-lettered
/// (those that are envelopes: a file that is none has no sender to tell).
fn retire(home: &Home, ep: &str, reason: &str, now: u64) -> Result<Vec<super::dead::Letter>> {
    let mb = Mailbox::at(home, ep);
    if !mb.is_endpoint() {
        return Ok(Vec::new());
    }
    let _lock = mb.lock()?;
    for id in mb.list("new")? {
        let name = format!("{id}.json");
        // Claimed first, as the bridge's publisher claims, so they all go
        // through `cur/` below.
        let _ = std::fs::rename(mb.sub("new").join(&name), mb.sub("cur").join(&name));
    }
    let mut dead = Vec::new();
    for id in mb.list("cur")? {
        let env = mb.read_envelope("cur", &id);
        let value = env
            .as_ref()
            .and_then(|e| serde_json::to_value(e).ok())
            .unwrap_or(serde_json::Value::Null);
        if mb.fail(&id, value, reason, Code::NoMatch, now)?
            && let Some(envelope) = env
        {
            dead.push(super::dead::Letter {
                endpoint: ep.to_string(),
                envelope,
                reason: reason.to_string(),
            });
        }
    }
    let has_failed = mb.count("failed")? > 0;
    for sub in ["new", "cur", "tmp"] {
        let dir = mb.sub(sub);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("cannot remove", &dir, e)),
        }
    }
    if !has_failed {
        let _ = std::fs::remove_dir_all(mb.dir());
    }
    crate::home::sync_dir(&home.mailboxes())?;
    Ok(dead)
}

/// Parses a bucket value, `None` if it is not one of ours.
#[must_use]
pub fn parse_entry(bytes: &[u8]) -> Option<Entry> {
    serde_json::from_slice(bytes).ok()
}

/// Puts this host's endpoints under its key whenever they change (looked
/// at every `DIRECTORY_POLL`), and again every heartbeat
/// (`bridge.heartbeatMs`), so the other hosts know this one is alive and a
/// bucket lost with its server is filled again. The endpoints are listed
/// off the blocking side's lock, so a long apply does not hold the
/// heartbeat up.
pub async fn publish_loop(
    session: std::sync::Arc<super::shared::Session>,
    kv: async_nats::jetstream::kv::Store,
) -> Result<()> {
    use std::time::{Duration, Instant};
    let host = session.settings.host.clone();
    let every = session.settings.heartbeat;
    let home = super::shared::blocking(&session.local, |l| Ok(l.ctx().home.clone())).await?;
    let mut last: Option<Vec<String>> = None;
    let mut beat: Option<Instant> = None;
    while !session.stopping() {
        let h = home.clone();
        let mine = tokio::task::spawn_blocking(move || local_endpoints(&h))
            .await
            .map_err(|e| Error::Data(format!("bridge: a blocking task failed: {e}")))??;
        let due = last.as_ref() != Some(&mine) || beat.is_none_or(|t| t.elapsed() >= every);
        if due {
            let entry = Entry {
                host: host.clone(),
                endpoints: mine.clone(),
                heartbeat_ms: Some(u64::try_from(every.as_millis()).unwrap_or(u64::MAX)),
            };
            let bytes = serde_json::to_vec(&entry)
                .map_err(|e| Error::Data(format!("cannot encode the directory entry: {e}")))?;
            match kv.put(&host, bytes.into()).await {
                Ok(_) => {
                    last = Some(mine);
                    beat = Some(Instant::now());
                }
                Err(e) => crate::output::warn(&format!(
                    "bridge: cannot publish this host's endpoints ({e}); trying again"
                )),
            }
        }
        let next_beat = beat.map_or(Duration::ZERO, |t| every.saturating_sub(t.elapsed()));
        session
            .pause(next_beat.clamp(Duration::from_millis(10), DIRECTORY_POLL))
            .await;
    }
    Ok(())
}

/// How often the local endpoints are looked at.
pub const DIRECTORY_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Server time of a bucket entry, in ms since the epoch.
fn created_ms(entry: &async_nats::jetstream::kv::Entry) -> u64 {
    u64::try_from(entry.created.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// Watches every key and keeps the other hosts' proxies in step: their
/// endpoints while they beat, none once they are gone (`peers`).
pub async fn watch_loop(
    session: std::sync::Arc<super::shared::Session>,
    kv: async_nats::jetstream::kv::Store,
) -> Result<()> {
    use async_nats::jetstream::kv::Operation;
    use futures_util::StreamExt;
    let me = session.settings.host.clone();
    let mut peers = super::peers::Peers::default();
    while !session.stopping() {
        // From the first revision: the bucket keeps one value per key, so
        // this is every host's current entry, then every change.
        let mut watch = match kv.watch_all_from_revision(1).await {
            Ok(w) => w,
            Err(e) => {
                crate::output::warn(&format!(
                    "bridge: cannot watch the directory ({e}); trying again"
                ));
                session.pause(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut stop = session.stop.clone();
        loop {
            let next = tokio::select! {
                n = watch.next() => n,
                _ = stop.wait_for(|s| *s) => return Ok(()),
            };
            let entry = match next {
                Some(Ok(e)) => e,
                Some(Err(e)) => {
                    crate::output::warn(&format!("bridge: directory watch: {e}"));
                    break;
                }
                None => break,
            };
            let at = created_ms(&entry);
            peers.tick(at);
            if entry.key != me && super::wire::validate_host(&entry.key).is_ok() {
                match entry.operation {
                    Operation::Put => {
                        if let Some(e) = parse_entry(&entry.value) {
                            let every = e.heartbeat_ms.unwrap_or(super::peers::UNSTATED_EVERY_MS);
                            peers.put(&entry.key, entry.revision, at, every, e.endpoints);
                        }
                    }
                    Operation::Delete | Operation::Purge => {
                        peers.remove(&entry.key, entry.revision, at);
                    }
                }
            }
            // Judged once the watch has caught up with the bucket, so a
            // host long dead gets no proxies on the way.
            if entry.delta > 0 {
                continue;
            }
            for due in peers.due() {
                if let Err(e) = apply(&session, &due).await {
                    crate::output::warn(&format!("bridge: directory: {e}"));
                    peers.failed(&due.host);
                }
            }
        }
        session.pause(std::time::Duration::from_millis(500)).await;
    }
    Ok(())
}

/// Makes one host's proxies what `due` says, and says what changed.
async fn apply(session: &super::shared::Session, due: &super::peers::Due) -> Result<()> {
    let d = due.clone();
    let c = super::shared::blocking(&session.local, move |l| {
        let now = l.ctx().clock.now_ms();
        let c = sync_host_as(&l.ctx().home, &d.host, &d.endpoints, d.silent, now)?;
        super::dead::dead_lettered(l.ctx(), &c.dead, Code::NoMatch, now)?;
        Ok(c)
    })
    .await?;
    let host = &due.host;
    if !c.added.is_empty() {
        // The publisher watches a proxy's `new/` only from its next look:
        // it looks now, so a send into a proxy made while it idles is not
        // left waiting.
        session.outbox_wake.notify_one();
        crate::output::notice(&format!("bridge: host '{host}' has {}", c.added.join(", ")));
    }
    if !c.removed.is_empty() {
        if due.silent {
            crate::output::notice(&format!(
                "bridge: host '{host}' is gone (no heartbeat for {} of its heartbeats); its endpoints {} are no longer listed",
                super::peers::MISSED,
                c.removed.join(", ")
            ));
        } else {
            crate::output::notice(&format!(
                "bridge: host '{host}' no longer has {}",
                c.removed.join(", ")
            ));
        }
    }
    for ep in c.shadowed {
        crate::output::warn(&format!(
            "bridge: host '{host}' has an endpoint '{ep}' too; sends here stay local"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home() -> (tempfile::TempDir, Home) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let home = Home::resolve(Some(dir.path().join("home"))).unwrap_or_else(|e| panic!("{e}"));
        home.ensure().unwrap_or_else(|e| panic!("{e}"));
        (dir, home)
    }

    #[test]
    fn proxies_follow_the_remote_list_and_local_names_win() {
        let (_d, home) = home();
        Mailbox::at(&home, "mine")
            .create(&SUBDIRS)
            .unwrap_or_else(|e| panic!("{e}"));
        let eps = vec!["agent.b".to_string(), "mine".to_string()];
        let c = sync_host(&home, "hostb", &eps, 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.added, vec!["agent.b".to_string()]);
        assert_eq!(c.shadowed, vec!["mine".to_string()]);
        assert_eq!(host_of(&home, "agent.b").as_deref(), Some("hostb"));
        assert_eq!(local_endpoints(&home).unwrap_or_default(), vec!["mine"]);
        let c = sync_host(&home, "hostb", &[], 2).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.removed, vec!["agent.b".to_string()]);
        assert!(!Mailbox::at(&home, "agent.b").is_endpoint());
        assert!(remotes(&home).is_empty());
    }
}
