//! Which remote hosts are alive, judged from the directory bucket alone.
//!
//! Every bridge puts its entry again every heartbeat (`bridge.heartbeatMs`,
//! written into the entry), so a host whose bridge died stops refreshing
//! its key. The watch sees every put with the server's time of it, this
//! host's own heartbeats included: the newest put seen is the bucket's
//! "now". A host whose last put is more than `MISSED` of its own
//! heartbeats older than that is gone: its proxies here go (its endpoints
//! leave `relay endpoints`) until it puts again. Only the server's clock is
//! read, so the hosts' clocks may disagree; and a host cut off from NATS
//! sees no puts, its own included, so it judges nobody while cut off.
//! Nothing here does I/O: the watch feeds it, `directory` applies what it
//! owes.

use std::collections::BTreeMap;

/// Heartbeats a host may miss before it is gone.
pub const MISSED: u64 = 3;

/// The heartbeat assumed for an entry that does not say (bridges before
/// heartbeats refreshed their entry every 15 s).
pub const UNSTATED_EVERY_MS: u64 = 15_000;

/// One remote host as the bucket showed it.
#[derive(Debug, Clone)]
struct Peer {
    /// Revision of its latest entry (a watch begun again replays it).
    revision: u64,
    /// Server time of that entry (ms).
    at: u64,
    /// Its heartbeat (ms).
    every: u64,
    /// Its endpoints (none once its key is deleted).
    endpoints: Vec<String>,
    /// What was last made of it here (None: nothing yet, or to try again).
    applied: Option<Vec<String>>,
}

/// A sync owed: make `host`'s proxies here exactly `endpoints`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The host.
    pub host: String,
    /// Its endpoints as they should be here (none: gone or removed).
    pub endpoints: Vec<String>,
    /// Whether it is gone for its silence (not removed by itself).
    pub silent: bool,
}

/// The hosts seen in the bucket and the bucket's time.
#[derive(Debug, Default)]
pub struct Peers {
    now: u64,
    hosts: BTreeMap<String, Peer>,
}

impl Peers {
    /// Any put or delete seen, this host's own included, at server time
    /// `at` (ms): the bucket's time moves on.
    pub fn tick(&mut self, at: u64) {
        self.now = self.now.max(at);
    }

    /// `host` put its entry: revision `revision` at server time `at`, with
    /// its heartbeat and endpoints. A revision seen already changes nothing.
    pub fn put(&mut self, host: &str, revision: u64, at: u64, every: u64, endpoints: Vec<String>) {
        let every = every.max(1);
        match self.hosts.get_mut(host) {
            Some(p) if p.revision >= revision => {}
            Some(p) => {
                p.revision = revision;
                p.at = at;
                p.every = every;
                p.endpoints = endpoints;
            }
            None => {
                self.hosts.insert(
                    host.to_string(),
                    Peer {
                        revision,
                        at,
                        every,
                        endpoints,
                        applied: None,
                    },
                );
            }
        }
    }

    /// `host`'s key was deleted or purged at `revision`: it has nothing.
    pub fn remove(&mut self, host: &str, revision: u64, at: u64) {
        self.put(host, revision, at, UNSTATED_EVERY_MS, Vec::new());
    }

    /// Whether `host` put its entry within `MISSED` of its heartbeats of
    /// the bucket's time.
    #[must_use]
    pub fn alive(&self, host: &str) -> bool {
        self.hosts
            .get(host)
            .is_some_and(|p| Self::beats(self.now, p))
    }

    fn beats(now: u64, p: &Peer) -> bool {
        now.saturating_sub(p.at) <= p.every.saturating_mul(MISSED)
    }

    /// The syncs owed: every host whose endpoints here should differ from
    /// what was last made of them. Each is taken as done; `failed` asks
    /// for it again.
    pub fn due(&mut self) -> Vec<Due> {
        let now = self.now;
        let mut out = Vec::new();
        for (host, p) in &mut self.hosts {
            let alive = Self::beats(now, p);
            let want = if alive {
                p.endpoints.clone()
            } else {
                Vec::new()
            };
            if p.applied.as_ref() != Some(&want) {
                out.push(Due {
                    host: host.clone(),
                    silent: !alive && !p.endpoints.is_empty(),
                    endpoints: want.clone(),
                });
                p.applied = Some(want);
            }
        }
        out
    }

    /// A sync of `host` failed: it is owed again.
    pub fn failed(&mut self, host: &str) {
        if let Some(p) = self.hosts.get_mut(host) {
            p.applied = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn a_host_is_gone_after_missing_three_of_its_heartbeats_and_back_when_it_beats() {
        let mut p = Peers::default();
        p.tick(1_000);
        p.put("hostb", 1, 1_000, 500, eps(&["agent.b"]));
        assert_eq!(
            p.due(),
            vec![Due {
                host: "hostb".into(),
                endpoints: eps(&["agent.b"]),
                silent: false
            }]
        );
        assert!(p.due().is_empty(), "owed once");
        // Our own heartbeats move the bucket's time; 1.5 s is three of its.
        p.tick(2_500);
        assert!(p.alive("hostb"));
        assert!(p.due().is_empty());
        p.tick(2_501);
        assert!(!p.alive("hostb"));
        assert_eq!(
            p.due(),
            vec![Due {
                host: "hostb".into(),
                endpoints: Vec::new(),
                silent: true
            }]
        );
        // It beats again.
        p.tick(9_000);
        p.put("hostb", 7, 9_000, 500, eps(&["agent.b"]));
        assert!(p.alive("hostb"));
        assert_eq!(p.due()[0].endpoints, eps(&["agent.b"]));
    }

    #[test]
    fn each_host_is_judged_by_its_own_heartbeat() {
        let mut p = Peers::default();
        p.put("slow", 1, 0, 10_000, eps(&["s"]));
        p.put("fast", 2, 0, 100, eps(&["f"]));
        p.tick(5_000);
        assert!(p.alive("slow"));
        assert!(!p.alive("fast"));
        let due = p.due();
        assert_eq!(due.len(), 2);
        assert!(
            due.iter()
                .any(|d| d.host == "slow" && d.endpoints == eps(&["s"]))
        );
        assert!(due.iter().any(|d| d.host == "fast" && d.silent));
    }

    #[test]
    fn a_replayed_revision_is_no_heartbeat_and_a_failed_sync_is_owed_again() {
        let mut p = Peers::default();
        p.put("hostb", 5, 1_000, 100, eps(&["b"]));
        assert_eq!(p.due().len(), 1);
        p.tick(10_000);
        // A watch begun again replays revision 5: still silent.
        p.put("hostb", 5, 1_000, 100, eps(&["b"]));
        let due = p.due();
        assert!(due[0].silent && due[0].endpoints.is_empty());
        p.failed("hostb");
        assert_eq!(p.due().len(), 1, "tried again");
    }

    #[test]
    fn a_deleted_key_removes_its_endpoints_without_calling_it_silent() {
        let mut p = Peers::default();
        p.put("hostb", 1, 1_000, 100, eps(&["b"]));
        p.due();
        p.tick(1_050);
        p.remove("hostb", 2, 1_050);
        assert_eq!(
            p.due(),
            vec![Due {
                host: "hostb".into(),
                endpoints: Vec::new(),
                silent: false
            }]
        );
    }
}
