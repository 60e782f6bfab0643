// Prints vitest's totals as one plain line ("N passed, N failed, N skipped")
// for CI logs, and exits with vitest's status.
import { readFileSync } from 'node:fs';

const status = Number(process.argv[3] ?? 1);
try {
  const r = JSON.parse(readFileSync(process.argv[2], 'utf8'));
  const skipped = r.numPendingTests + (r.numTodoTests ?? 0);
  console.log(`vitest: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${skipped} skipped`);
} catch (err) {
  console.log(`vitest: no report (${err.message})`);
}
process.exit(status);
