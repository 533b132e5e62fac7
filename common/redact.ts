/**
 * Keeps credentials out of logs, errors and metrics. Every string that might hold a URL passes
 * through `scrubSecrets` before it is logged or put in an error message.
 */

// scheme://user:password@host → scheme://***@host (also a bare user@ with a password-less token).
const URL_USERINFO = /([a-z][a-z0-9+.-]*:\/\/)[^\s/@'"]+@/gi;
// Authorization header values: the scheme then a token of at least 12 token characters, so words
// such as "basic orders" are left alone.
const AUTH_VALUE = /\b(basic|bearer)\s+[a-z0-9._~+/-]{12,}=*/gi;
const SECRET_QUERY = /([?&](?:password|passwd|token|access_token|secret|api[_-]?key)=)[^&\s'"]+/gi;

/** Returns `text` with URL user-info, Authorization values and secret query parameters masked. */
export function scrubSecrets(text: string): string {
  return text.replace(URL_USERINFO, '$1***@').replace(AUTH_VALUE, '$1 ***').replace(SECRET_QUERY, '$1***');
}

/** A URL for display: user-info removed (not masked), everything else kept. */
export function displayUrl(url: string): string {
  try {
    const u = new URL(url);
    u.username = '';
    u.password = '';
    return u.toString();
  } catch {
    return scrubSecrets(url);
  }
}

/** True when the string carries what looks like a credential: URL user-info or an auth header value. */
export function looksSecret(text: string): boolean {
  URL_USERINFO.lastIndex = 0;
  AUTH_VALUE.lastIndex = 0;
  SECRET_QUERY.lastIndex = 0;
  const found = URL_USERINFO.test(text) || AUTH_VALUE.test(text) || SECRET_QUERY.test(text);
  URL_USERINFO.lastIndex = 0;
  AUTH_VALUE.lastIndex = 0;
  SECRET_QUERY.lastIndex = 0;
  return found;
}

/**
 * Rewrites an error (message, stack and causes) so no credential survives. Returns a plain
 * object for loggers; the original error is not modified.
 */
export function scrubError(err: unknown, depth = 0): Record<string, unknown> {
  if (!(err instanceof Error)) return { message: scrubSecrets(String(err)) };
  const out: Record<string, unknown> = {
    type: err.name,
    message: scrubSecrets(err.message),
  };
  if (err.stack) out['stack'] = scrubSecrets(err.stack);
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' || typeof code === 'number') out['code'] = code;
  if (err.cause !== undefined && depth < 5) out['cause'] = scrubError(err.cause, depth + 1);
  return out;
}

/** Reads the message of an unknown thrown value without trusting its type, credentials removed. */
export function messageOf(err: unknown): string {
  if (!(err instanceof Error)) return scrubSecrets(String(err));
  // fetch() says only "fetch failed"; what failed (ECONNREFUSED, a TLS error) is its cause.
  const cause = err.message === 'fetch failed' && err.cause instanceof Error ? `: ${err.cause.message}` : '';
  return scrubSecrets(`${err.message}${cause}`);
}
