//! Admission of unauthenticated tunnel connections: how many may be between "connected" and
//! "authenticated" at once, in total and per source ([`super::source_key`]: an IPv4 address or
//! an IPv6 /64). A connection holds an [`Admitted`] permit from the moment the hub decides to
//! spend anything on it until its authentication succeeds, fails or times out; dropping the
//! permit gives the place back. So one address cannot hold the hub's handshake capacity, and a
//! crowd of addresses can hold at most the global share.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::{prefix48, source_key, PREFIX48_SHARE};

/// Which listener a connection came through (counted separately for status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Tls,
    Quic,
}

/// Counts of unauthenticated connections, with the caps.
#[derive(Debug)]
pub struct Admission {
    /// Caps per transport, so a crowd of cheap idle TLS connections cannot take QUIC's places
    /// (QUIC admits only address-validated peers; TLS has no such check).
    global_tls: usize,
    global_quic: usize,
    per_source: u32,
    state: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Only sources with at least one connection: bounded by `global`.
    by_source: HashMap<IpAddr, u32>,
    /// The same per IPv6 /48, capped at [`PREFIX48_SHARE`] times a source's share.
    by_prefix48: HashMap<IpAddr, u32>,
    tls: usize,
    quic: usize,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The hub already holds its global number of unauthenticated connections.
    Full,
    /// This source (address or IPv6 /64) already holds its share.
    SourceFull,
}

impl Admission {
    pub fn new(global_tls: u32, global_quic: u32, per_source: u32) -> Arc<Admission> {
        Arc::new(Admission {
            global_tls: global_tls.max(1) as usize,
            global_quic: global_quic.max(1) as usize,
            per_source: per_source.max(1),
            state: Mutex::new(Counts::default()),
        })
    }

    /// A place for one unauthenticated connection from `ip`, or why not.
    pub fn try_admit(self: &Arc<Self>, ip: IpAddr, via: Via) -> Result<Admitted, Refusal> {
        let key = source_key(ip);
        let mut c = self.counts();
        let full = match via {
            Via::Tls => c.tls >= self.global_tls,
            Via::Quic => c.quic >= self.global_quic,
        };
        if full {
            return Err(Refusal::Full);
        }
        let site = prefix48(ip);
        let site_full = site.is_some_and(|p| {
            c.by_prefix48.get(&p).copied().unwrap_or(0) >= self.per_source.saturating_mul(PREFIX48_SHARE)
        });
        if c.by_source.get(&key).copied().unwrap_or(0) >= self.per_source || site_full {
            return Err(Refusal::SourceFull);
        }
        *c.by_source.entry(key).or_insert(0) += 1;
        if let Some(p) = site {
            *c.by_prefix48.entry(p).or_insert(0) += 1;
        }
        match via {
            Via::Tls => c.tls += 1,
            Via::Quic => c.quic += 1,
        }
        Ok(Admitted {
            admission: self.clone(),
            key,
            site,
            via,
        })
    }

    /// Unauthenticated connections now: (TLS, QUIC).
    pub fn pending(&self) -> (usize, usize) {
        let c = self.counts();
        (c.tls, c.quic)
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // The counters stay consistent even if a holder panicked: every update is one step.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One admitted unauthenticated connection; dropping it gives the place back.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    key: IpAddr,
    site: Option<IpAddr>,
    via: Via,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut c = self.admission.counts();
        let less = |m: &mut HashMap<IpAddr, u32>, k: IpAddr| {
            if let Some(n) = m.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&k);
                }
            }
        };
        less(&mut c.by_source, self.key);
        if let Some(p) = self.site {
            less(&mut c.by_prefix48, p);
        }
        match self.via {
            Via::Tls => c.tls -= 1,
            Via::Quic => c.quic -= 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_source_and_in_total_and_gives_places_back() {
        let a = Admission::new(3, 5, 2);
        let one: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = a.try_admit(one, Via::Tls).unwrap();
        let _p2 = a.try_admit(one, Via::Quic).unwrap();
        assert_eq!(a.try_admit(one, Via::Tls).unwrap_err(), Refusal::SourceFull);
        // The same IPv6 /64 is one source.
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        let _p3 = a.try_admit(v6a, Via::Quic).unwrap();
        let _p4 = a.try_admit(v6b, Via::Quic).unwrap();
        assert_eq!(a.try_admit(v6a, Via::Quic).unwrap_err(), Refusal::SourceFull);
        // TLS: p1 and p5 and p6 fill its cap of 3; QUIC (3 of 5) still has room: a crowd on one
        // transport does not take the other's places.
        let _p5 = a.try_admit("127.0.0.3".parse().unwrap(), Via::Tls).unwrap();
        let _p6 = a.try_admit("127.0.0.4".parse().unwrap(), Via::Tls).unwrap();
        let full = a.try_admit("127.0.0.6".parse().unwrap(), Via::Tls).unwrap_err();
        assert_eq!(full, Refusal::Full);
        let _p7 = a.try_admit("127.0.0.6".parse().unwrap(), Via::Quic).unwrap();
        assert_eq!(a.pending(), (3, 4));
        drop(p1);
        assert_eq!(a.pending(), (2, 4));
        assert!(a.try_admit(one, Via::Tls).is_ok());
    }

    /// An IPv6 site spread over many /64s holds at most PREFIX48_SHARE sources' shares.
    #[test]
    fn an_ipv6_site_holds_a_few_shares_not_one_per_64() {
        let a = Admission::new(1000, 1000, 2);
        let held: Vec<Admitted> = (0..50u16)
            .flat_map(|i| {
                let ip: IpAddr = format!("2001:db8:5:{i:x}::1").parse().unwrap();
                [a.try_admit(ip, Via::Tls), a.try_admit(ip, Via::Tls)]
            })
            .filter_map(Result::ok)
            .collect();
        assert_eq!(held.len(), 2 * PREFIX48_SHARE as usize);
        assert!(a.try_admit("2001:db8:6::1".parse().unwrap(), Via::Tls).is_ok());
        drop(held);
        assert!(a.try_admit("2001:db8:5:99::1".parse().unwrap(), Via::Tls).is_ok());
    }
}
