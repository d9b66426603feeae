import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/unit/global-setup.ts'],
    environment: 'node',
    // End-to-end tests start real hubs and edges and push megabytes through them; on a 2-core
    // machine one test may legitimately take tens of seconds, so 60 s bounds a hang, not a test.
    testTimeout: 60_000,
    // Stopping a hub/edge drains for up to its grace period (10 s by default) plus teardown.
    hookTimeout: 30_000,
    // Files run one after another: e2e files each spawn tunnels with their own worker threads,
    // and running them side by side on 2 cores makes timing-sensitive tests (heartbeats) flaky.
    fileParallelism: false,
    pool: 'forks',
    env: {
      // No test may change the root network namespace's firewall: edges started by tests load
      // this (missing) library and report the firewall unavailable. Firewall tests run their
      // edge inside a throwaway namespace (`unshare -n`) and clear this variable there.
      REMOTEINGRESS_NFT_LIB: '/nonexistent/remoteingress-tests-never-touch-the-root-netns.so',
    },
  },
});
