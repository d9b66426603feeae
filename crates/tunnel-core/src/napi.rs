//! The N-API binding, written by hand against Node's C ABI (the `napi` crate is not available
//! here). It is deliberately thin: JSON strings in, JSON strings out, promises for async calls,
//! one thread-safe function per handle for events. The `napi_*` symbols are left undefined in
//! the shared object and resolved by Node when it loads the addon.
//!
//! Rules this module keeps:
//! - every `extern "C"` entry point runs inside `catch_unwind`: a Rust panic becomes a JS error
//!   with code `ERR_INTERNAL`, never an abort;
//! - async work runs on the tokio runtime in its own task, so a panic there is a `JoinError`
//!   that rejects the promise;
//! - a handle keeps Node's event loop alive only while it runs or has a call in flight (the
//!   thread-safe function is ref'd/unref'd on the JS thread accordingly).

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::config::{self, EdgeOptions, EdgeSpec, HubOptions};
use crate::engine::edge::Edge;
use crate::engine::hub::Hub;
use crate::error::Error;
use crate::events::EventSink;

// ---- the C ABI ---------------------------------------------------------------------------

type napi_env = *mut c_void;
type napi_value = *mut c_void;
type napi_callback_info = *mut c_void;
type napi_deferred = *mut c_void;
type napi_threadsafe_function = *mut c_void;
type napi_ref = *mut c_void;
type napi_status = i32;
type napi_callback = Option<unsafe extern "C" fn(napi_env, napi_callback_info) -> napi_value>;
type napi_finalize = Option<unsafe extern "C" fn(napi_env, *mut c_void, *mut c_void)>;
type napi_threadsafe_function_call_js =
    Option<unsafe extern "C" fn(napi_env, napi_value, *mut c_void, *mut c_void)>;

const NAPI_OK: napi_status = 0;
const NAPI_TSFN_NONBLOCKING: i32 = 0;
const NAPI_TSFN_RELEASE: i32 = 0;

extern "C" {
    fn napi_create_function(
        env: napi_env,
        name: *const c_char,
        len: usize,
        cb: napi_callback,
        data: *mut c_void,
        result: *mut napi_value,
    ) -> napi_status;
    fn napi_set_named_property(
        env: napi_env,
        obj: napi_value,
        name: *const c_char,
        v: napi_value,
    ) -> napi_status;
    fn napi_get_cb_info(
        env: napi_env,
        info: napi_callback_info,
        argc: *mut usize,
        argv: *mut napi_value,
        this: *mut napi_value,
        data: *mut *mut c_void,
    ) -> napi_status;
    fn napi_get_value_string_utf8(
        env: napi_env,
        v: napi_value,
        buf: *mut c_char,
        size: usize,
        len: *mut usize,
    ) -> napi_status;
    fn napi_create_string_utf8(
        env: napi_env,
        s: *const c_char,
        len: usize,
        result: *mut napi_value,
    ) -> napi_status;
    fn napi_get_value_double(env: napi_env, v: napi_value, result: *mut f64) -> napi_status;
    fn napi_get_undefined(env: napi_env, result: *mut napi_value) -> napi_status;
    fn napi_create_external(
        env: napi_env,
        data: *mut c_void,
        finalize: napi_finalize,
        hint: *mut c_void,
        result: *mut napi_value,
    ) -> napi_status;
    fn napi_get_value_external(env: napi_env, v: napi_value, result: *mut *mut c_void) -> napi_status;
    fn napi_typeof(env: napi_env, v: napi_value, result: *mut i32) -> napi_status;
    fn napi_create_promise(
        env: napi_env,
        deferred: *mut napi_deferred,
        promise: *mut napi_value,
    ) -> napi_status;
    fn napi_resolve_deferred(env: napi_env, d: napi_deferred, v: napi_value) -> napi_status;
    fn napi_reject_deferred(env: napi_env, d: napi_deferred, v: napi_value) -> napi_status;
    fn napi_create_error(
        env: napi_env,
        code: napi_value,
        msg: napi_value,
        result: *mut napi_value,
    ) -> napi_status;
    fn napi_throw(env: napi_env, error: napi_value) -> napi_status;
    fn napi_call_function(
        env: napi_env,
        recv: napi_value,
        func: napi_value,
        argc: usize,
        argv: *const napi_value,
        result: *mut napi_value,
    ) -> napi_status;
    fn napi_is_exception_pending(env: napi_env, result: *mut bool) -> napi_status;
    fn napi_get_and_clear_last_exception(env: napi_env, result: *mut napi_value) -> napi_status;
    fn napi_create_threadsafe_function(
        env: napi_env,
        func: napi_value,
        async_resource: napi_value,
        async_resource_name: napi_value,
        max_queue_size: usize,
        initial_thread_count: usize,
        thread_finalize_data: *mut c_void,
        thread_finalize_cb: napi_finalize,
        context: *mut c_void,
        call_js_cb: napi_threadsafe_function_call_js,
        result: *mut napi_threadsafe_function,
    ) -> napi_status;
    fn napi_call_threadsafe_function(
        f: napi_threadsafe_function,
        data: *mut c_void,
        blocking: i32,
    ) -> napi_status;
    fn napi_release_threadsafe_function(f: napi_threadsafe_function, mode: i32) -> napi_status;
    fn napi_ref_threadsafe_function(env: napi_env, f: napi_threadsafe_function) -> napi_status;
    fn napi_create_reference(
        env: napi_env,
        v: napi_value,
        initial: u32,
        result: *mut napi_ref,
    ) -> napi_status;
    fn napi_reference_ref(env: napi_env, r: napi_ref, result: *mut u32) -> napi_status;
    fn napi_reference_unref(env: napi_env, r: napi_ref, result: *mut u32) -> napi_status;
    fn napi_delete_reference(env: napi_env, r: napi_ref) -> napi_status;
    fn napi_unref_threadsafe_function(env: napi_env, f: napi_threadsafe_function) -> napi_status;
}

const NAPI_FUNCTION: i32 = 7;
const NAPI_EXTERNAL: i32 = 8;

// ---- small safe wrappers -----------------------------------------------------------------

/// An error on its way to JavaScript: `Error` with a `code` property.
struct JsError {
    code: String,
    message: String,
}

impl From<Error> for JsError {
    fn from(e: Error) -> Self {
        JsError {
            code: e.code().to_string(),
            message: e.to_string(),
        }
    }
}

fn js_err(code: &str, message: impl Into<String>) -> JsError {
    JsError {
        code: code.to_string(),
        message: message.into(),
    }
}

unsafe fn string(env: napi_env, s: &str) -> napi_value {
    let mut v = ptr::null_mut();
    napi_create_string_utf8(env, s.as_ptr() as *const c_char, s.len(), &mut v);
    v
}

unsafe fn undefined(env: napi_env) -> napi_value {
    let mut v = ptr::null_mut();
    napi_get_undefined(env, &mut v);
    v
}

unsafe fn error_value(env: napi_env, e: &JsError) -> napi_value {
    let mut v = ptr::null_mut();
    napi_create_error(env, string(env, &e.code), string(env, &e.message), &mut v);
    v
}

unsafe fn throw(env: napi_env, e: &JsError) -> napi_value {
    napi_throw(env, error_value(env, e));
    ptr::null_mut()
}

unsafe fn args<const N: usize>(env: napi_env, info: napi_callback_info) -> [napi_value; N] {
    let mut argv = [ptr::null_mut(); N];
    let mut argc = N;
    napi_get_cb_info(
        env,
        info,
        &mut argc,
        argv.as_mut_ptr(),
        ptr::null_mut(),
        ptr::null_mut(),
    );
    argv
}

unsafe fn arg_string(env: napi_env, v: napi_value, what: &str) -> Result<String, JsError> {
    let mut len = 0usize;
    if napi_get_value_string_utf8(env, v, ptr::null_mut(), 0, &mut len) != NAPI_OK {
        return Err(js_err("ERR_INVALID_ARG", format!("{what}: expected a string")));
    }
    let mut buf = vec![0u8; len + 1];
    napi_get_value_string_utf8(env, v, buf.as_mut_ptr() as *mut c_char, len + 1, &mut len);
    buf.truncate(len);
    String::from_utf8(buf).map_err(|_| js_err("ERR_INVALID_ARG", format!("{what}: not UTF-8")))
}

unsafe fn arg_number(env: napi_env, v: napi_value, what: &str) -> Result<f64, JsError> {
    let mut d = 0f64;
    if napi_get_value_double(env, v, &mut d) != NAPI_OK || !d.is_finite() {
        return Err(js_err(
            "ERR_INVALID_ARG",
            format!("{what}: expected a finite number"),
        ));
    }
    Ok(d)
}

unsafe fn arg_handle<'a>(env: napi_env, v: napi_value) -> Result<&'a Handle, JsError> {
    let mut t = 0i32;
    napi_typeof(env, v, &mut t);
    if t != NAPI_EXTERNAL {
        return Err(js_err("ERR_INVALID_ARG", "handle: expected a native handle"));
    }
    let mut p: *mut c_void = ptr::null_mut();
    napi_get_value_external(env, v, &mut p);
    if p.is_null() {
        return Err(js_err("ERR_INVALID_ARG", "handle: null"));
    }
    // The External owns one share of the Arc<Handle> until its finalizer runs, which cannot
    // happen while JS still passes the value to us.
    Ok(&*(p as *const Handle))
}

/// Runs an entry point body, turning errors into thrown JS errors and panics into
/// `ERR_INTERNAL` — never unwinding into Node.
unsafe fn guard(env: napi_env, f: impl FnOnce() -> Result<napi_value, JsError>) -> napi_value {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => throw(env, &e),
        Err(p) => {
            let what = crate::supervise::panic_message(p);
            throw(
                env,
                &js_err("ERR_INTERNAL", format!("internal error (panic caught): {what}")),
            )
        }
    }
}

// ---- handles, events and promises ----------------------------------------------------------

/// Pointer wrapper for N-API values that are only ever touched on the JS thread but must be
/// carried through a queue from a worker thread.
struct SendPtr(*mut c_void);
// SAFETY: the wrapped pointers (deferreds, the tsfn) are only dereferenced by N-API on the JS
// thread, or passed to napi_call_threadsafe_function, which is thread-safe by contract.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Most events queued for JS before new ones are dropped (and counted). A stalled JS thread
/// must not let a busy tunnel grow memory without bound.
const MAX_PENDING_EVENTS: usize = 65_536;
/// Records per JS callback call: bounds the work one callback does, keeping the event loop
/// responsive when thousands of streams open at once.
const EVENT_BATCH: usize = 256;

enum Msg {
    Flush,
    Settle {
        deferred: SendPtr,
        result: Result<Option<String>, JsError>,
        /// Change to the keep-alive count once settled (running hub: start keeps +1).
        ref_delta: i64,
    },
}

struct Queue {
    pending: std::collections::VecDeque<Value>,
    scheduled: bool,
    dropped: u64,
}

/// `Shared::stream_events` levels: no per-stream records, only `streamClosed` of failed
/// streams, or every `streamOpened`/`streamClosed`.
const STREAM_EVENTS_NONE: u8 = 0;
const STREAM_EVENTS_FAILURES: u8 = 1;
const STREAM_EVENTS_ALL: u8 = 2;

struct Shared {
    tsfn: SendPtr,
    /// Set when the tsfn is finalized (env teardown) or released: no more calls.
    closed: AtomicBool,
    queue: Mutex<Queue>,
    /// Which `streamOpened`/`streamClosed` records are delivered (`STREAM_EVENTS_*`). The JS
    /// classes set it from their listeners: at thousands of connections per second, records
    /// nobody reads cost a daemon CPU and (parsed into the JS heap) ~10 MiB of RSS it never
    /// returns.
    stream_events: AtomicU8,
}

impl Shared {
    fn post(&self, msg: Msg) -> bool {
        // Holding the queue lock orders this against `close()`.
        let _q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        let data = Box::into_raw(Box::new(msg)) as *mut c_void;
        // SAFETY: the tsfn is alive (not closed) and the call is thread-safe.
        let st = unsafe { napi_call_threadsafe_function(self.tsfn.0, data, NAPI_TSFN_NONBLOCKING) };
        if st != NAPI_OK {
            // SAFETY: N-API did not take ownership; reclaim the box.
            drop(unsafe { Box::from_raw(data as *mut Msg) });
            return false;
        }
        true
    }

    fn push_event(&self, v: Value) {
        let wanted = match v.get("kind").and_then(Value::as_str) {
            Some("streamOpened") => self.stream_events.load(Ordering::Relaxed) == STREAM_EVENTS_ALL,
            Some("streamClosed") => match self.stream_events.load(Ordering::Relaxed) {
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
        let schedule = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.pending.len() >= MAX_PENDING_EVENTS {
                q.dropped += 1;
            } else {
                q.pending.push_back(v);
            }
            !std::mem::replace(&mut q.scheduled, true)
        };
        if schedule {
            self.post(Msg::Flush);
        }
    }
}

enum Engine {
    None,
    Hub(Hub),
    Edge(Edge),
}

/// One per `createHub`/`createEdge`. Shared (an `Arc`) by the JS External and the thread-safe
/// function, each of which drops its share in its own finalizer — so a queued event or promise
/// settlement can never reach a freed handle, whatever order Node finalizes them in.
struct Handle {
    shared: Arc<Shared>,
    engine: Arc<Mutex<Engine>>,
    /// Keep-alive count (running + calls in flight), touched only on the JS thread.
    refs: AtomicI64,
    busy: AtomicBool,
    /// A reference to the handle's own JS object: weak while idle, strong while `refs > 0`, so
    /// a running hub or edge is neither collected nor lets Node exit, even if the program
    /// dropped every reference to it.
    self_ref: SendPtr,
}

impl Handle {
    fn sink(&self) -> EventSink {
        let shared = self.shared.clone();
        Arc::new(move |v| shared.push_event(v))
    }

    unsafe fn adjust_refs(&self, env: napi_env, delta: i64) {
        if delta == 0 || self.shared.closed.load(Ordering::Acquire) {
            return;
        }
        let before = self.refs.fetch_add(delta, Ordering::AcqRel);
        let after = before + delta;
        let mut count = 0u32;
        if before <= 0 && after > 0 {
            napi_ref_threadsafe_function(env, self.shared.tsfn.0);
            napi_reference_ref(env, self.self_ref.0, &mut count);
        } else if before > 0 && after <= 0 {
            napi_unref_threadsafe_function(env, self.shared.tsfn.0);
            napi_reference_unref(env, self.self_ref.0, &mut count);
        }
    }
}

unsafe extern "C" fn call_js(env: napi_env, func: napi_value, ctx: *mut c_void, data: *mut c_void) {
    if data.is_null() {
        return;
    }
    let msg = *Box::from_raw(data as *mut Msg);
    if env.is_null() {
        return; // Node is tearing down; drop the message.
    }
    let handle = &*(ctx as *const Handle);
    let _ = catch_unwind(AssertUnwindSafe(|| match msg {
        Msg::Flush => deliver_events(env, func, handle),
        Msg::Settle {
            deferred,
            result,
            ref_delta,
        } => {
            match result {
                Ok(v) => {
                    let value = match v {
                        Some(s) => string(env, &s),
                        None => undefined(env),
                    };
                    napi_resolve_deferred(env, deferred.0, value);
                }
                Err(e) => {
                    napi_reject_deferred(env, deferred.0, error_value(env, &e));
                }
            }
            handle.adjust_refs(env, ref_delta);
        }
    }));
}

unsafe fn deliver_events(env: napi_env, func: napi_value, handle: &Handle) {
    loop {
        let (batch, dropped) = {
            let mut q = handle.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            let n = q.pending.len().min(EVENT_BATCH);
            let batch: Vec<Value> = q.pending.drain(..n).collect();
            let dropped = std::mem::take(&mut q.dropped);
            if batch.is_empty() && dropped == 0 {
                q.scheduled = false;
                return;
            }
            (batch, dropped)
        };
        let mut batch = batch;
        if dropped > 0 {
            batch.push(serde_json::json!({ "kind": "eventsDropped", "count": dropped }));
        }
        let json = Value::Array(batch).to_string();
        let arg = string(env, &json);
        let mut result = ptr::null_mut();
        napi_call_function(env, undefined(env), func, 1, &arg, &mut result);
        let mut pending = false;
        napi_is_exception_pending(env, &mut pending);
        if pending {
            // The JS layer catches its own listener errors; anything that still escapes must
            // not poison later calls into N-API.
            let mut e = ptr::null_mut();
            napi_get_and_clear_last_exception(env, &mut e);
        }
    }
}

/// The tsfn is gone (released and drained, or env teardown): no more posts; drop its share.
unsafe extern "C" fn tsfn_finalized(_env: napi_env, data: *mut c_void, _hint: *mut c_void) {
    let handle = Arc::from_raw(data as *const Handle);
    let _q = handle.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
    handle.shared.closed.store(true, Ordering::Release);
}

/// The JS object was collected. Only possible while idle (a running handle holds a strong
/// reference to itself), so release the tsfn and drop the External's share.
unsafe extern "C" fn handle_finalized(env: napi_env, data: *mut c_void, _hint: *mut c_void) {
    let handle = Arc::from_raw(data as *const Handle);
    {
        let _q = handle.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        if !handle.shared.closed.swap(true, Ordering::AcqRel) {
            napi_release_threadsafe_function(handle.shared.tsfn.0, NAPI_TSFN_RELEASE);
        }
    }
    if !env.is_null() && !handle.self_ref.0.is_null() {
        napi_delete_reference(env, handle.self_ref.0);
    }
}

unsafe fn create_handle(env: napi_env, info: napi_callback_info) -> Result<napi_value, JsError> {
    let [cb] = args::<1>(env, info);
    let mut t = 0i32;
    napi_typeof(env, cb, &mut t);
    if t != NAPI_FUNCTION {
        return Err(js_err("ERR_INVALID_ARG", "onEvents: expected a function"));
    }
    let shared = Arc::new(Shared {
        tsfn: SendPtr(ptr::null_mut()),
        closed: AtomicBool::new(false),
        stream_events: AtomicU8::new(STREAM_EVENTS_ALL),
        queue: Mutex::new(Queue {
            pending: Default::default(),
            scheduled: false,
            dropped: 0,
        }),
    });
    let mut tsfn = ptr::null_mut();
    let name = string(env, "remoteingress-events");
    // The tsfn's context is a pointer to the handle, which does not exist yet: create the
    // handle first with the tsfn slot filled in afterwards, before anything can post.
    let handle = Handle {
        shared: shared.clone(),
        engine: Arc::new(Mutex::new(Engine::None)),
        refs: AtomicI64::new(0),
        busy: AtomicBool::new(false),
        self_ref: SendPtr(ptr::null_mut()),
    };
    let handle = Arc::new(handle);
    let for_tsfn = Arc::into_raw(handle.clone()) as *mut c_void;
    let st = napi_create_threadsafe_function(
        env,
        cb,
        ptr::null_mut(),
        name,
        0,
        1,
        for_tsfn,
        Some(tsfn_finalized),
        for_tsfn,
        Some(call_js),
        &mut tsfn,
    );
    if st != NAPI_OK {
        drop(Arc::from_raw(for_tsfn as *const Handle));
        return Err(js_err(
            "ERR_INTERNAL",
            format!("napi_create_threadsafe_function failed ({st})"),
        ));
    }
    // SAFETY: no other thread has seen `shared` or the handle yet; these slots are written
    // exactly once, here, before any post or call_js can read them.
    (*(Arc::as_ptr(&shared) as *mut Shared)).tsfn = SendPtr(tsfn);
    // Idle handles must not keep Node alive.
    napi_unref_threadsafe_function(env, tsfn);
    let for_external = Arc::into_raw(handle.clone()) as *mut c_void;
    let mut external = ptr::null_mut();
    napi_create_external(
        env,
        for_external,
        Some(handle_finalized),
        ptr::null_mut(),
        &mut external,
    );
    let mut self_ref = ptr::null_mut();
    napi_create_reference(env, external, 0, &mut self_ref);
    (*(Arc::as_ptr(&handle) as *mut Handle)).self_ref = SendPtr(self_ref);
    Ok(external)
}

/// Starts `work` on the runtime and returns a promise settled with its result. The handle is
/// kept alive (ref'd) while the work runs; `on_ok_delta` is the keep-alive change after success.
unsafe fn spawn_promise<F>(
    env: napi_env,
    handle: &Handle,
    workers: usize,
    on_ok_delta: i64,
    work: F,
) -> napi_value
where
    F: std::future::Future<Output = Result<Option<String>, JsError>> + Send + 'static,
{
    let mut deferred = ptr::null_mut();
    let mut promise = ptr::null_mut();
    napi_create_promise(env, &mut deferred, &mut promise);
    handle.adjust_refs(env, 1);
    let shared = handle.shared.clone();
    let deferred = SendPtr(deferred);
    crate::runtime::get(workers).spawn(async move {
        let result = match tokio::spawn(work).await {
            Ok(r) => r,
            Err(e) => Err(js_err(
                "ERR_INTERNAL",
                format!("internal error (task failed): {e}"),
            )),
        };
        let ref_delta = if result.is_ok() { on_ok_delta - 1 } else { -1 };
        shared.post(Msg::Settle {
            deferred,
            result,
            ref_delta,
        });
    });
    promise
}

// ---- exported functions --------------------------------------------------------------------

unsafe extern "C" fn js_version(env: napi_env, _info: napi_callback_info) -> napi_value {
    guard(env, || Ok(string(env, crate::version())))
}

unsafe extern "C" fn js_create(env: napi_env, info: napi_callback_info) -> napi_value {
    guard(env, || create_handle(env, info))
}

/// Marks the handle busy for a start call; a second start (or start after stop) is refused.
fn claim(handle: &Handle) -> Result<(), JsError> {
    if handle.busy.swap(true, Ordering::AcqRel) {
        return Err(js_err("ERR_STATE", "already started (a handle starts once)"));
    }
    Ok(())
}

unsafe extern "C" fn js_hub_start(env: napi_env, info: napi_callback_info) -> napi_value {
    guard(env, || {
        let [h, o] = args::<2>(env, info);
        let handle = arg_handle(env, h)?;
        let json = arg_string(env, o, "options")?;
        let opts: HubOptions = config::parse("hub options", &json)?;
        opts.performance.validate()?;
        claim(handle)?;
        let sink = handle.sink();
        let engine = handle.engine.clone();
        let workers = opts.performance.worker_threads;
        Ok(spawn_promise(env, handle, workers, 1, async move {
            let hub = Hub::start(opts, sink).await?;
            let out = serde_json::json!({ "tunnelPort": hub.port(), "fingerprint": hub.fingerprint() });
            *engine.lock().unwrap_or_else(|p| p.into_inner()) = Engine::Hub(hub);
            Ok(Some(out.to_string()))
        }))
    })
}

fn hub_of(handle: &Handle) -> Result<Hub, JsError> {
    match &*handle.engine.lock().unwrap_or_else(|p| p.into_inner()) {
        Engine::Hub(h) => Ok(h.clone()),
        _ => Err(js_err(
            "ERR_STATE",
            "the hub is not running (await start() first)",
        )),
    }
}

fn edge_of(handle: &Handle) -> Result<Edge, JsError> {
    match &*handle.engine.lock().unwrap_or_else(|p| p.into_inner()) {
        Engine::Edge(e) => Ok(e.clone()),
        _ => Err(js_err(
            "ERR_STATE",
            "the edge is not running (await start() first)",
        )),
    }
}

unsafe extern "C" fn js_hub_set_edges(env: napi_env, info: napi_callback_info) -> napi_value {
    guard(env, || {
        let [h, e] = args::<2>(env, info);
        let handle = arg_handle(env, h)?;
        let json = arg_string(env, e, "edges")?;
        let edges: Vec<EdgeSpec> = config::parse("allowed edges", &json)?;
        let hub = hub_of(handle)?;
        Ok(spawn_promise(env, handle, 0, 0, async move {
            let generation = hub.set_edges(edges)?;
            Ok(Some(serde_json::json!({ "generation": generation }).to_string()))
        }))
    })
}

unsafe extern "C" fn js_hub_status(env: napi_env, info: napi_callback_info) -> napi_value {
    guard(env, || {
        let [h] = args::<1>(env, info);
        let handle = arg_handle(env, h)?;
        let status = match hub_of(handle) {
            Ok(hub) => hub.status(),
            Err(_) => serde_json::json!({ "running": false, "edges": [] }),
        };
        Ok(string(env, &status.to_string()))
    })
}

unsafe extern "C" fn js_hub_stop(env: napi_env, info: napi_callback_info) -> napi_value {
    guard(env, || {
        let [h, g] = args::<2>(env, info);
        let handle = arg_handle(env, h)?;
        let grace = Duration::from_millis(arg_number(env, g, "graceMs")?.max(0.0) as u64);
        let engine = std::mem::replace(
            &mut *handle.engine.lock().unwrap_or_else(|p| p.into_inner()),
            Engine::None,
        );
        let was_running = matches!(engine, Engine::Hub(_));
        Ok(spawn_promise(
            env,
            handle,
            0,
            if was_running { -1 } else { 0 },
            async move {
                if let Engine::Hub(hub) = engine {
                    hub.stop(grace).await;
                }
                Ok(None)
            },
        ))
    })
}

unsafe extern "C" fn js_edge_start(env: napi_env, info: napi_callback_info) -> napi_value {
    guard(env, || {
        let [h, o] = args::<2>(env, info);
        let handle = arg_handle(env, h)?;
        let json = arg_string(env, o, "options")?;
        let opts: EdgeOptions = config::parse("edge options", &json)?;
        claim(handle)?;
        let sink = handle.sink();
        let engine = handle.engine.clone();
        let workers = opts.performance.worker_threads;
        Ok(spawn_promise(env, handle, workers, 1, async move {
            let edge = Edge::start(opts, sink)?;
            *engine.lock().unwrap_or_else(|p| p.into_inner()) = Engine::Edge(edge);
            Ok(None)
        }))
    })
}

unsafe extern "C" fn js_edge_status(env: napi_env, info: napi_callback_info) -> napi_value {
    guard(env, || {
        let [h] = args::<1>(env, info);
        let handle = arg_handle(env, h)?;
        let status = match edge_of(handle) {
            Ok(edge) => edge.status(),
            Err(_) => serde_json::json!({ "state": "stopped" }),
        };
        Ok(string(env, &status.to_string()))
    })
}

unsafe extern "C" fn js_edge_stop(env: napi_env, info: napi_callback_info) -> napi_value {
    guard(env, || {
        let [h, g] = args::<2>(env, info);
        let handle = arg_handle(env, h)?;
        let grace = Duration::from_millis(arg_number(env, g, "graceMs")?.max(0.0) as u64);
        let engine = std::mem::replace(
            &mut *handle.engine.lock().unwrap_or_else(|p| p.into_inner()),
            Engine::None,
        );
        let was_running = matches!(engine, Engine::Edge(_));
        Ok(spawn_promise(
            env,
            handle,
            0,
            if was_running { -1 } else { 0 },
            async move {
                if let Engine::Edge(edge) = engine {
                    edge.stop(grace).await;
                }
                Ok(None)
            },
        ))
    })
}

/// Test hook: arms a one-shot panic inside the addon (`hubListener`, `tunnel`, `edgeListener`,
/// `hubStream`) so the test suite can prove containment. Harmless in production: nothing arms
/// it but an explicit call.
unsafe extern "C" fn js_set_stream_events(env: napi_env, info: napi_callback_info) -> napi_value {
    guard(env, || {
        let [h, l] = args::<2>(env, info);
        let handle = arg_handle(env, h)?;
        let level = match arg_string(env, l, "level")?.as_str() {
            "all" => STREAM_EVENTS_ALL,
            "failures" => STREAM_EVENTS_FAILURES,
            "none" => STREAM_EVENTS_NONE,
            other => {
                return Err(js_err(
                    "ERR_INVALID_ARG",
                    format!("level: expected \"all\", \"failures\" or \"none\", got {other:?}"),
                ))
            }
        };
        handle.shared.stream_events.store(level, Ordering::Relaxed);
        Ok(undefined(env))
    })
}

unsafe extern "C" fn js_inject_panic(env: napi_env, info: napi_callback_info) -> napi_value {
    guard(env, || {
        let [w] = args::<1>(env, info);
        let what = arg_string(env, w, "component")?;
        use crate::supervise::{arm, FaultPoint};
        let point = match what.as_str() {
            "hubListener" => FaultPoint::HubListener,
            "tunnel" => FaultPoint::Tunnel,
            "edgeListener" => FaultPoint::EdgeListener,
            "hubStream" => FaultPoint::HubStream,
            other => {
                return Err(js_err(
                    "ERR_INVALID_ARG",
                    format!("component: unknown fault point {other:?}"),
                ))
            }
        };
        arm(point);
        Ok(undefined(env))
    })
}

unsafe fn export(
    env: napi_env,
    exports: napi_value,
    name: &str,
    f: unsafe extern "C" fn(napi_env, napi_callback_info) -> napi_value,
) {
    let mut v = ptr::null_mut();
    napi_create_function(
        env,
        name.as_ptr() as *const c_char,
        name.len(),
        Some(f),
        ptr::null_mut(),
        &mut v,
    );
    // Names are static ASCII without NULs.
    let cname = CString::new(name).expect("export names contain no NUL");
    napi_set_named_property(env, exports, cname.as_ptr(), v);
}

/// Node's entry point for the addon.
///
/// # Safety
/// Called by Node with a valid env and exports object.
#[no_mangle]
pub unsafe extern "C" fn napi_register_module_v1(env: napi_env, exports: napi_value) -> napi_value {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        export(env, exports, "version", js_version);
        export(env, exports, "createHub", js_create);
        export(env, exports, "hubStart", js_hub_start);
        export(env, exports, "hubSetEdges", js_hub_set_edges);
        export(env, exports, "hubStatus", js_hub_status);
        export(env, exports, "hubStop", js_hub_stop);
        export(env, exports, "createEdge", js_create);
        export(env, exports, "edgeStart", js_edge_start);
        export(env, exports, "edgeStatus", js_edge_status);
        export(env, exports, "edgeStop", js_edge_stop);
        export(env, exports, "setStreamEvents", js_set_stream_events);
        export(env, exports, "injectPanicForTest", js_inject_panic);
    }));
    exports
}
