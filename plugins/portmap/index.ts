import { writeSysctl } from '../../lib/netlink/ns.js';
import { definePlugin, type PluginContext } from '../../lib/cni/skel.js';
import { CniError, ErrorCode } from '../../lib/cni/errors.js';
import type { Result } from '../../lib/cni/result.js';
import { contains, parseCidr, parseIP } from '../../lib/ip/index.js';
import { Rtnl } from '../../lib/netlink/rtnl.js';
import { assertUsable, chooseBackend, inCleanupBackends, type Backend } from '../../lib/pf/backend.js';
import { portForwarding, type PortmapParams } from '../../lib/pf/portmap/index.js';
import { DEFAULT_MARK_BIT } from '../../lib/pf/portmap/rules.js';
import { portmapConfig, requireOptionsOf, type PortmapConfig } from './config.js';

/**
 * portmap: publishes container ports on the host, in the reference
 * plugin's layouts (lib/pf/portmap): iptables (the default, as the
 * reference's) or nftables (`"backend": "nftables"`, or when the host has
 * nft but no iptables). Options of one backend only (externalSetMarkChain,
 * conditions in the other's syntax) are refused with the other, as the
 * reference does. DEL and GC clean up in every usable backend (a network
 * whose backend was switched still loses what the old one made); DEL needs
 * neither prevResult nor the namespace.
 */
type Ctx = PluginContext<PortmapConfig>;
type IpFamily = 4 | 6;

const WHAT = 'portmap backend';
const mappingsOf = (ctx: Ctx) => ctx.config.runtimeConfig?.portMappings ?? [];
const snatOf = (ctx: Ctx) => ctx.config.snat ?? true;

/** The backend ADD and CHECK write and read: configured, else iptables unless only nft is there; its options only. */
function backendOf(ctx: Ctx): Backend {
  const b = chooseBackend(ctx.config.backend, 'iptables', WHAT);
  requireOptionsOf(ctx.config, b);
  return b;
}

/** The container's first address of each family, preferring those on its own (sandbox) interfaces. */
export function containerAddresses(prev: Result): Map<IpFamily, string> {
  const out = new Map<IpFamily, string>();
  const inSandbox = (i?: number) => i === undefined || Boolean(prev.interfaces[i]?.sandbox);
  for (const pass of [true, false]) {
    for (const ip of prev.ips) {
      const fam: IpFamily = ip.address.includes(':') ? 6 : 4;
      if (!out.has(fam) && (!pass || inSandbox(ip.interface))) out.set(fam, ip.address);
    }
  }
  return out;
}

function paramsOf(ctx: Ctx, prev: Result): PortmapParams {
  const c = ctx.config;
  return {
    network: c.name,
    containerId: ctx.env.containerId,
    addresses: containerAddresses(prev),
    mappings: mappingsOf(ctx),
    snat: snatOf(ctx),
    masqAll: c.masqAll ?? false,
    markMasqBit: c.markMasqBit ?? DEFAULT_MARK_BIT,
    externalSetMarkChain: c.externalSetMarkChain,
    conditionsV4: c.conditionsV4 ?? [],
    conditionsV6: c.conditionsV6 ?? [],
  };
}

/**
 * localhost → container: packets to 127.0.0.1 may only be routed out of an
 * interface with route_localnet set; the interface is the one the host
 * routes the container's address through (the bridge).
 */
async function enableRouteLocalnet(container: string): Promise<void> {
  const { ip } = parseIP(container.split('/')[0]);
  const nl = Rtnl.open();
  try {
    let best: { prefix: number; oif: number } | undefined;
    for (const r of await nl.routes(4)) {
      if (r.table !== 254 || r.oif === undefined) continue;
      const c = parseCidr(r.dst);
      if (contains(c, 4, ip) && (!best || c.prefix > best.prefix)) best = { prefix: c.prefix, oif: r.oif };
    }
    const link = best && (await nl.linkByIndex(best.oif));
    if (link) writeSysctl(['net', 'ipv4', 'conf', link.name, 'route_localnet'], '1');
  } finally {
    nl.close();
  }
}

/**
 * As the reference does on ADD: conntrack entries for the published UDP
 * ports made before this mapping existed (a client that kept sending while
 * the container was away) would go on bypassing the new DNAT; they are
 * deleted. A failure is reported on stderr, not fatal (the mapping itself is in place).
 */
async function dropStaleUdpEntries(ctx: Ctx, family: IpFamily): Promise<void> {
  const ports = [...new Set(mappingsOf(ctx).filter((m) => m.protocol === 'udp').map((m) => m.hostPort))];
  if (ports.length === 0) return;
  try {
    const { deleteUdpEntries } = await import('../../lib/netlink/conntrack.js');
    await deleteUdpEntries(family, ports);
  } catch (err) {
    process.stderr.write(`portmap: could not delete stale UDP conntrack entries (IPv${family}): ${(err as Error)?.message ?? err}\n`);
  }
}

export default definePlugin({
  name: 'portmap',
  schema: portmapConfig,

  async add(ctx) {
    const prev = ctx.prevResult;
    if (!prev) throw new CniError(ErrorCode.InvalidNetworkConfig, 'portmap must be called as a chained plugin: missing prevResult');
    if (mappingsOf(ctx).length === 0) return prev; // nothing published: no rules, no error
    const pf = await portForwarding(backendOf(ctx));
    const p = paramsOf(ctx, prev);
    if (p.addresses.size === 0) return prev;
    await pf.forward(p);
    const v4 = p.addresses.get(4);
    if (v4 && p.snat) await enableRouteLocalnet(v4);
    for (const family of p.addresses.keys()) await dropStaleUdpEntries(ctx, family);
    return prev;
  },

  /** Every usable backend, the configured one first: a container may have been added before the network switched. */
  async del(ctx) {
    await inCleanupBackends(ctx.config.backend, async (b) => (await portForwarding(b)).unforward(ctx.config.name, ctx.env.containerId));
  },

  /** Only the families the container has an address in (the reference also demands the other one). */
  async check(ctx) {
    const prev = ctx.prevResult;
    if (!prev) throw new CniError(ErrorCode.InvalidNetworkConfig, 'portmap CHECK needs prevResult');
    if (mappingsOf(ctx).length === 0) return;
    await (await portForwarding(backendOf(ctx))).check(paramsOf(ctx, prev));
  },

  /** This network's rules of containers not in valid-attachments, in every usable backend. */
  async gc(ctx) {
    const keep = new Set(ctx.validAttachments.map((a) => a.containerID));
    await inCleanupBackends(ctx.config.backend, async (b) => (await portForwarding(b)).gc(ctx.config.name, keep));
  },

  /** Fails when the configured backend (or, unset, either one) cannot work on this host. */
  async status(ctx) {
    requireOptionsOf(ctx.config, assertUsable(ctx.config.backend, 'iptables', WHAT));
  },
});
