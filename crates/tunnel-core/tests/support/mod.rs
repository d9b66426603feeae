//! Test harness for the hostile-traffic tests: daemons in child processes (so a crash or an
//! abort is observed as the child's death, and its memory is its own), edges in-process, echo
//! targets, and measurements.
//!
//! A child is this same test binary, re-run with `--exact child_entry` and the role in the
//! environment; each test binary that uses this module declares `child_entry` with
//! [`child_entry_body`]. Children talk in lines on stdout prefixed with `@@ ` (the test
//! harness prints its own lines too) and take commands on stdin; stdin closing ends them.

#![allow(dead_code)] // each test binary uses a different part of the harness

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_core::engine::edge::Edge;
use tunnel_core::engine::hub::Hub;
use tunnel_core::events::EventSink;

pub const CERT: &str = include_str!("../../src/testdata/cert.pem");
pub const KEY: &str = include_str!("../../src/testdata/key.pem");
pub const EDGE_ID: &str = "edge-1";
pub const SECRET: &str = "a-secret-of-enough-length";

const ROLE_ENV: &str = "TUNNEL_CORE_TEST_CHILD_ROLE";
const ARG_ENV: &str = "TUNNEL_CORE_TEST_CHILD_ARG";
const PREFIX: &str = "@@ ";

/// How long a child may take to report that it started (a release build starts in
/// milliseconds; the bound only keeps a broken child from hanging the test).
const CHILD_START_TIMEOUT: Duration = Duration::from_secs(20);

/// The body of each test binary's `child_entry` test: runs the role named in the environment,
/// or returns at once in the parent.
pub fn child_entry_body() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let arg: Value = serde_json::from_str(&std::env::var(ARG_ENV).unwrap_or_default()).unwrap_or(Value::Null);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        match role.as_str() {
            "hub" => run_hub_child(arg).await,
            "edge" => run_edge_child(arg).await,
            other => panic!("unknown child role {other}"),
        }
    });
    // Leave without running the rest of the harness (or other tests) in the child.
    std::process::exit(0);
}

fn say(v: Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{PREFIX}{v}");
    let _ = out.flush();
}

/// Commands from stdin, one per line, on a thread (stdin is blocking); closed at EOF.
fn commands() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// `arg`: `{ "edgePort": N, "udpPort"?: N, "udpPorts"?: [N], "limits": {...}, "extraEdges"?: [...] }`. Runs a TCP
/// echo target, a TCP flood target ([`flood_server`]) and a UDP echo target, and a hub whose
/// allowed edge `edge-1` serves `edgePort` → the echo target (and `udpPort` → the UDP echo);
/// `extraEdges` are more allowed edges, whose `targetPort` may name a target: `"echo"`,
/// `"flood"` or `"udpEcho"`. Says `{tunnelPort, fingerprint}`.
async fn run_hub_child(arg: Value) {
    let echo = echo_server().await;
    let flood = flood_server(FLOOD_BYTES).await;
    let udp_echo = udp_echo_server().await;
    let events: EventSink = std::sync::Arc::new(|_| {});
    let opts = json!({
        "tunnelPort": arg.get("tunnelPort").cloned().unwrap_or(json!(0)),
        "bindHost": "127.0.0.1",
        "certPem": CERT, "keyPem": KEY,
        "limits": arg.get("limits").cloned().unwrap_or(json!({})),
    });
    let hub = Hub::start(serde_json::from_value(opts).expect("hub options"), events)
        .await
        .expect("hub starts");
    // The edge binds 127.0.0.1 only: on all addresses, its port (picked free earlier) could
    // collide with an ephemeral source port a flood test's client bound on 127.0.0.2 meanwhile.
    let mut edges = json!([{ "id": EDGE_ID, "secret": SECRET, "bindAddress": "127.0.0.1",
        "tcp": [{ "port": arg["edgePort"], "targetHost": "127.0.0.1", "targetPort": echo.port(), "proxyProtocol": "none" }] }]);
    // `udpPort`, or several `udpPorts`: UDP services of edge-1, each to the UDP echo.
    let udp_ports: Vec<Value> = match (arg.get("udpPort"), arg.get("udpPorts")) {
        (Some(p), _) => vec![p.clone()],
        (None, Some(Value::Array(list))) => list.clone(),
        _ => vec![],
    };
    edges[0]["udp"] = udp_ports
        .iter()
        .map(|p| json!({ "port": p, "targetHost": "127.0.0.1", "targetPort": udp_echo.port(), "proxyProtocol": "none" }))
        .collect();
    let targets = [
        ("echo", echo.port()),
        ("flood", flood.port()),
        ("udpEcho", udp_echo.port()),
    ];
    for mut extra in arg
        .get("extraEdges")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        for list in ["tcp", "udp"] {
            for p in extra[list].as_array_mut().into_iter().flatten() {
                if let Some((_, port)) = targets.iter().find(|(name, _)| p["targetPort"] == *name) {
                    p["targetPort"] = json!(port);
                }
            }
        }
        edges.as_array_mut().expect("a list").push(extra);
    }
    hub.set_edges(serde_json::from_value(edges).expect("edge specs"))
        .expect("edges accepted");
    say(json!({ "tunnelPort": hub.port(), "fingerprint": hub.fingerprint() }));
    let mut cmds = commands();
    while let Some(cmd) = cmds.recv().await {
        if cmd == "status" {
            say(hub.status());
        }
    }
    hub.stop(Duration::from_millis(100)).await;
}

/// `arg`: the edge's options (JSON as the addon takes them). Says `{"started": true}`.
async fn run_edge_child(arg: Value) {
    let events: EventSink = std::sync::Arc::new(|_| {});
    let edge = Edge::start(serde_json::from_value(arg).expect("edge options"), events).expect("edge starts");
    say(json!({ "started": true }));
    let mut cmds = commands();
    while let Some(cmd) = cmds.recv().await {
        if cmd == "status" {
            say(edge.status());
        }
    }
    edge.stop(Duration::from_millis(100)).await;
}

/// A daemon in a child process.
pub struct Daemon {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Value>,
}

impl Daemon {
    /// Starts `role` with `arg` and waits for its first report.
    pub fn spawn(role: &str, arg: Value) -> (Daemon, Value) {
        let mut child = Command::new(std::env::current_exe().expect("test binary path"))
            .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
            .env(ROLE_ENV, role)
            .env(ARG_ENV, arg.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("child starts");
        let stdout: ChildStdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may have printed "test child_entry ... " on the same line first.
                if let Some(rest) = line.find(PREFIX).map(|i| &line[i + PREFIX.len()..]) {
                    if let Ok(v) = serde_json::from_str(rest) {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let stdin = child.stdin.take();
        let mut d = Daemon { child, stdin, lines };
        let first = d
            .lines
            .recv_timeout(CHILD_START_TIMEOUT)
            .unwrap_or_else(|_| panic!("{role} child did not start: {:?}", d.child.try_wait()));
        (d, first)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// How it ended, if it did.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL, as a crash would end it, and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The daemon's status document.
    pub fn status(&mut self) -> Value {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "status").expect("child reads commands");
        stdin.flush().expect("flush");
        self.lines
            .recv_timeout(Duration::from_secs(5))
            .expect("child answers status")
    }

    /// Resident set size in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A TCP echo server on an ephemeral loopback port, for the life of the runtime.
pub async fn echo_server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo");
    let addr = l.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// What the flood target writes to each connection (300 MB, as in issue 24).
pub const FLOOD_BYTES: u64 = 300_000_000;

/// A TCP target that writes `bytes` to every connection as fast as it is read, then closes.
pub async fn flood_server(bytes: u64) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind flood");
    let addr = l.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            // A small send buffer: a target on another host would not make the kernel under
            // test copy megabytes per connection into buffers, and hundreds of connections
            // doing that here would be a CPU burst on a 2-core machine that no bound of the
            // daemon's could prevent (the daemon reads none of it beyond its budget).
            let _ = socket2::SockRef::from(&s).set_send_buffer_size(128 * 1024);
            tokio::spawn(async move {
                // One static chunk for every connection: the target runs inside the process
                // whose memory a test measures, and must not add a buffer per connection to it.
                static CHUNK: [u8; 64 * 1024] = [0x5a; 64 * 1024];
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(CHUNK.len() as u64) as usize;
                    if s.write_all(&CHUNK[..n]).await.is_err() {
                        return;
                    }
                    left -= n as u64;
                }
            });
        }
    });
    addr
}

/// A UDP echo target on an ephemeral loopback port, for the life of the runtime.
pub async fn udp_echo_server() -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind udp echo");
    let addr = sock.local_addr().expect("local addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let _ = sock.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// CPU time a process has used (user + system), from /proc.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) begin after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// A port the code under test can bind a moment later, for TCP and UDP, on 127.0.0.1.
///
/// Taken below the kernel's ephemeral range, as `test/e2e/helpers.ts`' `freePort` does: a port
/// the kernel picked for us could be picked again, between our probe and the daemon's bind, as
/// the ephemeral port of a parallel test's socket (a CI run failed so: a dialing hub's QUIC
/// endpoint, bound to port 0, got the UDP port a listening edge was about to bind). Below that
/// range only an explicit bind can take a port. Each process draws from its own slice (by pid)
/// and hands a port out once, so two tests of one binary never get the same one.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let (start, size) = port_slice();
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed = handed.get_or_insert_with(HashSet::new);
    // Walk the slice from a pseudo-random point; a slice is nearly all free on a test machine.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for i in 0..u32::from(size) {
        let port = start + ((seed.wrapping_add(i.wrapping_mul(7919))) % u32::from(size)) as u16;
        if handed.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            handed.insert(port);
            return port;
        }
    }
    panic!("free_port: no free port in {start}..{}", start + size);
}

/// Ports below this are left to the system's services.
const PORT_FLOOR: u16 = 20000;
/// Ports per process: more than any test binary asks for, and several slices fit below 32768.
const PORT_SLICE_SIZE: u16 = 1500;

/// This process's slice of the ports between [`PORT_FLOOR`] and the ephemeral range.
fn port_slice() -> (u16, u16) {
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let slices = (ephemeral_low.saturating_sub(PORT_FLOOR) / PORT_SLICE_SIZE).max(1);
    let slice = (std::process::id() % u32::from(slices)) as u16;
    (PORT_FLOOR + slice * PORT_SLICE_SIZE, PORT_SLICE_SIZE)
}

/// One byte-exact echo through `port` on 127.0.0.1; how long it took.
pub async fn echo_once(port: u16, payload: &[u8]) -> Result<Duration, String> {
    let t0 = Instant::now();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(payload).await.map_err(|e| format!("write: {e}"))?;
    let mut got = vec![0u8; payload.len()];
    s.read_exact(&mut got).await.map_err(|e| format!("read: {e}"))?;
    if got != payload {
        return Err("echo differs from what was sent".into());
    }
    Ok(t0.elapsed())
}

/// Waits until an echo through `port` works, or panics after `limit`.
pub async fn wait_for_echo(port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout(Duration::from_secs(2), echo_once(port, b"ready?")).await {
            Ok(Ok(_)) => return,
            r => {
                if Instant::now() > deadline {
                    panic!("no echo through port {port} within {limit:?}: {r:?}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Edge options for the hub a [`Daemon`] reported.
pub fn edge_options(hub: &Value, transport_mode: &str) -> Value {
    json!({
        "hubHost": "127.0.0.1", "hubPort": hub["tunnelPort"], "edgeId": EDGE_ID, "secret": SECRET,
        "hubFingerprint": hub["fingerprint"], "transportMode": transport_mode,
        "reconnect": { "baseMs": 100, "capMs": 1000 },
    })
}

/// An edge in this process.
pub fn start_edge(opts: Value) -> Edge {
    Edge::start(
        serde_json::from_value(opts).expect("edge options"),
        std::sync::Arc::new(|_| {}),
    )
    .expect("edge starts")
}
