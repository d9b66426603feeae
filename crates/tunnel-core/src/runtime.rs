//! The process-wide tokio runtime that owns every socket. Created on first use; its worker
//! count comes from the first hub or edge's performance settings.

use std::sync::OnceLock;
use tokio::runtime::Runtime;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The runtime, created with `workers` threads (0 = one per core) if it does not exist yet.
pub fn get(workers: usize) -> &'static Runtime {
    RUNTIME.get_or_init(|| {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.enable_all().thread_name("remoteingress");
        if workers > 0 {
            b.worker_threads(workers);
        }
        // Building a runtime only fails if threads cannot be spawned at all, in which case
        // nothing in this process could work.
        b.build().expect("cannot start the tokio runtime")
    })
}
