/**
 * Named points of a plugin's work, for two uses:
 *  - CNI_TS_TRACE=1: phase timings on stderr (`make bench` investigations);
 *  - CNI_TS_KILL_AT=<label> or <label>#<n>: a failpoint — the process
 *    SIGKILLs itself the n-th time (default the first) `trace(label)` is
 *    reached, as a crash would (test/integration/crash.test.ts).
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
  const k = process.env.CNI_TS_KILL_AT;
  if (k) {
    const m = /^(.*)#(\d+)$/.exec(k);
    killLabel = m ? m[1] : k;
    killAt = m ? Math.max(1, Number(m[2])) : 1;
  }
  return tracing || killLabel !== undefined ? 1 : 0;
}

export function trace(what: string): void {
  if ((state ??= init()) === 0) return;
  if (tracing) process.stderr.write(`[trace] ${performance.now().toFixed(1)} ms ${what}\n`);
  if (what === killLabel && ++hits === killAt) process.kill(process.pid, 'SIGKILL');
}

/** Whether tracing or a failpoint is on: code that changes its own course for a failpoint asks this first. */
export function failpoints(): boolean {
  return (state ??= init()) === 1;
}
