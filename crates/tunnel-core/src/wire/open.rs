//! The stream-open record: what the edge tells the hub about a new client connection.
//!
//! ```text
//! kind u8 (1 = TCP, 2 = UDP)  | flags u8 (reserved, 0) | service u32 (0 = route by listen port)
//! listen port u16    | client: family u8 (4|6), addr 4|16, port u16
//!                    | local:  family u8 (4|6), addr 4|16, port u16
//! ```
//! `service` leaves room for named services routed by the hub to their own target; `flags`
//! leaves room for chained hub/edge pairs that forward an already-known client address.

use bytes::{BufMut, BytesMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::wire::frame::{FrameError, FrameType};

pub const KIND_TCP: u8 = 1;
/// A UDP flow (FLOW_OPEN).
pub const KIND_UDP: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRecord {
    pub kind: u8,
    pub service: u32,
    pub listen_port: u16,
    /// The client's real address as the edge saw it.
    pub client: SocketAddr,
    /// The edge-side address the client connected to (PROXY header destination).
    pub local: SocketAddr,
}

impl OpenRecord {
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.kind);
        out.put_u8(0);
        out.put_u32(self.service);
        out.put_u16(self.listen_port);
        put_addr(out, self.client);
        put_addr(out, self.local);
    }

    pub fn decode(p: &[u8]) -> Result<OpenRecord, FrameError> {
        let bad = |why| FrameError::Malformed(FrameType::Open, why);
        if p.len() < 8 {
            return Err(bad("shorter than its fixed part"));
        }
        let kind = p[0];
        if kind != KIND_TCP && kind != KIND_UDP {
            return Err(bad("unknown stream kind"));
        }
        let service = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
        let listen_port = u16::from_be_bytes([p[6], p[7]]);
        let (client, rest) = take_addr(&p[8..]).ok_or_else(|| bad("bad client address"))?;
        let (local, rest) = take_addr(rest).ok_or_else(|| bad("bad local address"))?;
        if !rest.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(OpenRecord {
            kind,
            service,
            listen_port,
            client,
            local,
        })
    }
}

fn put_addr(out: &mut BytesMut, a: SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            out.put_u8(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.put_u8(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.put_u16(a.port());
}

fn take_addr(p: &[u8]) -> Option<(SocketAddr, &[u8])> {
    let (&fam, p) = p.split_first()?;
    let (ip, p): (IpAddr, &[u8]) = match fam {
        4 if p.len() >= 4 => {
            let o: [u8; 4] = p[..4].try_into().ok()?;
            (Ipv4Addr::from(o).into(), &p[4..])
        }
        6 if p.len() >= 16 => {
            let o: [u8; 16] = p[..16].try_into().ok()?;
            (Ipv6Addr::from(o).into(), &p[16..])
        }
        _ => return None,
    };
    if p.len() < 2 {
        return None;
    }
    let port = u16::from_be_bytes([p[0], p[1]]);
    Some((SocketAddr::new(ip, port), &p[2..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_v4_v6() {
        for (c, l) in [
            ("127.0.0.2:5555", "127.0.0.1:80"),
            ("[2001:db8::1]:443", "[::1]:8443"),
            ("10.1.2.3:1", "[::ffff:1.2.3.4]:9"),
        ] {
            let r = OpenRecord {
                kind: KIND_TCP,
                service: 7,
                listen_port: 80,
                client: c.parse().unwrap(),
                local: l.parse().unwrap(),
            };
            let mut b = BytesMut::new();
            r.encode(&mut b);
            assert!(b.len() <= crate::wire::frame::OPEN_RECORD_MAX);
            assert_eq!(OpenRecord::decode(&b).unwrap(), r);
            for cut in 0..b.len() {
                assert!(OpenRecord::decode(&b[..cut]).is_err());
            }
        }
    }
}
