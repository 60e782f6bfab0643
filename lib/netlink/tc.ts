import { FlagsNew } from 'netlink/dist/constants';
import type * as rt from 'netlink/dist/rt/structs';
import { attr, nest, parseAttrs, str, u32 } from './attrs.js';
import { errnoOf, type Rtnl } from './rtnl.js';

/**
 * Traffic control over rtnetlink. The netlink package carries qdiscs and
 * filters but leaves each kind's options as raw bytes; this module encodes
 * and decodes the kinds the suite uses: tbf, netem, ingress, and a matchall
 * filter with a mirred redirect (the ifb trick for shaping egress).
 */
export const TC_H_ROOT = 0xffffffff;
export const TC_H_INGRESS = 0xfffffff1;
export const INGRESS_HANDLE = 0xffff0000;
export const handle = (major: number, minor = 0) => ((major << 16) | minor) >>> 0;

const TCA_TBF_PARMS = 1;
const TCA_TBF_RATE64 = 4;
const TCA_TBF_BURST = 6;
const TC_LINKLAYER_ETHERNET = 1;
const TCA_NETEM_REORDER = 3;
const TCA_NETEM_LATENCY64 = 10;
const TCA_NETEM_JITTER64 = 11;
const TCA_MATCHALL_ACT = 2;
const TCA_U32_SEL = 5;
const TCA_U32_ACT = 7;
const TC_U32_TERMINAL = 1;
const TCA_ACT_KIND = 1;
const TCA_ACT_OPTIONS = 2;
const TCA_MIRRED_PARMS = 2;
const TC_ACT_STOLEN = 4;
const TCA_EGRESS_REDIR = 1;
const ETH_P_ALL = 0x0003;

/** Kernel psched ticks are 64 ns (PSCHED_SHIFT 6). */
const NS_PER_TICK = 64n;

export interface TbfParams {
  /** bytes per second */
  rate: number;
  /** bytes */
  burst: number;
  /** bytes queued before drops */
  limit: number;
}

export interface NetemParams {
  delayMs: number;
  jitterMs: number;
  /** percent */
  loss: number;
  duplicate: number;
  reorder: number;
  /** packets */
  limit: number;
}

function u32buf(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
}

function u64buf(v: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v);
  return b;
}

function ratespec(bytesPerSec: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt8(0, 0); // cell_log
  b.writeUInt8(TC_LINKLAYER_ETHERNET, 1);
  b.writeUInt32LE(Math.min(bytesPerSec, 0xffffffff), 8);
  return b;
}

export function encodeTbf(p: TbfParams): Buffer {
  const bufferTicks = BigInt(Math.round((p.burst / p.rate) * 1e9)) / NS_PER_TICK;
  const parms = Buffer.concat([ratespec(p.rate), Buffer.alloc(12), u32buf(p.limit), u32buf(Number(bufferTicks > 0xffffffffn ? 0xffffffffn : bufferTicks)), u32buf(0)]);
  const out = [attr(TCA_TBF_PARMS, parms), u32(TCA_TBF_BURST, p.burst)];
  if (p.rate > 0xffffffff) out.push(attr(TCA_TBF_RATE64, u64buf(BigInt(p.rate))));
  return Buffer.concat(out);
}

export function decodeTbf(options: Buffer): TbfParams {
  const a = parseAttrs(options);
  const parms = a.get(TCA_TBF_PARMS);
  if (!parms) throw new Error('tbf without parameters');
  let rate = parms.readUInt32LE(8);
  const r64 = a.get(TCA_TBF_RATE64);
  if (r64) rate = Number(r64.readBigUInt64LE(0));
  const limit = parms.readUInt32LE(24);
  const bufferTicks = BigInt(parms.readUInt32LE(28));
  const burst = Math.round((Number(bufferTicks * NS_PER_TICK) / 1e9) * rate);
  return { rate, burst, limit };
}

/** Probabilities are fractions of 2^32-1. */
const prob = (percent: number) => Math.round((percent / 100) * 0xffffffff) >>> 0;
const percentOf = (p: number) => Math.round((p / 0xffffffff) * 100 * 1000) / 1000;

/**
 * tc_netem_qopt, then attributes. Delay and jitter go in the struct as
 * 64 ns ticks, as `tc qdisc add … netem delay D J` sends them (iproute2
 * sends no TCA_NETEM_LATENCY64/JITTER64; test/integration/netlink-wire.test.ts
 * compares the bytes). The 64-bit attribute, which the kernel prefers, is
 * added only for a value the ticks cannot carry exactly (not a multiple of
 * 64 ns, or above 2^32-1 ticks, ~275 s), where the kernel would otherwise
 * read a different delay than configured.
 */
export function encodeNetem(p: NetemParams): Buffer {
  const delayNs = BigInt(Math.round(p.delayMs * 1e6));
  const jitterNs = BigInt(Math.round(p.jitterMs * 1e6));
  const ticks = (ns: bigint) => Number(ns / NS_PER_TICK > 0xffffffffn ? 0xffffffffn : ns / NS_PER_TICK);
  const exact = (ns: bigint) => ns % NS_PER_TICK === 0n && ns / NS_PER_TICK <= 0xffffffffn;
  const qopt = Buffer.alloc(24);
  qopt.writeUInt32LE(ticks(delayNs), 0);
  qopt.writeUInt32LE(p.limit, 4);
  qopt.writeUInt32LE(prob(p.loss), 8);
  qopt.writeUInt32LE(p.reorder > 0 ? 1 : 0, 12); // gap: reorder needs one
  qopt.writeUInt32LE(prob(p.duplicate), 16);
  qopt.writeUInt32LE(ticks(jitterNs), 20);
  const extra: Buffer[] = [];
  if (!exact(delayNs)) extra.push(attr(TCA_NETEM_LATENCY64, u64buf(delayNs)));
  if (!exact(jitterNs)) extra.push(attr(TCA_NETEM_JITTER64, u64buf(jitterNs)));
  if (p.reorder > 0) extra.push(attr(TCA_NETEM_REORDER, Buffer.concat([u32buf(prob(p.reorder)), u32buf(0)])));
  // netem's options are its struct followed by attributes, not a plain nest.
  return Buffer.concat([qopt, ...extra]);
}

export function decodeNetem(options: Buffer): NetemParams {
  const a = parseAttrs(options.subarray(24));
  const ticks = (off: number) => Number(BigInt(options.readUInt32LE(off)) * NS_PER_TICK) / 1e6;
  const lat = a.get(TCA_NETEM_LATENCY64);
  const jit = a.get(TCA_NETEM_JITTER64);
  const reorder = a.get(TCA_NETEM_REORDER);
  return {
    delayMs: lat ? Number(lat.readBigInt64LE(0)) / 1e6 : ticks(0),
    jitterMs: jit ? Number(jit.readBigInt64LE(0)) / 1e6 : ticks(20),
    limit: options.readUInt32LE(4),
    loss: percentOf(options.readUInt32LE(8)),
    duplicate: percentOf(options.readUInt32LE(16)),
    reorder: reorder ? percentOf(reorder.readUInt32LE(0)) : 0,
  };
}

function mirredRedirect(targetIndex: number): Buffer {
  const mirred = Buffer.alloc(28);
  mirred.writeInt32LE(TC_ACT_STOLEN, 8); // tc_gen.action
  mirred.writeInt32LE(TCA_EGRESS_REDIR, 20); // eaction
  mirred.writeUInt32LE(targetIndex, 24); // ifindex
  return nest(1, str(TCA_ACT_KIND, 'mirred'), nest(TCA_ACT_OPTIONS, attr(TCA_MIRRED_PARMS, mirred)));
}

/** A matchall filter whose action redirects every packet to `targetIndex` (mirred egress redirect). */
export function encodeMatchallRedirect(targetIndex: number): Buffer {
  return nest(TCA_MATCHALL_ACT, mirredRedirect(targetIndex));
}

/**
 * The same as a u32 filter matching everything ("match u32 0 0"), which is
 * what the reference installs and what kernels without cls_matchall have:
 * a tc_u32_sel with one all-zero key, terminal, and the mirred action.
 */
export function encodeU32Redirect(targetIndex: number): Buffer {
  const sel = Buffer.alloc(16 + 16);
  sel.writeUInt8(TC_U32_TERMINAL, 0); // flags
  sel.writeUInt8(1, 2); // nkeys; the key (mask 0, val 0, off 0) matches all
  return Buffer.concat([attr(TCA_U32_SEL, sel), nest(TCA_U32_ACT, mirredRedirect(targetIndex))]);
}

/** The redirect target of a matchall or u32 filter with a mirred action, if that is what it is. */
export function decodeRedirect(kind: string, options: Buffer): number | undefined {
  const act = parseAttrs(options).get(kind === 'u32' ? TCA_U32_ACT : TCA_MATCHALL_ACT);
  if (!act) return undefined;
  for (const [, a] of parseAttrs(act)) {
    const inner = parseAttrs(a);
    const kind = inner.get(TCA_ACT_KIND)?.toString('utf8').replace(/\0+$/, '');
    const opts = inner.get(TCA_ACT_OPTIONS);
    if (kind !== 'mirred' || !opts) continue;
    const parms = parseAttrs(opts).get(TCA_MIRRED_PARMS);
    if (parms && parms.readInt32LE(20) === TCA_EGRESS_REDIR) return parms.readUInt32LE(24);
  }
  return undefined;
}

export interface QdiscInfo {
  index: number;
  kind: string;
  handle: number;
  parent: number;
  options?: Buffer;
}

export async function qdiscs(nl: Rtnl, index: number): Promise<QdiscInfo[]> {
  const msgs: rt.TcMessage[] = await nl.sock.getQdiscs({ ifindex: index });
  return msgs
    .filter((m) => m.data.ifindex === index)
    .map((m) => ({ index, kind: m.attrs.kind ?? '', handle: m.data.handle ?? 0, parent: m.data.parent ?? 0, options: m.attrs.options }));
}

export async function addQdisc(nl: Rtnl, index: number, parent: number, h: number, kind: string, options?: Buffer): Promise<void> {
  await nl.sock.newQdisc({ ifindex: index, parent, handle: h }, { kind, ...(options ? { options } : {}) }, { flags: FlagsNew.CREATE | FlagsNew.EXCL });
}

/** Deletes a qdisc; one that is already gone is fine. */
export async function delQdisc(nl: Rtnl, index: number, parent: number, h = 0): Promise<void> {
  try {
    await nl.sock.delQdisc({ ifindex: index, parent, handle: h });
  } catch (err) {
    const e = errnoOf(err);
    if (e !== 'ENOENT' && e !== 'EINVAL' && e !== 'ENODEV') throw err;
  }
}

export async function addRedirectFilter(nl: Rtnl, index: number, targetIndex: number, kind: 'u32' | 'matchall' = 'u32'): Promise<void> {
  const info = ((1 << 16) | (((ETH_P_ALL & 0xff) << 8) | (ETH_P_ALL >> 8))) >>> 0; // prio 1, protocol all (network order)
  await nl.sock.newTrafficFilter(
    { ifindex: index, parent: INGRESS_HANDLE, handle: 0, info },
    { kind, options: kind === 'u32' ? encodeU32Redirect(targetIndex) : encodeMatchallRedirect(targetIndex) },
    { flags: FlagsNew.CREATE | FlagsNew.EXCL },
  );
}

export async function filters(nl: Rtnl, index: number, parent: number): Promise<{ kind: string; options?: Buffer }[]> {
  const msgs: rt.TcMessage[] = await nl.sock.getTrafficFilters({ ifindex: index, parent });
  return msgs.filter((m) => m.data.ifindex === index && m.attrs.kind).map((m) => ({ kind: m.attrs.kind ?? '', options: m.attrs.options }));
}
