/**
 * Test hooks: environment variables that change what the suite does —
 * failpoints (CNI_TS_KILL_AT), the tuning allowlist's path, the native addon
 * directory, the iptables backend. A caller's environment must not reach
 * them in a production install, so the shipped binary is built with
 * `__TEST_HOOKS__ = false` (esbuild then drops every read) and only the test
 * build of the same source, or code run from source (vitest), honours them.
 */
declare const __TEST_HOOKS__: boolean | undefined;

export const TEST_HOOKS: boolean = typeof __TEST_HOOKS__ === 'boolean' ? __TEST_HOOKS__ : true;

export type TestHook = 'CNI_TS_KILL_AT' | 'CNI_TS_TUNING_ALLOWLIST' | 'CNI_TS_NATIVE_DIR' | 'CNI_TS_IPTABLES' | 'CNI_TS_WARMUP';

/** The hook's value in a test build; always undefined in the shipped binary. */
export function testHook(name: TestHook): string | undefined {
  return TEST_HOOKS ? process.env[name] : undefined;
}
