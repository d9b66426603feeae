//! Control records that travel as JSON inside control frames. CONFIG_ACK is typed here; the
//! hub reads nothing of it but these fields, from at most [`CONFIG_ACK_MAX`] bytes.

use serde::{Deserialize, Serialize};

/// The most a CONFIG_ACK may be. An honest edge's is a few hundred bytes (its ports and the
/// ones that failed); 8 KiB holds ~1,000 ports, and the edge shortens what would not fit.
/// Larger ones are ignored unparsed, so an edge cannot make the hub parse or keep more.
pub const CONFIG_ACK_MAX: usize = 8 * 1024;

/// A failure reason in a CONFIG_ACK is clipped to this many bytes: enough for an OS error and
/// the address it was about.
const REASON_MAX: usize = 200;

/// CONFIG_ACK: what the edge made of a CONFIG.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigAck {
    /// The CONFIG's generation.
    #[serde(default)]
    pub generation: u64,
    /// Ports bound.
    #[serde(default)]
    pub tcp: Vec<u16>,
    #[serde(default)]
    pub udp: Vec<u16>,
    /// Ports that could not be bound, and why.
    #[serde(default)]
    pub failed: Vec<PortFailure>,
    /// The lists were shortened to fit [`CONFIG_ACK_MAX`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// One port an edge could not serve.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortFailure {
    pub port: u16,
    pub protocol: String,
    pub code: String,
    pub reason: String,
}

impl ConfigAck {
    /// The record as JSON of at most [`CONFIG_ACK_MAX`] bytes: reasons are clipped, then
    /// failures and ports are dropped from the ends (and `truncated` set) until it fits.
    pub fn encode(mut self) -> Vec<u8> {
        for f in &mut self.failed {
            if f.reason.len() > REASON_MAX {
                let mut end = REASON_MAX;
                while !f.reason.is_char_boundary(end) {
                    end -= 1;
                }
                f.reason.truncate(end);
            }
        }
        loop {
            let out = serde_json::to_vec(&self).unwrap_or_default();
            if out.len() <= CONFIG_ACK_MAX {
                return out;
            }
            self.truncated = true;
            // The longest list loses its last entry; the generation always stays.
            let (f, t, u) = (self.failed.len(), self.tcp.len(), self.udp.len());
            if f > 0 && f * 40 >= t.max(u) {
                self.failed.pop();
            } else if t >= u {
                self.tcp.pop();
            } else {
                self.udp.pop();
            }
        }
    }

    /// A CONFIG_ACK from the wire: `None` if it is larger than [`CONFIG_ACK_MAX`] (not even
    /// parsed) or not one.
    pub fn decode(payload: &[u8]) -> Option<ConfigAck> {
        if payload.len() > CONFIG_ACK_MAX {
            return None;
        }
        serde_json::from_slice(payload).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(port: u16, reason: &str) -> PortFailure {
        PortFailure {
            port,
            protocol: "tcp".into(),
            code: "ERR_BIND".into(),
            reason: reason.into(),
        }
    }

    #[test]
    fn an_ack_round_trips_and_an_oversized_one_is_not_parsed() {
        let ack = ConfigAck {
            generation: 7,
            tcp: vec![80, 443],
            udp: vec![53],
            failed: vec![failure(25, "address in use")],
            truncated: false,
        };
        let bytes = ack.clone().encode();
        assert!(!String::from_utf8_lossy(&bytes).contains("truncated"));
        assert_eq!(ConfigAck::decode(&bytes), Some(ack));
        // Unknown fields of a newer edge are ignored; a huge one is refused before parsing.
        assert_eq!(
            ConfigAck::decode(br#"{"generation":3,"tcp":[1],"extra":{"x":1}}"#).map(|a| a.generation),
            Some(3)
        );
        let mut huge = br#"{"generation":1,"pad":""#.to_vec();
        huge.extend(std::iter::repeat_n(b'x', CONFIG_ACK_MAX));
        huge.extend_from_slice(b"\"}");
        assert_eq!(ConfigAck::decode(&huge), None);
        assert_eq!(ConfigAck::decode(b"[1,2]"), None);
    }

    /// Seeded mutations of a valid CONFIG_ACK (bytes flipped, cut, repeated): decoding never
    /// panics, and whatever decodes re-encodes within the bound.
    #[test]
    fn mutated_acks_never_panic_and_stay_bounded() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xac4_5eed);
        let valid = ConfigAck {
            generation: 42,
            tcp: vec![80, 443, 8443],
            udp: vec![53],
            failed: vec![failure(25, "address in use")],
            truncated: false,
        }
        .encode();
        let mut decoded = 0;
        for _ in 0..20_000 {
            let mut b = valid.clone();
            for _ in 0..rng.random_range(1..6) {
                match rng.random_range(0..4) {
                    0 if !b.is_empty() => {
                        let i = rng.random_range(0..b.len());
                        b[i] = rng.random();
                    }
                    1 if !b.is_empty() => {
                        let i = rng.random_range(0..b.len());
                        b.truncate(i);
                    }
                    2 => {
                        let i = rng.random_range(0..=b.len());
                        let piece: Vec<u8> = b[..i].to_vec();
                        b.extend_from_slice(&piece);
                    }
                    _ => {
                        let i = rng.random_range(0..=b.len());
                        b.insert(i, *b"{}[]\",:0-e\"".get(rng.random_range(0..11)).unwrap_or(&b'0'));
                    }
                }
            }
            if let Some(ack) = ConfigAck::decode(&b) {
                decoded += 1;
                assert!(ack.encode().len() <= CONFIG_ACK_MAX);
            }
        }
        assert!(decoded > 0, "some mutations stay valid CONFIG_ACKs");
    }

    #[test]
    fn a_large_ack_is_shortened_to_fit_and_says_so() {
        let ack = ConfigAck {
            generation: 9,
            tcp: (1..=3000).collect(),
            udp: (1..=500).collect(),
            failed: (1..=300).map(|p| failure(p, &"é".repeat(500))).collect(),
            truncated: false,
        };
        let bytes = ack.encode();
        assert!(bytes.len() <= CONFIG_ACK_MAX, "{} bytes", bytes.len());
        let back = ConfigAck::decode(&bytes).expect("still a CONFIG_ACK");
        assert!(back.truncated);
        assert_eq!(back.generation, 9);
        assert!(back.failed.iter().all(|f| f.reason.len() <= REASON_MAX));
        assert!(!back.tcp.is_empty() && !back.udp.is_empty());
    }
}
