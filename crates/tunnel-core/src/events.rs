//! Events leave the core as kind-tagged JSON records through a sink the host provides (the
//! N-API layer batches them into one thread-safe call; tests collect them).

use serde_json::Value;
use std::sync::Arc;

/// Where events go. Must not block: it is called on the data path's tasks.
pub type EventSink = Arc<dyn Fn(Value) + Send + Sync>;

/// A sink that discards everything.
pub fn null_sink() -> EventSink {
    Arc::new(|_| {})
}

/// Builds `{"kind": kind, ...fields}`.
#[macro_export]
macro_rules! event {
    ($kind:expr, { $($k:literal : $v:expr),* $(,)? }) => {{
        let mut m = serde_json::Map::new();
        m.insert("kind".to_string(), serde_json::Value::from($kind));
        $( m.insert($k.to_string(), serde_json::json!($v)); )*
        serde_json::Value::Object(m)
    }};
}

/// Emits a log record.
pub fn log(sink: &EventSink, level: &str, message: impl Into<String>) {
    let message: String = message.into();
    sink(event!("log", { "level": level, "message": message }));
}
