import { z } from 'zod';
import { definePlugin, type PluginContext } from '../../lib/cni/skel.js';
import { CniError, ErrorCode } from '../../lib/cni/errors.js';
import { netConf } from '../../lib/cni/schema.js';
import type { IPConfig, Result } from '../../lib/cni/result.js';
import { Netns } from '../../lib/netlink/ns.js';
import { Rtnl, kernelError } from '../../lib/netlink/rtnl.js';

/**
 * loopback: brings `lo` up in the container namespace. CNI_IFNAME is
 * ignored (only `lo` makes sense), as in the reference. The result lists lo
 * with its first IPv4 and first IPv6 address, or passes prevResult through
 * when the plugin runs chained.
 */
const loopbackConfig = netConf({});
type Ctx = PluginContext<z.output<typeof loopbackConfig>>;
const LO = 'lo';


/** Runs `fn` on an rtnetlink socket inside the namespace and the lo link there. */
async function withLo<T>(ns: Netns, fn: (nl: Rtnl, index: number) => Promise<T>): Promise<T> {
  const nl = Rtnl.open(ns);
  try {
    const lo = await nl.linkByName(LO);
    if (!lo) throw new CniError(ErrorCode.InvalidEnvironment, `no ${LO} interface in ${ns.path}`);
    return await fn(nl, lo.index);
  } finally {
    nl.close();
  }
}

const isLoopback = (ip: string) => ip === '::1' || ip.startsWith('127.');

async function add(ctx: Ctx): Promise<Result> {
  const ns = Netns.open(ctx.env.netns);
  try {
    const ips = await withLo(ns, async (nl, index) => {
      await nl.setUp(index).catch((err) => {
        throw kernelError(`failed to set ${LO} up`, err);
      });
      const addrs = await nl.addresses(index);
      const bad = addrs.find((a) => !isLoopback(a.ip));
      // A lo carrying other addresses is not what this plugin may report as loopback.
      if (bad) throw new CniError(ErrorCode.InvalidEnvironment, `loopback interface found with non-loopback address "${bad.ip}"`);
      const out: IPConfig[] = [];
      for (const family of [4, 6] as const) {
        const first = addrs.find((a) => a.family === family);
        if (first) out.push({ interface: 0, address: first.cidr });
      }
      return out;
    });
    if (ctx.prevResult) return ctx.prevResult;
    return { interfaces: [{ name: LO, mac: '00:00:00:00:00:00', sandbox: ctx.env.netns }], ips, routes: [], dns: {} };
  } finally {
    ns.close();
  }
}

/** Sets lo down; no namespace (none given, or already gone) is success. */
async function del(ctx: Ctx): Promise<void> {
  if (!ctx.env.netns) return;
  let ns: Netns | undefined;
  try {
    ns = Netns.tryOpen(ctx.env.netns);
  } catch (err) {
    // The caller's own namespace is refused, never taken for "gone".
    if (err instanceof CniError && err.code === ErrorCode.InvalidNetNS) throw err;
    return; // a stale path that is no namespace any more
  }
  if (!ns) return;
  try {
    await withLo(ns, async (nl, index) => {
      await nl.setUp(index, false).catch((err) => {
        throw kernelError(`failed to set ${LO} down`, err);
      });
    });
  } finally {
    ns.close();
  }
}

async function check(ctx: Ctx): Promise<void> {
  const ns = Netns.open(ctx.env.netns);
  try {
    await withLo(ns, async (nl, index) => {
      const lo = await nl.linkByIndex(index);
      if (!lo?.up) throw new CniError(ErrorCode.CheckFailed, 'loopback interface is down');
    });
  } finally {
    ns.close();
  }
}

export default definePlugin({ name: 'loopback', schema: loopbackConfig, add, del, check });
