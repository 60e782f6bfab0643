import type { Backend } from '../backend.js';
import type { ForwardDropMode } from '../coexist.js';

/**
 * Forward filtering and isolation (the `firewall` plugin): a container's
 * addresses may leave through the host's forward path and get their replies
 * back; an operator's admin chain is consulted first; `ingressPolicy`
 * isolates bridges from each other (`same-bridge`) or also within themselves
 * (`isolated`). One implementation per backend:
 *  - iptables (./iptables.ts): the reference plugin's chains rule for rule
 *    (./rules.ts: CNI-FORWARD, the admin chain, CNI-ISOLATION-STAGE-1/2), so
 *    rules made by either plugin are checked and removed by the other;
 *  - nftables (./nftables.ts): our own layout, table `inet cni_ts_firewall`
 *    (the reference has no nftables firewall): one base chain with fixed
 *    rules, the addresses as set elements commented with their owner
 *    (diagram there). On a host whose iptables FORWARD policy is DROP it
 *    also opens the network on the iptables side (../coexist.ts).
 * The plugin speaks CNI only: which container, which addresses, which policy.
 */
export interface ForwardOwner {
  network: string;
  containerId: string;
  ifname: string;
}

export type IngressPolicy = 'same-bridge' | 'isolated';

export interface ForwardRequest {
  owner: ForwardOwner;
  /** The container's addresses as prevResult has them (`ip/prefix`). */
  cidrs: string[];
  /** The operators' chain consulted before the accepts (never flushed by us). */
  adminChain: string;
  /** With a policy, the bridge (prevResult's first interface). */
  isolation?: { policy: IngressPolicy; bridge: string };
  /** What the nftables backend does when the iptables FORWARD policy is DROP. */
  iptablesForwardDrop: ForwardDropMode;
}

export interface ForwardFilter {
  readonly backend: Backend;
  /** ADD: lets the addresses through (one transaction; per family for iptables). Idempotent. */
  add(req: ForwardRequest): Promise<void>;
  /**
   * DEL: removes the container's accepts (isolation rules stay: other
   * containers of the bridge need them, as with the reference). iptables
   * knows them by address only (none without prevResult, as the
   * reference); nftables by owner. Idempotent.
   */
  del(owner: ForwardOwner, cidrs: string[]): Promise<void>;
  /** CHECK: throws CheckFailed (lib/pf/check.ts) naming the first missing chain, rule or element. */
  check(req: ForwardRequest): Promise<void>;
}

/** The forward-filter implementation of a backend (loaded on demand). */
export async function forwardFilter(backend: Backend): Promise<ForwardFilter> {
  if (backend === 'nftables') return new (await import('./nftables.js')).NftForward();
  return new (await import('./iptables.js')).IptablesForward();
}
