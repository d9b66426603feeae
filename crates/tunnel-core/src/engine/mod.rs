//! The daemons' engines: the [`hub`] (authenticates edges, pushes their configuration, forwards
//! streams and flows to targets with PROXY headers) and the [`edge`] (dials the hub, binds the
//! assigned ports, applies the [`firewall`] snapshot), and the [`udp`] flow tables both use.

pub mod edge;
pub mod firewall;
pub mod hub;
pub mod listen;
pub mod service;
pub mod stun;
pub mod udp;
pub mod udp_io;
