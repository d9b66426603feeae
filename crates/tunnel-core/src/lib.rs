//! remoteingress tunnel core: everything that touches tunnel bytes, with no knowledge of Node.
//!
//! Layers, bottom up: [`frame`] (bytes ↔ frames), [`open`] and [`proxy_protocol`] (records),
//! [`mux`] (streams over one tunnel), [`tls`] + [`auth`] (who is on the other end),
//! [`hub`] and [`edge`] (the two daemons' engines). The Node binding is another crate
//! (`crates/tunnel-node`) that uses only this public API.

pub mod auth;
pub mod config;
pub mod edge;
pub mod error;
pub mod events;
pub mod firewall;
pub mod frame;
pub mod gcm;
pub mod handshake;
pub mod hub;
pub mod mux;
pub mod open;
pub mod proxy_protocol;
pub mod quic;
pub mod record;
pub mod runtime;
pub mod supervise;
pub mod tls;
pub mod tunnel;
pub mod udp;

pub use error::{Error, Result};

pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
