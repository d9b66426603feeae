import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { resolve } from 'node:path';

/**
 * Tests load the packages from dist (the bins, and `remoteingress-core` through the workspace
 * link), so compile first: an incremental `tsc -b` is a no-op when dist is current, and a run
 * straight after editing a source file never tests yesterday's build.
 */
export default function setup(): void {
  const root = resolve(import.meta.dirname, '../..');
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  execFileSync(process.execPath, [tsc, '-b'], { cwd: root, stdio: 'inherit' });
}
