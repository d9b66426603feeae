//! remoteingress tunnel core: everything that touches tunnel bytes, with no knowledge of Node.
//!
//! Folders by layer, bottom up:
//! - [`wire`]: bytes ↔ values — the frame codec, the stream/flow OPEN record, PROXY headers.
//!   Nothing above this layer parses raw bytes.
//! - [`auth`]: who is on the other end — the HMAC proof over nonce and channel binding, the
//!   CHALLENGE/AUTH exchange, the per-source failure limiter.
//! - [`transport`]: the tunnel's pipes — TLS 1.3 (rustls) and QUIC (quinn), and [`transport::tunnel::Tunnel`]
//!   over both.
//! - [`mux`]: many streams over one TLS connection — stream tasks, flow control, output
//!   batching, the mux loop.
//! - [`engine`]: the two daemons' engines ([`engine::hub`], [`engine::edge`]), UDP flows and
//!   the edge firewall.
//!
//! Crate-wide plumbing sits at the top: [`config`], [`error`], [`events`], [`runtime`],
//! [`supervise`]. The Node binding is a separate crate (`crates/tunnel-node`).

pub mod auth;
pub mod config;
pub mod engine;
pub mod error;
pub mod events;
pub mod mux;
pub mod runtime;
pub mod supervise;
pub mod transport;
pub mod wire;

pub use error::{Error, Result};

pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
