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
//!
//! Files: [`stream`] (a stream's endpoint and its socket pumps), [`flow`] (window growth),
//! [`batch`] (frames gathered for one vectored write), [`io`] (the tunnel IO's halves),
//! [`conn`] (the mux task: decode, flow control, round-robin, heartbeats).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

use crate::error::Error;
use crate::wire::frame::{self, Decoded, Frame, FrameType, FLAG_ACK, FLAG_FIN};
use crate::wire::open::OpenRecord;

mod batch;
mod budget;
mod conn;
mod flow;
mod inbound;
mod io;
mod stream;

pub(crate) use stream::abortive_close;
pub use stream::{StreamCtx, StreamShared};

use batch::OutBatch;
pub use budget::{SendBudget, TUNNEL_SEND_BUDGET};
pub use conn::start;
use flow::grown_window;
use io::{read_now, write_or_flush};

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

/// Target size of one batch written to the tunnel. 128 KiB ≈ 8 TLS records per write call:
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
pub(crate) const SOCKET_READ: usize = 64 * 1024;

/// A stream keeps room for this many pending chunks between batches: one batch of full-size
/// frames (READ_BATCH / 16 KiB). Longer lists (a peer sending tiny frames) are freed after use.
const PENDING_KEEP: usize = 8;

/// At most this many received chunks go to a socket in one `writev` (well under IOV_MAX).
const MAX_WRITE_SLICES: usize = 64;

/// Datagrams queued for the tunnel beyond this are dropped: UDP must not build a standing
/// queue in front of TCP streams. 4 MiB ≈ 3 ms at 10 Gbit/s, yet holds a burst of ~70
/// maximum-size (60 KiB) datagrams, or ~3,000 typical 1,200-byte ones.
pub(crate) const MAX_PENDING_DATAGRAMS: usize = 4 * 1024 * 1024;

/// Stream ids at or past this are never opened: the tunnel drains instead (GOAWAY) and its
/// owner moves new streams to a new tunnel, rather than the ids wrapping, which the peer would
/// rightly refuse. At 5,000 connections a second a tunnel gets there after ~5 days; the 64 Ki
/// ids left over are just a margin.
const STREAM_IDS_END: u32 = u32::MAX - 0x1_0000;

/// How long a closing tunnel may spend telling the peer why (GOAWAY + close_notify).
const CLOSE_LINGER: Duration = Duration::from_millis(200);

/// After an orderly close, how long to wait for the peer's end of the connection (its
/// close_notify/FIN) before dropping the socket anyway. 2 s covers a loaded peer; a dead one
/// costs only this delay.
const DRAIN_LINGER: Duration = Duration::from_secs(2);

/// If the peer stops reading while we still owe it control frames (PONGs, WINDOWs), this much
/// pending control data means it is hostile or dead; the tunnel is closed instead of queueing.
pub(crate) const MAX_PENDING_CONTROL: usize = 4 * 1024 * 1024;

/// What a stream writer receives.
#[derive(Debug)]
pub enum Inbound {
    Data(Bytes),
    /// The peer half-closed: no more data will come.
    Fin,
    /// The stream was aborted (by the peer, or because the tunnel died).
    Reset,
}

/// Commands from streams and from the owner to the mux task.
pub(crate) enum Cmd {
    Open {
        id: u32,
        record: OpenRecord,
        tx: inbound::InboundTx,
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
    /// This side's stream ids are used up: drain (GOAWAY, and the owner is told).
    IdsRunOut,
}

/// Live counters, readable from any thread (status calls).
#[derive(Debug, Default)]
pub struct MuxStats {
    pub open_streams: AtomicU64,
    /// Streams opened on this tunnel, either side.
    pub streams_total: AtomicU64,
    /// Payload bytes received from the peer.
    pub bytes_in: AtomicU64,
    /// Payload bytes sent to the peer.
    pub bytes_out: AtomicU64,
    /// Last heartbeat round trip in microseconds (0 = none yet).
    pub rtt_us: AtomicU64,
    /// Datagrams dropped because the tunnel was backed up.
    pub datagrams_dropped: AtomicU64,
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
        /// Set for a capped stream whose ends enforce the cap with credit.
        credit: Option<crate::transport::quic::StreamCredit>,
        /// The tunnel's send budget.
        budget: Arc<SendBudget>,
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
                credit,
                budget,
            } => {
                stats.open_streams.fetch_add(1, Ordering::Relaxed);
                stats.streams_total.fetch_add(1, Ordering::Relaxed);
                let mut done = QuicStreamEnd {
                    stats,
                    closed,
                    id,
                    port,
                    totals: None,
                };
                // Boxed: the QUIC pump's future is several times the muxer stream's, and a
                // task sized for it would make every TLS stream's task that large too.
                let pump = Box::pin(crate::transport::quic::pump(sock, send, recv, credit, budget));
                done.totals = Some(pump.await);
            }
        }
    }
}

/// Accounts for a QUIC stream's end however its pump ends — finished, or dropped by its owner
/// (a service's idle timeout drops the connection's future mid-pump): the open count goes down
/// once and the `ClosedStream` record is sent once.
struct QuicStreamEnd {
    stats: Arc<MuxStats>,
    closed: mpsc::UnboundedSender<ClosedStream>,
    id: u64,
    port: u16,
    /// The pump's totals when it finished; `None` when it was dropped.
    totals: Option<PumpTotals>,
}

/// Bytes in, bytes out, and the reset (code, reason) if the stream did not end cleanly.
type PumpTotals = (u64, u64, Option<(u16, String)>);

impl Drop for QuicStreamEnd {
    fn drop(&mut self) {
        let (bytes_in, bytes_out, reset) = self
            .totals
            .take()
            .unwrap_or_else(|| (0, 0, Some((reset::IO, "stream abandoned by its owner".into()))));
        self.stats.open_streams.fetch_sub(1, Ordering::Relaxed);
        self.stats.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        self.stats.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
        let _ = self.closed.send(ClosedStream {
            id: self.id,
            listen_port: self.port,
            bytes_in,
            bytes_out,
            reset,
        });
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
    /// What this tunnel's stream readers may hold ([`SendBudget`]).
    budget: Arc<SendBudget>,
    /// DATAGRAM frame bytes on their way to the tunnel (in the command channel or the mux's
    /// datagram queue): bounded by [`MAX_PENDING_DATAGRAMS`] from the moment they are offered.
    dgram_bytes: Arc<AtomicUsize>,
}

impl MuxHandle {
    /// Opens a local stream (edge: one per accepted client). `None` if the tunnel is closing,
    /// or has used up its stream ids (it then drains, and the owner moves to a new tunnel).
    pub fn open(&self, record: OpenRecord) -> Option<StreamCtx> {
        if self.going_away.load(Ordering::Acquire) {
            return None;
        }
        let next = self
            .next_id
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |id| {
                (id < STREAM_IDS_END).then_some(id + 2)
            });
        let Ok(id) = next else {
            if !self.going_away.swap(true, Ordering::AcqRel) {
                let _ = self.cmd.send(Cmd::IdsRunOut);
            }
            return None;
        };
        let (tx, rx) = inbound::channel();
        let shared = StreamShared::new(flow::capped(self.config.stream_window, record.buffer));
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
            self.budget.clone(),
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
        let len = frame::HEADER_LEN + payload.len();
        let room = self
            .dgram_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q + len <= MAX_PENDING_DATAGRAMS).then_some(q + len)
            });
        if room.is_err() {
            self.stats.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
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

    /// GOAWAY sent or received.
    pub fn is_going_away(&self) -> bool {
        self.going_away.load(Ordering::Acquire)
    }

    pub fn open_streams(&self) -> u64 {
        self.stats.open_streams.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
