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
/// bookkeeping.
#[cfg(test)]
pub(crate) fn socket_buffers(sock: &impl std::os::fd::AsRawFd) -> (libc::c_int, libc::c_int) {
    // SAFETY: both options are a C int.
    let get = |name| unsafe { sockopt::<libc::c_int>(sock, libc::SOL_SOCKET, name) }.expect("getsockopt");
    (get(libc::SO_SNDBUF), get(libc::SO_RCVBUF))
}
