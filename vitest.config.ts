import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts', 'machines/**/*.test.ts', 'src/**/*.test.ts'],
    // A budget against hangs, not a timing assertion: tests wait with their own polling deadlines, and a CLI test
    // that starts a dozen processes through tsx needs more than 30 s while another file runs beside it.
    testTimeout: 90_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // Most tests wait on child processes and signals, not on the CPU: two files at a time on 2 cores keeps the
    // suite under 10 minutes (vitest's default is one file on a 2-core machine).
    maxWorkers: 2,
    reporters: ['default', './test/summary-reporter.ts'],
  },
});
