// Where a path's throughput is bounded when its busy processes share the machine's cores.
//
// One iperf3 stream through a relay keeps four processes busy: the iperf3 client, the relay's
// entry process (our edge, sshd), its exit process (our hub, ssh) and the iperf3 server. Each
// moves the stream's bytes on one thread, so each costs a fixed CPU time per GB, and a core
// can give a GB per second only to processes whose costs add up to at most one second. With
// more busy processes than cores the best the kernel can do is the split of processes onto
// cores whose busiest core costs least; the path cannot go faster than that core allows,
// however well the rest is balanced. Two paths with the same total cost can have different
// ceilings: one costly process against three cheap ones splits evenly on two cores, two
// middling ones and two cheap ones do not (bench/changes.md, session 13).

/** Every assignment is tried up to this many (cores^processes); beyond it, largest-first greedy. */
const EXHAUSTIVE_LIMIT = 1_000_000;

/**
 * The best placement of single-threaded processes with the given costs (CPU s per GB) onto
 * `cores` cores.
 *
 * @param {Record<string, number>} costs  CPU seconds per GB moved, by process
 * @param {number} cores
 * @returns {{ gbps: number, perCoreGbps: number, cores: string[][] }} `gbps`: the throughput at
 *   which the busiest core of the best placement is full; `perCoreGbps`: the same with a core
 *   for every process (the costliest process alone bounds it); `cores`: the best placement.
 */
export function placementCeiling(costs, cores) {
  const names = Object.keys(costs).filter((k) => Number.isFinite(costs[k]) && costs[k] > 0);
  if (names.length === 0 || cores < 1) return null;
  const toGbps = (secondsPerGB) => 8 / secondsPerGB;
  const k = Math.min(cores, names.length);
  let best = null;
  const consider = (assign) => {
    const load = new Array(k).fill(0);
    names.forEach((n, i) => (load[assign[i]] += costs[n]));
    const worst = Math.max(...load);
    if (best === null || worst < best.worst) best = { worst, assign: [...assign] };
  };
  if (k ** names.length <= EXHAUSTIVE_LIMIT) {
    const assign = new Array(names.length).fill(0);
    // The first process stays on core 0: placements that only rename cores cost the same.
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
  return { gbps: toGbps(best.worst), perCoreGbps: toGbps(Math.max(...names.map((n) => costs[n]))), cores: placed };
}
