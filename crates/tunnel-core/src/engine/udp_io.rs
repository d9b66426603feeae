//! Batched UDP system calls, for the relayed datagrams of UDP services.
//!
//! **Sending: GSO.** Several datagrams to one destination in one system call: Linux's UDP
//! generic segmentation offload (`UDP_SEGMENT`, Linux 4.18+). The kernel cuts the concatenated
//! bytes into datagrams of the segment size (the last may be shorter), so a burst costs one
//! `sendmsg` and one trip through the IP stack instead of one per datagram. On loopback this took
//! a sender's CPU per 1,200-byte datagram from 8.8 to 2.6 µs (batches of 8; bench/changes.md,
//! session 10). quinn-udp does the same for QUIC, but its socket set-up forbids fragmentation (a
//! relayed datagram larger than the path MTU would fail instead of being fragmented, as plain
//! UDP is) and it sends from one contiguous buffer (a copy per datagram here); this sends the
//! datagrams' own buffers as an iovec list and leaves the socket's options alone.
//!
//! **Receiving: `recvmmsg`.** Up to [`RECV_SLOTS`] datagrams from any senders in one call
//! ([`RecvBatch`]), for the edge's public ports, where many clients' datagrams arrive on one
//! socket. (quinn-udp's receive needs its socket set-up, above; socket2 and tokio have no
//! `recvmmsg`.)

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

/// Most datagrams per call: the kernel's `UDP_MAX_SEGMENTS` (64 before Linux 6.x raised it to
/// 128; 64 works on every kernel that has GSO).
pub const MAX_SEGMENTS: usize = 64;
/// Most bytes per call: all segments travel as one UDP datagram until the kernel cuts them, so
/// they must fit IPv4's 65,507-byte payload (65,000 leaves room for IP options).
pub const MAX_BYTES: usize = 65_000;

/// How many datagrams from the front of `lens` (each datagram's length) one GSO call can carry:
/// all but the last of the same length, the last no longer but not empty, at most
/// [`MAX_SEGMENTS`] and [`MAX_BYTES`]. Always ≥ 1 for a non-empty input (a run of one is sent plainly).
pub fn gso_run_len(mut lens: impl Iterator<Item = usize>) -> usize {
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

/// Sends `parts` (the iovecs of datagrams of `segment` bytes each, the last possibly shorter)
/// as one `sendmsg` with `UDP_SEGMENT`, to `to` (None: the connected peer). Errors as
/// `sendmsg`'s: EINVAL/EIO/EMSGSIZE mean this socket cannot segment (no GSO, or a segment larger
/// than the path MTU); the caller then sends the datagrams one by one.
fn send_segments(
    sock: socket2::SockRef<'_>,
    to: Option<&socket2::SockAddr>,
    parts: &[IoSlice<'_>],
    segment: u16,
) -> io::Result<usize> {
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
    let msg = match to {
        Some(to) => msg.with_addr(to),
        None => msg,
    };
    sock.sendmsg(&msg, 0)
}

/// One datagram to send: a prefix (a PROXY header, or empty) and the payload, sent as one.
#[derive(Clone, Copy, Default)]
pub struct Outgoing<'a> {
    pub prefix: &'a [u8],
    pub payload: &'a [u8],
}

impl Outgoing<'_> {
    fn len(&self) -> usize {
        self.prefix.len() + self.payload.len()
    }
}

/// Whether this kernel segments UDP sends (`UDP_SEGMENT`, Linux 4.18+), asked once. It must
/// be asked: an older kernel ignores the control message it does not know and sends the whole
/// run as one datagram, with no error.
fn gso_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        // Unbound: binding could fail where loopback is down, and the answer does not depend
        // on an address.
        let Ok(sock) = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None) else {
            return false;
        };
        // SAFETY: UDP_SEGMENT's value is a C int.
        unsafe { super::sockopt::<libc::c_int>(&sock, libc::SOL_UDP, libc::UDP_SEGMENT) }.is_some()
    })
}

/// Which runs a socket still sends with GSO: those whose datagrams are smaller than the
/// smallest segment size the kernel refused (EMSGSIZE or EINVAL for a segment larger than the path MTU,
/// which plain sends fragment; EIO where the device cannot segment), none where the kernel
/// has no GSO.
#[derive(Clone, Copy, Debug)]
pub struct Gso {
    below: usize,
}

impl Gso {
    /// Runs of any size where the kernel has GSO.
    pub fn detect() -> Gso {
        Gso {
            below: if gso_supported() { usize::MAX } else { 0 },
        }
    }

    /// No runs at all (as on a kernel without GSO).
    #[cfg(test)]
    pub fn off() -> Gso {
        Gso { below: 0 }
    }

    /// Whether no run is sent with GSO any more.
    #[cfg(test)]
    pub fn is_off(&self) -> bool {
        self.below == 0
    }
}

/// What [`send_front`] did: how many datagrams from the front it took, and how many of them
/// went out (the others are lost, as a router under load would lose them).
pub struct Sent {
    pub count: usize,
    pub out: usize,
    /// Whether they went as one GSO run.
    pub as_run: bool,
}

/// Sends the datagrams at the front of `next` (all to `to`; None: the connected peer) that
/// form a run ([`gso_run_len`]) in one GSO call, or the first alone when the run is one
/// datagram or `gso` excludes its size. Never waits: a full socket buffer is a failure.
///
/// A refused run (a segment larger than the path MTU, or no GSO on the device) goes one by
/// one. On a connected socket (one destination) only its first does, and `gso` narrows to
/// smaller segments for the rest. With `to` the whole run goes one by one and `gso` stays: the
/// refusal may be that one client's path (a smaller MTU, or one a client lowered on purpose
/// with a forged ICMP message), the port's other clients keep their runs, and the run is not
/// offered to the kernel again only to be refused again.
///
/// An ICMP error pending on a connected socket (ECONNREFUSED from an earlier datagram) fails
/// the send that reports it, so a send that fails so is tried once more.
pub fn send_front(
    sock: &tokio::net::UdpSocket,
    to: Option<SocketAddr>,
    next: &[Outgoing<'_>],
    gso: &mut Gso,
) -> Sent {
    let Some(first) = next.first() else {
        return Sent {
            count: 0,
            out: 0,
            as_run: false,
        };
    };
    let to = to.map(socket2::SockAddr::from);
    let run = if first.len() < gso.below {
        gso_run_len(next.iter().map(Outgoing::len))
    } else {
        1
    };
    let mut singles = 1;
    if run >= 2 {
        let mut parts = [IoSlice::new(&[]); 2 * MAX_SEGMENTS];
        let mut k = 0;
        for d in &next[..run] {
            if !d.prefix.is_empty() {
                parts[k] = IoSlice::new(d.prefix);
                k += 1;
            }
            parts[k] = IoSlice::new(d.payload);
            k += 1;
        }
        // A run of two or more fits MAX_BYTES (< 65,536), so its segment size fits a u16.
        let segment = u16::try_from(first.len()).expect("a run's segment fits u16");
        let send = || {
            sock.try_io(tokio::io::Interest::WRITABLE, || {
                send_segments(socket2::SockRef::from(sock), to.as_ref(), &parts[..k], segment)
            })
        };
        match retry_refused(send) {
            Err(e) if cannot_segment(&e) => match &to {
                None => gso.below = gso.below.min(first.len()),
                Some(_) => singles = run,
            },
            r => {
                let out = if r.is_ok() { run } else { 0 };
                return Sent {
                    count: run,
                    out,
                    as_run: true,
                };
            }
        }
    }
    let mut out = 0;
    for d in &next[..singles] {
        let parts = [IoSlice::new(d.prefix), IoSlice::new(d.payload)];
        let send = || {
            sock.try_io(tokio::io::Interest::WRITABLE, || {
                let msg = socket2::MsgHdr::new().with_buffers(&parts);
                let msg = match &to {
                    Some(to) => msg.with_addr(to),
                    None => msg,
                };
                socket2::SockRef::from(sock).sendmsg(&msg, 0)
            })
        };
        out += usize::from(retry_refused(send).is_ok());
    }
    Sent {
        count: singles,
        out,
        as_run: false,
    }
}

/// `send`, and once more if it failed only to report an earlier datagram's ICMP error.
fn retry_refused(send: impl Fn() -> io::Result<usize>) -> io::Result<usize> {
    match send() {
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => send(),
        r => r,
    }
}

/// A datagram larger than this makes its batch's slots go back once the socket is drained
/// ([`RecvBatch::shed_if_large`]): 16 KiB is past any path MTU but jumbo frames' (9,000), so
/// ordinary traffic never pays for it, and a sender pays 16 KiB for each free it causes.
pub const SHED_ABOVE: usize = 16 * 1024;

/// Datagrams per `recvmmsg`: quinn-udp's batch for the same job. At 1 Gbit/s of 1,200-byte
/// datagrams (~100,000 a second) a wakeup rarely finds more.
pub const RECV_SLOTS: usize = 32;

/// One `recvmmsg`'s worth of receive buffers: [`RECV_SLOTS`] slots, each room for the largest
/// datagram, so nothing is ever clipped. The memory (~2 MiB for 64 KiB
/// datagrams) is allocated on the first receive and never written by us, so only the pages the
/// kernel writes become resident: about one page per slot for datagrams of ordinary size.
pub struct RecvBatch {
    slots: Option<Box<[MaybeUninit<u8>]>>,
    max: usize,
    /// A datagram over [`SHED_ABOVE`] arrived since the slots were last freed.
    large_seen: bool,
    /// Per received slot: its length and sender; `None` for a datagram the
    /// kernel clipped (cannot happen with `max` ≥ the largest UDP payload; counted if it does).
    got: Vec<Option<(usize, SocketAddr)>>,
}

impl RecvBatch {
    /// Slots of `max` bytes, the largest datagram to be received whole.
    pub fn new(max: usize) -> RecvBatch {
        RecvBatch {
            slots: None,
            max,
            large_seen: false,
            got: Vec::with_capacity(RECV_SLOTS),
        }
    }

    /// Receives what is queued on `sock`, up to [`RECV_SLOTS`] datagrams, without waiting
    /// (the socket is non-blocking): how many, or the error (`WouldBlock` when none was queued).
    pub fn recv(&mut self, sock: &impl AsRawFd) -> io::Result<usize> {
        self.got.clear();
        let max = self.max;
        let slots = self
            .slots
            .get_or_insert_with(|| Box::new_uninit_slice(max * RECV_SLOTS));
        let mut names: [socket2::SockAddrStorage; RECV_SLOTS] =
            std::array::from_fn(|_| socket2::SockAddrStorage::zeroed());
        // SAFETY: all-zero iovec and mmsghdr are valid values (null pointers, zero lengths).
        let mut iovs: [libc::iovec; RECV_SLOTS] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; RECV_SLOTS] = unsafe { std::mem::zeroed() };
        let base = slots.as_mut_ptr().cast::<u8>();
        for i in 0..RECV_SLOTS {
            // SAFETY: slot i, [i·max, (i+1)·max), is inside `slots`.
            iovs[i].iov_base = unsafe { base.add(i * max) }.cast();
            iovs[i].iov_len = max;
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut names[i] as *mut socket2::SockAddrStorage).cast();
            h.msg_namelen = names[i].size_of();
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
        }
        // SAFETY: every pointer in `hdrs` points into `slots`, `iovs` or `names`, all alive
        // and not otherwise borrowed for the call; the kernel writes within the given lengths.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                RECV_SLOTS as libc::c_uint,
                0,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        for (h, name) in hdrs.iter().zip(names).take(n as usize) {
            // SAFETY: the kernel wrote a socket address of `msg_namelen` bytes into `name`.
            let from = unsafe { socket2::SockAddr::new(name, h.msg_hdr.msg_namelen) }.as_socket();
            let clipped = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.got
                .push(from.filter(|_| !clipped).map(|from| (h.msg_len as usize, from)));
        }
        Ok(n as usize)
    }

    /// Frees the slots once the socket is drained (the last batch was short) if a datagram
    /// larger than [`SHED_ABOVE`] came since they were allocated: such datagrams made up to all
    /// of them (~2 MiB) resident, which ordinary ones (a page or two per slot) never do, and
    /// anyone can send a port a few. The next batch allocates them afresh. Waiting for the
    /// drain keeps a flood of large datagrams from costing a free and an allocation per batch.
    pub fn shed_if_large(&mut self) {
        self.large_seen |= self.got.iter().flatten().any(|(len, _)| *len > SHED_ABOVE);
        if self.large_seen && self.got.len() < RECV_SLOTS {
            self.slots = None;
            self.large_seen = false;
        }
    }

    /// What the last [`recv`](Self::recv) got: per datagram, its sender and its bytes (`None`
    /// for one the kernel clipped, or without an IP sender address).
    pub fn datagrams(&self) -> impl Iterator<Item = Option<(SocketAddr, &[u8])>> + '_ {
        self.got.iter().enumerate().map(move |(i, got)| {
            let (len, from) = (*got)?;
            let start = i * self.max;
            let bytes = &self.slots.as_ref()?[start..start + len];
            // SAFETY: recvmmsg initialised these `len` bytes of slot i.
            Some((from, unsafe {
                &*(bytes as *const [MaybeUninit<u8>] as *const [u8])
            }))
        })
    }
}

/// Whether a GSO send's error means "this socket or path cannot segment" (send one by one
/// from now on), rather than a failure of the datagrams themselves.
fn cannot_segment(e: &io::Error) -> bool {
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
        assert_eq!(gso_run_len([].into_iter()), 0);
        assert_eq!(gso_run_len([100].into_iter()), 1);
        assert_eq!(gso_run_len([100, 100, 100, 50, 100].into_iter()), 4);
        assert_eq!(gso_run_len([100, 200].into_iter()), 1);
        assert_eq!(gso_run_len([0, 0].into_iter()), 1);
        assert_eq!(gso_run_len([100, 0, 100].into_iter()), 1);
        assert_eq!(gso_run_len([1, 1, 0].into_iter()), 2);
        assert_eq!(gso_run_len(std::iter::repeat_n(10, 100)), MAX_SEGMENTS);
        assert_eq!(gso_run_len(std::iter::repeat_n(30_000, 5)), 2);
    }

    /// One `recvmmsg` returns every queued datagram whole, with its own sender, the empty and
    /// the largest included; the next finds nothing.
    #[test]
    fn a_batch_receives_every_datagram_whole_with_its_sender() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        crate::engine::tune_buffers(&rx, 4 << 20);
        let to = rx.local_addr().unwrap();
        let (a, b) = (
            std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
            std::net::UdpSocket::bind("127.0.0.2:0").unwrap(),
        );
        let mut sent = Vec::new();
        for (i, size) in [1200, 0, 65_507, 1, 1500, 1200].into_iter().enumerate() {
            let from = if i % 2 == 0 { &a } else { &b };
            let d: Vec<u8> = (0..size).map(|j| (i * 7 + j) as u8).collect();
            from.send_to(&d, to).unwrap();
            sent.push((from.local_addr().unwrap(), d));
        }
        rx.set_nonblocking(true).unwrap();
        let mut batch = RecvBatch::new(65_535);
        assert_eq!(batch.recv(&rx).unwrap(), sent.len());
        let got: Vec<_> = batch
            .datagrams()
            .map(|d| d.map(|(f, b)| (f, b.to_vec())))
            .collect();
        for (i, (g, s)) in got.iter().zip(&sent).enumerate() {
            assert_eq!(g.as_ref(), Some(s), "datagram {i}");
        }
        assert_eq!(batch.recv(&rx).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }

    /// A send that fails only to report an earlier datagram's ICMP error (ECONNREFUSED on a
    /// connected socket) is tried again, so the datagram in hand is not lost with it.
    #[tokio::test]
    async fn a_send_that_reports_an_earlier_refusal_is_retried() {
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = closed.local_addr().unwrap();
        drop(closed); // nothing listens there now: each datagram draws ICMP port unreachable
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.connect(to).await.unwrap();
        sock.writable().await.unwrap();
        // The mechanism: after a datagram, the next plain send reports the refusal (on
        // loopback the ICMP message comes back within the first send).
        let _ = sock.try_send(b"one");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let e = sock.try_send(b"two").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED), "{e}");
        // The same situation through send_front: the datagram in hand still goes out.
        for _ in 0..5 {
            let _ = sock.try_send(b"three");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let next = [Outgoing {
                prefix: &[],
                payload: b"four",
            }];
            let sent = send_front(&sock, None, &next, &mut Gso::detect());
            assert!(sent.out == 1 && sent.count == 1);
        }
    }

    /// Once the socket is drained, slots that held a large datagram go back; slots that held
    /// ordinary ones stay.
    #[test]
    fn a_batch_with_a_large_datagram_frees_its_slots() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let mut batch = RecvBatch::new(65_535);
        for (size, kept) in [(1200, true), (SHED_ABOVE + 1, false), (SHED_ABOVE, true)] {
            tx.send_to(&vec![7u8; size], rx.local_addr().unwrap()).unwrap();
            assert_eq!(batch.recv(&rx).unwrap(), 1);
            batch.shed_if_large();
            assert_eq!(batch.slots.is_some(), kept, "after a {size}-byte datagram");
        }
    }

    /// A datagram larger than a slot is reported, not passed on clipped.
    #[test]
    fn a_clipped_datagram_is_reported_as_such() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(&[5u8; 100], rx.local_addr().unwrap()).unwrap();
        tx.send_to(&[6u8; 10], rx.local_addr().unwrap()).unwrap();
        rx.set_nonblocking(true).unwrap();
        let mut batch = RecvBatch::new(50);
        assert_eq!(batch.recv(&rx).unwrap(), 2);
        let got: Vec<_> = batch.datagrams().map(|d| d.map(|(_, b)| b.to_vec())).collect();
        assert_eq!(got, vec![None, Some(vec![6u8; 10])]);
    }

    /// Datagrams to send as they are (no prefix).
    fn bare<const N: usize>(datagrams: &[[u8; N]]) -> Vec<Outgoing<'_>> {
        datagrams
            .iter()
            .map(|d| Outgoing {
                prefix: &[],
                payload: d,
            })
            .collect()
    }

    /// Runs `f` on a thread of its own in a new network namespace whose loopback is up with a
    /// 1,500-byte MTU, as a path to a client often is; `None` where namespaces cannot be made
    /// (not root). Only that thread moves: the test process's other threads stay where they are.
    fn in_small_mtu_namespace<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        std::thread::spawn(move || {
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                eprintln!(
                    "skipped: cannot make a network namespace: {}",
                    io::Error::last_os_error()
                );
                return None;
            }
            // The interface ioctls need a socket of this namespace (binding needs no interface).
            let ctl = std::net::UdpSocket::bind("0.0.0.0:0").expect("a socket in the new namespace");
            let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
            for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
                *d = *s as libc::c_char;
            }
            ifr.ifr_ifru.ifru_mtu = 1500;
            assert_eq!(
                unsafe { libc::ioctl(ctl.as_raw_fd(), libc::SIOCSIFMTU, &ifr) },
                0,
                "set lo's MTU"
            );
            assert_eq!(
                unsafe { libc::ioctl(ctl.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) },
                0,
                "read lo's flags"
            );
            unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
            assert_eq!(
                unsafe { libc::ioctl(ctl.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) },
                0,
                "bring lo up"
            );
            Some(f())
        })
        .join()
        .expect("the namespace thread")
    }

    /// What a refused run costs an edge port (many clients, `to` given) and a hub flow (one
    /// connected target): over a 1,500-byte MTU the kernel refuses a GSO run of 2,000-byte
    /// segments (EMSGSIZE); the port sends that run one by one, whole (IP fragments them), and
    /// keeps GSO for smaller datagrams; the connected socket sends the first alone and stops
    /// offering runs of that size.
    #[test]
    fn a_refused_run_goes_one_by_one_and_only_a_connected_socket_narrows_gso() {
        if Gso::detect().is_off() {
            eprintln!("skipped: this kernel has no UDP GSO");
            return;
        }
        in_small_mtu_namespace(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .unwrap();
                let to = rx.local_addr().unwrap();
                let big = [[7u8; 2000], [8u8; 2000], [9u8; 2000]];
                let run = bare(&big);
                let mut buf = [0u8; 4096];

                // An edge port: the whole run goes, one by one, and GSO stays as it was.
                let port = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                // send_front never waits; a new socket is writable once the reactor says so.
                port.writable().await.unwrap();
                let mut gso = Gso::detect();
                let sent = send_front(&port, Some(to), &run, &mut gso);
                assert_eq!((sent.count, sent.out, sent.as_run), (3, 3, false));
                assert_eq!(
                    gso.below,
                    usize::MAX,
                    "one client's path does not narrow the port's GSO"
                );
                for want in &big {
                    let n = rx.recv(&mut buf).unwrap();
                    assert_eq!(&buf[..n], &want[..], "each datagram arrives whole");
                }
                // Its smaller datagrams still leave as one run.
                let small = [[1u8; 1000], [2u8; 1000]];
                let run2 = bare(&small);
                let sent = send_front(&port, Some(to), &run2, &mut gso);
                assert_eq!((sent.count, sent.out, sent.as_run), (2, 2, true));
                for want in &small {
                    let n = rx.recv(&mut buf).unwrap();
                    assert_eq!(&buf[..n], &want[..]);
                }

                // A hub flow's connected socket: the first goes alone, then runs of that size
                // are no longer offered.
                let flow = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                flow.connect(to).await.unwrap();
                flow.writable().await.unwrap();
                let mut gso = Gso::detect();
                let sent = send_front(&flow, None, &run, &mut gso);
                assert_eq!((sent.count, sent.out, sent.as_run), (1, 1, false));
                assert_eq!(gso.below, 2000);
                let sent = send_front(&flow, None, &run[1..], &mut gso);
                assert_eq!(
                    (sent.count, sent.out, sent.as_run),
                    (1, 1, false),
                    "not offered as a run again"
                );
                for want in &big[..2] {
                    let n = rx.recv(&mut buf).unwrap();
                    assert_eq!(&buf[..n], &want[..]);
                }
            });
        });
    }

    /// Datagrams of a run arrive as sent, boundaries and all, in one call.
    #[test]
    fn a_run_arrives_as_separate_datagrams() {
        if Gso::detect().is_off() {
            eprintln!("skipped: this kernel has no UDP GSO");
            return;
        }
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
        let sent = send_segments(socket2::SockRef::from(&tx), None, &parts, 700).unwrap();
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
