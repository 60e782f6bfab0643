import type { Backend } from '../backend.js';

/**
 * Masquerade (bridge's `ipMasq`): traffic from a container's addresses to
 * anywhere outside the address's own subnet leaves with the host's address.
 * One implementation per backend, each the reference plugins' layout for
 * that backend, so either plugin's DEL removes the other's ADD:
 *  - iptables (./iptables.ts): a chain `CNI-<hash>` per container in `nat`,
 *    jumped to from POSTROUTING, commented `name: "<net>" id: "<id>"`;
 *  - nftables (./nftables.ts): table `inet cni_plugins_masquerade`, one rule
 *    per address in chain `masq_checks`, commented with a hash of
 *    (network, ifname, container id) first (layout diagram there).
 * The plugin speaks CNI only: which container, which addresses.
 */
export interface MasqOwner {
  network: string;
  containerId: string;
  ifname: string;
}

/** What DEL knows about the container's addresses (nothing, after the namespace is gone). */
export interface MasqKnown {
  /** Families its addresses may be in (iptables reads one table per family). */
  families: (4 | 6)[];
  /** Its addresses (`ip/prefix`), when prevResult or the interface still had them. */
  cidrs: string[];
}

/** Work a backend starts before the addresses are known (iptables pre-starts its restore); released after ADD either way. */
export interface MasqPrepared {
  release(): Promise<void>;
}

export interface Masquerade {
  readonly backend: Backend;
  /** Called first thing in ADD, so the tool's start overlaps the netlink and IPAM work. */
  prepare(): MasqPrepared;
  /** ADD: one transaction (per family for iptables) masquerading each address to outside its subnet; a re-ADD replaces. */
  add(owner: MasqOwner, cidrs: string[], prepared?: MasqPrepared): Promise<void>;
  /** DEL: removes the container's rules; fine when none exist (idempotent). */
  del(owner: MasqOwner, known: MasqKnown): Promise<void>;
  /** CHECK: throws CheckFailed (lib/pf/check.ts) naming the first missing rule. */
  check(owner: MasqOwner, cidrs: string[]): Promise<void>;
  /** GC: removes this network's rules whose attachment is not valid. */
  gc(network: string, valid: { containerID: string; ifname: string }[], families: (4 | 6)[]): Promise<void>;
}

/** The masquerade implementation of a backend (loaded on demand: a call uses one or two). */
export async function masquerade(backend: Backend): Promise<Masquerade> {
  if (backend === 'nftables') return new (await import('./nftables.js')).NftMasquerade();
  return new (await import('./iptables.js')).IptablesMasquerade();
}
