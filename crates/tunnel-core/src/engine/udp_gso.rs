//! Several datagrams to one destination in one system call: Linux's UDP generic segmentation
//! offload (`UDP_SEGMENT`, Linux 4.18+). The kernel cuts the concatenated bytes into datagrams of
//! the segment size (the last may be shorter), so a burst costs one `sendmsg` and one trip
//! through the IP stack instead of one per datagram. On loopback this took a sender's CPU per
//! 1,200-byte datagram from 8.8 to 2.6 µs (batches of 8; bench/changes.md, session 10).
//!
//! quinn-udp does the same for QUIC, but its socket set-up forbids fragmentation (a relayed
//! datagram larger than the path MTU would fail instead of being fragmented, as plain UDP is)
//! and it sends from one contiguous buffer (a copy per datagram here); this sends the
//! datagrams' own buffers as an iovec list and leaves the socket's options alone.

use std::io::{self, IoSlice};

/// Most datagrams per call: the kernel's `UDP_MAX_SEGMENTS` (64 before Linux 6.x raised it to
/// 128; 64 works on every kernel that has GSO).
pub const MAX_SEGMENTS: usize = 64;
/// Most bytes per call: all segments travel as one UDP datagram until the kernel cuts them, so
/// they must fit IPv4's 65,507-byte payload (65,000 leaves room for IP options).
pub const MAX_BYTES: usize = 65_000;

/// How many datagrams from the front of `lens` (each datagram's length) one GSO call can carry:
/// all but the last of the same length, the last no longer but not empty, at most
/// [`MAX_SEGMENTS`] and [`MAX_BYTES`]. Always ≥ 1 for a non-empty input (a run of one is sent plainly).
pub fn run_len(mut lens: impl Iterator<Item = usize>) -> usize {
    let Some(first) = lens.next() else { return 0 };
    if first == 0 {
        return 1; // an empty datagram cannot be a segment size
    }
    let (mut n, mut bytes) = (1, first);
    for len in lens {
        // An empty datagram is no segment at all: the kernel would send nothing for it.
        if n == MAX_SEGMENTS || bytes + len > MAX_BYTES || len > first || len == 0 {
            break;
        }
        n += 1;
        bytes += len;
        if len < first {
            break; // a shorter datagram ends a run
        }
    }
    n
}

/// Sends `parts` (the iovecs of `count` datagrams of `segment` bytes each, the last possibly
/// shorter) as one `sendmsg` with `UDP_SEGMENT`, on a connected socket. Errors as `sendmsg`'s:
/// EINVAL/EIO/EMSGSIZE mean this socket cannot segment (no GSO, or a segment larger than the
/// path MTU); the caller then sends the datagrams one by one.
pub fn send(sock: socket2::SockRef<'_>, parts: &[IoSlice<'_>], segment: u16) -> io::Result<usize> {
    /// `CMSG_SPACE(sizeof(u16))`: 24 bytes on 64-bit Linux, 16 on 32-bit; 32 holds either.
    #[repr(C, align(8))]
    struct Control([u8; 32]);
    let mut control = Control([0; 32]);
    // SAFETY: the buffer is aligned for `cmsghdr` and large enough for one header and a u16
    // (CMSG_SPACE(2) ≤ 32, checked below); nothing else aliases it.
    let space = unsafe {
        let space = libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as usize;
        assert!(space <= control.0.len());
        let mut header: libc::cmsghdr = std::mem::zeroed();
        header.cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
        header.cmsg_level = libc::SOL_UDP;
        header.cmsg_type = libc::UDP_SEGMENT;
        let at = control.0.as_mut_ptr().cast::<libc::cmsghdr>();
        at.write(header);
        libc::CMSG_DATA(at).cast::<u16>().write_unaligned(segment);
        space
    };
    let msg = socket2::MsgHdr::new()
        .with_buffers(parts)
        .with_control(&control.0[..space]);
    sock.sendmsg(&msg, 0)
}

/// Whether a GSO send's error means "this socket or path cannot segment" (send one by one
/// from now on), rather than a failure of the datagrams themselves.
pub fn cannot_segment(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EIO | libc::EMSGSIZE | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_equal_lengths_then_at_most_one_shorter() {
        assert_eq!(run_len([].into_iter()), 0);
        assert_eq!(run_len([100].into_iter()), 1);
        assert_eq!(run_len([100, 100, 100, 50, 100].into_iter()), 4);
        assert_eq!(run_len([100, 200].into_iter()), 1);
        assert_eq!(run_len([0, 0].into_iter()), 1);
        assert_eq!(run_len([100, 0, 100].into_iter()), 1);
        assert_eq!(run_len([1, 1, 0].into_iter()), 2);
        assert_eq!(run_len(std::iter::repeat_n(10, 100)), MAX_SEGMENTS);
        assert_eq!(run_len(std::iter::repeat_n(30_000, 5)), 2);
    }

    /// Datagrams of a run arrive as sent, boundaries and all, in one call.
    #[test]
    fn a_run_arrives_as_separate_datagrams() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        let (a, b, c) = ([1u8; 700], [2u8; 700], [3u8; 123]);
        // The middle datagram in two iovecs (a prefix and a payload), as a PROXY header goes.
        let parts = [
            IoSlice::new(&a),
            IoSlice::new(&b[..100]),
            IoSlice::new(&b[100..]),
            IoSlice::new(&c),
        ];
        let sent = send(socket2::SockRef::from(&tx), &parts, 700).unwrap();
        assert_eq!(sent, 1523);
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 2048];
        for want in [&a[..], &b[..], &c[..]] {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], want);
        }
    }
}
