import { writeSysctl } from '../../lib/netlink/ns.js';
import { definePlugin, type PluginContext } from '../../lib/cni/skel.js';
import { CniError, ErrorCode } from '../../lib/cni/errors.js';
import type { Result } from '../../lib/cni/result.js';
import { save, transaction, type IpFamily, type TablePlan } from '../../lib/iptables/index.js';
import { contains, parseCidr, parseIP } from '../../lib/ip/index.js';
import { Rtnl } from '../../lib/netlink/rtnl.js';
import { portmapConfig, type PortmapConfig } from './config.js';
import { trace } from '../../lib/cni/trace.js';
import { DEFAULT_MARK_BIT, dnatChain, dnatRules, MASQ, masqJump, masqRule, SETMARK, setMarkRule, TOP_DNAT, topJumps } from './rules.js';

/**
 * portmap: publishes container ports on the host, the reference plugin's
 * iptables layout (see rules.ts). One save + one restore per address family
 * and call. DEL needs neither prevResult nor the namespace: the container's
 * chain is named by (network, containerID).
 */
type Ctx = PluginContext<PortmapConfig>;

const mappingsOf = (ctx: Ctx) => ctx.config.runtimeConfig?.portMappings ?? [];
const snatOf = (ctx: Ctx) => ctx.config.snat ?? true;

function requireIptables(ctx: Ctx): void {
  if (ctx.config.backend === 'nftables') {
    throw new CniError(ErrorCode.UnsupportedField, 'backend "nftables" is not supported by this portmap plugin', 'use "backend": "iptables" (the default)');
  }
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

function planShared(p: TablePlan, ctx: Ctx): string {
  const snat = snatOf(ctx);
  const external = ctx.config.externalSetMarkChain;
  const bit = ctx.config.markMasqBit ?? DEFAULT_MARK_BIT;
  if (snat && !external) {
    p.ensureChain(SETMARK).appendUnique(setMarkRule(bit));
    p.ensureChain(MASQ).appendUnique(masqRule(bit));
    // First in POSTROUTING: bridge's ipMasq rules would otherwise see the packet first.
    p.insertUnique(masqJump());
  }
  p.ensureChain(TOP_DNAT);
  for (const j of topJumps()) p.appendUnique(j);
  return external ?? SETMARK;
}

/** The container's chain, emptied and unhooked (it stays, empty, only when refilled in the same restore). */
function planRemove(p: TablePlan, chain: string): void {
  p.removeChain(chain);
}

function rulesFor(ctx: Ctx, family: IpFamily, container: string) {
  return dnatRules({
    network: ctx.config.name,
    containerId: ctx.env.containerId,
    family,
    container,
    mappings: mappingsOf(ctx),
    snat: snatOf(ctx),
    masqAll: ctx.config.masqAll ?? false,
    setMarkChain: ctx.config.externalSetMarkChain ?? SETMARK,
    conditions: (family === 4 ? ctx.config.conditionsV4 : ctx.config.conditionsV6) ?? [],
  });
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

/** ip6tables may be missing or unusable on a v4-only host: DEL and GC skip it there (a failed save), but not a failed restore. */
async function inV6(plan: (p: TablePlan) => void): Promise<void> {
  try {
    await transaction(6, 'nat', plan);
  } catch (err) {
    if (!(err instanceof CniError && /-save failed$/.test(err.message))) throw err;
  }
}

/**
 * As the reference does on ADD: conntrack entries for the published UDP
 * ports made before this mapping existed (a client that kept sending while
 * the container was away) would go on bypassing the new DNAT; they are
 * deleted. A failure is reported on stderr, not fatal (the mapping itself is in place).
 */
async function dropStaleUdpEntries(ctx: Ctx, family: 4 | 6): Promise<void> {
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
    requireIptables(ctx);
    const prev = ctx.prevResult;
    if (!prev) throw new CniError(ErrorCode.InvalidNetworkConfig, 'portmap must be called as a chained plugin: missing prevResult');
    if (mappingsOf(ctx).length === 0) return prev; // nothing published: no rules, no error
    for (const [family, container] of containerAddresses(prev)) {
      const { chain, entries, rules } = rulesFor(ctx, family, container);
      await transaction(family, 'nat', (p) => {
        planShared(p, ctx);
        // Start from a clean chain: a re-ADD or a half-done earlier ADD leaves no stale rule.
        planRemove(p, chain);
        p.ensureChain(chain);
        for (const r of rules) p.appendUnique(r);
        for (const e of entries) p.appendUnique(e);
      });
      if (family === 4 && snatOf(ctx)) await enableRouteLocalnet(container);
      await dropStaleUdpEntries(ctx, family);
      trace('portmap: family done');
    }
    return prev;
  },

  async del(ctx) {
    requireIptables(ctx);
    // The chain may exist in either family whatever prevResult says (or lacks).
    const chain = dnatChain(ctx.config.name, ctx.env.containerId);
    await transaction(4, 'nat', (p) => planRemove(p, chain));
    await inV6((p) => planRemove(p, chain));
  },

  /** Only the families the container has an address in (the reference also demands the other one). */
  async check(ctx) {
    requireIptables(ctx);
    const prev = ctx.prevResult;
    if (!prev) throw new CniError(ErrorCode.InvalidNetworkConfig, 'portmap CHECK needs prevResult');
    if (mappingsOf(ctx).length === 0) return;
    for (const [family, container] of containerAddresses(prev)) {
      const { chain, entries, rules } = rulesFor(ctx, family, container);
      const state = await save(family, 'nat');
      const have = state.rules.filter((r) => r.chain === chain).map((r) => r.spec.join(' '));
      const want = rules.map((r) => r.spec.join(' '));
      if (have.join('\n') !== want.join('\n')) {
        const missing = want.find((w) => !have.includes(w));
        throw new CniError(ErrorCode.CheckFailed, `portmap chain ${chain} does not hold the expected rules (IPv${family})`, missing ? `missing: -A ${chain} ${missing}` : `found: ${have.join(' | ')}`);
      }
      const needed = [...topJumps(), ...(snatOf(ctx) && !ctx.config.externalSetMarkChain ? [masqJump(), setMarkRule(ctx.config.markMasqBit ?? DEFAULT_MARK_BIT), masqRule(ctx.config.markMasqBit ?? DEFAULT_MARK_BIT)] : [])];
      // Entry rules with user conditions are printed back in iptables' own normal
      // form, which we cannot predict for arbitrary matches: count those instead.
      const conditional = (family === 4 ? ctx.config.conditionsV4 : ctx.config.conditionsV6)?.length;
      if (!conditional) needed.push(...entries);
      const keys = new Set(state.rules.map((r) => `${r.chain} ${r.spec.join(' ')}`));
      for (const r of needed) {
        if (!keys.has(`${r.chain} ${r.spec.join(' ')}`)) throw new CniError(ErrorCode.CheckFailed, `portmap rule missing (IPv${family})`, `-A ${r.chain} ${r.spec.join(' ')}`);
      }
      const jumps = state.rules.filter((r) => r.chain === TOP_DNAT && r.spec.at(-1) === chain).length;
      if (jumps !== entries.length) throw new CniError(ErrorCode.CheckFailed, `portmap: ${jumps} jumps to ${chain}, expected ${entries.length} (IPv${family})`);
    }
  },

  /** Removes this network's container chains whose container is not in valid-attachments. */
  async gc(ctx) {
    requireIptables(ctx);
    const keep = new Set(ctx.validAttachments.map((a) => dnatChain(ctx.config.name, a.containerID)));
    const marker = `dnat name: "${ctx.config.name}" id: "`;
    const sweep = (p: TablePlan) => {
      for (const r of p.rulesOf(TOP_DNAT)) {
        const target = r.spec.at(-1)!;
        const comment = r.spec[r.spec.indexOf('--comment') + 1] ?? '';
        if (target.startsWith('CNI-DN-') && comment.startsWith(marker) && !keep.has(target)) p.removeChain(target);
      }
    };
    await transaction(4, 'nat', sweep);
    await inV6(sweep);
  },
});
