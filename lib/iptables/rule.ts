import { canonicalNetwork, formatIP, parseIP } from '../ip/index.js';
import type { Rule } from './index.js';

/**
 * Builds rules in iptables-save's normal form (addresses with their prefix,
 * host bits cleared; `-m tcp`/`-m udp` before single ports, `-m multiport`
 * for lists and ranges; options in the order save prints them), so a rule we
 * build compares equal to the same rule read back, on nft and legacy alike.
 */
export interface RuleSpec {
  src?: string;
  notSrc?: boolean;
  dst?: string;
  notDst?: boolean;
  in?: string;
  notIn?: boolean;
  out?: string;
  notOut?: boolean;
  proto?: 'tcp' | 'udp' | 'icmp' | 'icmpv6';
  /** A port, `a:b`, or a comma list (then multiport). */
  sport?: string;
  dport?: string;
  ctstate?: string;
  comment?: string;
  jump: string;
}

/** `10.0.0.5` → `10.0.0.5/32`, `10.0.0.5/24` → `10.0.0.0/24`. */
export function addr(a: string): string {
  if (a.includes('/')) return canonicalNetwork(a);
  const { family, ip } = parseIP(a);
  return `${formatIP(family, ip)}/${family === 4 ? 32 : 128}`;
}

const isMulti = (p: string) => p.includes(',') || p.includes(':');

export function rule(chain: string, r: RuleSpec): Rule {
  const a: string[] = [];
  if (r.src) a.push(...(r.notSrc ? ['!'] : []), '-s', addr(r.src));
  if (r.dst) a.push(...(r.notDst ? ['!'] : []), '-d', addr(r.dst));
  if (r.in) a.push(...(r.notIn ? ['!'] : []), '-i', r.in);
  if (r.out) a.push(...(r.notOut ? ['!'] : []), '-o', r.out);
  if (r.proto) a.push('-p', r.proto);
  const ports = r.sport !== undefined || r.dport !== undefined;
  if (r.proto === 'tcp' || r.proto === 'udp') {
    const multi = (r.sport !== undefined && isMulti(r.sport)) || (r.dport !== undefined && isMulti(r.dport));
    if (multi) {
      a.push('-m', 'multiport');
      if (r.sport !== undefined) a.push('--sports', r.sport);
      if (r.dport !== undefined) a.push('--dports', r.dport);
    } else {
      a.push('-m', r.proto);
      if (r.sport !== undefined) a.push('--sport', r.sport);
      if (r.dport !== undefined) a.push('--dport', r.dport);
    }
  } else if (ports) {
    throw new Error('ports need protocol tcp or udp');
  }
  if (r.ctstate) a.push('-m', 'conntrack', '--ctstate', r.ctstate);
  if (r.comment) a.push('-m', 'comment', '--comment', r.comment);
  a.push('-j', r.jump);
  return { chain, spec: a };
}

/** The value of an option in a rule (`-s`, `-d`, ...), if present. */
export function option(r: Rule, flag: string): string | undefined {
  const i = r.spec.indexOf(flag);
  return i >= 0 ? r.spec[i + 1] : undefined;
}

/** Validates one port, `a:b` range or comma list, returning how many ports multiport counts (a range is two). */
export function portCount(ports: string): number {
  const parts = ports.split(',');
  let n = 0;
  for (const p of parts) {
    const m = /^(\d{1,5})(?::(\d{1,5}))?$/.exec(p);
    if (!m) throw new Error(`invalid port "${p}"`);
    const lo = Number(m[1]);
    const hi = m[2] === undefined ? lo : Number(m[2]);
    if (lo < 1 || hi > 65535 || lo > hi) throw new Error(`invalid port "${p}"`);
    n += m[2] === undefined ? 1 : 2;
  }
  return n;
}
