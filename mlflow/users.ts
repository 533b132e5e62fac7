/**
 * Users of an MLflow server that runs the basic-auth app (`mlflow server --app-name basic-auth`),
 * through its REST API as an administrator: `kmj setup` makes the worker's user with it. The
 * worker's user needs no permission of its own: it creates the experiments it writes (MLflow gives
 * their creator MANAGE) and reads registered models under the server's `default_permission`.
 */
import { MlflowHttpError, type MlflowHttp } from './http.ts';

/** The user exists with this password; true when it was made. */
export async function ensureMlflowUser(http: MlflowHttp, username: string, password: string, signal: AbortSignal): Promise<boolean> {
  try {
    await http.api('users/get', { method: 'GET', query: { username }, signal });
  } catch (err) {
    if (!(err instanceof MlflowHttpError && (err.status === 404 || err.errorCode === 'RESOURCE_DOES_NOT_EXIST'))) throw err;
    // A create racing another setup loses with RESOURCE_ALREADY_EXISTS: then the password is set below.
    try {
      await http.api('users/create', { method: 'POST', json: { username, password }, signal, retryWriteRace: false });
      return true;
    } catch (createErr) {
      if (!(createErr instanceof MlflowHttpError && createErr.errorCode === 'RESOURCE_ALREADY_EXISTS')) throw createErr;
    }
  }
  await http.api('users/update-password', { method: 'PATCH', json: { username, password }, signal });
  return false;
}
