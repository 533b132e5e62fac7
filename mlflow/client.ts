/** Builds the MLflow client the CLI commands share, from MLflow's usual environment variables. */
import type { FlagOverride } from '../common/config.ts';
import type { Logger } from '../common/log.ts';
import { loadMlflowSettings } from './settings.ts';
import { MlflowHttp } from './http.ts';
import { MlflowTracking } from './tracking.ts';

/** An MLflow client, or undefined when no tracking URI is set (neither the flag nor MLFLOW_TRACKING_URI). */
export function mlflowFromEnv(
  component: string,
  env: Readonly<Record<string, string | undefined>>,
  log: Logger,
  trackingUri?: FlagOverride,
): MlflowTracking | undefined {
  const settings = loadMlflowSettings(component, env, trackingUri);
  if (!settings) return undefined;
  return new MlflowTracking(new MlflowHttp({ ...settings, maxBackoffSeconds: 30, log }));
}

/** The MLflow UI address of a run. */
export function runUrl(tracking: MlflowTracking, experimentId: string, runId: string): string {
  return `${tracking.http.baseUrl}/#/experiments/${experimentId}/runs/${runId}`;
}
