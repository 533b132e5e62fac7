/**
 * Lint rules for everything the project runs: program code, tests, benches and scripts (`make
 * lint`, part of `make test`). Type-aware (typescript-eslint's recommended type-checked set) so
 * that a promise nobody awaits, a promise passed where a callback's result is ignored and a switch
 * that misses a case of a union fail the build. TypeScript 7 has no compiler API yet, so the
 * linter's type information comes from TypeScript 6 (the `typescript` package here is
 * @typescript/typescript6); `tsc` is TypeScript 7 (@typescript/native).
 */
import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', '.run/**', '.tools/**', '.venv/**', '.vitest/**'] },
  js.configs.recommended,
  tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      ecmaVersion: 2024,
      sourceType: 'module',
      globals: { ...globals.node },
      parserOptions: {
        // Files outside tsconfig.json's program get scripts/tsconfig.json (allowJs, the test types).
        projectService: {
          allowDefaultProject: ['bin/*.js', 'eslint.config.js', 'vitest.config.ts', 'monitoring/*.ts'],
          defaultProject: 'scripts/tsconfig.json',
        },
        tsconfigRootDir: import.meta.dirname,
      },
    },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/switch-exhaustiveness-check': [
        'error',
        { considerDefaultExhaustiveForUnions: true, requireDefaultForNonUnion: false },
      ],
      '@typescript-eslint/consistent-type-imports': ['error', { fixStyle: 'inline-type-imports' }],
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
      'no-restricted-syntax': [
        'error',
        { selector: 'ExportDefaultDeclaration', message: 'named exports only (STYLE.md 8)' },
        { selector: 'ExportAllDeclaration', message: 'no export * barrels (STYLE.md 8)' },
      ],
    },
  },
  {
    // JavaScript files carry no types (checkJs is off): every value is `any` to the type-aware
    // rules, so the rules about `any` flowing say nothing there; the promise rules still apply.
    files: ['**/*.js', '**/*.mjs'],
    rules: {
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
    },
  },
  {
    // Program code takes node:http and node:https from common/node-http.ts: an import statement
    // loads Node's bundled undici with them (about 30 ms and 4 MB of every process).
    files: ['**/*.ts'],
    ignores: ['test/**', 'bench/**', 'common/node-http.ts'],
    rules: {
      '@typescript-eslint/no-restricted-imports': [
        'error',
        {
          paths: ['node:http', 'node:https', 'http', 'https'].map((name) => ({
            name,
            allowTypeImports: true,
            message: 'take node:http and node:https from common/node-http.ts (an import statement loads undici)',
          })),
        },
      ],
    },
  },
  {
    // vitest's asymmetric matchers (expect.any, expect.stringMatching, expect.objectContaining)
    // are typed `any`, and tests put them inside expected objects everywhere.
    files: ['test/**/*.ts'],
    rules: { '@typescript-eslint/no-unsafe-assignment': 'off' },
  },
  {
    // The flat config file itself is the one default export the tool asks for.
    files: ['eslint.config.js', 'vitest.config.ts', 'test/**/*.config.ts'],
    rules: { 'no-restricted-syntax': 'off' },
  },
);
