//! Edge authentication: HMAC-SHA256 over the hub's fresh nonce and the TLS channel binding
//! (an exporter secret unique to this TLS session), so the secret never crosses the wire, a
//! captured proof cannot be replayed on another session, and a man in the middle that
//! terminates TLS cannot relay it.

pub mod admission;
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
/// Domain separation for the proof a dialing hub shows its edge: a different context, so one
/// side's proof can never be reflected back as the other's.
const HUB_MAC_CONTEXT: &[u8] = b"remoteingress-hub-auth-v1\0";

/// `HMAC(secret, context || version || nonce || binding || edge_id)`.
pub fn proof(
    secret: &[u8],
    version: u16,
    nonce: &[u8; NONCE_LEN],
    binding: &[u8; 32],
    edge_id: &str,
) -> [u8; MAC_LEN] {
    mac(MAC_CONTEXT, secret, version, nonce, binding, edge_id)
}

/// The dialing hub's proof: `HMAC(secret, hub context || version || nonce || binding ||
/// edge_id)`. A listening edge checks it before it shows a proof of its own, so whoever dials
/// an edge learns nothing derived from the secret without knowing it (no offline guessing).
pub fn hub_proof(
    secret: &[u8],
    version: u16,
    nonce: &[u8; NONCE_LEN],
    binding: &[u8; 32],
    edge_id: &str,
) -> [u8; MAC_LEN] {
    mac(HUB_MAC_CONTEXT, secret, version, nonce, binding, edge_id)
}

fn mac(
    context: &[u8],
    secret: &[u8],
    version: u16,
    nonce: &[u8; NONCE_LEN],
    binding: &[u8; 32],
    edge_id: &str,
) -> [u8; MAC_LEN] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut mac = ring::hmac::Context::with_key(&key);
    mac.update(context);
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

/// The unit the pre-authentication limits count by: an IPv4 address, or an IPv6 /64 (one
/// subscriber's prefix: an attacker with a /64 has 2^64 addresses, so counting them one by one
/// would bound nothing). IPv4-mapped IPv6 addresses count as the IPv4 address.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::V6(o.into())
            }
        },
    }
}

/// An IPv6 /48 as a whole gets this many times one source's budget (failures, pending
/// handshakes, UDP flows): one site holds 65,536 /64s, so counting per /64 alone would give it
/// that many budgets, while 4 keeps room for a few neighbours behind one /48.
pub const PREFIX48_SHARE: u32 = 4;

/// The IPv6 /48 an address is in (`None` for IPv4 and IPv4-mapped addresses): the coarser tier
/// of the per-source limits, since one site's /48 holds 65,536 /64s.
pub fn prefix48(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(_) => None,
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => None,
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[6..].fill(0);
            Some(IpAddr::V6(o.into()))
        }
    }
}

/// Per-source limiter for failed attempts (wrong secret, unknown edge, a handshake that timed
/// out or was abandoned): a token bucket per [`source_key`]. A source that spent its budget is
/// refused before TLS, so guessing secrets or burning the hub's CPU with handshakes is slow,
/// while a legitimate edge that fails a few times (wrong secret during a rollout) is never
/// locked out for long.
pub struct FailureLimiter {
    /// Per source ([`source_key`], prefix length 0 in the key) and per IPv6 /48 (48), whose
    /// bucket is [`PREFIX48_SHARE`] times as large and refills as much faster.
    buckets: HashMap<(IpAddr, u8), (f64, Instant)>,
    burst: f64,
    per_sec: f64,
}

/// Entries are forgotten after this long without a failure; keeps the map bounded by the
/// recent attacker set rather than growing forever.
const LIMITER_IDLE_FORGET: Duration = Duration::from_secs(600);
/// Hard cap on tracked sources (~5 MiB of map at most). When it is reached, idle entries go
/// first, then the least recently failed sixteenth — never all at once, which would hand a
/// fresh budget to every source being limited.
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

    /// The buckets an address spends from: its source's, and its /48's (IPv6).
    fn keys(ip: IpAddr) -> impl Iterator<Item = (IpAddr, u8)> {
        std::iter::once((source_key(ip), 0)).chain(prefix48(ip).map(|p| (p, 48)))
    }

    fn level(&self, key: &(IpAddr, u8), now: Instant) -> f64 {
        let share = if key.1 == 48 {
            f64::from(PREFIX48_SHARE)
        } else {
            1.0
        };
        let burst = self.burst * share;
        match self.buckets.get(key) {
            None => burst,
            Some((tokens, at)) => {
                (tokens + now.duration_since(*at).as_secs_f64() * self.per_sec * share).min(burst)
            }
        }
    }

    /// May this source attempt a handshake now? (Its own budget and its /48's both left.)
    pub fn allowed(&self, ip: &IpAddr) -> bool {
        let now = Instant::now();
        Self::keys(*ip).all(|k| self.level(&k, now) >= 1.0)
    }

    /// Records one failed attempt.
    pub fn record_failure(&mut self, ip: IpAddr) {
        let now = Instant::now();
        for key in Self::keys(ip) {
            let tokens = (self.level(&key, now) - 1.0).max(0.0);
            if self.buckets.len() >= LIMITER_MAX_ENTRIES && !self.buckets.contains_key(&key) {
                self.evict(now);
            }
            self.buckets.insert(key, (tokens, now));
        }
    }

    /// Makes room: idle entries first, then the oldest sixteenth (so the cost is amortised
    /// over the next 4,096 inserts).
    fn evict(&mut self, now: Instant) {
        self.buckets
            .retain(|_, (_, at)| now.duration_since(*at) < LIMITER_IDLE_FORGET);
        // Down to a low-water mark, not just below the cap: otherwise a steady stream of new
        // sources would make every insert scan the whole map.
        if self.buckets.len() < LIMITER_MAX_ENTRIES - LIMITER_MAX_ENTRIES / 16 {
            return;
        }
        let mut stamps: Vec<Instant> = self.buckets.values().map(|(_, at)| *at).collect();
        let cut = stamps.len() / 16;
        let (_, oldest_kept, _) = stamps.select_nth_unstable(cut);
        let oldest_kept = *oldest_kept;
        self.buckets.retain(|_, (_, at)| *at >= oldest_kept);
    }

    /// Sources tracked (for tests and status).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
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

    /// One /48 spread over many /64s: each /64 has its own budget, but the /48 as a whole
    /// only PREFIX48_SHARE times one; another /48 is untouched.
    #[test]
    fn an_ipv6_site_gets_a_few_budgets_not_one_per_64() {
        let mut l = FailureLimiter::new(2, 1);
        let in_site = |i: u16| -> IpAddr { format!("2001:db8:7:{i:x}::1").parse().unwrap() };
        let mut spent = 0;
        for i in 0..100u16 {
            let ip = in_site(i);
            while l.allowed(&ip) {
                l.record_failure(ip);
                spent += 1;
            }
        }
        assert_eq!(spent, 2 * PREFIX48_SHARE as usize, "the site's budget");
        assert!(!l.allowed(&in_site(500)), "a fresh /64 of the same site");
        assert!(l.allowed(&"2001:db8:8::1".parse().unwrap()), "another site");
        assert_eq!(prefix48("10.0.0.1".parse().unwrap()), None);
        assert_eq!(prefix48("::ffff:10.0.0.1".parse().unwrap()), None);
    }

    #[test]
    fn ipv6_sources_count_per_64_and_mapped_ipv4_as_ipv4() {
        let mut l = FailureLimiter::new(2, 1);
        l.record_failure("2001:db8:1:2::1".parse().unwrap());
        l.record_failure("2001:db8:1:2:ffff::9".parse().unwrap());
        assert!(!l.allowed(&"2001:db8:1:2:abcd::1".parse().unwrap()));
        assert!(l.allowed(&"2001:db8:1:3::1".parse().unwrap()));
        l.record_failure("::ffff:127.0.0.7".parse().unwrap());
        l.record_failure("127.0.0.7".parse().unwrap());
        assert!(!l.allowed(&"127.0.0.7".parse().unwrap()));
    }

    #[test]
    fn a_full_limiter_evicts_the_oldest_not_everyone() {
        let mut l = FailureLimiter::new(1, 1);
        let first: IpAddr = "10.0.0.1".parse().unwrap();
        l.record_failure(first);
        std::thread::sleep(Duration::from_millis(2));
        let limited: IpAddr = "10.0.0.2".parse().unwrap();
        l.record_failure(limited);
        for i in 0..LIMITER_MAX_ENTRIES as u32 {
            l.record_failure(IpAddr::V4((0x0b00_0000 + i).into()));
        }
        assert!(l.len() <= LIMITER_MAX_ENTRIES);
        assert!(l.len() > LIMITER_MAX_ENTRIES / 2);
        // The first-recorded sources went; a limited source recorded later is still limited
        // unless it was among the oldest sixteenth, which the next check shows is not everyone.
        assert!(l.allowed(&first));
        let still_limited = (0..1000u32)
            .filter(|i| {
                !l.allowed(&IpAddr::V4(
                    (0x0b00_0000 + LIMITER_MAX_ENTRIES as u32 - 1 - i).into(),
                ))
            })
            .count();
        assert_eq!(still_limited, 1000);
    }
}
