//! The authentication exchange that runs on a fresh TLS session before the muxer starts.
//!
//! ```text
//! hub  → edge  CHALLENGE  min version u16, max version u16, nonce[32] [, hub proof[32]]
//! edge → hub   AUTH       version u16, id length u8, edge id, proof[32]
//! hub  → edge  AUTH_OK    stream window, connection window, heartbeat ms, max streams, max frame (u32 each)
//!          or  AUTH_FAIL  0 u32, code u16, reason
//! ```
//! Frames are read exactly (header, then payload) so nothing past the handshake is consumed
//! and the muxer starts on a clean stream.
//!
//! Whoever opened the connection, the hub sends CHALLENGE and the edge proves. When the hub
//! *dialed* the edge (the edge listens for its hub), the edge cannot know who is calling: the
//! hub then appends its own proof (a different MAC context) to CHALLENGE, and the edge checks
//! it before it answers with anything derived from the secret. The hub pinned the edge's
//! certificate, so it shows its proof only to the real edge; the edge shows its proof only to a
//! hub that knows the secret. Neither side ever hands a stranger something to guess against.

use bytes::{BufMut, Bytes, BytesMut};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::auth::{hub_proof, proof, proofs_equal, PROTOCOL_VERSION};
use crate::error::{Error, Result};
use crate::wire::frame::{self, Decoded, Frame, FrameType, AUTH_OK_LEN, MAC_LEN, NONCE_LEN};

/// AUTH_FAIL codes.
pub const FAIL_AUTH: u16 = 1;
pub const FAIL_VERSION: u16 = 2;

/// The one message every authentication failure shows the peer: an unknown edge id and a
/// wrong secret must be indistinguishable from outside.
pub const AUTH_FAILED_REASON: &str = "unknown edge id or wrong secret";

/// Parameters the hub dictates for the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionParams {
    pub stream_window: u32,
    pub connection_window: u32,
    pub heartbeat_ms: u32,
    pub max_streams: u32,
    pub max_frame: u32,
}

impl SessionParams {
    fn encode(&self) -> BytesMut {
        let mut b = BytesMut::with_capacity(AUTH_OK_LEN);
        b.put_u32(self.stream_window);
        b.put_u32(self.connection_window);
        b.put_u32(self.heartbeat_ms);
        b.put_u32(self.max_streams);
        b.put_u32(self.max_frame);
        b
    }

    fn decode(p: &[u8]) -> Result<SessionParams> {
        let w = |i: usize| u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
        let s = SessionParams {
            stream_window: w(0),
            connection_window: w(4),
            heartbeat_ms: w(8),
            max_streams: w(12),
            max_frame: w(16),
        };
        let frame_ok = (1024..=frame::MAX_DATA_PAYLOAD as u32).contains(&s.max_frame);
        if !frame_ok
            || s.stream_window < s.max_frame
            || s.connection_window < s.stream_window
            || s.heartbeat_ms == 0
            || s.max_streams == 0
        {
            return Err(Error::Protocol(format!("unusable session parameters {s:?}")));
        }
        Ok(s)
    }
}

async fn read_frame<S: AsyncRead + Unpin>(io: &mut S) -> Result<Frame> {
    let mut head = [0u8; frame::HEADER_LEN];
    io.read_exact(&mut head)
        .await
        .map_err(|e| Error::PeerClosed(format!("connection closed during the handshake ({e})")))?;
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    // Handshake frames are small; anything bigger is not our protocol.
    if len > 1024 {
        return Err(Error::Protocol(format!("handshake frame of {len} bytes")));
    }
    let mut buf = BytesMut::with_capacity(frame::HEADER_LEN + len);
    buf.extend_from_slice(&head);
    buf.resize(frame::HEADER_LEN + len, 0);
    io.read_exact(&mut buf[frame::HEADER_LEN..])
        .await
        .map_err(|e| Error::PeerClosed(format!("connection closed during the handshake ({e})")))?;
    match frame::decode(&mut buf) {
        Ok(Some(Decoded::Frame(f))) => Ok(f),
        Ok(_) => Err(Error::Protocol("unexpected frame during the handshake".into())),
        Err(e) => Err(Error::Protocol(e.to_string())),
    }
}

async fn write_frame<S: AsyncWrite + Unpin>(io: &mut S, kind: FrameType, payload: &[u8]) -> Result<()> {
    let mut b = BytesMut::new();
    frame::encode(&mut b, kind, 0, 0, payload);
    io.write_all(&b).await?;
    io.flush().await?;
    Ok(())
}

/// Outcome of the hub side of the exchange.
pub enum HubVerdict {
    Accepted {
        edge_id: String,
        secret: String,
    },
    /// Refused; the peer was told `AUTH_FAILED_REASON` (or the version problem).
    Refused {
        edge_id: String,
        reason: String,
    },
}

/// The edge a hub dialed: only this id may answer, and the hub proves the secret first.
#[derive(Clone, Copy)]
pub struct Dialed<'a> {
    pub edge_id: &'a str,
    pub secret: &'a str,
}

/// Hub side. `lookup` returns the secret of an allowed edge. `dummy` is a random per-process
/// secret used for unknown ids so both failure kinds cost the same time. `dialed`: the hub
/// opened this connection to that edge (see the module documentation).
pub async fn hub<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    binding: &[u8; 32],
    lookup: impl Fn(&str) -> Option<String>,
    dummy: &[u8],
    params: SessionParams,
    dialed: Option<Dialed<'_>>,
) -> Result<HubVerdict> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let mut ch = BytesMut::with_capacity(4 + NONCE_LEN + MAC_LEN);
    ch.put_u16(PROTOCOL_VERSION);
    ch.put_u16(PROTOCOL_VERSION);
    ch.extend_from_slice(&nonce);
    if let Some(d) = dialed {
        ch.extend_from_slice(&hub_proof(
            d.secret.as_bytes(),
            PROTOCOL_VERSION,
            &nonce,
            binding,
            d.edge_id,
        ));
    }
    write_frame(io, FrameType::Challenge, &ch).await?;

    let f = read_frame(io).await?;
    if f.kind == FrameType::AuthFail && dialed.is_some() {
        // The edge did not accept our proof: its secret (or its id) is not what we have.
        let (_, _, reason) =
            frame::parse_goaway(f.kind, &f.payload).map_err(|e| Error::Protocol(e.to_string()))?;
        return Err(Error::AuthFailed(format!("edge refused: {reason}")));
    }
    if f.kind != FrameType::Auth {
        return Err(Error::Protocol(format!("expected AUTH, got {:?}", f.kind)));
    }
    let p = &f.payload;
    if p.len() < 3 {
        return Err(Error::Protocol("AUTH shorter than its fixed part".into()));
    }
    let version = u16::from_be_bytes([p[0], p[1]]);
    let id_len = usize::from(p[2]);
    if p.len() != 3 + id_len + MAC_LEN {
        return Err(Error::Protocol("AUTH length does not match its id length".into()));
    }
    let edge_id = String::from_utf8_lossy(&p[3..3 + id_len]).into_owned();
    let mac = &p[3 + id_len..];
    if version != PROTOCOL_VERSION {
        let reason = format!("unsupported protocol version {version} (hub speaks {PROTOCOL_VERSION})");
        let fail = frame::goaway_payload(0, FAIL_VERSION, &reason);
        write_frame(io, FrameType::AuthFail, &fail).await?;
        return Ok(HubVerdict::Refused { edge_id, reason });
    }
    let secret = match dialed {
        // Only the edge we dialed may answer on this connection.
        Some(d) => (d.edge_id == edge_id).then(|| d.secret.to_string()),
        None => lookup(&edge_id),
    };
    let key = secret.as_deref().map(str::as_bytes).unwrap_or(dummy);
    let expected = proof(key, version, &nonce, binding, &edge_id);
    let ok = proofs_equal(&expected, mac) && secret.is_some();
    if !ok {
        let fail = frame::goaway_payload(0, FAIL_AUTH, AUTH_FAILED_REASON);
        write_frame(io, FrameType::AuthFail, &fail).await?;
        let reason = if secret.is_some() {
            "wrong secret"
        } else {
            "unknown edge id"
        };
        return Ok(HubVerdict::Refused {
            edge_id,
            reason: reason.into(),
        });
    }
    write_frame(io, FrameType::AuthOk, &params.encode()).await?;
    Ok(HubVerdict::Accepted {
        edge_id,
        secret: secret.unwrap_or_default(),
    })
}

/// Why a listening edge refused whoever dialed it; the same for a wrong secret and a wrong
/// edge id at the hub, and for a caller that sent no proof at all.
pub const HUB_PROOF_FAILED: &str =
    "the dialing hub did not prove the shared secret (wrong secret or edge id at the hub, or not a hub)";

/// Edge side. Returns the session parameters the hub chose. `listening`: the hub dialed this
/// edge, so the hub must prove the secret before the edge answers.
pub async fn edge<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    binding: &[u8; 32],
    edge_id: &str,
    secret: &str,
    listening: bool,
) -> Result<SessionParams> {
    let f = read_frame(io).await?;
    if f.kind != FrameType::Challenge {
        return Err(Error::Protocol(format!("expected CHALLENGE, got {:?}", f.kind)));
    }
    let p = &f.payload;
    let min = u16::from_be_bytes([p[0], p[1]]);
    let max = u16::from_be_bytes([p[2], p[3]]);
    if !(min..=max).contains(&PROTOCOL_VERSION) {
        return Err(Error::Protocol(format!(
            "hub speaks protocol versions {min}..={max}, this edge speaks {PROTOCOL_VERSION}"
        )));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&p[4..4 + NONCE_LEN]);
    if edge_id.len() > 255 {
        return Err(Error::InvalidConfig("edgeId: longer than 255 bytes".into()));
    }
    if listening {
        let expected = hub_proof(secret.as_bytes(), max, &nonce, binding, edge_id);
        let shown = p.get(4 + NONCE_LEN..).unwrap_or_default();
        if !proofs_equal(&expected, shown) {
            let fail = frame::goaway_payload(0, FAIL_AUTH, AUTH_FAILED_REASON);
            write_frame(io, FrameType::AuthFail, &fail).await?;
            return Err(Error::AuthFailed(HUB_PROOF_FAILED.into()));
        }
    }
    let mac = proof(secret.as_bytes(), PROTOCOL_VERSION, &nonce, binding, edge_id);
    let mut a = BytesMut::with_capacity(3 + edge_id.len() + MAC_LEN);
    a.put_u16(PROTOCOL_VERSION);
    a.put_u8(edge_id.len() as u8);
    a.extend_from_slice(edge_id.as_bytes());
    a.extend_from_slice(&mac);
    write_frame(io, FrameType::Auth, &a).await?;
    let f = read_frame(io).await?;
    match f.kind {
        FrameType::AuthOk => SessionParams::decode(&f.payload),
        FrameType::AuthFail => {
            let (_, code, reason) =
                frame::parse_goaway(f.kind, &f.payload).map_err(|e| Error::Protocol(e.to_string()))?;
            if code == FAIL_AUTH {
                Err(Error::AuthFailed(format!("hub refused: {reason}")))
            } else {
                Err(Error::Protocol(format!("hub refused: {reason}")))
            }
        }
        other => Err(Error::Protocol(format!("expected AUTH_OK, got {other:?}"))),
    }
}

/// Convenience for the payload type used by CONFIG frames.
pub fn json_payload(v: &serde_json::Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARAMS: SessionParams = SessionParams {
        stream_window: 65536,
        connection_window: 1 << 20,
        heartbeat_ms: 5000,
        max_streams: 10,
        max_frame: 16384,
    };

    async fn run(
        edge_secret: &str,
        edge_id: &str,
        edge_binding: [u8; 32],
    ) -> (Result<SessionParams>, HubVerdict) {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let hub_binding = [7u8; 32];
        let hub = tokio::spawn(async move {
            super::hub(
                &mut b,
                &hub_binding,
                |id| (id == "edge-1").then(|| "a-very-good-secret".to_string()),
                b"dummy-dummy-dummy",
                PARAMS,
                None,
            )
            .await
            .unwrap()
        });
        let e = edge(&mut a, &edge_binding, edge_id, edge_secret, false).await;
        (e, hub.await.unwrap())
    }

    /// The hub dialed `dialed_id` with `hub_secret`; the listening edge is edge-1 with the good
    /// secret (or `edge_id` / `edge_binding` for the relay cases).
    async fn run_dialed(
        hub_secret: &'static str,
        dialed_id: &'static str,
        edge_id: &str,
        edge_binding: [u8; 32],
    ) -> (Result<SessionParams>, Result<HubVerdict>) {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let hub = tokio::spawn(async move {
            let dialed = Dialed {
                edge_id: dialed_id,
                secret: hub_secret,
            };
            super::hub(
                &mut b,
                &[7u8; 32],
                |_| None,
                b"dummy-dummy-dummy",
                PARAMS,
                Some(dialed),
            )
            .await
        });
        let e = edge(&mut a, &edge_binding, edge_id, "a-very-good-secret", true).await;
        (e, hub.await.unwrap())
    }

    #[tokio::test]
    async fn a_dialing_hub_proves_first_and_the_edge_then_proves() {
        let (e, h) = run_dialed("a-very-good-secret", "edge-1", "edge-1", [7u8; 32]).await;
        assert_eq!(e.unwrap(), PARAMS);
        assert!(matches!(h, Ok(HubVerdict::Accepted { ref edge_id, .. }) if edge_id == "edge-1"));
    }

    #[tokio::test]
    async fn a_listening_edge_refuses_a_hub_without_the_secret_before_showing_its_proof() {
        for (secret, dialed) in [
            ("a-very-good-secreT", "edge-1"),
            // The hub holds the right secret under another id: the proof covers the id.
            ("a-very-good-secret", "edge-2"),
        ] {
            let (e, h) = run_dialed(secret, dialed, "edge-1", [7u8; 32]).await;
            let err = e.unwrap_err();
            assert_eq!(err.code(), "ERR_AUTH_FAILED");
            assert_eq!(
                err.to_string(),
                Error::AuthFailed(HUB_PROOF_FAILED.into()).to_string()
            );
            let hub_err = h.err().expect("the hub is told it was refused");
            assert_eq!(hub_err.code(), "ERR_AUTH_FAILED");
            assert!(hub_err.to_string().contains(AUTH_FAILED_REASON), "{hub_err}");
        }
        // A proof relayed from another session does not verify either.
        let (e, _) = run_dialed("a-very-good-secret", "edge-1", "edge-1", [8u8; 32]).await;
        assert_eq!(e.unwrap_err().code(), "ERR_AUTH_FAILED");
    }

    #[tokio::test]
    async fn a_listening_edge_refuses_a_challenge_without_a_hub_proof() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let hub = tokio::spawn(async move {
            super::hub(
                &mut b,
                &[7u8; 32],
                |_| Some("a-very-good-secret".into()),
                b"d",
                PARAMS,
                None,
            )
            .await
        });
        let e = edge(&mut a, &[7u8; 32], "edge-1", "a-very-good-secret", true).await;
        assert_eq!(e.unwrap_err().code(), "ERR_AUTH_FAILED");
        // The plain hub sees AUTH_FAIL where it expected AUTH.
        assert!(hub.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn good_secret_is_accepted() {
        let (e, h) = run("a-very-good-secret", "edge-1", [7u8; 32]).await;
        assert_eq!(e.unwrap(), PARAMS);
        assert!(matches!(h, HubVerdict::Accepted { ref edge_id, .. } if edge_id == "edge-1"));
    }

    #[tokio::test]
    async fn wrong_secret_unknown_id_and_other_channel_look_alike() {
        let mut seen = Vec::new();
        for (secret, id, binding) in [
            ("a-very-good-secreT", "edge-1", [7u8; 32]),
            ("a-very-good-secret", "edge-2", [7u8; 32]),
            // A relayed proof from another TLS session (different channel binding).
            ("a-very-good-secret", "edge-1", [8u8; 32]),
        ] {
            let (e, h) = run(secret, id, binding).await;
            let err = e.unwrap_err();
            assert_eq!(err.code(), "ERR_AUTH_FAILED");
            assert!(matches!(h, HubVerdict::Refused { .. }));
            seen.push(err.to_string());
        }
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    }
}
