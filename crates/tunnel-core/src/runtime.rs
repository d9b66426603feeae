//! The process-wide tokio runtime that owns every socket. Created on first use; its worker
//! count comes from the first hub or edge's performance settings.

use std::sync::OnceLock;
use tokio::runtime::Runtime;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// Machines with at most this many cores get one worker by default (`workers` = 0).
///
/// A tunnel's work is one task (its muxer) plus light per-connection tasks. On one or two cores
/// a second worker mostly adds cross-thread wakeups and work stealing (futex calls, IPIs,
/// contended socket locks) while the kernel's network processing already runs on the other
/// core: measured on a 2-core VM, one worker moved 8 tunnelled streams ~20 % faster and kept
/// ping-pong latency steadier. With more cores, tunnels and connections run in parallel.
pub const SINGLE_WORKER_UP_TO_CORES: usize = 2;

/// Worker threads for a `workers` setting: as given, or for 0 one per core (one on machines
/// with up to `SINGLE_WORKER_UP_TO_CORES` cores).
pub fn worker_count(workers: usize) -> usize {
    if workers > 0 {
        return workers;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores <= SINGLE_WORKER_UP_TO_CORES {
        1
    } else {
        cores
    }
}

/// The runtime, created with `worker_count(workers)` threads if it does not exist yet.
pub fn get(workers: usize) -> &'static Runtime {
    RUNTIME.get_or_init(|| {
        keep_freed_memory_between_trims();
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.enable_all()
            .thread_name("remoteingress")
            .worker_threads(worker_count(workers));
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

/// Free memory glibc may keep at the top of a heap before giving it back on `free()`. Its
/// default (128 KiB) is less than the stream buffers one busy tunnel frees and allocates again
/// within a millisecond (64 KiB reads, held until sealed into records), so every batch gave
/// pages back and took them again: page faults were ~12 % of the edge's cycles at 20 Gbit/s.
/// 8 MiB covers many busy tunnels; `return_freed_memory` still hands everything back every
/// `TRIM_EVERY`, so an idle daemon's RSS is unchanged.
const KEEP_FREED: i32 = 8 * 1024 * 1024;

/// Applies [`KEEP_FREED`] (glibc only; other allocators decide for themselves).
fn keep_freed_memory_between_trims() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tunables; called before the runtime's threads
    // exist. A fixed trim threshold also fixes the mmap threshold at its 128 KiB default.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREED);
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_count_honours_a_setting_and_picks_by_cores_for_zero() {
        assert_eq!(worker_count(3), 3);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let auto = worker_count(0);
        if cores <= SINGLE_WORKER_UP_TO_CORES {
            assert_eq!(auto, 1);
        } else {
            assert_eq!(auto, cores);
        }
    }
}
