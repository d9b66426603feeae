//! Typed errors. Each variant maps to a stable `code` string that crosses into JavaScript as
//! `TunnelError.code`, so callers can tell "closed by us", "closed by the peer" and "timed out"
//! apart without parsing messages.

use std::io;

/// Every failure the core reports. The message always names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("authentication failed: {0}")]
    AuthFailed(String),
    #[error("the peer's certificate does not match the pinned fingerprint (pinned {pinned}, got {actual})")]
    FingerprintMismatch { pinned: String, actual: String },
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("peer closed the tunnel: {0}")]
    PeerClosed(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("peer is going away: {0}")]
    GoAway(String),
    #[error("closed locally: {0}")]
    LocalClosed(String),
    #[error("rate limited: {0}")]
    RateLimited(String),
    #[error("wrong state: {0}")]
    State(String),
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
}

impl Error {
    /// The stable code that JavaScript sees.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidConfig(_) => "ERR_INVALID_CONFIG",
            Error::Bind { .. } => "ERR_BIND",
            Error::Tls(_) => "ERR_TLS",
            Error::Connect { .. } => "ERR_CONNECT",
            Error::AuthFailed(_) => "ERR_AUTH_FAILED",
            Error::FingerprintMismatch { .. } => "ERR_FINGERPRINT_MISMATCH",
            Error::Protocol(_) => "ERR_PROTOCOL",
            Error::PeerClosed(_) => "ERR_PEER_CLOSED",
            Error::Timeout(_) => "ERR_TIMEOUT",
            Error::GoAway(_) => "ERR_GOAWAY",
            Error::LocalClosed(_) => "ERR_LOCAL_CLOSED",
            Error::RateLimited(_) => "ERR_RATE_LIMITED",
            Error::State(_) => "ERR_STATE",
            Error::Io(_) => "ERR_IO",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
