//! The stream-open record: what the edge tells the hub about a new client connection.
//!
//! ```text
//! kind u8 (1 = TCP, 2 = UDP)  | flags u8 | service u32 (0 = route by listen port)
//! listen port u16    | client: family u8 (4|6), addr 4|16, port u16
//!                    | local:  family u8 (4|6), addr 4|16, port u16
//!                    [ | buffer bytes u32 ]   (flags & 0x01)
//! ```
//! `service` names the service the hub routes by. Flag 0x01: the stream's service caps what
//! one connection may hold in flight (`bufferBytes`); both ends then use at most that as the
//! stream's window in each direction. Flag 0x02 (only with 0x01, only on QUIC streams): both
//! ends enforce the cap with WINDOW credit on the QUIC control stream, which the edge sets only
//! for a hub whose CONFIG announced it (so an older hub never sees the bit). Other flag bits are
//! reserved and must be 0.

use bytes::{BufMut, BytesMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::wire::frame::{FrameError, FrameType};

pub const KIND_TCP: u8 = 1;
/// A UDP flow (FLOW_OPEN).
pub const KIND_UDP: u8 = 2;
/// Flag: a buffer cap follows the addresses.
pub const FLAG_BUFFER: u8 = 0x01;
/// Flag: on QUIC, the cap is enforced with WINDOW credit on the control stream (see
/// `transport::quic::Credit`). Meaningless without [`FLAG_BUFFER`], and refused without it.
pub const FLAG_CREDIT: u8 = 0x02;
/// The smallest buffer cap: 1 KiB, as consumer.xml's `request_buffer` allows. Smaller windows
/// would mean a WINDOW frame for every few hundred bytes.
pub const MIN_BUFFER: u32 = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRecord {
    pub kind: u8,
    pub service: u32,
    pub listen_port: u16,
    /// The client's real address as the edge saw it.
    pub client: SocketAddr,
    /// The edge-side address the client connected to (PROXY header destination).
    pub local: SocketAddr,
    /// The most one connection of this service may hold in flight per direction (bytes).
    pub buffer: Option<u32>,
    /// QUIC only: both ends enforce `buffer` with WINDOW credit ([`FLAG_CREDIT`]).
    pub credit: bool,
}

impl OpenRecord {
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.kind);
        let flags = match (self.buffer, self.credit) {
            (None, _) => 0,
            (Some(_), false) => FLAG_BUFFER,
            (Some(_), true) => FLAG_BUFFER | FLAG_CREDIT,
        };
        out.put_u8(flags);
        out.put_u32(self.service);
        out.put_u16(self.listen_port);
        put_addr(out, self.client);
        put_addr(out, self.local);
        if let Some(b) = self.buffer {
            out.put_u32(b);
        }
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
        let flags = p[1];
        if flags & !(FLAG_BUFFER | FLAG_CREDIT) != 0 {
            return Err(bad("unknown flags"));
        }
        if flags & FLAG_CREDIT != 0 && flags & FLAG_BUFFER == 0 {
            return Err(bad("credit flag without a buffer cap"));
        }
        let service = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
        let listen_port = u16::from_be_bytes([p[6], p[7]]);
        let (client, rest) = take_addr(&p[8..]).ok_or_else(|| bad("bad client address"))?;
        let (local, rest) = take_addr(rest).ok_or_else(|| bad("bad local address"))?;
        let (buffer, rest) = if flags & FLAG_BUFFER != 0 {
            let b: [u8; 4] = rest
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| bad("buffer cap missing"))?;
            let b = u32::from_be_bytes(b);
            if b < MIN_BUFFER {
                return Err(bad("buffer cap below its minimum"));
            }
            (Some(b), &rest[4..])
        } else {
            (None, rest)
        };
        if !rest.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(OpenRecord {
            kind,
            service,
            listen_port,
            client,
            local,
            buffer,
            credit: flags & FLAG_CREDIT != 0,
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
        for (c, l, buffer, credit) in [
            ("127.0.0.2:5555", "127.0.0.1:80", None, false),
            ("[2001:db8::1]:443", "[::1]:8443", Some(16384), false),
            ("10.1.2.3:1", "[::ffff:1.2.3.4]:9", Some(MIN_BUFFER), true),
        ] {
            let r = OpenRecord {
                kind: KIND_TCP,
                service: 7,
                listen_port: 80,
                client: c.parse().unwrap(),
                local: l.parse().unwrap(),
                buffer,
                credit,
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

    #[test]
    fn unknown_flags_and_tiny_buffer_caps_are_refused() {
        let mut r = OpenRecord {
            kind: KIND_TCP,
            service: 7,
            listen_port: 80,
            client: "127.0.0.2:5555".parse().unwrap(),
            local: "127.0.0.1:80".parse().unwrap(),
            buffer: Some(MIN_BUFFER - 1),
            credit: false,
        };
        let mut b = BytesMut::new();
        r.encode(&mut b);
        assert!(OpenRecord::decode(&b).is_err());
        r.buffer = None;
        let mut b = BytesMut::new();
        r.encode(&mut b);
        // Credit without a cap, and a reserved bit.
        for flags in [FLAG_CREDIT, 0x04, 0x80] {
            b[1] = flags;
            assert!(OpenRecord::decode(&b).is_err(), "flags {flags:#x}");
        }
    }
}
