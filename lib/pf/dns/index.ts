import type { Backend } from '../backend.js';
import type { DropMode } from '../coexist.js';

/**
 * DNS port openings (dnsname): the host accepts DNS (udp and tcp port 53)
 * arriving from a network's bridge, for the dnsmasq that serves the
 * network's names there. Kept while any container of the network remains;
 * tagged with the network, so a teardown finds them without state.
 *  - iptables (./iptables.ts): two rules at the top of `filter` INPUT,
 *    `-i <bridge> -p udp|tcp --dport 53 -m comment --comment "cni-ts
 *    dnsname: <network>" -j ACCEPT`, per family of the bridge address;
 *  - nftables (./nftables.ts): table `inet cni_ts_dns`, one rule over a set
 *    of bridges, an element per network (layout diagram there). On a host
 *    whose iptables INPUT policy is DROP it also opens the network's port 53
 *    on the iptables side (../coexist.ts), or refuses.
 */
export interface DnsOpening {
  network: string;
  bridge: string;
  /** The family of the bridge address dnsmasq answers on (iptables writes one table per family). */
  family: 4 | 6;
  /** nftables on a host whose iptables INPUT policy is DROP: open port 53 from the bridge there too (default), or refuse. */
  iptablesInputDrop?: DropMode;
}

export interface DnsPorts {
  readonly backend: Backend;
  /** Opens port 53 from the bridge for the network; idempotent. */
  open(o: DnsOpening): Promise<void>;
  /**
   * A later ADD on the network (the opening is there): makes sure of what
   * may have changed since (nftables: the iptables side, when its INPUT
   * policy has become DROP); iptables: nothing.
   */
  refresh(o: DnsOpening): Promise<void>;
  /** Closes exactly this opening (a failed ADD's undo); fine when it is not there. */
  close(o: DnsOpening): Promise<void>;
  /** Closes every opening of the network (its last container went), found by its tag; fine when none is there. */
  closeNetwork(network: string, families: (4 | 6)[]): Promise<void>;
  /** CHECK: throws CheckFailed (lib/pf/check.ts) when the opening is missing. */
  check(o: DnsOpening): Promise<void>;
}

/** The tag an opening carries (rule or element comment): the network. */
export const dnsTag = (network: string) => `cni-ts dnsname: ${network}`;

/** The implementation of a backend (loaded on demand). */
export async function dnsPorts(backend: Backend): Promise<DnsPorts> {
  if (backend === 'nftables') return new (await import('./nftables.js')).NftDnsPorts();
  return new (await import('./iptables.js')).IptablesDnsPorts();
}
