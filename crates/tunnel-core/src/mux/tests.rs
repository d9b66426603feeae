use super::*;
use crate::wire::open::KIND_TCP;
use std::sync::Mutex;

#[derive(Clone, Default)]
struct Collect {
    opened: Arc<Mutex<Vec<RemoteStream>>>,
    closed: Arc<Mutex<Vec<ClosedStream>>>,
    goaways: Arc<Mutex<Vec<(u16, String)>>>,
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
    fn on_goaway(&mut self, code: u16, reason: &str) {
        self.goaways.lock().unwrap().push((code, reason.to_string()));
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
        buffer: None,
        credit: false,
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

/// Receives until nothing more arrives for 200 ms, without returning credit: what the stream
/// holds while its reader does not consume.
async fn held_without_consuming(ctx: &mut StreamCtx) -> Vec<u8> {
    let mut held = Vec::new();
    while let Ok(Some(Inbound::Data(b))) = tokio::time::timeout(Duration::from_millis(200), ctx.recv()).await
    {
        held.extend_from_slice(&b);
    }
    held
}

/// Holds what arrives without consuming (checked against `cap`), then consumes it and reads the
/// rest to FIN: everything must still arrive.
async fn capped_then_all(ctx: &mut StreamCtx, cap: usize) -> Vec<u8> {
    let mut got = held_without_consuming(ctx).await;
    assert!(
        !got.is_empty() && got.len() <= cap,
        "held {} bytes with a cap of {cap}",
        got.len()
    );
    ctx.consumed(got.len());
    got.extend_from_slice(&read_all(ctx).await.unwrap());
    got
}

#[tokio::test]
async fn a_buffer_cap_bounds_what_a_stream_holds_each_way_and_still_moves_everything() {
    const CAP: usize = 2048; // a quarter of the tunnel's 8 KiB stream window
    let (edge, _ce, _hub, ch) = pair();
    let capped = OpenRecord {
        buffer: Some(CAP as u32),
        ..record()
    };
    let local = edge.open(capped.clone()).unwrap();
    let mut remote = ch.next_open().await;
    assert_eq!(remote.record, capped);
    // Edge → hub, the hub not reading at first.
    let up = pattern(64 * 1024, 3);
    let sending = {
        let up = up.clone();
        tokio::spawn(async move {
            assert!(local.send_all(up).await);
            local.fin();
            local
        })
    };
    assert_eq!(capped_then_all(&mut remote.ctx, CAP).await, up);
    let mut local = sending.await.unwrap();
    // Hub → edge, the edge not reading at first.
    let down = pattern(64 * 1024, 9);
    let sending = {
        let down = down.clone();
        let ctx = remote.ctx;
        tokio::spawn(async move {
            assert!(ctx.send_all(down).await);
            ctx.fin();
        })
    };
    assert_eq!(capped_then_all(&mut local, CAP).await, down);
    sending.await.unwrap();
}

/// An idle connection costs mostly the tasks of its stream, and a task is as large as the
/// largest state of its future. The TLS stream's carrying future must stay small: when it
/// still held the QUIC pump inline, every hub stream task was 3.2 KiB (heaptrack, 10,000 idle
/// connections; bench/changes.md) against ~1 KiB now.
#[tokio::test]
async fn a_tls_streams_carrying_future_stays_small() {
    let (ha, _ca, _hb, _cb) = pair();
    let ctx = ha.open(record()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sock = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let carry = StreamIo::Mux(ctx).run_tcp(sock);
    let size = std::mem::size_of_val(&carry);
    assert!(size <= 1024, "StreamIo::run_tcp's future is {size} bytes");
}

/// A peer that grants absurd credit (u32::MAX per stream and for the connection) and then stops
/// reading: one stream takes no more than the largest window a receiver ever grants, and all
/// streams together no more than the tunnel's send budget (plus what the transport took).
#[tokio::test]
async fn absurd_credit_from_a_peer_that_stops_reading_is_clipped_and_budgeted() {
    // 64 KiB of pipe the peer never reads: the tunnel socket fills and stays full.
    let (a, mut peer) = tokio::io::duplex(64 * 1024);
    let c = Collect::default();
    let (hub, fut) = start(a, cfg(Side::Hub), c.clone());
    tokio::spawn(fut);
    const STREAMS: u32 = 64;
    let mut out = BytesMut::new();
    for i in 0..STREAMS {
        let id = 2 * i + 1;
        let mut p = BytesMut::new();
        record().encode(&mut p);
        frame::encode(&mut out, FrameType::Open, 0, id, &p);
        frame::encode(&mut out, FrameType::Window, 0, id, &u32::MAX.to_be_bytes());
        frame::encode(&mut out, FrameType::Window, 0, id, &u32::MAX.to_be_bytes());
    }
    frame::encode(&mut out, FrameType::Window, 0, 0, &u32::MAX.to_be_bytes());
    peer.write_all(&out).await.unwrap();
    // Every stream's writer pushes as much as the mux takes, counting what it took.
    let accepted: Vec<Arc<AtomicU64>> = (0..STREAMS).map(|_| Arc::default()).collect();
    for n in &accepted {
        let n = n.clone();
        let remote = c.next_open().await;
        tokio::spawn(async move {
            loop {
                if !remote.ctx.send_all(Bytes::from(vec![7u8; 16 * 1024])).await {
                    return;
                }
                n.fetch_add(16 * 1024, Ordering::Relaxed);
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let each: Vec<u64> = accepted.iter().map(|n| n.load(Ordering::Relaxed)).collect();
    let total: u64 = each.iter().sum();
    let window = u64::from(flow::max_window(8 * 1024, None));
    assert!(
        each.iter().all(|&n| n <= window),
        "a stream took more than its window: {each:?}"
    );
    // What left for the transport: at most the connection window (64 KiB) and the pipe (64 KiB)
    // beyond what the budget holds.
    let budget = TUNNEL_SEND_BUDGET as u64;
    assert!(
        total <= budget + 2 * 64 * 1024 + 64 * 1024,
        "{total} bytes taken in all"
    );
    assert!(hub.budget.held() <= TUNNEL_SEND_BUDGET);
    assert!(
        total >= budget / 2,
        "the streams should have filled the budget: {total}"
    );
    assert!(!hub.is_closed());
}

/// A tunnel whose stream ids run out drains and tells its owner, instead of letting the ids
/// wrap (which the peer refuses, closing the tunnel with every stream on it).
#[tokio::test]
async fn running_out_of_stream_ids_drains_the_tunnel_and_tells_its_owner() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (ce, ch) = (Collect::default(), Collect::default());
    let (edge, fe) = start(a, cfg(Side::Edge), ce.clone());
    let (_hub, fh) = start(b, cfg(Side::Hub), ch.clone());
    tokio::spawn(fe);
    tokio::spawn(fh);
    // Two ids left before the end.
    edge.next_id.store(STREAM_IDS_END - 4, Ordering::Relaxed);
    let first = edge.open(record()).expect("an id is left");
    let second = edge.open(record()).expect("the last id");
    assert_eq!((first.id, second.id), (STREAM_IDS_END - 4, STREAM_IDS_END - 2));
    assert!(edge.open(record()).is_none(), "no id past the end is used");
    assert!(edge.open(record()).is_none());
    // The owner hears it once; the peer gets GOAWAY and the open streams still work.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while ch.goaways.lock().unwrap().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ce.goaways.lock().unwrap().len(), 1);
    assert_eq!(ce.goaways.lock().unwrap()[0].0, frame::goaway::DRAIN);
    assert_eq!(ch.goaways.lock().unwrap().len(), 1, "the peer was told");
    let mut remote = ch.next_open().await;
    if remote.ctx.id != first.id {
        remote = ch.next_open().await;
    }
    assert!(first.send_all(Bytes::from_static(b"still carried")).await);
    first.fin();
    assert_eq!(read_all(&mut remote.ctx).await.unwrap(), b"still carried");
    assert!(edge.is_going_away());
}
