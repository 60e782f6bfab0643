/**
 * The packet-filter backends the traffic tests run on (lib/pf/backend.ts).
 * A test that sends real traffic through rules runs once per backend:
 * `describe.each(BACKENDS)(…)`.
 */
export const BACKENDS = ['iptables', 'nftables'] as const;
export type TestBackend = (typeof BACKENDS)[number];
