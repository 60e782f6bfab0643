import type { Failpoint } from './failpoints.js';
import { testHook, TEST_HOOKS } from './hooks.js';

export { testHook };
export { FP, type Failpoint } from './failpoints.js';

/**
 * Named points of a plugin's work (the constants of lib/cni/failpoints.ts,
 * `trace(FP.bridge.vethCreated)`: no other string is one), for two uses:
 *  - CNI_TS_TRACE=1: phase timings on stderr (`make bench` investigations).
 *    Honoured by the shipped binary too: it only prints (the label and the
 *    time since start) on stderr, which the runtime shows or drops, and
 *    changes nothing a plugin does — `failpoints()` stays false there, so
 *    not even the order of writes differs — and `make bench` measures the
 *    shipped binary with it;
 *  - CNI_TS_KILL_AT=<label> or <label>#<n>: a failpoint — the process
 *    SIGKILLs itself the n-th time (default the first) `trace(label)` is
 *    reached, as a crash would (test/integration/crash.test.ts). A test hook
 *    (lib/cni/hooks.ts): only the test build reads it.
 * The environment is read once, at the first call (at run time, never at
 * snapshot time); with neither variable set a call is one comparison.
 */
let state: 0 | 1 | undefined; // 0: off, 1: tracing and/or a failpoint armed
let tracing = false;
let killLabel: string | undefined;
let killAt = 1;
let hits = 0;

function init(): 0 | 1 {
  tracing = Boolean(process.env.CNI_TS_TRACE);
  const k = testHook('CNI_TS_KILL_AT');
  if (k) {
    const m = /^(.*)#(\d+)$/.exec(k);
    killLabel = m ? m[1] : k;
    killAt = m ? Math.max(1, Number(m[2])) : 1;
  }
  return tracing || killLabel !== undefined ? 1 : 0;
}

export function trace(what: Failpoint): void {
  if ((state ??= init()) === 0) return;
  if (tracing) process.stderr.write(`[trace] ${performance.now().toFixed(1)} ms ${what}\n`);
  if (what === killLabel && ++hits === killAt) process.kill(process.pid, 'SIGKILL');
}

/**
 * Whether failpoints may fire (a test build, tracing or a failpoint armed):
 * code that changes its own course for a failpoint asks this first. Tracing
 * in a test build counts, so that a traced run lists every failpoint.
 */
export function failpoints(): boolean {
  return TEST_HOOKS && (state ??= init()) === 1;
}

/** Engine workers: the next request reads the (its own) environment afresh and counts failpoints from zero. */
export function resetTrace(): void {
  state = undefined;
  tracing = false;
  killLabel = undefined;
  killAt = 1;
  hits = 0;
}
