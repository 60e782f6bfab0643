import type { Rule } from '../../lib/iptables/index.js';
import { chainName } from '../../lib/iptables/names.js';
import { addr } from '../../lib/iptables/rule.js';
import { parseIP } from '../../lib/ip/index.js';
import type { PortMapping } from './config.js';

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
