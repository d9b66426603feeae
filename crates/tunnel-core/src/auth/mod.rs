//! Edge authentication: HMAC-SHA256 over the hub's fresh nonce and the TLS channel binding
//! (an exporter secret unique to this TLS session), so the secret never crosses the wire, a
//! captured proof cannot be replayed on another session, and a man in the middle that
//! terminates TLS cannot relay it.

pub mod handshake;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

use crate::wire::frame::{MAC_LEN, NONCE_LEN};

/// Protocol version spoken by this build. Bumped on any incompatible wire change.
pub const PROTOCOL_VERSION: u16 = 1;
/// TLS exporter label (RFC 8446 §7.5) for the channel binding.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-remoteingress-auth-v1";
/// Domain separation for the MAC input.
const MAC_CONTEXT: &[u8] = b"remoteingress-auth-v1\0";

/// `HMAC(secret, context || version || nonce || binding || edge_id)`.
pub fn proof(
    secret: &[u8],
    version: u16,
    nonce: &[u8; NONCE_LEN],
    binding: &[u8; 32],
    edge_id: &str,
) -> [u8; MAC_LEN] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut mac = ring::hmac::Context::with_key(&key);
    mac.update(MAC_CONTEXT);
    mac.update(&version.to_be_bytes());
    mac.update(nonce);
    mac.update(binding);
    mac.update(edge_id.as_bytes());
    let mut out = [0u8; MAC_LEN];
    // HMAC-SHA256 tags are 32 bytes, which is what MAC_LEN is.
    out.copy_from_slice(mac.sign().as_ref());
    out
}

/// Constant-time comparison of two proofs.
pub fn proofs_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Per-source-address limiter for failed authentication attempts: a token bucket per address.
/// A source that spent its budget is refused before TLS, so guessing secrets or burning the
/// hub's CPU with handshakes is slow, while a legitimate edge that fails a few times (wrong
/// secret during a rollout) is never locked out for long.
pub struct FailureLimiter {
    buckets: HashMap<IpAddr, (f64, Instant)>,
    burst: f64,
    per_sec: f64,
}

/// Entries are forgotten after this long without a failure; keeps the map bounded by the
/// recent attacker set rather than growing forever.
const LIMITER_IDLE_FORGET: Duration = Duration::from_secs(600);
/// Hard cap on tracked addresses; beyond it the oldest are pruned first.
const LIMITER_MAX_ENTRIES: usize = 65_536;

impl FailureLimiter {
    /// `burst` failures at once, refilled at `per_minute`.
    pub fn new(burst: u32, per_minute: u32) -> Self {
        FailureLimiter {
            buckets: HashMap::new(),
            burst: f64::from(burst.max(1)),
            per_sec: f64::from(per_minute) / 60.0,
        }
    }

    fn level(&self, ip: &IpAddr, now: Instant) -> f64 {
        match self.buckets.get(ip) {
            None => self.burst,
            Some((tokens, at)) => {
                (tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.burst)
            }
        }
    }

    /// May this address attempt a handshake now?
    pub fn allowed(&self, ip: &IpAddr) -> bool {
        self.level(ip, Instant::now()) >= 1.0
    }

    /// Records one failed attempt.
    pub fn record_failure(&mut self, ip: IpAddr) {
        let now = Instant::now();
        let tokens = (self.level(&ip, now) - 1.0).max(0.0);
        if self.buckets.len() >= LIMITER_MAX_ENTRIES {
            self.buckets
                .retain(|_, (_, at)| now.duration_since(*at) < LIMITER_IDLE_FORGET);
            if self.buckets.len() >= LIMITER_MAX_ENTRIES {
                self.buckets.clear();
            }
        }
        self.buckets.insert(ip, (tokens, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_depends_on_every_input() {
        let n = [1u8; 32];
        let b = [2u8; 32];
        let p = proof(b"secret-secret-secret", 1, &n, &b, "edge");
        assert!(proofs_equal(
            &p,
            &proof(b"secret-secret-secret", 1, &n, &b, "edge")
        ));
        assert!(!proofs_equal(
            &p,
            &proof(b"secret-secret-secreT", 1, &n, &b, "edge")
        ));
        assert!(!proofs_equal(
            &p,
            &proof(b"secret-secret-secret", 2, &n, &b, "edge")
        ));
        assert!(!proofs_equal(
            &p,
            &proof(b"secret-secret-secret", 1, &[0; 32], &b, "edge")
        ));
        assert!(!proofs_equal(
            &p,
            &proof(b"secret-secret-secret", 1, &n, &[0; 32], "edge")
        ));
        assert!(!proofs_equal(
            &p,
            &proof(b"secret-secret-secret", 1, &n, &b, "edgf")
        ));
        assert!(!proofs_equal(&p, &p[..31]));
    }

    #[test]
    fn limiter_spends_and_refills() {
        let mut l = FailureLimiter::new(3, 60_000);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        for _ in 0..3 {
            assert!(l.allowed(&ip));
            l.record_failure(ip);
        }
        // 60,000/min = 1 per ms: a few ms later a token is back.
        std::thread::sleep(Duration::from_millis(5));
        assert!(l.allowed(&ip));
        let mut slow = FailureLimiter::new(2, 1);
        slow.record_failure(ip);
        slow.record_failure(ip);
        assert!(!slow.allowed(&ip));
        assert!(slow.allowed(&"127.0.0.10".parse().unwrap()));
    }
}
