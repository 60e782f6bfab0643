import { createHash } from 'node:crypto';
import { definePlugin, type PluginContext } from '../../lib/cni/skel.js';
import { CniError, ErrorCode, toCniError } from '../../lib/cni/errors.js';
import type { Result } from '../../lib/cni/result.js';
import { Netns } from '../../lib/netlink/ns.js';
import { Rtnl, errnoOf, type LinkInfo, kernelError } from '../../lib/netlink/rtnl.js';
import {
  addQdisc, addRedirectFilter, decodeRedirect, decodeNetem, decodeTbf, delQdisc, encodeNetem, encodeTbf, filters, handle, qdiscs,
  INGRESS_HANDLE, TC_H_INGRESS, TC_H_ROOT, type TbfParams,
} from '../../lib/netlink/tc.js';
import { bandwidthConfig, directions, shaped, type BandwidthConfig, type Direction } from './config.js';
import { FP, trace } from '../../lib/cni/trace.js';
import { ownerTag, staleOwned, validKeys } from '../../lib/cni/owner.js';

/**
 * bandwidth: traffic toward the container is shaped by a tbf at the root of
 * the host end of its veth; traffic from it is redirected (matchall +
 * mirred, a u32 filter matching all as the reference installs) from that veth's ingress to an ifb device and shaped there. With
 * impairment a netem sits at the root and the tbf below it (netem 1: →
 * tbf 10:), so delay/loss and the rate hold together.
 */
type Ctx = PluginContext<BandwidthConfig>;
const LATENCY_S = 0.025; // queue the tbf may hold, as the reference (25 ms)
const NETEM_LIMIT = 10000;

const bwp = (s: string) => `bwp${createHash('sha512').update(s).digest('hex').slice(0, 12)}`;

/**
 * The reference's ifb name, `bwp` + 12 hex of sha512(network + containerID)
 * (Debian's 1.1.1 and later), so either plugin's DEL finds the other's ifb
 * and one container on two networks gets two ifbs.
 */
export const ifbName = (network: string, containerId: string) => bwp(network + containerId);

/** The name this suite's binaries used up to fb6743a (the container id alone): DEL and CHECK still find those ifbs. */
const legacyIfbName = (containerId: string) => bwp(containerId);

/** The owner record on our ifbs (IFLA_IFALIAS): GC removes only its own network's. */
const OWNER = 'bandwidth';
const ownerOf = (ctx: Ctx) => ownerTag(OWNER, { network: ctx.config.name, containerID: ctx.env.containerId, ifname: ctx.env.ifname });

function tbfParams(d: Direction): TbfParams {
  const rate = Math.floor(d.rate / 8);
  const burst = Math.floor(d.burst / 8);
  return { rate, burst, limit: Math.floor(rate * LATENCY_S) + burst };
}

function parse(ctx: Ctx) {
  try {
    return directions(ctx.config);
  } catch (err) {
    throw new CniError(ErrorCode.InvalidNetworkConfig, (err as Error).message);
  }
}

/** The host end of the container's veth, found through the peer index of CNI_IFNAME. */
async function hostVeth(ctx: Ctx, host: Rtnl): Promise<LinkInfo | undefined> {
  const ns = ctx.env.netns ? Netns.tryOpen(ctx.env.netns) : undefined;
  if (!ns) return undefined;
  const cont = Rtnl.open(ns);
  try {
    const l = await cont.linkByName(ctx.env.ifname);
    if (!l || l.peerIndex === undefined) return undefined;
    const h = await host.linkByIndex(l.peerIndex);
    const names = new Set((ctx.prevResult?.interfaces ?? []).filter((i) => !i.sandbox).map((i) => i.name));
    return h && (names.size === 0 || names.has(h.name)) ? h : undefined;
  } finally {
    cont.close();
    ns.close();
  }
}

async function install(nl: Rtnl, index: number, d: Direction): Promise<void> {
  if (d.netem) {
    await addQdisc(nl, index, TC_H_ROOT, handle(1), 'netem', encodeNetem({ ...d.netem, limit: NETEM_LIMIT }));
    trace(FP.bandwidth.netemAdded);
    if (d.rate > 0) await addQdisc(nl, index, handle(1, 1), handle(10), 'tbf', encodeTbf(tbfParams(d)));
  } else if (d.rate > 0) {
    await addQdisc(nl, index, TC_H_ROOT, handle(1), 'tbf', encodeTbf(tbfParams(d)));
  }
}


async function add(ctx: Ctx): Promise<Result> {
  const dirs = parse(ctx);
  const prev = ctx.prevResult;
  if (!prev) throw new CniError(ErrorCode.InvalidNetworkConfig, 'bandwidth must be chained after an interface plugin: missing prevResult');
  if (!shaped(dirs.ingress) && !shaped(dirs.egress)) return prev;
  const host = Rtnl.open();
  let veth: LinkInfo | undefined;
  let ifbIndex: number | undefined;
  try {
    veth = await hostVeth(ctx, host);
    if (!veth) throw new CniError(ErrorCode.InvalidNetworkConfig, `no host interface found for ${ctx.env.ifname} in ${ctx.env.netns}`);
    const result: Result = { ...prev, interfaces: [...prev.interfaces] };
    try {
      if (shaped(dirs.ingress)) await install(host, veth.index, dirs.ingress);
      trace(FP.bandwidth.ingressShaped);
      if (shaped(dirs.egress)) {
        const name = ifbName(ctx.config.name, ctx.env.containerId);
        await host.createIfb(name, veth.mtu);
        const ifb = (await host.linkByName(name))!;
        ifbIndex = ifb.index;
        // Before the failpoint: an ifb that outlives a killed ADD carries its owner, so its network's GC removes it.
        await host.setAlias(ifb.index, ownerOf(ctx));
        trace(FP.bandwidth.ifbCreated);
        await host.setUp(ifb.index);
        trace(FP.bandwidth.ifbUp);
        await install(host, ifb.index, dirs.egress);
        trace(FP.bandwidth.egressShaped);
        await addQdisc(host, veth.index, TC_H_INGRESS, INGRESS_HANDLE, 'ingress');
        trace(FP.bandwidth.ingressQdiscAdded);
        await addRedirectFilter(host, veth.index, ifb.index);
        trace(FP.bandwidth.redirectAdded);
        result.interfaces.push({ name, mac: ifb.mac });
      }
    } catch (err) {
      throw kernelError('failed to install traffic control', err);
    }
    return result;
  } catch (err) {
    if (veth) {
      await delQdisc(host, veth.index, TC_H_ROOT).catch(() => undefined);
      await delQdisc(host, veth.index, TC_H_INGRESS, INGRESS_HANDLE).catch(() => undefined);
    }
    if (ifbIndex !== undefined) await host.deleteLink(ifbIndex).catch(() => undefined);
    throw toCniError(err);
  } finally {
    host.close();
  }
}

/**
 * Idempotent: the ifb by its name (ours and the reference's; or the older
 * name by container id alone, unless another attachment's record is on it),
 * the veth's qdiscs if the namespace is still there.
 */
async function del(ctx: Ctx): Promise<void> {
  const host = Rtnl.open();
  try {
    // Only made by older binaries, so never with a record; should one carry another attachment's record, it is not ours.
    const legacy = await host.linkByName(legacyIfbName(ctx.env.containerId));
    const legacyOk = legacy !== undefined && (legacy.alias === undefined || legacy.alias === ownerOf(ctx));
    for (const ifb of [await host.linkByName(ifbName(ctx.config.name, ctx.env.containerId)), legacyOk ? legacy : undefined]) {
      if (ifb?.kind === 'ifb') await host.deleteLink(ifb.index).catch((e) => {
        if (errnoOf(e) !== 'ENODEV') throw e;
      });
    }
    const veth = await hostVeth(ctx, host).catch(() => undefined);
    if (veth) {
      await delQdisc(host, veth.index, TC_H_ROOT);
      await delQdisc(host, veth.index, TC_H_INGRESS, INGRESS_HANDLE);
    }
  } finally {
    host.close();
  }
}

function near(a: number, b: number, tolerance = 0.02): boolean {
  return Math.abs(a - b) <= Math.max(2, Math.abs(b) * tolerance);
}

async function checkDirection(nl: Rtnl, index: number, d: Direction, where: string): Promise<void> {
  const fail = (msg: string) => new CniError(ErrorCode.CheckFailed, msg, where);
  const qs = await qdiscs(nl, index);
  const root = qs.find((q) => q.parent === TC_H_ROOT);
  const want = tbfParams(d);
  const checkTbf = (options: Buffer | undefined) => {
    if (!options) throw fail('tbf has no options');
    const got = decodeTbf(options);
    if (got.rate !== want.rate || !near(got.burst, want.burst) || got.limit !== want.limit) {
      throw fail(`tbf is rate ${got.rate} B/s burst ${got.burst} B limit ${got.limit} B, expected ${want.rate}/${want.burst}/${want.limit}`);
    }
  };
  if (d.netem) {
    if (root?.kind !== 'netem' || root.handle !== handle(1)) throw fail('netem qdisc missing');
    const n = decodeNetem(root.options!);
    const w = d.netem;
    if (!near(n.delayMs, w.delayMs, 0.001) || !near(n.jitterMs, w.jitterMs, 0.001) || Math.abs(n.loss - w.loss) > 0.01 || Math.abs(n.duplicate - w.duplicate) > 0.01 || Math.abs(n.reorder - w.reorder) > 0.01) {
      throw fail(`netem is ${JSON.stringify(n)}, expected ${JSON.stringify(w)}`);
    }
    if (d.rate > 0) {
      const child = qs.find((q) => q.parent === handle(1, 1));
      if (child?.kind !== 'tbf') throw fail('tbf under netem missing');
      checkTbf(child.options);
    }
  } else {
    if (root?.kind !== 'tbf') throw fail('tbf qdisc missing');
    checkTbf(root.options);
  }
}

async function check(ctx: Ctx): Promise<void> {
  const dirs = parse(ctx);
  if (!ctx.prevResult) throw new CniError(ErrorCode.InvalidNetworkConfig, 'CHECK needs prevResult');
  if (!shaped(dirs.ingress) && !shaped(dirs.egress)) return;
  const host = Rtnl.open();
  try {
    const veth = await hostVeth(ctx, host);
    if (!veth) throw new CniError(ErrorCode.CheckFailed, `no host interface found for ${ctx.env.ifname}`);
    if (shaped(dirs.ingress)) await checkDirection(host, veth.index, dirs.ingress, veth.name);
    if (shaped(dirs.egress)) {
      // The older binaries' name for attachments they made.
      let name = ifbName(ctx.config.name, ctx.env.containerId);
      let ifb = await host.linkByName(name);
      if (!ifb && (await host.linkByName(legacyIfbName(ctx.env.containerId)))) {
        name = legacyIfbName(ctx.env.containerId);
        ifb = await host.linkByName(name);
      }
      if (!ifb || !ifb.up) throw new CniError(ErrorCode.CheckFailed, `ifb ${name} missing or down`);
      await checkDirection(host, ifb.index, dirs.egress, name);
      if (!(await qdiscs(host, veth.index)).some((q) => q.kind === 'ingress')) throw new CniError(ErrorCode.CheckFailed, 'ingress qdisc missing', veth.name);
      const redirects = (await filters(host, veth.index, INGRESS_HANDLE)).filter((f) => f.options && decodeRedirect(f.kind, f.options) === ifb.index);
      if (redirects.length === 0) throw new CniError(ErrorCode.CheckFailed, `no redirect from ${veth.name} to ${name}`);
    }
  } finally {
    host.close();
  }
}

/**
 * Removes the ifbs whose owner record names this network and an attachment
 * not in valid-attachments. GC is given one network's attachments: an ifb of
 * another network, or one without a record (the reference's, older
 * binaries'), is not GC's to judge; DEL removes those.
 */
async function gc(ctx: Ctx): Promise<void> {
  const valid = validKeys(ctx.validAttachments);
  const host = Rtnl.open();
  try {
    for (const l of await host.links()) {
      if (l.kind === 'ifb' && staleOwned(OWNER, l.alias, ctx.config.name, valid)) await host.deleteLink(l.index).catch(() => undefined);
    }
  } finally {
    host.close();
  }
}

export default definePlugin({ name: 'bandwidth', schema: bandwidthConfig, add, del, check, gc });
