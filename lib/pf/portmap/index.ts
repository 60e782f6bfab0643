import type { Backend } from '../backend.js';
import type { PortMapping } from '../../../plugins/portmap/config.js';

/**
 * Port forwarding (portmap's concern), in CNI terms: publish a container's
 * ports on the host, check they are published, withdraw them, and collect
 * the leftovers of containers a runtime no longer knows. One implementation
 * per backend, each in the reference plugin's own layout for that backend
 * (rules.ts): iptables.ts (nat chains CNI-HOSTPORT-*, CNI-DN-<hash>) and
 * nftables.ts (tables ip/ip6 cni_hostport), so a host running the
 * reference portmap and ours side by side, or switching from one to the
 * other, keeps working: either one's DEL removes what the other's ADD made.
 */
export interface PortmapParams {
  network: string;
  containerId: string;
  /** The container's address (with its prefix, e.g. 10.88.0.2/16) in each family it has one. */
  addresses: Map<4 | 6, string>;
  mappings: PortMapping[];
  snat: boolean;
  masqAll: boolean;
  markMasqBit: number;
  /** iptables only (the config refuses it with nftables). */
  externalSetMarkChain?: string;
  conditionsV4: string[];
  conditionsV6: string[];
}

export interface PortForwarding {
  readonly backend: Backend;
  /** ADD: publishes the mappings in every family of `addresses`, replacing whatever this container had there. */
  forward(p: PortmapParams): Promise<void>;
  /** CHECK: fails with code 115 naming the first missing rule. */
  check(p: PortmapParams): Promise<void>;
  /** DEL: removes everything of this container; nothing there is success. Needs neither addresses nor the namespace. */
  unforward(network: string, containerId: string): Promise<void>;
  /** GC: removes this network's rules of containers not in `keep` (container ids); never another network's. */
  gc(network: string, keep: ReadonlySet<string>): Promise<void>;
}

/** The implementation for a backend (loaded on demand: a call loads only the one it uses). */
export async function portForwarding(backend: Backend): Promise<PortForwarding> {
  if (backend === 'nftables') return (await import('./nftables.js')).nftablesPortForwarding;
  return (await import('./iptables.js')).iptablesPortForwarding;
}
