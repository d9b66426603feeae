//! The frame codec: the only place that turns tunnel bytes into frames and back.
//!
//! Layout (all integers big-endian), 9-byte header as in HTTP/2 so one read of the header tells
//! how much more to wait for:
//!
//! ```text
//! +-----------------+--------+--------+-------------------+----------------
//! | length (24 bit) | type 8 | flags 8| stream id (32 bit)| payload (length)
//! +-----------------+--------+--------+-------------------+----------------
//! ```
//!
//! Decoding is check-then-parse over a buffer (mini-redis style): nothing is consumed until a
//! whole, valid frame is present, and every length is checked against a cap before any
//! allocation, so hostile input can only ever cost a bounded amount of memory and never panics.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Header size in bytes.
pub const HEADER_LEN: usize = 9;

/// Hard protocol cap on a DATA/DATAGRAM payload. 64 KiB keeps a single frame from monopolising
/// the tunnel for long (fair interleaving) while allowing a whole max-size UDP datagram in one
/// frame. The sender's configured frame size (default 16 KiB, one TLS record) is below this.
pub const MAX_DATA_PAYLOAD: usize = 64 * 1024;

/// Hard cap on a control payload (CONFIG carries the firewall snapshot: 1 MiB holds tens of
/// thousands of blocked CIDRs, far more than an nftables set should be fed in one update).
pub const MAX_CONTROL_PAYLOAD: usize = 1024 * 1024;

/// Longest reason string carried in RESET/GOAWAY/AUTH_FAIL; reasons are for logs, not essays.
pub const MAX_REASON_LEN: usize = 256;

/// INFO carries a few facts as JSON (a public address: under 100 bytes); 1 KiB leaves room
/// without letting an edge push bulk data through the control path.
pub const MAX_INFO_PAYLOAD: usize = 1024;

/// Frame types (DATAGRAM, FLOW_OPEN and FLOW_CLOSE carry a UDP flow id in the stream id
/// field). 0x00..=0x1f are defined by this version; 0x20..=0xff are an extension range a
/// receiver ignores, so later versions can add frames without breaking older peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    Data = 0x00,
    Open = 0x01,
    Window = 0x02,
    Reset = 0x03,
    Ping = 0x04,
    GoAway = 0x05,
    Config = 0x06,
    ConfigAck = 0x07,
    Datagram = 0x08,
    FlowOpen = 0x09,
    FlowClose = 0x0a,
    Challenge = 0x10,
    Auth = 0x11,
    AuthOk = 0x12,
    AuthFail = 0x13,
    /// Edge → hub: what the edge learned about itself (JSON, e.g. its public address). In the
    /// extension range: a hub from before it skips the frame.
    Info = 0x20,
}

impl FrameType {
    fn from_u8(v: u8) -> Option<FrameType> {
        Some(match v {
            0x00 => FrameType::Data,
            0x01 => FrameType::Open,
            0x02 => FrameType::Window,
            0x03 => FrameType::Reset,
            0x04 => FrameType::Ping,
            0x05 => FrameType::GoAway,
            0x06 => FrameType::Config,
            0x07 => FrameType::ConfigAck,
            0x08 => FrameType::Datagram,
            0x09 => FrameType::FlowOpen,
            0x0a => FrameType::FlowClose,
            0x20 => FrameType::Info,
            0x10 => FrameType::Challenge,
            0x11 => FrameType::Auth,
            0x12 => FrameType::AuthOk,
            0x13 => FrameType::AuthFail,
            _ => return None,
        })
    }

    fn max_payload(self) -> usize {
        match self {
            FrameType::Data | FrameType::Datagram => MAX_DATA_PAYLOAD,
            FrameType::Window => 4,
            FrameType::Ping => 8,
            FrameType::Reset => 2 + MAX_REASON_LEN,
            FrameType::GoAway | FrameType::AuthFail => 6 + MAX_REASON_LEN,
            FrameType::Open | FrameType::FlowOpen => OPEN_RECORD_MAX,
            FrameType::FlowClose => 0,
            // A hub that dialed its edge appends its proof (see auth::handshake).
            FrameType::Challenge => 4 + NONCE_LEN + MAC_LEN,
            FrameType::Auth => 2 + 1 + 255 + MAC_LEN,
            FrameType::AuthOk => AUTH_OK_LEN,
            FrameType::Config | FrameType::ConfigAck => MAX_CONTROL_PAYLOAD,
            FrameType::Info => MAX_INFO_PAYLOAD,
        }
    }

    /// Frames that belong to a stream must carry a non-zero stream id; the rest must carry 0
    /// (WINDOW uses 0 for the connection window).
    fn stream_rule(self) -> StreamRule {
        match self {
            FrameType::Data
            | FrameType::Open
            | FrameType::Reset
            | FrameType::Datagram
            | FrameType::FlowOpen
            | FrameType::FlowClose => StreamRule::NonZero,
            FrameType::Window => StreamRule::Any,
            _ => StreamRule::Zero,
        }
    }
}

enum StreamRule {
    Zero,
    NonZero,
    Any,
}

/// DATA flag: the sender will send no more bytes on this stream (TCP half-close).
pub const FLAG_FIN: u8 = 0x01;
/// PING flag: this is the answer (PONG).
pub const FLAG_ACK: u8 = 0x01;

pub const NONCE_LEN: usize = 32;
pub const MAC_LEN: usize = 32;
/// stream window u32, connection window u32, heartbeat ms u32, max streams u32, max frame u32.
pub const AUTH_OK_LEN: usize = 20;
/// kind u8, flags u8, service u32, listen port u16, two (family u8, addr ≤16, port u16), buffer cap u32.
pub const OPEN_RECORD_MAX: usize = 1 + 1 + 4 + 2 + 2 * (1 + 16 + 2) + 4;

/// One decoded frame. The payload is a zero-copy slice of the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameType,
    pub flags: u8,
    pub stream: u32,
    pub payload: Bytes,
}

/// Why a byte sequence is not a frame. Every variant closes the tunnel it arrived on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame type 0x{0:02x} is not defined")]
    UnknownType(u8),
    #[error("{kind:?} frame of {len} bytes exceeds its cap of {max}")]
    TooLong { kind: FrameType, len: usize, max: usize },
    #[error("{kind:?} frame has invalid stream id {stream}")]
    BadStream { kind: FrameType, stream: u32 },
    #[error("malformed {0:?} payload: {1}")]
    Malformed(FrameType, &'static str),
}

/// Outcome of one decode step.
#[derive(Debug)]
pub enum Decoded {
    Frame(Frame),
    /// A frame of the extension range (0x20..): consumed and to be ignored.
    Skipped,
}

/// Tries to take one frame off the front of `buf`. `Ok(None)` means "need more bytes".
pub fn decode(buf: &mut BytesMut) -> Result<Option<Decoded>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
    let type_byte = buf[3];
    let flags = buf[4];
    let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]);
    let kind = match FrameType::from_u8(type_byte) {
        Some(k) => k,
        None if type_byte >= 0x20 => {
            // Extension frames are skipped, but still bounded so they cannot balloon the buffer.
            if len > MAX_CONTROL_PAYLOAD {
                return Err(FrameError::UnknownType(type_byte));
            }
            if buf.len() < HEADER_LEN + len {
                buf.reserve(HEADER_LEN + len - buf.len());
                return Ok(None);
            }
            buf.advance(HEADER_LEN + len);
            return Ok(Some(Decoded::Skipped));
        }
        None => return Err(FrameError::UnknownType(type_byte)),
    };
    let max = kind.max_payload();
    if len > max {
        return Err(FrameError::TooLong { kind, len, max });
    }
    let stream_ok = match kind.stream_rule() {
        StreamRule::Zero => stream == 0,
        StreamRule::NonZero => stream != 0,
        StreamRule::Any => true,
    };
    if !stream_ok {
        return Err(FrameError::BadStream { kind, stream });
    }
    if buf.len() < HEADER_LEN + len {
        buf.reserve(HEADER_LEN + len - buf.len());
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let payload = buf.split_to(len).freeze();
    let frame = Frame {
        kind,
        flags,
        stream,
        payload,
    };
    validate_fixed(&frame)?;
    Ok(Some(Decoded::Frame(frame)))
}

/// Fixed-size payloads must be exactly their size; checked here so the layers above can read
/// them without re-checking.
fn validate_fixed(f: &Frame) -> Result<(), FrameError> {
    let want = match f.kind {
        FrameType::Window => 4,
        FrameType::Ping => 8,
        FrameType::AuthOk => AUTH_OK_LEN,
        FrameType::Challenge if f.payload.len() == 4 + NONCE_LEN + MAC_LEN => return Ok(()),
        FrameType::Challenge => 4 + NONCE_LEN,
        _ => return Ok(()),
    };
    if f.payload.len() != want {
        return Err(FrameError::Malformed(f.kind, "wrong length"));
    }
    Ok(())
}

/// Writes a frame header. The caller appends `len` payload bytes.
pub fn put_header(out: &mut BytesMut, kind: FrameType, flags: u8, stream: u32, len: usize) {
    out.reserve(HEADER_LEN + len);
    out.extend_from_slice(&header(kind, flags, stream, len));
}

/// A frame header on its own, for a payload that is sent from where it already is.
pub fn header(kind: FrameType, flags: u8, stream: u32, len: usize) -> [u8; HEADER_LEN] {
    debug_assert!(len <= MAX_CONTROL_PAYLOAD);
    let s = stream.to_be_bytes();
    [
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        kind as u8,
        flags,
        s[0],
        s[1],
        s[2],
        s[3],
    ]
}

/// Encodes a whole frame.
pub fn encode(out: &mut BytesMut, kind: FrameType, flags: u8, stream: u32, payload: &[u8]) {
    put_header(out, kind, flags, stream, payload.len());
    out.extend_from_slice(payload);
}

/// Truncates a reason to the wire cap on a UTF-8 boundary.
pub fn clip_reason(reason: &str) -> &str {
    if reason.len() <= MAX_REASON_LEN {
        return reason;
    }
    let mut end = MAX_REASON_LEN;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// RESET payload: error code u16 + reason.
pub fn reset_payload(code: u16, reason: &str) -> BytesMut {
    let reason = clip_reason(reason);
    let mut b = BytesMut::with_capacity(2 + reason.len());
    b.put_u16(code);
    b.extend_from_slice(reason.as_bytes());
    b
}

/// Parses a RESET payload into (code, reason).
pub fn parse_reset(p: &[u8]) -> Result<(u16, String), FrameError> {
    if p.len() < 2 {
        return Err(FrameError::Malformed(FrameType::Reset, "shorter than its code"));
    }
    let code = u16::from_be_bytes([p[0], p[1]]);
    Ok((code, String::from_utf8_lossy(&p[2..]).into_owned()))
}

/// GOAWAY codes (the u16 after the last stream id).
pub mod goaway {
    /// The sender drains: a hub stopping or restarting, an edge moving to a newer tunnel. An
    /// edge that receives it dials a new tunnel at once and moves new clients to it.
    pub const DRAIN: u16 = 0;
    /// The sender closes the tunnel because of an error; the reason says which.
    pub const ERROR: u16 = 1;
    /// From the hub: a newer tunnel authenticated with this edge's id took over. If the edge
    /// did not open that tunnel itself, another process uses its id: it must not take the
    /// tunnel back at once (the two would take it from each other without end).
    pub const REPLACED: u16 = 2;
}

/// GOAWAY / AUTH_FAIL payload: last stream id u32 (0 for AUTH_FAIL), code u16, reason.
pub fn goaway_payload(last_stream: u32, code: u16, reason: &str) -> BytesMut {
    let reason = clip_reason(reason);
    let mut b = BytesMut::with_capacity(6 + reason.len());
    b.put_u32(last_stream);
    b.put_u16(code);
    b.extend_from_slice(reason.as_bytes());
    b
}

/// Parses a GOAWAY / AUTH_FAIL payload.
pub fn parse_goaway(kind: FrameType, p: &[u8]) -> Result<(u32, u16, String), FrameError> {
    if p.len() < 6 {
        return Err(FrameError::Malformed(kind, "shorter than its fixed part"));
    }
    let last = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
    let code = u16::from_be_bytes([p[4], p[5]]);
    Ok((last, code, String::from_utf8_lossy(&p[6..]).into_owned()))
}

/// Reads a u32 from a payload validated to be exactly 4 bytes (WINDOW).
pub fn read_u32(p: &[u8]) -> u32 {
    let mut b = p;
    b.get_u32()
}

/// Reads a u64 from a payload validated to be exactly 8 bytes (PING).
pub fn read_u64(p: &[u8]) -> u64 {
    let mut b = p;
    b.get_u64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    fn roundtrip(kind: FrameType, flags: u8, stream: u32, payload: &[u8]) -> Frame {
        let mut b = BytesMut::new();
        encode(&mut b, kind, flags, stream, payload);
        match decode(&mut b).unwrap() {
            Some(Decoded::Frame(f)) => {
                assert!(b.is_empty());
                f
            }
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[test]
    fn data_roundtrip() {
        let f = roundtrip(FrameType::Data, FLAG_FIN, 7, b"hello");
        assert_eq!(f.kind, FrameType::Data);
        assert_eq!(f.flags, FLAG_FIN);
        assert_eq!(f.stream, 7);
        assert_eq!(&f.payload[..], b"hello");
    }

    #[test]
    fn partial_input_waits() {
        let mut full = BytesMut::new();
        encode(&mut full, FrameType::Data, 0, 1, &[9u8; 1000]);
        let bytes = full.freeze();
        let mut b = BytesMut::new();
        for (i, byte) in bytes.iter().enumerate() {
            b.put_u8(*byte);
            let r = decode(&mut b).unwrap();
            if i + 1 < bytes.len() {
                assert!(r.is_none(), "decoded early at {i}");
            } else {
                assert!(matches!(r, Some(Decoded::Frame(_))));
            }
        }
    }

    #[test]
    fn rejects_oversized_and_bad_streams() {
        let mut b = BytesMut::new();
        put_header(&mut b, FrameType::Data, 0, 1, MAX_DATA_PAYLOAD + 1);
        assert!(matches!(decode(&mut b), Err(FrameError::TooLong { .. })));
        let mut b = BytesMut::new();
        encode(&mut b, FrameType::Data, 0, 0, b"x");
        assert!(matches!(decode(&mut b), Err(FrameError::BadStream { .. })));
        let mut b = BytesMut::new();
        encode(&mut b, FrameType::Ping, 0, 3, &[0; 8]);
        assert!(matches!(decode(&mut b), Err(FrameError::BadStream { .. })));
        let mut b = BytesMut::new();
        encode(&mut b, FrameType::Window, 0, 1, &[0; 5]);
        assert!(matches!(decode(&mut b), Err(FrameError::TooLong { .. })));
        let mut b = BytesMut::new();
        encode(&mut b, FrameType::Window, 0, 1, &[0; 3]);
        assert!(matches!(decode(&mut b), Err(FrameError::Malformed(..))));
        let mut b = BytesMut::new();
        encode(&mut b, FrameType::Ping, 0, 0, &[0; 7]);
        assert!(matches!(decode(&mut b), Err(FrameError::Malformed(..))));
        let mut b = BytesMut::new();
        b.extend_from_slice(&[0, 0, 0, 0x1f, 0, 0, 0, 0, 0]);
        assert!(matches!(decode(&mut b), Err(FrameError::UnknownType(0x1f))));
    }

    #[test]
    fn extension_frames_are_skipped() {
        let mut b = BytesMut::new();
        b.extend_from_slice(&[0, 0, 2, 0x42, 0, 0, 0, 0, 0, 1, 2]);
        encode(&mut b, FrameType::Ping, 0, 0, &[1; 8]);
        assert!(matches!(decode(&mut b), Ok(Some(Decoded::Skipped))));
        assert!(matches!(decode(&mut b), Ok(Some(Decoded::Frame(_)))));
    }

    #[test]
    fn reason_clipped_on_char_boundary() {
        let s = "é".repeat(200);
        let c = clip_reason(&s);
        assert!(c.len() <= MAX_REASON_LEN);
        assert!(s.starts_with(c));
    }

    /// Seeded mutation test: valid frame streams with random bit flips, truncations, splices
    /// and garbage. The decoder must never panic, never consume past what it returned, and
    /// always either decode, ask for more, or fail.
    #[test]
    fn mutation_decoder_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_f00d);
        let kinds = [
            FrameType::Data,
            FrameType::Open,
            FrameType::Window,
            FrameType::Reset,
            FrameType::Ping,
            FrameType::GoAway,
            FrameType::Config,
            FrameType::Auth,
            FrameType::AuthOk,
            FrameType::Challenge,
        ];
        let mut decoded = 0usize;
        let mut errors = 0usize;
        for _case in 0..20_000 {
            let mut b = BytesMut::new();
            for _ in 0..rng.random_range(1..5) {
                let kind = kinds[rng.random_range(0..kinds.len())];
                let len = rng.random_range(0..64);
                let payload: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                encode(&mut b, kind, rng.random(), rng.random_range(0..4), &payload);
            }
            match rng.random_range(0..4) {
                0 => {
                    for _ in 0..rng.random_range(1..8) {
                        let i = rng.random_range(0..b.len());
                        b[i] ^= 1 << rng.random_range(0..8);
                    }
                }
                1 => {
                    let cut = rng.random_range(0..b.len());
                    b.truncate(cut);
                }
                2 => {
                    let garbage: Vec<u8> = (0..rng.random_range(1..40)).map(|_| rng.random()).collect();
                    let at = rng.random_range(0..=b.len());
                    let tail = b.split_off(at);
                    b.extend_from_slice(&garbage);
                    b.extend_from_slice(&tail);
                }
                _ => {
                    let i = rng.random_range(0..b.len());
                    b[i] = rng.random();
                }
            }
            loop {
                let before = b.len();
                match decode(&mut b) {
                    Ok(Some(Decoded::Frame(f))) => {
                        decoded += 1;
                        assert!(f.payload.len() <= MAX_CONTROL_PAYLOAD);
                        assert!(b.len() < before);
                        // The typed parsers above the codec must not panic either.
                        let _ = parse_reset(&f.payload);
                        let _ = parse_goaway(f.kind, &f.payload);
                        let _ = crate::wire::open::OpenRecord::decode(&f.payload);
                    }
                    Ok(Some(Decoded::Skipped)) => assert!(b.len() < before),
                    Ok(None) => {
                        assert_eq!(b.len(), before);
                        break;
                    }
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
        }
        assert!(
            decoded > 1000,
            "mutations too destructive: {decoded} frames decoded"
        );
        assert!(errors > 1000, "mutations too gentle: {errors} errors");
    }
}
