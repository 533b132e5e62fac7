import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // Tests talk to real services; two cores, so two files at a time.
    maxWorkers: 2,
    projects: [
      {
        extends: true,
        test: { name: 'host', include: ['test/**/*.test.ts'], exclude: ['test/cluster/**'] },
      },
      {
        // The cluster's files share one deployment, and one of them deletes and deploys it again
        // (test/cluster/from-empty.test.ts): one file at a time.
        extends: true,
        test: { name: 'cluster', include: ['test/cluster/**/*.test.ts'], fileParallelism: false },
      },
    ],
  },
});
