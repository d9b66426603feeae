//! Containment: long-lived loops (listeners, the edge's connect loop) run under a supervisor
//! that restarts them if they panic and reports a `crashRecovered` event, so one bug costs one
//! tunnel or one listener a restart — never the process. Panics in per-stream tasks are
//! contained by tokio and turned into stream resets by the stream's guard (see `mux`).
//!
//! Tasks that a dependency spawns for itself are different: quinn runs its endpoint and
//! connection drivers as tasks of their own, holding the endpoint's state behind locks. A panic
//! there (quinn-proto 0.9 had two that one datagram could trigger) leaves a QUIC endpoint that
//! silently stops, or poisoned locks that fail later. No supervisor of ours can restart that
//! state, so [`DependencyTask`] turns such a panic into [`fatal`]: the cause on stderr and exit
//! status [`FATAL_EXIT_CODE`], so the service manager restarts a whole, healthy daemon instead
//! of leaving it half-dead.

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

/// Exit status after a panic inside a dependency's own task: EX_SOFTWARE ("internal software
/// error") from sysexits.h, distinct from the daemons' 1 (runtime failure) and 2 (bad
/// configuration), and non-zero so `Restart=on-failure` restarts the daemon.
pub const FATAL_EXIT_CODE: i32 = 70;

/// Ends the process after a failure nothing in it can recover from: one line on stderr naming
/// the cause, then `_exit` — no destructors or atexit handlers, which could block on the very
/// state that broke.
pub fn fatal(what: &str) -> ! {
    use std::io::Write;
    let line = format!(
        "remoteingress: fatal: {what}; exiting with status {FATAL_EXIT_CODE} so the service manager restarts the daemon\n"
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
    // SAFETY: _exit only ends the process; it touches no Rust state.
    unsafe { libc::_exit(FATAL_EXIT_CODE) }
}

/// A call into a dependency made from one of our tasks that runs the dependency's own state
/// machine under its lock: quinn's `Incoming::accept` parses the first Initial's frames under the
/// endpoint lock in the caller's task. A panic there would poison that lock for quinn's driver,
/// so it is [`fatal`] at once with its cause, like a panic in [`DependencyTask`], instead of
/// unwinding into our supervisor (which would restart the loop on a broken endpoint).
pub fn dependency_call<T>(owner: &'static str, what: &str, f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(payload) => fatal(&format!(
            "{owner} panicked in {what} ({})",
            panic_message(payload)
        )),
    }
}

/// A dependency's task, polled under `catch_unwind`: a panic in it is [`fatal`], naming `owner`
/// (e.g. "quinn") and the panic's text.
pub struct DependencyTask<F> {
    owner: &'static str,
    future: std::pin::Pin<Box<F>>,
}

impl<F: Future<Output = ()>> DependencyTask<F> {
    pub fn new(owner: &'static str, future: F) -> Self {
        DependencyTask {
            owner,
            future: Box::pin(future),
        }
    }
}

impl<F: Future<Output = ()>> Future for DependencyTask<F> {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let owner = self.owner;
        let future = self.future.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.poll(cx))) {
            Ok(p) => p,
            Err(payload) => fatal(&format!(
                "a task of {owner} panicked ({})",
                panic_message(payload)
            )),
        }
    }
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

    /// Set in the child process of the test below.
    const CHILD_ENV: &str = "TUNNEL_CORE_TEST_DEPENDENCY_PANIC_CHILD";

    /// A panic in a dependency's task ends the process with the fatal status and names the
    /// cause, instead of leaving a half-dead runtime. Runs in a child process (this test
    /// binary again, this test only), since the process exits.
    #[test]
    fn a_panic_in_a_dependency_task_exits_with_the_cause() {
        if std::env::var_os(CHILD_ENV).is_some() {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                tokio::spawn(DependencyTask::new("quinn", async {
                    tokio::task::yield_now().await;
                    panic!("driver state corrupted");
                }));
                tokio::time::sleep(Duration::from_secs(10)).await;
            });
            unreachable!("the dependency task's panic must have ended the process");
        }
        let stderr = exit_of_child("a_panic_in_a_dependency_task_exits_with_the_cause");
        assert!(
            stderr.contains("remoteingress: fatal: a task of quinn panicked (driver state corrupted)"),
            "stderr: {stderr}"
        );
    }

    /// Runs test `name` of this binary in a child process (CHILD_ENV set), checks that it ended
    /// with the fatal status, and returns its stderr.
    fn exit_of_child(name: &str) -> String {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &format!("supervise::tests::{name}"), "--nocapture"])
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(FATAL_EXIT_CODE), "stderr: {stderr}");
        stderr
    }

    /// The same for a panic inside a call into a dependency made from our task (quinn's
    /// `Incoming::accept`), and a call that returns passes its value through.
    #[test]
    fn a_panic_in_a_dependency_call_exits_with_the_cause() {
        if std::env::var_os(CHILD_ENV).is_some() {
            let v: u32 = dependency_call("quinn", "Incoming::accept", || 7);
            assert_eq!(v, 7, "a call that returns passes its value through");
            dependency_call("quinn", "Incoming::accept", || -> () {
                panic!("frame type cut short")
            });
            unreachable!("the dependency call's panic must have ended the process");
        }
        let stderr = exit_of_child("a_panic_in_a_dependency_call_exits_with_the_cause");
        assert!(
            stderr
                .contains("remoteingress: fatal: quinn panicked in Incoming::accept (frame type cut short)"),
            "stderr: {stderr}"
        );
    }

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
