//! The process-wide tokio runtime that owns every socket. Created on first use; its worker
//! count comes from the first hub or edge's performance settings.

use std::sync::atomic::{AtomicU64, Ordering};
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
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        b.on_thread_park(give_back_arena_top);
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
/// 8 MiB covers many busy tunnels. Every `TRIM_EVERY`, `return_freed_memory` hands back the
/// free pages inside every arena and the main heap's top, and each worker the top of its own
/// arena ([`give_back_arena_top`]), so an idle daemon's RSS is unchanged.
const KEEP_FREED: i32 = 8 * 1024 * 1024;

/// A block `give_back_arena_top` frees to make glibc try to shrink the thread's arena: at least
/// glibc's FASTBIN_CONSOLIDATION_THRESHOLD (64 KiB, the smallest free() that tries), below the
/// mmap threshold (128 KiB, fixed by `keep_freed_memory_between_trims`), so it comes from and
/// goes back to the arena.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_TRIGGER: usize = 96 * 1024;

/// Counts `return_freed_memory`'s ticks, so that a parking worker knows with one load whether
/// it has given its arena back since the last one.
static TRIM_TICKS: AtomicU64 = AtomicU64::new(0);

/// Gives the free top of this thread's malloc arena back to the OS, once per tick of
/// `return_freed_memory` per thread (the runtime calls it whenever a worker parks, which under
/// load is thousands of times a second: apart from that, it is one atomic load). `malloc_trim`
/// cannot: it shrinks only the main heap's top, and a worker's arena shrinks its top only in
/// `free()`, once the top exceeds the trim threshold, which [`KEEP_FREED`] sets at 8 MiB.
/// Measured after a UDP burst: the edge's worker arena held 3.7 MiB resident with 150 KB in
/// use, after the trim, for good (bench/changes.md, session 11). So the threshold drops to 0
/// for one free() of [`TRIM_TRIGGER`] bytes in this thread's arena, which shrinks its top, and
/// is restored. The threshold is process-wide: a free() on another thread in that moment may
/// trim its arena too, which is what glibc does by default anyway.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn give_back_arena_top() {
    use std::cell::Cell;
    thread_local! {
        // The tick this thread last gave back at; none yet, so the first park does.
        static GIVEN_AT: Cell<u64> = const { Cell::new(u64::MAX) };
    }
    let tick = TRIM_TICKS.load(Ordering::Relaxed);
    if GIVEN_AT.with(|given| given.replace(tick)) == tick {
        return;
    }
    // SAFETY: mallopt only changes the allocator's tunables; the block is freed as allocated
    // (free(NULL) is a no-op if the allocation failed).
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 0);
        // black_box: an allocation freed unused is otherwise removed by the optimiser.
        libc::free(std::hint::black_box(libc::malloc(TRIM_TRIGGER)));
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREED);
    }
}

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
        // Each worker gives back its arena's top when it next parks (give_back_arena_top).
        TRIM_TICKS.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident KiB of the mapping that holds `addr`, from /proc/self/smaps.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn resident_kib_around(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                    inside = a <= addr && addr < b;
                    continue;
                }
            }
            if inside {
                if let Some(kib) = line.strip_prefix("Rss:") {
                    return kib.trim().trim_end_matches(" kB").trim().parse().unwrap();
                }
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    /// With the daemons' trim threshold, a thread's arena keeps what a burst freed at its top
    /// (glibc shrinks it only past the threshold, and malloc_trim never does); a worker's
    /// periodic give-back returns it.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_worker_gives_back_the_free_top_of_its_arena() {
        std::thread::spawn(|| {
            keep_freed_memory_between_trims();
            const BLOCK: usize = 32 * 1024;
            // 6 MiB in blocks below the mmap threshold: from this thread's arena, written so
            // that it is resident, then freed into the arena's top.
            let blocks: Vec<*mut libc::c_void> = (0..192)
                .map(|_| {
                    // SAFETY: a plain allocation, written within its size and freed below.
                    let p = unsafe { libc::malloc(BLOCK) };
                    assert!(!p.is_null());
                    unsafe { std::ptr::write_bytes(p.cast::<u8>(), 1, BLOCK) };
                    p
                })
                .collect();
            let probe = blocks[blocks.len() / 2] as usize;
            for p in blocks {
                // SAFETY: each block is freed once, as allocated.
                unsafe { libc::free(p) };
            }
            unsafe { libc::malloc_trim(0) };
            let kept = resident_kib_around(probe);
            assert!(
                kept >= 4 * 1024,
                "the freed burst should still be resident, {kept} KiB"
            );
            give_back_arena_top();
            let after = resident_kib_around(probe);
            assert!(
                after + 4 * 1024 <= kept,
                "{kept} KiB resident before, {after} KiB after"
            );
        })
        .join()
        .unwrap();
    }

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
