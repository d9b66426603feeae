// Types of placement.mjs for the unit test that checks it (test/unit/placement.test.ts).
export interface PlacementCeiling {
  /** Gbit/s at which the busiest core of the best placement is full. */
  gbps: number;
  /** Gbit/s with a core for every process: the costliest process alone bounds it. */
  perCoreGbps: number;
  /** The best placement: process names per core. */
  cores: string[][];
}
export function placementCeiling(costs: Record<string, number>, cores: number): PlacementCeiling | null;
