import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    exclude: ['**/node_modules/**', '**/.git/**', 'test/hosts/**'],
    // Real processes and cgroups: generous per-test budget, and a fork per file so a
    // test that leaks a signal handler or a child never poisons another file.
    pool: 'forks',
    testTimeout: 30_000,
    hookTimeout: 30_000,
  },
});
