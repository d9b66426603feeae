//! PROXY protocol v1 and v2 headers (haproxy's proxy-protocol.txt), written only on the
//! hub→target leg and always as one buffer before any client byte.

use std::net::{IpAddr, SocketAddr};

/// Which header a port's target expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyVersion {
    None,
    V1,
    V2,
}

/// How a UDP port's PROXY v2 header reaches its target.
///
/// DNS servers that take PROXY v2 over UDP (dnsdist, Unbound, NSD, PowerDNS Recursor, Knot
/// Resolver) read the header *prepended to each datagram*: that is the default. Some targets
/// want it only on a flow's first datagram, and older remoteingress hubs sent it as a datagram
/// of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UdpProxyMode {
    /// Header ‖ payload in every datagram of the flow.
    #[default]
    EveryDatagram,
    /// Header ‖ payload in the flow's first datagram; the rest as sent.
    FirstDatagram,
    /// The header alone as the flow's first datagram, then the payloads as sent.
    SeparateDatagram,
}

/// The v2 signature: "\r\n\r\n\0\r\nQUIT\n".
pub const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Stream,
    Datagram,
}

/// Both addresses in one family: if they differ, the IPv4 one is written as IPv4-mapped IPv6
/// (the spec requires one family per header).
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => (src, dst),
        _ => (to_v6(src), to_v6(dst)),
    }
}

fn to_v6(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    }
}

/// Normalises an IPv4-mapped IPv6 address (from a dual-stack listener) back to IPv4, so a
/// target sees `TCP4 1.2.3.4` rather than `TCP6 ::ffff:1.2.3.4`.
pub fn unmap(a: SocketAddr) -> SocketAddr {
    if let IpAddr::V6(v6) = a.ip() {
        if let Some(v4) = v6.to_ipv4_mapped() {
            return SocketAddr::new(IpAddr::V4(v4), a.port());
        }
    }
    a
}

/// The v1 text header. v1 has no datagram form.
pub fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(unmap(src), unmap(dst));
    let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {fam} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// The v2 binary header (PROXY command, no TLVs).
pub fn v2(src: SocketAddr, dst: SocketAddr, transport: Transport) -> Vec<u8> {
    let (src, dst) = same_family(unmap(src), unmap(dst));
    let proto: u8 = match transport {
        Transport::Stream => 0x1,
        Transport::Datagram => 0x2,
    };
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21); // version 2, command PROXY
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x10 | proto);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            out.push(0x20 | proto);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        _ => unreachable!("same_family() returned one family"),
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

/// The header for a TCP stream, or `None` when the port uses no PROXY protocol.
pub fn stream_header(version: ProxyVersion, src: SocketAddr, dst: SocketAddr) -> Option<Vec<u8>> {
    match version {
        ProxyVersion::None => None,
        ProxyVersion::V1 => Some(v1(src, dst)),
        ProxyVersion::V2 => Some(v2(src, dst, Transport::Stream)),
    }
}

/// The largest PROXY header accepted from a trusted previous hop: v1 lines are at most 107
/// bytes; a v2 header is 16 bytes plus its address block (at most 216, for AF_UNIX) plus TLVs,
/// and 1 KiB leaves room for the usual TLVs (ALPN, authority, unique id) without letting a peer
/// make the edge hold more.
pub const MAX_RECEIVED_HEADER: usize = 1024;

/// A v1 header line is at most 107 bytes, CRLF included (the spec's limit).
const V1_MAX_LINE: usize = 107;

/// What a PROXY header from a trusted previous hop says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Bytes the header took (the payload starts after them).
    pub len: usize,
    /// The client and the address it connected to, as the previous hop saw them; `None` for a
    /// LOCAL (v2) or UNKNOWN (v1) header, which names no client: the connection's own
    /// addresses stand.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
}

/// Parses a PROXY v1 or v2 header at the start of `buf` (with `ppp`, made for parsing these
/// from untrusted peers). `Ok(None)`: not complete yet — read more (up to
/// [`MAX_RECEIVED_HEADER`]). `Err`: not a PROXY header, or a malformed one, with why.
pub fn parse_received(buf: &[u8]) -> Result<Option<Received>, String> {
    use ppp::{HeaderResult, PartialResult};
    // A v1 line is complete only at its CRLF (ppp reads a cut-off port number as a bad one).
    let v1_prefix = b"PROXY ";
    let looks_v1 = buf.len() < v1_prefix.len() && v1_prefix.starts_with(buf) || buf.starts_with(v1_prefix);
    if looks_v1 && !buf.contains(&b'\n') {
        return if buf.len() >= V1_MAX_LINE {
            Err(format!(
                "no end of line within the {V1_MAX_LINE} bytes a PROXY v1 header may have"
            ))
        } else {
            Ok(None)
        };
    }
    let parsed = HeaderResult::parse(buf);
    if parsed.is_incomplete() {
        return if buf.len() >= MAX_RECEIVED_HEADER {
            Err(format!(
                "no complete PROXY header within {MAX_RECEIVED_HEADER} bytes"
            ))
        } else {
            Ok(None)
        };
    }
    fn pair(
        s: impl Into<IpAddr>,
        sp: u16,
        d: impl Into<IpAddr>,
        dp: u16,
    ) -> Option<(SocketAddr, SocketAddr)> {
        Some((SocketAddr::new(s.into(), sp), SocketAddr::new(d.into(), dp)))
    }
    let received = match parsed {
        HeaderResult::V1(Ok(h)) => Received {
            len: h.header.len(),
            addresses: match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => pair(
                    a.source_address,
                    a.source_port,
                    a.destination_address,
                    a.destination_port,
                ),
                ppp::v1::Addresses::Tcp6(a) => pair(
                    a.source_address,
                    a.source_port,
                    a.destination_address,
                    a.destination_port,
                ),
                ppp::v1::Addresses::Unknown => None,
            },
        },
        HeaderResult::V2(Ok(h)) => Received {
            len: h.len(),
            addresses: match (h.command, h.addresses) {
                (ppp::v2::Command::Local, _) => None,
                (_, ppp::v2::Addresses::IPv4(a)) => pair(
                    a.source_address,
                    a.source_port,
                    a.destination_address,
                    a.destination_port,
                ),
                (_, ppp::v2::Addresses::IPv6(a)) => pair(
                    a.source_address,
                    a.source_port,
                    a.destination_address,
                    a.destination_port,
                ),
                (_, ppp::v2::Addresses::Unix(_) | ppp::v2::Addresses::Unspecified) => None,
            },
        },
        HeaderResult::V1(Err(e)) => return Err(format!("malformed PROXY v1 header: {e}")),
        HeaderResult::V2(Err(e)) => return Err(format!("malformed PROXY v2 header: {e}")),
    };
    if received.len > MAX_RECEIVED_HEADER {
        return Err(format!(
            "PROXY header of {} bytes, over {MAX_RECEIVED_HEADER}",
            received.len
        ));
    }
    Ok(Some(received))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_ipv4_and_ipv6() {
        assert_eq!(
            v1(sa("127.0.0.2:4321"), sa("127.0.0.1:80")),
            b"PROXY TCP4 127.0.0.2 127.0.0.1 4321 80\r\n"
        );
        assert_eq!(
            v1(sa("[2001:db8::5]:1"), sa("[::1]:443")),
            b"PROXY TCP6 2001:db8::5 ::1 1 443\r\n"
        );
        // A dual-stack listener reports mapped addresses; the target sees plain IPv4.
        assert_eq!(
            v1(sa("[::ffff:10.0.0.9]:77"), sa("[::ffff:10.0.0.1]:80")),
            b"PROXY TCP4 10.0.0.9 10.0.0.1 77 80\r\n"
        );
        // Mixed families are written as one (IPv6) family.
        assert_eq!(
            v1(sa("10.0.0.9:77"), sa("[::1]:80")),
            b"PROXY TCP6 ::ffff:10.0.0.9 ::1 77 80\r\n"
        );
        // The longest v1 header fits the spec's 107-byte limit.
        let long = v1(
            sa("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
            sa("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
        );
        assert!(long.len() <= 107, "{}", long.len());
    }

    #[test]
    fn v2_layout() {
        let h = v2(sa("127.0.0.2:4321"), sa("127.0.0.1:80"), Transport::Stream);
        assert_eq!(&h[..12], &V2_SIGNATURE);
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 12);
        assert_eq!(&h[16..20], &[127, 0, 0, 2]);
        assert_eq!(&h[20..24], &[127, 0, 0, 1]);
        assert_eq!(u16::from_be_bytes([h[24], h[25]]), 4321);
        assert_eq!(u16::from_be_bytes([h[26], h[27]]), 80);
        assert_eq!(h.len(), 28);
        let h6 = v2(sa("[::2]:1"), sa("[::1]:2"), Transport::Datagram);
        assert_eq!(h6[13], 0x22);
        assert_eq!(h6.len(), 16 + 36);
    }

    #[test]
    fn received_headers_round_trip_what_we_write() {
        for (src, dst) in [
            ("203.0.113.7:40001", "198.51.100.1:443"),
            ("[2001:db8::7]:1", "[2001:db8::1]:443"),
        ] {
            let (src, dst) = (sa(src), sa(dst));
            for mut h in [
                v1(src, dst),
                v2(src, dst, Transport::Stream),
                v2(src, dst, Transport::Datagram),
            ] {
                let len = h.len();
                h.extend_from_slice(b"payload after the header");
                let r = parse_received(&h).unwrap().unwrap();
                assert_eq!(
                    r,
                    Received {
                        len,
                        addresses: Some((src, dst))
                    }
                );
                // Every cut short of the whole header asks for more.
                for cut in 1..len {
                    assert_eq!(parse_received(&h[..cut]), Ok(None), "cut at {cut} of {len}");
                }
            }
        }
        assert_eq!(
            parse_received(b"PROXY UNKNOWN\r\nGET /")
                .unwrap()
                .unwrap()
                .addresses,
            None
        );
        assert!(parse_received(b"GET / HTTP/1.1\r\n").is_err());
        assert!(parse_received(&[b'P'; MAX_RECEIVED_HEADER]).is_err());
    }

    /// Seeded mutation test of the parser of untrusted bytes: never panics, never claims more
    /// bytes than it was given, and every accepted header names addresses of one family.
    #[test]
    fn mutated_headers_never_panic_or_overrun() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x9e0f_e11e);
        let seeds = [
            v1(sa("203.0.113.7:40001"), sa("198.51.100.1:443")),
            v1(sa("[2001:db8::7]:1"), sa("[2001:db8::1]:443")),
            v2(sa("203.0.113.7:40001"), sa("198.51.100.1:443"), Transport::Stream),
            v2(
                sa("[2001:db8::7]:1"),
                sa("[2001:db8::1]:443"),
                Transport::Datagram,
            ),
            b"PROXY UNKNOWN\r\n".to_vec(),
        ];
        for i in 0..20_000 {
            let mut b = seeds[i % seeds.len()].clone();
            for _ in 0..rng.random_range(1..6) {
                match rng.random_range(0..5) {
                    0 if !b.is_empty() => {
                        let at = rng.random_range(0..b.len());
                        b[at] = rng.random();
                    }
                    1 if !b.is_empty() => b.truncate(rng.random_range(0..b.len())),
                    2 => {
                        let at = rng.random_range(0..=b.len());
                        let junk: Vec<u8> = (0..rng.random_range(1..40)).map(|_| rng.random()).collect();
                        b.splice(at..at, junk);
                    }
                    3 if b.len() > 15 => {
                        // The v2 length field, anything.
                        b[14] = rng.random();
                        b[15] = rng.random();
                    }
                    _ => b.extend((0..rng.random_range(0..64)).map(|_| rng.random::<u8>())),
                }
            }
            if let Ok(Some(r)) = parse_received(&b) {
                assert!(
                    r.len <= b.len() && r.len <= MAX_RECEIVED_HEADER,
                    "case {i}: {r:?} from {} bytes",
                    b.len()
                );
                if let Some((s, d)) = r.addresses {
                    assert_eq!(s.is_ipv4(), d.is_ipv4(), "case {i}");
                }
            }
        }
    }
}
