import { MODE } from './mode.js';
import { FULL } from './sample.js';

/**
 * The packet-filter backends the traffic tests run on (lib/pf/backend.ts).
 * A test that sends real traffic through rules runs once per backend:
 * `describe.each(BACKENDS)(…)`.
 */
export const BACKENDS = ['iptables', 'nftables'] as const;
export type TestBackend = (typeof BACKENDS)[number];

/**
 * The backends of the long suites (crash, scale). Their nftables runs go
 * through the same plugin code in both modes, so `make test` runs them in
 * its exec pass only (the engine pass keeps iptables, which exercises the
 * engine as before); `make test-full` runs both backends in both modes.
 */
export const LONG_SUITE_BACKENDS: readonly TestBackend[] = FULL || MODE === 'exec' ? BACKENDS : ['iptables'];
