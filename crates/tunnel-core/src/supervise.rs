//! Containment: long-lived loops (listeners, the edge's connect loop) run under a supervisor
//! that restarts them if they panic and reports a `crashRecovered` event, so one bug costs one
//! tunnel or one listener a restart — never the process. Panics in per-stream tasks are
//! contained by tokio and turned into stream resets by the stream's guard (see `mux`).

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;

use crate::event;
use crate::events::EventSink;

/// Pause before restarting a crashed loop: enough that a panic on every iteration cannot spin
/// a core, short enough that a listener is back before clients notice.
const RESTART_DELAY: Duration = Duration::from_millis(100);

/// Aborts the task when dropped (a JoinHandle alone would detach it).
pub struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `make()` until it returns normally; restarts it after a panic.
pub async fn supervise<F, Fut>(events: EventSink, component: String, mut make: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let res = join(AbortOnDrop(tokio::spawn(make()))).await;
        match res {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                let what = panic_message(e.into_panic());
                events.as_ref()(event!("crashRecovered", {
                    "component": component, "error": what, "restarted": true
                }));
                tokio::time::sleep(RESTART_DELAY).await;
            }
            Err(_) => return,
        }
    }
}

async fn join<T>(mut t: AbortOnDrop<T>) -> Result<T, tokio::task::JoinError> {
    (&mut t.0).await
}

/// Best-effort text of a panic payload.
pub fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Places where a test can inject one panic, to prove containment end to end.
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum FaultPoint {
    HubListener = 1,
    Tunnel = 2,
    EdgeListener = 4,
    HubStream = 8,
}

static ARMED: AtomicU32 = AtomicU32::new(0);

/// Arms a one-shot panic at `point` (test hook exposed to Node as `injectPanicForTest`).
pub fn arm(point: FaultPoint) {
    ARMED.fetch_or(point as u32, Ordering::SeqCst);
}

/// Panics once if `point` is armed. One relaxed load on the hot path when nothing is armed.
#[inline]
pub fn check(point: FaultPoint) {
    if ARMED.load(Ordering::Relaxed) & point as u32 != 0
        && ARMED.fetch_and(!(point as u32), Ordering::SeqCst) & point as u32 != 0
    {
        panic!("injected panic at {point:?} (test hook)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn restarts_after_panic_and_reports() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink: EventSink = {
            let seen = seen.clone();
            Arc::new(move |v| seen.lock().unwrap().push(v))
        };
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        supervise(sink, "test loop".into(), move || {
            let n = r.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    panic!("boom");
                }
            }
        })
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        let ev = seen.lock().unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0]["kind"], "crashRecovered");
        assert_eq!(ev[0]["error"], "boom");
    }
}
