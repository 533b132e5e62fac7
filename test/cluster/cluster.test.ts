// The cluster suite: one vitest file, so that it runs in one worker beside the host's files
// (vitest runs a project whose files may not run in parallel only after every other project).
// Its parts share one deployment and run in this order: from-empty.cases.ts deletes the
// namespace and deploys it again (make test brings the cluster up without deploying), and leaves
// it as it made it for the others. Each part's top-level hooks belong to its own describe, so
// `npx vitest run --project cluster -t keda.cases` runs one part alone, on a deployed cluster.
import { describe } from 'vitest';

describe('from-empty.cases.ts', async () => {
  await import('./from-empty.cases.ts');
});
describe('keda.cases.ts', async () => {
  await import('./keda.cases.ts');
});
describe('monitoring.cases.ts', async () => {
  await import('./monitoring.cases.ts');
});
describe('platform.cases.ts', async () => {
  await import('./platform.cases.ts');
});
