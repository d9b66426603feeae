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
        let rt = b.build().expect("cannot start the tokio runtime");
        rt.spawn(return_freed_memory());
        rt
    })
}

/// How often freed heap memory is handed back to the OS. glibc trims the main heap on free(),
/// but never the per-thread arenas the runtime's workers allocate from, so after a burst of
/// 10,000 connections a daemon would keep their peak RSS forever. Once every 10 s costs a
/// few hundred microseconds.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

async fn return_freed_memory() {
    let mut tick = tokio::time::interval(TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // malloc_trim is a glibc extension; elsewhere freed memory is the allocator's business.
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only walks the allocator's own free lists.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
