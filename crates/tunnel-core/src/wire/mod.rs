//! Bytes ↔ values: everything that parses or writes tunnel and PROXY bytes. Every decoder here
//! takes untrusted input, checks bounds before it reads, and returns an error instead of
//! panicking.

pub mod control;
pub mod frame;
pub mod open;
pub mod proxy_protocol;
