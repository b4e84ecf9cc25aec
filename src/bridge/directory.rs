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
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Proxies made.
    pub added: Vec<String>,
    /// Proxies removed.
    pub removed: Vec<String>,
    /// Remote endpoints not proxied because a local endpoint has the name.
    pub shadowed: Vec<String>,
}

/// Makes `host`'s proxies here exactly `endpoints` (none: the host is gone).
/// A name that is a local endpoint stays local. Messages still queued in a
/// removed proxy are dead-lettered there (`no_match`), and the directory
/// stops being an endpoint.
pub fn sync_host(home: &Home, host: &str, endpoints: &[String], now: u64) -> Result<Changes> {
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
        retire(home, &ep, host, now)?;
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
/// `tmp/` go, so it is no endpoint any more.
fn retire(home: &Home, ep: &str, host: &str, now: u64) -> Result<()> {
    let mb = Mailbox::at(home, ep);
    if !mb.is_endpoint() {
        return Ok(());
    }
    let _lock = mb.lock()?;
    let reason = format!("endpoint '{ep}' was removed on host '{host}'");
    for id in mb.list("new")? {
        let name = format!("{id}.json");
        if std::fs::rename(mb.sub("new").join(&name), mb.sub("cur").join(&name)).is_ok() {
            mb.fail(&id, serde_json::Value::Null, &reason, Code::NoMatch, now)?;
        }
    }
    for id in mb.list("cur")? {
        mb.fail(&id, serde_json::Value::Null, &reason, Code::NoMatch, now)?;
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
    crate::home::sync_dir(&home.mailboxes())
}

/// Parses a bucket value, `None` if it is not one of ours.
#[must_use]
pub fn parse_entry(bytes: &[u8]) -> Option<Entry> {
    serde_json::from_slice(bytes).ok()
}

/// Puts this host's endpoints under its key whenever they change (looked
/// at every `DIRECTORY_POLL`), and again now and then so a bucket lost
/// with its server is filled again.
pub async fn publish_loop(
    session: std::sync::Arc<super::shared::Session>,
    kv: async_nats::jetstream::kv::Store,
) -> Result<()> {
    const REFRESH: u32 = 30;
    let host = session.settings.host.clone();
    let mut last: Option<Vec<String>> = None;
    let mut rounds = 0u32;
    while !session.stopping() {
        let mine =
            super::shared::blocking(&session.local, |l| local_endpoints(&l.ctx().home)).await?;
        rounds += 1;
        if last.as_ref() != Some(&mine) || rounds >= REFRESH {
            let entry = Entry {
                host: host.clone(),
                endpoints: mine.clone(),
            };
            let bytes = serde_json::to_vec(&entry)
                .map_err(|e| Error::Data(format!("cannot encode the directory entry: {e}")))?;
            match kv.put(&host, bytes.into()).await {
                Ok(_) => {
                    last = Some(mine);
                    rounds = 0;
                }
                Err(e) => crate::output::warn(&format!(
                    "bridge: cannot publish this host's endpoints ({e}); trying again"
                )),
            }
        }
        session.pause(DIRECTORY_POLL).await;
    }
    Ok(())
}

/// How often the local endpoints are looked at.
pub const DIRECTORY_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Watches the other hosts' keys and keeps their proxies in step.
pub async fn watch_loop(
    session: std::sync::Arc<super::shared::Session>,
    kv: async_nats::jetstream::kv::Store,
) -> Result<()> {
    use async_nats::jetstream::kv::Operation;
    use futures_util::StreamExt;
    let me = session.settings.host.clone();
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
            if entry.key == me || super::wire::validate_host(&entry.key).is_err() {
                continue;
            }
            let host = entry.key.clone();
            let endpoints = match entry.operation {
                Operation::Put => match parse_entry(&entry.value) {
                    Some(e) => e.endpoints,
                    None => continue,
                },
                Operation::Delete | Operation::Purge => Vec::new(),
            };
            let h = host.clone();
            let res = super::shared::blocking(&session.local, move |l| {
                let now = l.ctx().clock.now_ms();
                sync_host(&l.ctx().home, &h, &endpoints, now)
            })
            .await;
            match res {
                Ok(c) => {
                    if !c.added.is_empty() {
                        // The publisher watches a proxy's `new/` only from
                        // its next look: it looks now, so a send into a
                        // proxy made while it idles is not left waiting.
                        session.outbox_wake.notify_one();
                        eprintln!("relay: bridge: host '{host}' has {}", c.added.join(", "));
                    }
                    if !c.removed.is_empty() {
                        eprintln!(
                            "relay: bridge: host '{host}' no longer has {}",
                            c.removed.join(", ")
                        );
                    }
                    for ep in c.shadowed {
                        crate::output::warn(&format!(
                            "bridge: host '{host}' has an endpoint '{ep}' too; sends here stay local"
                        ));
                    }
                }
                Err(e) => crate::output::warn(&format!("bridge: directory: {e}")),
            }
        }
        session.pause(std::time::Duration::from_millis(500)).await;
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
