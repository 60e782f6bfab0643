import { createHash } from 'node:crypto';
import { withIptablesLock } from '../../iptables/index.js';
import { nftApply, nftListTable, nftQuote, nftTryApply, type NftTable } from '../../nft/index.js';
import { requireRules, type Expected } from '../check.js';
import type { AccountedInstance, Collector, Direction, InstanceAccounting, Reading, Snapshot, Swap } from './index.js';
import { AOS_LOCAL_RANGES, chainsFor, INSTANCE_CHAIN, nftOwnerComment, nftStaleOwned, skipRangesV4, SYSTEM_IN, SYSTEM_OUT } from './layout.js';

/**
 * Accounting on nftables, a layout of our own. The Aos names stay (the
 * counters are AOS_<h>_IN/OUT, ./layout.ts), but instead of two chains per
 * instance that every forwarded packet walks through, the instance's
 * address selects its counter in a map — one lookup per packet whatever
 * the number of instances, and the monitor reads every counter with one
 * `nft -j list table`.
 *
 *   table inet cni_ts_accounting
 *   ├─ counter AOS_<h>_IN  { comment "<owner>" }      one per instance and direction; the owner
 *   ├─ counter AOS_<h>_OUT { comment "<owner>" }      record (network, container, ifname) is GC's
 *   ├─ map in_<g>  { type ipv4_addr : counter }       instance address → its IN counter
 *   ├─ map out_<g> { type ipv4_addr : counter }       instance address → its OUT counter
 *   ├─ set blocked_in_<g>, blocked_out_<g>            addresses the monitor blocks (over their limit)
 *   ├─ chain acct_<g>   type filter hook forward priority filter - 1; policy accept
 *   │    ip daddr @blocked_in_<g> ip saddr != { <skip> } drop comment "blocked download"
 *   │    ip saddr @blocked_out_<g> ip daddr != { <skip> } drop comment "blocked upload"
 *   │    ip saddr != { <skip> } counter name ip daddr map @in_<g> comment "download"
 *   │    ip daddr != { <skip> } counter name ip saddr map @out_<g> comment "upload"
 *   ├─ chain system_in  type filter hook input priority filter - 1     ┐ the monitor's, for the
 *   │    ip saddr != { <local ranges> } counter name "AOS_SYSTEM_IN"    │ host's own traffic
 *   └─ chain system_out type filter hook output priority filter - 1    │ (cni-manager traffic/serve,
 *        ip daddr != { <local ranges> } counter name "AOS_SYSTEM_OUT"  ┘  removed by traffic-off)
 *
 *   <g>  = `aos` for the Aos local ranges (the default), else 8 hex digits of
 *          sha256 of the instance's skip ranges: instances with the same ranges
 *          share one chain, maps and sets; the chain is written again by every ADD.
 *   <skip> = the skip ranges (IPv4); the match is left out when there are none.
 *
 * Priority filter - 1: before the filter chains of the forward hook (iptables'
 * FORWARD, the firewalls' tables), as the Aos jumps sit at position 1 of FORWARD.
 *
 * Calls: ADD is one `nft -f -` (counters created with `create`, so a re-ADD
 * or an address still mapped to another counter fails it); then, under the
 * per-namespace lock, one read and one transaction replacing what was there.
 * DEL with the addresses known is one transaction that needs no read (every
 * delete preceded by an add of the same thing, as nft 1.0.6 has no
 * `destroy`); without them, or when that fails, one read and one transaction
 * removing the elements that point at the instance's counters. Blocking:
 * the address joins blocked_*_<g> (its traffic dropped before the counting
 * rule), and the counter is made again (from zero) both when blocked and
 * when unblocked, as the iptables monitor's rule swap does.
 */
export const TABLE = 'cni_ts_accounting';
export const FAMILY = 'inet';
const T = `${FAMILY} ${TABLE}`;
const PRIORITY = 'filter - 1';
const RULE_COMMENTS = { blockedIn: 'blocked download', blockedOut: 'blocked upload', in: 'download', out: 'upload' };

/** The group of a skip-range list (its maps, sets and chain share the suffix). */
export function groupOf(skip: readonly string[]): string {
  const v4 = skipRangesV4(skip).sort();
  const aos = [...AOS_LOCAL_RANGES].sort();
  if (v4.length === aos.length && v4.every((r, i) => r === aos[i])) return 'aos';
  return createHash('sha256').update(v4.join(',')).digest('hex').slice(0, 8);
}

const names = (g: string) => ({ chain: `acct_${g}`, in: `in_${g}`, out: `out_${g}`, blockedIn: `blocked_in_${g}`, blockedOut: `blocked_out_${g}` });
const notIn = (field: 'saddr' | 'daddr', skip: string[]) => (skip.length ? `ip ${field} != { ${skip.join(', ')} } ` : '');

/** The group's chain, maps and sets, declared idempotently; the chain flushed and written again. */
export function groupLines(skipRanges: readonly string[]): string[] {
  const g = groupOf(skipRanges);
  const n = names(g);
  const skip = skipRangesV4(skipRanges);
  return [
    `add table ${T}`,
    `add map ${T} ${n.in} { type ipv4_addr : counter; }`,
    `add map ${T} ${n.out} { type ipv4_addr : counter; }`,
    `add set ${T} ${n.blockedIn} { type ipv4_addr; }`,
    `add set ${T} ${n.blockedOut} { type ipv4_addr; }`,
    `add chain ${T} ${n.chain} { type filter hook forward priority ${PRIORITY}; policy accept; }`,
    `flush chain ${T} ${n.chain}`,
    `add rule ${T} ${n.chain} ip daddr @${n.blockedIn} ${notIn('saddr', skip)}drop comment ${nftQuote(RULE_COMMENTS.blockedIn)}`,
    `add rule ${T} ${n.chain} ip saddr @${n.blockedOut} ${notIn('daddr', skip)}drop comment ${nftQuote(RULE_COMMENTS.blockedOut)}`,
    `add rule ${T} ${n.chain} ${notIn('saddr', skip)}counter name ip daddr map @${n.in} comment ${nftQuote(RULE_COMMENTS.in)}`,
    `add rule ${T} ${n.chain} ${notIn('daddr', skip)}counter name ip saddr map @${n.out} comment ${nftQuote(RULE_COMMENTS.out)}`,
  ];
}

/** The listing, indexed: counters, map elements (both ways), blocked sets. */
class Index {
  readonly counters: NftTable['counters'];
  /** Map name → key → counter name (maps in_* and out_*). */
  readonly maps = new Map<string, Map<string, string>>();
  /** Set name → keys (sets blocked_*). */
  readonly sets = new Map<string, Set<string>>();

  constructor(readonly t: NftTable | undefined) {
    this.counters = t?.counters ?? new Map();
    for (const [name, elems] of t?.sets ?? []) {
      if (/^(in|out)_/.test(name)) {
        const m = new Map<string, string>();
        for (const e of elems) if (Array.isArray(e) && typeof e[0] === 'string' && typeof e[1] === 'string') m.set(e[0], e[1]);
        this.maps.set(name, m);
      } else if (name.startsWith('blocked_')) {
        this.sets.set(name, new Set(elems.filter((e): e is string => typeof e === 'string')));
      }
    }
  }

  /** Every (map, key) whose value is `counter`. */
  elementsOf(counter: string): { map: string; key: string }[] {
    const out: { map: string; key: string }[] = [];
    for (const [map, m] of this.maps) for (const [key, v] of m) if (v === counter) out.push({ map, key });
    return out;
  }

  /** Lines removing a counter: its map elements, their addresses from the group's blocked set, the counter. Returns the elements. */
  removeCounter(counter: string, lines: string[]): { map: string; key: string }[] {
    const elems = this.elementsOf(counter);
    for (const { map, key } of elems) {
      lines.push(`delete element ${T} ${map} { ${key} }`);
      const blocked = `blocked_${map}`;
      if (this.sets.get(blocked)?.has(key)) lines.push(`delete element ${T} ${blocked} { ${key} }`);
    }
    if (this.counters.has(counter)) lines.push(`delete counter ${T} ${counter}`);
    return elems;
  }
}

const read = async () => new Index(await nftListTable(FAMILY, TABLE));

/**
 * The instance's two counters with the owner record. `guarded`: the
 * transaction fails when they exist — nft 1.0.6 parses no block after
 * `create counter`, so a plain `create` guards and the counter is then
 * made again with its comment (a delete and an add in one transaction).
 */
function counterLines(inst: AccountedInstance, guarded: boolean): string[] {
  const c = chainsFor(inst.instanceId);
  const comment = nftQuote(nftOwnerComment(inst.owner));
  return [c.in, c.out].flatMap((name) => [
    ...(guarded ? [`create counter ${T} ${name}`, `delete counter ${T} ${name}`] : []),
    `add counter ${T} ${name} { comment ${comment}; }`,
  ]);
}

function elementLines(inst: AccountedInstance): string[] {
  const c = chainsFor(inst.instanceId);
  const n = names(groupOf(inst.skip));
  return inst.ips.flatMap((ip) => [`add element ${T} ${n.in} { ${ip} : "${c.in}" }`, `add element ${T} ${n.out} { ${ip} : "${c.out}" }`]);
}

/**
 * ADD's script when nothing of the instance exists: the group (written
 * again), the counters (guarded: a re-ADD fails it), a stale block of the
 * addresses cleared, the addresses mapped (an address still mapped to
 * another counter fails it). Exported for the tests, which apply it by hand.
 */
export function addScript(inst: AccountedInstance): string {
  const n = names(groupOf(inst.skip));
  const unblock = inst.ips.flatMap((ip) => [n.blockedIn, n.blockedOut].flatMap((s) => [`add element ${T} ${s} { ${ip} }`, `delete element ${T} ${s} { ${ip} }`]));
  return [...groupLines(inst.skip), ...counterLines(inst, true), ...unblock, ...elementLines(inst), ''].join('\n');
}

/**
 * DEL's script with the addresses known, needing no read: every delete
 * preceded by an add of the same thing (nft 1.0.6 has no `destroy`), and
 * nothing that makes the table (no table: it fails, and DEL reads).
 */
export function delScript(inst: AccountedInstance): string {
  const c = chainsFor(inst.instanceId);
  const n = names(groupOf(inst.skip));
  const lines = [`add counter ${T} ${c.in}`, `add counter ${T} ${c.out}`];
  for (const ip of inst.ips) {
    lines.push(`add element ${T} ${n.in} { ${ip} : "${c.in}" }`, `delete element ${T} ${n.in} { ${ip} }`);
    lines.push(`add element ${T} ${n.out} { ${ip} : "${c.out}" }`, `delete element ${T} ${n.out} { ${ip} }`);
    for (const s of [n.blockedIn, n.blockedOut]) lines.push(`add element ${T} ${s} { ${ip} }`, `delete element ${T} ${s} { ${ip} }`);
  }
  lines.push(`delete counter ${T} ${c.in}`, `delete counter ${T} ${c.out}`, '');
  return lines.join('\n');
}

/** Lines removing whatever holds the instance's counters or its addresses (a leftover of an earlier ADD, a stale instance's address). */
function replaceLines(ix: Index, inst: AccountedInstance): string[] {
  const c = chainsFor(inst.instanceId);
  const lines: string[] = [];
  const gone = new Set<string>();
  for (const counter of [c.in, c.out]) for (const e of ix.removeCounter(counter, lines)) gone.add(`${e.map} ${e.key}`);
  // An address of ours still mapped to another counter (an instance whose DEL never came): ours now.
  for (const [map, m] of ix.maps) {
    for (const ip of inst.ips) {
      if (!m.has(ip) || gone.has(`${map} ${ip}`)) continue;
      lines.push(`delete element ${T} ${map} { ${ip} }`);
      gone.add(`${map} ${ip}`);
    }
  }
  // Blocked addresses of ours in any group (a leftover block must not hold the new instance).
  for (const [set, s] of ix.sets) {
    for (const ip of inst.ips) if (s.has(ip) && !lines.includes(`delete element ${T} ${set} { ${ip} }`)) lines.push(`delete element ${T} ${set} { ${ip} }`);
  }
  return lines;
}

export class NftAccounting implements InstanceAccounting {
  readonly backend = 'nftables' as const;

  async add(inst: AccountedInstance): Promise<void> {
    // The common case, one call: nothing of this instance there, its addresses free.
    if (await nftTryApply(addScript(inst))) return;
    // A re-ADD (counters start from zero) or a leftover: read, then replace in one transaction.
    await withIptablesLock(async () => {
      const ix = await read();
      await nftApply([...groupLines(inst.skip), ...replaceLines(ix, inst), ...counterLines(inst, false), ...elementLines(inst), ''].join('\n'));
    });
  }

  async del(inst: AccountedInstance): Promise<void> {
    const c = chainsFor(inst.instanceId);
    // Fails without the table, when an address is another instance's now, or a counter has more elements: then read.
    if (inst.ips.length > 0 && (await nftTryApply(delScript(inst)))) return;
    await withIptablesLock(async () => {
      const ix = await read();
      const lines: string[] = [];
      for (const counter of [c.in, c.out]) ix.removeCounter(counter, lines);
      if (lines.length > 0) await nftApply([...lines, ''].join('\n'));
    });
  }

  async check(inst: AccountedInstance): Promise<void> {
    const t = await nftListTable(FAMILY, TABLE);
    const ix = new Index(t);
    const c = chainsFor(inst.instanceId);
    const n = names(groupOf(inst.skip));
    const comment = nftOwnerComment(inst.owner);
    const have = new Set<string>();
    for (const [name, v] of ix.counters) have.add(`counter ${name} ${v.comment ?? ''}`);
    for (const [map, m] of ix.maps) for (const [k, v] of m) have.add(`map ${map} ${k} ${v}`);
    for (const r of t?.rules ?? []) if (r.comment !== undefined) have.add(`rule ${r.chain} ${r.comment}`);
    const want: Expected[] = [];
    for (const name of [c.in, c.out]) want.push({ key: `counter ${name} ${comment}`, show: `counter ${name} with comment ${JSON.stringify(comment)} in ${T} (nft list counters table ${T})` });
    for (const com of Object.values(RULE_COMMENTS)) {
      want.push({ key: `rule ${n.chain} ${com}`, show: `the rule commented ${JSON.stringify(com)} in ${T} ${n.chain} (nft list chain ${T} ${n.chain})` });
    }
    for (const ip of inst.ips) {
      want.push({ key: `map ${n.in} ${ip} ${c.in}`, show: `element ${ip} : "${c.in}" in ${T} map ${n.in} (nft list map ${T} ${n.in})` });
      want.push({ key: `map ${n.out} ${ip} ${c.out}`, show: `element ${ip} : "${c.out}" in ${T} map ${n.out} (nft list map ${T} ${n.out})` });
    }
    requireRules(have, want, 'traffic-accounting (nftables)');
  }

  /** Removes the counters (and their elements) whose owner record names this network and an attachment not in `valid`. */
  async gc(network: string, valid: readonly { containerID: string; ifname: string }[]): Promise<void> {
    await withIptablesLock(async () => {
      const ix = await read();
      const lines: string[] = [];
      for (const [name, v] of ix.counters) if (INSTANCE_CHAIN.test(name) && nftStaleOwned(v.comment, network, valid)) ix.removeCounter(name, lines);
      if (lines.length > 0) await nftApply([...lines, ''].join('\n'));
    });
  }
}

class NftSnapshot implements Snapshot {
  constructor(readonly ix: Index) {}

  /** The group holding `d`: the map `<dir>_<g>` that maps its address to its counter. */
  private groupOf(d: Direction): string | undefined {
    for (const [map, m] of this.ix.maps) if (map.startsWith(`${d.dir}_`) && m.get(d.ip) === d.chain) return map.slice(d.dir.length + 1);
    return undefined;
  }

  read(d: Direction): Reading {
    const g = this.groupOf(d);
    const counter = this.ix.counters.get(d.chain);
    if (g === undefined || counter === undefined) return { counting: false, bytes: 0, dropping: false };
    const blocked = this.ix.sets.get(`blocked_${d.dir}_${g}`)?.has(d.ip) ?? false;
    return { counting: !blocked, bytes: blocked ? 0 : counter.bytes, dropping: blocked };
  }

  system(): { in: number; out: number } | undefined {
    const i = this.ix.counters.get(SYSTEM_IN);
    const o = this.ix.counters.get(SYSTEM_OUT);
    if (!i && !o) return undefined;
    return { in: i?.bytes ?? 0, out: o?.bytes ?? 0 };
  }

  /** Lines swapping a direction: the counter made again from zero (its elements with it), the address into or out of the blocked set. */
  swapLines(s: Swap): string[] {
    const g = this.groupOf(s.d);
    if (g === undefined) return [];
    const comment = this.ix.counters.get(s.d.chain)?.comment;
    const lines: string[] = [];
    const elems = this.ix.removeCounter(s.d.chain, lines); // also takes its addresses out of the blocked set
    lines.push(`add counter ${T} ${s.d.chain}${comment !== undefined ? ` { comment ${nftQuote(comment)}; }` : ''}`);
    for (const e of elems) lines.push(`add element ${T} ${e.map} { ${e.key} : "${s.d.chain}" }`);
    const blockedSet = `blocked_${s.d.dir}_${g}`;
    if (s.to === 'drop') lines.push(`add element ${T} ${blockedSet} { ${s.d.ip} }`);
    return lines;
  }
}

const systemLines = () => {
  const local = AOS_LOCAL_RANGES.join(', ');
  return [
    `add table ${T}`,
    `add counter ${T} ${SYSTEM_IN}`,
    `add counter ${T} ${SYSTEM_OUT}`,
    `add chain ${T} system_in { type filter hook input priority ${PRIORITY}; policy accept; }`,
    `add chain ${T} system_out { type filter hook output priority ${PRIORITY}; policy accept; }`,
    `flush chain ${T} system_in`,
    `flush chain ${T} system_out`,
    `add rule ${T} system_in ip saddr != { ${local} } counter name "${SYSTEM_IN}"`,
    `add rule ${T} system_out ip daddr != { ${local} } counter name "${SYSTEM_OUT}"`,
    '',
  ].join('\n');
};

export class NftCollector implements Collector {
  readonly backend = 'nftables' as const;

  /** One `nft -j list table inet cni_ts_accounting`: counters, maps and blocked sets. */
  async snapshot(): Promise<Snapshot> {
    return new NftSnapshot(await read());
  }

  async apply(snap: Snapshot, swaps: Swap[]): Promise<void> {
    if (swaps.length === 0) return;
    const s = snap as NftSnapshot;
    const lines = swaps.flatMap((x) => s.swapLines(x));
    if (lines.length > 0) await nftApply([...lines, ''].join('\n'));
  }

  async ensureSystem(): Promise<void> {
    await nftApply(systemLines());
  }

  async removeSystem(): Promise<void> {
    const t = await nftListTable(FAMILY, TABLE);
    if (!t) return;
    const lines: string[] = [];
    for (const chain of ['system_in', 'system_out']) if (t.chains.has(chain)) lines.push(`delete chain ${T} ${chain}`);
    for (const c of [SYSTEM_IN, SYSTEM_OUT]) if (t.counters.has(c)) lines.push(`delete counter ${T} ${c}`);
    if (lines.length > 0) await nftApply([...lines, ''].join('\n'));
  }
}
