//! The frame muxer: many TCP streams over one ordered, reliable byte pipe (the TLS tunnel).
//!
//! One task per tunnel owns all stream state, so the hot path takes no locks:
//!
//! ```text
//!  stream reader tasks ──Cmd──►┐                         ┌──► stream writer tasks (Inbound)
//!                              │  mux task: decode,      │
//!  hub / edge control  ──Cmd──►┤  flow control, round-   ├──► Handler (OPEN, CONFIG, closes)
//!                              │  robin, heartbeats      │
//!                   tunnel IO ◄┴─────────────────────────┘
//! ```
//!
//! Flow control is credit based, per stream and per connection. A stream reader only reads from
//! its socket while it holds send credit (an atomic the mux tops up on WINDOW frames), so a
//! stream's queue inside the mux never exceeds the peer's window. Receive credit is returned
//! when the stream writer has actually written bytes to its socket, so a slow target makes its
//! own stream stall rather than the hub buffer without bound. Control frames always go out
//! before data; data goes round-robin, one frame per ready stream per turn.
//!
//! The muxer is generic over the tunnel's IO, and its streams are driven through
//! [`StreamCtx`], so tests run two muxers over an in-memory pipe with no sockets at all.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

use crate::error::Error;
use crate::frame::{self, Decoded, Frame, FrameType, FLAG_ACK, FLAG_FIN};
use crate::open::OpenRecord;

/// Which end of the tunnel this muxer is. Stream ids are split by parity so both ends can open
/// streams without colliding: the edge opens odd ids (every client connection today); even ids
/// are reserved for the hub (the hub dialing services on the edge side, a later feature).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Edge,
    Hub,
}

/// RESET codes on the wire.
pub mod reset {
    /// The stream's socket failed (error or abortive close) on the sender's side.
    pub const IO: u16 = 1;
    /// The hub could not connect to the port's target.
    pub const TARGET_UNREACHABLE: u16 = 2;
    /// The receiver has too many streams open.
    pub const REFUSED: u16 = 3;
    /// The port is not assigned to this edge (config changed under the stream).
    pub const NO_ROUTE: u16 = 4;
    /// The tunnel is closing and the stream did not finish within the grace period.
    pub const SHUTDOWN: u16 = 5;
}

/// Tunables shared by both ends (the hub announces them in AUTH_OK).
#[derive(Debug, Clone)]
pub struct MuxConfig {
    pub side: Side,
    pub max_frame: usize,
    pub stream_window: u32,
    pub connection_window: u32,
    pub max_streams: u32,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
}

/// Target size of one batch written to the tunnel. 128 KiB = 8 TLS records per write call:
/// enough to amortise the syscall and the scheduler hop, small enough that a PONG or WINDOW
/// queued meanwhile waits for at most ~100 µs of loopback bandwidth.
const WRITE_BATCH: usize = 128 * 1024;

/// Stream payloads up to this size are copied next to their frame header; larger ones go to
/// the tunnel as their own slice of the vectored write (no copy). 512 B: below it an extra
/// slice costs more than the copy, and a request/response exchange stays one slice.
const COPY_PAYLOAD_UP_TO: usize = 512;

/// Read-buffer growth step for the tunnel socket (64 KiB = four TLS records per read).
const READ_CHUNK: usize = 64 * 1024;

/// Tunnel bytes gathered (while immediately readable) before the frames are processed: up to
/// eight TLS records, so a stream's data reaches its socket in one 128 KiB `writev` rather
/// than eight 16 KiB writes, and the batch still fits in L2 cache.
const READ_BATCH: usize = 128 * 1024;

/// A tunnel read at least this large (a quarter of a full TLS record) suggests bulk data with
/// more behind it, worth gathering before decoding.
const GATHER_MORE_AFTER: usize = 4 * 1024;

/// Largest read from a stream's socket (credit permitting). 64 KiB is what the kernel hands
/// over in one go on loopback and LAN paths (a GSO segment); reading it in one call rather than
/// four 16 KiB ones cuts syscalls and mux messages per byte by four, and `fill` still cuts it
/// into `max_frame` frames so streams interleave as before. Larger reads measured worse: a
/// buffer at or above glibc's mmap threshold (128 KiB) is a fresh mapping per read, and the
/// page faults nearly doubled the edge's CPU per byte at 256 KiB.
const SOCKET_READ: usize = 64 * 1024;

/// A stream keeps room for this many pending chunks between batches: one batch of full-size
/// frames (READ_BATCH / 16 KiB). Longer lists (a peer sending tiny frames) are freed after use.
const PENDING_KEEP: usize = 8;

/// At most this many received chunks go to a socket in one `writev` (well under IOV_MAX).
const MAX_WRITE_SLICES: usize = 64;

/// Datagrams queued for the tunnel beyond this are dropped: UDP must not build a standing
/// queue in front of TCP streams. 4 MiB ≈ 3 ms at 10 Gbit/s, yet holds a burst of ~70
/// maximum-size (60 KiB) datagrams, or ~3,000 typical 1,200-byte ones.
const MAX_PENDING_DATAGRAMS: usize = 4 * 1024 * 1024;

/// How long a closing tunnel may spend telling the peer why (GOAWAY + close_notify).
const CLOSE_LINGER: Duration = Duration::from_millis(200);

/// After an orderly close, how long to wait for the peer's end of the connection (its
/// close_notify/FIN) before dropping the socket anyway. 2 s covers a loaded peer; a dead one
/// costs only this delay.
const DRAIN_LINGER: Duration = Duration::from_secs(2);

/// If the peer stops reading while we still owe it control frames (PONGs, WINDOWs), this much
/// pending control data means it is hostile or dead; the tunnel is closed instead of queueing.
const MAX_PENDING_CONTROL: usize = 4 * 1024 * 1024;

/// What a stream writer receives.
#[derive(Debug)]
pub enum Inbound {
    Data(Bytes),
    /// The peer half-closed: no more data will come.
    Fin,
    /// The stream was aborted (by the peer, or because the tunnel died).
    Reset,
}

/// State shared between the mux task and one stream's reader.
#[derive(Debug)]
pub struct StreamShared {
    /// Bytes this stream may still send (peer's window). May go negative transiently never:
    /// only the reader spends it, only after checking it.
    credit: AtomicI64,
    /// Wakes the reader when credit arrives or the stream is reset.
    notify: Notify,
    reset: AtomicBool,
}

impl StreamShared {
    fn new(credit: u32) -> Arc<StreamShared> {
        Arc::new(StreamShared {
            credit: AtomicI64::new(i64::from(credit)),
            notify: Notify::new(),
            reset: AtomicBool::new(false),
        })
    }

    fn abort(&self) {
        self.reset.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}

/// Commands from streams and from the owner to the mux task.
pub(crate) enum Cmd {
    Open {
        id: u32,
        record: OpenRecord,
        tx: mpsc::UnboundedSender<Inbound>,
        shared: Arc<StreamShared>,
    },
    Data {
        id: u32,
        bytes: Bytes,
    },
    Fin {
        id: u32,
    },
    Reset {
        id: u32,
        code: u16,
        reason: String,
    },
    /// `n` bytes the mux handed to the stream's consumer reached their destination.
    Consumed {
        id: u32,
        n: u32,
    },
    /// The stream's socket, for the direct-write fast path.
    Attach {
        id: u32,
        sock: Arc<TcpStream>,
    },
    Control {
        kind: FrameType,
        stream: u32,
        payload: Bytes,
    },
    /// An unreliable datagram: dropped (and counted) if the tunnel is backed up.
    Datagram {
        flow: u32,
        payload: Bytes,
    },
    GoAway {
        code: u16,
        reason: String,
    },
    /// Reset every stream and close the tunnel now.
    Close {
        reason: String,
    },
}

/// Live counters, readable from any thread (status calls).
#[derive(Debug, Default)]
pub struct MuxStats {
    pub open_streams: AtomicU64,
    /// Payload bytes received from the peer.
    pub bytes_in: AtomicU64,
    /// Payload bytes sent to the peer.
    pub bytes_out: AtomicU64,
    /// Last heartbeat round trip in microseconds (0 = none yet).
    pub rtt_us: AtomicU64,
    /// Datagrams dropped because the tunnel was backed up.
    pub datagrams_dropped: AtomicU64,
}

/// One stream's endpoint: what a socket pump (or a test) uses to move bytes.
pub struct StreamCtx {
    pub id: u32,
    rx: mpsc::UnboundedReceiver<Inbound>,
    shared: Arc<StreamShared>,
    cmd: mpsc::UnboundedSender<Cmd>,
    max_frame: usize,
    guard: ResetOnDrop,
}

/// Resets the stream if its owner goes away without ending it (a panicking task, a dropped
/// future), so the mux never keeps a stream nobody serves.
struct ResetOnDrop {
    id: u32,
    cmd: mpsc::UnboundedSender<Cmd>,
    armed: AtomicBool,
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if self.armed.load(Ordering::Relaxed) {
            let _ = self.cmd.send(Cmd::Reset {
                id: self.id,
                code: reset::IO,
                reason: "the stream's task ended abnormally".into(),
            });
        }
    }
}

impl StreamCtx {
    fn new(
        id: u32,
        rx: mpsc::UnboundedReceiver<Inbound>,
        shared: Arc<StreamShared>,
        cmd: mpsc::UnboundedSender<Cmd>,
        max_frame: usize,
    ) -> StreamCtx {
        let guard = ResetOnDrop {
            id,
            cmd: cmd.clone(),
            armed: AtomicBool::new(true),
        };
        StreamCtx {
            id,
            rx,
            shared,
            cmd,
            max_frame,
            guard,
        }
    }
}

impl StreamCtx {
    /// Waits until this stream may send at least one byte; returns how many (≤ max frame), or
    /// `None` if the stream was reset.
    pub async fn credit(&self) -> Option<usize> {
        loop {
            if self.shared.reset.load(Ordering::Acquire) {
                return None;
            }
            let c = self.shared.credit.load(Ordering::Acquire);
            if c > 0 {
                return Some((c as usize).min(self.max_frame));
            }
            self.shared.notify.notified().await;
        }
    }

    /// Sends bytes the caller obtained credit for (≤ the last `credit()` answer).
    pub fn send(&self, bytes: Bytes) {
        self.shared.credit.fetch_sub(bytes.len() as i64, Ordering::AcqRel);
        let _ = self.cmd.send(Cmd::Data { id: self.id, bytes });
    }

    /// Convenience for tests and small writes: waits for credit and sends all of `data`.
    pub async fn send_all(&self, mut data: Bytes) -> bool {
        while !data.is_empty() {
            let Some(n) = self.credit().await else {
                return false;
            };
            let chunk = data.split_to(n.min(data.len()));
            self.send(chunk);
        }
        true
    }

    /// Half-closes our sending direction. Dropping the endpoint afterwards is a proper close.
    pub fn fin(&self) {
        self.guard.armed.store(false, Ordering::Relaxed);
        let _ = self.cmd.send(Cmd::Fin { id: self.id });
    }

    /// Aborts the stream.
    pub fn reset(&self, code: u16, reason: impl Into<String>) {
        self.guard.armed.store(false, Ordering::Relaxed);
        let _ = self.cmd.send(Cmd::Reset {
            id: self.id,
            code,
            reason: reason.into(),
        });
    }

    /// Next thing the peer sent. `None` means the mux is gone (treat as reset).
    pub async fn recv(&mut self) -> Option<Inbound> {
        self.rx.recv().await
    }

    /// Returns receive credit after the bytes were delivered to their socket.
    pub fn consumed(&self, n: usize) {
        let _ = self.cmd.send(Cmd::Consumed {
            id: self.id,
            n: n as u32,
        });
    }

    /// Pumps bytes between a TCP socket and this stream until both directions are closed or
    /// the stream is reset. The reader half waits for readability before allocating a buffer,
    /// so an idle connection costs no user-space buffer at all.
    pub async fn run_tcp(self, sock: TcpStream) {
        let _ = sock.set_nodelay(true);
        let sock = Arc::new(sock);
        let StreamCtx {
            id,
            rx,
            shared,
            cmd,
            max_frame,
            guard,
        } = self;
        // Let the mux write straight to this socket while the writer task is idle.
        let _ = cmd.send(Cmd::Attach {
            id,
            sock: sock.clone(),
        });
        let reader = tokio::spawn(pump_socket_to_mux(
            sock.clone(),
            id,
            shared.clone(),
            cmd.clone(),
            max_frame,
        ));
        let abort = pump_mux_to_socket(&sock, rx, id, &shared, &cmd).await;
        if abort {
            // Make the reader let go of the socket promptly so the RST goes out now.
            shared.abort();
        }
        // A panicked reader leaves the guard armed: the stream is reset instead of leaking.
        if reader.await.is_ok() {
            guard.armed.store(false, Ordering::Relaxed);
        }
    }
}

async fn pump_socket_to_mux(
    sock: Arc<TcpStream>,
    id: u32,
    shared: Arc<StreamShared>,
    cmd: mpsc::UnboundedSender<Cmd>,
    max_frame: usize,
) {
    // One read may take several frames' worth; `fill` cuts it into frames. Fewer, larger
    // reads mean fewer syscalls and channel messages per byte.
    let max_read = max_frame.max(SOCKET_READ);
    loop {
        if shared.reset.load(Ordering::Acquire) {
            return;
        }
        let credit = shared.credit.load(Ordering::Acquire);
        if credit <= 0 {
            shared.notify.notified().await;
            continue;
        }
        tokio::select! {
            ready = sock.readable() => {
                if let Err(e) = ready {
                    let _ = cmd.send(Cmd::Reset { id, code: reset::IO, reason: e.to_string() });
                    return;
                }
            }
            _ = shared.notify.notified() => continue,
        }
        // Allocated only once the socket is readable: an idle connection holds no buffer.
        let want = (credit as usize).min(max_read);
        let mut buf = BytesMut::with_capacity(want);
        let res = read_marking_drained(&sock, &mut buf, want);
        match res {
            Ok(0) => {
                let _ = cmd.send(Cmd::Fin { id });
                return;
            }
            Ok(n) => {
                shared.credit.fetch_sub(n as i64, Ordering::AcqRel);
                if cmd
                    .send(Cmd::Data {
                        id,
                        bytes: buf.freeze(),
                    })
                    .is_err()
                {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                let _ = cmd.send(Cmd::Reset {
                    id,
                    code: reset::IO,
                    reason: e.to_string(),
                });
                return;
            }
        }
    }
}

/// Reads up to `want` bytes into `buf`'s spare capacity. A short read means the read emptied
/// the socket: it also clears tokio's readiness, as tokio's own `poll_read` does, so the next
/// wait is for a fresh epoll event instead of a `recv` that can only return EAGAIN — a syscall
/// that would run before the mux sends these bytes, on the latency path of every request and
/// response. The readiness cleared is the one seen before the read (inside `try_io`), so data
/// arriving after it still wakes the reader.
fn read_marking_drained(sock: &TcpStream, buf: &mut BytesMut, want: usize) -> std::io::Result<usize> {
    let mut short = None;
    let res = sock.try_io(Interest::READABLE, || {
        let chunk = buf.chunk_mut();
        let len = want.min(chunk.len());
        // SAFETY: `chunk` is `len` writable bytes of spare capacity; recv only writes to them.
        let spare =
            unsafe { std::slice::from_raw_parts_mut(chunk.as_mut_ptr().cast::<MaybeUninit<u8>>(), len) };
        let n = socket2::SockRef::from(sock).recv(spare)?;
        // SAFETY: recv initialised the first `n` bytes of the spare capacity.
        unsafe { buf.advance_mut(n) };
        if n > 0 && n < len {
            short = Some(n);
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match short {
        Some(n) => Ok(n),
        None => res,
    }
}

/// Writes all of `b` using readiness + `try_write` (the socket is shared with the reader and
/// the mux, so no `&mut` writer exists).
async fn write_all_shared(sock: &TcpStream, mut b: &[u8]) -> std::io::Result<()> {
    while !b.is_empty() {
        sock.writable().await?;
        match sock.try_write(b) {
            Ok(n) => b = &b[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Returns true when the socket must be aborted (RST) rather than closed.
async fn pump_mux_to_socket(
    sock: &TcpStream,
    mut rx: mpsc::UnboundedReceiver<Inbound>,
    id: u32,
    shared: &StreamShared,
    cmd: &mpsc::UnboundedSender<Cmd>,
) -> bool {
    loop {
        match rx.recv().await {
            Some(Inbound::Data(b)) => {
                if let Err(e) = write_all_shared(sock, &b).await {
                    let _ = cmd.send(Cmd::Reset {
                        id,
                        code: reset::IO,
                        reason: format!("write failed: {e}"),
                    });
                    abortive_close(sock);
                    return true;
                }
                let _ = cmd.send(Cmd::Consumed {
                    id,
                    n: b.len() as u32,
                });
            }
            Some(Inbound::Fin) => {
                let _ = socket2::SockRef::from(sock).shutdown(std::net::Shutdown::Write);
                // Stay until the stream ends so a later RESET can still abort the socket.
                while let Some(m) = rx.recv().await {
                    if matches!(m, Inbound::Reset) {
                        abortive_close(sock);
                        return true;
                    }
                }
                return shared.reset.load(Ordering::Acquire);
            }
            Some(Inbound::Reset) | None => {
                abortive_close(sock);
                return true;
            }
        }
    }
}

/// SO_LINGER 0: the close that follows sends RST, which is what the client must see when the
/// other side failed (a clean FIN would look like a complete, truncated reply).
pub(crate) fn abortive_close(s: &TcpStream) {
    // Linger 0 never blocks (the close discards what is unsent), which is why tokio deprecates
    // `set_linger` in general and why it is fine here.
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

/// One read attempt that does not wait: `Pending` when nothing is readable right now.
async fn read_now<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut) -> Poll<std::io::Result<usize>> {
    // `read_buf` consumes nothing unless it completes, so polling it once and dropping it is
    // a non-blocking read.
    let mut read = std::pin::pin!(rd.read_buf(buf));
    std::future::poll_fn(|cx| Poll::Ready(std::future::Future::poll(read.as_mut(), cx))).await
}

/// Writes as much of `batch` as the tunnel takes (`Some(n)`), or flushes when it is empty
/// (`None`). One future, so the select loop borrows the writer once.
async fn write_or_flush<W: AsyncWrite + Unpin>(
    w: &mut W,
    batch: &OutBatch,
) -> std::io::Result<Option<usize>> {
    if batch.is_empty() {
        return w.flush().await.map(|_| None);
    }
    let mut slices = [IoSlice::new(&[]); MAX_WRITE_SLICES];
    let n = batch.slices(&mut slices);
    w.write_vectored(&slices[..n]).await.map(Some)
}

/// Largest receive window a single stream grows to. A stream's throughput is at most its window
/// per round trip of credit: 512 KiB (the default `streamWindow`) caps a lone stream at
/// ~26 MB/s over a 20 ms path, and on a busy 2-core loopback it stalled on credit whenever the
/// receiver was descheduled for ~150 µs. 2 MiB quadruples the first and absorbs the second,
/// and is an eighth of the default connection window.
const MAX_STREAM_WINDOW: u32 = 2 * 1024 * 1024;

/// The window a stream gets when it has used half of `current`: doubled, up to an equal share
/// of a quarter of the connection window among the open streams, never above
/// `MAX_STREAM_WINDOW` nor below the configured `base`. A tunnel with one or two bulk streams
/// lets them run ahead; with eight or more, other streams keep the pipe full and each stays at
/// `base` (larger windows measured slower there: more bytes in flight than the caches hold),
/// and the connection window, which bounds what a slow target makes the receiver buffer, is
/// shared rather than claimed by the first few streams.
fn grown_window(current: u32, base: u32, connection_window: u32, open_streams: usize) -> u32 {
    let share = (u64::from(connection_window) / 4 / open_streams.max(1) as u64)
        .min(u64::from(MAX_STREAM_WINDOW)) as u32;
    current.saturating_mul(2).min(share).max(current).max(base)
}

/// One half of the tunnel IO: the mux reads and writes it from one task, but its read and write
/// futures are pending at the same time, so each holds a half. Each poll takes the (never
/// contended) lock for its duration. tokio's `split` does the same but, in 1.24, drops vectored
/// writes: every frame header would become a TLS record and a `send` of its own.
struct Half<IO>(Arc<std::sync::Mutex<IO>>);

fn split_io<IO>(io: IO) -> (Half<IO>, Half<IO>) {
    let shared = Arc::new(std::sync::Mutex::new(io));
    (Half(shared.clone()), Half(shared))
}

impl<IO> Half<IO> {
    fn io(&self) -> std::sync::MutexGuard<'_, IO> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Half<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io()).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Half<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.io()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.io()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io()).poll_shutdown(cx)
    }
}

/// Frames waiting for the tunnel, as a list of buffers written with one vectored write.
#[derive(Default)]
struct OutBatch {
    parts: VecDeque<Bytes>,
    len: usize,
}

impl OutBatch {
    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.parts.push_back(b);
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first buffers (as many as fit in `out`); returns how many.
    fn slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, part) in out.iter_mut().zip(&self.parts) {
            *slot = IoSlice::new(part);
            n += 1;
        }
        n
    }

    /// Drops the first `n` bytes (written).
    fn advance(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let Some(front) = self.parts.front_mut() else {
                break;
            };
            if front.len() <= n {
                n -= front.len();
                self.parts.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
}

/// A stream the peer opened, handed to the [`Handler`].
pub struct RemoteStream {
    pub record: OpenRecord,
    pub io: StreamIo,
}

/// One stream's endpoint on either transport.
pub enum StreamIo {
    /// A stream of the TLS muxer.
    Mux(StreamCtx),
    /// A QUIC bidirectional stream; its end is reported to the driver through `closed`.
    Quic {
        id: u64,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        stats: Arc<MuxStats>,
        closed: mpsc::UnboundedSender<ClosedStream>,
        port: u16,
    },
}

impl StreamIo {
    pub fn id(&self) -> u64 {
        match self {
            StreamIo::Mux(c) => u64::from(c.id),
            StreamIo::Quic { id, .. } => *id,
        }
    }

    /// Aborts the stream (the peer's client sees RST).
    pub fn reset(self, code: u16, reason: impl Into<String>) {
        match self {
            StreamIo::Mux(c) => c.reset(code, reason),
            StreamIo::Quic {
                id,
                mut send,
                mut recv,
                closed,
                port,
                ..
            } => {
                let _ = send.reset(quinn::VarInt::from_u32(u32::from(code)));
                let _ = recv.stop(quinn::VarInt::from_u32(u32::from(code)));
                let _ = closed.send(ClosedStream {
                    id,
                    listen_port: port,
                    bytes_in: 0,
                    bytes_out: 0,
                    reset: Some((code, reason.into())),
                });
            }
        }
    }

    /// Pumps bytes between `sock` and the stream until it ends.
    pub async fn run_tcp(self, sock: TcpStream) {
        match self {
            StreamIo::Mux(c) => c.run_tcp(sock).await,
            StreamIo::Quic {
                id,
                send,
                recv,
                stats,
                closed,
                port,
            } => {
                stats.open_streams.fetch_add(1, Ordering::Relaxed);
                let (bytes_in, bytes_out, reset) = crate::quic::pump(sock, send, recv).await;
                stats.open_streams.fetch_sub(1, Ordering::Relaxed);
                stats.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
                stats.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
                let _ = closed.send(ClosedStream {
                    id,
                    listen_port: port,
                    bytes_in,
                    bytes_out,
                    reset,
                });
            }
        }
    }
}

/// A stream that ended, with its totals.
#[derive(Debug, Clone)]
pub struct ClosedStream {
    pub id: u64,
    pub listen_port: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// `None` = both sides finished cleanly; otherwise the RESET code and reason.
    pub reset: Option<(u16, String)>,
}

/// What the owner of a muxer (hub session or edge tunnel) reacts to. Called on the mux task:
/// implementations spawn work and return quickly.
pub trait Handler: Send + 'static {
    fn on_open(&mut self, stream: RemoteStream);
    /// CONFIG / CONFIG_ACK / DATAGRAM frames. An error closes the tunnel.
    fn on_control(&mut self, frame: Frame) -> Result<(), Error>;
    fn on_closed(&mut self, closed: ClosedStream);
    fn on_goaway(&mut self, _code: u16, _reason: &str) {}
}

/// The owner's handle on a running muxer.
#[derive(Clone)]
pub struct MuxHandle {
    cmd: mpsc::UnboundedSender<Cmd>,
    next_id: Arc<AtomicU32>,
    pub stats: Arc<MuxStats>,
    config: Arc<MuxConfig>,
    going_away: Arc<AtomicBool>,
}

impl MuxHandle {
    /// Opens a local stream (edge: one per accepted client). `None` if the tunnel is closing.
    pub fn open(&self, record: OpenRecord) -> Option<StreamCtx> {
        if self.going_away.load(Ordering::Acquire) {
            return None;
        }
        let id = self.next_id.fetch_add(2, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = StreamShared::new(self.config.stream_window);
        self.cmd
            .send(Cmd::Open {
                id,
                record,
                tx,
                shared: shared.clone(),
            })
            .ok()?;
        Some(StreamCtx::new(
            id,
            rx,
            shared,
            self.cmd.clone(),
            self.config.max_frame,
        ))
    }

    /// Sends a control frame (CONFIG, CONFIG_ACK, FLOW_OPEN, FLOW_CLOSE) ahead of all data.
    /// `stream` is 0, or the flow id for flow frames.
    pub fn control(&self, kind: FrameType, stream: u32, payload: Bytes) {
        let _ = self.cmd.send(Cmd::Control {
            kind,
            stream,
            payload,
        });
    }

    /// Sends a UDP datagram for `flow` (dropped if the tunnel is backed up, like UDP).
    pub fn datagram(&self, flow: u32, payload: Bytes) {
        let _ = self.cmd.send(Cmd::Datagram { flow, payload });
    }

    /// Announces drain: the peer opens nothing new; open streams carry on.
    pub fn go_away(&self, code: u16, reason: &str) {
        self.going_away.store(true, Ordering::Release);
        let _ = self.cmd.send(Cmd::GoAway {
            code,
            reason: reason.to_string(),
        });
    }

    /// Resets all streams and closes the tunnel.
    pub fn close(&self, reason: &str) {
        let _ = self.cmd.send(Cmd::Close {
            reason: reason.to_string(),
        });
    }

    pub fn is_closed(&self) -> bool {
        self.cmd.is_closed()
    }

    pub fn open_streams(&self) -> u64 {
        self.stats.open_streams.load(Ordering::Relaxed)
    }
}

struct StreamState {
    tx: Option<mpsc::UnboundedSender<Inbound>>,
    shared: Arc<StreamShared>,
    listen_port: u16,
    /// Bytes the peer may still send us on this stream.
    recv_remaining: u32,
    /// This stream's receive window: `stream_window` at first, grown for bulk streams while
    /// the tunnel carries few (see `grown_window`).
    recv_window: u32,
    /// Bytes consumed but not yet returned with WINDOW.
    recv_unacked: u32,
    outq: VecDeque<Bytes>,
    /// FIN to send once `outq` drains.
    out_fin: bool,
    in_ready: bool,
    local_done: bool,
    remote_done: bool,
    bytes_in: u64,
    bytes_out: u64,
    /// The destination socket once attached: while `at_writer` is 0 the mux writes received
    /// data to it directly (`try_write`), saving the hop through the writer task — the
    /// difference between a tunnel that adds one scheduler wakeup per direction and one that
    /// adds two.
    sock: Option<Arc<TcpStream>>,
    /// Bytes handed to the stream's consumer (writer task or `StreamCtx` owner) and not yet
    /// reported consumed. Returned to the connection window if the stream is dropped first.
    at_writer: u64,
    /// Payloads received in the current batch of frames, delivered together by
    /// `deliver_pending` (one `writev` instead of one write per 16 KiB frame).
    pending: Vec<Bytes>,
    /// The peer's FIN arrived in the current batch, after `pending`.
    pending_fin: bool,
    /// Listed in `Mux::touched`.
    touched: bool,
}

/// Creates a muxer over `io` and returns its handle plus the future that runs it. The future
/// resolves when the tunnel ends, with why.
pub fn start<IO, H>(
    io: IO,
    config: MuxConfig,
    handler: H,
) -> (MuxHandle, impl std::future::Future<Output = Error>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let config = Arc::new(config);
    let handle = MuxHandle {
        cmd: tx.clone(),
        next_id: Arc::new(AtomicU32::new(match config.side {
            Side::Edge => 1,
            Side::Hub => 2,
        })),
        stats: Arc::new(MuxStats::default()),
        config: config.clone(),
        going_away: Arc::new(AtomicBool::new(false)),
    };
    let mut mux = Mux {
        cfg: config,
        handler,
        cmd_tx: tx,
        streams: HashMap::new(),
        ready: VecDeque::new(),
        touched: Vec::new(),
        control: BytesMut::new(),
        dgrams: BytesMut::new(),
        wbuf: OutBatch::default(),
        hdrs: BytesMut::new(),
        conn_send_credit: 0,
        conn_recv_remaining: 0,
        conn_recv_unacked: 0,
        last_remote_id: 0,
        stats: handle.stats.clone(),
        going_away: handle.going_away.clone(),
        remote_going_away: None,
        started: Instant::now(),
        last_recv: Instant::now(),
        ping_outstanding: None,
    };
    mux.conn_send_credit = i64::from(mux.cfg.connection_window);
    mux.conn_recv_remaining = mux.cfg.connection_window;
    let fut = async move { mux.run(io, rx).await };
    (handle, fut)
}

struct Mux<H: Handler> {
    cfg: Arc<MuxConfig>,
    handler: H,
    cmd_tx: mpsc::UnboundedSender<Cmd>,
    streams: HashMap<u32, StreamState>,
    ready: VecDeque<u32>,
    /// Streams with `pending` data from the frames being processed.
    touched: Vec<u32>,
    /// Encoded control frames waiting to go out ahead of data.
    control: BytesMut,
    /// Encoded DATAGRAM frames (bounded; see MAX_PENDING_DATAGRAMS).
    dgrams: BytesMut,
    /// The next write to the tunnel: frame headers, control frames and stream payloads as
    /// they are (the readers' buffers), written with one vectored write.
    wbuf: OutBatch,
    /// Where frame headers (and small payloads) are encoded before being split off into `wbuf`.
    hdrs: BytesMut,
    conn_send_credit: i64,
    conn_recv_remaining: u32,
    conn_recv_unacked: u32,
    last_remote_id: u32,
    stats: Arc<MuxStats>,
    going_away: Arc<AtomicBool>,
    /// The peer's GOAWAY reason, once it sent one.
    remote_going_away: Option<String>,
    started: Instant,
    last_recv: Instant,
    ping_outstanding: Option<u64>,
}

impl<H: Handler> Mux<H> {
    async fn run<IO>(&mut self, io: IO, mut rx: mpsc::UnboundedReceiver<Cmd>) -> Error
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut rd, mut wr) = split_io(io);
        let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
        let mut heartbeat = tokio::time::interval(self.cfg.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut need_flush = false;
        let why = loop {
            if self.control.len() > MAX_PENDING_CONTROL {
                break Error::Protocol("peer is not reading its control frames".into());
            }
            if self.wbuf.is_empty() {
                self.fill();
            }
            let datagrams_waiting = !self.dgrams.is_empty();
            if (self.going_away.load(Ordering::Acquire) || self.remote_going_away.is_some())
                && self.streams.is_empty()
                && self.wbuf.is_empty()
                && self.control.is_empty()
                && !datagrams_waiting
            {
                let _ = wr.flush().await;
                let _ = wr.shutdown().await;
                break Error::GoAway(match self.remote_going_away.take() {
                    Some(r) => format!("drained after the peer's GOAWAY: {r}"),
                    None => "drained".into(),
                });
            }
            if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
                rbuf.reserve(READ_CHUNK);
            }
            let has_out = !self.wbuf.is_empty();
            tokio::select! {
                biased;
                cmd = rx.recv() => {
                    // `rx` can't close: the mux itself holds a sender.
                    let Some(cmd) = cmd else { break Error::LocalClosed("handle dropped".into()) };
                    if let Err(e) = self.on_cmd(cmd) { break e; }
                    // Drain what else is queued so one wakeup handles a burst.
                    let mut n = 0;
                    while n < 256 {
                        match rx.try_recv() {
                            Ok(cmd) => if let Err(e) = self.on_cmd(cmd) { return self.finish(e) },
                            Err(_) => break,
                        }
                        n += 1;
                    }
                }
                res = write_or_flush(&mut wr, &self.wbuf), if has_out || need_flush => {
                    match res {
                        Ok(Some(0)) => break Error::PeerClosed("tunnel socket closed for writing".into()),
                        Ok(Some(n)) => {
                            self.wbuf.advance(n);
                            need_flush = true;
                        }
                        Ok(None) => need_flush = false,
                        Err(e) => break Error::PeerClosed(format!("write: {e}")),
                    }
                }
                res = rd.read_buf(&mut rbuf) => {
                    match res {
                        Ok(0) => break self.read_ended(Ok(())),
                        Ok(n) => {
                            self.last_recv = Instant::now();
                            // Take what else is already readable (decrypted or buffered), so
                            // one pass over the frames can give each stream one `writev`.
                            // A short read (a PING, one small message) means nothing is
                            // queued behind it: skip the extra attempt, which would only cost
                            // a syscall on the latency path.
                            let mut end = None;
                            let mut last = n;
                            while last >= GATHER_MORE_AFTER && rbuf.len() < READ_BATCH {
                                if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
                                    rbuf.reserve(READ_CHUNK);
                                }
                                match read_now(&mut rd, &mut rbuf).await {
                                    Poll::Ready(Ok(0)) => { end = Some(Ok(())); break; }
                                    Poll::Ready(Ok(k)) => last = k,
                                    Poll::Ready(Err(e)) => { end = Some(Err(e)); break; }
                                    Poll::Pending => break,
                                }
                            }
                            let res = self.on_bytes(&mut rbuf);
                            self.deliver_pending();
                            if let Err(e) = res { break e; }
                            if let Some(end) = end { break self.read_ended(end); }
                        }
                        Err(e) => break self.read_ended(Err(e)),
                    }
                }
                _ = heartbeat.tick() => {
                    if self.last_recv.elapsed() > self.cfg.heartbeat_timeout {
                        break Error::Timeout(format!(
                            "no frame from the peer for {} ms (heartbeat timeout)",
                            self.last_recv.elapsed().as_millis()
                        ));
                    }
                    let stamp = self.started.elapsed().as_micros() as u64;
                    if self.ping_outstanding.is_none() {
                        self.ping_outstanding = Some(stamp);
                    }
                    frame::encode(&mut self.control, FrameType::Ping, 0, 0, &stamp.to_be_bytes());
                }
            }
        };
        // Best effort: tell the peer why, if it is a local decision, then close the TLS
        // session properly (close_notify) so the peer sees an orderly end, not a truncation.
        // Bounded: a peer that stopped reading must not hold up the close.
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            if matches!(
                why,
                Error::Protocol(_) | Error::LocalClosed(_) | Error::Timeout(_)
            ) {
                let mut out = BytesMut::new();
                let p = frame::goaway_payload(self.last_remote_id, 1, &why.to_string());
                frame::encode(&mut out, FrameType::GoAway, 0, 0, &p);
                let _ = wr.write_all(&out).await;
            }
            let _ = wr.shutdown().await;
        })
        .await;
        if matches!(why, Error::GoAway(_) | Error::LocalClosed(_)) {
            // An orderly close: read (and discard) until the peer closes too. Dropping a socket
            // with unread input sends RST, and an RST makes the peer's kernel throw away what
            // it received but its application has not read yet — the tail of the last streams.
            let _ = tokio::time::timeout(DRAIN_LINGER, async {
                let mut sink = BytesMut::with_capacity(16 * 1024);
                loop {
                    sink.clear();
                    match rd.read_buf(&mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
        self.finish(why)
    }

    /// Why the tunnel ended when its read side did: EOF (`Ok`) or an error.
    fn read_ended(&mut self, how: std::io::Result<()>) -> Error {
        match (self.remote_going_away.take(), how) {
            // The peer said goodbye; how its socket then closed does not matter.
            (Some(reason), _) => Error::GoAway(reason),
            (None, Ok(())) => Error::PeerClosed("tunnel closed by peer".into()),
            (None, Err(e)) => Error::PeerClosed(format!("read: {e}")),
        }
    }

    /// Ends every stream (their sockets are aborted) and reports them closed.
    fn finish(&mut self, why: Error) -> Error {
        let reason = why.to_string();
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            if let Some(st) = self.streams.remove(&id) {
                self.drop_stream(id, st, Some((reset::SHUTDOWN, reason.clone())));
            }
        }
        why
    }

    fn drop_stream(&mut self, id: u32, st: StreamState, reset: Option<(u16, String)>) {
        // What the peer sent that will now never reach a socket frees connection window: keep
        // it, and a tunnel whose clients keep vanishing mid-transfer slowly stops moving.
        let held = st.at_writer + st.pending.iter().map(|b| b.len() as u64).sum::<u64>();
        if held > 0 {
            self.give_back_connection_credit(held.min(u64::from(u32::MAX)) as u32);
        }
        if reset.is_some() {
            st.shared.abort();
            if let Some(tx) = &st.tx {
                let _ = tx.send(Inbound::Reset);
            }
        }
        self.stats.open_streams.fetch_sub(1, Ordering::Relaxed);
        self.handler.on_closed(ClosedStream {
            id: u64::from(id),
            listen_port: st.listen_port,
            bytes_in: st.bytes_in,
            bytes_out: st.bytes_out,
            reset,
        });
    }

    fn maybe_remove(&mut self, id: u32) {
        let done =
            matches!(self.streams.get(&id), Some(st) if st.local_done && st.remote_done && !st.touched);
        if done {
            if let Some(st) = self.streams.remove(&id) {
                self.drop_stream(id, st, None);
            }
        }
    }

    fn new_stream(
        &mut self,
        id: u32,
        listen_port: u16,
        tx: mpsc::UnboundedSender<Inbound>,
        shared: Arc<StreamShared>,
    ) {
        self.stats.open_streams.fetch_add(1, Ordering::Relaxed);
        self.streams.insert(
            id,
            StreamState {
                tx: Some(tx),
                shared,
                listen_port,
                recv_remaining: self.cfg.stream_window,
                recv_window: self.cfg.stream_window,
                recv_unacked: 0,
                outq: VecDeque::new(),
                out_fin: false,
                in_ready: false,
                local_done: false,
                remote_done: false,
                bytes_in: 0,
                bytes_out: 0,
                sock: None,
                at_writer: 0,
                pending: Vec::new(),
                pending_fin: false,
                touched: false,
            },
        );
    }

    fn mark_ready(&mut self, id: u32) {
        if let Some(st) = self.streams.get_mut(&id) {
            if !st.in_ready {
                st.in_ready = true;
                self.ready.push_back(id);
            }
        }
    }

    fn on_cmd(&mut self, cmd: Cmd) -> Result<(), Error> {
        match cmd {
            Cmd::Open {
                id,
                record,
                tx,
                shared,
            } => {
                if self.streams.len() as u32 >= self.cfg.max_streams {
                    shared.abort();
                    let _ = tx.send(Inbound::Reset);
                    return Ok(());
                }
                let mut p = BytesMut::with_capacity(frame::OPEN_RECORD_MAX);
                record.encode(&mut p);
                frame::encode(&mut self.control, FrameType::Open, 0, id, &p);
                self.new_stream(id, record.listen_port, tx, shared);
            }
            Cmd::Data { id, bytes } => {
                if let Some(st) = self.streams.get_mut(&id) {
                    if !st.local_done && !st.out_fin {
                        st.outq.push_back(bytes);
                        self.mark_ready(id);
                    }
                }
            }
            Cmd::Fin { id } => {
                if let Some(st) = self.streams.get_mut(&id) {
                    if !st.local_done {
                        st.out_fin = true;
                        self.mark_ready(id);
                    }
                }
            }
            Cmd::Reset { id, code, reason } => {
                if let Some(st) = self.streams.remove(&id) {
                    if !(st.local_done && st.remote_done) {
                        let p = frame::reset_payload(code, &reason);
                        frame::encode(&mut self.control, FrameType::Reset, 0, id, &p);
                    }
                    self.drop_stream(id, st, Some((code, reason)));
                }
            }
            Cmd::Attach { id, sock } => {
                if let Some(st) = self.streams.get_mut(&id) {
                    st.sock = Some(sock);
                }
            }
            Cmd::Consumed { id, n } => {
                // A stream already gone returned all it held when it was dropped
                // (`drop_stream`), so a late report must not return it twice.
                if let Some(st) = self.streams.get_mut(&id) {
                    st.at_writer = st.at_writer.saturating_sub(u64::from(n));
                    self.return_credit(id, n);
                }
            }
            Cmd::Control {
                kind,
                stream,
                payload,
            } => {
                frame::encode(&mut self.control, kind, 0, stream, &payload);
            }
            Cmd::Datagram { flow, payload } => {
                if self.dgrams.len() + payload.len() > MAX_PENDING_DATAGRAMS {
                    self.stats.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
                } else {
                    frame::encode(&mut self.dgrams, FrameType::Datagram, 0, flow, &payload);
                }
            }
            Cmd::GoAway { code, reason } => {
                self.going_away.store(true, Ordering::Release);
                let p = frame::goaway_payload(self.last_remote_id, code, &reason);
                frame::encode(&mut self.control, FrameType::GoAway, 0, 0, &p);
            }
            Cmd::Close { reason } => return Err(Error::LocalClosed(reason)),
        }
        Ok(())
    }

    /// Moves control frames, then round-robin data, into the write buffer.
    fn fill(&mut self) {
        if !self.control.is_empty() {
            self.wbuf.push(self.control.split().freeze());
        }
        if !self.dgrams.is_empty() {
            // Datagrams go before stream data (they are latency-sensitive and never wait for
            // credit), but at most half a batch per turn so streams still move.
            let mut take = 0;
            while take < self.dgrams.len() && take < WRITE_BATCH / 2 {
                let len = (usize::from(self.dgrams[take]) << 16)
                    | (usize::from(self.dgrams[take + 1]) << 8)
                    | usize::from(self.dgrams[take + 2]);
                take += frame::HEADER_LEN + len;
            }
            self.wbuf.push(self.dgrams.split_to(take).freeze());
        }
        while self.wbuf.len() < WRITE_BATCH {
            let Some(id) = self.ready.pop_front() else { break };
            let Some(st) = self.streams.get_mut(&id) else {
                continue;
            };
            st.in_ready = false;
            let mut finished = false;
            if let Some(chunk) = st.outq.front_mut() {
                if self.conn_send_credit <= 0 {
                    st.in_ready = true;
                    self.ready.push_front(id);
                    break;
                }
                let n = chunk
                    .len()
                    .min(self.cfg.max_frame)
                    .min(self.conn_send_credit as usize);
                let piece = chunk.split_to(n);
                if chunk.is_empty() {
                    st.outq.pop_front();
                }
                let fin = st.outq.is_empty() && st.out_fin;
                let flags = if fin { FLAG_FIN } else { 0 };
                self.hdrs.reserve(frame::HEADER_LEN + COPY_PAYLOAD_UP_TO);
                self.hdrs
                    .extend_from_slice(&frame::header(FrameType::Data, flags, id, n));
                if n <= COPY_PAYLOAD_UP_TO {
                    self.hdrs.extend_from_slice(&piece);
                    self.wbuf.push(self.hdrs.split().freeze());
                } else {
                    self.wbuf.push(self.hdrs.split().freeze());
                    self.wbuf.push(piece);
                }
                self.conn_send_credit -= n as i64;
                st.bytes_out += n as u64;
                self.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                if fin {
                    st.out_fin = false;
                    st.local_done = true;
                    finished = true;
                }
            } else if st.out_fin {
                self.hdrs
                    .extend_from_slice(&frame::header(FrameType::Data, FLAG_FIN, id, 0));
                self.wbuf.push(self.hdrs.split().freeze());
                st.out_fin = false;
                st.local_done = true;
                finished = true;
            }
            if !st.outq.is_empty() || st.out_fin {
                st.in_ready = true;
                self.ready.push_back(id);
            }
            if finished {
                self.maybe_remove(id);
            }
        }
    }

    fn on_bytes(&mut self, rbuf: &mut BytesMut) -> Result<(), Error> {
        loop {
            match frame::decode(rbuf) {
                Ok(Some(Decoded::Frame(f))) => self.on_frame(f)?,
                Ok(Some(Decoded::Skipped)) => {}
                Ok(None) => return Ok(()),
                Err(e) => return Err(Error::Protocol(e.to_string())),
            }
        }
    }

    fn on_frame(&mut self, f: Frame) -> Result<(), Error> {
        crate::supervise::check(crate::supervise::FaultPoint::Tunnel);
        match f.kind {
            FrameType::Data => self.on_data(f),
            FrameType::Open => self.on_open(f),
            FrameType::Window => {
                let inc = frame::read_u32(&f.payload);
                if f.stream == 0 {
                    self.conn_send_credit += i64::from(inc);
                    if self.conn_send_credit > i64::from(u32::MAX) * 4 {
                        return Err(Error::Protocol("connection window overflow".into()));
                    }
                } else if let Some(st) = self.streams.get(&f.stream) {
                    let c = st.shared.credit.fetch_add(i64::from(inc), Ordering::AcqRel);
                    if c + i64::from(inc) > i64::from(u32::MAX) {
                        return Err(Error::Protocol(format!("stream {} window overflow", f.stream)));
                    }
                    st.shared.notify.notify_one();
                }
                Ok(())
            }
            FrameType::Reset => {
                let (code, reason) =
                    frame::parse_reset(&f.payload).map_err(|e| Error::Protocol(e.to_string()))?;
                if let Some(st) = self.streams.remove(&f.stream) {
                    self.drop_stream(f.stream, st, Some((code, reason)));
                }
                Ok(())
            }
            FrameType::Ping => {
                if f.flags & FLAG_ACK != 0 {
                    let stamp = frame::read_u64(&f.payload);
                    if self.ping_outstanding == Some(stamp) {
                        self.ping_outstanding = None;
                        let now = self.started.elapsed().as_micros() as u64;
                        self.stats
                            .rtt_us
                            .store(now.saturating_sub(stamp).max(1), Ordering::Relaxed);
                    }
                } else {
                    frame::encode(&mut self.control, FrameType::Ping, FLAG_ACK, 0, &f.payload);
                }
                Ok(())
            }
            FrameType::GoAway => {
                let (_last, code, reason) =
                    frame::parse_goaway(f.kind, &f.payload).map_err(|e| Error::Protocol(e.to_string()))?;
                self.remote_going_away = Some(reason.clone());
                self.going_away.store(true, Ordering::Release);
                self.handler.on_goaway(code, &reason);
                Ok(())
            }
            FrameType::Config
            | FrameType::ConfigAck
            | FrameType::Datagram
            | FrameType::FlowOpen
            | FrameType::FlowClose => self.handler.on_control(f),
            FrameType::Challenge | FrameType::Auth | FrameType::AuthOk | FrameType::AuthFail => {
                Err(Error::Protocol(format!("{:?} frame after the handshake", f.kind)))
            }
        }
    }

    fn on_data(&mut self, f: Frame) -> Result<(), Error> {
        let n = f.payload.len() as u32;
        if n > self.conn_recv_remaining {
            return Err(Error::Protocol("peer exceeded the connection window".into()));
        }
        self.conn_recv_remaining -= n;
        self.stats.bytes_in.fetch_add(u64::from(n), Ordering::Relaxed);
        if !self.streams.contains_key(&f.stream) {
            // Data for a stream we already reset: drop it but give the connection credit back.
            self.give_back_connection_credit(n);
            return Ok(());
        }
        let Some(st) = self.streams.get_mut(&f.stream) else {
            return Ok(());
        };
        if st.remote_done {
            return Err(Error::Protocol(format!(
                "DATA on stream {} after its FIN",
                f.stream
            )));
        }
        if n > st.recv_remaining {
            return Err(Error::Protocol(format!(
                "peer exceeded stream {}'s window",
                f.stream
            )));
        }
        st.recv_remaining -= n;
        st.bytes_in += u64::from(n);
        let fin = f.flags & FLAG_FIN != 0;
        if n > 0 {
            st.pending.push(f.payload);
        }
        if fin {
            st.remote_done = true;
            st.pending_fin = true;
        }
        if !st.touched {
            st.touched = true;
            self.touched.push(f.stream);
        }
        Ok(())
    }

    /// Hands what the last batch of frames carried to each stream's socket: straight to the
    /// socket in one `writev` while its writer task is idle (byte order is safe: nothing is
    /// queued ahead), the rest to the writer task.
    fn deliver_pending(&mut self) {
        let mut touched = std::mem::take(&mut self.touched);
        for id in touched.drain(..) {
            let Some(st) = self.streams.get_mut(&id) else {
                continue;
            };
            st.touched = false;
            let fin = std::mem::take(&mut st.pending_fin);
            let mut written = 0usize;
            if !st.pending.is_empty() && st.at_writer == 0 {
                if let Some(sock) = &st.sock {
                    let res = if let [one] = st.pending.as_slice() {
                        // One chunk (a request, a reply): no slice list to build.
                        sock.try_write(one)
                    } else {
                        let slices: Vec<IoSlice<'_>> = st
                            .pending
                            .iter()
                            .take(MAX_WRITE_SLICES)
                            .map(|b| IoSlice::new(b))
                            .collect();
                        sock.try_write_vectored(&slices)
                    };
                    if let Ok(k) = res {
                        written = k;
                    }
                }
            }
            let mut skip = written;
            let mut undelivered = 0usize;
            // Drained in place: the list keeps its capacity for the next batch.
            for mut b in st.pending.drain(..) {
                if skip >= b.len() {
                    skip -= b.len();
                    continue;
                }
                b.advance(skip);
                skip = 0;
                let len = b.len();
                match &st.tx {
                    Some(tx) if tx.send(Inbound::Data(b)).is_ok() => st.at_writer += len as u64,
                    // The writer is gone (its socket failed and a RESET is on its way): the
                    // bytes will never be consumed.
                    _ => undelivered += len,
                }
            }
            if st.pending.capacity() > PENDING_KEEP {
                // A peer sending tiny frames must not leave every stream holding a long list.
                st.pending = Vec::new();
            }
            if fin {
                if let Some(tx) = &st.tx {
                    let _ = tx.send(Inbound::Fin);
                }
            }
            if undelivered > 0 {
                self.give_back_connection_credit(undelivered as u32);
            }
            if written > 0 {
                self.return_credit(id, written as u32);
            }
            if fin {
                self.maybe_remove(id);
            }
        }
        self.touched = touched;
    }

    /// Bytes of stream `id` reached their socket: return the receive credit once half the
    /// stream's window is consumed, growing the window of a stream that keeps using it (see
    /// `grown_window`). Each WINDOW frame costs a record, a `send` and a wake-up of the sender's
    /// process; at quarter-window steps a 3 GB/s stream made 24,000 a second (~10 % of both
    /// daemons' CPU), while the half window still in flight covers the path's bandwidth × RTT
    /// wherever the window itself does.
    fn return_credit(&mut self, id: u32, n: u32) {
        self.give_back_connection_credit(n);
        let open = self.streams.len();
        if let Some(st) = self.streams.get_mut(&id) {
            st.recv_unacked += n;
            if st.recv_unacked >= st.recv_window / 2 && !st.remote_done {
                let grown = grown_window(
                    st.recv_window,
                    self.cfg.stream_window,
                    self.cfg.connection_window,
                    open,
                );
                let inc = std::mem::take(&mut st.recv_unacked) + (grown - st.recv_window);
                st.recv_window = grown;
                st.recv_remaining += inc;
                frame::encode(&mut self.control, FrameType::Window, 0, id, &inc.to_be_bytes());
            }
        }
    }

    fn give_back_connection_credit(&mut self, n: u32) {
        self.conn_recv_unacked += n;
        if self.conn_recv_unacked >= self.cfg.connection_window / 4 {
            let inc = std::mem::take(&mut self.conn_recv_unacked);
            self.conn_recv_remaining += inc;
            frame::encode(&mut self.control, FrameType::Window, 0, 0, &inc.to_be_bytes());
        }
    }

    fn on_open(&mut self, f: Frame) -> Result<(), Error> {
        let theirs = match self.cfg.side {
            Side::Hub => f.stream & 1 == 1,
            Side::Edge => f.stream & 1 == 0,
        };
        if !theirs || f.stream <= self.last_remote_id {
            return Err(Error::Protocol(format!(
                "OPEN with invalid stream id {}",
                f.stream
            )));
        }
        self.last_remote_id = f.stream;
        let record = OpenRecord::decode(&f.payload).map_err(|e| Error::Protocol(e.to_string()))?;
        if self.going_away.load(Ordering::Acquire) || self.streams.len() as u32 >= self.cfg.max_streams {
            let why = if self.going_away.load(Ordering::Acquire) {
                "tunnel is draining"
            } else {
                "too many streams on this tunnel"
            };
            let p = frame::reset_payload(reset::REFUSED, why);
            frame::encode(&mut self.control, FrameType::Reset, 0, f.stream, &p);
            return Ok(());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = StreamShared::new(self.cfg.stream_window);
        self.new_stream(f.stream, record.listen_port, tx, shared.clone());
        let ctx = StreamCtx::new(f.stream, rx, shared, self.cmd_tx.clone(), self.cfg.max_frame);
        self.handler.on_open(RemoteStream {
            record,
            io: StreamIo::Mux(ctx),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::open::KIND_TCP;
    use std::sync::Mutex;

    /// A writer that records how many slices each vectored write brought.
    #[derive(Default)]
    struct SliceCounter {
        writes: Vec<usize>,
    }

    impl AsyncRead for SliceCounter {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            _buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for SliceCounter {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            self.writes.push(bufs.len());
            Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn lone_bulk_streams_grow_their_window_and_crowds_do_not() {
        let (base, conn) = (512 * 1024, 16 * 1024 * 1024);
        // One or two streams: doubling up to MAX_STREAM_WINDOW.
        assert_eq!(grown_window(base, base, conn, 1), 2 * base);
        assert_eq!(grown_window(2 * base, base, conn, 2), MAX_STREAM_WINDOW);
        assert_eq!(grown_window(MAX_STREAM_WINDOW, base, conn, 1), MAX_STREAM_WINDOW);
        // Nine streams (iperf3 -P 8): a quarter of the connection window shared is below the
        // base, which stays.
        assert_eq!(grown_window(base, base, conn, 9), base);
        // A window never shrinks, and a configured base above the cap is kept.
        assert_eq!(grown_window(2 * base, base, conn, 1000), 2 * base);
        assert_eq!(grown_window(8 << 20, 8 << 20, conn, 1), 8 << 20);
    }

    /// A batch of frames reaches the transport as one vectored write (one TLS `send` of whole
    /// records), not one write per frame header and payload.
    #[tokio::test]
    async fn the_write_half_passes_vectored_writes_through() {
        let (_rd, mut wr) = split_io(SliceCounter::default());
        assert!(wr.is_write_vectored());
        let mut batch = OutBatch::default();
        for i in 0..6u8 {
            batch.push(Bytes::from(vec![i; 9]));
            batch.push(Bytes::from(vec![i; 16 * 1024]));
        }
        let n = write_or_flush(&mut wr, &batch).await.unwrap();
        assert_eq!(n, Some(6 * (9 + 16 * 1024)));
        assert_eq!(wr.io().writes, vec![12]);
    }

    #[derive(Clone, Default)]
    struct Collect {
        opened: Arc<Mutex<Vec<RemoteStream>>>,
        closed: Arc<Mutex<Vec<ClosedStream>>>,
        notify: Arc<Notify>,
    }

    impl Handler for Collect {
        fn on_open(&mut self, s: RemoteStream) {
            self.opened.lock().unwrap().push(s);
            self.notify.notify_one();
        }
        fn on_control(&mut self, _f: Frame) -> Result<(), Error> {
            Ok(())
        }
        fn on_closed(&mut self, c: ClosedStream) {
            self.closed.lock().unwrap().push(c);
            self.notify.notify_one();
        }
    }

    impl Collect {
        async fn next_open(&self) -> Remote {
            loop {
                if let Some(s) = self.opened.lock().unwrap().pop() {
                    let StreamIo::Mux(ctx) = s.io else {
                        panic!("the TLS muxer hands out muxer streams")
                    };
                    return Remote {
                        record: s.record,
                        ctx,
                    };
                }
                self.notify.notified().await;
            }
        }
    }

    struct Remote {
        record: OpenRecord,
        ctx: StreamCtx,
    }

    fn cfg(side: Side) -> MuxConfig {
        MuxConfig {
            side,
            max_frame: 1024,
            stream_window: 8 * 1024,
            connection_window: 64 * 1024,
            max_streams: 100,
            heartbeat_interval: Duration::from_millis(50),
            heartbeat_timeout: Duration::from_millis(400),
        }
    }

    fn record() -> OpenRecord {
        OpenRecord {
            kind: KIND_TCP,
            service: 0,
            listen_port: 80,
            client: "127.0.0.2:5000".parse().unwrap(),
            local: "127.0.0.1:80".parse().unwrap(),
        }
    }

    fn pair() -> (MuxHandle, Collect, MuxHandle, Collect) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let ca = Collect::default();
        let cb = Collect::default();
        let (ha, fa) = start(a, cfg(Side::Edge), ca.clone());
        let (hb, fb) = start(b, cfg(Side::Hub), cb.clone());
        tokio::spawn(fa);
        tokio::spawn(fb);
        (ha, ca, hb, cb)
    }

    /// Reads everything until FIN, returning consumed credit as it goes.
    async fn read_all(ctx: &mut StreamCtx) -> Result<Vec<u8>, ()> {
        let mut out = Vec::new();
        loop {
            match ctx.recv().await {
                Some(Inbound::Data(b)) => {
                    ctx.consumed(b.len());
                    out.extend_from_slice(&b);
                }
                Some(Inbound::Fin) => return Ok(out),
                Some(Inbound::Reset) | None => return Err(()),
            }
        }
    }

    fn pattern(n: usize, seed: u8) -> Bytes {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<_>>()
            .into()
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_with_half_close() {
        let (edge, _ce, _hub, ch) = pair();
        let mut local = edge.open(record()).unwrap();
        let mut remote = ch.next_open().await;
        assert_eq!(remote.record, record());
        // 200 KiB is 25× the stream window: only works if WINDOW updates flow.
        let up = pattern(200 * 1024, 1);
        let sender = {
            let up = up.clone();
            tokio::spawn(async move {
                assert!(local.send_all(up).await);
                local.fin();
                // Half-closed: we still receive the reply.
                let reply = read_all(&mut local).await.unwrap();
                reply
            })
        };
        let got = read_all(&mut remote.ctx).await.unwrap();
        assert_eq!(got, up);
        let down = pattern(100 * 1024, 7);
        assert!(remote.ctx.send_all(down.clone()).await);
        remote.ctx.fin();
        assert_eq!(sender.await.unwrap(), down);
        // Both sides report the stream closed cleanly, with byte counts.
        tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                if let Some(c) = ch.closed.lock().unwrap().first().cloned() {
                    return c;
                }
                ch.notify.notified().await;
            }
        })
        .await
        .map(|c| {
            assert!(c.reset.is_none());
            assert_eq!(c.bytes_in, 200 * 1024);
            assert_eq!(c.bytes_out, 100 * 1024);
        })
        .unwrap();
    }

    #[tokio::test]
    async fn streams_reset_with_unread_data_give_the_connection_window_back() {
        // Twenty streams each leave a full stream window (8 KiB) unread when they are reset:
        // 160 KiB, 2.5× the 64 KiB connection window. If the bytes a reset stream held were not
        // returned to the connection window, the tunnel would stop moving data for good.
        let (edge, _ce, _hub, ch) = pair();
        let run = async {
            for i in 0..20u8 {
                let local = edge.open(record()).unwrap();
                let mut remote = ch.next_open().await;
                assert!(local.send_all(pattern(8 * 1024, i)).await);
                let mut held = 0;
                while held < 8 * 1024 {
                    match remote.ctx.recv().await {
                        Some(Inbound::Data(b)) => held += b.len(), // never consumed
                        other => panic!("expected data, got {other:?}"),
                    }
                }
                remote.ctx.reset(reset::IO, "client went away");
            }
            let local = edge.open(record()).unwrap();
            let mut remote = ch.next_open().await;
            let data = pattern(32 * 1024, 99);
            let sender = {
                let data = data.clone();
                tokio::spawn(async move {
                    assert!(local.send_all(data).await);
                    local.fin();
                })
            };
            assert_eq!(read_all(&mut remote.ctx).await.unwrap(), data);
            sender.await.unwrap();
        };
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the connection window leaked: data stopped flowing");
    }

    #[tokio::test]
    async fn reset_reaches_the_other_side() {
        let (edge, _ce, _hub, ch) = pair();
        let mut local = edge.open(record()).unwrap();
        let remote = ch.next_open().await;
        remote.ctx.reset(reset::TARGET_UNREACHABLE, "connection refused");
        match local.recv().await {
            Some(Inbound::Reset) => {}
            other => panic!("expected reset, got {other:?}"),
        }
        assert_eq!(local.credit().await, None);
    }

    #[tokio::test]
    async fn round_robin_lets_a_mouse_past_an_elephant() {
        let (edge, _ce, _hub, ch) = pair();
        let elephant = edge.open(record()).unwrap();
        let mut el_remote = ch.next_open().await;
        // Fill the elephant's whole window before the mouse starts.
        let big = pattern(8 * 1024, 3);
        assert!(elephant.send_all(big).await);
        let mouse = edge.open(record()).unwrap();
        let mut mouse_remote = ch.next_open().await;
        mouse.send_all(Bytes::from_static(b"hi")).await;
        mouse.fin();
        // The mouse's bytes arrive even though nobody consumes the elephant's.
        let got = tokio::time::timeout(Duration::from_secs(2), read_all(&mut mouse_remote.ctx))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, b"hi");
        // And the elephant is stuck at exactly its window: flow control holds.
        let mut held = 0;
        while let Ok(Some(Inbound::Data(b))) =
            tokio::time::timeout(Duration::from_millis(100), el_remote.ctx.recv()).await
        {
            held += b.len();
        }
        assert_eq!(held, 8 * 1024);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), elephant.credit())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn many_streams_interleave_byte_exact() {
        let (edge, _ce, _hub, ch) = pair();
        let mut tasks = Vec::new();
        for i in 0..20u8 {
            let mut local = edge.open(record()).unwrap();
            let data = pattern(10_000 + usize::from(i) * 3_000, i);
            tasks.push(tokio::spawn(async move {
                local.send_all(data.clone()).await;
                local.fin();
                let echo = read_all(&mut local).await.unwrap();
                assert_eq!(echo, data);
            }));
        }
        for _ in 0..20 {
            let mut r = ch.next_open().await;
            tokio::spawn(async move {
                let got = read_all(&mut r.ctx).await.unwrap();
                r.ctx.send_all(got.into()).await;
                r.ctx.fin();
            });
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .unwrap()
                .unwrap();
        }
    }

    #[tokio::test]
    async fn garbage_closes_the_tunnel_with_a_reason() {
        let (a, mut b) = tokio::io::duplex(4096);
        let (_h, fut) = start(a, cfg(Side::Hub), Collect::default());
        let task = tokio::spawn(fut);
        b.write_all(&[0, 0, 5, 0x1e, 0, 0, 0, 0, 1, 1, 2, 3, 4, 5])
            .await
            .unwrap();
        let why = tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(why.code(), "ERR_PROTOCOL");
        assert!(why.to_string().contains("0x1e"), "{why}");
    }

    #[tokio::test]
    async fn window_violation_is_a_protocol_error() {
        let (a, mut b) = tokio::io::duplex(256 * 1024);
        let c = Collect::default();
        let (_h, fut) = start(a, cfg(Side::Hub), c.clone());
        let task = tokio::spawn(fut);
        let mut out = BytesMut::new();
        let mut p = BytesMut::new();
        record().encode(&mut p);
        frame::encode(&mut out, FrameType::Open, 0, 1, &p);
        // 9 frames of 1 KiB = 9 KiB > the 8 KiB stream window.
        for _ in 0..9 {
            frame::encode(&mut out, FrameType::Data, 0, 1, &[0u8; 1024]);
        }
        b.write_all(&out).await.unwrap();
        let why = tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .unwrap()
            .unwrap();
        assert!(why.to_string().contains("window"), "{why}");
        // The open stream was reset when the tunnel died.
        let closed = c.closed.lock().unwrap().clone();
        assert_eq!(closed.len(), 1);
        assert!(closed[0].reset.is_some());
    }

    #[tokio::test]
    async fn silent_peer_times_out() {
        let (a, _b) = tokio::io::duplex(4096);
        let (_h, fut) = start(a, cfg(Side::Edge), Collect::default());
        let why = tokio::time::timeout(Duration::from_secs(2), fut).await.unwrap();
        assert_eq!(why.code(), "ERR_TIMEOUT");
    }

    #[tokio::test]
    async fn heartbeat_measures_rtt_and_keeps_alive() {
        let (edge, _ce, _hub, _ch) = pair();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!edge.is_closed(), "a live peer must not time out");
        assert!(edge.stats.rtt_us.load(Ordering::Relaxed) > 0);
    }

    #[tokio::test]
    async fn goaway_drains_then_closes() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let ce = Collect::default();
        let ch = Collect::default();
        let (edge, fe) = start(a, cfg(Side::Edge), ce);
        let (hub, fh) = start(b, cfg(Side::Hub), ch.clone());
        let te = tokio::spawn(fe);
        let th = tokio::spawn(fh);
        let mut local = edge.open(record()).unwrap();
        let mut remote = ch.next_open().await;
        hub.go_away(0, "hub stopping");
        tokio::time::sleep(Duration::from_millis(50)).await;
        // No new streams after GOAWAY...
        assert!(edge.open(record()).is_none());
        // ...but the open one completes.
        local.send_all(Bytes::from_static(b"last words")).await;
        local.fin();
        assert_eq!(read_all(&mut remote.ctx).await.unwrap(), b"last words");
        remote.ctx.fin();
        assert_eq!(read_all(&mut local).await.unwrap(), b"");
        let e = tokio::time::timeout(Duration::from_secs(2), te)
            .await
            .unwrap()
            .unwrap();
        let h = tokio::time::timeout(Duration::from_secs(2), th)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.code(), "ERR_GOAWAY", "{e}");
        assert!(matches!(h.code(), "ERR_GOAWAY" | "ERR_PEER_CLOSED"), "{h}");
    }
}
