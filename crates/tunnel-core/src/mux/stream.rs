//! One stream's endpoint ([`StreamCtx`]) and the tasks that pump its socket to and from the mux.

use super::*;

/// State shared between the mux task and one stream's reader.
#[derive(Debug)]
pub struct StreamShared {
    /// Bytes this stream may still send (peer's window). May go negative transiently never:
    /// only the reader spends it, only after checking it.
    pub(super) credit: AtomicI64,
    /// Wakes the reader when credit arrives or the stream is reset.
    pub(super) notify: Notify,
    reset: AtomicBool,
}

impl StreamShared {
    pub(super) fn new(credit: u32) -> Arc<StreamShared> {
        Arc::new(StreamShared {
            credit: AtomicI64::new(i64::from(credit)),
            notify: Notify::new(),
            reset: AtomicBool::new(false),
        })
    }

    pub(super) fn abort(&self) {
        self.reset.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}

/// One stream's endpoint: what a socket pump (or a test) uses to move bytes.
pub struct StreamCtx {
    pub id: u32,
    rx: inbound::InboundRx,
    shared: Arc<StreamShared>,
    cmd: mpsc::UnboundedSender<Cmd>,
    max_frame: usize,
    budget: Arc<SendBudget>,
    guard: ResetOnDrop,
}

/// Resets the stream if its owner goes away without ending it (a panicking task, a dropped
/// future), so the mux never keeps a stream nobody serves.
struct ResetOnDrop {
    id: u32,
    cmd: mpsc::UnboundedSender<Cmd>,
    armed: AtomicBool,
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if self.armed.load(Ordering::Relaxed) {
            let _ = self.cmd.send(Cmd::Reset {
                id: self.id,
                code: reset::IO,
                reason: "the stream's task ended abnormally".into(),
            });
        }
    }
}

impl StreamCtx {
    pub(super) fn new(
        id: u32,
        rx: inbound::InboundRx,
        shared: Arc<StreamShared>,
        cmd: mpsc::UnboundedSender<Cmd>,
        max_frame: usize,
        budget: Arc<SendBudget>,
    ) -> StreamCtx {
        let guard = ResetOnDrop {
            id,
            cmd: cmd.clone(),
            armed: AtomicBool::new(true),
        };
        StreamCtx {
            id,
            rx,
            shared,
            cmd,
            max_frame,
            budget,
            guard,
        }
    }
}

impl StreamCtx {
    /// Waits until this stream may send at least one byte; returns how many (≤ max frame), or
    /// `None` if the stream was reset.
    pub async fn credit(&self) -> Option<usize> {
        loop {
            if self.shared.reset.load(Ordering::Acquire) {
                return None;
            }
            let c = self.shared.credit.load(Ordering::Acquire);
            if c > 0 {
                return Some((c as usize).min(self.max_frame));
            }
            self.shared.notify.notified().await;
        }
    }

    /// Convenience for tests and small writes: waits for credit and room in the tunnel's
    /// send budget, and sends all of `data`.
    pub async fn send_all(&self, mut data: Bytes) -> bool {
        while !data.is_empty() {
            let Some(n) = self.credit().await else {
                return false;
            };
            let chunk = data.split_to(n.min(data.len()));
            self.budget.reserve(chunk.len()).await;
            self.shared.credit.fetch_sub(chunk.len() as i64, Ordering::AcqRel);
            let _ = self.cmd.send(Cmd::Data {
                id: self.id,
                bytes: chunk,
            });
        }
        true
    }

    /// Half-closes our sending direction. Dropping the endpoint afterwards is a proper close.
    pub fn fin(&self) {
        self.guard.armed.store(false, Ordering::Relaxed);
        let _ = self.cmd.send(Cmd::Fin { id: self.id });
    }

    /// Aborts the stream.
    pub fn reset(&self, code: u16, reason: impl Into<String>) {
        self.guard.armed.store(false, Ordering::Relaxed);
        let _ = self.cmd.send(Cmd::Reset {
            id: self.id,
            code,
            reason: reason.into(),
        });
    }

    /// Next thing the peer sent. `None` means the mux is gone (treat as reset).
    pub async fn recv(&mut self) -> Option<Inbound> {
        self.rx.recv().await
    }

    /// Returns receive credit after the bytes were delivered to their socket.
    pub fn consumed(&self, n: usize) {
        let _ = self.cmd.send(Cmd::Consumed {
            id: self.id,
            n: n as u32,
        });
    }

    /// Pumps bytes between a TCP socket and this stream until both directions are closed or
    /// the stream is reset. The reader half waits for readability before allocating a buffer,
    /// so an idle connection costs no user-space buffer at all.
    pub async fn run_tcp(self, sock: TcpStream) {
        let _ = sock.set_nodelay(true);
        let sock = Arc::new(sock);
        let StreamCtx {
            id,
            rx,
            shared,
            cmd,
            max_frame,
            budget,
            guard,
        } = self;
        // Let the mux write straight to this socket while the writer task is idle.
        let _ = cmd.send(Cmd::Attach {
            id,
            sock: sock.clone(),
        });
        let reader = tokio::spawn(pump_socket_to_mux(
            sock.clone(),
            id,
            shared.clone(),
            cmd.clone(),
            max_frame,
            budget,
        ));
        let abort = pump_mux_to_socket(&sock, rx, id, &shared, &cmd).await;
        if abort {
            // Make the reader let go of the socket promptly so the RST goes out now.
            shared.abort();
        }
        // A panicked reader leaves the guard armed: the stream is reset instead of leaking.
        if reader.await.is_ok() {
            guard.armed.store(false, Ordering::Relaxed);
        }
    }
}

pub(super) async fn pump_socket_to_mux(
    sock: Arc<TcpStream>,
    id: u32,
    shared: Arc<StreamShared>,
    cmd: mpsc::UnboundedSender<Cmd>,
    max_frame: usize,
    budget: Arc<SendBudget>,
) {
    // One read may take several frames' worth; `fill` cuts it into frames. Fewer, larger
    // reads mean fewer syscalls and channel messages per byte.
    let max_read = max_frame.max(SOCKET_READ);
    loop {
        if shared.reset.load(Ordering::Acquire) {
            return;
        }
        let credit = shared.credit.load(Ordering::Acquire);
        if credit <= 0 {
            shared.notify.notified().await;
            continue;
        }
        tokio::select! {
            ready = sock.readable() => {
                if let Err(e) = ready {
                    let _ = cmd.send(Cmd::Reset { id, code: reset::IO, reason: e.to_string() });
                    return;
                }
            }
            _ = shared.notify.notified() => continue,
        }
        // What this read may take is reserved from the tunnel's send budget first; the mux gives
        // it back as the bytes leave for the tunnel (or are dropped).
        let want = (credit as usize).min(max_read);
        if !budget.try_reserve(want) {
            tokio::select! {
                () = budget.reserve(want) => {}
                _ = shared.notify.notified() => continue,
            }
        }
        // Allocated only once the socket is readable: an idle connection holds no buffer.
        let mut buf = BytesMut::with_capacity(want);
        let res = read_marking_drained(&sock, &mut buf, want);
        budget.release(want - buf.len());
        match res {
            Ok(0) => {
                let _ = cmd.send(Cmd::Fin { id });
                return;
            }
            Ok(n) => {
                shared.credit.fetch_sub(n as i64, Ordering::AcqRel);
                if cmd
                    .send(Cmd::Data {
                        id,
                        bytes: buf.freeze(),
                    })
                    .is_err()
                {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                let _ = cmd.send(Cmd::Reset {
                    id,
                    code: reset::IO,
                    reason: e.to_string(),
                });
                return;
            }
        }
    }
}

/// Reads up to `want` bytes into `buf`'s spare capacity. A short read means the read emptied
/// the socket: it also clears tokio's readiness, as tokio's own `poll_read` does, so the next
/// wait is for a fresh epoll event instead of a `recv` that can only return EAGAIN — a syscall
/// that would run before the mux sends these bytes, on the latency path of every request and
/// response. The readiness cleared is the one seen before the read (inside `try_io`), so data
/// arriving after it still wakes the reader.
pub(crate) fn read_marking_drained(
    sock: &TcpStream,
    buf: &mut BytesMut,
    want: usize,
) -> std::io::Result<usize> {
    let mut short = None;
    let res = sock.try_io(Interest::READABLE, || {
        let chunk = buf.chunk_mut();
        let len = want.min(chunk.len());
        // SAFETY: `chunk` is `len` writable bytes of spare capacity; recv only writes to them.
        let spare =
            unsafe { std::slice::from_raw_parts_mut(chunk.as_mut_ptr().cast::<MaybeUninit<u8>>(), len) };
        let n = socket2::SockRef::from(sock).recv(spare)?;
        // SAFETY: recv initialised the first `n` bytes of the spare capacity.
        unsafe { buf.advance_mut(n) };
        if n > 0 && n < len {
            short = Some(n);
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match short {
        Some(n) => Ok(n),
        None => res,
    }
}

/// Writes all of `b` using readiness + `try_write` (the socket is shared with the reader and
/// the mux, so no `&mut` writer exists).
async fn write_all_shared(sock: &TcpStream, mut b: &[u8]) -> std::io::Result<()> {
    while !b.is_empty() {
        sock.writable().await?;
        match sock.try_write(b) {
            Ok(n) => b = &b[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Returns true when the socket must be aborted (RST) rather than closed.
pub(super) async fn pump_mux_to_socket(
    sock: &TcpStream,
    mut rx: inbound::InboundRx,
    id: u32,
    shared: &StreamShared,
    cmd: &mpsc::UnboundedSender<Cmd>,
) -> bool {
    loop {
        match rx.recv().await {
            Some(Inbound::Data(b)) => {
                if let Err(e) = write_all_shared(sock, &b).await {
                    let _ = cmd.send(Cmd::Reset {
                        id,
                        code: reset::IO,
                        reason: format!("write failed: {e}"),
                    });
                    abortive_close(sock);
                    return true;
                }
                let _ = cmd.send(Cmd::Consumed {
                    id,
                    n: b.len() as u32,
                });
            }
            Some(Inbound::Fin) => {
                let _ = socket2::SockRef::from(sock).shutdown(std::net::Shutdown::Write);
                // Stay until the stream ends so a later RESET can still abort the socket.
                while let Some(m) = rx.recv().await {
                    if matches!(m, Inbound::Reset) {
                        abortive_close(sock);
                        return true;
                    }
                }
                return shared.reset.load(Ordering::Acquire);
            }
            Some(Inbound::Reset) | None => {
                abortive_close(sock);
                return true;
            }
        }
    }
}

/// SO_LINGER 0: the close that follows sends RST, which is what the client must see when the
/// other side failed (a clean FIN would look like a complete, truncated reply).
pub(crate) fn abortive_close(s: &TcpStream) {
    // Linger 0 never blocks (the close discards what is unsent), which is why tokio deprecates
    // `set_linger` in general and why it is fine here.
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}
