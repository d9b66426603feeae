//! The Node binding: every `#[napi]` item of the addon, over the core's public API. It is
//! deliberately thin: JSON strings in, JSON strings out, promises for async calls, one
//! thread-safe function per handle for events. docs/native-api.md specifies the JavaScript
//! interface; `packages/core` is its only user.
//!
//! Rules this crate keeps:
//! - every entry point runs inside `catch_unwind` ([`guard`] around the body, so a panic there
//!   becomes a JS error with code `ERR_INTERNAL`; `#[napi(catch_unwind)]` around napi-rs' own
//!   argument and return conversion); so does every callback Node makes into us on its own
//!   (event delivery, promise settlement, the handle's finalizer): nothing unwinds into Node;
//! - async work runs on the core's tokio runtime in its own task, so a panic there is a
//!   `JoinError` that rejects the promise with `ERR_INTERNAL`;
//! - a handle keeps Node's event loop alive only while it runs or has a call in flight (its
//!   thread-safe function is ref'd/unref'd on the JS thread accordingly);
//! - a promise settles only after JavaScript has been handed every event queued before the work
//!   behind it finished, so `await hub.stop()` has seen the events the stop caused;
//! - thrown and rejected errors are JS `Error`s with a stable `code`: `Error::code()` of the core,
//!   or `ERR_INVALID_ARG`, `ERR_STATE`, `ERR_INTERNAL` from here.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use napi::bindgen_prelude::{Either, External, Function, PromiseRaw};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, JsDeferred, JsError, JsValue, Status};
use napi_derive::napi;
use serde_json::{json, Value};

use tunnel_core::config::{self, EdgeOptions, EdgeSpec, HubOptions};
use tunnel_core::engine::edge::Edge;
use tunnel_core::engine::hub::Hub;
use tunnel_core::error::Error;
use tunnel_core::events::EventSink;
use tunnel_core::supervise::{self, FaultPoint};

/// What an exported function returns: napi-rs throws the error as a JS `Error` whose `code` is
/// the string.
type Result<T> = napi::Result<T, &'static str>;

/// Most events queued for JS before new ones are dropped (and counted). A stalled JS thread
/// must not let a busy tunnel grow memory without bound.
const MAX_PENDING_EVENTS: usize = 65_536;
/// Records per JS callback call: bounds the work one callback does, keeping the event loop
/// responsive when thousands of streams open at once.
const EVENT_BATCH: usize = 256;

/// `Events::stream_events` levels: no per-stream records, only `streamClosed` of failed
/// streams, or every `streamOpened`/`streamClosed`.
const STREAM_EVENTS_NONE: u8 = 0;
const STREAM_EVENTS_FAILURES: u8 = 1;
const STREAM_EVENTS_ALL: u8 = 2;

// ---- exported functions --------------------------------------------------------------------

/// The core's crate version, e.g. "0.1.0".
#[napi(catch_unwind)]
pub fn version() -> Result<String> {
    guard(|| Ok(tunnel_core::version().to_string()))
}

/// An idle hub handle; `on_events` receives its event batches (JSON arrays).
#[napi(catch_unwind)]
pub fn create_hub(on_events: Function<String, ()>) -> Result<External<Handle>> {
    guard(|| Handle::create(on_events))
}

#[napi(catch_unwind, ts_return_type = "Promise<string>")]
pub fn hub_start<'env>(
    env: &'env Env,
    handle: &External<Handle>,
    options_json: String,
) -> Result<PromiseRaw<'env, Resolved>> {
    guard(|| {
        let opts: HubOptions = config::parse("hub options", &options_json)?;
        opts.performance.validate()?;
        let core = handle.claim()?;
        let sink = core.sink();
        let workers = opts.performance.worker_threads;
        spawn_promise(env, core.clone(), workers, 1, async move {
            let hub = Hub::start(opts, sink).await?;
            let out = json!({ "tunnelPort": hub.port(), "fingerprint": hub.fingerprint() });
            *lock(&core.engine) = Engine::Hub(hub);
            Ok(Some(out.to_string()))
        })
    })
}

#[napi(catch_unwind, ts_return_type = "Promise<string>")]
pub fn hub_set_edges<'env>(
    env: &'env Env,
    handle: &External<Handle>,
    edges_json: String,
) -> Result<PromiseRaw<'env, Resolved>> {
    guard(|| {
        let edges: Vec<EdgeSpec> = config::parse("allowed edges", &edges_json)?;
        let hub = handle.core.hub()?;
        spawn_promise(env, handle.core.clone(), 0, 0, async move {
            let generation = hub.set_edges(edges)?;
            Ok(Some(json!({ "generation": generation }).to_string()))
        })
    })
}

#[napi(catch_unwind)]
pub fn hub_status(handle: &External<Handle>) -> Result<String> {
    guard(|| {
        let status = match handle.core.hub() {
            Ok(hub) => hub.status(),
            Err(_) => json!({ "running": false, "edges": [] }),
        };
        Ok(status.to_string())
    })
}

#[napi(catch_unwind, ts_return_type = "Promise<void>")]
pub fn hub_stop<'env>(
    env: &'env Env,
    handle: &External<Handle>,
    grace_ms: f64,
) -> Result<PromiseRaw<'env, Resolved>> {
    guard(|| stop_engine(env, handle, grace_ms))
}

/// Stops whatever the handle runs (drain within `grace_ms`); resolves when it has stopped.
fn stop_engine<'env>(
    env: &'env Env,
    handle: &External<Handle>,
    grace_ms: f64,
) -> Outcome<PromiseRaw<'env, Resolved>> {
    let grace = grace_period(grace_ms)?;
    let engine = std::mem::replace(&mut *lock(&handle.core.engine), Engine::None);
    let delta = if matches!(engine, Engine::None) { 0 } else { -1 };
    spawn_promise(env, handle.core.clone(), 0, delta, async move {
        match engine {
            Engine::Hub(hub) => hub.stop(grace).await,
            Engine::Edge(edge) => edge.stop(grace).await,
            Engine::None => {}
        }
        Ok(None)
    })
}

/// An idle edge handle; `on_events` receives its event batches (JSON arrays).
#[napi(catch_unwind)]
pub fn create_edge(on_events: Function<String, ()>) -> Result<External<Handle>> {
    guard(|| Handle::create(on_events))
}

#[napi(catch_unwind, ts_return_type = "Promise<void>")]
pub fn edge_start<'env>(
    env: &'env Env,
    handle: &External<Handle>,
    options_json: String,
) -> Result<PromiseRaw<'env, Resolved>> {
    guard(|| {
        let opts: EdgeOptions = config::parse("edge options", &options_json)?;
        let core = handle.claim()?;
        let sink = core.sink();
        let workers = opts.performance.worker_threads;
        spawn_promise(env, core.clone(), workers, 1, async move {
            let edge = Edge::start(opts, sink)?;
            *lock(&core.engine) = Engine::Edge(edge);
            Ok(None)
        })
    })
}

#[napi(catch_unwind)]
pub fn edge_status(handle: &External<Handle>) -> Result<String> {
    guard(|| {
        let status = match handle.core.edge() {
            Ok(edge) => edge.status(),
            Err(_) => json!({ "state": "stopped" }),
        };
        Ok(status.to_string())
    })
}

#[napi(catch_unwind, ts_return_type = "Promise<void>")]
pub fn edge_stop<'env>(
    env: &'env Env,
    handle: &External<Handle>,
    grace_ms: f64,
) -> Result<PromiseRaw<'env, Resolved>> {
    guard(|| stop_engine(env, handle, grace_ms))
}

/// Which `streamOpened`/`streamClosed` records the handle delivers: "all" (the default),
/// "failures" (only `streamClosed` with a code) or "none".
#[napi(catch_unwind)]
pub fn set_stream_events(handle: &External<Handle>, level: String) -> Result<()> {
    guard(|| {
        let level = match level.as_str() {
            "all" => STREAM_EVENTS_ALL,
            "failures" => STREAM_EVENTS_FAILURES,
            "none" => STREAM_EVENTS_NONE,
            other => {
                return Err(Failure::invalid_arg(format!(
                    "level: expected \"all\", \"failures\" or \"none\", got {other:?}"
                )))
            }
        };
        handle.core.events.stream_events.store(level, Ordering::Relaxed);
        Ok(())
    })
}

/// Tells the service manager (systemd's `NOTIFY_SOCKET`) about a state change: `"READY"`,
/// `"STOPPING"`, `"WATCHDOG"`, or `"STATUS=<text>"`. Returns whether a manager listens (false
/// without `NOTIFY_SOCKET`, which is not an error: the daemon may run anywhere).
#[napi(catch_unwind)]
pub fn sd_notify(state: String) -> Result<bool> {
    guard(|| {
        let notify = match state.as_str() {
            "READY" => sd_notify::NotifyState::Ready,
            "STOPPING" => sd_notify::NotifyState::Stopping,
            "WATCHDOG" => sd_notify::NotifyState::Watchdog,
            other => match other.strip_prefix("STATUS=") {
                Some(text) if !text.contains('\n') => sd_notify::NotifyState::Status(text),
                _ => {
                    return Err(Failure::invalid_arg(format!(
                        "state: expected READY, STOPPING, WATCHDOG or STATUS=<one line>, got {other:?}"
                    )))
                }
            },
        };
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return Ok(false);
        }
        sd_notify::notify(&[notify])
            .map_err(|e| Failure::new("ERR_IO", format!("sd_notify {state}: {e}")))?;
        Ok(true)
    })
}

/// The watchdog interval systemd asks for (`WATCHDOG_USEC`, for this process), in
/// milliseconds; `null` without one.
#[napi(catch_unwind)]
pub fn sd_watchdog_ms() -> Result<Option<f64>> {
    guard(|| Ok(sd_notify::watchdog_enabled().map(|d| d.as_secs_f64() * 1000.0)))
}

/// Test hook: arms a one-shot panic inside the addon (`hubListener`, `tunnel`, `edgeListener`,
/// `hubStream`) so the test suite can prove containment. Harmless in production: nothing arms
/// it but an explicit call.
#[napi(catch_unwind)]
pub fn inject_panic_for_test(component: String) -> Result<()> {
    guard(|| {
        let point = match component.as_str() {
            "hubListener" => FaultPoint::HubListener,
            "tunnel" => FaultPoint::Tunnel,
            "edgeListener" => FaultPoint::EdgeListener,
            "hubStream" => FaultPoint::HubStream,
            other => {
                return Err(Failure::invalid_arg(format!(
                    "component: unknown fault point {other:?}"
                )))
            }
        };
        supervise::arm(point);
        Ok(())
    })
}

// ---- handles -------------------------------------------------------------------------------

/// One per `createHub`/`createEdge`, owned by the JS External. The state lives in a [`Core`]
/// shared (an `Arc`) with the thread-safe function, the engine's event sink and every call in
/// flight, so a queued event or promise settlement can never reach freed memory, whatever order
/// Node finalizes things in.
pub struct Handle {
    core: Arc<Core>,
}

impl Handle {
    fn create(on_events: Function<String, ()>) -> Outcome<External<Handle>> {
        let core = Arc::new(Core {
            events: Events {
                tsfn: Mutex::new(None),
                queue: Mutex::new(EventQueue::new()),
                stream_events: AtomicU8::new(STREAM_EVENTS_ALL),
            },
            engine: Mutex::new(Engine::None),
            started: AtomicBool::new(false),
            keep_alive: Mutex::new(KeepAlive {
                refs: 0,
                orphaned: false,
            }),
        });
        let for_js = core.clone();
        let tsfn = on_events
            .build_threadsafe_function::<Flush>()
            // `onEvents(batchJson)`, not Node's error-first `(err, batchJson)`.
            .callee_handled::<false>()
            // Created unref'd: an idle handle must not keep Node alive.
            .weak::<true>()
            .build_callback(move |_| Ok(for_js.deliver()))
            .map_err(|e| Failure::internal(format!("cannot create the event callback: {e}")))?;
        // The core is still private to this thread: nothing could post before the tsfn is in.
        *lock(&core.events.tsfn) = Some(tsfn);
        Ok(External::new(Handle { core }))
    }

    /// Marks the handle as started; a second start (or start after stop) is refused.
    fn claim(&self) -> Outcome<Arc<Core>> {
        if self.core.started.swap(true, Ordering::AcqRel) {
            return Err(Failure::new(
                "ERR_STATE",
                "already started (a handle starts once)",
            ));
        }
        Ok(self.core.clone())
    }
}

impl Drop for Handle {
    /// JS collected the handle's object (Node runs this finalizer on the JS thread). An idle
    /// handle releases its thread-safe function now; a busy one (running, or a call in flight)
    /// carries on and releases it when its last call settles, as the program can no longer stop
    /// it.
    fn drop(&mut self) {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            let mut keep = lock(&self.core.keep_alive);
            if keep.refs > 0 {
                keep.orphaned = true;
            } else {
                self.core.close();
            }
        }));
    }
}

/// A handle's state, shared by its External, its thread-safe function, its engine's event sink
/// and its calls in flight.
struct Core {
    events: Events,
    engine: Mutex<Engine>,
    started: AtomicBool,
    /// Touched only on the JS thread.
    keep_alive: Mutex<KeepAlive>,
}

enum Engine {
    None,
    Hub(Hub),
    Edge(Edge),
}

/// What keeps Node alive on a handle's behalf.
struct KeepAlive {
    /// Running (1) plus calls in flight; the thread-safe function is ref'd while this is > 0.
    refs: i64,
    /// JS collected the handle while `refs > 0`: close once it drops to 0.
    orphaned: bool,
}

impl Core {
    fn sink(self: &Arc<Self>) -> EventSink {
        let core = self.clone();
        Arc::new(move |v| core.push_event(v))
    }

    fn hub(&self) -> Outcome<Hub> {
        match &*lock(&self.engine) {
            Engine::Hub(h) => Ok(h.clone()),
            _ => Err(Failure::new(
                "ERR_STATE",
                "the hub is not running (await start() first)",
            )),
        }
    }

    fn edge(&self) -> Outcome<Edge> {
        match &*lock(&self.engine) {
            Engine::Edge(e) => Ok(e.clone()),
            _ => Err(Failure::new(
                "ERR_STATE",
                "the edge is not running (await start() first)",
            )),
        }
    }

    /// Changes the keep-alive count by `delta`, ref'ing or unref'ing the thread-safe function
    /// when it crosses zero. JS thread only (N-API's ref/unref must run there).
    fn adjust_refs(&self, env: &Env, delta: i64) {
        if delta == 0 {
            return;
        }
        let mut keep = lock(&self.keep_alive);
        let before = keep.refs;
        keep.refs += delta;
        if before <= 0 && keep.refs > 0 {
            self.events.keep_node_alive(env, true);
        } else if before > 0 && keep.refs <= 0 {
            self.events.keep_node_alive(env, false);
            if keep.orphaned {
                self.close();
            }
        }
    }

    /// Releases the thread-safe function. Events already posted are still delivered; nothing
    /// new is posted, and settlements waiting in the queue run at once.
    fn close(&self) {
        drop(lock(&self.events.tsfn).take());
        let settles = lock(&self.events.queue).close();
        for s in settles {
            s.run();
        }
    }

    /// Called by the engine for every event, on any thread. Must not block.
    fn push_event(&self, v: Value) {
        let wanted = match v.get("kind").and_then(Value::as_str) {
            Some("streamOpened") => self.events.stream_events.load(Ordering::Relaxed) == STREAM_EVENTS_ALL,
            Some("streamClosed") => match self.events.stream_events.load(Ordering::Relaxed) {
                STREAM_EVENTS_ALL => true,
                // A failed stream carries a reset code; a clean close has `code: null`.
                STREAM_EVENTS_FAILURES => v.get("code").is_some_and(|c| !c.is_null()),
                _ => false,
            },
            _ => true,
        };
        if !wanted {
            return;
        }
        let schedule = lock(&self.events.queue).push_event(v);
        if schedule {
            self.post_flush();
        }
    }

    /// Settles a call's promise once JS has been handed the events queued before it.
    fn settle(&self, s: Settlement) {
        let now = lock(&self.events.queue).push_settle(s);
        if let Some(s) = now {
            s.run();
        }
    }

    fn post_flush(&self) {
        if !self.events.post() {
            // The thread-safe function is gone (released, or Node is tearing down): nothing
            // more reaches JS, so whatever waits in the queue for a flush must not wait.
            self.close();
        }
    }

    /// The thread-safe function's callback, on the JS thread: takes the next batch and returns
    /// it as the argument `onEvents` is called with.
    fn deliver(&self) -> String {
        let batch = catch_unwind(AssertUnwindSafe(|| {
            let batch = lock(&self.events.queue).next_batch();
            for s in batch.settles {
                // Queues the settlement on the promise's own thread-safe function, which Node
                // runs after this callback and its `onEvents` call have returned.
                s.run();
            }
            if batch.more {
                self.post_flush();
            }
            batch.records
        }));
        match batch {
            Ok(records) => Value::Array(records).to_string(),
            // The callback must return something to call `onEvents` with (an error here would
            // reach Node as an uncaught exception): report the panic as a record.
            Err(p) => json!([{
                "kind": "log",
                "level": "error",
                "message": format!("internal error (panic caught) while delivering events: {}",
                    supervise::panic_message(p)),
            }])
            .to_string(),
        }
    }
}

// ---- events --------------------------------------------------------------------------------

/// The thread-safe function behind `onEvents`: posted a [`Flush`], it calls `onEvents` with the
/// JSON string its callback returns. Not error-first (`callee_handled::<false>`), created
/// unref'd (`weak::<true>`), unbounded queue (one flush is outstanding at a time).
type EventsFn = ThreadsafeFunction<Flush, (), String, Status, false, true>;

/// A request to hand JavaScript the next batch of queued events. The batch is taken when the
/// request runs on the JS thread, so events queued meanwhile ride along.
struct Flush;

struct Events {
    /// `None` once released (see [`Core::close`]).
    tsfn: Mutex<Option<EventsFn>>,
    queue: Mutex<EventQueue<Settlement>>,
    /// Which `streamOpened`/`streamClosed` records are delivered (`STREAM_EVENTS_*`). The JS
    /// classes set it from their listeners: at thousands of connections per second, records
    /// nobody reads cost a daemon CPU and (parsed into the JS heap) ~10 MiB of RSS it never
    /// returns.
    stream_events: AtomicU8,
}

impl Events {
    /// Posts a [`Flush`]; false when the thread-safe function is gone.
    fn post(&self) -> bool {
        let tsfn = lock(&self.tsfn);
        let Some(tsfn) = tsfn.as_ref() else {
            return false;
        };
        // With a return-value callback, napi-rs hands an exception thrown by `onEvents` to the
        // callback instead of raising it as uncaught. The JS layer catches its own listener
        // errors; anything that still escapes must not take the process down, so it is dropped.
        let status =
            tsfn.call_with_return_value(Flush, ThreadsafeFunctionCallMode::NonBlocking, |_, _| Ok(()));
        status == Status::Ok
    }

    /// Refs (`true`) or unrefs the thread-safe function. JS thread only.
    fn keep_node_alive(&self, env: &Env, alive: bool) {
        let mut tsfn = lock(&self.tsfn);
        let Some(tsfn) = tsfn.as_mut() else {
            return;
        };
        // napi-rs deprecates `refer`/`unref` in favour of dropping the function, which has no
        // equivalent for "keep the loop alive only while running". They are N-API's own
        // ref/unref, skipped once Node has finalized the function; their only error is a
        // finalized function, where there is nothing left to keep alive.
        #[allow(deprecated)]
        let _ = if alive { tsfn.refer(env) } else { tsfn.unref(env) };
    }
}

/// Events on their way to JS, and the promise settlements that must wait for them. Generic over
/// the settlement so the ordering rules are tested without Node.
struct EventQueue<S> {
    pending: VecDeque<Pending<S>>,
    /// `Pending::Event`s in `pending` (settlements do not count against the cap).
    events: usize,
    /// Events dropped at the cap since the last batch.
    dropped: u64,
    /// A flush is posted (or running) that will reach everything in `pending`. When false,
    /// `pending` is empty: JS has been handed everything.
    scheduled: bool,
    /// The thread-safe function is gone: no flush will be posted again.
    closed: bool,
}

enum Pending<S> {
    Event(Value),
    Settle(S),
}

/// What one flush hands over: records for one `onEvents` call, the settlements they were
/// queued ahead of, and whether more is left (a new flush must be posted).
struct Batch<S> {
    records: Vec<Value>,
    settles: Vec<S>,
    more: bool,
}

impl<S> EventQueue<S> {
    fn new() -> Self {
        EventQueue {
            pending: VecDeque::new(),
            events: 0,
            dropped: 0,
            scheduled: false,
            closed: false,
        }
    }

    /// Queues an event (or counts it as dropped at the cap). True when the caller must post a
    /// flush.
    fn push_event(&mut self, v: Value) -> bool {
        if self.closed {
            return false;
        }
        if self.events >= MAX_PENDING_EVENTS {
            self.dropped += 1;
        } else {
            self.pending.push_back(Pending::Event(v));
            self.events += 1;
        }
        !std::mem::replace(&mut self.scheduled, true)
    }

    /// Queues a settlement behind the events JS has not been handed yet, or gives it back to
    /// run now when there are none.
    fn push_settle(&mut self, s: S) -> Option<S> {
        if self.closed || !self.scheduled {
            return Some(s);
        }
        self.pending.push_back(Pending::Settle(s));
        None
    }

    /// Takes up to `EVENT_BATCH` events (plus an `eventsDropped` record) and every settlement
    /// queued before the first event left behind.
    fn next_batch(&mut self) -> Batch<S> {
        let mut records = Vec::new();
        let mut settles = Vec::new();
        loop {
            match self.pending.front() {
                None => break,
                Some(Pending::Event(_)) if records.len() == EVENT_BATCH => break,
                Some(_) => {}
            }
            match self.pending.pop_front() {
                Some(Pending::Event(v)) => {
                    self.events -= 1;
                    records.push(v);
                }
                Some(Pending::Settle(s)) => settles.push(s),
                None => break,
            }
        }
        let dropped = std::mem::take(&mut self.dropped);
        if dropped > 0 {
            records.push(json!({ "kind": "eventsDropped", "count": dropped }));
        }
        // What is left starts with an event: the next flush has something to deliver.
        let more = !self.pending.is_empty() && !self.closed;
        self.scheduled = more;
        Batch {
            records,
            settles,
            more,
        }
    }

    /// No flush will come again: hands back the settlements (events stay for flushes that are
    /// already posted).
    fn close(&mut self) -> Vec<S> {
        self.closed = true;
        let mut settles = Vec::new();
        let mut kept = VecDeque::with_capacity(self.pending.len());
        for p in self.pending.drain(..) {
            match p {
                Pending::Settle(s) => settles.push(s),
                event => kept.push_back(event),
            }
        }
        self.pending = kept;
        settles
    }
}

// ---- promises ------------------------------------------------------------------------------

/// What a promise resolves with: a JSON string, or `undefined`.
pub type Resolved = Either<String, ()>;
type Resolver = Box<dyn FnOnce(Env) -> napi::Result<Resolved> + Send>;

/// A finished call on its way to its promise.
struct Settlement {
    core: Arc<Core>,
    deferred: JsDeferred<Resolved, Resolver>,
    result: Outcome<Option<String>>,
    /// Change to the keep-alive count once settled (the call's own +1 undone, plus +1 for a
    /// successful start or -1 for a stop of a running engine).
    ref_delta: i64,
}

impl Settlement {
    /// Hands the result to the promise's own thread-safe function; the promise settles (and the
    /// keep-alive count changes) on the JS thread.
    fn run(self) {
        let Settlement {
            core,
            deferred,
            result,
            ref_delta,
        } = self;
        deferred.resolve(Box::new(move |env| {
            // This runs inside an `extern "C"` callback: nothing may unwind out of it.
            let result = catch_unwind(AssertUnwindSafe(|| {
                core.adjust_refs(&env, ref_delta);
                result
            }))
            .unwrap_or_else(|p| Err(Failure::panicked(p)));
            match result {
                Ok(Some(json)) => Ok(Either::A(json)),
                Ok(None) => Ok(Either::B(())),
                // napi-rs rejects with an error's retained JS value as it is: build the `Error`
                // with its `code` here, on the JS thread, and retain it.
                Err(f) => Err(napi::Error::from(
                    JsError::from(napi::Error::from(f)).into_unknown(env),
                )),
            }
        }));
    }
}

/// Starts `work` on the core's runtime and returns a promise settled with its result. The
/// handle keeps Node alive while the work runs; `on_ok_delta` is the keep-alive change after
/// success (+1: now running, -1: no longer running).
fn spawn_promise<'env, F>(
    env: &'env Env,
    core: Arc<Core>,
    workers: usize,
    on_ok_delta: i64,
    work: F,
) -> Outcome<PromiseRaw<'env, Resolved>>
where
    F: Future<Output = Outcome<Option<String>>> + Send + 'static,
{
    // First: if the runtime cannot start (it panics), no promise is left unsettled and no
    // keep-alive count raised.
    let runtime = tunnel_core::runtime::get(workers);
    let (deferred, promise) = env
        .create_deferred::<Resolved, Resolver>()
        .map_err(|e| Failure::internal(format!("cannot create a promise: {e}")))?;
    core.adjust_refs(env, 1);
    // Its own task: a panic in `work` ends that task with a `JoinError`, not the settling one.
    let task = runtime.spawn(work);
    runtime.spawn(async move {
        let result = task
            .await
            .unwrap_or_else(|e| Err(Failure::internal(format!("internal error (task failed): {e}"))));
        let ref_delta = if result.is_ok() { on_ok_delta - 1 } else { -1 };
        core.clone().settle(Settlement {
            core,
            deferred,
            result,
            ref_delta,
        });
    });
    Ok(PromiseRaw::new(env.raw(), promise.raw()))
}

// ---- errors --------------------------------------------------------------------------------

/// A failure on its way to JavaScript: an `Error` with `code` and `message`.
struct Failure {
    code: &'static str,
    message: String,
}

type Outcome<T> = std::result::Result<T, Failure>;

impl Failure {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    fn invalid_arg(message: String) -> Self {
        Failure::new("ERR_INVALID_ARG", message)
    }

    fn internal(message: String) -> Self {
        Failure::new("ERR_INTERNAL", message)
    }

    fn panicked(payload: Box<dyn std::any::Any + Send>) -> Self {
        let what = supervise::panic_message(payload);
        Failure::internal(format!("internal error (panic caught): {what}"))
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::new(e.code(), e.to_string())
    }
}

impl From<Failure> for napi::Error<&'static str> {
    fn from(f: Failure) -> Self {
        napi::Error::new(f.code, f.message)
    }
}

/// Runs an entry point's body: its failure is thrown as is, a panic as `ERR_INTERNAL` — never
/// unwinding into Node.
fn guard<T>(body: impl FnOnce() -> Outcome<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result.map_err(Into::into),
        Err(p) => Err(Failure::panicked(p).into()),
    }
}

/// `graceMs` as a duration (negative means none).
fn grace_period(grace_ms: f64) -> Outcome<Duration> {
    if !grace_ms.is_finite() {
        return Err(Failure::invalid_arg("graceMs: expected a finite number".into()));
    }
    Ok(Duration::from_millis(grace_ms.max(0.0) as u64))
}

/// Locks `m`, also after a panic poisoned it: every critical section here leaves its data
/// consistent, and a poisoned lock must not turn one caught panic into many.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> Value {
        json!({ "kind": "log", "n": n })
    }

    fn numbers(records: &[Value]) -> Vec<u64> {
        records.iter().filter_map(|r| r["n"].as_u64()).collect()
    }

    #[test]
    fn the_first_event_schedules_one_flush() {
        let mut q = EventQueue::<u32>::new();
        assert!(q.push_event(event(0)));
        assert!(!q.push_event(event(1)));
        let b = q.next_batch();
        assert_eq!(numbers(&b.records), [0, 1]);
        assert!(!b.more);
        // Delivered everything: the next event schedules again.
        assert!(q.push_event(event(2)));
    }

    #[test]
    fn batches_hold_at_most_event_batch_records() {
        let mut q = EventQueue::<u32>::new();
        for n in 0..EVENT_BATCH + 10 {
            q.push_event(event(n));
        }
        let first = q.next_batch();
        assert_eq!(first.records.len(), EVENT_BATCH);
        assert!(first.more);
        let second = q.next_batch();
        assert_eq!(
            numbers(&second.records),
            (EVENT_BATCH as u64..EVENT_BATCH as u64 + 10).collect::<Vec<_>>()
        );
        assert!(!second.more);
    }

    #[test]
    fn events_past_the_cap_are_counted_and_reported() {
        let mut q = EventQueue::<u32>::new();
        for n in 0..MAX_PENDING_EVENTS + 3 {
            q.push_event(event(n));
        }
        let first = q.next_batch();
        assert_eq!(first.records.len(), EVENT_BATCH + 1);
        assert_eq!(
            first.records[EVENT_BATCH],
            json!({ "kind": "eventsDropped", "count": 3 })
        );
        let mut delivered = EVENT_BATCH;
        while q.scheduled {
            delivered += q.next_batch().records.len();
        }
        assert_eq!(delivered, MAX_PENDING_EVENTS);
    }

    #[test]
    fn a_settlement_with_nothing_queued_runs_at_once() {
        let mut q = EventQueue::new();
        assert_eq!(q.push_settle(7), Some(7));
        q.push_event(event(0));
        q.next_batch();
        assert_eq!(q.push_settle(8), Some(8));
    }

    #[test]
    fn a_settlement_waits_for_the_events_queued_before_it() {
        let mut q = EventQueue::new();
        for n in 0..EVENT_BATCH + 1 {
            q.push_event(event(n));
        }
        assert_eq!(q.push_settle(1), None);
        q.push_event(event(EVENT_BATCH + 1));
        let first = q.next_batch();
        assert_eq!(first.records.len(), EVENT_BATCH);
        assert!(first.settles.is_empty());
        let second = q.next_batch();
        // Handed over with the batch that holds the last event before it (JS sees that batch
        // first; the promise settles on a later turn), together with the event after it.
        assert_eq!(second.settles, [1]);
        assert_eq!(
            numbers(&second.records),
            [EVENT_BATCH as u64, EVENT_BATCH as u64 + 1]
        );
        assert!(!second.more);
    }

    #[test]
    fn closing_hands_back_settlements_and_keeps_posted_events() {
        let mut q = EventQueue::new();
        q.push_event(event(0));
        q.push_settle(1);
        assert_eq!(q.close(), [1]);
        assert_eq!(q.push_settle(2), Some(2));
        assert!(!q.push_event(event(1)));
        let b = q.next_batch();
        assert_eq!(numbers(&b.records), [0]);
        assert!(!b.more);
    }
}
