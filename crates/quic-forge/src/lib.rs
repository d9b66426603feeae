//! Forged QUIC v1 Initial packets: validly protected, hostile inside.
//!
//! Test-support code (the hostile-traffic tests of `tunnel-core`). It lets a test throw hostile Initial packets at a live QUIC server (our
//! hub) and, through a fake server, at a live QUIC client (our edge). Every packet that is meant
//! to reach the peer's frame parser carries *valid* Initial packet protection, so the hostile
//! bytes get past decryption; a smaller set breaks the header or the protection on purpose.
//!
//! The cryptography is rustls': [`rustls::quic::Keys::initial`] derives the Initial secrets
//! (RFC 9001 §5.2) and its `PacketKey` / `HeaderProtectionKey` seal the payload and mask the
//! header. This module only lays out bytes: long headers (RFC 9000 §17.2.2), variable-length
//! integers (§16), packet numbers (§17.1), padding (§14.1), frames (§19), and the TLS 1.3
//! ClientHello / ServerHello messages (RFC 8446 §4.1) that ride in CRYPTO frames.
//!
//! Layout, top-down:
//! 1. packet forging: [`client_initial`], [`server_initial`], [`Seal`], [`open_initial`];
//! 2. the long-header parser for network bytes: [`parse_long_header`] (never panics);
//! 3. TLS messages and transport parameters: [`client_hello`], [`server_hello`],
//!    [`client_transport_params`], [`tp`];
//! 4. frames: [`crypto_frame`], [`ack_frame`], …;
//! 5. the seeded corpora: [`Case`], [`Wrap`], [`corpus`], [`server_corpus`];
//! 6. the PRNG ([`Prng`], SplitMix64 — not cryptography) and varint helpers;
//! 7. unit tests (RFC 9001 Appendix A vector, round trips, parser robustness).

use rustls::quic::{Keys, Version};
use rustls::{Side, SupportedCipherSuite, Tls13CipherSuite};

// ---------------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------------

/// QUIC version 1 (RFC 9000 §15).
pub const QUIC_V1: u32 = 0x0000_0001;

/// RFC 9000 §14.1: a client pads every datagram carrying an Initial to at least 1200 bytes
/// (servers drop smaller ones), and a server does the same for ack-eliciting Initials.
pub const MIN_INITIAL_DATAGRAM: usize = 1200;

/// RFC 9000 §17.2: in QUIC v1 a connection ID is at most 20 bytes.
pub const MAX_CID_LEN: usize = 20;

/// RFC 9000 §7.2: the DCID of a client's first Initial is at least 8 bytes.
pub const MIN_CLIENT_DCID_LEN: usize = 8;

/// Largest value a QUIC varint holds (RFC 9000 §16): 2^62 - 1.
pub const VARINT_MAX: u64 = (1 << 62) - 1;

/// TLS extension number of `quic_transport_parameters` for QUIC v1 (RFC 9001 §8.2).
pub const EXT_QUIC_TRANSPORT_PARAMETERS: u16 = 0x0039;

/// The packet-number length used unless a caller asks otherwise: 4 bytes, the largest
/// encoding (RFC 9000 §17.1). A `u32` packet number then goes on the wire whole, a receiver
/// that has seen nothing yet decodes it exactly, and the header-protection sample (which starts
/// 4 bytes after the packet number field begins) always lies inside the payload+tag.
const DEFAULT_PN_LEN: usize = 4;

/// RFC 9001 §5.4.2: the sample starts this many bytes after the start of the packet number
/// field, as if the packet number were always 4 bytes long.
const SAMPLE_OFFSET: usize = 4;

/// Header-protection sample length for AES-based header protection (RFC 9001 §5.4.3).
const SAMPLE_LEN: usize = 16;

/// Tag length of AEAD_AES_128_GCM, the Initial packets' AEAD (RFC 9001 §5.3).
const TAG_LEN: usize = 16;

/// First-byte bits of a long header (RFC 9000 §17.2): header form (1 = long) and fixed bit.
const LONG_FORM_BIT: u8 = 0x80;
const FIXED_BIT: u8 = 0x40;

/// Long-header packet types of QUIC v1 (RFC 9000 Table 5), i.e. first-byte bits 4–5.
pub const TYPE_INITIAL: u8 = 0;
pub const TYPE_ZERO_RTT: u8 = 1;
pub const TYPE_HANDSHAKE: u8 = 2;
pub const TYPE_RETRY: u8 = 3;

/// The ALPN the corpora's ClientHellos offer. The live tests configure their servers with the
/// same value, so a well-formed case gets past ALPN negotiation and into the deeper checks.
pub const CORPUS_ALPN: &[u8] = b"ri-test";

/// Bounds of a TLS length prefix (RFC 8446 §3.3): a u16 field cannot say more than this.
const U16_MAX_LEN: usize = 0xffff;
/// …and a u24 field (the handshake message length) no more than this.
const U24_MAX_LEN: usize = 0x00ff_ffff;

// ---------------------------------------------------------------------------------------------
// 1. Packet forging
// ---------------------------------------------------------------------------------------------

/// A protected client Initial in a datagram of at least [`MIN_INITIAL_DATAGRAM`] bytes: the
/// `frames` (plaintext frame bytes, any content) followed by as many PADDING frames as needed.
///
/// Keys come from `dcid` (it is the client's first DCID) and [`Side::Client`]. The packet number
/// is sent in 4 bytes. Connection IDs longer than 255 bytes are cut to 255 (the length byte's
/// limit); use [`Seal`] to break other header fields.
pub fn client_initial(dcid: &[u8], scid: &[u8], token: &[u8], pn: u32, frames: &[u8]) -> Vec<u8> {
    Seal::client(dcid, scid, token, pn).seal(frames)
}

/// A protected server Initial answering a client whose first Initial had DCID `client_dcid`
/// (the Initial keys derive from it, [`Side::Server`]) and SCID `client_scid` (our DCID).
/// `server_scid` is the connection ID we pose with. The datagram is padded with PADDING frames
/// to [`MIN_INITIAL_DATAGRAM`] bytes, as RFC 9000 §14.1 asks of a server's ack-eliciting Initial.
pub fn server_initial(
    client_dcid: &[u8],
    client_scid: &[u8],
    server_scid: &[u8],
    pn: u32,
    frames: &[u8],
) -> Vec<u8> {
    Seal::server(client_dcid, client_scid, server_scid, pn).seal(frames)
}

/// How [`Seal::seal`] fills the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pad {
    /// Nothing added: the datagram is exactly the packet.
    None,
    /// PADDING frames (zero bytes) appended to the frames *inside* the packet until the datagram
    /// is at least this long.
    Frames(usize),
    /// The packet protects exactly the given frames; zero bytes are appended *after* it until the
    /// datagram is this long. A receiver reads them as a second, undecodable coalesced packet
    /// and drops them, so a payload that ends mid-frame (say the single byte 0x40) stays cut.
    After(usize),
}

/// Every field of a long-header Initial, each overridable, plus the keys to seal it with.
///
/// [`Seal::client`] and [`Seal::server`] give valid defaults; a corpus case changes one field
/// to break exactly one thing.
#[derive(Clone, Debug)]
pub struct Seal<'a> {
    /// Whose Initial keys seal the packet: [`Side::Client`] to pose as a client.
    pub side: Side,
    /// The DCID of the client's first Initial; the Initial secrets derive from it.
    pub key_dcid: &'a [u8],
    /// The version field. Keys are always QUIC v1's, whatever this says.
    pub version: u32,
    pub dcid: &'a [u8],
    pub scid: &'a [u8],
    /// The token field (Initial packets only).
    pub token: &'a [u8],
    pub pn: u32,
    /// Packet-number length on the wire, 1–4 bytes (clamped into that range).
    pub pn_len: usize,
    /// Long packet type bits (0 = Initial). The body is laid out as an Initial regardless.
    pub packet_type: u8,
    /// The two reserved bits (protected by header protection; RFC 9000 §17.2 says they are 0).
    pub reserved_bits: u8,
    /// The fixed bit (RFC 9000 §17.2 says 1).
    pub fixed_bit: bool,
    /// Added to the true value of the Length field (negative: claims fewer bytes than sent).
    pub length_delta: i64,
    /// Added to the true value of the token length field.
    pub token_len_delta: u64,
    pub pad: Pad,
}

impl<'a> Seal<'a> {
    /// A valid client Initial: keys from `dcid`, PADDING frames up to 1200 bytes.
    pub fn client(dcid: &'a [u8], scid: &'a [u8], token: &'a [u8], pn: u32) -> Self {
        Seal {
            side: Side::Client,
            key_dcid: dcid,
            version: QUIC_V1,
            dcid,
            scid,
            token,
            pn,
            pn_len: DEFAULT_PN_LEN,
            packet_type: TYPE_INITIAL,
            reserved_bits: 0,
            fixed_bit: true,
            length_delta: 0,
            token_len_delta: 0,
            pad: Pad::Frames(MIN_INITIAL_DATAGRAM),
        }
    }

    /// A valid server Initial answering the client whose first Initial had DCID `client_dcid`
    /// and SCID `client_scid`.
    pub fn server(client_dcid: &'a [u8], client_scid: &'a [u8], server_scid: &'a [u8], pn: u32) -> Self {
        Seal {
            side: Side::Server,
            key_dcid: client_dcid,
            dcid: client_scid,
            scid: server_scid,
            token: &[],
            ..Seal::client(&[], &[], &[], pn)
        }
    }

    /// Lays out the header, encrypts `frames` (plus padding) with the packet key, masks the
    /// header with the header-protection key, and returns the datagram.
    pub fn seal(&self, frames: &[u8]) -> Vec<u8> {
        let keys = initial_keys(self.key_dcid, self.side);
        let pn_len = self.pn_len.clamp(1, 4);

        let mut payload = frames.to_vec();
        if let Pad::Frames(target) = self.pad {
            let total = self.header(pn_len, payload.len()).len() + payload.len() + TAG_LEN;
            if total < target {
                // The Length field may grow by a byte or two with the payload; overshooting the
                // target by that much is harmless (the rule is a minimum).
                payload.resize(payload.len() + (target - total), 0);
            }
        }
        // The sample must lie within payload+tag; only a packet number shorter than 4 bytes
        // with a payload under 4 bytes falls short. PADDING fills the gap.
        if pn_len + payload.len() < SAMPLE_OFFSET {
            payload.resize(SAMPLE_OFFSET - pn_len, 0);
        }

        let header = self.header(pn_len, payload.len());
        let pn_offset = header.len() - pn_len;
        let tag = keys
            .local
            .packet
            .encrypt_in_place(u64::from(self.pn), &header, &mut payload)
            .expect("an Initial payload is far below AES-GCM's size limit");

        let mut packet = header;
        packet.extend_from_slice(&payload);
        packet.extend_from_slice(tag.as_ref());

        let sample_at = pn_offset + SAMPLE_OFFSET;
        let mut sample = [0u8; SAMPLE_LEN];
        sample.copy_from_slice(&packet[sample_at..sample_at + SAMPLE_LEN]);
        let (first, rest) = packet.split_at_mut(1);
        keys.local
            .header
            .encrypt_in_place(
                &sample,
                &mut first[0],
                &mut rest[pn_offset - 1..pn_offset - 1 + pn_len],
            )
            .expect("sample is 16 bytes and the packet number at most 4");

        if let Pad::After(target) = self.pad {
            if packet.len() < target {
                packet.resize(target, 0);
            }
        }
        packet
    }

    /// The unprotected header, packet number included, for a payload of `payload_len` bytes.
    fn header(&self, pn_len: usize, payload_len: usize) -> Vec<u8> {
        let first = LONG_FORM_BIT
            | if self.fixed_bit { FIXED_BIT } else { 0 }
            | (self.packet_type & 0x03) << 4
            | (self.reserved_bits & 0x03) << 2
            | (pn_len as u8 - 1);
        let mut h = vec![first];
        h.extend_from_slice(&self.version.to_be_bytes());
        put_cid(&mut h, self.dcid);
        put_cid(&mut h, self.scid);
        put_varint(
            &mut h,
            (self.token.len() as u64).saturating_add(self.token_len_delta),
        );
        h.extend_from_slice(self.token);
        let length = (pn_len + payload_len + TAG_LEN) as i64;
        let length = length
            .saturating_add(self.length_delta)
            .clamp(0, VARINT_MAX as i64);
        put_varint(&mut h, length as u64);
        h.extend_from_slice(&self.pn.to_be_bytes()[4 - pn_len..]);
        h
    }
}

/// A decrypted Initial packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The truncated packet number as sent (its expansion against packet number 0, which is
    /// what the first packets of a connection are decoded against).
    pub pn: u64,
    pub dcid: Vec<u8>,
    pub scid: Vec<u8>,
    /// The plaintext frame bytes, padding included.
    pub frames: Vec<u8>,
}

/// Removes header protection from and decrypts the first Initial packet in `datagram`, as the
/// endpoint `side` would: with the *peer's* Initial keys derived from `key_dcid`. Returns `None`
/// for anything that is not a v1 Initial, is cut short, or fails authentication.
pub fn open_initial(datagram: &[u8], key_dcid: &[u8], side: Side) -> Option<Opened> {
    let hdr = parse_long_header(datagram)?;
    let LongBody::Initial {
        pn_offset,
        packet_len,
        ..
    } = hdr.body
    else {
        return None;
    };
    if hdr.version != QUIC_V1 || packet_len < pn_offset + SAMPLE_OFFSET + SAMPLE_LEN {
        return None;
    }
    let keys = initial_keys(key_dcid, side);
    let mut packet = datagram.get(..packet_len)?.to_vec();
    let mut sample = [0u8; SAMPLE_LEN];
    sample.copy_from_slice(packet.get(pn_offset + SAMPLE_OFFSET..pn_offset + SAMPLE_OFFSET + SAMPLE_LEN)?);
    let (first, rest) = packet.split_at_mut(1);
    keys.remote
        .header
        .decrypt_in_place(
            &sample,
            &mut first[0],
            rest.get_mut(pn_offset - 1..pn_offset + 3)?,
        )
        .ok()?;
    let pn_len = usize::from(packet[0] & 0x03) + 1;
    let pn = packet[pn_offset..pn_offset + pn_len]
        .iter()
        .fold(0u64, |acc, b| acc << 8 | u64::from(*b));
    let (header, body) = packet.split_at_mut(pn_offset + pn_len);
    let frames = keys
        .remote
        .packet
        .decrypt_in_place(pn, header, body)
        .ok()?
        .to_vec();
    Some(Opened {
        pn,
        dcid: hdr.dcid.to_vec(),
        scid: hdr.scid.to_vec(),
        frames,
    })
}

/// Initial keys for QUIC v1 from rustls' ring provider (AES-128-GCM, RFC 9001 §5).
fn initial_keys(client_dcid: &[u8], side: Side) -> Keys {
    let suite = aes128_gcm_suite();
    let quic = suite
        .quic
        .expect("rustls' ring provider supports QUIC with AES-128-GCM");
    Keys::initial(Version::V1, suite, quic, client_dcid, side)
}

fn aes128_gcm_suite() -> &'static Tls13CipherSuite {
    #[allow(unreachable_patterns)] // without rustls' `tls12` feature there is one variant
    match rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256 {
        SupportedCipherSuite::Tls13(suite) => suite,
        _ => unreachable!("TLS13_AES_128_GCM_SHA256 is a TLS 1.3 suite"),
    }
}

fn put_cid(out: &mut Vec<u8>, cid: &[u8]) {
    let cid = &cid[..cid.len().min(usize::from(u8::MAX))];
    out.push(cid.len() as u8);
    out.extend_from_slice(cid);
}

// ---------------------------------------------------------------------------------------------
// 2. Long-header parser (network bytes: bounds-checked, never panics)
// ---------------------------------------------------------------------------------------------

/// A parsed long header (RFC 9000 §17.2, RFC 8999 §5.1 for the version-independent part).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LongHeader<'a> {
    /// The first byte as received (still masked by header protection where that applies).
    pub first: u8,
    pub version: u32,
    pub dcid: &'a [u8],
    pub scid: &'a [u8],
    pub body: LongBody<'a>,
}

/// What follows the connection IDs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LongBody<'a> {
    /// Version 0: the list of supported versions (RFC 9000 §17.2.1).
    VersionNegotiation { versions: Vec<u32> },
    /// v1 Initial: token, where the (protected) packet number starts, and the length of the
    /// whole packet so that `&datagram[packet_len..]` is the next coalesced packet.
    Initial {
        token: &'a [u8],
        pn_offset: usize,
        packet_len: usize,
    },
    /// v1 0-RTT or Handshake (`packet_type` 1 or 2), laid out like an Initial minus the token.
    Protected {
        packet_type: u8,
        pn_offset: usize,
        packet_len: usize,
    },
    /// v1 Retry: the token and the 16-byte integrity tag (RFC 9000 §17.2.5).
    Retry {
        token: &'a [u8],
        integrity_tag: &'a [u8],
    },
    /// A version this parser does not know: only the invariant fields are meaningful.
    Unknown { rest: &'a [u8] },
}

/// Parses the long header at the start of `datagram`, bounds-checked throughout.
///
/// Returns `None` if it is not a long header, is cut short, has a v1 connection ID over
/// [`MAX_CID_LEN`] bytes, or (v1 Initial/0-RTT/Handshake) a Length field that runs past the end.
pub fn parse_long_header(datagram: &[u8]) -> Option<LongHeader<'_>> {
    let mut r = Reader(datagram);
    let first = r.u8()?;
    if first & LONG_FORM_BIT == 0 {
        return None;
    }
    let version = u32::from_be_bytes(r.bytes(4)?.try_into().ok()?);
    let dcid_len = usize::from(r.u8()?);
    let dcid = r.bytes(dcid_len)?;
    let scid_len = usize::from(r.u8()?);
    let scid = r.bytes(scid_len)?;
    if version == 0 {
        let list = r.rest();
        let versions = list
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        return Some(LongHeader {
            first,
            version,
            dcid,
            scid,
            body: LongBody::VersionNegotiation { versions },
        });
    }
    if version != QUIC_V1 {
        let rest = r.rest();
        return Some(LongHeader {
            first,
            version,
            dcid,
            scid,
            body: LongBody::Unknown { rest },
        });
    }
    if dcid_len > MAX_CID_LEN || scid_len > MAX_CID_LEN {
        return None;
    }
    let packet_type = (first >> 4) & 0x03;
    let body = match packet_type {
        TYPE_RETRY => {
            let rest = r.rest();
            let split = rest.len().checked_sub(TAG_LEN)?;
            LongBody::Retry {
                token: &rest[..split],
                integrity_tag: &rest[split..],
            }
        }
        _ => {
            let token = if packet_type == TYPE_INITIAL {
                let token_len = usize::try_from(r.varint()?).ok()?;
                Some(r.bytes(token_len)?)
            } else {
                None
            };
            let length = usize::try_from(r.varint()?).ok()?;
            let pn_offset = datagram.len() - r.0.len();
            let packet_len = pn_offset.checked_add(length)?;
            if packet_len > datagram.len() {
                return None;
            }
            match token {
                Some(token) => LongBody::Initial {
                    token,
                    pn_offset,
                    packet_len,
                },
                None => LongBody::Protected {
                    packet_type,
                    pn_offset,
                    packet_len,
                },
            }
        }
    };
    Some(LongHeader {
        first,
        version,
        dcid,
        scid,
        body,
    })
}

/// A cursor over network bytes; every read is checked and returns `None` past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn varint(&mut self) -> Option<u64> {
        let (v, used) = read_varint(self.0)?;
        self.0 = &self.0[used..];
        Some(v)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

// ---------------------------------------------------------------------------------------------
// 3. TLS messages and transport parameters
// ---------------------------------------------------------------------------------------------

/// A hello's extensions as (type, body) pairs, in wire order.
type Extensions = Vec<(u16, Vec<u8>)>;

/// TLS handshake message types (RFC 8446 §4).
const HS_CLIENT_HELLO: u8 = 1;
const HS_SERVER_HELLO: u8 = 2;
/// TLS extension numbers (RFC 8446 §4.2, RFC 7301 for ALPN).
const EXT_SERVER_NAME: u16 = 0;
const EXT_SUPPORTED_GROUPS: u16 = 10;
const EXT_SIGNATURE_ALGORITHMS: u16 = 13;
const EXT_ALPN: u16 = 16;
const EXT_PRE_SHARED_KEY: u16 = 41;
const EXT_EARLY_DATA: u16 = 42;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const EXT_PSK_KEY_EXCHANGE_MODES: u16 = 45;
const EXT_KEY_SHARE: u16 = 51;
/// `legacy_version` of every TLS 1.3 hello (RFC 8446 §4.1.2): TLS 1.2's number.
const LEGACY_VERSION: u16 = 0x0303;
const TLS13: u16 = 0x0304;
/// Named group x25519 and secp256r1 (RFC 8446 §4.2.7).
const GROUP_X25519: u16 = 0x001d;
const GROUP_SECP256R1: u16 = 0x0017;
/// The three TLS 1.3 suites every QUIC stack knows (RFC 8446 §B.4).
const TLS13_SUITES: [u16; 3] = [0x1301, 0x1302, 0x1303];
/// Signature schemes (RFC 8446 §4.2.3): ECDSA P-256/P-384, RSA-PSS, Ed25519, RSA PKCS#1 —
/// enough that any server certificate a test generates can sign.
const SIG_SCHEMES: [u16; 7] = [0x0403, 0x0503, 0x0804, 0x0805, 0x0806, 0x0807, 0x0401];

/// A TLS 1.3 ClientHello handshake message (type, u24 length, body) such as a QUIC client sends.
///
/// It offers the three TLS 1.3 suites, x25519 with `x25519_share` as the key share (any 32
/// bytes do: the handshake is never finished), an empty legacy session ID (RFC 9001 §8.4),
/// `alpn`, an SNI if `server_name` is given, and a `quic_transport_parameters` extension whose
/// body is `transport_params` verbatim (build one with [`client_transport_params`] / [`tp`]).
pub fn client_hello(
    alpn: &[&[u8]],
    server_name: Option<&str>,
    transport_params: &[u8],
    random: [u8; 32],
    x25519_share: [u8; 32],
) -> Vec<u8> {
    let exts = client_hello_extensions(alpn, server_name, transport_params, &x25519_share);
    encode_client_hello(&random, &[], &TLS13_SUITES, &exts)
}

/// [`client_hello`] in a CRYPTO frame at offset 0, with randomness drawn from `rng`.
pub fn client_hello_frame(
    alpn: &[&[u8]],
    server_name: Option<&str>,
    transport_params: &[u8],
    rng: &mut Prng,
) -> Vec<u8> {
    crypto_frame(
        0,
        &client_hello(alpn, server_name, transport_params, rng.array(), rng.array()),
    )
}

/// The ClientHello's extensions, in order, so corpus cases can drop, repeat or garble one.
fn client_hello_extensions(
    alpn: &[&[u8]],
    server_name: Option<&str>,
    transport_params: &[u8],
    x25519_share: &[u8],
) -> Extensions {
    let mut exts = Vec::new();
    if let Some(name) = server_name {
        // server_name_list: one host_name (type 0) entry.
        let entry = [&[0u8][..], &u16_prefixed(name.as_bytes())].concat();
        exts.push((EXT_SERVER_NAME, u16_prefixed(&entry)));
    }
    exts.push((EXT_SUPPORTED_GROUPS, u16_prefixed(&u16s(&[GROUP_X25519]))));
    exts.push((EXT_SIGNATURE_ALGORITHMS, u16_prefixed(&u16s(&SIG_SCHEMES))));
    if !alpn.is_empty() {
        let list: Vec<u8> = alpn.iter().flat_map(|p| u8_prefixed(p)).collect();
        exts.push((EXT_ALPN, u16_prefixed(&list)));
    }
    exts.push((EXT_SUPPORTED_VERSIONS, u8_prefixed(&u16s(&[TLS13]))));
    // psk_dhe_ke (1): harmless, and what real clients send.
    exts.push((EXT_PSK_KEY_EXCHANGE_MODES, u8_prefixed(&[1])));
    exts.push((
        EXT_KEY_SHARE,
        u16_prefixed(&key_share_entry(GROUP_X25519, x25519_share)),
    ));
    exts.push((EXT_QUIC_TRANSPORT_PARAMETERS, transport_params.to_vec()));
    exts
}

fn key_share_entry(group: u16, key: &[u8]) -> Vec<u8> {
    [&group.to_be_bytes()[..], &u16_prefixed(key)].concat()
}

/// Lays out a ClientHello from parts; lengths that overflow their field are saturated (the
/// result is then hostile, which is what a corpus case asks for).
fn encode_client_hello(
    random: &[u8; 32],
    session_id: &[u8],
    suites: &[u16],
    exts: &[(u16, Vec<u8>)],
) -> Vec<u8> {
    let mut body = LEGACY_VERSION.to_be_bytes().to_vec();
    body.extend_from_slice(random);
    body.extend_from_slice(&u8_prefixed(session_id));
    body.extend_from_slice(&u16_prefixed(&u16s(suites)));
    body.extend_from_slice(&[1, 0]); // legacy_compression_methods: just "null"
    body.extend_from_slice(&u16_prefixed(&encode_extensions(exts)));
    handshake_message(HS_CLIENT_HELLO, &body)
}

/// A TLS 1.3 ServerHello (RFC 8446 §4.1.3) choosing `suite` with an x25519 key share of
/// `x25519_share`, for a fake server's Initial. A client that accepts it derives Handshake keys
/// and then waits for Handshake packets that never come.
pub fn server_hello(suite: u16, random: [u8; 32], x25519_share: [u8; 32]) -> Vec<u8> {
    encode_server_hello(&random, &[], suite, &server_hello_extensions(&x25519_share))
}

fn server_hello_extensions(x25519_share: &[u8]) -> Extensions {
    vec![
        (EXT_SUPPORTED_VERSIONS, TLS13.to_be_bytes().to_vec()),
        (EXT_KEY_SHARE, key_share_entry(GROUP_X25519, x25519_share)),
    ]
}

fn encode_server_hello(random: &[u8; 32], session_id: &[u8], suite: u16, exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = LEGACY_VERSION.to_be_bytes().to_vec();
    body.extend_from_slice(random);
    body.extend_from_slice(&u8_prefixed(session_id));
    body.extend_from_slice(&suite.to_be_bytes());
    body.push(0); // legacy_compression_method: null
    body.extend_from_slice(&u16_prefixed(&encode_extensions(exts)));
    handshake_message(HS_SERVER_HELLO, &body)
}

fn encode_extensions(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
    exts.iter()
        .flat_map(|(ty, data)| [&ty.to_be_bytes()[..], &u16_prefixed(data)].concat())
        .collect()
}

/// Handshake message header: type and u24 length (RFC 8446 §4).
fn handshake_message(msg_type: u8, body: &[u8]) -> Vec<u8> {
    let len = body.len().min(U24_MAX_LEN) as u32;
    let mut m = vec![msg_type];
    m.extend_from_slice(&len.to_be_bytes()[1..]);
    m.extend_from_slice(body);
    m
}

/// One transport parameter (RFC 9000 §18): id varint, length varint, value.
pub fn tp(id: u64, value: &[u8]) -> Vec<u8> {
    let mut out = varint(id);
    put_varint(&mut out, value.len() as u64);
    out.extend_from_slice(value);
    out
}

/// One integer-valued transport parameter: its value is a varint.
pub fn tp_varint(id: u64, value: u64) -> Vec<u8> {
    tp(id, &varint(value))
}

/// Transport parameter ids of RFC 9000 §18.2 (and RFC 9221's max_datagram_frame_size, RFC
/// 9287's grease_quic_bit), named for the corpus.
pub mod tp_id {
    pub const ORIGINAL_DESTINATION_CONNECTION_ID: u64 = 0x00;
    pub const MAX_IDLE_TIMEOUT: u64 = 0x01;
    pub const STATELESS_RESET_TOKEN: u64 = 0x02;
    pub const MAX_UDP_PAYLOAD_SIZE: u64 = 0x03;
    pub const INITIAL_MAX_DATA: u64 = 0x04;
    pub const INITIAL_MAX_STREAM_DATA_BIDI_LOCAL: u64 = 0x05;
    pub const INITIAL_MAX_STREAM_DATA_BIDI_REMOTE: u64 = 0x06;
    pub const INITIAL_MAX_STREAM_DATA_UNI: u64 = 0x07;
    pub const INITIAL_MAX_STREAMS_BIDI: u64 = 0x08;
    pub const INITIAL_MAX_STREAMS_UNI: u64 = 0x09;
    pub const ACK_DELAY_EXPONENT: u64 = 0x0a;
    pub const MAX_ACK_DELAY: u64 = 0x0b;
    pub const DISABLE_ACTIVE_MIGRATION: u64 = 0x0c;
    pub const PREFERRED_ADDRESS: u64 = 0x0d;
    pub const ACTIVE_CONNECTION_ID_LIMIT: u64 = 0x0e;
    pub const INITIAL_SOURCE_CONNECTION_ID: u64 = 0x0f;
    pub const RETRY_SOURCE_CONNECTION_ID: u64 = 0x10;
    pub const MAX_DATAGRAM_FRAME_SIZE: u64 = 0x20;
    pub const GREASE_QUIC_BIT: u64 = 0x2ab2;
}

/// Integer-valued parameter ids (their value is one varint).
const TP_VARINT_IDS: [u64; 12] = [
    0x01, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0e, 0x20,
];

/// A valid set of client transport parameters: `initial_source_connection_id` = `scid` (which
/// must equal the SCID of the client's Initial, RFC 9000 §7.3) and modest flow-control limits.
pub fn client_transport_params(scid: &[u8]) -> Vec<u8> {
    use tp_id::*;
    [
        tp_varint(MAX_IDLE_TIMEOUT, 30_000),   // ms; any value is valid
        tp_varint(MAX_UDP_PAYLOAD_SIZE, 1472), // ≥ 1200 as required; an Ethernet-sized payload
        tp_varint(INITIAL_MAX_DATA, 1 << 20),
        tp_varint(INITIAL_MAX_STREAM_DATA_BIDI_LOCAL, 1 << 18),
        tp_varint(INITIAL_MAX_STREAM_DATA_BIDI_REMOTE, 1 << 18),
        tp_varint(INITIAL_MAX_STREAM_DATA_UNI, 1 << 18),
        tp_varint(INITIAL_MAX_STREAMS_BIDI, 100),
        tp_varint(INITIAL_MAX_STREAMS_UNI, 100),
        tp(INITIAL_SOURCE_CONNECTION_ID, scid),
    ]
    .concat()
}

// ---------------------------------------------------------------------------------------------
// 4. Frames (RFC 9000 §19)
// ---------------------------------------------------------------------------------------------

/// Frame type numbers (RFC 9000 §19, RFC 9221 for DATAGRAM, the ack-frequency draft).
pub mod frame_type {
    pub const PADDING: u64 = 0x00;
    pub const PING: u64 = 0x01;
    pub const ACK: u64 = 0x02;
    pub const ACK_ECN: u64 = 0x03;
    pub const RESET_STREAM: u64 = 0x04;
    pub const STOP_SENDING: u64 = 0x05;
    pub const CRYPTO: u64 = 0x06;
    pub const NEW_TOKEN: u64 = 0x07;
    pub const STREAM: u64 = 0x08; // 0x08–0x0f with OFF/LEN/FIN bits
    pub const MAX_DATA: u64 = 0x10;
    pub const MAX_STREAM_DATA: u64 = 0x11;
    pub const MAX_STREAMS_BIDI: u64 = 0x12;
    pub const MAX_STREAMS_UNI: u64 = 0x13;
    pub const DATA_BLOCKED: u64 = 0x14;
    pub const STREAM_DATA_BLOCKED: u64 = 0x15;
    pub const STREAMS_BLOCKED_BIDI: u64 = 0x16;
    pub const STREAMS_BLOCKED_UNI: u64 = 0x17;
    pub const NEW_CONNECTION_ID: u64 = 0x18;
    pub const RETIRE_CONNECTION_ID: u64 = 0x19;
    pub const PATH_CHALLENGE: u64 = 0x1a;
    pub const PATH_RESPONSE: u64 = 0x1b;
    pub const CONNECTION_CLOSE: u64 = 0x1c;
    pub const CONNECTION_CLOSE_APP: u64 = 0x1d;
    pub const HANDSHAKE_DONE: u64 = 0x1e;
    pub const IMMEDIATE_ACK: u64 = 0x1f;
    pub const DATAGRAM: u64 = 0x30;
    pub const DATAGRAM_LEN: u64 = 0x31;
    pub const ACK_FREQUENCY: u64 = 0xaf;
}

/// CRYPTO frame: offset, length, data.
pub fn crypto_frame(offset: u64, data: &[u8]) -> Vec<u8> {
    let mut f = varint(frame_type::CRYPTO);
    put_varint(&mut f, offset);
    put_varint(&mut f, data.len() as u64);
    f.extend_from_slice(data);
    f
}

/// ACK frame: largest acknowledged, ACK delay, first range, then (gap, range length) pairs.
pub fn ack_frame(largest: u64, delay: u64, first_range: u64, ranges: &[(u64, u64)]) -> Vec<u8> {
    let mut f = varint(frame_type::ACK);
    for v in [largest, delay, ranges.len() as u64, first_range] {
        put_varint(&mut f, v);
    }
    for &(gap, len) in ranges {
        put_varint(&mut f, gap);
        put_varint(&mut f, len);
    }
    f
}

/// CONNECTION_CLOSE (transport, 0x1c): error code, offending frame type, reason.
pub fn connection_close_frame(error_code: u64, frame_ty: u64, reason: &[u8]) -> Vec<u8> {
    let mut f = varint(frame_type::CONNECTION_CLOSE);
    put_varint(&mut f, error_code);
    put_varint(&mut f, frame_ty);
    put_varint(&mut f, reason.len() as u64);
    f.extend_from_slice(reason);
    f
}

/// A frame from a type and fields, each field a pre-encoded byte string (see [`varint`],
/// [`varint_n`]); lets the corpus pick every field's encoding length.
fn frame(ty: &[u8], fields: &[&[u8]]) -> Vec<u8> {
    let mut f = ty.to_vec();
    for field in fields {
        f.extend_from_slice(field);
    }
    f
}

/// A well-formed instance of every frame type the corpora know, with `big` choosing whether
/// integer fields take their longest (8-byte) encoding — so cutting the frame at each offset
/// truncates varints of every length. The flag says whether RFC 9000 Table 3 allows the frame
/// in an Initial packet.
fn frame_templates(big: bool, r: &mut Prng) -> Vec<(&'static str, Vec<u8>, bool)> {
    use frame_type as t;
    // 8-byte encodings hold values near the varint maximum; small ones stay plausible.
    let n = |small: u64| {
        if big {
            varint_n(small | 0x3f00_0000_0000_0000, 8)
        } else {
            varint(small)
        }
    };
    let ty = |ty: u64| varint(ty);
    let cid: Vec<u8> = r.bytes(8);
    let token16: Vec<u8> = r.bytes(16);
    let eight: Vec<u8> = r.bytes(8);
    vec![
        ("ping", frame(&ty(t::PING), &[]), true),
        (
            "ack",
            frame(&ty(t::ACK), &[&n(5), &n(3), &n(1), &n(0), &n(1), &n(1)]),
            true,
        ),
        (
            "ack-ecn",
            frame(
                &ty(t::ACK_ECN),
                &[&n(5), &n(3), &n(0), &n(0), &n(1), &n(2), &n(3)],
            ),
            true,
        ),
        (
            "crypto",
            frame(
                &ty(t::CRYPTO),
                &[&n(0), &varint_n(4, if big { 8 } else { 1 }), b"\x01\x00\x00\x00"],
            ),
            true,
        ),
        (
            "connection-close",
            frame(
                &ty(t::CONNECTION_CLOSE),
                &[&n(0x0a), &n(0x06), &varint_n(3, if big { 8 } else { 1 }), b"bye"],
            ),
            true,
        ),
        (
            "connection-close-app",
            frame(
                &ty(t::CONNECTION_CLOSE_APP),
                &[&n(7), &varint_n(3, if big { 8 } else { 1 }), b"bye"],
            ),
            false,
        ),
        (
            "reset-stream",
            frame(&ty(t::RESET_STREAM), &[&n(0), &n(1), &n(10)]),
            false,
        ),
        (
            "stop-sending",
            frame(&ty(t::STOP_SENDING), &[&n(0), &n(1)]),
            false,
        ),
        (
            "new-token",
            frame(
                &ty(t::NEW_TOKEN),
                &[&varint_n(16, if big { 8 } else { 1 }), &token16],
            ),
            false,
        ),
        (
            "stream",
            frame(
                &ty(t::STREAM | 0x07),
                &[&n(0), &n(0), &varint_n(2, if big { 8 } else { 1 }), b"hi"],
            ),
            false,
        ),
        (
            "stream-no-len",
            frame(&ty(t::STREAM), &[&n(4), b"to-the-end"]),
            false,
        ),
        ("max-data", frame(&ty(t::MAX_DATA), &[&n(1 << 20)]), false),
        (
            "max-stream-data",
            frame(&ty(t::MAX_STREAM_DATA), &[&n(0), &n(1 << 20)]),
            false,
        ),
        (
            "max-streams-bidi",
            frame(&ty(t::MAX_STREAMS_BIDI), &[&n(100)]),
            false,
        ),
        (
            "max-streams-uni",
            frame(&ty(t::MAX_STREAMS_UNI), &[&n(100)]),
            false,
        ),
        ("data-blocked", frame(&ty(t::DATA_BLOCKED), &[&n(100)]), false),
        (
            "stream-data-blocked",
            frame(&ty(t::STREAM_DATA_BLOCKED), &[&n(0), &n(100)]),
            false,
        ),
        (
            "streams-blocked-bidi",
            frame(&ty(t::STREAMS_BLOCKED_BIDI), &[&n(10)]),
            false,
        ),
        (
            "streams-blocked-uni",
            frame(&ty(t::STREAMS_BLOCKED_UNI), &[&n(10)]),
            false,
        ),
        (
            "new-connection-id",
            frame(&ty(t::NEW_CONNECTION_ID), &[&n(1), &n(0), &[8], &cid, &token16]),
            false,
        ),
        (
            "retire-connection-id",
            frame(&ty(t::RETIRE_CONNECTION_ID), &[&n(0)]),
            false,
        ),
        ("path-challenge", frame(&ty(t::PATH_CHALLENGE), &[&eight]), false),
        ("path-response", frame(&ty(t::PATH_RESPONSE), &[&eight]), false),
        ("handshake-done", frame(&ty(t::HANDSHAKE_DONE), &[]), false),
        ("immediate-ack", frame(&ty(t::IMMEDIATE_ACK), &[]), false),
        ("datagram", frame(&ty(t::DATAGRAM), &[b"dgram-to-end"]), false),
        (
            "datagram-len",
            frame(
                &ty(t::DATAGRAM_LEN),
                &[&varint_n(5, if big { 8 } else { 1 }), b"dgram"],
            ),
            false,
        ),
        (
            "ack-frequency",
            frame(&ty(t::ACK_FREQUENCY), &[&n(0), &n(2), &n(25_000), &n(1)]),
            false,
        ),
        // Frame types themselves in 2-, 4- and 8-byte encodings (RFC 9000 §12.4 requires the
        // shortest; a parser must not choke on the longer ones either).
        ("ping-type-2b", frame(&varint_n(t::PING, 2), &[]), true),
        (
            "crypto-type-4b",
            frame(&varint_n(t::CRYPTO, 4), &[&n(0), &varint(1), &[1]]),
            true,
        ),
        (
            "ack-type-8b",
            frame(&varint_n(t::ACK, 8), &[&n(0), &n(0), &n(0), &n(0)]),
            true,
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// 5. Corpora
// ---------------------------------------------------------------------------------------------

/// One hostile input: a name that says what it breaks, the plaintext frame bytes, and how they
/// are wrapped into a datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    /// `section/what`, unique within a corpus.
    pub name: String,
    /// The plaintext payload (frames). For [`Wrap::VersionNegotiation`] it is the versions list,
    /// for [`Wrap::Retry`] the Retry token.
    pub frames: Vec<u8>,
    pub wrap: Wrap,
    /// Client direction: the case's own DCID (fresh per case, so each case is a new connection
    /// on the server) and SCID (equal to the `initial_source_connection_id` of any valid
    /// transport parameters in `frames`). Server direction: `scid` is the ID we pose with and
    /// `dcid` is unused.
    pub dcid: Vec<u8>,
    pub scid: Vec<u8>,
    pub pn: u32,
}

/// How a [`Case`]'s frames are put on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wrap {
    // Valid protection: the frames reach the peer's frame parser.
    /// Valid Initial, PADDING frames up to 1200 bytes after the case's frames.
    Padded,
    /// Valid Initial protecting exactly the case's frames; zeros after the packet fill the
    /// datagram to 1200 (a trailing truncated varint stays truncated).
    Exact,
    // Valid protection, but the header breaks a rule checked before the frames.
    /// No padding: a datagram under 1200 bytes (a server must drop it, RFC 9000 §14.1).
    Unpadded,
    /// A DCID of this many bytes, below the 8 a client's first DCID needs (RFC 9000 §7.2).
    ShortDcid(u8),
    /// Reserved bits set under header protection (PROTOCOL_VIOLATION, RFC 9000 §17.2).
    ReservedBits,
    /// A non-empty token: fine from a client (unknown tokens are ignored), forbidden from a
    /// server (RFC 9000 §17.2.2).
    Token,
    // Broken header or protection.
    /// The Length field claims this many bytes more than the packet has.
    LengthOver(u16),
    /// The Length field claims this many bytes fewer than the packet has.
    LengthUnder(u16),
    /// The sealed datagram cut to this many bytes.
    Truncated(u16),
    /// This version number on a packet sealed with v1 keys.
    Version(u32),
    /// A DCID of this many bytes (more than 20: invalid in v1).
    LongDcid(u8),
    /// An SCID of this many bytes (more than 20: invalid in v1).
    LongScid(u8),
    /// The token length runs past the end of the datagram.
    TokenLenOver,
    /// One bit of the AEAD tag flipped: header protection is valid, authentication fails.
    BadTag,
    /// Sealed with keys derived from a different DCID.
    WrongKeys,
    /// Sealed with the other direction's keys.
    WrongSide,
    /// The fixed bit cleared.
    NoFixedBit,
    /// Long-header type bits 1–3 (0-RTT, Handshake, Retry) over an Initial's layout.
    PacketType(u8),
    /// Server direction: addressed to a connection ID the client does not have.
    OtherDcid,
    /// Server direction: a Version Negotiation packet whose version list is the case's frames.
    VersionNegotiation,
    /// Server direction: a Retry whose token is the case's frames and whose integrity tag is
    /// random (so it must be discarded, RFC 9001 §5.8).
    Retry,
}

impl Wrap {
    /// Whether the frames reach the frame parser (valid protection, valid header).
    pub fn reaches_frames(self) -> bool {
        matches!(self, Wrap::Padded | Wrap::Exact | Wrap::Token)
    }
}

impl Case {
    /// The client-direction datagram: a client Initial from this case's DCID/SCID.
    pub fn client_datagram(&self) -> Vec<u8> {
        let alt_cid: Vec<u8> = self.dcid.iter().map(|b| !b).collect();
        let long_cid =
            |n: u8, base: &[u8]| -> Vec<u8> { base.iter().copied().cycle().take(usize::from(n)).collect() };
        let long;
        let token = b"hostile-token-from-a-stranger".to_vec();
        let mut seal = Seal::client(&self.dcid, &self.scid, &[], self.pn);
        match self.wrap {
            Wrap::LongDcid(n) | Wrap::ShortDcid(n) => {
                long = long_cid(n, &self.dcid);
                seal.dcid = &long;
                seal.key_dcid = &long;
            }
            Wrap::LongScid(n) => {
                long = long_cid(n, &self.dcid);
                seal.scid = &long;
            }
            Wrap::WrongKeys => seal.key_dcid = &alt_cid,
            Wrap::Token => seal.token = &token,
            _ => {}
        }
        apply_wrap(seal, self.wrap, &self.frames)
    }

    /// The client-direction datagram of a case whose frames reach the parser
    /// ([`Wrap::reaches_frames`]), carrying `token` — e.g. the token of the server's Retry, so
    /// a server that validates addresses first still parses the frames. Other cases are
    /// returned as [`Case::client_datagram`] makes them.
    pub fn client_datagram_with_token(&self, token: &[u8]) -> Vec<u8> {
        if !self.wrap.reaches_frames() {
            return self.client_datagram();
        }
        let seal = Seal::client(&self.dcid, &self.scid, token, self.pn);
        let wrap = if self.wrap == Wrap::Exact {
            Wrap::Exact
        } else {
            Wrap::Padded
        };
        apply_wrap(seal, wrap, &self.frames)
    }

    /// The server-direction datagram answering the client whose first Initial had DCID
    /// `client_dcid` and SCID `client_scid`; `pn` lets a fake server number repeats.
    pub fn server_datagram(&self, client_dcid: &[u8], client_scid: &[u8], pn: u32) -> Vec<u8> {
        match self.wrap {
            Wrap::VersionNegotiation => {
                let mut d = vec![LONG_FORM_BIT | 0x2a]; // unused bits: any value (RFC 9000 §17.2.1)
                d.extend_from_slice(&0u32.to_be_bytes());
                put_cid(&mut d, client_scid);
                put_cid(&mut d, &self.scid);
                d.extend_from_slice(&self.frames);
                return d;
            }
            Wrap::Retry => {
                let mut d = vec![LONG_FORM_BIT | FIXED_BIT | TYPE_RETRY << 4];
                d.extend_from_slice(&QUIC_V1.to_be_bytes());
                put_cid(&mut d, client_scid);
                put_cid(&mut d, &self.scid);
                d.extend_from_slice(&self.frames);
                d.extend_from_slice(&Prng::new(u64::from(pn) ^ 0x5e7).bytes(TAG_LEN));
                return d;
            }
            _ => {}
        }
        let other: Vec<u8> = client_scid.iter().map(|b| !b).chain([0xee]).collect();
        let alt_key: Vec<u8> = client_dcid.iter().map(|b| !b).collect();
        let long_cid =
            |n: u8| -> Vec<u8> { self.scid.iter().copied().cycle().take(usize::from(n)).collect() };
        let token = b"servers-must-not-send-tokens".to_vec();
        let long;
        let mut seal = Seal::server(client_dcid, client_scid, &self.scid, pn);
        match self.wrap {
            Wrap::LongDcid(n) | Wrap::ShortDcid(n) => {
                long = long_cid(n);
                seal.dcid = &long;
            }
            Wrap::LongScid(n) => {
                long = long_cid(n);
                seal.scid = &long;
            }
            Wrap::OtherDcid => seal.dcid = &other,
            Wrap::WrongKeys => seal.key_dcid = &alt_key,
            Wrap::Token => seal.token = &token,
            _ => {}
        }
        apply_wrap(seal, self.wrap, &self.frames)
    }
}

/// The header/protection part of a [`Wrap`] common to both directions.
fn apply_wrap(mut seal: Seal<'_>, wrap: Wrap, frames: &[u8]) -> Vec<u8> {
    match wrap {
        Wrap::Exact => seal.pad = Pad::After(MIN_INITIAL_DATAGRAM),
        Wrap::Unpadded => seal.pad = Pad::None,
        Wrap::ReservedBits => seal.reserved_bits = 0b11,
        Wrap::LengthOver(n) => seal.length_delta = i64::from(n),
        Wrap::LengthUnder(n) => seal.length_delta = -i64::from(n),
        Wrap::Version(v) => seal.version = v,
        Wrap::TokenLenOver => seal.token_len_delta = 4096, // far past a 1200-byte datagram
        Wrap::WrongSide => {
            seal.side = if seal.side == Side::Client {
                Side::Server
            } else {
                Side::Client
            }
        }
        Wrap::NoFixedBit => seal.fixed_bit = false,
        Wrap::PacketType(t) => seal.packet_type = t,
        _ => {}
    }
    let mut d = seal.seal(frames);
    match wrap {
        Wrap::Truncated(n) => d.truncate(usize::from(n)),
        Wrap::BadTag => {
            // The tag is the last 16 bytes of the packet; with PADDING inside, the packet is the
            // whole datagram.
            if let Some(last) = d.last_mut() {
                *last ^= 0x01;
            }
        }
        _ => {}
    }
    d
}

/// Builds the client-direction corpus: `n` cases (at least the structured sections below; if
/// `n` is smaller the list is cut, keeping the headline cases, which come first), filled up to
/// `n` with seeded random cases. The same `(seed, n)` gives the same corpus.
///
/// Sections: `trigger/` (the two quinn-proto 0.9 panics), `cut/` (every frame type cut at every
/// offset, varints of 1–8 bytes), `type/` (unknown, reserved and non-minimal frame types),
/// `forbidden/` (frames RFC 9000 does not allow in Initial packets), `bounds/` (CRYPTO/ACK/
/// CONNECTION_CLOSE lengths and offsets past the end or huge), `tp/` (malformed transport
/// parameters in an otherwise valid ClientHello), `ch/` (truncated and garbled ClientHellos),
/// `wrap/` (broken header or protection), `random/` (seeded random payloads and mutations).
pub fn corpus(seed: u64, n: usize) -> Vec<Case> {
    let mut g = Gen::new(seed);
    g.client_triggers();
    g.cuts(true);
    g.frame_types();
    g.forbidden(true);
    g.bounds(true);
    g.transport_params();
    g.client_hellos();
    g.wraps(true);
    while g.cases.len() < n {
        g.random_client_case();
    }
    g.cases.truncate(n);
    g.cases
}

/// Builds the server-direction corpus: hostile server Initials (and Version Negotiation and
/// Retry packets) for a fake server to answer a real client with. Same shape as [`corpus`]:
/// structured sections first, seeded random cases up to `n`.
pub fn server_corpus(seed: u64, n: usize) -> Vec<Case> {
    let mut g = Gen::new(seed ^ 0x5e55_1dea_0000_0001);
    g.server_hellos();
    g.negotiation();
    g.wraps(false);
    g.forbidden(false);
    g.bounds(false);
    g.frame_types();
    g.cuts(false);
    while g.cases.len() < n {
        g.random_server_case();
    }
    g.cases.truncate(n);
    g.cases
}

/// Corpus builder: a PRNG, the cases so far, and helpers that give each case fresh IDs.
struct Gen {
    r: Prng,
    cases: Vec<Case>,
}

impl Gen {
    fn new(seed: u64) -> Self {
        Gen {
            r: Prng::new(seed),
            cases: Vec::new(),
        }
    }

    /// Fresh connection IDs for the next case: a DCID of 8–20 bytes (valid for a client's
    /// first Initial) and an SCID of 0–20.
    fn cids(&mut self) -> (Vec<u8>, Vec<u8>) {
        let dl = self.r.range(MIN_CLIENT_DCID_LEN as u64, MAX_CID_LEN as u64) as usize;
        let sl = self.r.range(0, MAX_CID_LEN as u64) as usize;
        (self.r.bytes(dl), self.r.bytes(sl))
    }

    /// Adds a case whose frames are built knowing the case's SCID (for transport parameters).
    fn push_with(
        &mut self,
        name: impl Into<String>,
        wrap: Wrap,
        build: impl FnOnce(&mut Prng, &[u8]) -> Vec<u8>,
    ) {
        let (dcid, scid) = self.cids();
        let frames = build(&mut self.r, &scid);
        // Mostly packet number 0 as a real first Initial has; sometimes any u32.
        let pn = if self.r.below(8) == 0 {
            self.r.next_u64() as u32
        } else {
            0
        };
        self.cases.push(Case {
            name: name.into(),
            frames,
            wrap,
            dcid,
            scid,
            pn,
        });
    }

    fn push(&mut self, name: impl Into<String>, wrap: Wrap, frames: Vec<u8>) {
        self.push_with(name, wrap, |_, _| frames);
    }

    /// A valid ClientHello for `scid`, in a CRYPTO frame at offset 0.
    fn hello(r: &mut Prng, scid: &[u8]) -> Vec<u8> {
        client_hello_frame(
            &[CORPUS_ALPN],
            Some("localhost"),
            &client_transport_params(scid),
            r,
        )
    }

    /// The two inputs that panic quinn-proto 0.9.2 (and abort a quinn 0.9 process).
    fn client_triggers(&mut self) {
        // RUSTSEC-2023-0063: a frame-type varint cut short; frame::Iter unwraps `last_ty`.
        self.push("trigger/frame-type-varint-cut-0x40", Wrap::Exact, vec![0x40]);
        // Transport parameters ending in max_datagram_frame_size (0x20) of length 0: 0.9 reads
        // a varint from the empty remainder and unwraps.
        self.push_with("trigger/tp-ends-with-0x20-len-0", Wrap::Padded, |r, scid| {
            let params = [client_transport_params(scid), vec![0x20, 0x00]].concat();
            client_hello_frame(&[CORPUS_ALPN], Some("localhost"), &params, r)
        });
    }

    /// Every frame template cut at every offset (0 = empty payload), alone and — client side —
    /// after a valid ClientHello so that a live connection parses it. Also the first byte of
    /// every varint length class alone.
    fn cuts(&mut self, client: bool) {
        let prefixes: [&[u8]; 6] = [
            &[0x40],
            &[0x80],
            &[0x80, 0x00],
            &[0x80, 0x00, 0x00],
            &[0xc0],
            &[0xc0, 0, 0, 0, 0, 0, 0],
        ];
        for prefix in prefixes {
            self.push(
                format!("cut/bare-varint-{}", hex(prefix)),
                Wrap::Exact,
                prefix.to_vec(),
            );
        }
        // The client side also cuts 1-byte encodings; the server side (where every case costs a
        // client connection attempt) only the 8-byte ones, whose cuts already cover every
        // varint length prefix.
        let sizes: &[bool] = if client { &[true, false] } else { &[true] };
        for &big in sizes {
            let templates = frame_templates(big, &mut self.r);
            for (name, bytes, _) in templates {
                let size = if big { "8b" } else { "1b" };
                for cut in 0..=bytes.len() {
                    let part = bytes[..cut].to_vec();
                    self.push(format!("cut/{name}-{size}@{cut}"), Wrap::Exact, part.clone());
                    if client && big {
                        self.push_with(
                            format!("cut/hello+{name}-{size}@{cut}"),
                            Wrap::Exact,
                            |r, scid| [Gen::hello(r, scid), part].concat(),
                        );
                    }
                }
            }
        }
    }

    /// Unknown, reserved and extension frame types, alone, with trailing bytes, and after a
    /// valid first frame.
    fn frame_types(&mut self) {
        let mut types: Vec<u64> = vec![
            0x1f,
            0x20,
            0x21,
            0x2f,
            0x32,
            0x3f,
            0x40,
            0xaf,
            0xb0,
            0x3fff,
            0x4000,
            0x3fff_ffff,
            0x4000_0000,
            0x0f00_0000_0000_0001,
            VARINT_MAX,
            // Extension frames seen in the wild (ACK_FREQUENCY, multipath drafts, NAT traversal,
            // observed address): known to some stacks, not negotiated here.
            0x15228c00,
            0x15228c05,
            0x3d7e90,
            0x3d7e91,
            0x9f81a6,
            0x9f81a7,
            0x15228c09,
        ];
        for _ in 0..24 {
            types.push(self.r.next_u64() & VARINT_MAX >> self.r.below(62));
        }
        let mut seen = std::collections::HashSet::new();
        types.retain(|t| seen.insert(*t));
        for ty in types {
            let name = format!("{ty:#x}");
            self.push(format!("type/{name}"), Wrap::Exact, varint(ty));
            let tail_len = self.r.range(1, 40) as usize;
            let tail = self.r.bytes(tail_len);
            self.push(
                format!("type/{name}+junk"),
                Wrap::Exact,
                [varint(ty), tail].concat(),
            );
            self.push(
                format!("type/ping+{name}"),
                Wrap::Padded,
                [vec![1], varint(ty)].concat(),
            );
        }
        // Known types in non-minimal encodings.
        for ty in [
            frame_type::PADDING,
            frame_type::PING,
            frame_type::CRYPTO,
            frame_type::ACK,
            frame_type::CONNECTION_CLOSE,
        ] {
            for len in [2, 4, 8] {
                self.push(
                    format!("type/nonminimal-{ty:#x}-{len}b"),
                    Wrap::Padded,
                    varint_n(ty, len),
                );
            }
        }
    }

    /// Frames RFC 9000 Table 3 forbids in Initial packets, alone, after a ClientHello (client
    /// side) and before one.
    fn forbidden(&mut self, client: bool) {
        let templates = frame_templates(false, &mut self.r);
        for (name, bytes, allowed) in templates {
            if allowed {
                continue;
            }
            self.push(format!("forbidden/{name}"), Wrap::Padded, bytes.clone());
            self.push(format!("forbidden/{name}-exact"), Wrap::Exact, bytes.clone());
            if client {
                let b = bytes.clone();
                self.push_with(format!("forbidden/hello+{name}"), Wrap::Padded, |r, scid| {
                    [Gen::hello(r, scid), b].concat()
                });
                self.push_with(format!("forbidden/{name}+hello"), Wrap::Padded, |r, scid| {
                    [bytes, Gen::hello(r, scid)].concat()
                });
            } else {
                let sh = self.valid_server_hello_frame();
                self.push(
                    format!("forbidden/server-hello+{name}"),
                    Wrap::Padded,
                    [sh, bytes].concat(),
                );
            }
        }
    }

    /// CRYPTO, ACK and CONNECTION_CLOSE with lengths and offsets past the end or huge.
    fn bounds(&mut self, client: bool) {
        use frame_type as t;
        let v = varint;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "crypto-len-past-end",
                frame(&v(t::CRYPTO), &[&v(0), &v(1000), b"short"]),
            ),
            (
                "crypto-len-max",
                frame(&v(t::CRYPTO), &[&v(0), &v(VARINT_MAX), b"x"]),
            ),
            (
                "crypto-offset-max",
                frame(&v(t::CRYPTO), &[&v(VARINT_MAX), &v(1), b"x"]),
            ),
            (
                "crypto-offset-plus-len-overflows",
                frame(&v(t::CRYPTO), &[&v(VARINT_MAX - 1), &v(4), b"abcd"]),
            ),
            (
                "crypto-offset-2^32",
                frame(&v(t::CRYPTO), &[&v(1 << 32), &v(4), b"abcd"]),
            ),
            (
                "crypto-offset-1MiB",
                frame(&v(t::CRYPTO), &[&v(1 << 20), &v(4), b"abcd"]),
            ),
            (
                "crypto-offset-64KiB-gap",
                frame(&v(t::CRYPTO), &[&v(65_536), &v(4), b"abcd"]),
            ),
            (
                "crypto-empty-at-max",
                frame(&v(t::CRYPTO), &[&v(VARINT_MAX), &v(0)]),
            ),
            ("crypto-empty", frame(&v(t::CRYPTO), &[&v(0), &v(0)])),
            (
                "crypto-u24-len-huge",
                crypto_frame(0, &[HS_CLIENT_HELLO, 0xff, 0xff, 0xff, 3, 3]),
            ),
            (
                "crypto-many-tiny",
                (0..200u64).flat_map(|i| crypto_frame(i, &[1])).collect(),
            ),
            ("ack-largest-max", ack_frame(VARINT_MAX, 0, 0, &[])),
            ("ack-first-range-exceeds-largest", ack_frame(3, 0, 10, &[])),
            ("ack-gap-underflow", ack_frame(5, 0, 1, &[(10, 0)])),
            ("ack-range-underflow", ack_frame(5, 0, 0, &[(0, 10)])),
            (
                "ack-count-huge",
                frame(&v(t::ACK), &[&v(5), &v(0), &v(VARINT_MAX), &v(0)]),
            ),
            (
                "ack-count-past-end",
                frame(&v(t::ACK), &[&v(5), &v(0), &v(100), &v(0), &v(0), &v(0)]),
            ),
            ("ack-delay-max", ack_frame(0, VARINT_MAX, 0, &[])),
            ("ack-unsent-1000", ack_frame(1000, 0, 0, &[])),
            ("ack-zero", ack_frame(0, 0, 0, &[])),
            (
                "ack-ecn-counts-max",
                frame(
                    &v(t::ACK_ECN),
                    &[
                        &v(0),
                        &v(0),
                        &v(0),
                        &v(0),
                        &v(VARINT_MAX),
                        &v(VARINT_MAX),
                        &v(VARINT_MAX),
                    ],
                ),
            ),
            ("ack-many-ranges", {
                let ranges: Vec<(u64, u64)> = (0..300).map(|_| (0, 0)).collect();
                ack_frame(10_000, 0, 0, &ranges)
            }),
            (
                "close-reason-past-end",
                frame(&v(t::CONNECTION_CLOSE), &[&v(1), &v(0), &v(500), b"why"]),
            ),
            (
                "close-reason-len-max",
                frame(&v(t::CONNECTION_CLOSE), &[&v(1), &v(0), &v(VARINT_MAX)]),
            ),
            (
                "close-error-max",
                connection_close_frame(VARINT_MAX, VARINT_MAX, b""),
            ),
            (
                "close-reason-not-utf8",
                connection_close_frame(0x0a, 0x06, &[0xff, 0xfe, 0xc0, 0x80]),
            ),
            ("close-valid", connection_close_frame(0x0a, 0, b"go away")),
            (
                "close-crypto-error",
                connection_close_frame(0x0100 + 40, 0x06, b"handshake_failure"),
            ),
            (
                "new-token-len-past-end",
                frame(&v(t::NEW_TOKEN), &[&v(4000), b"tok"]),
            ),
            ("new-token-empty", frame(&v(t::NEW_TOKEN), &[&v(0)])),
            (
                "datagram-len-past-end",
                frame(&v(t::DATAGRAM_LEN), &[&v(5000), b"d"]),
            ),
            (
                "stream-len-past-end",
                frame(&v(t::STREAM | 0x02), &[&v(0), &v(9999), b"s"]),
            ),
            (
                "stream-offset-max",
                frame(&v(t::STREAM | 0x06), &[&v(0), &v(VARINT_MAX), &v(1), b"s"]),
            ),
            (
                "new-cid-len-0",
                frame(&v(t::NEW_CONNECTION_ID), &[&v(1), &v(0), &[0], &[0u8; 16]]),
            ),
            (
                "new-cid-len-255",
                frame(&v(t::NEW_CONNECTION_ID), &[&v(1), &v(0), &[255], &[7u8; 40]]),
            ),
            ("padding-1000-then-ping", [vec![0u8; 1000], vec![1]].concat()),
            ("ping-only", vec![1]),
        ];
        for (name, bytes) in cases {
            self.push(format!("bounds/{name}"), Wrap::Padded, bytes.clone());
            self.push(format!("bounds/{name}-exact"), Wrap::Exact, bytes.clone());
            if client {
                self.push_with(format!("bounds/hello+{name}"), Wrap::Padded, |r, scid| {
                    [Gen::hello(r, scid), bytes].concat()
                });
            } else {
                let sh = self.valid_server_hello_frame();
                self.push(
                    format!("bounds/server-hello+{name}"),
                    Wrap::Padded,
                    [sh, bytes].concat(),
                );
            }
        }
    }

    /// ClientHellos that are valid except for their transport parameters.
    fn transport_params(&mut self) {
        use tp_id::*;
        type Build = Box<dyn Fn(&[u8], &mut Prng) -> Vec<u8>>;
        let base = |scid: &[u8]| client_transport_params(scid);
        let mut variants: Vec<(String, Build)> = vec![
            (
                "0x20-len-0-only".into(),
                Box::new(|_: &[u8], _: &mut Prng| vec![0x20, 0x00]),
            ),
            (
                "0x20-len-9".into(),
                Box::new(move |s: &[u8], _: &mut Prng| {
                    [base(s), tp(0x20, &[0xc0, 0, 0, 0, 0, 0, 0, 1, 0])].concat()
                }),
            ),
            (
                "0x20-len-1-of-2b-varint-at-end".into(),
                Box::new(move |s: &[u8], _: &mut Prng| [base(s), vec![0x20, 0x01, 0x40]].concat()),
            ),
            (
                "0x20-len-8-1b-value".into(),
                Box::new(move |s: &[u8], _: &mut Prng| {
                    [base(s), vec![0x20, 0x08, 0x05, 1, 2, 3, 4, 5, 6, 7]].concat()
                }),
            ),
            (
                "id-varint-cut-at-end".into(),
                Box::new(move |s: &[u8], _: &mut Prng| [base(s), vec![0x40]].concat()),
            ),
            (
                "id-8b-varint-cut-at-end".into(),
                Box::new(move |s: &[u8], _: &mut Prng| [base(s), vec![0xc0, 0, 0]].concat()),
            ),
            (
                "len-missing-at-end".into(),
                Box::new(move |s: &[u8], _: &mut Prng| [base(s), vec![0x01]].concat()),
            ),
            (
                "len-varint-cut-at-end".into(),
                Box::new(move |s: &[u8], _: &mut Prng| [base(s), vec![0x01, 0x80, 0x00]].concat()),
            ),
            (
                "len-past-end".into(),
                Box::new(move |s: &[u8], _: &mut Prng| [base(s), vec![0x01, 0x10, 0x01]].concat()),
            ),
            (
                "len-max".into(),
                Box::new(move |s: &[u8], _: &mut Prng| [base(s), varint(0x01), varint(VARINT_MAX)].concat()),
            ),
            ("empty".into(), Box::new(|_: &[u8], _: &mut Prng| Vec::new())),
            (
                "missing-initial-scid".into(),
                Box::new(|_: &[u8], _: &mut Prng| tp_varint(MAX_IDLE_TIMEOUT, 1000)),
            ),
            (
                "initial-scid-mismatch".into(),
                Box::new(|_: &[u8], r: &mut Prng| tp(INITIAL_SOURCE_CONNECTION_ID, &r.bytes(8))),
            ),
            (
                "initial-scid-21b".into(),
                Box::new(|_: &[u8], r: &mut Prng| tp(INITIAL_SOURCE_CONNECTION_ID, &r.bytes(21))),
            ),
            (
                "initial-scid-255b".into(),
                Box::new(|_: &[u8], r: &mut Prng| tp(INITIAL_SOURCE_CONNECTION_ID, &r.bytes(255))),
            ),
            (
                "server-only-original-dcid".into(),
                Box::new(move |s: &[u8], r: &mut Prng| {
                    [base(s), tp(ORIGINAL_DESTINATION_CONNECTION_ID, &r.bytes(8))].concat()
                }),
            ),
            (
                "server-only-retry-scid".into(),
                Box::new(move |s: &[u8], r: &mut Prng| {
                    [base(s), tp(RETRY_SOURCE_CONNECTION_ID, &r.bytes(8))].concat()
                }),
            ),
            (
                "server-only-reset-token".into(),
                Box::new(move |s: &[u8], r: &mut Prng| {
                    [base(s), tp(STATELESS_RESET_TOKEN, &r.bytes(16))].concat()
                }),
            ),
            (
                "reset-token-15b".into(),
                Box::new(move |s: &[u8], r: &mut Prng| {
                    [base(s), tp(STATELESS_RESET_TOKEN, &r.bytes(15))].concat()
                }),
            ),
            (
                "server-only-preferred-address".into(),
                Box::new(move |s: &[u8], r: &mut Prng| {
                    let addr = [
                        &[127, 0, 0, 1, 0x1f, 0x90][..],
                        &[0; 16],
                        &[0, 0],
                        &[8],
                        &r.bytes(8),
                        &r.bytes(16),
                    ]
                    .concat();
                    [base(s), tp(PREFERRED_ADDRESS, &addr)].concat()
                }),
            ),
            (
                "preferred-address-truncated".into(),
                Box::new(move |s: &[u8], _: &mut Prng| {
                    [base(s), tp(PREFERRED_ADDRESS, &[127, 0, 0, 1])].concat()
                }),
            ),
            (
                "preferred-address-cid-len-past-end".into(),
                Box::new(move |s: &[u8], _: &mut Prng| {
                    let addr = [
                        &[127, 0, 0, 1, 0x1f, 0x90][..],
                        &[0; 16],
                        &[0, 0],
                        &[200],
                        &[1, 2],
                    ]
                    .concat();
                    [base(s), tp(PREFERRED_ADDRESS, &addr)].concat()
                }),
            ),
            (
                "disable-migration-len-1".into(),
                Box::new(move |s: &[u8], _: &mut Prng| {
                    [base(s), tp(DISABLE_ACTIVE_MIGRATION, &[0])].concat()
                }),
            ),
            (
                "grease-quic-bit-len-1".into(),
                Box::new(move |s: &[u8], _: &mut Prng| [base(s), tp(GREASE_QUIC_BIT, &[1])].concat()),
            ),
            (
                "max-udp-payload-1199".into(),
                Box::new(move |s: &[u8], _: &mut Prng| {
                    [tp_varint(MAX_UDP_PAYLOAD_SIZE, 1199), base(s)].concat()
                }),
            ),
            (
                "max-udp-payload-0".into(),
                Box::new(move |s: &[u8], _: &mut Prng| {
                    [tp_varint(MAX_UDP_PAYLOAD_SIZE, 0), base(s)].concat()
                }),
            ),
            (
                "ack-delay-exponent-21".into(),
                Box::new(move |s: &[u8], _: &mut Prng| [base(s), tp_varint(ACK_DELAY_EXPONENT, 21)].concat()),
            ),
            (
                "max-ack-delay-2^14".into(),
                Box::new(move |s: &[u8], _: &mut Prng| [base(s), tp_varint(MAX_ACK_DELAY, 1 << 14)].concat()),
            ),
            (
                "active-cid-limit-0".into(),
                Box::new(move |s: &[u8], _: &mut Prng| {
                    [base(s), tp_varint(ACTIVE_CONNECTION_ID_LIMIT, 0)].concat()
                }),
            ),
            (
                "active-cid-limit-1".into(),
                Box::new(move |s: &[u8], _: &mut Prng| {
                    [base(s), tp_varint(ACTIVE_CONNECTION_ID_LIMIT, 1)].concat()
                }),
            ),
            (
                "max-streams-bidi-2^60+1".into(),
                Box::new(move |s: &[u8], _: &mut Prng| {
                    [base(s), tp_varint(INITIAL_MAX_STREAMS_BIDI, (1 << 60) + 1)].concat()
                }),
            ),
            (
                "max-streams-uni-max".into(),
                Box::new(move |s: &[u8], _: &mut Prng| {
                    [base(s), tp_varint(INITIAL_MAX_STREAMS_UNI, VARINT_MAX)].concat()
                }),
            ),
            (
                "max-idle-timeout-max".into(),
                Box::new(move |s: &[u8], _: &mut Prng| {
                    [base(s), tp_varint(MAX_IDLE_TIMEOUT, VARINT_MAX)].concat()
                }),
            ),
            (
                "max-datagram-frame-size-max".into(),
                Box::new(move |s: &[u8], _: &mut Prng| {
                    [base(s), tp_varint(MAX_DATAGRAM_FRAME_SIZE, VARINT_MAX)].concat()
                }),
            ),
            (
                "initial-max-data-max".into(),
                Box::new(move |s: &[u8], _: &mut Prng| {
                    [tp_varint(INITIAL_MAX_DATA, VARINT_MAX), base(s)].concat()
                }),
            ),
            (
                "unknown-id-huge-value".into(),
                Box::new(move |s: &[u8], r: &mut Prng| [base(s), tp(0x7fff_1234, &r.bytes(600))].concat()),
            ),
            (
                "unknown-id-max".into(),
                Box::new(move |s: &[u8], _: &mut Prng| [base(s), tp(VARINT_MAX, b"x")].concat()),
            ),
            (
                "grease-ids".into(),
                Box::new(move |s: &[u8], r: &mut Prng| {
                    let grease: Vec<u8> = (0..20u64)
                        .flat_map(|i| tp(31 * (i * 977 + 1) + 27, &r.bytes(i as usize)))
                        .collect();
                    [grease, base(s)].concat()
                }),
            ),
            (
                "nonminimal-ids".into(),
                Box::new(|s: &[u8], _: &mut Prng| {
                    // initial_source_connection_id with its id in 8 bytes and its length in 4.
                    [
                        varint_n(INITIAL_SOURCE_CONNECTION_ID, 8),
                        varint_n(s.len() as u64, 4),
                        s.to_vec(),
                    ]
                    .concat()
                }),
            ),
        ];
        for id in TP_VARINT_IDS.into_iter().chain([
            DISABLE_ACTIVE_MIGRATION,
            INITIAL_SOURCE_CONNECTION_ID,
            GREASE_QUIC_BIT,
        ]) {
            variants.push((
                format!("dup-{id:#x}"),
                Box::new(move |s: &[u8], _: &mut Prng| {
                    let one = match id {
                        DISABLE_ACTIVE_MIGRATION | GREASE_QUIC_BIT => tp(id, &[]),
                        INITIAL_SOURCE_CONNECTION_ID => tp(id, s),
                        _ => tp_varint(id, 1),
                    };
                    [base(s), one].concat()
                }),
            ));
        }
        for id in TP_VARINT_IDS {
            variants.push((
                format!("{id:#x}-len-0-at-end"),
                Box::new(move |s: &[u8], _: &mut Prng| [base(s), tp(id, &[])].concat()),
            ));
            variants.push((
                format!("{id:#x}-len-0-first"),
                Box::new(move |s: &[u8], _: &mut Prng| [tp(id, &[]), base(s)].concat()),
            ));
            variants.push((
                format!("{id:#x}-len-longer-than-varint"),
                Box::new(move |s: &[u8], _: &mut Prng| [tp(id, &[0x05, 0xaa]), base(s)].concat()),
            ));
            variants.push((
                format!("{id:#x}-len-shorter-than-varint"),
                Box::new(move |s: &[u8], _: &mut Prng| [tp(id, &[0x80, 0x00]), base(s)].concat()),
            ));
            variants.push((
                format!("{id:#x}-9-bytes"),
                Box::new(move |s: &[u8], _: &mut Prng| {
                    [tp(id, &[0xc0, 0, 0, 0, 0, 0, 0, 1, 2]), base(s)].concat()
                }),
            ));
        }
        for (name, build) in variants {
            self.push_with(format!("tp/{name}"), Wrap::Padded, |r, scid| {
                let params = build(scid, r);
                client_hello_frame(&[CORPUS_ALPN], Some("localhost"), &params, r)
            });
        }
        // Missing and doubled quic_transport_parameters extension.
        self.push_with("tp/extension-missing", Wrap::Padded, |r, scid| {
            let mut exts = client_hello_extensions(
                &[CORPUS_ALPN],
                None,
                &client_transport_params(scid),
                &r.array::<32>(),
            );
            exts.retain(|(ty, _)| *ty != EXT_QUIC_TRANSPORT_PARAMETERS);
            crypto_frame(0, &encode_client_hello(&r.array(), &[], &TLS13_SUITES, &exts))
        });
        self.push_with("tp/extension-twice", Wrap::Padded, |r, scid| {
            let mut exts = client_hello_extensions(
                &[CORPUS_ALPN],
                None,
                &client_transport_params(scid),
                &r.array::<32>(),
            );
            exts.push((EXT_QUIC_TRANSPORT_PARAMETERS, client_transport_params(scid)));
            crypto_frame(0, &encode_client_hello(&r.array(), &[], &TLS13_SUITES, &exts))
        });
        // Random parameter lists: random ids from the known set, random lengths and values.
        for i in 0..64 {
            self.push_with(format!("tp/random-{i}"), Wrap::Padded, |r, scid| {
                let mut params = Vec::new();
                for _ in 0..r.range(1, 12) {
                    let id = if r.below(4) == 0 {
                        r.next_u64() & VARINT_MAX >> r.below(62)
                    } else {
                        r.below(0x21)
                    };
                    let len = r.below(24) as usize;
                    if r.below(6) == 0 {
                        // A lying length prefix.
                        params.extend(varint(id));
                        params.extend(varint(r.below(40)));
                        params.extend(r.bytes(len));
                    } else {
                        params.extend(tp(id, &r.bytes(len)));
                    }
                }
                if r.below(2) == 0 {
                    params.extend(tp(tp_id::INITIAL_SOURCE_CONNECTION_ID, scid));
                }
                client_hello_frame(&[CORPUS_ALPN], Some("localhost"), &params, r)
            });
        }
    }

    /// Truncated and garbled ClientHellos.
    fn client_hellos(&mut self) {
        // Cut the message at every offset, keeping the CRYPTO frame consistent (the server
        // buffers a partial message), and cut the frame itself at every 4th offset (its length
        // then runs past the packet).
        let (_, scid) = self.cids();
        let ch = client_hello(
            &[CORPUS_ALPN],
            Some("localhost"),
            &client_transport_params(&scid),
            self.r.array(),
            self.r.array(),
        );
        for cut in 0..ch.len() {
            let part = ch[..cut].to_vec();
            self.push(format!("ch/msg-cut@{cut}"), Wrap::Padded, crypto_frame(0, &part));
        }
        let frame = crypto_frame(0, &ch);
        for cut in (1..frame.len()).step_by(4) {
            self.push(format!("ch/frame-cut@{cut}"), Wrap::Exact, frame[..cut].to_vec());
        }

        type Build = Box<dyn Fn(&[u8], &mut Prng) -> Vec<u8>>;
        let exts = |s: &[u8], r: &mut Prng| {
            client_hello_extensions(
                &[CORPUS_ALPN],
                Some("localhost"),
                &client_transport_params(s),
                &r.array::<32>(),
            )
        };
        let with_exts = move |s: &[u8], r: &mut Prng, f: &dyn Fn(&mut Extensions)| {
            let mut e = exts(s, r);
            f(&mut e);
            encode_client_hello(&r.array(), &[], &TLS13_SUITES, &e)
        };
        let valid = move |s: &[u8], r: &mut Prng| {
            client_hello(
                &[CORPUS_ALPN],
                Some("localhost"),
                &client_transport_params(s),
                r.array(),
                r.array(),
            )
        };
        let patch = move |s: &[u8], r: &mut Prng, at: usize, bytes: &[u8]| {
            let mut m = valid(s, r);
            for (i, b) in bytes.iter().enumerate() {
                if let Some(x) = m.get_mut(at + i) {
                    *x = *b;
                }
            }
            m
        };
        // Offsets in a ClientHello: 0 type, 1..4 length, 4..6 legacy_version, 6..38 random,
        // 38 session-id length, 39..41 suites length (empty session ID).
        let variants: Vec<(&str, Build)> = vec![
            (
                "len-plus-1",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    let mut m = valid(s, r);
                    m[3] = m[3].wrapping_add(1);
                    m
                }),
            ),
            (
                "len-minus-1",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    let mut m = valid(s, r);
                    m[3] = m[3].wrapping_sub(1);
                    m
                }),
            ),
            (
                "len-zero",
                Box::new(move |s: &[u8], r: &mut Prng| patch(s, r, 1, &[0, 0, 0])),
            ),
            (
                "len-max",
                Box::new(move |s: &[u8], r: &mut Prng| patch(s, r, 1, &[0xff, 0xff, 0xff])),
            ),
            (
                "type-server-hello",
                Box::new(move |s: &[u8], r: &mut Prng| patch(s, r, 0, &[HS_SERVER_HELLO])),
            ),
            (
                "type-finished",
                Box::new(move |s: &[u8], r: &mut Prng| patch(s, r, 0, &[20])),
            ),
            (
                "type-0",
                Box::new(move |s: &[u8], r: &mut Prng| patch(s, r, 0, &[0])),
            ),
            (
                "type-255",
                Box::new(move |s: &[u8], r: &mut Prng| patch(s, r, 0, &[255])),
            ),
            (
                "legacy-version-0301",
                Box::new(move |s: &[u8], r: &mut Prng| patch(s, r, 4, &[3, 1])),
            ),
            (
                "legacy-version-0304",
                Box::new(move |s: &[u8], r: &mut Prng| patch(s, r, 4, &[3, 4])),
            ),
            (
                "session-id-len-33",
                Box::new(move |s: &[u8], r: &mut Prng| patch(s, r, 38, &[33])),
            ),
            (
                "session-id-len-255",
                Box::new(move |s: &[u8], r: &mut Prng| patch(s, r, 38, &[255])),
            ),
            (
                "suites-len-odd",
                Box::new(move |s: &[u8], r: &mut Prng| patch(s, r, 39, &[0, 5])),
            ),
            (
                "suites-len-huge",
                Box::new(move |s: &[u8], r: &mut Prng| patch(s, r, 39, &[0xff, 0xfe])),
            ),
            (
                "suites-empty",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    let e = exts(s, r);
                    encode_client_hello(&r.array(), &[], &[], &e)
                }),
            ),
            (
                "suites-tls12-only",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    let e = exts(s, r);
                    encode_client_hello(&r.array(), &[], &[0xc02b, 0xc02f], &e)
                }),
            ),
            (
                "suites-unknown-only",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    let e = exts(s, r);
                    encode_client_hello(&r.array(), &[], &[0x1305, 0xfafa], &e)
                }),
            ),
            (
                "session-id-32",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    let e = exts(s, r);
                    let sid = r.bytes(32);
                    encode_client_hello(&r.array(), &sid, &TLS13_SUITES, &e)
                }),
            ),
            (
                "no-supported-versions",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    with_exts(s, r, &|e| e.retain(|x| x.0 != EXT_SUPPORTED_VERSIONS))
                }),
            ),
            (
                "supported-versions-tls12",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    with_exts(s, r, &|e| {
                        set_ext(e, EXT_SUPPORTED_VERSIONS, u8_prefixed(&u16s(&[0x0303])))
                    })
                }),
            ),
            (
                "supported-versions-odd-len",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    with_exts(s, r, &|e| set_ext(e, EXT_SUPPORTED_VERSIONS, vec![3, 3, 4, 3]))
                }),
            ),
            (
                "no-key-share",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    with_exts(s, r, &|e| e.retain(|x| x.0 != EXT_KEY_SHARE))
                }),
            ),
            (
                "key-share-empty",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    with_exts(s, r, &|e| set_ext(e, EXT_KEY_SHARE, u16_prefixed(&[])))
                }),
            ),
            (
                "key-share-31b",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    with_exts(s, r, &|e| {
                        set_ext(
                            e,
                            EXT_KEY_SHARE,
                            u16_prefixed(&key_share_entry(GROUP_X25519, &[9; 31])),
                        )
                    })
                }),
            ),
            (
                "key-share-zero-point",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    with_exts(s, r, &|e| {
                        set_ext(
                            e,
                            EXT_KEY_SHARE,
                            u16_prefixed(&key_share_entry(GROUP_X25519, &[0; 32])),
                        )
                    })
                }),
            ),
            (
                "key-share-p256-garbage",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    with_exts(s, r, &|e| {
                        set_ext(e, EXT_SUPPORTED_GROUPS, u16_prefixed(&u16s(&[GROUP_SECP256R1])));
                        set_ext(
                            e,
                            EXT_KEY_SHARE,
                            u16_prefixed(&key_share_entry(GROUP_SECP256R1, &[4; 65])),
                        );
                    })
                }),
            ),
            (
                "key-share-len-past-end",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    with_exts(s, r, &|e| {
                        set_ext(
                            e,
                            EXT_KEY_SHARE,
                            [&[0, 40][..], &GROUP_X25519.to_be_bytes(), &[0, 32], &[1; 8]].concat(),
                        )
                    })
                }),
            ),
            (
                "no-groups",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    with_exts(s, r, &|e| e.retain(|x| x.0 != EXT_SUPPORTED_GROUPS))
                }),
            ),
            (
                "no-signature-algorithms",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    with_exts(s, r, &|e| e.retain(|x| x.0 != EXT_SIGNATURE_ALGORITHMS))
                }),
            ),
            (
                "signature-algorithms-empty",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    with_exts(s, r, &|e| set_ext(e, EXT_SIGNATURE_ALGORITHMS, u16_prefixed(&[])))
                }),
            ),
            (
                "no-alpn",
                Box::new(move |s: &[u8], r: &mut Prng| with_exts(s, r, &|e| e.retain(|x| x.0 != EXT_ALPN))),
            ),
            (
                "alpn-other",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    with_exts(s, r, &|e| set_ext(e, EXT_ALPN, u16_prefixed(&u8_prefixed(b"h3"))))
                }),
            ),
            (
                "alpn-empty-name",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    with_exts(s, r, &|e| set_ext(e, EXT_ALPN, u16_prefixed(&[0])))
                }),
            ),
            (
                "alpn-len-past-end",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    with_exts(s, r, &|e| set_ext(e, EXT_ALPN, vec![0, 9, 7, b'r', b'i']))
                }),
            ),
            (
                "sni-len-past-end",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    with_exts(s, r, &|e| {
                        set_ext(e, EXT_SERVER_NAME, vec![0, 12, 0, 0, 200, b'a'])
                    })
                }),
            ),
            (
                "sni-ip-literal",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    with_exts(s, r, &|e| {
                        set_ext(
                            e,
                            EXT_SERVER_NAME,
                            u16_prefixed(&[&[0u8][..], &u16_prefixed(b"127.0.0.1")].concat()),
                        )
                    })
                }),
            ),
            (
                "sni-nul-byte",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    with_exts(s, r, &|e| {
                        set_ext(
                            e,
                            EXT_SERVER_NAME,
                            u16_prefixed(&[&[0u8][..], &u16_prefixed(b"a\0b")].concat()),
                        )
                    })
                }),
            ),
            (
                "every-extension-twice",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    with_exts(s, r, &|e| {
                        let copy = e.clone();
                        e.extend(copy);
                    })
                }),
            ),
            (
                "early-data",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    with_exts(s, r, &|e| e.push((EXT_EARLY_DATA, vec![])))
                }),
            ),
            (
                "psk-bogus-binder",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    with_exts(s, r, &|e| {
                        // identities: one 8-byte identity + obfuscated age; binders: one 32-byte binder.
                        let ids = u16_prefixed(&[&u16_prefixed(b"ticket!!")[..], &[0, 0, 0, 1]].concat());
                        let binders = u16_prefixed(&u8_prefixed(&[0xab; 32]));
                        e.push((EXT_PRE_SHARED_KEY, [ids, binders].concat()));
                    })
                }),
            ),
            (
                "psk-not-last",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    with_exts(s, r, &|e| e.insert(0, (EXT_PRE_SHARED_KEY, vec![0, 0, 0, 0])))
                }),
            ),
            (
                "extensions-len-plus-7",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    let mut m = valid(s, r);
                    let at = 41 + 2 * TLS13_SUITES.len() + 2;
                    if let Some(b) = m.get_mut(at + 1) {
                        *b = b.wrapping_add(7);
                    }
                    m
                }),
            ),
            (
                "extension-len-past-end",
                Box::new(move |s: &[u8], r: &mut Prng| {
                    // An empty extension pushed last: its length field is the message's final two
                    // bytes; make it claim 200 bytes that do not follow.
                    let mut m = with_exts(s, r, &|e| e.push((0xfafa, vec![])));
                    if let Some(last) = m.last_mut() {
                        *last = 200;
                    }
                    m
                }),
            ),
            (
                "two-client-hellos",
                Box::new(move |s: &[u8], r: &mut Prng| [valid(s, r), valid(s, r)].concat()),
            ),
            (
                "trailing-garbage",
                Box::new(move |s: &[u8], r: &mut Prng| [valid(s, r), r.bytes(40)].concat()),
            ),
        ];
        for (name, build) in variants {
            self.push_with(format!("ch/{name}"), Wrap::Padded, |r, scid| {
                crypto_frame(0, &build(scid, r))
            });
        }
        // Reassembly: the ClientHello split in two CRYPTO frames sent in reverse order (valid),
        // and overlapping frames that disagree.
        self.push_with("ch/split-reversed", Wrap::Padded, |r, scid| {
            let m = client_hello(
                &[CORPUS_ALPN],
                None,
                &client_transport_params(scid),
                r.array(),
                r.array(),
            );
            let mid = m.len() / 2;
            [crypto_frame(mid as u64, &m[mid..]), crypto_frame(0, &m[..mid])].concat()
        });
        self.push_with("ch/overlap-conflict", Wrap::Padded, |r, scid| {
            let m = client_hello(
                &[CORPUS_ALPN],
                None,
                &client_transport_params(scid),
                r.array(),
                r.array(),
            );
            // The same ClientHello with every byte from offset 10 on changed: the two CRYPTO
            // frames below overlap at offsets 5.. and disagree there.
            let mut other = m.clone();
            for b in other.iter_mut().skip(10) {
                *b ^= 0x5a;
            }
            [crypto_frame(0, &m[..m.len() - 10]), crypto_frame(5, &other[5..])].concat()
        });
        self.push_with("ch/gap-at-offset-1", Wrap::Padded, |r, scid| {
            let m = client_hello(
                &[CORPUS_ALPN],
                None,
                &client_transport_params(scid),
                r.array(),
                r.array(),
            );
            crypto_frame(1, &m[1..])
        });
        // Seeded random garbling: flips, insertions, deletions.
        for i in 0..160 {
            self.push_with(format!("ch/garbled-{i}"), Wrap::Padded, |r, scid| {
                let mut m = client_hello(
                    &[CORPUS_ALPN],
                    Some("localhost"),
                    &client_transport_params(scid),
                    r.array(),
                    r.array(),
                );
                mutate(&mut m, r);
                crypto_frame(0, &m)
            });
        }
    }

    /// ServerHellos for the fake server: valid-looking, cut at every offset, and garbled.
    fn server_hellos(&mut self) {
        let sh = server_hello(0x1301, self.r.array(), self.r.array());
        self.push("sh/valid-then-silence", Wrap::Padded, crypto_frame(0, &sh));
        for cut in 0..sh.len() {
            self.push(
                format!("sh/msg-cut@{cut}"),
                Wrap::Padded,
                crypto_frame(0, &sh[..cut]),
            );
        }
        let frame = crypto_frame(0, &sh);
        for cut in (1..frame.len()).step_by(3) {
            self.push(format!("sh/frame-cut@{cut}"), Wrap::Exact, frame[..cut].to_vec());
        }
        type Build = Box<dyn Fn(&mut Prng) -> Vec<u8>>;
        let exts = |r: &mut Prng| server_hello_extensions(&r.array::<32>());
        let with_exts = move |r: &mut Prng, f: &dyn Fn(&mut Extensions)| {
            let mut e = exts(r);
            f(&mut e);
            encode_server_hello(&r.array(), &[], 0x1301, &e)
        };
        // HelloRetryRequest's magic random (RFC 8446 §4.1.3).
        const HRR_RANDOM: [u8; 32] = [
            0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
            0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
        ];
        let variants: Vec<(&str, Build)> = vec![
            (
                "suite-not-offered",
                Box::new(move |r: &mut Prng| encode_server_hello(&r.array(), &[], 0x1305, &exts(r))),
            ),
            (
                "suite-tls12",
                Box::new(move |r: &mut Prng| encode_server_hello(&r.array(), &[], 0xc02f, &exts(r))),
            ),
            (
                "session-id-echo-mismatch",
                Box::new(move |r: &mut Prng| {
                    let sid = r.bytes(32);
                    encode_server_hello(&r.array(), &sid, 0x1301, &exts(r))
                }),
            ),
            (
                "no-supported-versions",
                Box::new(move |r: &mut Prng| with_exts(r, &|e| e.retain(|x| x.0 != EXT_SUPPORTED_VERSIONS))),
            ),
            (
                "supported-versions-tls12",
                Box::new(move |r: &mut Prng| {
                    with_exts(r, &|e| set_ext(e, EXT_SUPPORTED_VERSIONS, vec![3, 3]))
                }),
            ),
            (
                "supported-versions-1-byte",
                Box::new(move |r: &mut Prng| with_exts(r, &|e| set_ext(e, EXT_SUPPORTED_VERSIONS, vec![3]))),
            ),
            (
                "no-key-share",
                Box::new(move |r: &mut Prng| with_exts(r, &|e| e.retain(|x| x.0 != EXT_KEY_SHARE))),
            ),
            (
                "key-share-zero-point",
                Box::new(move |r: &mut Prng| {
                    with_exts(r, &|e| {
                        set_ext(e, EXT_KEY_SHARE, key_share_entry(GROUP_X25519, &[0; 32]))
                    })
                }),
            ),
            (
                "key-share-wrong-group",
                Box::new(move |r: &mut Prng| {
                    with_exts(r, &|e| {
                        set_ext(e, EXT_KEY_SHARE, key_share_entry(GROUP_SECP256R1, &[4; 65]))
                    })
                }),
            ),
            (
                "key-share-31b",
                Box::new(move |r: &mut Prng| {
                    with_exts(r, &|e| {
                        set_ext(e, EXT_KEY_SHARE, key_share_entry(GROUP_X25519, &[7; 31]))
                    })
                }),
            ),
            (
                "key-share-len-past-end",
                Box::new(move |r: &mut Prng| {
                    with_exts(r, &|e| set_ext(e, EXT_KEY_SHARE, vec![0, 0x1d, 0, 99, 1]))
                }),
            ),
            (
                "unsolicited-extension",
                Box::new(move |r: &mut Prng| {
                    with_exts(r, &|e| {
                        e.push((EXT_ALPN, u16_prefixed(&u8_prefixed(CORPUS_ALPN))))
                    })
                }),
            ),
            (
                "quic-params-in-server-hello",
                Box::new(move |r: &mut Prng| {
                    with_exts(r, &|e| e.push((EXT_QUIC_TRANSPORT_PARAMETERS, vec![])))
                }),
            ),
            (
                "duplicate-extensions",
                Box::new(move |r: &mut Prng| {
                    with_exts(r, &|e| {
                        let c = e.clone();
                        e.extend(c);
                    })
                }),
            ),
            (
                "hello-retry-request",
                Box::new(move |r: &mut Prng| {
                    let e = vec![
                        (EXT_SUPPORTED_VERSIONS, TLS13.to_be_bytes().to_vec()),
                        (EXT_KEY_SHARE, GROUP_X25519.to_be_bytes().to_vec()),
                    ];
                    let _ = r;
                    encode_server_hello(&HRR_RANDOM, &[], 0x1301, &e)
                }),
            ),
            (
                "hrr-same-group-twice",
                Box::new(move |r: &mut Prng| {
                    let e = vec![
                        (EXT_SUPPORTED_VERSIONS, TLS13.to_be_bytes().to_vec()),
                        (EXT_KEY_SHARE, GROUP_X25519.to_be_bytes().to_vec()),
                    ];
                    let hrr = encode_server_hello(&HRR_RANDOM, &[], 0x1301, &e);
                    let _ = r;
                    [hrr.clone(), hrr].concat()
                }),
            ),
            (
                "len-max",
                Box::new(move |r: &mut Prng| {
                    let mut m = server_hello(0x1301, r.array(), r.array());
                    m[1..4].copy_from_slice(&[0xff, 0xff, 0xff]);
                    m
                }),
            ),
            (
                "len-plus-1",
                Box::new(move |r: &mut Prng| {
                    let mut m = server_hello(0x1301, r.array(), r.array());
                    m[3] = m[3].wrapping_add(1);
                    m
                }),
            ),
            (
                "type-client-hello",
                Box::new(move |r: &mut Prng| client_hello(&[CORPUS_ALPN], None, &[], r.array(), r.array())),
            ),
            (
                "type-certificate-in-initial",
                Box::new(move |r: &mut Prng| handshake_message(11, &r.bytes(60))),
            ),
            (
                "type-finished-first",
                Box::new(move |r: &mut Prng| handshake_message(20, &r.bytes(32))),
            ),
            (
                "two-server-hellos",
                Box::new(move |r: &mut Prng| {
                    [
                        server_hello(0x1301, r.array(), r.array()),
                        server_hello(0x1301, r.array(), r.array()),
                    ]
                    .concat()
                }),
            ),
            (
                "compression-1",
                Box::new(move |r: &mut Prng| {
                    let mut m = server_hello(0x1301, r.array(), r.array());
                    let at = 4 + 2 + 32 + 1 + 2;
                    m[at] = 1;
                    m
                }),
            ),
            (
                "trailing-garbage",
                Box::new(move |r: &mut Prng| {
                    [server_hello(0x1301, r.array(), r.array()), r.bytes(40)].concat()
                }),
            ),
        ];
        for (name, build) in variants {
            let m = build(&mut self.r);
            self.push(format!("sh/{name}"), Wrap::Padded, crypto_frame(0, &m));
        }
        for i in 0..80 {
            let mut m = server_hello(0x1301, self.r.array(), self.r.array());
            mutate(&mut m, &mut self.r);
            self.push(format!("sh/garbled-{i}"), Wrap::Padded, crypto_frame(0, &m));
        }
    }

    fn valid_server_hello_frame(&mut self) -> Vec<u8> {
        crypto_frame(0, &server_hello(0x1301, self.r.array(), self.r.array()))
    }

    /// Every broken header / protection wrap, over a valid first flight (ClientHello or
    /// ServerHello) and over random bytes.
    fn wraps(&mut self, client: bool) {
        let mut wraps = vec![
            Wrap::Unpadded,
            Wrap::ShortDcid(0),
            Wrap::ShortDcid(1),
            Wrap::ShortDcid(7),
            Wrap::ReservedBits,
            Wrap::Token,
            Wrap::LengthOver(1),
            Wrap::LengthOver(500),
            Wrap::LengthOver(u16::MAX),
            Wrap::LengthUnder(1),
            Wrap::LengthUnder(17),
            Wrap::LengthUnder(600),
            Wrap::Truncated(0),
            Wrap::Truncated(1),
            Wrap::Truncated(6),
            Wrap::Truncated(20),
            Wrap::Truncated(60),
            Wrap::Truncated(1199),
            Wrap::Version(0),
            Wrap::Version(0x0a0a_0a0a),
            Wrap::Version(0x6b33_43cf), // QUIC v2 (RFC 9369) number with v1 keys
            Wrap::Version(0xff00_001d), // draft-29
            Wrap::Version(u32::MAX),
            Wrap::LongDcid(21),
            Wrap::LongDcid(255),
            Wrap::LongScid(21),
            Wrap::LongScid(255),
            Wrap::TokenLenOver,
            Wrap::BadTag,
            Wrap::WrongKeys,
            Wrap::WrongSide,
            Wrap::NoFixedBit,
            Wrap::PacketType(TYPE_ZERO_RTT),
            Wrap::PacketType(TYPE_HANDSHAKE),
            Wrap::PacketType(TYPE_RETRY),
        ];
        if !client {
            wraps.push(Wrap::OtherDcid);
        }
        for wrap in wraps {
            let tag = format!("{wrap:?}").to_lowercase().replace(['(', ')'], "-");
            let tag = tag.trim_end_matches('-');
            if client {
                self.push_with(format!("wrap/{tag}/hello"), wrap, Gen::hello);
            } else {
                let sh = self.valid_server_hello_frame();
                self.push(format!("wrap/{tag}/server-hello"), wrap, sh);
            }
            let len = self.r.range(1, 900) as usize;
            let junk = self.r.bytes(len);
            self.push(format!("wrap/{tag}/random"), wrap, junk);
        }
    }

    /// Server direction: Version Negotiation packets (the frames are the version list) and
    /// Retry packets with bad integrity tags.
    fn negotiation(&mut self) {
        let lists: Vec<(&str, Vec<u8>)> = vec![
            ("vn/empty-list", vec![]),
            ("vn/only-unknown", 0x1a2a_3a4au32.to_be_bytes().to_vec()),
            ("vn/lists-v1", QUIC_V1.to_be_bytes().to_vec()), // must be ignored (RFC 9000 §6.2)
            ("vn/odd-length", vec![0, 0, 0, 2, 0xff]),
            (
                "vn/many",
                (0..300u32)
                    .flat_map(|v| (v | 0x0a0a_0a0a).to_be_bytes())
                    .collect(),
            ),
        ];
        for (name, list) in lists {
            self.push(name, Wrap::VersionNegotiation, list);
        }
        self.push("retry/empty-token", Wrap::Retry, vec![]);
        self.push("retry/token", Wrap::Retry, b"retry-token".to_vec());
        let big = self.r.bytes(1000);
        self.push("retry/big-token", Wrap::Retry, big);
    }

    /// One seeded random client case.
    fn random_client_case(&mut self) {
        let i = self.cases.len();
        let wrap = self.random_wrap();
        match self.r.below(10) {
            0..=2 => {
                let len = self.r.range(1, 1100) as usize;
                let junk = self.r.bytes(len);
                self.push(format!("random/{i}/bytes"), wrap, junk);
            }
            3..=5 => {
                let frames = self.random_frames();
                self.push(format!("random/{i}/frames"), wrap, frames);
            }
            6..=7 => self.push_with(format!("random/{i}/garbled-hello"), wrap, |r, scid| {
                let mut f = Gen::hello(r, scid);
                mutate(&mut f, r);
                f
            }),
            _ => self.push_with(format!("random/{i}/hello+frames"), wrap, |r, scid| {
                let hello = Gen::hello(r, scid);
                let mut g = Gen {
                    r: r.clone(),
                    cases: Vec::new(),
                };
                let tail = g.random_frames();
                *r = g.r;
                [hello, tail].concat()
            }),
        }
    }

    /// One seeded random server case.
    fn random_server_case(&mut self) {
        let i = self.cases.len();
        let wrap = self.random_wrap();
        match self.r.below(10) {
            0..=2 => {
                let len = self.r.range(1, 1100) as usize;
                let junk = self.r.bytes(len);
                self.push(format!("random/{i}/bytes"), wrap, junk);
            }
            3..=5 => {
                let frames = self.random_frames();
                self.push(format!("random/{i}/frames"), wrap, frames);
            }
            _ => {
                let mut m = server_hello(0x1301, self.r.array(), self.r.array());
                mutate(&mut m, &mut self.r);
                let tail = if self.r.below(2) == 0 {
                    self.random_frames()
                } else {
                    Vec::new()
                };
                self.push(
                    format!("random/{i}/garbled-server-hello"),
                    wrap,
                    [crypto_frame(0, &m), tail].concat(),
                );
            }
        }
    }

    /// Mostly valid protection (so the bytes reach the frame parser), sometimes a broken wrap.
    fn random_wrap(&mut self) -> Wrap {
        match self.r.below(20) {
            0..=9 => Wrap::Exact,
            10..=17 => Wrap::Padded,
            18 => Wrap::BadTag,
            _ => Wrap::LengthUnder(self.r.range(1, 40) as u16),
        }
    }

    /// 1–6 frames drawn from the templates (either size), the last possibly cut short.
    fn random_frames(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let count = self.r.range(1, 6);
        for k in 0..count {
            let big = self.r.below(2) == 0;
            let templates = frame_templates(big, &mut self.r);
            let (_, mut bytes, _) = templates[self.r.below(templates.len() as u64) as usize].clone();
            if k + 1 == count && self.r.below(3) == 0 {
                let cut = self.r.below(bytes.len() as u64) as usize;
                bytes.truncate(cut);
            }
            out.extend(bytes);
        }
        out
    }
}

/// Replaces the body of the first extension of type `ty` (or adds one).
fn set_ext(exts: &mut Extensions, ty: u16, body: Vec<u8>) {
    match exts.iter_mut().find(|(t, _)| *t == ty) {
        Some(e) => e.1 = body,
        None => exts.push((ty, body)),
    }
}

/// 1–4 random edits: bit flips, byte overwrites, insertions, deletions, truncation.
fn mutate(m: &mut Vec<u8>, r: &mut Prng) {
    for _ in 0..r.range(1, 4) {
        if m.is_empty() {
            m.push(r.next_u64() as u8);
            continue;
        }
        let at = r.below(m.len() as u64) as usize;
        match r.below(5) {
            0 => m[at] ^= 1 << r.below(8),
            1 => m[at] = r.next_u64() as u8,
            2 => m.insert(at, r.next_u64() as u8),
            3 => {
                m.remove(at);
            }
            _ => m.truncate(at),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 6. PRNG and encoding helpers
// ---------------------------------------------------------------------------------------------

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny seeded generator for reproducible corpora.
/// Not cryptography — nothing here needs unpredictability.
#[derive(Clone, Debug)]
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Self {
        Prng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        // SplitMix64's published increment (2^64 / golden ratio) and mixing constants.
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-enough value in `0..n` (0 when `n` is 0); modulo bias is irrelevant here.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Value in `lo..=hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo).saturating_add(1))
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        for b in &mut a {
            *b = self.next_u64() as u8;
        }
        a
    }
}

/// Minimal varint encoding (RFC 9000 §16); values above [`VARINT_MAX`] are clamped to it.
pub fn varint(v: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    put_varint(&mut out, v);
    out
}

/// Varint in exactly `len` bytes (1, 2, 4 or 8; other lengths round up to the next of those),
/// the value masked to what fits — for non-minimal encodings.
pub fn varint_n(v: u64, len: usize) -> Vec<u8> {
    let (len, prefix) = match len {
        0 | 1 => (1, 0x00u64),
        2 => (2, 0x40),
        3 | 4 => (4, 0x80),
        _ => (8, 0xc0),
    };
    let bits = 8 * len as u32 - 2;
    let v = v & ((1u64 << bits) - 1);
    let word = (prefix << (8 * (len as u32 - 1))) | v;
    word.to_be_bytes()[8 - len..].to_vec()
}

fn put_varint(out: &mut Vec<u8>, v: u64) {
    let v = v.min(VARINT_MAX);
    let len = match v {
        0..=0x3f => 1,
        0x40..=0x3fff => 2,
        0x4000..=0x3fff_ffff => 4,
        _ => 8,
    };
    out.extend_from_slice(&varint_n(v, len));
}

/// Reads a varint from the front of `buf`: `(value, bytes used)`, `None` if cut short.
pub fn read_varint(buf: &[u8]) -> Option<(u64, usize)> {
    let first = *buf.first()?;
    let len = 1usize << (first >> 6);
    let bytes = buf.get(..len)?;
    let v = bytes
        .iter()
        .skip(1)
        .fold(u64::from(first & 0x3f), |acc, b| acc << 8 | u64::from(*b));
    Some((v, len))
}

fn u8_prefixed(data: &[u8]) -> Vec<u8> {
    let data = &data[..data.len().min(usize::from(u8::MAX))];
    [&[data.len() as u8][..], data].concat()
}

/// u16 length prefix; a body longer than the field holds keeps all its bytes but the prefix
/// saturates (the result is then hostile, deliberately).
fn u16_prefixed(data: &[u8]) -> Vec<u8> {
    let len = data.len().min(U16_MAX_LEN) as u16;
    [&len.to_be_bytes()[..], data].concat()
}

fn u16s(values: &[u16]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_be_bytes()).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// 7. Unit tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 9001 Appendix A.3: the server Initial, byte for byte (2-byte packet number 1).
    #[test]
    fn rfc9001_a3_server_initial() {
        let client_dcid = unhex("8394c8f03e515708");
        let scid = unhex("f067a5502a4262b5");
        let frames = unhex(
            "02000000000600405a020000560303eefce7f7b37ba1d1632e96677825ddf739
             88cfc79825df566dc5430b9a045a1200130100002e00330024001d00209d3c94
             0d89690b84d08a60993c144eca684d1081287c834d5311bcf32bb9da1a002b00
             020304",
        );
        let mut seal = Seal::server(&client_dcid, &[], &scid, 1);
        seal.pn_len = 2;
        seal.pad = Pad::None;
        let packet = seal.seal(&frames);
        let expected = unhex(
            "cf000000010008f067a5502a4262b5004075c0d95a482cd0991cd25b0aac406a
             5816b6394100f37a1c69797554780bb38cc5a99f5ede4cf73c3ec2493a1839b3
             dbcba3f6ea46c5b7684df3548e7ddeb9c3bf9c73cc3f3bded74b562bfb19fb84
             022f8ef4cdd93795d77d06edbb7aaf2f58891850abbdca3d20398c276456cbc4
             2158407dd074ee",
        );
        assert_eq!(hex(&packet), hex(&expected));
        let opened = open_initial(&packet, &client_dcid, Side::Client).expect("opens");
        assert_eq!((opened.pn, opened.frames), (1, frames));
    }

    #[test]
    fn client_initial_round_trip_and_size() {
        let mut r = Prng::new(7);
        let (dcid, scid) = (r.bytes(8), r.bytes(5));
        let frames = client_hello_frame(
            &[b"x"],
            Some("localhost"),
            &client_transport_params(&scid),
            &mut r,
        );
        let d = client_initial(&dcid, &scid, b"", 3, &frames);
        assert!(
            d.len() >= MIN_INITIAL_DATAGRAM && d.len() <= MIN_INITIAL_DATAGRAM + 2,
            "{}",
            d.len()
        );
        let h = parse_long_header(&d).unwrap();
        assert_eq!((h.version, h.dcid, h.scid), (QUIC_V1, &dcid[..], &scid[..]));
        assert!(matches!(h.body, LongBody::Initial { token: [], packet_len, .. } if packet_len == d.len()));
        let opened = open_initial(&d, &dcid, Side::Server).unwrap();
        assert_eq!(opened.pn, 3);
        assert_eq!(&opened.frames[..frames.len()], &frames[..]);
        assert!(opened.frames[frames.len()..].iter().all(|b| *b == 0));
    }

    #[test]
    fn server_initial_round_trip() {
        let (client_dcid, client_scid, server_scid) = ([1u8; 8], [2u8; 5], [3u8; 8]);
        let frames = crypto_frame(0, &server_hello(0x1301, [4; 32], [5; 32]));
        let d = server_initial(&client_dcid, &client_scid, &server_scid, 0, &frames);
        assert!(d.len() >= MIN_INITIAL_DATAGRAM);
        let opened = open_initial(&d, &client_dcid, Side::Client).expect("the client's view opens it");
        assert_eq!(
            (&opened.dcid[..], &opened.scid[..]),
            (&client_scid[..], &server_scid[..])
        );
        assert_eq!(&opened.frames[..frames.len()], &frames[..]);
        assert!(
            open_initial(&d, &client_dcid, Side::Server).is_none(),
            "not with the server's own keys"
        );
    }

    #[test]
    fn exact_wrap_keeps_a_single_byte_payload() {
        let case = &corpus(1, 2)[0];
        assert_eq!(case.frames, [0x40]);
        let d = case.client_datagram();
        assert_eq!(d.len(), MIN_INITIAL_DATAGRAM);
        let opened = open_initial(&d, &case.dcid, Side::Server).unwrap();
        assert_eq!(opened.frames, [0x40]);
    }

    #[test]
    fn varints() {
        for (v, len) in [
            (0, 1),
            (63, 1),
            (64, 2),
            (16383, 2),
            (16384, 4),
            ((1 << 30) - 1, 4),
            (1 << 30, 8),
            (VARINT_MAX, 8),
        ] {
            let e = varint(v);
            assert_eq!(e.len(), len, "{v}");
            assert_eq!(read_varint(&e), Some((v, len)));
        }
        assert_eq!(varint_n(6, 2), [0x40, 0x06]);
        assert_eq!(read_varint(&[0x40]), None);
        assert_eq!(read_varint(&[]), None);
    }

    #[test]
    fn corpora_are_seeded_and_big_enough() {
        let a = corpus(42, 6000);
        assert_eq!(a.len(), 6000);
        assert_eq!(a, corpus(42, 6000));
        assert_ne!(a[3000].frames, corpus(43, 6000)[3000].frames);
        let mut names = std::collections::HashSet::new();
        let dups: Vec<_> = a
            .iter()
            .filter(|c| !names.insert(c.name.as_str()))
            .map(|c| &c.name)
            .collect();
        assert!(dups.is_empty(), "duplicate names: {dups:?}");
        let structured = a.iter().filter(|c| !c.name.starts_with("random/")).count();
        assert!(structured > 2000, "{structured} structured cases");
        for needle in [
            "trigger/frame-type-varint-cut-0x40",
            "trigger/tp-ends-with-0x20-len-0",
            "tp/dup-0xf",
            "ch/msg-cut@10",
            "forbidden/hello+stream",
            "bounds/crypto-offset-max",
            "wrap/longdcid-21/hello",
        ] {
            assert!(names.contains(needle), "{needle}");
        }
        let s = server_corpus(42, 3_000);
        let structured = s.iter().position(|c| c.name.starts_with("random/")).unwrap();
        eprintln!(
            "client structured: {}, server structured: {structured}",
            a.iter().filter(|c| !c.name.starts_with("random/")).count()
        );
        let s = server_corpus(42, 800);
        assert_eq!(s.len(), 800);
        assert!(s.iter().any(|c| c.wrap == Wrap::VersionNegotiation));
    }

    /// Every datagram of both corpora builds without panicking and, where the wrap promises
    /// valid protection, opens again to exactly the case's frames (plus padding).
    #[test]
    fn every_case_seals_and_valid_ones_open() {
        for case in corpus(9, 3000) {
            let d = case.client_datagram();
            if case.wrap.reaches_frames() {
                let opened =
                    open_initial(&d, &case.dcid, Side::Server).unwrap_or_else(|| panic!("{}", case.name));
                assert_eq!(
                    &opened.frames[..case.frames.len()],
                    &case.frames[..],
                    "{}",
                    case.name
                );
                assert!(d.len() >= MIN_INITIAL_DATAGRAM, "{}", case.name);
            }
        }
        let (cd, cs) = (vec![1u8; 8], vec![2u8; 8]);
        for case in server_corpus(9, 800) {
            let d = case.server_datagram(&cd, &cs, 0);
            if case.wrap.reaches_frames() {
                let opened = open_initial(&d, &cd, Side::Client).unwrap_or_else(|| panic!("{}", case.name));
                assert_eq!(
                    &opened.frames[..case.frames.len()],
                    &case.frames[..],
                    "{}",
                    case.name
                );
            }
        }
    }

    /// The parser never panics: every prefix of real packets, and random bytes.
    #[test]
    fn parser_survives_garbage() {
        let mut r = Prng::new(3);
        for case in corpus(5, 600) {
            let d = case.client_datagram();
            for cut in 0..d.len().min(80) {
                let _ = parse_long_header(&d[..cut]);
                let _ = open_initial(&d[..cut], &case.dcid, Side::Server);
            }
        }
        for _ in 0..20_000 {
            let len = r.below(64) as usize;
            let mut b = r.bytes(len);
            if let Some(f) = b.first_mut() {
                *f |= 0x80;
            }
            let _ = parse_long_header(&b);
            let _ = open_initial(&b, b"12345678", Side::Client);
        }
    }
}
