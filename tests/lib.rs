//! The integration suite: every test drives the real `relay` binary against a
//! private temp `RELAY_HOME` (see `harness`), and checks exit codes and disk.

mod harness;

mod ack; // ack and nack: removal from cur/, dead letters with reason sidecars
mod backpressure; // mailbox depth: warning, refusal, priority lanes, recv order, fan-out refusals
mod batch; // send --batch: order, fan-out, group commit on two threads, per-line errors, limits
mod breakers; // circuit breakers: trips, open refusals, half-open probes, leases, reset/open
mod bridge; // relay bridge over a real nats-server: directory, flow, partitions (issue 15)
mod cli; // usage errors (64), help and version, the clean-environment fallbacks
mod concurrency; // racing receivers: every message claimed exactly once
mod config; // config.json: invalid files exit 78 naming file and key; unknown keys warn
mod config_cmd; // `relay config` show/get/set/validate/path; every invalid knob exits 78
mod crash; // kill -9 harness: acknowledged sends survive exactly once, nothing partial, doctor consistent
mod disabled; // every reliability feature off: relay behaves as the core
mod dorkos_http; // relay serve as a DorkOS peer: every core route's contract, SSE, security, relay's routes
mod dorkos_index; // issue 13: DorkOS's index kept in step, DorkOS-parity validation, doctor on a DorkOS home
mod endpoints; // endpoints add/list/remove and their JSON
mod faults; // issue 11: one module per fault class (disk, foreign, own files, locks, leases, clock, scale, maintenance, serve)
mod foreign; // files other programs leave: DorkOS envelopes, stray and malformed files
mod fuzz; // proptest: envelope parser, subject validator, config parser never panic
mod generated;
mod home; // home safety: symlinks and world-writable dirs refused (77), 0700/0600 modes
mod hostile;
mod journal; // sends bypass the index: journal ingestion, idempotent replays, the state slots
mod layout; // the module graph of src/ has no import circle
mod observability; // traces, metrics, dead letters, events, gc, access rules, failure notices, idempotency, budgets
mod races; // 8 racing senders: bucket, mailbox capacity and half-open probes stay exact
mod ratelimit; // per-sender token buckets: soft/hard hits, refill, burst, overrides, reset
mod readme; // README.md's sh blocks run as written, each in a fresh home (conventions at its top)
mod recv; // claim order, --count, --wait, empty (66) and unknown (69) endpoints
mod scripting; // issue 16: JSON usage errors, batch lines, refusal hints, human times, durations, typos, missing homes, --format, --retry
mod send; // delivery, fan-out, dead letters, payload sources, size cap, options
mod status; // status, breakers and limits: JSON shapes and their events
mod subjects; // every subject rejection exits 65, names the value, writes nothing // man/ and completions/ match the CLI (RELAY_BLESS=1 regenerates)
mod surfaces; // recv --follow/--exec consumers, relay serve routes, SSE, token, the panel in headless chromium // table of hostile inputs across subcommands: exit code, message, nothing written or lost
