//! A tunnel's send budget: how many bytes its stream readers may hold, read from their sockets
//! but not yet handed to the transport (the muxer's per-stream queues, a QUIC stream's chunk
//! waiting for quinn).
//!
//! Stream credit alone does not bound that: credit is per stream, so a peer that opens many
//! streams (or a well-behaved one whose tunnel socket is slow) lets every reader fill its own
//! window, and a peer that grants credit and then stops reading leaves it all queued. With the
//! budget a reader reserves what it is about to read before it reads; when the budget is spent
//! the readers pause (their sockets' own buffers and TCP flow control hold the clients back)
//! until the transport takes bytes and gives the budget back.

use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Notify;

/// Bytes one tunnel's stream readers may hold at once. 4 MiB is 32 of the muxer's 128 KiB
/// write batches (≈3 ms of a 10 Gbit/s tunnel), so a tunnel whose socket drains at full speed
/// never waits on it, yet what a tunnel can be made to hold is bounded whatever the peer grants
/// and however many streams it opens.
pub const TUNNEL_SEND_BUDGET: usize = 4 * 1024 * 1024;

#[derive(Debug)]
pub struct SendBudget {
    limit: usize,
    held: AtomicUsize,
    /// Readers waiting for room: a release wakes them only when there are any, so the transport
    /// giving bytes back (once per frame) costs one atomic load, not a lock.
    waiting: AtomicUsize,
    /// Wakes paused readers when bytes are given back.
    freed: Notify,
}

impl Default for SendBudget {
    fn default() -> Self {
        SendBudget::new(TUNNEL_SEND_BUDGET)
    }
}

impl SendBudget {
    pub fn new(limit: usize) -> SendBudget {
        SendBudget {
            limit,
            held: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    /// Reserves `n` bytes (at most the limit), waiting until they fit.
    pub async fn reserve(&self, n: usize) {
        let n = n.min(self.limit);
        if self.try_reserve(n) {
            return;
        }
        // SeqCst with `release`: either this reader sees the bytes given back, or the release
        // sees this reader waiting (never neither).
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a release between the check and the wait wakes us.
            notified.as_mut().enable();
            if self.try_reserve(n) {
                return;
            }
            notified.await;
        }
    }

    /// Reserves `n` bytes if they fit now.
    pub fn try_reserve(&self, n: usize) -> bool {
        self.held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| {
                (h + n <= self.limit).then_some(h + n)
            })
            .is_ok()
    }

    /// Gives `n` reserved bytes back (they left for the transport, or were dropped).
    pub fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let _ = self
            .held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| Some(h.saturating_sub(n)));
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.freed.notify_waiters();
        }
    }

    /// Bytes reserved now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// Counts a reader as waiting for as long as it is (also when its wait is cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn readers_wait_while_the_budget_is_spent_and_go_on_when_it_is_given_back() {
        let b = Arc::new(SendBudget::new(100));
        b.reserve(60).await;
        assert!(!b.try_reserve(50));
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.reserve(50).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "50 more do not fit in 100 with 60 held");
        b.release(20);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("a release that makes room wakes the waiter")
            .unwrap();
        assert_eq!(b.held(), 90);
        // A reservation larger than the limit is clipped to it (and so can always be met).
        b.release(90);
        b.reserve(1000).await;
        assert_eq!(b.held(), 100);
        b.release(1000);
        assert_eq!(b.held(), 0);
    }
}
