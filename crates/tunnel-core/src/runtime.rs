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

/// How often freed heap memory is handed back to the OS. glibc's free() shrinks a heap only
/// once its free top passes the trim threshold ([`KEEP_FREED`]), and never gives back free pages
/// below the top, so after a burst of 10,000 connections a daemon would keep their peak RSS
/// forever. Once every 10 s costs a few hundred microseconds.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Free memory glibc may keep at the top of a heap before giving it back on `free()`. Its
/// default (128 KiB) is less than the stream buffers one busy tunnel frees and allocates again
/// within a millisecond (64 KiB reads, held until sealed into records), so every batch gave
/// pages back and took them again: page faults were ~12 % of the edge's cycles at 20 Gbit/s.
/// 8 MiB covers many busy tunnels. Every `TRIM_EVERY`, `return_freed_memory` hands back the
/// free pages inside every arena and the main heap's top, and each worker the top of its own
/// arena when it next parks ([`give_back_arena_top`]; one that stays parked does when work
/// next wakes it), so an idle daemon's RSS comes back to what it was before the burst.
const KEEP_FREED: i32 = 8 * 1024 * 1024;

/// A block `give_back_arena_top` frees to make glibc try to shrink the thread's arena: at least
/// glibc's FASTBIN_CONSOLIDATION_THRESHOLD (64 KiB, the smallest free() that tries), below the
/// mmap threshold (128 KiB unless a large free raised it before `keep_freed_memory_between_trims`
/// froze it; it only rises), so it comes from and goes back to the arena.
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
/// is restored. One thread at a time: were two interleaved, one's restore could come before the
/// other's free(). The threshold is process-wide: a free() on another thread in that moment may
/// trim its own arena too, which is what glibc does by default anyway.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn give_back_arena_top() {
    use std::cell::Cell;
    use std::sync::atomic::AtomicBool;
    thread_local! {
        // The tick this thread last gave back at; none yet, so the first park does.
        static GIVEN_AT: Cell<u64> = const { Cell::new(u64::MAX) };
    }
    static GIVING_BACK: AtomicBool = AtomicBool::new(false);
    let tick = TRIM_TICKS.load(Ordering::Relaxed);
    if GIVEN_AT.with(Cell::get) == tick {
        return;
    }
    // Another worker is between its two mallopt calls: try again at the next park.
    if GIVING_BACK.swap(true, Ordering::Acquire) {
        return;
    }
    GIVEN_AT.with(|given| given.set(tick));
    // SAFETY: glibc documents mallopt as MT-unsafe because it writes the allocator's tunables
    // while other threads read them without a lock; it takes the main arena's lock for the
    // write, and the worst a concurrent free() can see is one of the two thresholds, each of
    // which is valid. Only this function calls it while threads run, one thread at a time
    // (GIVING_BACK). The block is written once (so the optimiser cannot drop the pair) and
    // freed as allocated; free(NULL) does nothing if the allocation failed.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 0);
        let block = libc::malloc(TRIM_TRIGGER).cast::<u8>();
        if !block.is_null() {
            std::ptr::write_volatile(block, 0);
        }
        libc::free(block.cast());
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREED);
    }
    GIVING_BACK.store(false, Ordering::Release);
}

/// Applies [`KEEP_FREED`] (glibc only; other allocators decide for themselves).
fn keep_freed_memory_between_trims() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tunables; called before the runtime's threads
    // exist. A fixed trim threshold also freezes the mmap threshold where it is (128 KiB unless
    // a large free already raised it).
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

    /// Resident KiB and name of the mapping that holds `addr`, from /proc/self/smaps.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn mapping_around(addr: usize) -> (u64, String) {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut name = None;
        for line in smaps.lines() {
            let mut words = line.split_whitespace();
            let range = words.next().unwrap_or("");
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                    name = (a <= addr && addr < b).then(|| words.nth(4).unwrap_or("[anon]").to_string());
                    continue;
                }
            }
            if let (Some(name), Some(kib)) = (&name, line.strip_prefix("Rss:")) {
                return (
                    kib.trim().trim_end_matches(" kB").trim().parse().unwrap(),
                    name.clone(),
                );
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    /// Frees `mib` MiB that were resident at the top of this thread's arena; returns an address
    /// inside it.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn burst(mib: usize) -> usize {
        const BLOCK: usize = 32 * 1024;
        let blocks: Vec<*mut libc::c_void> = (0..mib * 1024 * 1024 / BLOCK)
            .map(|_| {
                // SAFETY: a plain allocation below the mmap threshold, written within its size
                // so that it is resident, and freed once below.
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
        probe
    }

    /// With the daemons' trim threshold, a thread's arena keeps what a burst freed at its top
    /// (glibc shrinks it only past the threshold, and malloc_trim never does); a worker gives it
    /// back once per trim tick. Run in a process of its own: a thread of the test binary may
    /// inherit an arena other tests shaped.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_worker_gives_back_the_free_top_of_its_arena_once_per_tick() {
        const CHILD: &str = "REMOTEINGRESS_ARENA_TEST_CHILD";
        const NAME: &str = "runtime::tests::a_worker_gives_back_the_free_top_of_its_arena_once_per_tick";
        if std::env::var_os(CHILD).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", NAME, "--test-threads=1", "--nocapture"])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success() && text.contains("1 passed"), "{text}");
            return;
        }
        keep_freed_memory_between_trims();
        std::thread::spawn(|| {
            let probe = burst(6);
            // SAFETY: malloc_trim only walks the allocator's own free lists.
            unsafe { libc::malloc_trim(0) };
            let (kept, name) = mapping_around(probe);
            if name == "[heap]" {
                // The main heap (an arena limit made this thread share it): malloc_trim shrinks
                // its top already, and there is nothing here to test.
                eprintln!("skipped: this thread allocates from the main heap");
                return;
            }
            assert!(
                kept >= 4 * 1024,
                "the freed burst should still be resident, {kept} KiB"
            );
            give_back_arena_top();
            let (after, _) = mapping_around(probe);
            assert!(
                after + 4 * 1024 <= kept,
                "{kept} KiB resident before, {after} KiB after"
            );

            // Once per tick: a second burst in the same tick stays until the next one.
            let probe = burst(6);
            let (kept, _) = mapping_around(probe);
            give_back_arena_top();
            let (same_tick, _) = mapping_around(probe);
            assert!(
                same_tick + 512 >= kept,
                "given back twice in one tick: {kept} → {same_tick} KiB"
            );
            TRIM_TICKS.fetch_add(1, Ordering::Relaxed);
            give_back_arena_top();
            let (after, _) = mapping_around(probe);
            assert!(
                after + 4 * 1024 <= kept,
                "{kept} KiB resident before the next tick, {after} KiB after"
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
