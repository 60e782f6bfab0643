import { beforeEach } from 'vitest';
import { applyModeToProcessEnv, MODE } from './mode.js';

declare module 'vitest' {
  interface TaskMeta {
    /** The test matrix's mode the test ran in (test/helpers/mode.ts); in the JSON report's `meta`. */
    mode?: string;
  }
}

// Runs in each test worker before its test file (vitest setupFiles): code
// that runs plugins from inside the test process passes on what it finds in
// process.env, so that carries the mode too (test/helpers/mode.ts).
applyModeToProcessEnv();

beforeEach(({ task }) => {
  task.meta.mode = MODE;
});
