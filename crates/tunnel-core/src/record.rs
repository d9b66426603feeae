//! The tunnel's TLS 1.3 record layer: rustls does the handshake, this module moves the bytes.
//!
//! Why not rustls for the data too: rustls 0.20 (the version packaged here) copies every record
//! three times on the way in (socket buffer → its deframer → a payload `Vec` → the caller) and
//! allocates per record on the way out, and its cipher is fixed to ring's AES-GCM. Under bulk
//! load those copies and allocations were ~10 % of the hub's cycles. Here a record is read from
//! the socket into one buffer, decrypted where it lies and copied once into the caller's buffer;
//! outgoing plaintext is copied once into the send buffer and sealed there.
//!
//! How it is taken over, exactly (RFC 8446 section numbers in brackets):
//! - The handshake runs through a plain `rustls::Connection` fed **one record at a time**, so
//!   when rustls reports the handshake complete no byte of the peer's application data can be
//!   sitting inside rustls: everything after that point in the socket is ours.
//! - The application traffic secrets (`*_TRAFFIC_SECRET_0`) come from a per-connection
//!   [`rustls::KeyLog`]; key and IV are derived with HKDF-Expand-Label [7.1, 7.3].
//! - Nothing is sent through rustls after the handshake: the hub issues no session tickets
//!   (no session storage, no ticketer) and neither side sends early data, so both directions
//!   start at sequence number 0 [5.3] with the first record this module writes or reads.
//! - Records: `application_data` outer type, TLSInnerPlaintext with the real content type
//!   [5.2]; per-record nonce = IV xor sequence number [5.3]; header as additional data.
//! - KeyUpdate [4.6.3]: sent after [`KEY_UPDATE_AFTER`] records (AES-GCM's usage limit [5.5]),
//!   accepted from the peer, and answered when the peer asks for it.
//! - Alerts: close_notify is sent on shutdown and read as end of stream; any other alert, a
//!   record that fails authentication, or a malformed record ends the connection with an error
//!   naming what was wrong.
//!
//! The channel binding (TLS exporter) is taken from the rustls connection before it is dropped.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use ring::{aead, hkdf};
use rustls::CipherSuite;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// TLSPlaintext.length limit (2^14, RFC 8446 §5.1).
const MAX_PLAINTEXT: usize = 16 * 1024;
/// TLSCiphertext.length limit (2^14 + 256, §5.2): a larger record is a protocol error.
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
const HEADER_LEN: usize = 5;
const TAG_LEN: usize = 16;
/// Largest whole record on the wire.
const MAX_RECORD: usize = HEADER_LEN + MAX_CIPHERTEXT;

const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;
const HANDSHAKE_KEY_UPDATE: u8 = 24;
const ALERT_CLOSE_NOTIFY: u8 = 0;

/// Records sealed under one key before the writer moves to the next (KeyUpdate). RFC 8446 §5.5
/// allows 2^24.5 full-size AES-GCM records per key; 2^24 (about 256 GiB) keeps a margin and
/// costs one 22-byte record per 256 GiB.
const KEY_UPDATE_AFTER: u64 = 1 << 24;

/// Socket read buffer: eight full records per `recv` (a 128 KiB batch, the size the muxer
/// gathers) plus room for one record that arrived in part.
const READ_BUFFER: usize = 128 * 1024 + MAX_RECORD;

/// Sealed bytes that may wait for the socket before `poll_write` stops taking more: two write
/// batches, so the next batch is sealed while the kernel still takes the previous one.
const SEND_BUFFER: usize = 256 * 1024;

/// Plaintext taken by one `poll_write` (then sealed as up to eight records).
const WRITE_TAKE: usize = 128 * 1024;

/// Captures the two application traffic secrets of one connection.
#[derive(Default)]
pub struct SecretCapture {
    secrets: Mutex<Secrets>,
}

#[derive(Default)]
struct Secrets {
    client: Option<Vec<u8>>,
    server: Option<Vec<u8>>,
}

impl rustls::KeyLog for SecretCapture {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let mut s = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        match label {
            "CLIENT_TRAFFIC_SECRET_0" => s.client = Some(secret.to_vec()),
            "SERVER_TRAFFIC_SECRET_0" => s.server = Some(secret.to_vec()),
            _ => {}
        }
    }

    fn will_log(&self, label: &str) -> bool {
        matches!(label, "CLIENT_TRAFFIC_SECRET_0" | "SERVER_TRAFFIC_SECRET_0")
    }
}

/// A client configuration for one tunnel connection: `base` plus a key log of its own.
/// Session tickets are off (they would be sent after the handshake, through rustls).
pub fn client_config(base: &rustls::ClientConfig) -> (Arc<rustls::ClientConfig>, Arc<SecretCapture>) {
    let capture = Arc::new(SecretCapture::default());
    let mut cfg = base.clone();
    cfg.key_log = capture.clone();
    cfg.enable_tickets = false;
    cfg.enable_early_data = false;
    (Arc::new(cfg), capture)
}

/// A server configuration for one tunnel connection: `base` plus a key log of its own, and no
/// session storage or ticketer, so rustls sends nothing after the handshake.
pub fn server_config(base: &rustls::ServerConfig) -> (Arc<rustls::ServerConfig>, Arc<SecretCapture>) {
    let capture = Arc::new(SecretCapture::default());
    let mut cfg = base.clone();
    cfg.key_log = capture.clone();
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.ticketer = Arc::new(NoTickets);
    cfg.max_early_data_size = 0;
    (Arc::new(cfg), capture)
}

struct NoTickets;

impl rustls::server::ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _plain: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _cipher: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

/// Why a handshake failed: what rustls said (with the alert it sent the peer), or the socket.
#[derive(Debug)]
pub enum HandshakeError {
    Tls(rustls::Error),
    Io(io::Error),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Tls(e) => write!(f, "{e}"),
            HandshakeError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                f.write_str("the peer closed the connection during the TLS handshake")
            }
            HandshakeError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> Self {
        HandshakeError::Io(e)
    }
}

/// Runs the TLS 1.3 handshake of `conn` over `tcp` and returns the record-layer channel plus the
/// finished rustls connection (for the exporter; drop it afterwards). `capture` must be the key
/// log of `conn`'s configuration (see [`client_config`] / [`server_config`]).
pub async fn handshake(
    mut tcp: TcpStream,
    mut conn: rustls::Connection,
    capture: &SecretCapture,
) -> Result<(TlsChannel, rustls::Connection), HandshakeError> {
    let mut out = Vec::new();
    let mut record = vec![0u8; MAX_RECORD];
    loop {
        while conn.wants_write() {
            conn.write_tls(&mut out)?;
        }
        if !out.is_empty() {
            tcp.write_all(&out).await?;
            out.clear();
        }
        if !conn.is_handshaking() {
            break;
        }
        // Exactly one record, so nothing beyond the handshake ends up inside rustls.
        tcp.read_exact(&mut record[..HEADER_LEN]).await?;
        let len = usize::from(u16::from_be_bytes([record[3], record[4]]));
        if len > MAX_CIPHERTEXT {
            return Err(HandshakeError::Tls(rustls::Error::CorruptMessage));
        }
        tcp.read_exact(&mut record[HEADER_LEN..HEADER_LEN + len]).await?;
        let mut rest = &record[..HEADER_LEN + len];
        while !rest.is_empty() {
            conn.read_tls(&mut rest)?;
        }
        if let Err(e) = conn.process_new_packets() {
            // Tell the peer why (rustls queued the alert), best effort.
            while conn.wants_write() {
                if conn.write_tls(&mut out).is_err() {
                    break;
                }
            }
            let _ = tcp.write_all(&out).await;
            let _ = tcp.shutdown().await;
            // Discard what the peer already sent (the rest of its flight): closing a socket
            // with unread data sends RST, and an RST can overtake the alert at the peer.
            let mut sink = [0u8; 4096];
            while matches!(tcp.try_read(&mut sink), Ok(n) if n > 0) {}
            return Err(HandshakeError::Tls(e));
        }
    }
    let suite = conn
        .negotiated_cipher_suite()
        .ok_or(HandshakeError::Tls(rustls::Error::HandshakeNotComplete))?
        .suite();
    let (client, server) = {
        let mut s = capture.secrets.lock().unwrap_or_else(|p| p.into_inner());
        (s.client.take(), s.server.take())
    };
    let missing = || {
        HandshakeError::Tls(rustls::Error::General(
            "traffic secrets were not logged (TLS 1.3 with a per-connection key log is required)".into(),
        ))
    };
    let (client, server) = (client.ok_or_else(missing)?, server.ok_or_else(missing)?);
    let (write, read) = match conn {
        rustls::Connection::Client(_) => (client, server),
        rustls::Connection::Server(_) => (server, client),
    };
    let unsupported = || {
        HandshakeError::Tls(rustls::Error::General(format!(
            "unsupported cipher suite {suite:?}"
        )))
    };
    let channel = TlsChannel::new(
        tcp,
        Direction::new(suite, read).ok_or_else(unsupported)?,
        Direction::new(suite, write).ok_or_else(unsupported)?,
    );
    Ok((channel, conn))
}

/// One direction's keys: the current traffic secret (for KeyUpdate), the AEAD key, IV and the
/// sequence number of the next record.
struct Direction {
    suite: CipherSuite,
    hkdf: hkdf::Algorithm,
    secret: Vec<u8>,
    key: Cipher,
    iv: [u8; 12],
    seq: u64,
}

impl Direction {
    fn new(suite: CipherSuite, secret: Vec<u8>) -> Option<Direction> {
        let (alg, hkdf) = suite_algorithms(suite)?;
        let (key, iv) = traffic_keys(alg, hkdf, &secret);
        Some(Direction {
            suite,
            hkdf,
            secret,
            key,
            iv,
            seq: 0,
        })
    }

    /// application_traffic_secret_N+1 (§7.2); the sequence number starts again at 0.
    fn update(&mut self) {
        let mut next = vec![0u8; self.secret.len()];
        expand_label(self.hkdf, &self.secret, b"traffic upd", &mut next);
        let (alg, _) = suite_algorithms(self.suite).expect("suite checked when the direction was made");
        let (key, iv) = traffic_keys(alg, self.hkdf, &next);
        self.secret.iter_mut().for_each(|b| *b = 0);
        self.secret = next;
        self.key = key;
        self.iv = iv;
        self.seq = 0;
    }

    /// The per-record nonce (§5.3), and the sequence number moves on.
    fn next_nonce(&mut self) -> io::Result<[u8; 12]> {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        // §5.3: a sequence number must not wrap. Unreachable in practice (KeyUpdate resets it
        // long before), but never reuse a nonce.
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or_else(|| io::Error::other("TLS sequence number exhausted"))?;
        Ok(n)
    }
}

/// The AEAD of one direction: the vector-AES code in [`crate::gcm`] where the CPU has it
/// (3× ring's speed on 16 KiB records here), ring otherwise and for ChaCha20.
enum Cipher {
    Vector(crate::gcm::AesGcm),
    Ring(aead::LessSafeKey),
}

/// `REMOTEINGRESS_VECTOR_AES=0` makes every new tunnel use ring's AES-GCM instead of the
/// vector-AES code: an escape hatch that needs no rebuild, and the benchmark's A/B switch.
fn vector_aes_allowed() -> bool {
    static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ALLOWED.get_or_init(|| std::env::var("REMOTEINGRESS_VECTOR_AES").map_or(true, |v| v != "0"))
}

impl Cipher {
    fn new(alg: &'static aead::Algorithm, key: &[u8]) -> Cipher {
        let vector = alg != &aead::CHACHA20_POLY1305 && vector_aes_allowed();
        match vector.then(|| crate::gcm::AesGcm::new(key)).flatten() {
            Some(k) => Cipher::Vector(k),
            None => Cipher::Ring(aead::LessSafeKey::new(
                aead::UnboundKey::new(alg, key).expect("key length matches the algorithm"),
            )),
        }
    }

    fn seal(&self, nonce: [u8; 12], aad: [u8; HEADER_LEN], data: &mut [u8]) -> io::Result<[u8; TAG_LEN]> {
        match self {
            Cipher::Vector(k) => Ok(k.seal_in_place(&nonce, &aad, data)),
            Cipher::Ring(k) => {
                let tag = k
                    .seal_in_place_separate_tag(
                        aead::Nonce::assume_unique_for_key(nonce),
                        aead::Aad::from(aad),
                        data,
                    )
                    .map_err(|_| io::Error::other("TLS: sealing a record failed"))?;
                let mut out = [0u8; TAG_LEN];
                out.copy_from_slice(tag.as_ref());
                Ok(out)
            }
        }
    }

    /// Opens `data` (ciphertext ‖ tag) in place; returns the plaintext length.
    fn open(&self, nonce: [u8; 12], aad: [u8; HEADER_LEN], data: &mut [u8]) -> Result<usize, ()> {
        match self {
            Cipher::Vector(k) => {
                let ct_len = data.len().checked_sub(TAG_LEN).ok_or(())?;
                let (ct, tag) = data.split_at_mut(ct_len);
                let tag: &[u8; TAG_LEN] = (&*tag).try_into().map_err(|_| ())?;
                k.open_in_place(&nonce, &aad, ct, tag)?;
                Ok(ct.len())
            }
            Cipher::Ring(k) => k
                .open_in_place(
                    aead::Nonce::assume_unique_for_key(nonce),
                    aead::Aad::from(aad),
                    data,
                )
                .map(|p| p.len())
                .map_err(|_| ()),
        }
    }
}

impl Drop for Direction {
    fn drop(&mut self) {
        self.secret.iter_mut().for_each(|b| *b = 0);
    }
}

fn suite_algorithms(suite: CipherSuite) -> Option<(&'static aead::Algorithm, hkdf::Algorithm)> {
    match suite {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => Some((&aead::AES_128_GCM, hkdf::HKDF_SHA256)),
        CipherSuite::TLS13_AES_256_GCM_SHA384 => Some((&aead::AES_256_GCM, hkdf::HKDF_SHA384)),
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => Some((&aead::CHACHA20_POLY1305, hkdf::HKDF_SHA256)),
        _ => None,
    }
}

/// [sender]_write_key and [sender]_write_iv from a traffic secret (§7.3).
fn traffic_keys(alg: &'static aead::Algorithm, hkdf: hkdf::Algorithm, secret: &[u8]) -> (Cipher, [u8; 12]) {
    let mut key = [0u8; 32];
    let key = &mut key[..alg.key_len()];
    expand_label(hkdf, secret, b"key", key);
    let mut iv = [0u8; 12];
    expand_label(hkdf, secret, b"iv", &mut iv);
    let cipher = Cipher::new(alg, key);
    key.iter_mut().for_each(|b| *b = 0);
    (cipher, iv)
}

struct OutLen(usize);

impl hkdf::KeyType for OutLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label(secret, label, "", out.len()) (§7.1).
fn expand_label(hkdf: hkdf::Algorithm, secret: &[u8], label: &[u8], out: &mut [u8]) {
    let prk = hkdf::Prk::new_less_safe(hkdf, secret);
    let length = (out.len() as u16).to_be_bytes();
    let label_len = [(b"tls13 ".len() + label.len()) as u8];
    let context_len = [0u8];
    let info: [&[u8]; 5] = [&length, &label_len, b"tls13 ", label, &context_len];
    prk.expand(&info, OutLen(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("output lengths here are far below HKDF's 255 × hash length limit");
}

/// An established TLS 1.3 connection: `AsyncRead` gives the peer's application data,
/// `AsyncWrite` seals and sends ours, `shutdown` sends close_notify.
pub struct TlsChannel {
    tcp: TcpStream,
    rd: Direction,
    wr: Direction,
    /// Received bytes: `rbuf[plain]` is decrypted data not yet read; `rbuf[rpos..rend]` is
    /// ciphertext not yet opened (at most one partial record once the full ones are opened).
    rbuf: Box<[u8]>,
    rpos: usize,
    rend: usize,
    plain: std::ops::Range<usize>,
    read_closed: bool,
    /// A read error is final: every later read repeats it.
    read_failed: Option<(io::ErrorKind, String)>,
    /// Sealed records; `wbuf[wpos..]` still has to reach the socket.
    wbuf: Vec<u8>,
    wpos: usize,
    answer_key_update: bool,
    close_sent: bool,
    /// [`KEY_UPDATE_AFTER`], lowered by tests.
    key_update_after: u64,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl TlsChannel {
    fn new(tcp: TcpStream, rd: Direction, wr: Direction) -> TlsChannel {
        TlsChannel {
            tcp,
            rd,
            wr,
            rbuf: vec![0u8; READ_BUFFER].into_boxed_slice(),
            rpos: 0,
            rend: 0,
            plain: 0..0,
            read_closed: false,
            read_failed: None,
            wbuf: Vec::with_capacity(SEND_BUFFER + WRITE_TAKE + 8 * MAX_RECORD),
            wpos: 0,
            answer_key_update: false,
            close_sent: false,
            key_update_after: KEY_UPDATE_AFTER,
        }
    }

    /// Opens the next whole record in `rbuf`, if there is one. `Ok(false)`: need more bytes.
    fn open_next(&mut self) -> io::Result<bool> {
        let avail = self.rend - self.rpos;
        if avail < HEADER_LEN {
            return Ok(false);
        }
        let h = &self.rbuf[self.rpos..self.rpos + HEADER_LEN];
        let header: [u8; HEADER_LEN] = [h[0], h[1], h[2], h[3], h[4]];
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if header[0] != CONTENT_APPLICATION_DATA {
            return Err(invalid(format!(
                "TLS: unprotected record of content type {} after the handshake",
                header[0]
            )));
        }
        if len > MAX_CIPHERTEXT || len <= TAG_LEN {
            return Err(invalid(format!("TLS: record length {len} out of range")));
        }
        if avail < HEADER_LEN + len {
            return Ok(false);
        }
        let start = self.rpos + HEADER_LEN;
        self.rpos = start + len;
        let nonce = self.rd.next_nonce()?;
        let opened = self
            .rd
            .key
            .open(nonce, header, &mut self.rbuf[start..start + len])
            .map_err(|_| invalid("TLS: record failed authentication (corrupted or forged)"))?;
        // TLSInnerPlaintext: content ‖ type ‖ zero padding (§5.4).
        let inner = &self.rbuf[start..start + opened];
        let Some(type_at) = inner.iter().rposition(|&b| b != 0) else {
            return Err(invalid("TLS: record without a content type"));
        };
        match inner[type_at] {
            CONTENT_APPLICATION_DATA => self.plain = start..start + type_at,
            CONTENT_ALERT => {
                let alert = &inner[..type_at];
                if alert.len() == 2 && alert[1] == ALERT_CLOSE_NOTIFY {
                    self.read_closed = true;
                } else {
                    return Err(invalid(format!("TLS: peer sent alert {alert:?}")));
                }
            }
            CONTENT_HANDSHAKE => {
                let msg = &inner[..type_at];
                // Only KeyUpdate may follow the handshake here (no tickets, no client auth):
                // type 24, length 1, request_update 0 or 1, one message per record.
                if msg.len() != 5 || msg[0] != HANDSHAKE_KEY_UPDATE || msg[1..4] != [0, 0, 1] || msg[4] > 1 {
                    return Err(invalid(format!(
                        "TLS: unexpected post-handshake message (type {})",
                        msg.first().copied().unwrap_or(0)
                    )));
                }
                self.rd.update();
                if msg[4] == 1 {
                    self.answer_key_update = true;
                }
            }
            other => return Err(invalid(format!("TLS: record of unknown content type {other}"))),
        }
        Ok(true)
    }

    fn poll_read_inner(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        loop {
            if !self.plain.is_empty() {
                let n = self.plain.len().min(buf.remaining());
                buf.put_slice(&self.rbuf[self.plain.start..self.plain.start + n]);
                self.plain.start += n;
                if buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
            }
            if self.read_closed {
                return Poll::Ready(Ok(()));
            }
            if self.open_next()? {
                continue;
            }
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
            // Everything opened was read: keep the partial record, make room behind it.
            if self.rpos == self.rend {
                self.rpos = 0;
                self.rend = 0;
            } else if self.rbuf.len() - self.rend < MAX_RECORD {
                self.rbuf.copy_within(self.rpos..self.rend, 0);
                self.rend -= self.rpos;
                self.rpos = 0;
            }
            let mut rb = ReadBuf::new(&mut self.rbuf[self.rend..]);
            ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    if self.rend > self.rpos {
                        "TLS: connection closed in the middle of a record"
                    } else {
                        "TLS: connection closed without close_notify"
                    },
                )));
            }
            self.rend += n;
        }
    }

    /// Seals up to [`WRITE_TAKE`] bytes of `data` (gathered across the slices) as application
    /// data records into `wbuf`, after a KeyUpdate if one is due. Returns how many bytes.
    fn seal(&mut self, data: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let total = data.iter().map(|s| s.len()).sum::<usize>().min(WRITE_TAKE);
        let mut pieces = data.iter().map(|s| &s[..]).filter(|s| !s.is_empty());
        let mut current: &[u8] = &[];
        let mut left = total;
        while left > 0 {
            if self.answer_key_update || self.wr.seq >= self.key_update_after {
                // request_update = 0: we answer or rotate; we never ask the peer to.
                self.seal_record(CONTENT_HANDSHAKE, &[&[HANDSHAKE_KEY_UPDATE, 0, 0, 1, 0]])?;
                self.wr.update();
                self.answer_key_update = false;
            }
            // One record's worth of slices (at most MAX_PLAINTEXT bytes).
            let mut parts: [&[u8]; 16] = [&[]; 16];
            let mut nparts = 0;
            let mut room = left.min(MAX_PLAINTEXT);
            left -= room;
            while room > 0 && nparts < parts.len() {
                if current.is_empty() {
                    current = pieces.next().expect("total counts only bytes in the slices");
                }
                let k = current.len().min(room);
                parts[nparts] = &current[..k];
                current = &current[k..];
                nparts += 1;
                room -= k;
            }
            // More than 16 tiny slices in one record: the rest goes in the next one.
            left += room;
            self.seal_record(CONTENT_APPLICATION_DATA, &parts[..nparts])?;
        }
        Ok(total)
    }

    /// Seals one record whose content is the concatenation of `data`.
    fn seal_record(&mut self, content_type: u8, data: &[&[u8]]) -> io::Result<()> {
        let plain: usize = data.iter().map(|d| d.len()).sum();
        debug_assert!(plain <= MAX_PLAINTEXT);
        let len = plain + 1 + TAG_LEN;
        let header = [CONTENT_APPLICATION_DATA, 0x03, 0x03, (len >> 8) as u8, len as u8];
        let nonce = self.wr.next_nonce()?;
        let at = self.wbuf.len();
        self.wbuf.extend_from_slice(&header);
        for d in data {
            self.wbuf.extend_from_slice(d);
        }
        self.wbuf.push(content_type);
        let tag = self
            .wr
            .key
            .seal(nonce, header, &mut self.wbuf[at + HEADER_LEN..])?;
        self.wbuf.extend_from_slice(&tag);
        Ok(())
    }

    /// Writes sealed records until none are left (or the socket is full: `Pending`).
    fn poll_push(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.wbuf[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        self.wbuf.clear();
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }

    fn pending(&self) -> usize {
        self.wbuf.len() - self.wpos
    }
}

impl AsyncRead for TlsChannel {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some((kind, msg)) = &this.read_failed {
            return Poll::Ready(Err(io::Error::new(*kind, msg.clone())));
        }
        match this.poll_read_inner(cx, buf) {
            Poll::Ready(Err(e)) => {
                this.read_failed = Some((e.kind(), e.to_string()));
                Poll::Ready(Err(e))
            }
            other => other,
        }
    }
}

impl AsyncWrite for TlsChannel {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.close_sent {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "TLS: write after close_notify",
            )));
        }
        if this.pending() >= SEND_BUFFER {
            ready!(this.poll_push(cx))?;
        }
        if this.wpos > 0 && this.wpos >= this.wbuf.len() / 2 {
            this.wbuf.drain(..this.wpos);
            this.wpos = 0;
        }
        let take = this.seal(bufs)?;
        // Start sending now; what the socket does not take waits for the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_push(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(take))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_push(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            // close_notify is a warning-level alert (level 1) [6.1].
            this.seal_record(CONTENT_ALERT, &[&[1, ALERT_CLOSE_NOTIFY]])?;
            this.close_sent = true;
        }
        ready!(this.poll_push(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{Identity, Trust};
    use tokio::net::TcpListener;

    const CERT: &str = include_str!("testdata/cert.pem");
    const KEY: &str = include_str!("testdata/key.pem");

    fn identity() -> Identity {
        Identity::from_pem(CERT, KEY).unwrap()
    }

    fn server_name() -> rustls::ServerName {
        rustls::ServerName::try_from("hub.remoteingress.invalid").unwrap()
    }

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.unwrap(), s.unwrap().0)
    }

    /// A handshake between two ends of this module over loopback, the client trusting `pin`.
    async fn handshake_pair(
        pin: String,
    ) -> (
        Result<(TlsChannel, rustls::Connection), HandshakeError>,
        Result<(TlsChannel, rustls::Connection), HandshakeError>,
    ) {
        let id = identity();
        let (c, s) = tcp_pair().await;
        let (ccfg, ccap) = client_config(&crate::tls::client_config(Trust::Pinned(pin)));
        let (scfg, scap) = server_config(&id.server_config().unwrap());
        let cconn = rustls::ClientConnection::new(ccfg, server_name()).unwrap();
        let sconn = rustls::ServerConnection::new(scfg).unwrap();
        tokio::join!(
            handshake(c, cconn.into(), &ccap),
            handshake(s, sconn.into(), &scap)
        )
    }

    /// Both ends on this record layer; returns (client, server) and their exporter values.
    async fn channel_pair() -> ((TlsChannel, [u8; 32]), (TlsChannel, [u8; 32])) {
        let (a, b) = handshake_pair(identity().fingerprint).await;
        let (ca, cconn) = a.unwrap();
        let (sb, sconn) = b.unwrap();
        let mut e1 = [0u8; 32];
        let mut e2 = [0u8; 32];
        cconn.export_keying_material(&mut e1, b"test", None).unwrap();
        sconn.export_keying_material(&mut e2, b"test", None).unwrap();
        ((ca, e1), (sb, e2))
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[tokio::test]
    async fn bulk_both_ways_and_close_notify() {
        let ((mut c, e1), (mut s, e2)) = channel_pair().await;
        assert_eq!(e1, e2, "both ends derive the same exporter value");
        let up = pattern(3 * 1024 * 1024 + 17, 1);
        let down = pattern(1024 * 1024 + 5, 2);
        let (up2, down2) = (up.clone(), down.clone());
        let client = tokio::spawn(async move {
            // Odd write sizes cross record boundaries.
            for chunk in up2.chunks(70_001) {
                c.write_all(chunk).await.unwrap();
            }
            c.shutdown().await.unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert!(got == up, "server received what the client sent");
        s.write_all(&down2).await.unwrap();
        s.shutdown().await.unwrap();
        assert!(
            client.await.unwrap() == down,
            "client received what the server sent"
        );
    }

    #[tokio::test]
    async fn vectored_writes_gather_slices_into_records() {
        let ((mut c, _), (mut s, _)) = channel_pair().await;
        // Tiny slices (more per record than one record's slice table), then large ones that
        // straddle record and WRITE_TAKE boundaries.
        let data = pattern(600_000, 5);
        let mut cuts = vec![0usize];
        for i in 0..40 {
            cuts.push(cuts.last().unwrap() + 1 + i % 3);
        }
        while *cuts.last().unwrap() < data.len() {
            let next = (cuts.last().unwrap() + 9_001 + cuts.len() * 1_000).min(data.len());
            cuts.push(next);
        }
        let d2 = data.clone();
        let t = tokio::spawn(async move {
            let mut at = 0;
            while at < cuts.len() - 1 {
                let slices: Vec<io::IoSlice<'_>> = cuts[at..]
                    .windows(2)
                    .take(64)
                    .map(|w| io::IoSlice::new(&d2[w[0]..w[1]]))
                    .collect();
                let mut n = c.write_vectored(&slices).await.unwrap();
                assert!(n > 0);
                // Advance over whole slices and re-send the rest of a partly taken one.
                while n > 0 {
                    let len = cuts[at + 1] - cuts[at];
                    if n >= len {
                        n -= len;
                        at += 1;
                    } else {
                        cuts[at] += n;
                        n = 0;
                    }
                }
            }
            c.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        t.await.unwrap();
        assert!(got == data, "the receiver sees the slices' bytes in order");
    }

    #[tokio::test]
    async fn key_updates_both_directions_keep_the_data_flowing() {
        let ((mut c, _), (mut s, _)) = channel_pair().await;
        c.key_update_after = 3;
        s.key_update_after = 5;
        let data = pattern(400_000, 3);
        let d2 = data.clone();
        let t = tokio::spawn(async move {
            c.write_all(&d2).await.unwrap();
            c.shutdown().await.unwrap();
            let secret0 = c.wr.secret.clone();
            (c, secret0)
        });
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert!(got == data);
        let (c, _) = t.await.unwrap();
        // 400 000 bytes = 25 records, an update every 3: the client rotated 8 times and the
        // server followed each one.
        assert_eq!(c.wr.secret, s.rd.secret);
        assert!(c.wr.seq <= 4 && s.rd.seq == c.wr.seq);
    }

    #[tokio::test]
    async fn a_flipped_bit_fails_authentication_and_stays_failed() {
        let ((mut c, _), (s, _)) = channel_pair().await;
        let mut raw = s.tcp;
        c.write_all(b"hello").await.unwrap();
        c.flush().await.unwrap();
        // Read the record off the wire, flip one ciphertext bit, feed it back through a fresh
        // pair of sockets to a channel with the server's read keys.
        let mut rec = vec![0u8; HEADER_LEN + 5 + 1 + TAG_LEN];
        raw.read_exact(&mut rec).await.unwrap();
        rec[HEADER_LEN + 2] ^= 0x40;
        let (mut w, r) = tcp_pair().await;
        let mut victim = TlsChannel::new(r, s.rd, s.wr);
        w.write_all(&rec).await.unwrap();
        let mut buf = [0u8; 64];
        let e = victim.read(&mut buf).await.unwrap_err();
        assert!(e.to_string().contains("failed authentication"), "{e}");
        let e = victim.read(&mut buf).await.unwrap_err();
        assert!(e.to_string().contains("failed authentication"), "{e}");
    }

    /// The vector-AES path and ring seal the same records to the same bytes and open each
    /// other's, for both AES suites (the interop test above covers vector AES against rustls).
    #[test]
    fn vector_aes_and_ring_agree_on_records() {
        for (alg, key_len) in [(&aead::AES_128_GCM, 16), (&aead::AES_256_GCM, 32)] {
            let key: Vec<u8> = (0..key_len as u8).collect();
            let Some(vector) = crate::gcm::AesGcm::new(&key) else {
                eprintln!("no VAES on this CPU: only ring is in use");
                return;
            };
            let vector = Cipher::Vector(vector);
            let ring = Cipher::Ring(aead::LessSafeKey::new(aead::UnboundKey::new(alg, &key).unwrap()));
            for len in [0usize, 1, 17, 255, 256, 4099, MAX_PLAINTEXT + 1] {
                let nonce = [len as u8; 12];
                let aad = [CONTENT_APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
                let plain = pattern(len, 4);
                let (mut a, mut b) = (plain.clone(), plain.clone());
                let ta = vector.seal(nonce, aad, &mut a).unwrap();
                let tb = ring.seal(nonce, aad, &mut b).unwrap();
                assert!(a == b && ta == tb, "same ciphertext and tag at {len} bytes");
                a.extend_from_slice(&ta);
                b.extend_from_slice(&tb);
                assert_eq!(ring.open(nonce, aad, &mut a), Ok(len));
                assert_eq!(vector.open(nonce, aad, &mut b), Ok(len));
                assert!(a[..len] == plain[..] && b[..len] == plain[..]);
                b[len / 2] ^= 1;
                assert_eq!(vector.open(nonce, aad, &mut b), Err(()));
            }
        }
    }

    #[tokio::test]
    async fn truncation_is_an_error_not_an_end() {
        let ((c, _), (mut s, _)) = channel_pair().await;
        drop(c); // FIN without close_notify
        let mut buf = [0u8; 16];
        let e = s.read(&mut buf).await.unwrap_err();
        assert!(e.to_string().contains("without close_notify"), "{e}");
    }

    /// Interoperability with rustls' own record layer, both directions, across KeyUpdates sent
    /// by this module: proves the key schedule, nonces, header AAD, inner content type and
    /// KeyUpdate encoding against an independent implementation.
    #[tokio::test]
    async fn rustls_reads_what_we_write_and_we_read_what_rustls_writes() {
        let id = identity();
        let (c, s) = tcp_pair().await;
        let (ccfg, ccap) = client_config(&crate::tls::client_config(Trust::Pinned(id.fingerprint.clone())));
        // The server is plain tokio-rustls (with tickets off, as ours).
        let (scfg, _) = server_config(&id.server_config().unwrap());
        let acceptor = tokio_rustls::TlsAcceptor::from(scfg);
        let cconn = rustls::ClientConnection::new(ccfg, server_name()).unwrap();
        let (ours, theirs) = tokio::join!(handshake(c, cconn.into(), &ccap), acceptor.accept(s));
        let (mut ours, _) = ours.unwrap();
        let mut theirs = theirs.unwrap();
        ours.key_update_after = 4;
        let up = pattern(300_000, 7);
        let down = pattern(200_000, 9);
        let (up2, down2) = (up.clone(), down.clone());
        let t = tokio::spawn(async move {
            let mut got = vec![0u8; up2.len()];
            theirs.read_exact(&mut got).await.unwrap();
            assert!(got == up2, "rustls decoded our records");
            theirs.write_all(&down2).await.unwrap();
            theirs.shutdown().await.unwrap();
        });
        ours.write_all(&up).await.unwrap();
        ours.flush().await.unwrap();
        let mut got = Vec::new();
        ours.read_to_end(&mut got).await.unwrap();
        t.await.unwrap();
        assert!(got == down, "we decoded rustls' records");
        assert!(ours.wr.seq <= 4);
    }

    #[tokio::test]
    async fn a_wrong_pin_fails_the_handshake_with_the_pin_error() {
        let (a, b) = handshake_pair("00".repeat(32)).await;
        let ea = a.err().expect("client must fail").to_string();
        let eb = b.err().expect("server must fail").to_string();
        assert!(ea.contains(crate::tls::PIN_MISMATCH), "{ea}");
        assert!(eb.contains("alert"), "the server hears why: {eb}");
    }
}
