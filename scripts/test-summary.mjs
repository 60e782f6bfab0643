// Prints vitest's totals as one plain line per run ("N passed, N failed, N
// skipped") for CI logs, and exits non-zero when any run failed.
//   node scripts/test-summary.mjs <label>=<report.json>:<vitest exit status> ...
//   node scripts/test-summary.mjs <report.json> <vitest exit status>   (one unlabelled run)
import { readFileSync } from 'node:fs';

const runs = [];
if (process.argv.length === 4 && !process.argv[2].includes('=')) {
  runs.push({ label: 'vitest', file: process.argv[2], status: Number(process.argv[3] ?? 1) });
} else {
  for (const arg of process.argv.slice(2)) {
    const m = /^([^=]+)=(.*):(\d+)$/.exec(arg);
    if (!m) {
      console.log(`test-summary: cannot read "${arg}" (want <label>=<report.json>:<status>)`);
      process.exit(2);
    }
    runs.push({ label: m[1], file: m[2], status: Number(m[3]) });
  }
}
let failed = runs.length === 0;
for (const { label, file, status } of runs) {
  const prefix = label === 'vitest' ? 'vitest' : `vitest (mode ${label})`;
  try {
    const r = JSON.parse(readFileSync(file, 'utf8'));
    const skipped = r.numPendingTests + (r.numTodoTests ?? 0);
    console.log(`${prefix}: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${skipped} skipped${status ? ` (exit ${status})` : ''}`);
  } catch (err) {
    console.log(`${prefix}: no report (${err.message})${status ? ` (exit ${status})` : ''}`);
  }
  if (status !== 0 || !Number.isFinite(status)) failed = true;
}
process.exit(failed ? 1 : 0);
