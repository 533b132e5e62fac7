/** Where the test services listen. `make test` starts them on loopback; these are their defaults. */
export const RABBITMQ_URL = process.env['KMJ_TEST_RABBITMQ_URL'] ?? 'amqp://guest:guest@127.0.0.1:5672';
export const RABBITMQ_MANAGEMENT_URL = process.env['KMJ_TEST_RABBITMQ_MANAGEMENT_URL'] ?? 'http://guest:guest@127.0.0.1:15672';
