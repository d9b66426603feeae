// Where a path's throughput is bounded when its busy threads share the machine's cores.
//
// One iperf3 stream through a relay keeps four threads busy: the iperf3 client, the relay's
// entry process (our edge's worker, sshd), its exit process (our hub's worker, ssh) and the
// iperf3 server. Each moves the stream's bytes on its own, so each costs a CPU time per GB, and
// a core gives a GB per second only to threads whose costs add up to at most one second. With
// more busy threads than cores the best the kernel can do is the split of threads onto cores
// whose busiest core costs least; the path cannot go faster than that core allows, however well
// the rest is balanced. Two paths with the same total cost can have different ceilings: one
// costly thread against three cheap ones splits evenly on two cores, two middling ones and two
// cheap ones do not (bench/changes.md, session 13). The costs are the ones measured in the run,
// under its placements (on loopback a sender also does its receiver's TCP work, and a thread's
// cost per byte moves with where the others run), so a ceiling is a model of that run, not a
// law: a path can beat it a little where its costs fell in a better placement.

/** Every assignment is tried up to this many (cores^threads); beyond it, largest-first greedy,
 * which may miss the best split (`exact: false`). 2 cores × 20 threads is ~1e6: 2 ms here. */
const EXHAUSTIVE_LIMIT = 1_000_000;

/**
 * The best placement of busy threads with the given costs (CPU s per GB) onto `cores` cores.
 *
 * @param {Record<string, number>} costs  CPU seconds per GB moved, by thread
 * @param {number} cores
 * @param {number} [limit]  try every placement up to this many (tests lower it to reach the greedy split)
 * @returns {{ gbps: number, perCoreGbps: number, cores: string[][], exact: boolean } | null}
 *   `gbps`: the throughput at which the busiest core of the placement is full; `perCoreGbps`:
 *   the same with a core for every thread (the costliest one alone bounds it); `cores`: the
 *   placement; `exact`: false when it is the greedy split rather than the best of all. Null
 *   when no thread is busy.
 */
export function placementCeiling(costs, cores, limit = EXHAUSTIVE_LIMIT) {
  const names = Object.keys(costs).filter((k) => Number.isFinite(costs[k]) && costs[k] > 0);
  if (names.length === 0 || cores < 1) return null;
  const toGbps = (secondsPerGB) => 8 / secondsPerGB;
  const k = Math.min(cores, names.length);
  let best = null;
  const exact = k ** names.length <= limit;
  const consider = (assign) => {
    const load = new Array(k).fill(0);
    names.forEach((n, i) => (load[assign[i]] += costs[n]));
    const worst = Math.max(...load);
    if (best === null || worst < best.worst) best = { worst, assign: [...assign] };
  };
  if (exact) {
    const assign = new Array(names.length).fill(0);
    // The first thread stays on core 0: placements that only rename cores cost the same.
    const walk = (i) => {
      if (i === names.length) return consider(assign);
      for (let c = 0; c < (i === 0 ? 1 : k); c++) {
        assign[i] = c;
        walk(i + 1);
      }
    };
    walk(0);
  } else {
    const load = new Array(k).fill(0);
    const assign = new Array(names.length).fill(0);
    [...names.keys()].sort((a, b) => costs[names[b]] - costs[names[a]]).forEach((i) => {
      const c = load.indexOf(Math.min(...load));
      assign[i] = c;
      load[c] += costs[names[i]];
    });
    consider(assign);
  }
  const placed = Array.from({ length: k }, () => []);
  names.forEach((n, i) => placed[best.assign[i]].push(n));
  return { gbps: toGbps(best.worst), perCoreGbps: toGbps(Math.max(...names.map((n) => costs[n]))), cores: placed, exact };
}
