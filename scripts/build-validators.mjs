// Compiles the request JSON Schema into a standalone validator module (ajv's standalone code), so
// a worker validates requests without compiling the schema at start-up. Run by `npm run build`.
//   node scripts/build-validators.mjs  →  dist/generated/request-validator.js
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv2020 } from 'ajv/dist/2020.js';
import standaloneCode from 'ajv/dist/standalone/index.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const schema = JSON.parse(readFileSync(join(root, 'schemas', 'request-v1.schema.json'), 'utf8'));
const ajv = new Ajv2020({ allErrors: true, strict: true, code: { source: true, esm: true } });
const validate = ajv.compile(schema);
const out = join(root, 'dist', 'generated', 'request-validator.js');
mkdirSync(dirname(out), { recursive: true });
// ajv's ESM output still require()s its small runtime helpers (ucs2length): give the module a require.
const header = [
  '// Generated from schemas/request-v1.schema.json by scripts/build-validators.mjs. Do not edit.',
  "import { createRequire } from 'node:module';",
  'const require = createRequire(import.meta.url);',
].join('\n');
writeFileSync(out, `${header}\n${standaloneCode.default(ajv, validate).replace(/^"use strict";/, '')}\n`);
process.stdout.write(`wrote ${out}\n`);
