//! One module per subcommand; each exposes `run`-style functions taking the
//! context and its own clap `Args`.

pub mod ack;
pub mod breakers;
pub mod config;
pub mod endpoints;
pub mod limits;
pub mod recv;
pub mod send;
pub mod status;
