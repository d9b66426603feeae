//! One type for "the tunnel", whichever transport carries it, so the hub and edge logic above
//! is written once.

use bytes::{Buf, Bytes, BytesMut};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::engine::udp::FlowTunnel;
use crate::mux::{MuxHandle, MuxStats};
use crate::transport::quic::{self, QuicTunnel};
use crate::wire::frame::{self, FrameType};
use crate::wire::open::OpenRecord;

#[derive(Clone)]
pub enum Tunnel {
    Tls(MuxHandle),
    Quic(QuicTunnel),
}

impl Tunnel {
    /// `tcpTls` or `quic`, as status and events name it.
    pub fn transport(&self) -> &'static str {
        match self {
            Tunnel::Tls(_) => "tcpTls",
            Tunnel::Quic(_) => "quic",
        }
    }

    /// The same tunnel (handles of one tunnel share its counters).
    pub fn same(&self, other: &Tunnel) -> bool {
        Arc::ptr_eq(self.stats(), other.stats())
    }

    pub fn stats(&self) -> &Arc<MuxStats> {
        match self {
            Tunnel::Tls(m) => &m.stats,
            Tunnel::Quic(q) => &q.stats,
        }
    }

    pub fn control(&self, kind: FrameType, stream: u32, payload: Bytes) {
        match self {
            Tunnel::Tls(m) => m.control(kind, stream, payload),
            Tunnel::Quic(q) => q.control(kind, stream, &payload),
        }
    }

    pub fn go_away(&self, code: u16, reason: &str) {
        match self {
            Tunnel::Tls(m) => m.go_away(code, reason),
            Tunnel::Quic(q) => q.go_away(code, reason),
        }
    }

    pub fn close(&self, reason: &str) {
        match self {
            Tunnel::Tls(m) => m.close(reason),
            Tunnel::Quic(q) => q.close(reason),
        }
    }

    /// GOAWAY sent or received: the tunnel takes no new streams or flows.
    pub fn is_going_away(&self) -> bool {
        match self {
            Tunnel::Tls(m) => m.is_going_away(),
            Tunnel::Quic(q) => q.is_going_away(),
        }
    }

    pub fn is_closed(&self) -> bool {
        match self {
            Tunnel::Tls(m) => m.is_closed(),
            Tunnel::Quic(q) => q.is_closed(),
        }
    }

    pub fn open_streams(&self) -> u64 {
        self.stats().open_streams.load(Ordering::Relaxed)
    }

    pub fn rtt_ms(&self) -> f64 {
        self.stats().rtt_us.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// QUIC's current UDP payload size (path MTU, as discovered); `None` on TLS.
    pub fn quic_path_mtu(&self) -> Option<u16> {
        match self {
            Tunnel::Tls(_) => None,
            Tunnel::Quic(q) => Some(q.conn.stats().path.current_mtu),
        }
    }
}

impl FlowTunnel for Tunnel {
    fn flow_open(&self, flow: u32, record: &OpenRecord) {
        let mut p = BytesMut::with_capacity(frame::OPEN_RECORD_MAX);
        record.encode(&mut p);
        self.control(FrameType::FlowOpen, flow, p.freeze());
    }

    fn datagram(&self, flow: u32, mut framed: BytesMut) {
        match self {
            Tunnel::Tls(m) => {
                // The muxer frames the payload itself; dropping the headroom moves a pointer.
                framed.advance(quic::DATAGRAM_HEADER);
                m.datagram(flow, framed.freeze())
            }
            Tunnel::Quic(q) => q.datagram(flow, framed),
        }
    }

    fn flow_close(&self, flow: u32) {
        self.control(FrameType::FlowClose, flow, Bytes::new());
    }
}
