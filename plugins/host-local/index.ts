import { definePlugin, type PluginContext } from '../../lib/cni/skel.js';
import { CniError, ErrorCode } from '../../lib/cni/errors.js';
import { emptyResult, type Result } from '../../lib/cni/result.js';
import { formatIP, parseIP } from '../../lib/ip/index.js';
import { hostLocalConfig, rangeSets, type HostLocalConfig, type RangeSet } from './config.js';
import { Store } from './store.js';
import { allocateNext, allocateRequested, freeCount, type Allocated } from './allocator.js';
import { parseResolvConf } from './resolvconf.js';
import { FP, trace } from '../../lib/cni/trace.js';

/**
 * host-local: addresses from static ranges, one file per address under
 * dataDir, shared with the reference plugin's format.
 */
type Ctx = PluginContext<HostLocalConfig>;

const DEFAULT_DATA_DIR = '/var/lib/cni/networks';
const storeOf = (ctx: Ctx) => new Store(ctx.config.ipam.dataDir ?? DEFAULT_DATA_DIR, ctx.config.name);

/** Requested addresses from the ips capability, args.cni.ips and CNI_ARGS IP=. */
function requestedIPs(ctx: Ctx): string[] {
  const out = [
    ...(ctx.config.runtimeConfig?.ips ?? []),
    ...(ctx.config.args?.cni?.ips ?? []),
    ...(ctx.args.get('IP')?.split(',').filter(Boolean) ?? []),
  ].map((s) => s.trim());
  for (const ip of out) {
    try {
      parseIP(ip.includes('/') ? ip.slice(0, ip.indexOf('/')) : ip);
    } catch {
      throw new CniError(ErrorCode.InvalidNetworkConfig, `invalid requested IP address "${ip}"`);
    }
  }
  return [...new Set(out)];
}

function toResult(ctx: Ctx, allocs: Allocated[], dns: Result['dns'] | undefined): Result {
  const result = emptyResult();
  for (const a of allocs) {
    result.ips.push({ address: `${formatIP(a.family, a.ip)}/${a.range.prefix}`, gateway: formatIP(a.family, a.range.gateway) });
  }
  result.routes = (ctx.config.ipam.routes ?? []).map((r) => (r.gw ? { dst: r.dst, gw: r.gw } : { dst: r.dst }));
  if (dns) result.dns = dns;
  return result;
}

function findSet(sets: RangeSet[], ip: string): { index: number; alloc: Allocated } | undefined {
  const p = parseIP(ip);
  for (let i = 0; i < sets.length; i++) {
    const r = sets[i].find((x) => x.family === p.family && p.ip >= x.start && p.ip <= x.end);
    if (r) return { index: i, alloc: { family: p.family, ip: p.ip, range: r } };
  }
  return undefined;
}

export default definePlugin({
  name: 'host-local',
  schema: hostLocalConfig,
  knownArgs: ['IP'],

  async add(ctx) {
    const sets = rangeSets(ctx.config.ipam);
    const requested = requestedIPs(ctx);
    // Read before allocating: an unreadable resolvConf must not leave an allocation behind.
    const dns = ctx.config.ipam.resolvConf ? parseResolvConf(ctx.config.ipam.resolvConf) : undefined;
    const who = { containerId: ctx.env.containerId, ifname: ctx.env.ifname };
    const store = storeOf(ctx);
    const allocs = await store.locked(() => {
      trace(FP.hostLocal.locked);
      const all = store.all();
      // A re-ADD of the same attachment gets its addresses back (the
      // reference fails with "duplicate allocation").
      const mine = all.filter((a) => a.containerId === who.containerId && a.ifname === who.ifname);
      const bySet = new Map<number, Allocated>();
      for (const a of mine) {
        const hit = findSet(sets, a.ip);
        if (hit && !bySet.has(hit.index)) bySet.set(hit.index, hit.alloc);
      }
      const taken = new Set(all.map((a) => a.ip));
      const fresh: string[] = [];
      try {
        for (const ip of requested) {
          const hit = findSet(sets, ip.includes('/') ? ip.slice(0, ip.indexOf('/')) : ip);
          if (hit && bySet.get(hit.index)?.ip === hit.alloc.ip) continue; // already ours
          if (hit && bySet.has(hit.index)) {
            throw new CniError(ErrorCode.AddressUnavailable, `container already holds ${formatIP(hit.alloc.family, bySet.get(hit.index)!.ip)} in that range, not ${ip}`);
          }
          const { setIndex, alloc } = allocateRequested(store, sets, ip, who);
          fresh.push(formatIP(alloc.family, alloc.ip));
          bySet.set(setIndex, alloc);
        }
        sets.forEach((set, i) => {
          if (bySet.has(i)) return;
          const alloc = allocateNext(store, set, i, taken, who);
          fresh.push(formatIP(alloc.family, alloc.ip));
          bySet.set(i, alloc);
        });
      } catch (err) {
        for (const ip of fresh) store.release(ip); // all or nothing
        throw err;
      }
      return sets.map((_, i) => bySet.get(i)!);
    });
    return toResult(ctx, allocs, dns);
  },

  async del(ctx) {
    const store = storeOf(ctx);
    await store.locked(() => {
      for (const a of store.all()) {
        if (a.containerId === ctx.env.containerId && (a.ifname === ctx.env.ifname || a.ifname === '')) store.release(a.ip);
        // An empty file is a reservation whose writer died before writing its owner (we hold the lock): no one's.
        else if (a.containerId === '') store.release(a.ip);
      }
    });
  },

  async check(ctx) {
    const store = storeOf(ctx);
    const mine = store.all().filter((a) => a.containerId === ctx.env.containerId && (a.ifname === ctx.env.ifname || a.ifname === ''));
    if (mine.length === 0) {
      throw new CniError(ErrorCode.CheckFailed, `host-local: container ${ctx.env.containerId} (${ctx.env.ifname}) has no IP allocated`);
    }
    for (const ip of ctx.prevResult?.ips ?? []) {
      const addr = formatIP(parseIP(ip.address.split('/')[0]).family, parseIP(ip.address.split('/')[0]).ip);
      if (findSet(rangeSets(ctx.config.ipam), addr) && !mine.some((a) => a.ip === addr)) {
        throw new CniError(ErrorCode.CheckFailed, `host-local: ${addr} is not allocated to container ${ctx.env.containerId}`);
      }
    }
  },

  async gc(ctx) {
    const valid = new Set(ctx.validAttachments.map((a) => `${a.containerID}\n${a.ifname}`));
    const validIds = new Set(ctx.validAttachments.map((a) => a.containerID));
    const store = storeOf(ctx);
    await store.locked(() => {
      for (const a of store.all()) {
        // Files of old plugin versions hold no ifname: keep them while the container is valid.
        const keep = a.ifname === '' ? validIds.has(a.containerId) : valid.has(`${a.containerId}\n${a.ifname}`);
        if (!keep) store.release(a.ip);
      }
    });
  },

  async status(ctx) {
    const sets = rangeSets(ctx.config.ipam);
    const taken = new Set(storeOf(ctx).all().map((a) => a.ip));
    sets.forEach((set, i) => {
      if (freeCount(set, taken) <= 0n) {
        throw new CniError(ErrorCode.NotAvailable, `no free addresses left in range set ${i} of network ${ctx.config.name}`);
      }
    });
  },
});
