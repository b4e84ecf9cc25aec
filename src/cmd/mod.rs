//! One module per subcommand; each exposes `run`-style functions taking the
//! context and its own clap `Args`.

pub mod ack;
pub mod breakers;
pub mod bridge;
pub mod config;
pub mod consume;
pub mod dlq;
pub mod doctor;
pub mod endpoints;
pub mod events;
pub mod gc;
pub mod limits;
pub mod mcp;
pub mod metrics;
pub mod peek;
pub mod recv;
pub mod request;
pub mod send;
pub mod serve;
pub mod status;
pub mod trace;
