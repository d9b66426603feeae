//! The mux task: one per tunnel, owning every stream's state (no locks on the hot path).

use super::*;

pub(super) struct StreamState {
    tx: Option<inbound::InboundTx>,
    shared: Arc<StreamShared>,
    listen_port: u16,
    /// Bytes the peer may still send us on this stream.
    recv_remaining: u32,
    /// This stream's receive window: `stream_window` at first, grown for bulk streams while
    /// the tunnel carries few (see `grown_window`).
    recv_window: u32,
    /// Bytes consumed but not yet returned with WINDOW.
    recv_unacked: u32,
    /// The service's buffer cap (`bufferBytes`): the window never grows beyond it.
    cap: Option<u32>,
    outq: VecDeque<Bytes>,
    /// FIN to send once `outq` drains.
    out_fin: bool,
    in_ready: bool,
    local_done: bool,
    remote_done: bool,
    bytes_in: u64,
    bytes_out: u64,
    /// The destination socket once attached: while `at_writer` is 0 the mux writes received
    /// data to it directly (`try_write`), saving the hop through the writer task — the
    /// difference between a tunnel that adds one scheduler wakeup per direction and one that
    /// adds two.
    sock: Option<Arc<TcpStream>>,
    /// Bytes handed to the stream's consumer (writer task or `StreamCtx` owner) and not yet
    /// reported consumed. Returned to the connection window if the stream is dropped first.
    at_writer: u64,
    /// Payloads received in the current batch of frames, delivered together by
    /// `deliver_pending` (one `writev` instead of one write per 16 KiB frame).
    pending: Vec<Bytes>,
    /// The peer's FIN arrived in the current batch, after `pending`.
    pending_fin: bool,
    /// Listed in `Mux::touched`.
    touched: bool,
}

/// Creates a muxer over `io` and returns its handle plus the future that runs it. The future
/// resolves when the tunnel ends, with why.
pub fn start<IO, H>(
    io: IO,
    config: MuxConfig,
    handler: H,
) -> (MuxHandle, impl std::future::Future<Output = Error>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let config = Arc::new(config);
    let handle = MuxHandle {
        cmd: tx.clone(),
        next_id: Arc::new(AtomicU32::new(match config.side {
            Side::Edge => 1,
            Side::Hub => 2,
        })),
        stats: Arc::new(MuxStats::default()),
        config: config.clone(),
        going_away: Arc::new(AtomicBool::new(false)),
        budget: Arc::new(SendBudget::default()),
        dgram_bytes: Arc::default(),
    };
    let mut mux = Mux {
        cfg: config,
        handler,
        cmd_tx: tx,
        streams: HashMap::new(),
        ready: VecDeque::new(),
        touched: Vec::new(),
        control: BytesMut::new(),
        dgrams: BytesMut::new(),
        wbuf: OutBatch::default(),
        hdrs: BytesMut::new(),
        conn_send_credit: 0,
        conn_recv_remaining: 0,
        conn_recv_unacked: 0,
        last_remote_id: 0,
        stats: handle.stats.clone(),
        going_away: handle.going_away.clone(),
        budget: handle.budget.clone(),
        dgram_bytes: handle.dgram_bytes.clone(),
        remote_going_away: None,
        started: Instant::now(),
        last_recv: Instant::now(),
        ping_outstanding: None,
    };
    mux.conn_send_credit = i64::from(mux.cfg.connection_window);
    mux.conn_recv_remaining = mux.cfg.connection_window;
    let fut = async move { mux.run(io, rx).await };
    (handle, fut)
}

struct Mux<H: Handler> {
    pub(super) cfg: Arc<MuxConfig>,
    handler: H,
    cmd_tx: mpsc::UnboundedSender<Cmd>,
    streams: HashMap<u32, StreamState>,
    ready: VecDeque<u32>,
    /// Streams with `pending` data from the frames being processed.
    touched: Vec<u32>,
    /// Encoded control frames waiting to go out ahead of data.
    control: BytesMut,
    /// Encoded DATAGRAM frames (bounded; see MAX_PENDING_DATAGRAMS).
    dgrams: BytesMut,
    /// The next write to the tunnel: frame headers, control frames and stream payloads as
    /// they are (the readers' buffers), written with one vectored write.
    wbuf: OutBatch,
    /// Where frame headers (and small payloads) are encoded before being split off into `wbuf`.
    hdrs: BytesMut,
    pub(super) conn_send_credit: i64,
    pub(super) conn_recv_remaining: u32,
    conn_recv_unacked: u32,
    last_remote_id: u32,
    stats: Arc<MuxStats>,
    going_away: Arc<AtomicBool>,
    /// What the stream readers may hold: every byte in an `outq` is reserved from it, and
    /// given back when it goes into a write batch or is dropped.
    budget: Arc<SendBudget>,
    /// DATAGRAM bytes offered and not yet in a write batch (see `MuxHandle::datagram`).
    dgram_bytes: Arc<AtomicUsize>,
    /// The peer's GOAWAY reason, once it sent one.
    remote_going_away: Option<String>,
    started: Instant,
    last_recv: Instant,
    ping_outstanding: Option<u64>,
}

impl<H: Handler> Mux<H> {
    pub(super) async fn run<IO>(&mut self, io: IO, mut rx: mpsc::UnboundedReceiver<Cmd>) -> Error
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(io);
        let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
        let mut heartbeat = tokio::time::interval(self.cfg.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut need_flush = false;
        let why = loop {
            if self.control.len() > MAX_PENDING_CONTROL {
                break Error::Protocol("peer is not reading its control frames".into());
            }
            if self.wbuf.is_empty() {
                self.fill();
            }
            let datagrams_waiting = !self.dgrams.is_empty();
            // Drained: nothing open, nothing to send, and no command waiting (the handle sets
            // `going_away` before its GOAWAY command arrives, so streams it opened just before
            // may still be in the channel).
            if (self.going_away.load(Ordering::Acquire) || self.remote_going_away.is_some())
                && self.streams.is_empty()
                && self.wbuf.is_empty()
                && self.control.is_empty()
                && !datagrams_waiting
                && rx.is_empty()
            {
                let _ = wr.flush().await;
                let _ = wr.shutdown().await;
                break Error::GoAway(match self.remote_going_away.take() {
                    Some(r) => format!("drained after the peer's GOAWAY: {r}"),
                    None => "drained".into(),
                });
            }
            if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
                rbuf.reserve(READ_CHUNK);
            }
            let has_out = !self.wbuf.is_empty();
            tokio::select! {
                biased;
                cmd = rx.recv() => {
                    // `rx` can't close: the mux itself holds a sender.
                    let Some(cmd) = cmd else { break Error::LocalClosed("handle dropped".into()) };
                    if let Err(e) = self.on_cmd(cmd) { break e; }
                    // Drain what else is queued so one wakeup handles a burst.
                    let mut n = 0;
                    while n < 256 {
                        match rx.try_recv() {
                            Ok(cmd) => if let Err(e) = self.on_cmd(cmd) { return self.finish(e) },
                            Err(_) => break,
                        }
                        n += 1;
                    }
                }
                res = write_or_flush(&mut wr, &self.wbuf), if has_out || need_flush => {
                    match res {
                        Ok(Some(0)) => break Error::PeerClosed("tunnel socket closed for writing".into()),
                        Ok(Some(n)) => {
                            self.wbuf.advance(n);
                            need_flush = true;
                        }
                        Ok(None) => need_flush = false,
                        Err(e) => break Error::PeerClosed(format!("write: {e}")),
                    }
                }
                res = rd.read_buf(&mut rbuf) => {
                    match res {
                        Ok(0) => break self.read_ended(Ok(())),
                        Ok(n) => {
                            self.last_recv = Instant::now();
                            // Take what else is already readable (decrypted or buffered), so
                            // one pass over the frames can give each stream one `writev`.
                            // A short read (a PING, one small message) means nothing is
                            // queued behind it: skip the extra attempt, which would only cost
                            // a syscall on the latency path.
                            let mut end = None;
                            let mut last = n;
                            while last >= GATHER_MORE_AFTER && rbuf.len() < READ_BATCH {
                                if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
                                    rbuf.reserve(READ_CHUNK);
                                }
                                match read_now(&mut rd, &mut rbuf).await {
                                    Poll::Ready(Ok(0)) => { end = Some(Ok(())); break; }
                                    Poll::Ready(Ok(k)) => last = k,
                                    Poll::Ready(Err(e)) => { end = Some(Err(e)); break; }
                                    Poll::Pending => break,
                                }
                            }
                            let res = self.on_bytes(&mut rbuf);
                            self.deliver_pending();
                            if let Err(e) = res { break e; }
                            if let Some(end) = end { break self.read_ended(end); }
                        }
                        Err(e) => break self.read_ended(Err(e)),
                    }
                }
                _ = heartbeat.tick() => {
                    if self.last_recv.elapsed() > self.cfg.heartbeat_timeout {
                        break Error::Timeout(format!(
                            "no frame from the peer for {} ms (heartbeat timeout)",
                            self.last_recv.elapsed().as_millis()
                        ));
                    }
                    let stamp = self.started.elapsed().as_micros() as u64;
                    if self.ping_outstanding.is_none() {
                        self.ping_outstanding = Some(stamp);
                    }
                    frame::encode(&mut self.control, FrameType::Ping, 0, 0, &stamp.to_be_bytes());
                    if self.dgrams.is_empty() {
                        // Let go of the datagram queue's buffer. A burst grows it up to
                        // MAX_PENDING_DATAGRAMS (4 MiB, its pages touched, so resident), and a
                        // drained BytesMut still holds its whole allocation while reporting only
                        // the tail as capacity: kept, a burst's buffer would stay for the life of
                        // the tunnel. Once per heartbeat, not at every drain, where under load
                        // it would be freed and regrown many times a second.
                        self.dgrams = BytesMut::new();
                    }
                }
            }
        };
        // Best effort: tell the peer why, if it is a local decision, then close the TLS
        // session properly (close_notify) so the peer sees an orderly end, not a truncation.
        // Bounded: a peer that stopped reading must not hold up the close.
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            if matches!(
                why,
                Error::Protocol(_) | Error::LocalClosed(_) | Error::Timeout(_)
            ) {
                let mut out = BytesMut::new();
                let p = frame::goaway_payload(self.last_remote_id, 1, &why.to_string());
                frame::encode(&mut out, FrameType::GoAway, 0, 0, &p);
                let _ = wr.write_all(&out).await;
            }
            let _ = wr.shutdown().await;
        })
        .await;
        if matches!(why, Error::GoAway(_) | Error::LocalClosed(_)) {
            // An orderly close: read (and discard) until the peer closes too. Dropping a socket
            // with unread input sends RST, and an RST makes the peer's kernel throw away what
            // it received but its application has not read yet — the tail of the last streams.
            let _ = tokio::time::timeout(DRAIN_LINGER, async {
                let mut sink = BytesMut::with_capacity(16 * 1024);
                loop {
                    sink.clear();
                    match rd.read_buf(&mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
        self.finish(why)
    }

    /// Why the tunnel ended when its read side did: EOF (`Ok`) or an error.
    fn read_ended(&mut self, how: std::io::Result<()>) -> Error {
        match (self.remote_going_away.take(), how) {
            // The peer said goodbye; how its socket then closed does not matter.
            (Some(reason), _) => Error::GoAway(reason),
            (None, Ok(())) => Error::PeerClosed("tunnel closed by peer".into()),
            (None, Err(e)) => Error::PeerClosed(format!("read: {e}")),
        }
    }

    /// Ends every stream (their sockets are aborted) and reports them closed.
    fn finish(&mut self, why: Error) -> Error {
        let reason = why.to_string();
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            if let Some(st) = self.streams.remove(&id) {
                self.drop_stream(id, st, Some((reset::SHUTDOWN, reason.clone())));
            }
        }
        why
    }

    fn drop_stream(&mut self, id: u32, st: StreamState, reset: Option<(u16, String)>) {
        // What the peer sent that will now never reach a socket frees connection window: keep
        // it, and a tunnel whose clients keep vanishing mid-transfer slowly stops moving.
        let held = st.at_writer + st.pending.iter().map(|b| b.len() as u64).sum::<u64>();
        if held > 0 {
            self.give_back_connection_credit(held.min(u64::from(u32::MAX)) as u32);
        }
        // What its reader queued and the tunnel will now never send.
        self.budget.release(st.outq.iter().map(Bytes::len).sum::<usize>());
        if reset.is_some() {
            st.shared.abort();
            if let Some(tx) = &st.tx {
                let _ = tx.send(Inbound::Reset);
            }
        }
        self.stats.open_streams.fetch_sub(1, Ordering::Relaxed);
        self.handler.on_closed(ClosedStream {
            id: u64::from(id),
            listen_port: st.listen_port,
            bytes_in: st.bytes_in,
            bytes_out: st.bytes_out,
            reset,
        });
    }

    fn maybe_remove(&mut self, id: u32) {
        let done =
            matches!(self.streams.get(&id), Some(st) if st.local_done && st.remote_done && !st.touched);
        if done {
            if let Some(st) = self.streams.remove(&id) {
                self.drop_stream(id, st, None);
            }
        }
    }

    fn new_stream(
        &mut self,
        id: u32,
        listen_port: u16,
        cap: Option<u32>,
        tx: inbound::InboundTx,
        shared: Arc<StreamShared>,
    ) {
        let window = flow::capped(self.cfg.stream_window, cap);
        self.stats.open_streams.fetch_add(1, Ordering::Relaxed);
        self.stats.streams_total.fetch_add(1, Ordering::Relaxed);
        self.streams.insert(
            id,
            StreamState {
                tx: Some(tx),
                shared,
                listen_port,
                recv_remaining: window,
                recv_window: window,
                recv_unacked: 0,
                cap,
                outq: VecDeque::new(),
                out_fin: false,
                in_ready: false,
                local_done: false,
                remote_done: false,
                bytes_in: 0,
                bytes_out: 0,
                sock: None,
                at_writer: 0,
                pending: Vec::new(),
                pending_fin: false,
                touched: false,
            },
        );
    }

    fn mark_ready(&mut self, id: u32) {
        if let Some(st) = self.streams.get_mut(&id) {
            if !st.in_ready {
                st.in_ready = true;
                self.ready.push_back(id);
            }
        }
    }

    fn on_cmd(&mut self, cmd: Cmd) -> Result<(), Error> {
        match cmd {
            Cmd::Open {
                id,
                record,
                tx,
                shared,
            } => {
                if self.streams.len() as u32 >= self.cfg.max_streams {
                    shared.abort();
                    let _ = tx.send(Inbound::Reset);
                    return Ok(());
                }
                let mut p = BytesMut::with_capacity(frame::OPEN_RECORD_MAX);
                record.encode(&mut p);
                frame::encode(&mut self.control, FrameType::Open, 0, id, &p);
                self.new_stream(id, record.listen_port, record.buffer, tx, shared);
            }
            Cmd::Data { id, bytes } => match self.streams.get_mut(&id) {
                Some(st) if !st.local_done && !st.out_fin => {
                    st.outq.push_back(bytes);
                    self.mark_ready(id);
                }
                // A stream already ended: its bytes go nowhere.
                _ => self.budget.release(bytes.len()),
            },
            Cmd::Fin { id } => {
                if let Some(st) = self.streams.get_mut(&id) {
                    if !st.local_done {
                        st.out_fin = true;
                        self.mark_ready(id);
                    }
                }
            }
            Cmd::Reset { id, code, reason } => {
                if let Some(st) = self.streams.remove(&id) {
                    if !(st.local_done && st.remote_done) {
                        let p = frame::reset_payload(code, &reason);
                        frame::encode(&mut self.control, FrameType::Reset, 0, id, &p);
                    }
                    self.drop_stream(id, st, Some((code, reason)));
                }
            }
            Cmd::Attach { id, sock } => {
                if let Some(st) = self.streams.get_mut(&id) {
                    st.sock = Some(sock);
                }
            }
            Cmd::Consumed { id, n } => {
                // A stream already gone returned all it held when it was dropped
                // (`drop_stream`), so a late report must not return it twice.
                if let Some(st) = self.streams.get_mut(&id) {
                    st.at_writer = st.at_writer.saturating_sub(u64::from(n));
                    self.return_credit(id, n);
                }
            }
            Cmd::Control {
                kind,
                stream,
                payload,
            } => {
                frame::encode(&mut self.control, kind, 0, stream, &payload);
            }
            Cmd::Datagram { flow, payload } => {
                // Counted against MAX_PENDING_DATAGRAMS by `MuxHandle::datagram`, which dropped
                // what did not fit; given back when it goes into a write batch.
                frame::encode(&mut self.dgrams, FrameType::Datagram, 0, flow, &payload);
            }
            Cmd::GoAway { code, reason } => {
                self.going_away.store(true, Ordering::Release);
                let p = frame::goaway_payload(self.last_remote_id, code, &reason);
                frame::encode(&mut self.control, FrameType::GoAway, 0, 0, &p);
            }
            Cmd::Close { reason } => return Err(Error::LocalClosed(reason)),
            Cmd::IdsRunOut => {
                let reason = "this side's stream ids are used up; it moves to a new tunnel";
                self.going_away.store(true, Ordering::Release);
                let p = frame::goaway_payload(self.last_remote_id, frame::goaway::DRAIN, reason);
                frame::encode(&mut self.control, FrameType::GoAway, 0, 0, &p);
                self.handler.on_goaway(frame::goaway::DRAIN, reason);
            }
        }
        Ok(())
    }

    /// Moves control frames, then round-robin data, into the write buffer.
    fn fill(&mut self) {
        if !self.control.is_empty() {
            self.wbuf.push(self.control.split().freeze());
        }
        if !self.dgrams.is_empty() {
            // Datagrams go before stream data (they are latency-sensitive and never wait for
            // credit), but at most half a batch per turn so streams still move.
            let mut take = 0;
            while take < self.dgrams.len() && take < WRITE_BATCH / 2 {
                let len = (usize::from(self.dgrams[take]) << 16)
                    | (usize::from(self.dgrams[take + 1]) << 8)
                    | usize::from(self.dgrams[take + 2]);
                take += frame::HEADER_LEN + len;
            }
            self.wbuf.push(self.dgrams.split_to(take).freeze());
            self.dgram_bytes.fetch_sub(take, Ordering::AcqRel);
        }
        while self.wbuf.len() < WRITE_BATCH {
            let Some(id) = self.ready.pop_front() else { break };
            let Some(st) = self.streams.get_mut(&id) else {
                continue;
            };
            st.in_ready = false;
            let mut finished = false;
            if let Some(chunk) = st.outq.front_mut() {
                if self.conn_send_credit <= 0 {
                    st.in_ready = true;
                    self.ready.push_front(id);
                    break;
                }
                let n = chunk
                    .len()
                    .min(self.cfg.max_frame)
                    .min(self.conn_send_credit as usize);
                let piece = chunk.split_to(n);
                if chunk.is_empty() {
                    st.outq.pop_front();
                }
                self.budget.release(n);
                let fin = st.outq.is_empty() && st.out_fin;
                let flags = if fin { FLAG_FIN } else { 0 };
                self.hdrs.reserve(frame::HEADER_LEN + COPY_PAYLOAD_UP_TO);
                self.hdrs
                    .extend_from_slice(&frame::header(FrameType::Data, flags, id, n));
                if n <= COPY_PAYLOAD_UP_TO {
                    self.hdrs.extend_from_slice(&piece);
                    self.wbuf.push(self.hdrs.split().freeze());
                } else {
                    self.wbuf.push(self.hdrs.split().freeze());
                    self.wbuf.push(piece);
                }
                self.conn_send_credit -= n as i64;
                st.bytes_out += n as u64;
                self.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                if fin {
                    st.out_fin = false;
                    st.local_done = true;
                    finished = true;
                }
            } else if st.out_fin {
                self.hdrs
                    .extend_from_slice(&frame::header(FrameType::Data, FLAG_FIN, id, 0));
                self.wbuf.push(self.hdrs.split().freeze());
                st.out_fin = false;
                st.local_done = true;
                finished = true;
            }
            if !st.outq.is_empty() || st.out_fin {
                st.in_ready = true;
                self.ready.push_back(id);
            }
            if finished {
                self.maybe_remove(id);
            }
        }
    }

    fn on_bytes(&mut self, rbuf: &mut BytesMut) -> Result<(), Error> {
        loop {
            match frame::decode(rbuf) {
                Ok(Some(Decoded::Frame(f))) => self.on_frame(f)?,
                Ok(Some(Decoded::Skipped)) => {}
                Ok(None) => return Ok(()),
                Err(e) => return Err(Error::Protocol(e.to_string())),
            }
        }
    }

    fn on_frame(&mut self, f: Frame) -> Result<(), Error> {
        crate::supervise::check(crate::supervise::FaultPoint::Tunnel);
        match f.kind {
            FrameType::Data => self.on_data(f),
            FrameType::Open => self.on_open(f),
            FrameType::Window => {
                // Credit is clipped to what a well-behaved receiver ever grants (its windows):
                // a peer granting more cannot make this end read, and so hold, more than that.
                let inc = i64::from(frame::read_u32(&f.payload));
                if f.stream == 0 {
                    self.conn_send_credit =
                        (self.conn_send_credit + inc).min(i64::from(self.cfg.connection_window));
                } else if let Some(st) = self.streams.get(&f.stream) {
                    let most = i64::from(flow::max_window(self.cfg.stream_window, st.cap));
                    let _ = st
                        .shared
                        .credit
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| Some((c + inc).min(most)));
                    st.shared.notify.notify_one();
                }
                Ok(())
            }
            FrameType::Reset => {
                let (code, reason) =
                    frame::parse_reset(&f.payload).map_err(|e| Error::Protocol(e.to_string()))?;
                if let Some(st) = self.streams.remove(&f.stream) {
                    self.drop_stream(f.stream, st, Some((code, reason)));
                }
                Ok(())
            }
            FrameType::Ping => {
                if f.flags & FLAG_ACK != 0 {
                    let stamp = frame::read_u64(&f.payload);
                    if self.ping_outstanding == Some(stamp) {
                        self.ping_outstanding = None;
                        let now = self.started.elapsed().as_micros() as u64;
                        self.stats
                            .rtt_us
                            .store(now.saturating_sub(stamp).max(1), Ordering::Relaxed);
                    }
                } else {
                    frame::encode(&mut self.control, FrameType::Ping, FLAG_ACK, 0, &f.payload);
                }
                Ok(())
            }
            FrameType::GoAway => {
                let (_last, code, reason) =
                    frame::parse_goaway(f.kind, &f.payload).map_err(|e| Error::Protocol(e.to_string()))?;
                self.remote_going_away = Some(reason.clone());
                self.going_away.store(true, Ordering::Release);
                self.handler.on_goaway(code, &reason);
                Ok(())
            }
            FrameType::Config
            | FrameType::ConfigAck
            | FrameType::Datagram
            | FrameType::FlowOpen
            | FrameType::FlowClose
            | FrameType::Info => self.handler.on_control(f),
            FrameType::Challenge | FrameType::Auth | FrameType::AuthOk | FrameType::AuthFail => {
                Err(Error::Protocol(format!("{:?} frame after the handshake", f.kind)))
            }
        }
    }

    fn on_data(&mut self, f: Frame) -> Result<(), Error> {
        let n = f.payload.len() as u32;
        if n > self.conn_recv_remaining {
            return Err(Error::Protocol("peer exceeded the connection window".into()));
        }
        self.conn_recv_remaining -= n;
        self.stats.bytes_in.fetch_add(u64::from(n), Ordering::Relaxed);
        if !self.streams.contains_key(&f.stream) {
            // Data for a stream we already reset: drop it but give the connection credit back.
            self.give_back_connection_credit(n);
            return Ok(());
        }
        let Some(st) = self.streams.get_mut(&f.stream) else {
            return Ok(());
        };
        if st.remote_done {
            return Err(Error::Protocol(format!(
                "DATA on stream {} after its FIN",
                f.stream
            )));
        }
        if n > st.recv_remaining {
            return Err(Error::Protocol(format!(
                "peer exceeded stream {}'s window",
                f.stream
            )));
        }
        st.recv_remaining -= n;
        st.bytes_in += u64::from(n);
        let fin = f.flags & FLAG_FIN != 0;
        if n > 0 {
            st.pending.push(f.payload);
        }
        if fin {
            st.remote_done = true;
            st.pending_fin = true;
        }
        if !st.touched {
            st.touched = true;
            self.touched.push(f.stream);
        }
        Ok(())
    }

    /// Hands what the last batch of frames carried to each stream's socket: straight to the
    /// socket in one `writev` while its writer task is idle (byte order is safe: nothing is
    /// queued ahead), the rest to the writer task.
    fn deliver_pending(&mut self) {
        let mut touched = std::mem::take(&mut self.touched);
        for id in touched.drain(..) {
            let Some(st) = self.streams.get_mut(&id) else {
                continue;
            };
            st.touched = false;
            let fin = std::mem::take(&mut st.pending_fin);
            let mut written = 0usize;
            if !st.pending.is_empty() && st.at_writer == 0 {
                if let Some(sock) = &st.sock {
                    let res = if let [one] = st.pending.as_slice() {
                        // One chunk (a request, a reply): no slice list to build.
                        sock.try_write(one)
                    } else {
                        let slices: Vec<IoSlice<'_>> = st
                            .pending
                            .iter()
                            .take(MAX_WRITE_SLICES)
                            .map(|b| IoSlice::new(b))
                            .collect();
                        sock.try_write_vectored(&slices)
                    };
                    if let Ok(k) = res {
                        written = k;
                    }
                }
            }
            let mut skip = written;
            let mut undelivered = 0usize;
            // Drained in place: the list keeps its capacity for the next batch.
            for mut b in st.pending.drain(..) {
                if skip >= b.len() {
                    skip -= b.len();
                    continue;
                }
                b.advance(skip);
                skip = 0;
                let len = b.len();
                if st.cap.is_some() {
                    // A frame's payload is a slice of the shared read buffer, and a slice
                    // keeps the whole buffer (64 KiB and up) alive while it waits. A capped
                    // stream promises to hold no more than its cap, so what waits for its
                    // socket is copied out of the shared buffer; uncapped streams keep the
                    // zero-copy path.
                    b = Bytes::copy_from_slice(&b);
                }
                match &st.tx {
                    Some(tx) if tx.send(Inbound::Data(b)).is_ok() => st.at_writer += len as u64,
                    // The writer is gone (its socket failed and a RESET is on its way): the
                    // bytes will never be consumed.
                    _ => undelivered += len,
                }
            }
            if st.pending.capacity() > PENDING_KEEP {
                // A peer sending tiny frames must not leave every stream holding a long list.
                st.pending = Vec::new();
            }
            if fin {
                if let Some(tx) = &st.tx {
                    let _ = tx.send(Inbound::Fin);
                }
            }
            if undelivered > 0 {
                self.give_back_connection_credit(undelivered as u32);
            }
            if written > 0 {
                self.return_credit(id, written as u32);
            }
            if fin {
                self.maybe_remove(id);
            }
        }
        self.touched = touched;
    }

    /// Bytes of stream `id` reached their socket: return the receive credit once half the
    /// stream's window is consumed, growing the window of a stream that keeps using it (see
    /// `grown_window`). Each WINDOW frame costs a record, a `send` and a wake-up of the sender's
    /// process; at quarter-window steps a 3 GB/s stream made 24,000 a second (~10 % of both
    /// daemons' CPU), while the half window still in flight covers the path's bandwidth × RTT
    /// wherever the window itself does.
    fn return_credit(&mut self, id: u32, n: u32) {
        self.give_back_connection_credit(n);
        let open = self.streams.len();
        if let Some(st) = self.streams.get_mut(&id) {
            st.recv_unacked += n;
            if st.recv_unacked >= st.recv_window / 2 && !st.remote_done {
                let grown = grown_window(
                    st.recv_window,
                    self.cfg.stream_window,
                    self.cfg.connection_window,
                    open,
                    st.cap,
                );
                let inc = std::mem::take(&mut st.recv_unacked) + (grown - st.recv_window);
                st.recv_window = grown;
                st.recv_remaining += inc;
                frame::encode(&mut self.control, FrameType::Window, 0, id, &inc.to_be_bytes());
            }
        }
    }

    fn give_back_connection_credit(&mut self, n: u32) {
        self.conn_recv_unacked += n;
        if self.conn_recv_unacked >= self.cfg.connection_window / 4 {
            let inc = std::mem::take(&mut self.conn_recv_unacked);
            self.conn_recv_remaining += inc;
            frame::encode(&mut self.control, FrameType::Window, 0, 0, &inc.to_be_bytes());
        }
    }

    fn on_open(&mut self, f: Frame) -> Result<(), Error> {
        let theirs = match self.cfg.side {
            Side::Hub => f.stream & 1 == 1,
            Side::Edge => f.stream & 1 == 0,
        };
        if !theirs || f.stream <= self.last_remote_id {
            return Err(Error::Protocol(format!(
                "OPEN with invalid stream id {}",
                f.stream
            )));
        }
        self.last_remote_id = f.stream;
        let record = OpenRecord::decode(&f.payload).map_err(|e| Error::Protocol(e.to_string()))?;
        if self.going_away.load(Ordering::Acquire) || self.streams.len() as u32 >= self.cfg.max_streams {
            let why = if self.going_away.load(Ordering::Acquire) {
                "tunnel is draining"
            } else {
                "too many streams on this tunnel"
            };
            let p = frame::reset_payload(reset::REFUSED, why);
            frame::encode(&mut self.control, FrameType::Reset, 0, f.stream, &p);
            return Ok(());
        }
        let (tx, rx) = inbound::channel();
        let shared = StreamShared::new(flow::capped(self.cfg.stream_window, record.buffer));
        self.new_stream(f.stream, record.listen_port, record.buffer, tx, shared.clone());
        let ctx = StreamCtx::new(
            f.stream,
            rx,
            shared,
            self.cmd_tx.clone(),
            self.cfg.max_frame,
            self.budget.clone(),
        );
        self.handler.on_open(RemoteStream {
            record,
            io: StreamIo::Mux(ctx),
        });
        Ok(())
    }
}
