//! The tunnel's pipes: TLS 1.3 over TCP ([`tls`], carrying the [`crate::mux`]) and QUIC
//! ([`quic`]), and [`tunnel::Tunnel`], which the engines use without caring which it is.

pub mod dial;
pub mod quic;
pub mod tls;
pub mod tunnel;
