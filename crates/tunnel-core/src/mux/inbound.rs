//! One stream's inbound queue: the mux task pushes what the peer sent, the stream's writer
//! pops it.
//!
//! Why not `tokio::sync::mpsc`: its channel allocates its first block of 32 slots when it is
//! created, 1.3 KiB with our 40-byte [`Inbound`], and every open stream has one on each side
//! of the tunnel — a quarter of what an idle connection cost the hub and the edge together
//! (heaptrack, 10,000 idle connections; bench/changes.md). This queue starts empty and
//! allocates only when something waits in it, which on an idle stream is never. It is a single
//! producer, single consumer queue of a mutex-guarded `VecDeque` (never contended for long:
//! each side holds it for one push or one pop) and a `Notify`, whose stored permit means a
//! push that happens between the consumer's check and its wait is never missed.

use super::Inbound;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// A drained queue keeps a buffer of up to this many items (160 bytes), so a stream that moves
/// one item at a time does not allocate per item; longer buffers, left by bursts, are freed.
const KEEP_ITEMS: usize = 4;

struct Queue {
    items: Mutex<VecDeque<Inbound>>,
    /// Wakes the consumer: something was pushed, or the producer went away.
    notify: Notify,
    /// The producer was dropped: once `items` is empty, `recv` returns `None`.
    producer_gone: AtomicBool,
    /// The consumer was dropped: `send` fails, as a send on a closed channel does.
    consumer_gone: AtomicBool,
}

impl Queue {
    fn items(&self) -> MutexGuard<'_, VecDeque<Inbound>> {
        // The lock is held only around a push or a pop, which cannot panic halfway.
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The mux's end.
pub struct InboundTx(Arc<Queue>);

/// The stream's end.
#[derive(Debug)]
pub struct InboundRx(Arc<Queue>);

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").finish_non_exhaustive()
    }
}

pub fn channel() -> (InboundTx, InboundRx) {
    let q = Arc::new(Queue {
        items: Mutex::new(VecDeque::new()),
        notify: Notify::new(),
        producer_gone: AtomicBool::new(false),
        consumer_gone: AtomicBool::new(false),
    });
    (InboundTx(q.clone()), InboundRx(q))
}

impl InboundTx {
    /// Queues `m`; gives it back when the consumer is gone (nobody will ever take it).
    pub fn send(&self, m: Inbound) -> Result<(), Inbound> {
        {
            let mut items = self.0.items();
            // Checked under the lock the consumer's drop takes too, so an item is either
            // refused or queued before that drop frees the queue, never left behind in it.
            if self.0.consumer_gone.load(Ordering::Acquire) {
                return Err(m);
            }
            items.push_back(m);
        }
        self.0.notify.notify_one();
        Ok(())
    }
}

impl Drop for InboundTx {
    fn drop(&mut self) {
        self.0.producer_gone.store(true, Ordering::Release);
        self.0.notify.notify_one();
    }
}

impl InboundRx {
    /// The next item, or `None` once the producer is gone and everything it sent was taken.
    pub async fn recv(&mut self) -> Option<Inbound> {
        loop {
            // Read the flag before looking at the queue: an item pushed before the producer
            // went away is then always seen by the pop below.
            let gone = self.0.producer_gone.load(Ordering::Acquire);
            let next = {
                let mut items = self.0.items();
                let next = items.pop_front();
                if items.is_empty() && items.capacity() > KEEP_ITEMS {
                    // A burst's long buffer is not kept by a stream that went quiet.
                    *items = VecDeque::new();
                }
                next
            };
            if next.is_some() {
                return next;
            }
            if gone {
                return None;
            }
            self.0.notify.notified().await;
        }
    }
}

impl Drop for InboundRx {
    fn drop(&mut self) {
        // What is queued will never be written: free it now, not when the mux lets go.
        let left = {
            let mut items = self.0.items();
            self.0.consumer_gone.store(true, Ordering::Release);
            std::mem::take(&mut *items)
        };
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    fn data(s: &'static str) -> Inbound {
        Inbound::Data(Bytes::from_static(s.as_bytes()))
    }

    fn text(m: Option<Inbound>) -> String {
        match m {
            Some(Inbound::Data(b)) => String::from_utf8(b.to_vec()).unwrap(),
            Some(Inbound::Fin) => "FIN".into(),
            Some(Inbound::Reset) => "RESET".into(),
            None => "END".into(),
        }
    }

    #[tokio::test]
    async fn items_arrive_in_order_and_the_end_after_the_last_one() {
        let (tx, mut rx) = channel();
        tx.send(data("a")).unwrap();
        tx.send(data("b")).unwrap();
        tx.send(Inbound::Fin).unwrap();
        drop(tx);
        assert_eq!(text(rx.recv().await), "a");
        assert_eq!(text(rx.recv().await), "b");
        assert_eq!(text(rx.recv().await), "FIN");
        assert_eq!(text(rx.recv().await), "END");
        assert_eq!(text(rx.recv().await), "END");
    }

    #[tokio::test]
    async fn a_waiting_consumer_wakes_for_a_push_and_for_the_producer_leaving() {
        let (tx, mut rx) = channel();
        let waiter = tokio::spawn(async move {
            let first = text(rx.recv().await);
            let second = text(rx.recv().await);
            (first, second)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send(data("x")).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(tx);
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, ("x".to_string(), "END".to_string()));
    }

    #[tokio::test]
    async fn a_send_after_the_consumer_left_is_refused_and_queued_items_are_freed() {
        let (tx, rx) = channel();
        let payload = Bytes::from(vec![7u8; 1024]);
        tx.send(Inbound::Data(payload.clone())).unwrap();
        assert!(!payload.is_unique());
        drop(rx);
        // The queued copy went with the consumer.
        assert!(payload.is_unique());
        assert!(matches!(tx.send(Inbound::Fin), Err(Inbound::Fin)));
    }

    /// Many pushes racing one consumer on another thread: nothing lost, nothing reordered,
    /// no wakeup missed (a missed one would hang the consumer until the timeout).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_racing_producer_loses_nothing() {
        const N: usize = 100_000;
        let (tx, mut rx) = channel();
        let consumer = tokio::spawn(async move {
            let mut next = 0usize;
            while let Some(m) = rx.recv().await {
                let Inbound::Data(b) = m else {
                    panic!("unexpected item")
                };
                assert_eq!(b.as_ref(), next.to_le_bytes());
                next += 1;
            }
            next
        });
        let producer = std::thread::spawn(move || {
            for i in 0..N {
                tx.send(Inbound::Data(Bytes::copy_from_slice(&i.to_le_bytes())))
                    .unwrap();
                if i % 1000 == 0 {
                    std::thread::yield_now();
                }
            }
        });
        let got = tokio::time::timeout(Duration::from_secs(30), consumer)
            .await
            .unwrap()
            .unwrap();
        producer.join().unwrap();
        assert_eq!(got, N);
    }

    /// A fresh queue holds no buffer, and a drained one keeps at most a short one.
    #[tokio::test]
    async fn a_drained_queue_keeps_no_long_buffer() {
        let (tx, mut rx) = channel();
        assert_eq!(rx.0.items().capacity(), 0);
        for _ in 0..100 {
            tx.send(data("z")).unwrap();
        }
        assert!(rx.0.items().capacity() >= 100);
        for _ in 0..100 {
            rx.recv().await.unwrap();
        }
        assert_eq!(rx.0.items().capacity(), 0);
        tx.send(data("z")).unwrap();
        rx.recv().await.unwrap();
        assert!(rx.0.items().capacity() <= KEEP_ITEMS);
    }
}
