//! Admission of unauthenticated tunnel connections: how many may be between "connected" and
//! "authenticated" at once, in total and per source ([`super::source_key`]: an IPv4 address or
//! an IPv6 /64). A connection holds an [`Admitted`] permit from the moment the hub decides to
//! spend anything on it until its authentication succeeds, fails or times out; dropping the
//! permit gives the place back. So one address cannot hold the hub's handshake capacity, and a
//! crowd of addresses can hold at most the global share.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::source_key;

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
        let n = c.by_source.entry(key).or_insert(0);
        if *n >= self.per_source {
            return Err(Refusal::SourceFull);
        }
        *n += 1;
        match via {
            Via::Tls => c.tls += 1,
            Via::Quic => c.quic += 1,
        }
        Ok(Admitted {
            admission: self.clone(),
            key,
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
    via: Via,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut c = self.admission.counts();
        if let Some(n) = c.by_source.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                c.by_source.remove(&self.key);
            }
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
}
