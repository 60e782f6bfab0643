import { definePlugin, type PluginContext } from '../../lib/cni/skel.js';
import { CniError, ErrorCode } from '../../lib/cni/errors.js';
import { chainName } from '../../lib/iptables/names.js';
import { portCount } from '../../lib/iptables/rule.js';
import { canonicalIP, isCidr, isIP, parseCidr } from '../../lib/ip/index.js';
import { assertUsable, chooseBackend, cleanupBackends, inCleanupBackends, type Backend } from '../../lib/pf/backend.js';
import { aosFirewall, lockedAll, type AosNetwork } from '../../lib/pf/aos/index.js';
import { aosFirewallConfig, DEFAULT_BACKEND, type AosFirewallConfig } from './config.js';
import { maskToBase64, StateFile, type AccessChain, type AccessRule, type StateMap } from './state.js';
import { FP, trace } from '../../lib/cni/trace.js';

/**
 * aos-firewall: per-instance isolation for the Aos service manager, with the
 * original's chain names and state file. The rules are the Aos instance
 * firewall concern's (lib/pf/aos: iptables by default, nftables by
 * `backend`); why each one, and how Aos chains this plugin:
 * docs/aos-firewall.md.
 */
type Ctx = PluginContext<AosFirewallConfig>;
const WHAT = 'aos-firewall backend';
/** The backend DEL cleans first (then the other, where usable). */
const cleanupFirst = (cfg: AosFirewallConfig): Backend => cfg.backend || DEFAULT_BACKEND;
const MAX_PORTS = 15;
const bad = (msg: string, details = '') => new CniError(ErrorCode.InvalidNetworkConfig, msg, details);

/** Everything from the config that needs no kernel: validated before any change. */
function validated(cfg: AosFirewallConfig) {
  const tcp: string[] = [];
  const udp: string[] = [];
  for (const entry of cfg.inputAccess ?? []) {
    const protocol = (entry.protocol ?? '').toLowerCase() || 'tcp';
    if (protocol !== 'tcp' && protocol !== 'udp') throw bad(`inputAccess protocol "${entry.protocol}" is not supported`, 'use tcp or udp');
    if (entry.port.trim() === '') throw bad('inputAccess entry without a port');
    try {
      portCount(entry.port);
    } catch (err) {
      throw bad(`inputAccess: ${(err as Error).message}`, 'a port, a:b range or comma list of them');
    }
    (protocol === 'tcp' ? tcp : udp).push(...entry.port.split(','));
  }
  for (const [name, list] of [['tcp', tcp], ['udp', udp]] as const) {
    if (list.length && portCount(list.join(',')) > MAX_PORTS) {
      throw bad(`inputAccess: more than ${MAX_PORTS} ${name} ports`, 'iptables multiport takes at most 15 (a range counts as two)');
    }
  }
  const outRules: AccessRule[] = [];
  for (const o of cfg.outputAccess ?? []) {
    const address = (s: string, what: string) => {
      if (!isIP(s) && !isCidr(s)) throw bad(`outputAccess ${what} "${s}" is not an IP address`);
      if (s.includes(':')) throw new CniError(ErrorCode.UnsupportedField, 'aos-firewall handles IPv4 only', s);
      return s.includes('/') ? s : canonicalIP(s);
    };
    const dstIp = address(o.dstIp, 'dstIp');
    const srcIp = o.srcIp ? address(o.srcIp, 'srcIp') : '';
    const proto = (o.proto ?? '').toLowerCase();
    if (proto !== '' && proto !== 'tcp' && proto !== 'udp') throw bad(`outputAccess proto "${o.proto}" is not supported`, 'use tcp or udp');
    const dstPort = o.dstPort ?? '';
    if (dstPort !== '') {
      if (proto === '') throw bad('outputAccess dstPort needs proto tcp or udp');
      try {
        if (portCount(dstPort) > MAX_PORTS) throw new Error(`more than ${MAX_PORTS} ports`);
      } catch (err) {
        throw bad(`outputAccess: ${(err as Error).message}`);
      }
    }
    outRules.push({ dstIp, dstPort, proto, srcIp });
  }
  return { tcp, udp, outRules };
}

/** The host facts the rules need: the gateway's prefix on the host and, when public, the WAN interface. */
async function hostFacts(gateway: string, needWan: boolean): Promise<{ gatewayPrefixLen: string; wan: string }> {
  const { Rtnl } = await import('../../lib/netlink/rtnl.js');
  const host = Rtnl.open();
  try {
    const gw = canonicalIP(gateway);
    const holder = (await host.addresses(undefined, 4)).find((a) => a.ip === gw);
    if (!holder) throw bad(`no host interface has the gateway address ${gateway}`, 'chain aos-firewall after bridge with isGateway');
    let wan = '';
    if (needWan) {
      const route = (await host.routes(4)).find((r) => r.dst === '0.0.0.0/0' && r.table === 254 && r.oif !== undefined);
      if (!route) throw bad('allowPublicConnections needs a default route on the host to find the public interface');
      wan = (await host.linkByIndex(route.oif!))?.name ?? '';
      if (!wan) throw bad('the default route has no interface');
    }
    return { gatewayPrefixLen: String(holder.prefix), wan };
  } finally {
    host.close();
  }
}

async function entryFor(ctx: Ctx): Promise<AccessChain> {
  const cfg = ctx.config;
  const { tcp, udp, outRules } = validated(cfg);
  const prev = ctx.prevResult;
  if (!prev) throw bad('aos-firewall must be chained after bridge: missing prevResult');
  const first = prev.ips[0];
  if (!first) throw bad('got no container IPs in prevResult');
  if (first.address.includes(':')) throw new CniError(ErrorCode.UnsupportedField, 'aos-firewall handles IPv4 only', first.address);
  if (!first.gateway) throw bad('the container address in prevResult has no gateway');
  const c = parseCidr(first.address);
  const facts = await hostFacts(first.gateway, cfg.allowPublicConnections);
  return {
    name: chainName(cfg.iptablesAdminChainName, cfg.uuid),
    containerID: cfg.uuid,
    address: { IP: first.address.split('/')[0], Mask: maskToBase64(c.prefix) },
    gateway: canonicalIP(first.gateway),
    gatewayPrefixLen: facts.gatewayPrefixLen,
    publicInterface: facts.wan,
    outRules,
    inputPortsUDP: udp,
    inputPortsTCP: tcp,
    hasInternetConnection: cfg.allowPublicConnections,
  };
}

/** The network as the backend sees it: its name, the DROP-policy mode, the other instances' subnets (computed once, when asked). */
function networkOf(ctx: Ctx, map: StateMap): AosNetwork {
  let inUse: Set<string> | undefined;
  return {
    name: ctx.config.name,
    iptablesForwardDrop: ctx.config.iptablesForwardDrop ?? 'open',
    subnetInUse: (subnet) => (inUse ??= map.subnets(ctx.config.uuid)).has(subnet),
  };
}

export default definePlugin({
  name: 'aos-firewall',
  schema: aosFirewallConfig,

  async add(ctx) {
    const entry = await entryFor(ctx);
    const fw = await aosFirewall(chooseBackend(ctx.config.backend, DEFAULT_BACKEND, WHAT));
    const state = new StateFile(ctx.config.runtimeStatePath);
    // The backend's lock first (iptables: the namespace's), then the state file's (see withIptablesLock).
    await fw.locked(() => state.update(async (map) => {
      trace(FP.aosFirewall.stateLocked);
      const old = map.get(ctx.config.uuid);
      // Written ahead: a crash after the rules are applied must leave DEL the entry they are found by.
      // (Not when the entry changes address or chain: DEL must then still find the old rules.)
      const ahead = !old || (old.address.IP === entry.address.IP && old.name === entry.name);
      if (ahead) state.write(map.with(ctx.config.uuid, entry));
      try {
        await fw.add(entry, old, networkOf(ctx, map));
      } catch (err) {
        // A backend's failed add changed nothing (one transaction; a refusal comes before it): neither does the file.
        if (ahead) state.write(map);
        throw err;
      }
      map.set(ctx.config.uuid, entry);
    }));
    return ctx.prevResult!;
  },

  /** By uuid: what was applied is in the state file, no prevResult needed; cleaned in every usable backend. */
  async del(ctx) {
    const first = cleanupFirst(ctx.config);
    const impls = await Promise.all(cleanupBackends(first).map(aosFirewall));
    const state = new StateFile(ctx.config.runtimeStatePath);
    await lockedAll(impls, () => state.update(async (map) => {
      const entry = map.get(ctx.config.uuid);
      const name = chainName(ctx.config.iptablesAdminChainName, ctx.config.uuid);
      const net = networkOf(ctx, map);
      await inCleanupBackends(first, async (b) => impls.find((i) => i.backend === b)!.del(entry, name, ctx.config.uuid, net));
      map.delete(ctx.config.uuid);
    }));
  },

  async check(ctx) {
    const entry = await entryFor(ctx);
    const fw = await aosFirewall(chooseBackend(ctx.config.backend, DEFAULT_BACKEND, WHAT));
    const stored = new StateFile(ctx.config.runtimeStatePath).read().get(ctx.config.uuid);
    if (!stored) throw new CniError(ErrorCode.CheckFailed, `instance ${ctx.config.uuid} is not in ${ctx.config.runtimeStatePath}`);
    await fw.check(entry);
  },

  async status(ctx) {
    assertUsable(ctx.config.backend, DEFAULT_BACKEND, WHAT);
  },
});
