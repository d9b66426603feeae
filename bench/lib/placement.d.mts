// Types of placement.mjs for the unit test that checks it (test/unit/placement.test.ts).
export interface PlacementCeiling {
  /** Gbit/s at which the busiest core of the best placement is full. */
  gbps: number;
  /** Gbit/s with a core for every thread: the costliest one alone bounds it. */
  perCoreGbps: number;
  /** The placement: thread names per core. */
  cores: string[][];
  /** False when the placement is the greedy split (too many threads to try every one). */
  exact: boolean;
}
export function placementCeiling(costs: Record<string, number>, cores: number, limit?: number): PlacementCeiling | null;
