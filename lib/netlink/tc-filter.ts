import { FlagsNew } from 'netlink/dist/constants';
import type * as rt from 'netlink/dist/rt/structs';
import { attr, nest, parseAttrs, str } from './attrs.js';
import { INGRESS_HANDLE } from './tc.js';
import type { Rtnl } from './rtnl.js';

/**
 * tc filters whose action is `mirred egress redirect`, as tc-redirect-tap
 * installs them on the ingress of a pair of interfaces: encoding (u32
 * "match u32 0 0", or cls_matchall where the kernel has it) and decoding of
 * the kernel's filter dump, so CHECK and DEL can tell a redirect of ours
 * from anything else on the qdisc.
 */
export type RedirectKind = 'u32' | 'matchall';

// linux/pkt_cls.h, tc_act/tc_mirred.h
const TCA_U32_SEL = 5;
const TCA_U32_ACT = 7;
const TC_U32_TERMINAL = 1;
const TCA_MATCHALL_ACT = 2;
const TCA_ACT_KIND = 1;
const TCA_ACT_OPTIONS = 2;
const TCA_MIRRED_PARMS = 2;
const TC_ACT_STOLEN = 4;
const TCA_EGRESS_REDIR = 1;
export const ETH_P_ALL = 0x0003;
const SEL_HEADER = 16; // struct tc_u32_sel without its keys
const KEY_SIZE = 16; // struct tc_u32_key

/** One mirred action as the kernel dumps it. */
export interface MirredAction {
  /** TCA_EGRESS_REDIR (1), TCA_EGRESS_MIRROR (2), TCA_INGRESS_REDIR (3), ... */
  eaction: number;
  /** The target; 0 once that device is gone (mirred forgets it on unregister). */
  ifindex: number;
  /** tc_gen.action: the verdict after the action (TC_ACT_STOLEN for a redirect). */
  verdict: number;
}

/** A filter rule on a qdisc, decoded from RTM_NEWTFILTER. */
export interface FilterInfo {
  kind: string;
  /** Preference (priority), the upper half of tcm_info. */
  prio: number;
  /** Ethernet protocol in host order (ETH_P_ALL = 3). */
  protocol: number;
  handle: number;
  /** Whether the rule matches every packet (matchall; u32 with only all-zero-mask keys). */
  matchAll: boolean;
  mirred: MirredAction[];
}

/** A filter that sends every packet to `target`'s egress, nothing else. */
export const isRedirectTo = (f: FilterInfo, target: number): boolean =>
  f.matchAll && f.mirred.length === 1 && f.mirred[0].eaction === TCA_EGRESS_REDIR && f.mirred[0].ifindex === target;

function mirredRedirect(targetIndex: number): Buffer {
  const parms = Buffer.alloc(28); // struct tc_mirred: tc_gen (20 bytes), eaction, ifindex
  parms.writeInt32LE(TC_ACT_STOLEN, 8);
  parms.writeInt32LE(TCA_EGRESS_REDIR, 20);
  parms.writeUInt32LE(targetIndex, 24);
  // The action list is a nest of actions numbered from 1 (their order).
  return nest(1, str(TCA_ACT_KIND, 'mirred'), nest(TCA_ACT_OPTIONS, attr(TCA_MIRRED_PARMS, parms)));
}

/** TCA_OPTIONS of a match-all filter redirecting to `targetIndex`. */
export function encodeRedirectOptions(kind: RedirectKind, targetIndex: number): Buffer {
  if (kind === 'matchall') return nest(TCA_MATCHALL_ACT, mirredRedirect(targetIndex));
  // "u32 match u32 0 0": one key with mask 0 (every packet), terminal.
  const sel = Buffer.alloc(SEL_HEADER + KEY_SIZE);
  sel.writeUInt8(TC_U32_TERMINAL, 0);
  sel.writeUInt8(1, 2);
  return Buffer.concat([attr(TCA_U32_SEL, sel), nest(TCA_U32_ACT, mirredRedirect(targetIndex))]);
}

function decodeActions(buf: Buffer | undefined): MirredAction[] {
  if (!buf) return [];
  const out: MirredAction[] = [];
  for (const [, a] of parseAttrs(buf)) {
    const inner = parseAttrs(a);
    const kind = inner.get(TCA_ACT_KIND)?.toString('utf8').replace(/\0+$/, '');
    const parms = kind === 'mirred' ? parseAttrs(inner.get(TCA_ACT_OPTIONS) ?? Buffer.alloc(0)).get(TCA_MIRRED_PARMS) : undefined;
    // A non-mirred action counts as "something else": eaction 0 never equals a redirect.
    out.push(parms && parms.length >= 28 ? { eaction: parms.readInt32LE(20), ifindex: parms.readUInt32LE(24), verdict: parms.readInt32LE(8) } : { eaction: 0, ifindex: 0, verdict: 0 });
  }
  return out;
}

/**
 * One dumped filter message, or undefined for what is no rule: the bare
 * priority entry and u32's hash-table nodes (no selector) that the kernel
 * dumps alongside each u32 key node.
 */
export function decodeFilter(kind: string, info: number, handle: number, options: Buffer | undefined): FilterInfo | undefined {
  const prio = info >>> 16;
  const protocol = ((info & 0xff) << 8) | ((info >> 8) & 0xff); // network order in tcm_info
  if (!options || options.length === 0) return undefined;
  const a = parseAttrs(options);
  if (kind === 'u32') {
    const sel = a.get(TCA_U32_SEL);
    if (!sel || sel.length < SEL_HEADER) return undefined;
    const nkeys = sel.readUInt8(2);
    let matchAll = sel.length >= SEL_HEADER + nkeys * KEY_SIZE;
    for (let i = 0; i < nkeys && matchAll; i++) if (sel.readUInt32BE(SEL_HEADER + i * KEY_SIZE) !== 0) matchAll = false;
    return { kind, prio, protocol, handle, matchAll, mirred: decodeActions(a.get(TCA_U32_ACT)) };
  }
  if (kind === 'matchall') return { kind, prio, protocol, handle, matchAll: true, mirred: decodeActions(a.get(TCA_MATCHALL_ACT)) };
  return { kind, prio, protocol, handle, matchAll: false, mirred: [] };
}

/** The filter rules on `index` below `parent` (the ingress qdisc by default). */
export async function listFilters(nl: Rtnl, index: number, parent = INGRESS_HANDLE): Promise<FilterInfo[]> {
  const msgs: rt.TcMessage[] = await nl.sock.getTrafficFilters({ ifindex: index, parent });
  const out: FilterInfo[] = [];
  for (const m of msgs) {
    if (m.data.ifindex !== index || !m.attrs.kind) continue;
    const f = decodeFilter(m.attrs.kind, m.data.info ?? 0, m.data.handle ?? 0, m.attrs.options);
    if (f) out.push(f);
  }
  return out;
}

/** Adds a match-all filter on `index`'s ingress redirecting every packet to `targetIndex`'s egress. */
export async function addRedirect(nl: Rtnl, index: number, targetIndex: number, opts: { kind?: RedirectKind; prio?: number } = {}): Promise<void> {
  const kind = opts.kind ?? 'u32';
  const info = (((opts.prio ?? 1) << 16) | ((ETH_P_ALL & 0xff) << 8) | (ETH_P_ALL >> 8)) >>> 0;
  await nl.sock.newTrafficFilter(
    { ifindex: index, parent: INGRESS_HANDLE, handle: 0, info },
    { kind, options: encodeRedirectOptions(kind, targetIndex) },
    { flags: FlagsNew.CREATE | FlagsNew.EXCL },
  );
}

/** Deletes every filter of one priority and protocol below the ingress qdisc of `index`. */
export async function delFilterPrio(nl: Rtnl, index: number, prio: number, protocol: number): Promise<void> {
  const info = ((prio << 16) | ((protocol & 0xff) << 8) | ((protocol >> 8) & 0xff)) >>> 0;
  await nl.sock.delTrafficFilter({ ifindex: index, parent: INGRESS_HANDLE, handle: 0, info });
}
