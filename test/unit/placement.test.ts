// The bench's placement ceiling (bench/lib/placement.mjs): the model its "Where throughput is
// bounded" table and the tcpTls-vs-ssh bound lines are computed with.
import { describe, expect, it } from 'vitest';
import { placementCeiling } from '../../bench/lib/placement.mjs';

const sorted = (cores: string[][]) => cores.map((c) => [...c].sort()).sort((a, b) => a.join().localeCompare(b.join()));

describe('placementCeiling', () => {
  it('puts one costly thread alone when that balances the cores best', () => {
    const r = placementCeiling({ sshd: 1.6, ssh: 1.1, 'iperf3 -s': 0.35, 'iperf3 -c': 0.2 }, 2);
    expect(r).not.toBeNull();
    expect(sorted(r!.cores)).toEqual(sorted([['sshd'], ['ssh', 'iperf3 -s', 'iperf3 -c']]));
    // The busier core holds 1.65 s per GB: 8 / 1.65 Gbit/s.
    expect(r!.gbps).toBeCloseTo(8 / 1.65, 6);
    expect(r!.perCoreGbps).toBeCloseTo(8 / 1.6, 6);
  });

  it('finds the best split of two middling and two cheap threads, not just any even count', () => {
    const r = placementCeiling({ edge: 1.2, hub: 0.95, 'iperf3 -s': 0.35, 'iperf3 -c': 0.2 }, 2);
    // {edge + client} 1.40 against {hub + server} 1.30 beats {edge + server} 1.55 and {edge} 1.20 / {rest} 1.50.
    expect(sorted(r!.cores)).toEqual(sorted([['edge', 'iperf3 -c'], ['hub', 'iperf3 -s']]));
    expect(r!.gbps).toBeCloseTo(8 / 1.4, 6);
  });

  it('with a core for every thread the costliest one bounds it', () => {
    const costs = { a: 1.0, b: 0.5, c: 0.25 };
    const r = placementCeiling(costs, 4);
    expect(r!.cores).toHaveLength(3);
    expect(r!.gbps).toBeCloseTo(8, 6);
    expect(r!.perCoreGbps).toBeCloseTo(8, 6);
  });

  it('says when the placement is the greedy split, which can miss the best one', () => {
    // Largest first on 2 cores: 3 | 3, then 2 | 2, then the last 2 makes one core 7; the best
    // split is {3 + 3} {2 + 2 + 2} at 6 each.
    const costs = { a: 3, b: 3, c: 2, d: 2, e: 2 };
    const best = placementCeiling(costs, 2);
    expect(best!.exact).toBe(true);
    expect(best!.gbps).toBeCloseTo(8 / 6, 6);
    expect(sorted(best!.cores)).toEqual(sorted([['a', 'b'], ['c', 'd', 'e']]));
    const greedy = placementCeiling(costs, 2, 0);
    expect(greedy!.exact).toBe(false);
    expect(greedy!.gbps).toBeCloseTo(8 / 7, 6);
    expect(greedy!.cores.flat().sort()).toEqual(Object.keys(costs).sort());
  });

  it('ignores threads that cost nothing and returns null when none is busy', () => {
    expect(placementCeiling({ idle: 0, gone: Number.NaN }, 2)).toBeNull();
    const r = placementCeiling({ busy: 2, idle: 0 }, 2);
    expect(r!.cores).toEqual([['busy']]);
    expect(r!.gbps).toBeCloseTo(4, 6);
  });
});
