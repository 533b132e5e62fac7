/**
 * The AMQP 0-9-1 reply codes kmj acts on, and the one place that reads them from amqplib's errors.
 * A channel or connection closed by the broker carries its code as `code`. A close during the
 * opening handshake does not, and amqplib's message is all there is, read here and nowhere else:
 * a wrong password gives "Handshake terminated by server: 403 (ACCESS-REFUSED) …"; a vhost the
 * user may not open is closed in answer to connection.open, which amqplib reports as "Expected
 * ConnectionOpenOk; got <ConnectionClose channel:0>" without its fields (RabbitMQ sends 530
 * NOT_ALLOWED there, so that is the code given).
 */
export const AMQP_REPLY = {
  CONNECTION_FORCED: 320,
  ACCESS_REFUSED: 403,
  NOT_FOUND: 404,
  PRECONDITION_FAILED: 406,
  NOT_ALLOWED: 530,
} as const;

/** The broker's reply code of an amqplib error, or undefined for an error that did not come from the broker (a socket error, a timeout). */
export function replyCodeOf(err: unknown): number | undefined {
  const code = (err as { code?: unknown } | undefined)?.code;
  if (typeof code === 'number') return code;
  if (!(err instanceof Error)) return undefined;
  const handshake = /^Handshake terminated by server: (\d{3}) /.exec(err.message);
  if (handshake) return Number(handshake[1]);
  return err.message.startsWith('Expected ConnectionOpenOk; got <ConnectionClose') ? AMQP_REPLY.NOT_ALLOWED : undefined;
}

/** A refusal that another try will not change: wrong credentials, no permission, a queue declared with other arguments. */
export function isRefusal(err: unknown): boolean {
  const code = replyCodeOf(err);
  return code === AMQP_REPLY.ACCESS_REFUSED || code === AMQP_REPLY.PRECONDITION_FAILED || code === AMQP_REPLY.NOT_ALLOWED;
}
