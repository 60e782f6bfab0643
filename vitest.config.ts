import { defineConfig } from 'vitest/config';

// The test matrix's mode (test/helpers/mode.ts): exec (default) or engine.
const MODE = process.env.CNI_TS_MODE || 'exec';

export default defineConfig({
  test: {
    // Shown beside every test file in the default reporter, so a failure says which mode it failed in.
    name: MODE,
    include: ['test/**/*.test.ts'],
    // Prints "mode: …" once at the start of the run.
    globalSetup: ['test/helpers/mode-global.ts'],
    // CNI_TS_ENGINE in the test process's own environment, per the mode (for code that runs plugins in-process).
    setupFiles: ['test/helpers/mode-setup.ts'],
    // Forks, not threads: netns tests setns() the process's main thread.
    pool: 'forks',
    // Two test files at a time, also on a 2-core machine (vitest's default
    // there is one: cores - 1). Most of a file's time is spent waiting on the
    // processes it starts (plugins, dnsmasq, ping, podman), so a second file
    // fills the gaps; more would only make each slower and its timeouts
    // tighter. The long suites (crash, fuzz, scale) pace their own
    // concurrency; the tests on the machine's own namespace (podman,
    // containerd) take turns through hostNetLock (test/helpers/podman.ts).
    fileParallelism: true,
    maxWorkers: 2,
    minWorkers: 1,
    // Sized for a machine 4× slower than the development one (a process
    // start of the embedded Node: 75 ms instead of 20) with a CPU-bound
    // process beside it; the long suites set their own per test.
    testTimeout: 300_000,
    hookTimeout: 300_000,
    reporters: ['default'],
  },
});
