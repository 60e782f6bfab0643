import type { Backend } from '../backend.js';
import type { ForwardDropMode } from '../coexist.js';
import type { AccessChain } from '../../../plugins/aos-firewall/state.js';

/**
 * The Aos instance firewall (aos-firewall): per service instance, which
 * connections may reach it (inputAccess, the host), which it may open
 * (allowPublicConnections, outputAccess, the host) and no ICMP out of it.
 * The instance is described by its state-file entry (plugins/aos-firewall/
 * state.ts), so DEL and CHECK need nothing else. Why each rule is there:
 * docs/aos-firewall.md.
 *  - iptables (./iptables.ts, layout in ./rules.ts): the original plugin's
 *    chains in `filter` (AOS-FORWARD, AOS-FORWARD-PORT, AOS-OUTPUT, a chain
 *    `CNI-<hash>` per instance), so either plugin takes over from the other
 *    and the Aos 9.0 monitor sees what it expects; the default.
 *  - nftables (./nftables.ts): table `inet cni_ts_aos`, the same decisions
 *    with a chain pair per instance reached through verdict maps. On a host
 *    whose iptables FORWARD policy is DROP it also opens the instances'
 *    subnet on the iptables side (../coexist.ts), one opening per subnet.
 */
export type AosInstance = AccessChain;

/** What a call knows beyond the instance: its network and the other instances (the state file). */
export interface AosNetwork {
  /** The CNI network (the config's `name`): named in an iptables-side opening's comment. */
  name: string;
  /** nftables on a host whose iptables FORWARD policy is DROP: open the instance's subnet there, or refuse. */
  iptablesForwardDrop: ForwardDropMode;
  /** Whether another instance of the state file (not this call's) is in `subnet` (`a.b.c.d/p`, canonical). */
  subnetInUse(subnet: string): boolean;
}

export interface AosFirewall {
  readonly backend: Backend;
  /**
   * Runs `fn` holding what this backend needs held across the state file's
   * lock: the namespace's iptables lock, taken before the state file's (the
   * iptables backend writes iptables; the nftables one may open a subnet
   * there, and must take the two locks in the same order).
   */
  locked<T>(fn: () => Promise<T>): Promise<T>;
  /** ADD: the instance's rules, replacing `old`'s (the entry it had before, when any); one transaction. */
  add(entry: AosInstance, old: AosInstance | undefined, net: AosNetwork): Promise<void>;
  /**
   * DEL: everything of the instance; fine when nothing is there. Without
   * `entry` (the state file lost it) what the instance chain `chain` (and,
   * where a backend tags rules with it, the instance's `uuid`) still
   * identifies is removed. An iptables-side opening goes with its subnet's
   * last instance (without `entry`, every opening of a subnet no longer used).
   */
  del(entry: AosInstance | undefined, chain: string, uuid: string, net: AosNetwork): Promise<void>;
  /** CHECK: throws CheckFailed (lib/pf/check.ts) naming the first missing rule. */
  check(entry: AosInstance): Promise<void>;
}

/** The implementation of a backend (loaded on demand). */
export async function aosFirewall(backend: Backend): Promise<AosFirewall> {
  if (backend === 'nftables') return new (await import('./nftables.js')).NftAosFirewall();
  return new (await import('./iptables.js')).IptablesAosFirewall();
}

/** Runs `fn` inside the `locked` of every implementation given, in order (the iptables lock first). */
export function lockedAll<T>(impls: AosFirewall[], fn: () => Promise<T>): Promise<T> {
  const sorted = [...impls].sort((a, b) => (a.backend === 'iptables' ? -1 : b.backend === 'iptables' ? 1 : 0));
  return sorted.reduceRight<() => Promise<T>>((inner, impl) => () => impl.locked(inner), fn)();
}
