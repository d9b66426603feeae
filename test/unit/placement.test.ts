// The bench's placement ceiling (bench/lib/placement.mjs): the model its "Where throughput is
// bounded" table and the tcpTls-vs-ssh bound lines are computed with.
import { describe, expect, it } from 'vitest';
import { placementCeiling } from '../../bench/lib/placement.mjs';

const sorted = (cores: string[][]) => cores.map((c) => [...c].sort()).sort((a, b) => a.join().localeCompare(b.join()));

describe('placementCeiling', () => {
  it('puts one costly process alone when that balances the cores best', () => {
    const r = placementCeiling({ sshd: 1.6, ssh: 1.1, 'iperf3 -s': 0.35, 'iperf3 -c': 0.2 }, 2);
    expect(r).not.toBeNull();
    expect(sorted(r!.cores)).toEqual(sorted([['sshd'], ['ssh', 'iperf3 -s', 'iperf3 -c']]));
    // The busier core holds 1.65 s per GB: 8 / 1.65 Gbit/s.
    expect(r!.gbps).toBeCloseTo(8 / 1.65, 6);
    expect(r!.perCoreGbps).toBeCloseTo(8 / 1.6, 6);
  });

  it('finds the best split of two middling and two cheap processes, not just any even count', () => {
    const r = placementCeiling({ edge: 1.2, hub: 0.95, 'iperf3 -s': 0.35, 'iperf3 -c': 0.2 }, 2);
    // {edge + client} 1.40 against {hub + server} 1.30 beats {edge + server} 1.55 and {edge} 1.20 / {rest} 1.50.
    expect(sorted(r!.cores)).toEqual(sorted([['edge', 'iperf3 -c'], ['hub', 'iperf3 -s']]));
    expect(r!.gbps).toBeCloseTo(8 / 1.4, 6);
  });

  it('with a core for every process the costliest one bounds it', () => {
    const costs = { a: 1.0, b: 0.5, c: 0.25 };
    const r = placementCeiling(costs, 4);
    expect(r!.cores).toHaveLength(3);
    expect(r!.gbps).toBeCloseTo(8, 6);
    expect(r!.perCoreGbps).toBeCloseTo(8, 6);
  });

  it('agrees with the exhaustive search where the greedy fallback takes over', () => {
    // 12 processes on 4 cores is 4^12 > 1e6 placements: the greedy largest-first split. Costs
    // chosen so that greedy is optimal (every core ends at 1.0 s/GB).
    const costs: Record<string, number> = {};
    [0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25].forEach((c, i) => (costs[`p${i}`] = c));
    const r = placementCeiling(costs, 4);
    expect(r!.gbps).toBeCloseTo(8, 6);
    expect(r!.cores.flat().sort()).toEqual(Object.keys(costs).sort());
  });

  it('ignores processes that cost nothing and returns null when none is busy', () => {
    expect(placementCeiling({ idle: 0, gone: Number.NaN }, 2)).toBeNull();
    const r = placementCeiling({ busy: 2, idle: 0 }, 2);
    expect(r!.cores).toEqual([['busy']]);
    expect(r!.gbps).toBeCloseTo(4, 6);
  });
});
