//! `relay bridge` (issue 15): two relay homes stand for two hosts, joined
//! through a real nats-server (`-js`, a free loopback port, a temp store
//! per test, stopped afterwards). Without nats-server the tests say so and
//! skip; under CI=1 they fail.

mod harness;

mod auth; // user and password or a token in the URL; never shown; refused credentials exit 78
mod cluster; // three nats-servers, replicas 3, one killed mid-stream
mod directory; // remote endpoints appear and disappear, marked with their host
mod faults; // partitions, restarts, kill -9, dedup-window expiry, backpressure, refusals
mod flow; // round trip, fan-out, one id and one trace, spans back on the sender's host
