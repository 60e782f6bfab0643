import { clientsStartEngines, MODE, runningEngines } from './mode.js';

// vitest globalSetup: says once, at the start of the run, which mode of the
// test matrix this is (CNI_TS_MODE, test/helpers/mode.ts), so that a failure
// log tells which mode failed; at the end, names engines of this
// repository's binaries still running (each test stops its own: one left is
// a leak — or another run's, on a shared machine).
export default function setup(): () => void {
  const before = new Set(runningEngines());
  console.log(`mode: ${MODE} (CNI_TS_MODE=${process.env.CNI_TS_MODE || 'unset: exec'})`);
  if (MODE === 'engine' && !clientsStartEngines()) {
    console.log('mode: engine, but this process is not in init\'s mount namespace: the clients start no engine here, every call takes the exec path');
  }
  return () => {
    const left = runningEngines().filter((e) => !before.has(e));
    if (left.length) console.log(`mode: ${MODE}: engines still running after the run:\n  ${left.join('\n  ')}`);
  };
}
