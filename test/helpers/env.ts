import { join } from 'node:path';
import { PACKAGE_ROOT } from '../../common/paths.ts';

/** Where the test services listen. `make test` starts them on loopback; these are their defaults. */
export const RABBITMQ_URL = process.env['KMJ_TEST_RABBITMQ_URL'] ?? 'amqp://guest:guest@127.0.0.1:5672';
export const RABBITMQ_MANAGEMENT_URL = process.env['KMJ_TEST_RABBITMQ_MANAGEMENT_URL'] ?? 'http://guest:guest@127.0.0.1:15672';
/** Kafka started by scripts/kafka.sh: plaintext, and SASL (PLAIN, SCRAM-SHA-256/512) for user kmj. */
export const KAFKA_BROKERS = process.env['KMJ_TEST_KAFKA_BROKERS'] ?? '127.0.0.1:19092';
export const KAFKA_SASL_BROKERS = process.env['KMJ_TEST_KAFKA_SASL_BROKERS'] ?? '127.0.0.1:19094';
/** SASL over TLS; the broker's certificate is signed by the CA in KAFKA_TLS_CA_FILE. */
export const KAFKA_SSL_BROKERS = process.env['KMJ_TEST_KAFKA_SSL_BROKERS'] ?? '127.0.0.1:19095';
export const KAFKA_TLS_CA_FILE = process.env['KMJ_TEST_KAFKA_TLS_CA_FILE'] ?? join(PACKAGE_ROOT, '.run', 'kafka', 'tls', 'ca.crt');
export const KAFKA_USER = 'kmj';
export const KAFKA_PASSWORD = 'kmj-secret';
/** The Kafka jars scripts/kafka.sh fetched, for the tests' Java clients. */
export const KAFKA_LIBS = join(
  process.env['KMJ_KAFKA_CACHE'] ?? '/var/cache/keda-ml-jobs/kafka',
  process.env['KMJ_KAFKA_VERSION'] ?? '4.4.0',
  'libs',
);
