//! The edge firewall: the hub's snapshot, validated again here, rendered into the edge's own
//! nftables table and applied through the system's libnftables in one atomic transaction.
//!
//! The transaction is `add table …; delete table …; table … { … }`: the table is created if
//! absent so the delete cannot fail, then replaced whole. The kernel commits the batch at once,
//! so there is never a moment with no rules or half the rules, and no other table is touched.
//! Without libnftables (or without CAP_NET_ADMIN) the edge keeps tunnelling and says why.

use ipnet_lite::{Cidr, Family};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::ffi::{c_char, c_int, c_void, CStr, CString};

use crate::error::{Error, Result};

/// Which library to load; tests point this at a missing file to prove the "unavailable" path,
/// and at nothing (default) inside throwaway network namespaces.
pub const LIB_ENV: &str = "REMOTEINGRESS_NFT_LIB";
const DEFAULT_LIB: &str = "libnftables.so.1";

/// nftables caps comments at 128 bytes; ours are short ids.
const MAX_ID_LEN: usize = 32;

/// Per-source rate-limit state is forgotten after a minute without packets: long enough to
/// span any `N/minute` window, short enough that a scan does not fill the set for long.
const PER_SOURCE_TIMEOUT: &str = "60s";
/// Sources tracked per rate limit; beyond it nftables refuses new entries (they pass unlimited
/// rather than the table growing without bound).
const PER_SOURCE_MAX: u32 = 65_535;
/// Burst when the snapshot gives none: enough for a browser's parallel connections.
const DEFAULT_BURST: u64 = 5;

/// A validated snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    blocked4: Vec<String>,
    blocked6: Vec<String>,
    rate_limits: Vec<RateLimit>,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq)]
struct RateLimit {
    id: String,
    port: u16,
    udp: bool,
    rate: String,
    burst: u64,
    per_source: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct Rule {
    id: String,
    output: bool,
    action: &'static str,
    source: Option<Cidr>,
    dest_port: Option<u16>,
    protocol: Option<&'static str>,
}

fn bad(field: String, value: &Value, why: &str) -> Error {
    Error::InvalidConfig(format!("firewallConfig.{field} = {value}: {why}"))
}

fn check_keys(obj: &serde_json::Map<String, Value>, field: &str, allowed: &[&str]) -> Result<()> {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(bad(format!("{field}.{k}"), &obj[k], "unknown key"));
        }
    }
    Ok(())
}

fn id_of(v: &Value, field: &str, seen: &mut HashSet<String>) -> Result<String> {
    let id = v
        .as_str()
        .filter(|s| {
            !s.is_empty()
                && s.len() <= MAX_ID_LEN
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
        .ok_or_else(|| bad(field.to_string(), v, "must be 1-32 characters of [A-Za-z0-9_-]"))?
        .to_string();
    if !seen.insert(id.clone()) {
        return Err(bad(field.to_string(), v, "duplicate id"));
    }
    Ok(id)
}

fn port_of(v: &Value, field: &str) -> Result<u16> {
    v.as_u64()
        .filter(|p| (1..=65535).contains(p))
        .map(|p| p as u16)
        .ok_or_else(|| bad(field.to_string(), v, "must be a port 1-65535"))
}

/// Validates the hub's JSON snapshot; the error names the field and value.
pub fn validate(v: &Value) -> Result<Snapshot> {
    let obj = v
        .as_object()
        .ok_or_else(|| Error::InvalidConfig(format!("firewallConfig = {v}: must be an object")))?;
    check_keys(obj, "firewallConfig", &["blockedIps", "rateLimits", "rules"]).map_err(|e| {
        Error::InvalidConfig(
            e.to_string()
                .replace("firewallConfig.firewallConfig.", "firewallConfig."),
        )
    })?;
    let mut snap = Snapshot {
        blocked4: Vec::new(),
        blocked6: Vec::new(),
        rate_limits: Vec::new(),
        rules: Vec::new(),
    };
    let empty = Vec::new();
    let list = |key: &str| -> Result<&Vec<Value>> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(&empty),
            Some(Value::Array(a)) => Ok(a),
            Some(other) => Err(bad(key.to_string(), other, "must be an array")),
        }
    };
    for (i, ip) in list("blockedIps")?.iter().enumerate() {
        let field = format!("blockedIps[{i}]");
        let cidr = ip
            .as_str()
            .and_then(Cidr::parse)
            .ok_or_else(|| bad(field, ip, "not an IPv4/IPv6 address or CIDR"))?;
        match cidr.family() {
            Family::V4 => snap.blocked4.push(cidr.to_string()),
            Family::V6 => snap.blocked6.push(cidr.to_string()),
        }
    }
    let mut ids = HashSet::new();
    for (i, r) in list("rateLimits")?.iter().enumerate() {
        let f = format!("rateLimits[{i}]");
        let o = r
            .as_object()
            .ok_or_else(|| bad(f.clone(), r, "must be an object"))?;
        check_keys(o, &f, &["id", "port", "protocol", "rate", "burst", "perSourceIP"]).map_err(|e| {
            Error::InvalidConfig(
                e.to_string()
                    .replace("firewallConfig.firewallConfig.", "firewallConfig."),
            )
        })?;
        let id = id_of(o.get("id").unwrap_or(&Value::Null), &format!("{f}.id"), &mut ids)?;
        let port = port_of(o.get("port").unwrap_or(&Value::Null), &format!("{f}.port"))?;
        let proto = o.get("protocol").unwrap_or(&Value::Null);
        let udp = match proto.as_str() {
            Some("tcp") => false,
            Some("udp") => true,
            _ => return Err(bad(format!("{f}.protocol"), proto, "must be 'tcp' or 'udp'")),
        };
        let rate_v = o.get("rate").unwrap_or(&Value::Null);
        let rate = rate_v.as_str().and_then(parse_rate).ok_or_else(|| {
            bad(
                format!("{f}.rate"),
                rate_v,
                "must be 'N/second', 'N/minute' or 'N/hour' with N ≥ 1",
            )
        })?;
        let burst = match o.get("burst") {
            None | Some(Value::Null) => DEFAULT_BURST,
            Some(b) => b
                .as_u64()
                .filter(|b| *b <= 1_000_000)
                .ok_or_else(|| bad(format!("{f}.burst"), b, "must be an integer 0-1000000"))?,
        };
        let per_source = match o.get("perSourceIP") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(bad(format!("{f}.perSourceIP"), other, "must be true or false")),
        };
        snap.rate_limits.push(RateLimit {
            id,
            port,
            udp,
            rate,
            burst,
            per_source,
        });
    }
    let mut ids = HashSet::new();
    for (i, r) in list("rules")?.iter().enumerate() {
        let f = format!("rules[{i}]");
        let o = r
            .as_object()
            .ok_or_else(|| bad(f.clone(), r, "must be an object"))?;
        check_keys(
            o,
            &f,
            &["id", "direction", "action", "sourceIP", "destPort", "protocol"],
        )
        .map_err(|e| {
            Error::InvalidConfig(
                e.to_string()
                    .replace("firewallConfig.firewallConfig.", "firewallConfig."),
            )
        })?;
        let id = id_of(o.get("id").unwrap_or(&Value::Null), &format!("{f}.id"), &mut ids)?;
        let dir = o.get("direction").unwrap_or(&Value::Null);
        let output = match dir.as_str() {
            Some("input") => false,
            Some("output") => true,
            _ => return Err(bad(format!("{f}.direction"), dir, "must be 'input' or 'output'")),
        };
        let act = o.get("action").unwrap_or(&Value::Null);
        let action = match act.as_str() {
            Some("accept") => "accept",
            Some("drop") => "drop",
            Some("reject") => "reject",
            _ => {
                return Err(bad(
                    format!("{f}.action"),
                    act,
                    "must be 'accept', 'drop' or 'reject'",
                ))
            }
        };
        let source = match o.get("sourceIP") {
            None | Some(Value::Null) => None,
            Some(s) => Some(
                s.as_str()
                    .and_then(Cidr::parse)
                    .ok_or_else(|| bad(format!("{f}.sourceIP"), s, "not an IPv4/IPv6 address or CIDR"))?,
            ),
        };
        let dest_port = match o.get("destPort") {
            None | Some(Value::Null) => None,
            Some(p) => Some(port_of(p, &format!("{f}.destPort"))?),
        };
        let protocol = match o.get("protocol") {
            None | Some(Value::Null) => None,
            Some(p) => Some(match p.as_str() {
                Some("tcp") => "tcp",
                Some("udp") => "udp",
                _ => return Err(bad(format!("{f}.protocol"), p, "must be 'tcp' or 'udp'")),
            }),
        };
        snap.rules.push(Rule {
            id,
            output,
            action,
            source,
            dest_port,
            protocol,
        });
    }
    Ok(snap)
}

/// `20/second` → `20/second`; rejects zero and junk.
fn parse_rate(s: &str) -> Option<String> {
    let (n, unit) = s.split_once('/')?;
    let n: u64 = n.parse().ok().filter(|n| *n >= 1 && *n <= 100_000_000)?;
    matches!(unit, "second" | "minute" | "hour").then(|| format!("{n}/{unit}"))
}

/// A stable hash of the snapshot as sent (serde_json orders object keys).
pub fn hash(v: &Value) -> String {
    crate::transport::tls::hex(ring::digest::digest(&ring::digest::SHA256, v.to_string().as_bytes()).as_ref())
        [..16]
        .to_string()
}

/// Prefix of every table an edge makes.
const TABLE_PREFIX: &str = "remoteingress_";
/// An id of up to this many letters and digits is the table name as it is; anything else is
/// shortened to it (nftables takes names of up to 255 bytes).
const TABLE_ID_MAX: usize = 32;

/// The nftables table name for an edge: its own, so nothing else on the host is touched, and no
/// other edge's. An id of only ASCII letters and digits (up to 32) is used as it is; any other
/// gets its characters other than those as `_`, at most 32 of them, and 16 hex digits of the
/// id's SHA-256 (`a.b` and `a-b` no longer share `remoteingress_a_b`, and a 255-byte id fits).
/// The two forms cannot meet: only the second has a `_` after the prefix.
pub fn table_name(edge_id: &str) -> String {
    if !edge_id.is_empty()
        && edge_id.len() <= TABLE_ID_MAX
        && edge_id.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return format!("{TABLE_PREFIX}{edge_id}");
    }
    let clean: String = edge_id
        .chars()
        .take(TABLE_ID_MAX)
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let digest = ring::digest::digest(&ring::digest::SHA256, edge_id.as_bytes());
    let hash = crate::transport::tls::hex(&digest.as_ref()[..8]);
    format!("{TABLE_PREFIX}{clean}_{hash}")
}

/// The table an earlier version made for this edge, where it differs from [`table_name`]'s
/// (ids with characters other than letters and digits): removed with the first snapshot this
/// version applies, so an upgrade leaves no stale rules behind.
pub fn legacy_table_name(edge_id: &str) -> Option<String> {
    let clean: String = edge_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let legacy = format!("{TABLE_PREFIX}{clean}");
    (legacy != table_name(edge_id) && legacy.len() <= 255).then_some(legacy)
}

/// The whole-table replacement script.
pub fn render(s: &Snapshot, table: &str) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "add table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n"
    ));
    let set = |o: &mut String, name: &str, ty: &str, elems: &[String]| {
        o.push_str(&format!(
            "  set {name} {{\n    type {ty}; flags interval; auto-merge;\n"
        ));
        if !elems.is_empty() {
            o.push_str(&format!("    elements = {{ {} }}\n", elems.join(", ")));
        }
        o.push_str("  }\n");
    };
    set(&mut o, "blocked4", "ipv4_addr", &s.blocked4);
    set(&mut o, "blocked6", "ipv6_addr", &s.blocked6);
    for rl in s.rate_limits.iter().filter(|r| r.per_source) {
        for (fam, ty) in [("4", "ipv4_addr"), ("6", "ipv6_addr")] {
            o.push_str(&format!(
                "  set rl_{}_{fam} {{\n    type {ty}; flags dynamic,timeout; timeout {PER_SOURCE_TIMEOUT}; size {PER_SOURCE_MAX};\n  }}\n",
                rl.id
            ));
        }
    }
    // Input: blocked sources first (before any served port sees them), then the operator's
    // rules in their order, then rate limits.
    o.push_str("  chain input {\n    type filter hook input priority -10; policy accept;\n");
    o.push_str("    ip saddr @blocked4 counter drop comment \"blocked\"\n");
    o.push_str("    ip6 saddr @blocked6 counter drop comment \"blocked\"\n");
    for r in s.rules.iter().filter(|r| !r.output) {
        o.push_str(&format!("    {}\n", rule_line(r)));
    }
    for rl in &s.rate_limits {
        // TCP limits count new connections (SYNs, via conntrack state), UDP ones packets.
        let (proto, new) = if rl.udp {
            ("udp", "")
        } else {
            ("tcp", " ct state new")
        };
        let limit = format!("limit rate over {} burst {} packets", rl.rate, rl.burst);
        if rl.per_source {
            for (fam, key) in [("4", "ip saddr"), ("6", "ip6 saddr")] {
                o.push_str(&format!(
                    "    {proto} dport {}{new} update @rl_{}_{fam} {{ {key} {limit} }} counter drop comment \"ratelimit:{}\"\n",
                    rl.port, rl.id, rl.id
                ));
            }
        } else {
            o.push_str(&format!(
                "    {proto} dport {}{new} {limit} counter drop comment \"ratelimit:{}\"\n",
                rl.port, rl.id
            ));
        }
    }
    o.push_str("  }\n");
    o.push_str("  chain output {\n    type filter hook output priority -10; policy accept;\n");
    for r in s.rules.iter().filter(|r| r.output) {
        o.push_str(&format!("    {}\n", rule_line(r)));
    }
    o.push_str("  }\n}\n");
    o
}

fn rule_line(r: &Rule) -> String {
    let mut parts = Vec::new();
    if let Some(src) = &r.source {
        parts.push(match src.family() {
            Family::V4 => format!("ip saddr {src}"),
            Family::V6 => format!("ip6 saddr {src}"),
        });
    }
    match (r.protocol, r.dest_port) {
        (Some(p), Some(port)) => parts.push(format!("{p} dport {port}")),
        (Some(p), None) => parts.push(format!("meta l4proto {p}")),
        (None, Some(port)) => parts.push(format!("meta l4proto {{ tcp, udp }} th dport {port}")),
        (None, None) => {}
    }
    parts.push(format!("counter {} comment \"rule:{}\"", r.action, r.id));
    parts.join(" ")
}

// ---- libnftables -----------------------------------------------------------------------------

type NftCtxNew = unsafe extern "C" fn(u32) -> *mut c_void;
type NftCtxFree = unsafe extern "C" fn(*mut c_void);
type NftRun = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;
type NftBuffer = unsafe extern "C" fn(*mut c_void) -> c_int;
type NftGetBuffer = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type NftSetFlags = unsafe extern "C" fn(*mut c_void, u32);

const NFT_CTX_DEFAULT: u32 = 0;
const NFT_CTX_OUTPUT_JSON: u32 = 1 << 4;

/// A libnftables context. Calls block (netlink round trips): run them off the async workers.
pub struct Nft {
    _lib: libloading::Library,
    ctx: *mut c_void,
    free: NftCtxFree,
    run: NftRun,
    out: NftGetBuffer,
    err: NftGetBuffer,
    flags: NftSetFlags,
}

// SAFETY: a libnftables context is not thread-safe, but `Nft` is only used behind a Mutex,
// one call at a time; nothing else holds `ctx`.
unsafe impl Send for Nft {}

impl Nft {
    /// Loads libnftables (or the library `REMOTEINGRESS_NFT_LIB` names).
    pub fn open() -> std::result::Result<Nft, String> {
        let path = std::env::var(LIB_ENV).unwrap_or_else(|_| DEFAULT_LIB.to_string());
        // SAFETY: loading a shared library runs its initialisers; libnftables' are benign.
        let lib = unsafe { libloading::Library::new(&path) }.map_err(|e| {
            format!("libnftables is not available ({path}: {e}); install the 'libnftables1' package")
        })?;
        // SAFETY: the symbol types match libnftables' public C API (nftables/libnftables.h).
        unsafe {
            let sym = |name: &[u8]| -> std::result::Result<*const c_void, String> {
                lib.get::<*const c_void>(name)
                    .map(|s| *s)
                    .map_err(|e| format!("libnftables lacks {}: {e}", String::from_utf8_lossy(name)))
            };
            let new: NftCtxNew = std::mem::transmute(sym(b"nft_ctx_new\0")?);
            let free: NftCtxFree = std::mem::transmute(sym(b"nft_ctx_free\0")?);
            let run: NftRun = std::mem::transmute(sym(b"nft_run_cmd_from_buffer\0")?);
            let buf_out: NftBuffer = std::mem::transmute(sym(b"nft_ctx_buffer_output\0")?);
            let buf_err: NftBuffer = std::mem::transmute(sym(b"nft_ctx_buffer_error\0")?);
            let out: NftGetBuffer = std::mem::transmute(sym(b"nft_ctx_get_output_buffer\0")?);
            let err: NftGetBuffer = std::mem::transmute(sym(b"nft_ctx_get_error_buffer\0")?);
            let flags: NftSetFlags = std::mem::transmute(sym(b"nft_ctx_output_set_flags\0")?);
            let ctx = new(NFT_CTX_DEFAULT);
            if ctx.is_null() {
                return Err("nft_ctx_new failed".into());
            }
            buf_out(ctx);
            buf_err(ctx);
            Ok(Nft {
                _lib: lib,
                ctx,
                free,
                run,
                out,
                err,
                flags,
            })
        }
    }

    /// Runs one nft script as one transaction. Returns its output (JSON when asked).
    pub fn run(&mut self, script: &str, json: bool) -> std::result::Result<String, String> {
        let c = CString::new(script).map_err(|_| "script contains a NUL byte".to_string())?;
        // SAFETY: ctx is valid for self's lifetime; buffers are NUL-terminated strings owned by
        // the context and copied out before the next call.
        unsafe {
            (self.flags)(self.ctx, if json { NFT_CTX_OUTPUT_JSON } else { 0 });
            let rc = (self.run)(self.ctx, c.as_ptr());
            let take = |p: *const c_char| {
                if p.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(p).to_string_lossy().into_owned()
                }
            };
            let out = take((self.out)(self.ctx));
            let err = take((self.err)(self.ctx));
            if rc == 0 {
                Ok(out)
            } else {
                Err(if err.trim().is_empty() {
                    format!("nft failed ({rc})")
                } else {
                    err.trim().to_string()
                })
            }
        }
    }
}

impl Drop for Nft {
    fn drop(&mut self) {
        // SAFETY: ctx came from nft_ctx_new and is freed once.
        unsafe { (self.free)(self.ctx) }
    }
}

/// Per-comment counter totals from `nft -j list table`: `blocked`, `rule:<id>`,
/// `ratelimit:<id>` → {packets, bytes}.
pub fn counters(json_listing: &str) -> Value {
    let mut totals: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    if let Ok(v) = serde_json::from_str::<Value>(json_listing) {
        for item in v["nftables"].as_array().into_iter().flatten() {
            let rule = &item["rule"];
            let Some(comment) = rule["comment"].as_str() else {
                continue;
            };
            for e in rule["expr"].as_array().into_iter().flatten() {
                if let Some(c) = e.get("counter") {
                    let t = totals.entry(comment.to_string()).or_default();
                    t.0 += c["packets"].as_u64().unwrap_or(0);
                    t.1 += c["bytes"].as_u64().unwrap_or(0);
                }
            }
        }
    }
    Value::Object(
        totals
            .into_iter()
            .map(|(k, (p, b))| (k, json!({ "packets": p, "bytes": b })))
            .collect(),
    )
}

/// Minimal CIDR parsing (no crate for it is packaged here): address or address/prefix,
/// normalised to its network address so nftables gets canonical elements.
mod ipnet_lite {
    use std::fmt;
    use std::net::IpAddr;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Family {
        V4,
        V6,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Cidr {
        addr: IpAddr,
        prefix: u8,
    }

    impl Cidr {
        pub fn parse(s: &str) -> Option<Cidr> {
            let (a, p) = match s.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (s, None),
            };
            let addr: IpAddr = a.parse().ok()?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix = match p {
                None => max,
                Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                    p.parse().ok()?
                }
                Some(_) => return None,
            };
            if prefix > max {
                return None;
            }
            let addr = match addr {
                IpAddr::V4(v) => {
                    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
                    IpAddr::V4((u32::from(v) & mask).into())
                }
                IpAddr::V6(v) => {
                    let mask = if prefix == 0 {
                        0
                    } else {
                        u128::MAX << (128 - prefix)
                    };
                    IpAddr::V6((u128::from(v) & mask).into())
                }
            };
            Some(Cidr { addr, prefix })
        }

        pub fn family(&self) -> Family {
            if self.addr.is_ipv4() {
                Family::V4
            } else {
                Family::V6
            }
        }
    }

    impl fmt::Display for Cidr {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let max = if self.addr.is_ipv4() { 32 } else { 128 };
            if self.prefix == max {
                write!(f, "{}", self.addr)
            } else {
                write!(f, "{}/{}", self.addr, self.prefix)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(v: Value) -> Result<Snapshot> {
        validate(&v)
    }

    #[test]
    fn validates_and_names_bad_fields() {
        let cases = [
            (json!({"blockedIps": ["300.1.1.1"]}), "blockedIps[0]"),
            (json!({"blockedIps": ["10.0.0.0/33"]}), "blockedIps[0]"),
            (
                json!({"rateLimits": [{"id": "a", "port": 80, "protocol": "tcp", "rate": "20/sec"}]}),
                "rateLimits[0].rate",
            ),
            (
                json!({"rateLimits": [{"id": "a", "port": 0, "protocol": "tcp", "rate": "1/second"}]}),
                "rateLimits[0].port",
            ),
            (
                json!({"rateLimits": [{"id": "a", "port": 1, "protocol": "tcp", "rate": "0/second"}]}),
                "rateLimits[0].rate",
            ),
            (
                json!({"rateLimits": [{"id": "a", "port": 1, "protocol": "tcp", "rate": "1/second"},
                                      {"id": "a", "port": 2, "protocol": "udp", "rate": "1/second"}]}),
                "rateLimits[1].id",
            ),
            (
                json!({"rules": [{"id": "r", "direction": "sideways", "action": "drop"}]}),
                "rules[0].direction",
            ),
            (
                json!({"rules": [{"id": "r", "direction": "input", "action": "drop", "destPort": 70000}]}),
                "rules[0].destPort",
            ),
            (
                json!({"rules": [{"id": "r;x", "direction": "input", "action": "drop"}]}),
                "rules[0].id",
            ),
            (json!({"blockedIps": [], "extra": 1}), "firewallConfig.extra"),
        ];
        for (v, field) in cases {
            let e = snap(v.clone()).unwrap_err().to_string();
            assert!(e.contains(field), "{v} → {e}");
        }
    }

    #[test]
    fn table_names_are_the_edges_own_and_fit_nftables() {
        assert_eq!(table_name("e1"), "remoteingress_e1");
        assert_eq!(legacy_table_name("e1"), None);
        // Ids that used to share a table no longer do.
        let (dot, dash, under) = (table_name("a.b"), table_name("a-b"), table_name("a_b"));
        assert!(
            dot != dash && dash != under && dot != under,
            "{dot} {dash} {under}"
        );
        assert!(dot.starts_with("remoteingress_a_b_"));
        assert_eq!(legacy_table_name("a.b").as_deref(), Some("remoteingress_a_b"));
        // An id that looks like a hashed name is a different table.
        let lookalike = format!("a_b_{}", &dot["remoteingress_a_b_".len()..]);
        assert_ne!(table_name(&lookalike), dot);
        // The longest id an edge takes (255 bytes) fits nftables' 255-byte names.
        let long = "x".repeat(255);
        let name = table_name(&long);
        assert!(name.len() <= 64, "{} bytes", name.len());
        assert_ne!(table_name(&"x".repeat(254)), name);
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        assert_eq!(legacy_table_name(&long), None, "too long ever to have been made");
    }

    #[test]
    fn renders_blocklist_rules_and_limits_in_order() {
        let s = snap(json!({
            "blockedIps": ["127.0.0.2", "10.1.2.3/8", "2001:db8::1/32"],
            "rules": [
                {"id": "ssh", "direction": "input", "action": "reject", "sourceIP": "192.0.2.0/24", "destPort": 22, "protocol": "tcp"},
                {"id": "dns", "direction": "input", "action": "accept", "destPort": 53},
                {"id": "out", "direction": "output", "action": "drop", "protocol": "udp"}
            ],
            "rateLimits": [
                {"id": "web", "port": 8080, "protocol": "tcp", "rate": "20/second", "burst": 5},
                {"id": "per", "port": 8081, "protocol": "tcp", "rate": "10/minute", "perSourceIP": true},
                {"id": "u", "port": 5353, "protocol": "udp", "rate": "100/second"}
            ]
        }))
        .unwrap();
        let r = render(&s, "remoteingress_e1");
        assert!(r.starts_with("add table inet remoteingress_e1\ndelete table inet remoteingress_e1\n"));
        assert!(r.contains("elements = { 127.0.0.2, 10.0.0.0/8 }"), "{r}");
        assert!(r.contains("elements = { 2001:db8::/32 }"), "{r}");
        let blocked = r.find("@blocked4").unwrap();
        let ssh = r.find("rule:ssh").unwrap();
        let dns = r.find("rule:dns").unwrap();
        let web = r.find("ratelimit:web").unwrap();
        assert!(blocked < ssh && ssh < dns && dns < web, "{r}");
        assert!(r.contains("ip saddr 192.0.2.0/24 tcp dport 22 counter reject comment \"rule:ssh\""));
        assert!(r.contains("meta l4proto { tcp, udp } th dport 53 counter accept"));
        assert!(
            r.contains("tcp dport 8080 ct state new limit rate over 20/second burst 5 packets counter drop")
        );
        assert!(r.contains("update @rl_per_4 { ip saddr limit rate over 10/minute burst 5 packets }"));
        assert!(r.contains("update @rl_per_6 { ip6 saddr limit rate over 10/minute burst 5 packets }"));
        assert!(r.contains("udp dport 5353 limit rate over 100/second burst 5 packets"));
        let out = r.find("chain output").unwrap();
        assert!(r.find("rule:out").unwrap() > out);
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(Cidr::parse("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(Cidr::parse("::1").unwrap().to_string(), "::1");
        for bad in [
            "10.0.0.0/",
            "10.0.0.0/x",
            "1.2.3",
            "::/129",
            "a.b.c.d",
            "10.0.0.0/-1",
        ] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn counters_sum_by_comment() {
        let listing = r#"{"nftables":[{"rule":{"comment":"blocked","expr":[{"counter":{"packets":3,"bytes":180}},{"drop":null}]}},
            {"rule":{"comment":"blocked","expr":[{"counter":{"packets":1,"bytes":80}}]}},
            {"rule":{"comment":"rule:r1","expr":[{"counter":{"packets":0,"bytes":0}}]}}]}"#;
        let c = counters(listing);
        assert_eq!(c["blocked"]["packets"], 4);
        assert_eq!(c["rule:r1"]["bytes"], 0);
    }
}
