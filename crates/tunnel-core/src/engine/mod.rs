//! The daemons' engines: the [`hub`] (authenticates edges, pushes their configuration, forwards
//! streams and flows to targets with PROXY headers) and the [`edge`] (dials the hub, binds the
//! assigned ports, applies the [`firewall`] snapshot), and the [`udp`] flow tables both use.

pub mod edge;
pub mod firewall;
pub mod hub;
pub mod listen;
pub mod service;
pub mod stun;
pub mod udp;
pub mod udp_io;

/// One place in a shared count (an edge's streams, its UDP flows), given back when dropped.
pub struct Slot(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Slot {
    /// A place if fewer than `max` are taken.
    pub fn take(count: &std::sync::Arc<std::sync::atomic::AtomicUsize>, max: usize) -> Option<Slot> {
        use std::sync::atomic::Ordering;
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(count.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Sets a socket's buffers to `bytes`, beyond `net.core.[rw]mem_max` when the process may
/// (SO_*BUFFORCE needs CAP_NET_ADMIN), else as far as the sysctl allows. Best effort; returns
/// what the kernel granted (the smaller of the two buffers), which callers may ignore.
pub fn tune_buffers(sock: &(impl std::os::fd::AsRawFd + std::os::fd::AsFd), bytes: usize) -> usize {
    let fd = sock.as_raw_fd();
    let v = bytes.min(i32::MAX as usize) as libc::c_int;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let set = |opt| {
            // SAFETY: fd is a valid socket for the duration of the call; v outlives it.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    &v as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            }
        };
        if set(force) != 0 {
            set(plain);
        }
    }
    let (snd, rcv) = socket_buffers(sock);
    snd.min(rcv) / 2
}

/// A socket option's value, read with `getsockopt` into a `T` (the option's C type), or `None`
/// if the kernel does not have the option or refuses it. For options socket2 does not wrap.
///
/// # Safety
/// `T` must be the plain-data type the kernel writes for `level`/`name` (any bit pattern valid).
pub(crate) unsafe fn sockopt<T>(
    sock: &impl std::os::fd::AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> Option<T> {
    let mut value = std::mem::MaybeUninit::<T>::zeroed();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: a valid descriptor (borrowed from `sock`), a zeroed buffer of `len` bytes; the
    // caller vouches that the kernel's bytes (or zeroes) are a valid `T`.
    let rc = unsafe { libc::getsockopt(sock.as_raw_fd(), level, name, value.as_mut_ptr().cast(), &mut len) };
    (rc == 0).then(|| unsafe { value.assume_init() })
}

/// A socket's (SO_SNDBUF, SO_RCVBUF) as the kernel reports them: twice what was set, for its
/// bookkeeping (0 if the kernel will not say).
pub(crate) fn socket_buffers(sock: &impl std::os::fd::AsFd) -> (usize, usize) {
    let s = socket2::SockRef::from(sock);
    (
        s.send_buffer_size().unwrap_or(0),
        s.recv_buffer_size().unwrap_or(0),
    )
}

/// A window scale above this tells a 128 KiB set buffer (scale 2) from autotuning's maximum:
/// the socket-buffer tests compare scales only where it is.
#[cfg(test)]
pub(crate) const MIN_DISTINCT_WSCALE: u8 = 2;

/// The window scale a connected TCP socket announced in its handshake (TCP_INFO's
/// `tcpi_rcv_wscale`: the high four bits of the byte it shares with `tcpi_snd_wscale`). The
/// kernel picks it from the receive buffer the socket had then.
#[cfg(test)]
pub(crate) fn announced_wscale(sock: &impl std::os::fd::AsRawFd) -> u8 {
    // SAFETY: tcp_info is plain data, valid zeroed or as the kernel fills it.
    let info: libc::tcp_info = unsafe { sockopt(sock, libc::IPPROTO_TCP, libc::TCP_INFO) }.expect("TCP_INFO");
    // tcpi_snd_wscale:4 then tcpi_rcv_wscale:4; bitfields fill from the low bit on x86-64 and
    // the other little-endian targets this builds for.
    info.tcpi_snd_rcv_wscale >> 4
}
