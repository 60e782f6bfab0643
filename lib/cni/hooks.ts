/**
 * Test hooks: environment variables that change what the suite does —
 * failpoints (CNI_TS_KILL_AT), the tuning allowlist's path, the native addon
 * directory, the iptables backend, the wire capture (CNI_TS_WIRE_CAPTURE). A caller's environment must not reach
 * them in a production install, so the shipped binary is built with
 * `__TEST_HOOKS__ = false` (esbuild folds `testHook` to `return undefined`,
 * and scripts/build.mjs fails the build if a hook is still read) and only
 * the test build of the same source (.build/test-bin/, `--test`), or code
 * run from source (vitest), honours them.
 *
 * (The build's V8 warm-up is not a hook: the trainer asks for it with a
 * global no caller of the binary can set, see src/main.ts.)
 */
declare const __TEST_HOOKS__: boolean | undefined;

export const TEST_HOOKS: boolean = typeof __TEST_HOOKS__ === 'boolean' ? __TEST_HOOKS__ : true;

/**
 * CNI_TS_WIRE_CAPTURE=1 (lib/netlink/rtnl.ts): the kernel's EOPNOTSUPP for
 * bridge VLAN filtering and port VLANs counts as done, so that on a kernel
 * without the feature a real ADD still sends every request the wire test
 * (test/integration/netlink-wire.test.ts) compares with iproute2's. It exists
 * only to capture requests; that test asserts bytes, never function.
 */
export type TestHook = 'CNI_TS_KILL_AT' | 'CNI_TS_TUNING_ALLOWLIST' | 'CNI_TS_NATIVE_DIR' | 'CNI_TS_IPTABLES' | 'CNI_TS_WIRE_CAPTURE';

/** The hook's value in a test build; always undefined in the shipped binary. */
export function testHook(name: TestHook): string | undefined {
  // Written against the define itself (not TEST_HOOKS) so that esbuild drops the read.
  if (typeof __TEST_HOOKS__ === 'boolean' && !__TEST_HOOKS__) return undefined;
  return process.env[name];
}
