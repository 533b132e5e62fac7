import { BaseSequencer, type TestSpecification } from 'vitest/node';
import { defineConfig } from 'vitest/config';

/**
 * The order vitest picks (slowest or largest first), except that the cluster's deployment from
 * empty (test/cluster/from-empty.test.ts) runs before every other cluster file: it deploys the
 * stack they use (make test brings the cluster up without deploying).
 */
class FromEmptyFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const sorted = await super.sort(files);
    const first = (s: TestSpecification): number => (s.moduleId.endsWith('/test/cluster/from-empty.test.ts') ? 0 : 1);
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
    sequence: { sequencer: FromEmptyFirst },
    projects: [
      {
        extends: true,
        test: { name: 'host', include: ['test/**/*.test.ts'], exclude: ['test/cluster/**'] },
      },
      {
        // The cluster's files share one deployment, which test/cluster/from-empty.test.ts deletes
        // and makes again: one file at a time, that one first.
        extends: true,
        test: { name: 'cluster', include: ['test/cluster/**/*.test.ts'], fileParallelism: false },
      },
    ],
  },
});
