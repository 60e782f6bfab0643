import type { Rule } from '../../iptables/index.js';
import { chainName } from '../../iptables/names.js';
import { addr } from '../../iptables/rule.js';
import { createHash } from 'node:crypto';
import { canonicalIP, canonicalNetwork, parseIP } from '../../ip/index.js';
import type { PortMapping } from '../../../plugins/portmap/config.js';

/**
 * The reference portmap's nat-table layout, each rule in iptables-save's
 * normal form so that what we build compares equal to what we read back:
 *
 *   PREROUTING, OUTPUT   -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
 *   CNI-HOSTPORT-DNAT    [conditions] -p P -m comment --comment "dnat name: …" -m multiport --dports … -j CNI-DN-<hash>
 *   CNI-DN-<hash>        per mapping: hairpin mark, localhost mark (v4), DNAT
 *   CNI-HOSTPORT-SETMARK -j MARK --set-xmark <bit>/<bit>
 *   POSTROUTING (first)  -j CNI-HOSTPORT-MASQ;  CNI-HOSTPORT-MASQ  -m mark --mark <bit>/<bit> -j MASQUERADE
 */
export const TOP_DNAT = 'CNI-HOSTPORT-DNAT';
export const SETMARK = 'CNI-HOSTPORT-SETMARK';
export const MASQ = 'CNI-HOSTPORT-MASQ';
export const DEFAULT_MARK_BIT = 13;
/** multiport takes at most 15 ports per rule. */
const MULTIPORT_MAX = 15;

export const dnatChain = (network: string, containerId: string) => chainName(network, containerId, 'CNI-DN-');

export const topJumps = (): Rule[] =>
  ['PREROUTING', 'OUTPUT'].map((chain) => ({ chain, spec: ['-m', 'addrtype', '--dst-type', 'LOCAL', '-j', TOP_DNAT] }));

const markDef = (bit: number) => {
  const v = `0x${(2 ** bit).toString(16)}`;
  return `${v}/${v}`;
};
export const setMarkRule = (bit: number): Rule => ({ chain: SETMARK, spec: ['-m', 'comment', '--comment', 'CNI portfwd masquerade mark', '-j', 'MARK', '--set-xmark', markDef(bit)] });
export const masqRule = (bit: number): Rule => ({ chain: MASQ, spec: ['-m', 'mark', '--mark', markDef(bit), '-j', 'MASQUERADE'] });
export const masqJump = (): Rule => ({ chain: 'POSTROUTING', spec: ['-m', 'comment', '--comment', 'CNI portfwd requiring masquerade', '-j', MASQ] });

/** iptables keeps at most 255 bytes of a comment. */
export function dnatComment(network: string, containerId: string): string {
  const c = `dnat name: "${network}" id: "${containerId}"`;
  return Buffer.byteLength(c) <= 255 ? c : `${Buffer.from(c).subarray(0, 252).toString('utf8').replace(/\uFFFD+$/, '')}...`;
}

export interface DnatParams {
  network: string;
  containerId: string;
  family: 4 | 6;
  /** The container's address with its prefix, e.g. 10.88.0.2/16. */
  container: string;
  mappings: PortMapping[];
  snat: boolean;
  masqAll: boolean;
  setMarkChain: string;
  conditions: string[];
}

/** The mappings that apply to a family: a hostIP of the other family is skipped. */
export function mappingsFor(family: 4 | 6, mappings: PortMapping[]): PortMapping[] {
  return mappings.filter((m) => !m.hostIP || parseIP(m.hostIP).family === family);
}

const unspecified = (ip: string) => parseIP(ip).ip === 0n;

/** The per-container chain's rules and the entry rules that jump to it. */
export function dnatRules(p: DnatParams): { chain: string; entries: Rule[]; rules: Rule[] } {
  const chain = dnatChain(p.network, p.containerId);
  const mappings = mappingsFor(p.family, p.mappings);
  const comment = dnatComment(p.network, p.containerId);
  const entries: Rule[] = [];
  const byProto = new Map<string, number[]>();
  for (const m of mappings) byProto.set(m.protocol, [...(byProto.get(m.protocol) ?? []), m.hostPort]);
  for (const proto of [...byProto.keys()].sort()) {
    const ports = [...new Set(byProto.get(proto))];
    for (let i = 0; i < ports.length; i += MULTIPORT_MAX) {
      entries.push({ chain: TOP_DNAT, spec: [...p.conditions, '-p', proto, '-m', 'comment', '--comment', comment, '-m', 'multiport', '--dports', ports.slice(i, i + MULTIPORT_MAX).join(','), '-j', chain] });
    }
  }
  const [ip] = p.container.split('/');
  const net = addr(p.container);
  const rules: Rule[] = [];
  for (const m of mappings) {
    const dst = m.hostIP && !unspecified(m.hostIP) ? ['-d', addr(m.hostIP)] : [];
    const match = (src: string[]) => [...src, ...dst, '-p', m.protocol, '-m', m.protocol, '--dport', String(m.hostPort)];
    if (p.snat) {
      // Hairpin (the container reaching its own published port) and, with
      // masqAll, every source: masqueraded so replies come back through the host.
      rules.push({ chain, spec: [...match(p.masqAll ? [] : ['-s', net]), '-j', p.setMarkChain] });
      // localhost → container needs the source rewritten (and route_localnet).
      if (p.family === 4 && !p.masqAll) rules.push({ chain, spec: [...match(['-s', '127.0.0.1/32']), '-j', p.setMarkChain] });
    }
    const to = p.family === 6 ? `[${ip}]:${m.containerPort}` : `${ip}:${m.containerPort}`;
    rules.push({ chain, spec: [...match([]), '-j', 'DNAT', '--to-destination', to] });
  }
  return { chain, entries, rules };
}

/*
 * The reference portmap's nftables layout (containernetworking/plugins
 * plugins/meta/portmap, backend "nftables"), one table per family, written
 * so that either implementation's DEL removes the other's ADD:
 *
 *   table ip cni_hostport  (and ip6 cni_hostport)     comment "CNI portmap plugin"
 *   ├─ prerouting    nat hook prerouting  prio -100   [conditions] fib daddr type local jump hostports_all
 *   ├─ output        nat hook output      prio -100   [conditions] fib daddr type local jump hostports_all
 *   ├─ hostports_all                                  jump hostip_hostports ; jump hostports
 *   ├─ hostip_hostports                               (empty: kept for the reference's upgrades)
 *   ├─ hostports     per mapping   [ip daddr <hostIP>] <proto> dport <hostPort> dnat to <ip>:<port>   comment "<containerID>"
 *   ├─ masquerading  nat hook postrouting prio 100 (with snat)
 *   │                hairpin       ip saddr <container subnet> ip daddr <ip> ct status dnat masquerade comment "<containerID>"
 *   │                localhost(v4) ip saddr 127.0.0.1 ip daddr <ip> ct status dnat masquerade          comment "<containerID>"
 *   │                masqAll       ip daddr <ip> ct status dnat masquerade                             comment "<containerID>"
 *   └─ cni_ts_owners (ours; no packet enters it)      return comment "net=<network> id=<containerID>"
 *
 * Every rule of a container carries the container id as its whole comment,
 * as the reference writes it: DEL (ours or the reference's) deletes the
 * rules of hostports, hostip_hostports and masquerading whose comment is the
 * id. The prerouting/output rules are the table's, rewritten by every ADD
 * with that ADD's conditions (the reference's "last ADD wins").
 * Differences from the reference's rules, same chains and comments: the
 * hairpin masquerade matches the container's subnet, not only its own
 * address (a neighbour on the bridge reaching the published port gets its
 * replies back through the host, as with the iptables layout's `-s
 * <subnet>` mark), and every masquerade requires `ct status dnat` (only
 * published-port traffic is rewritten, as the iptables layout's marks
 * do, never bridged neighbour traffic seen through br_netfilter).
 * The reference records no network; GC needs one, so ADD also writes an
 * owner record in a chain of ours (no packet ever jumps there), which
 * neither the reference's ADD nor its DEL looks at.
 */
export const NFT_TABLE = 'cni_hostport';
export const NFT_TABLE_COMMENT = 'CNI portmap plugin';
export const NFT_HOSTPORTS = 'hostports';
export const NFT_HOSTIP_HOSTPORTS = 'hostip_hostports';
export const NFT_HOSTPORTS_ALL = 'hostports_all';
export const NFT_MASQUERADING = 'masquerading';
export const NFT_OWNERS = 'cni_ts_owners';
/** The chains whose rules carry a container id (the reference's DEL looks in these three). */
export const NFT_CONTAINER_CHAINS = [NFT_HOSTPORTS, NFT_HOSTIP_HOSTPORTS, NFT_MASQUERADING] as const;

export const nftFamily = (f: 4 | 6) => (f === 4 ? 'ip' : 'ip6');

/** nft keeps 128 bytes of a comment: a long network or id is recorded as `#` + 32 hex of its sha256. */
function fitted(value: string, max: number): string {
  return Buffer.byteLength(value) <= max ? value : `#${createHash('sha256').update(value).digest('hex').slice(0, 32)}`;
}
/** The container id as compared with an owner record. */
export const recordedId = (containerId: string) => fitted(containerId, 76);
/** The owner record of (network, container): at most 4 + 40 + 4 + 76 = 124 bytes. */
export const nftOwnerTag = (network: string, containerId: string) => `net=${fitted(network, 40)} id=${recordedId(containerId)}`;
export function parseNftOwnerTag(tag: string | undefined): { network: string; id: string } | undefined {
  const m = /^net=(\S+) id=(\S+)$/.exec(tag ?? '');
  return m ? { network: m[1], id: m[2] } : undefined;
}
export const recordedNetworkOfTag = (network: string) => fitted(network, 40);

/** The table's own structure, as the reference's ADD writes it (idempotent: add, flush, re-add). */
export function nftBaseLines(family: 4 | 6, conditions: string[], snat: boolean): string[] {
  const t = `${nftFamily(family)} ${NFT_TABLE}`;
  const cond = conditions.length ? `${conditions.join(' ')} ` : '';
  return [
    `add table ${t} { comment "${NFT_TABLE_COMMENT}" ; }`,
    `add chain ${t} ${NFT_HOSTPORTS}`,
    `add chain ${t} ${NFT_HOSTIP_HOSTPORTS}`,
    `add chain ${t} ${NFT_HOSTPORTS_ALL}`,
    `flush chain ${t} ${NFT_HOSTPORTS_ALL}`,
    `add rule ${t} ${NFT_HOSTPORTS_ALL} jump ${NFT_HOSTIP_HOSTPORTS}`,
    `add rule ${t} ${NFT_HOSTPORTS_ALL} jump ${NFT_HOSTPORTS}`,
    `add chain ${t} prerouting { type nat hook prerouting priority -100 ; }`,
    `flush chain ${t} prerouting`,
    `add rule ${t} prerouting ${cond}fib daddr type local jump ${NFT_HOSTPORTS_ALL}`,
    `add chain ${t} output { type nat hook output priority -100 ; }`,
    `flush chain ${t} output`,
    `add rule ${t} output ${cond}fib daddr type local jump ${NFT_HOSTPORTS_ALL}`,
    ...(snat ? [`add chain ${t} ${NFT_MASQUERADING} { type nat hook postrouting priority 100 ; }`] : []),
    `add chain ${t} ${NFT_OWNERS}`,
  ];
}

export interface NftContainerRule {
  chain: string;
  /** The rule as `nft list` prints it back, without its comment. */
  rule: string;
}

/** One container's rules for one family (their comment is the container id). */
export function nftContainerRules(p: Omit<DnatParams, 'setMarkChain' | 'conditions'>): NftContainerRule[] {
  const ipx = nftFamily(p.family);
  const [ip] = p.container.split('/');
  const cip = canonicalIP(ip);
  const out: NftContainerRule[] = [];
  for (const m of mappingsFor(p.family, p.mappings)) {
    const dst = m.hostIP && !unspecified(m.hostIP) ? `${ipx} daddr ${canonicalIP(m.hostIP)} ` : '';
    const to = p.family === 6 ? `[${cip}]:${m.containerPort}` : `${cip}:${m.containerPort}`;
    out.push({ chain: NFT_HOSTPORTS, rule: `${dst}${m.protocol} dport ${m.hostPort} dnat to ${to}` });
  }
  if (p.snat && out.length > 0) {
    if (p.masqAll) {
      out.push({ chain: NFT_MASQUERADING, rule: `${ipx} daddr ${cip} ct status dnat masquerade` });
    } else {
      const net = canonicalNetwork(p.container).replace(p.family === 4 ? /\/32$/ : /\/128$/, ''); // nft prints a host without its prefix
      out.push({ chain: NFT_MASQUERADING, rule: `${ipx} saddr ${net} ${ipx} daddr ${cip} ct status dnat masquerade` });
      if (p.family === 4) out.push({ chain: NFT_MASQUERADING, rule: `${ipx} saddr 127.0.0.1 ${ipx} daddr ${cip} ct status dnat masquerade` });
    }
  }
  return out;
}
