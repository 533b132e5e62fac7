import { BaseSequencer, type TestSpecification } from 'vitest/node';
import { defineConfig } from 'vitest/config';

/**
 * The order vitest picks (slowest or largest first), except that the cluster suite
 * (test/cluster/cluster.test.ts, the longest file by far) starts first: it then takes one worker
 * while the host's files share the other.
 */
class ClusterFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const sorted = await super.sort(files);
    const first = (s: TestSpecification): number => (s.project.name === 'cluster' ? 0 : 1);
    return [...sorted].sort((a, b) => first(a) - first(b));
  }
}

export default defineConfig({
  test: {
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // Tests talk to real services; two cores, so two files at a time.
    maxWorkers: 2,
    sequence: { sequencer: ClusterFirst },
    projects: [
      {
        extends: true,
        test: { name: 'host', include: ['test/**/*.test.ts'], exclude: ['test/cluster/**'] },
      },
      {
        // One file whose parts share one deployment and run in order (test/cluster/cluster.test.ts).
        // No fileParallelism: false here: vitest would run such a project only after all others.
        extends: true,
        test: { name: 'cluster', include: ['test/cluster/**/*.test.ts'] },
      },
    ],
  },
});
