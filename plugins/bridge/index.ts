import { randomBytes } from 'node:crypto';
import { closeSync, openSync } from 'node:fs';
import { definePlugin, type PluginContext } from '../../lib/cni/skel.js';
import { CniError, ErrorCode, toCniError } from '../../lib/cni/errors.js';
import { delegate } from '../../lib/cni/delegate.js';
import type { Result } from '../../lib/cni/result.js';
import { Netns, writeSysctl } from '../../lib/netlink/ns.js';
import { Rtnl, errnoOf, type LinkInfo, kernelError } from '../../lib/netlink/rtnl.js';
import { masquerade, type MasqKnown, type MasqOwner } from '../../lib/pf/masq/index.js';
import { assertUsable, chooseBackend, inCleanupBackends } from '../../lib/pf/backend.js';
import { compareVersions } from '../../lib/cni/version.js';
import { canonicalIP, canonicalNetwork, parseCidr, formatIP, network, contains, parseIP } from '../../lib/ip/index.js';
import { bridgeConfig, trunkIds, type BridgeConfig } from './config.js';
import { FP, trace } from '../../lib/cni/trace.js';

/**
 * bridge: a Linux bridge on the host, a veth pair per container with its
 * host end enslaved to the bridge, addresses from the IPAM plugin. With
 * `tap` set, the port is a TAP on the host for a microVM instead
 * (./tap-port.ts, docs/microvm.md); the rest of the bridge is the same.
 */
export type Ctx = PluginContext<BridgeConfig>;

/** The IPAM plugin's type; none (no "ipam", or an empty type, as the reference reads it) means layer 2 only. */
export function ipamType(ctx: Ctx): string | undefined {
  return ctx.config.ipam?.type || undefined;
}

export function requestedMac(ctx: Ctx): string | undefined {
  return ctx.config.runtimeConfig?.mac ?? ctx.config.args?.cni?.mac ?? ctx.args.get('MAC');
}

/** bridge's ipMasqBackend, as the reference chooses it: iptables unless only nft is there. */
export const masqBackend = (cfg: BridgeConfig) => chooseBackend(cfg.ipMasqBackend, 'iptables', 'bridge ipMasqBackend');
export const masqOwner = (ctx: Ctx): MasqOwner => ({ network: ctx.config.name, containerId: ctx.env.containerId, ifname: ctx.env.ifname });

/** Families the network's addresses may be in, for teardown without a result. */
export function familiesOf(ctx: Ctx): (4 | 6)[] {
  const fams = new Set<4 | 6>();
  for (const ip of ctx.prevResult?.ips ?? []) fams.add(ip.address.includes(':') ? 6 : 4);
  const ipam = ctx.config.ipam as Record<string, unknown> | undefined;
  const subnets: unknown[] = [ipam?.subnet, ...(Array.isArray(ipam?.ranges) ? (ipam.ranges as unknown[]).flat() : []).map((r) => (r as { subnet?: unknown })?.subnet)];
  for (const s of subnets) if (typeof s === 'string') fams.add(s.includes(':') ? 6 : 4);
  if (fams.size === 0) fams.add(4);
  return [...fams];
}

/** The bridge, created (and pinned, up) if missing; `created`: this call made it. */
export async function ensureBridge(host: Rtnl, cfg: BridgeConfig, vlanFiltering: boolean): Promise<LinkInfo & { created: boolean }> {
  let br = await host.linkByName(cfg.bridge);
  let created = false;
  if (!br) {
    try {
      await host.createBridge(cfg.bridge, { mtu: cfg.mtu || undefined, vlanFiltering });
      created = true;
    } catch (err) {
      if (errnoOf(err) !== 'EEXIST') throw kernelError(`failed to create bridge ${cfg.bridge}`, err);
    }
    br = await host.linkByName(cfg.bridge);
    if (!br) throw new CniError(ErrorCode.KernelRefused, `bridge ${cfg.bridge} vanished after creation`);
  }
  if (br.kind !== 'bridge') throw new CniError(ErrorCode.InvalidNetworkConfig, `${cfg.bridge} already exists but is not a bridge`);
  // Pin the bridge's MAC (the kernel then marks it as set, addr_assign_type 3):
  // otherwise a bridge takes the lowest MAC of its ports and changes it when
  // that container leaves, and every other container's ARP entry for the
  // gateway goes stale. Only once, by whoever created the bridge: setting a
  // MAC — even the same one — makes the kernel flush the bridge's neighbour
  // table, which every later ADD would otherwise do.
  if (created) await host.setMac(br.index, br.mac);
  if (cfg.promiscMode && !br.promisc) await host.setPromisc(br.index, true);
  if (!br.up) await host.setUp(br.index);
  return { ...br, created };
}

async function createVeth(host: Rtnl, cont: Rtnl, netns: Netns, ifname: string, mtu: number, mac: string | undefined, hostFd: number): Promise<{ hostName: string }> {
  if (await cont.linkByName(ifname)) {
    throw new CniError(ErrorCode.InvalidEnvironment, `container already has an interface named ${ifname}`, netns.path);
  }
  for (let attempt = 0; attempt < 5; attempt++) {
    const hostName = `veth${randomBytes(4).toString('hex')}`;
    try {
      await cont.createVeth({ name: ifname, peerName: hostName, peerNsFd: hostFd, mtu: mtu || undefined, mac });
      return { hostName };
    } catch (err) {
      if (errnoOf(err) === 'EEXIST' && !(await cont.linkByName(ifname))) continue; // host name taken: try another
      throw kernelError(`failed to create veth pair for ${ifname}`, err);
    }
  }
  throw new CniError(ErrorCode.KernelRefused, 'could not find a free host veth name');
}

export async function ensureGatewayAddress(host: Rtnl, br: LinkInfo, gwCidr: string, force: boolean): Promise<void> {
  const want = parseCidr(gwCidr);
  const existing = await host.addresses(br.index, want.family);
  for (const a of existing) {
    const have = parseCidr(a.cidr);
    if (have.ip === want.ip && have.prefix === want.prefix) return;
    // The reference's rule (ensureAddr): a bridge has one IPv4 address, so any
    // other one is a conflict; IPv6 addresses conflict only when their subnets
    // overlap. forceAddress replaces the conflicting address.
    if (want.family === 4 || contains(network(have), want.family, want.ip) || contains(network(want), have.family, have.ip)) {
      if (!force) {
        throw new CniError(ErrorCode.InvalidNetworkConfig, `failed to set bridge addr: "${br.name}" already has an IP address different from ${gwCidr}`, `${br.name} has ${a.cidr}; set "forceAddress" to replace it`);
      }
      await host.delAddress(br.index, a.cidr);
    }
  }
  try {
    await host.addAddress(br.index, gwCidr, { noDad: want.family === 6 });
  } catch (err) {
    if (errnoOf(err) !== 'EEXIST') throw kernelError(`failed to add ${gwCidr} to ${br.name}`, err);
  }
}

/** ADD's checks of the configuration, before anything is made (both port types). */
export function validateAdd(ctx: Ctx): { trunk: number[]; vlanFiltering: boolean } {
  const cfg = ctx.config;
  // The reference refuses the pair: with the bridge promiscuous, a hairpinned
  // port gets its own frames back flooded as well.
  if (cfg.hairpinMode && cfg.promiscMode) {
    throw new CniError(ErrorCode.InvalidNetworkConfig, 'cannot set hairpin mode and promiscuous mode at the same time.');
  }
  let trunk: number[];
  try {
    trunk = trunkIds(cfg);
  } catch (err) {
    throw new CniError(ErrorCode.InvalidNetworkConfig, (err as Error).message);
  }
  if (cfg.vlan && trunk.length) throw new CniError(ErrorCode.InvalidNetworkConfig, 'cannot set vlan and vlanTrunk at the same time');
  // A layer-2 attachment has no address, and results before 0.3.0 are made of
  // addresses (ip4/ip6): refuse before creating anything (the reference
  // fails the same way, but only after attaching the container, and leaves it).
  if (!ipamType(ctx) && compareVersions(ctx.cniVersion, '0.3.0') < 0) {
    throw new CniError(ErrorCode.IncompatibleVersion, 'cannot convert: no valid IP addresses', `a bridge without "ipam" has no address to report in a cniVersion ${ctx.cniVersion} result`);
  }
  return { trunk, vlanFiltering: cfg.vlan !== 0 || trunk.length > 0 };
}

/**
 * Makes `port` (a host veth end, or a VM's TAP) a port of the bridge: master,
 * hairpin, VLANs, up. The same for both port types.
 */
export async function attachPort(host: Rtnl, port: LinkInfo, br: LinkInfo, cfg: BridgeConfig, trunk: number[], vlanFiltering: boolean): Promise<void> {
  try {
    await host.setMaster(port.index, br.index);
    if (cfg.hairpinMode) await host.setHairpin(port.index, true);
    // As the reference: unless told to keep it, the port leaves the default VLAN 1 its joining gave it
    // (a kernel without VLAN filtering has none; one that lost it already answers ENOENT).
    if (vlanFiltering && !cfg.preserveDefaultVlan) {
      await host.bridgeVlanDel(port.index, 1).catch((e) => {
        if (errnoOf(e) !== 'ENOENT') throw e;
      });
    }
    if (cfg.vlan) await host.bridgeVlanAdd(port.index, cfg.vlan, { pvid: true, untagged: true });
    for (const id of trunk) await host.bridgeVlanAdd(port.index, id);
    // A trunk without a vlan keeps VLAN 1 as its native (untagged) VLAN, as the reference does.
    if (!cfg.vlan && trunk.length) await host.bridgeVlanAdd(port.index, 1, { pvid: true, untagged: true });
    await host.setUp(port.index);
  } catch (err) {
    throw kernelError(`failed to attach ${port.name} to ${cfg.bridge}`, err);
  }
}

/** isDefaultGateway: a default route per family through the IPAM gateway (the reference's rule). */
export function addDefaultRoutes(result: Result): void {
  for (const fam of new Set(result.ips.map((ip) => (ip.address.includes(':') ? 6 : 4)))) {
    const dst = fam === 4 ? '0.0.0.0/0' : '::/0';
    const gw = result.ips.find((ip) => (ip.address.includes(':') ? 6 : 4) === fam)?.gateway;
    const existing = result.routes.find((r) => canonicalNetwork(r.dst) === dst);
    if (existing && existing.gw && gw && canonicalIP(existing.gw) !== canonicalIP(gw)) {
      throw new CniError(ErrorCode.InvalidNetworkConfig, `isDefaultGateway ineffective because IPAM sets default route via ${existing.gw}`);
    }
    if (existing) existing.gw ??= gw;
    else if (gw) result.routes.push({ dst, gw });
  }
}

/** isGateway: the gateway addresses on the bridge, forwarding on. */
export async function configureGateway(host: Rtnl, br: LinkInfo, result: Result, force: boolean): Promise<void> {
  for (const ip of result.ips) {
    if (!ip.gateway) continue;
    const prefix = parseCidr(ip.address).prefix;
    await ensureGatewayAddress(host, br, `${ip.gateway}/${prefix}`, force);
  }
  if (hasV4(result)) writeSysctl(['net', 'ipv4', 'ip_forward'], '1');
  if (result.ips.some((ip) => ip.address.includes(':'))) writeSysctl(['net', 'ipv6', 'conf', 'all', 'forwarding'], '1');
}

async function add(ctx: Ctx): Promise<Result> {
  const cfg = ctx.config;
  if (cfg.tap) return (await import('./tap-port.js')).addTap(ctx);
  const { trunk, vlanFiltering } = validateAdd(ctx);
  const isGateway = cfg.isGateway || cfg.isDefaultGateway;
  const type = ipamType(ctx);

  // The masquerade backend is chosen before anything is made (no usable tool: an error, nothing to undo).
  const masq = cfg.ipMasq && type ? await masquerade(masqBackend(cfg)) : undefined;
  const netns = Netns.open(ctx.env.netns);
  // The backend's tool starts now (iptables-restore) and gets its rules once IPAM has answered.
  const masqPrepared = masq?.prepare();
  const host = Rtnl.open();
  const cont = Rtnl.open(netns);
  const hostNsFd = openSync('/proc/thread-self/ns/net', 'r');
  let vethCreated = false;
  let spoofCheckSet = false;
  let ipamDone = false;
  try {
    trace(FP.bridge.socketsOpen);
    const br = await ensureBridge(host, cfg, vlanFiltering);
    trace(FP.bridge.bridgeReady);
    const { hostName } = await createVeth(host, cont, netns, ctx.env.ifname, cfg.mtu, requestedMac(ctx), hostNsFd);
    vethCreated = true;
    trace(FP.bridge.vethCreated);
    const hostVeth = await host.linkByName(hostName);
    const contLink = await cont.linkByName(ctx.env.ifname);
    if (!hostVeth || !contLink) throw new CniError(ErrorCode.KernelRefused, 'veth pair not found after creation');
    await attachPort(host, hostVeth, br, cfg, trunk, vlanFiltering);

    trace(FP.bridge.vethAttached);
    if (cfg.macspoofchk) {
      // As the reference: only the container's MAC may enter the bridge from its veth.
      const { spoofCheckSetup, spoofCheckId } = await import('../../lib/nft/spoofcheck.js');
      spoofCheckSet = true; // one nft transaction: all or nothing, but a kill right after must still be undone
      await spoofCheckSetup(hostName, contLink.mac, spoofCheckId(ctx.env.containerId, ctx.env.ifname));
      trace(FP.bridge.spoofcheckSet);
    }
    // Addresses come from the IPAM plugin, run as a runtime would. Without
    // one the container is attached at layer 2 only, as with the reference:
    // no address, route, gateway or masquerade.
    let ipam: Result | undefined;
    if (type) {
      ipam = await delegate({ command: 'ADD', type, stdin: ctx.stdin, env: ctx.env });
      ipamDone = true;
      trace(FP.bridge.ipamDone);
      if (!ipam || ipam.ips.length === 0) throw new CniError(ErrorCode.InvalidNetworkConfig, 'IPAM plugin returned missing IP config');
    }

    const result: Result = {
      interfaces: [
        { name: br.name, mac: br.mac },
        { name: hostName, mac: hostVeth.mac },
        { name: ctx.env.ifname, mac: contLink.mac, sandbox: ctx.env.netns },
      ],
      ips: (ipam?.ips ?? []).map((ip) => ({ ...ip, interface: 2 })),
      routes: [...(ipam?.routes ?? [])],
      dns: ipam?.dns ?? {},
    };
    if (cfg.isDefaultGateway) addDefaultRoutes(result);

    // Container side: v6 on, DAD off unless asked, addresses, up, routes.
    const hasV6 = result.ips.some((ip) => ip.address.includes(':'));
    netns.run(() => {
      // As the reference (layer 3 only): a gratuitous ARP when the interface
      // comes up, so neighbours that still map a reused address to the MAC of
      // its previous owner learn the new one at once instead of after their
      // entry goes stale. Best effort, as there: a kernel without IPv4 has no such key.
      if (type) {
        try {
          writeSysctl(['net', 'ipv4', 'conf', ctx.env.ifname, 'arp_notify'], '1');
        } catch {
          // nothing to announce then
        }
      }
      if (hasV6) {
        writeSysctl(['net', 'ipv6', 'conf', ctx.env.ifname, 'disable_ipv6'], '0');
        if (!cfg.enabledad) writeSysctl(['net', 'ipv6', 'conf', ctx.env.ifname, 'accept_dad'], '0');
      }
    });
    try {
      for (const ip of result.ips) await cont.addAddress(contLink.index, ip.address, { noDad: !cfg.enabledad });
      if (!cfg.disableContainerInterface) await cont.setUp(contLink.index);
      trace(FP.bridge.addressesSet);
      if (!cfg.disableContainerInterface) {
        for (const r of result.routes) {
          const fam = r.dst.includes(':') ? 6 : 4;
          const gw = r.gw ?? result.ips.find((ip) => (ip.address.includes(':') ? 6 : 4) === fam)?.gateway;
          try {
            await cont.addRoute({ dst: canonicalNetwork(r.dst), gw, index: contLink.index, mtu: r.mtu, priority: r.priority, table: r.table, advmss: r.advmss });
          } catch (err) {
            if (errnoOf(err) !== 'EEXIST') throw err;
          }
        }
      }
    } catch (err) {
      throw kernelError(`failed to configure ${ctx.env.ifname} in ${ctx.env.netns}`, err);
    }

    trace(FP.bridge.routesSet);
    if (isGateway) await configureGateway(host, br, result, cfg.forceAddress);
    trace(FP.bridge.gatewayConfigured);
    if (masq) await masq.add(masqOwner(ctx), result.ips.map((ip) => ip.address), masqPrepared);

    trace(FP.bridge.masqDone);
    // The bridge's MAC may change as ports join: report what it is now.
    const brNow = await host.linkByIndex(br.index);
    if (brNow) result.interfaces[0].mac = brNow.mac;
    return result;
  } catch (err) {
    // Leave nothing behind: the veth, the address, the NAT chain.
    if (vethCreated) {
      const l = await cont.linkByName(ctx.env.ifname).catch(() => undefined);
      if (l) await cont.deleteLink(l.index).catch(() => undefined);
    }
    if (spoofCheckSet) await import('../../lib/nft/spoofcheck.js').then((m) => m.spoofCheckTeardown(m.spoofCheckId(ctx.env.containerId, ctx.env.ifname))).catch(() => undefined);
    if (ipamDone && type) await delegate({ command: 'DEL', type, stdin: ctx.stdin, env: ctx.env }).catch(() => undefined);
    if (masq && ipamDone) await masq.del(masqOwner(ctx), { families: familiesOf(ctx), cidrs: [] }).catch(() => undefined);
    throw toCniError(err);
  } finally {
    await masqPrepared?.release();
    closeSync(hostNsFd);
    host.close();
    cont.close();
    netns.close();
  }
}

export const hasV4 = (r: Result) => r.ips.some((ip) => !ip.address.includes(':'));

async function del(ctx: Ctx): Promise<void> {
  const cfg = ctx.config;
  if (cfg.tap) return (await import('./tap-port.js')).delTap(ctx);
  const errors: CniError[] = [];
  // IPAM first: the address must be released even when the namespace is gone.
  if (cfg.ipam?.type) {
    await delegate({ command: 'DEL', type: cfg.ipam.type, stdin: ctx.stdin, env: ctx.env }).catch((e) => errors.push(toCniError(e)));
  }
  trace(FP.bridge.ipamReleased);
  const netns = ctx.env.netns ? Netns.tryOpen(ctx.env.netns) : undefined;
  // The container's addresses let the NAT teardown delete exact rules.
  const known = new Set((ctx.prevResult?.ips ?? []).map((ip) => ip.address));
  if (netns) {
    const cont = Rtnl.open(netns);
    try {
      const l = await cont.linkByName(ctx.env.ifname);
      if (l) {
        if (cfg.ipMasq) for (const a of await cont.addresses(l.index).catch(() => [])) if (a.family === 4 || !a.ip.startsWith('fe80:')) known.add(a.cidr);
        trace(FP.bridge.addressesRead);
        await cont.deleteLink(l.index).catch((e) => {
          if (errnoOf(e) !== 'ENODEV') errors.push(kernelError(`failed to delete ${ctx.env.ifname}`, e));
        });
      }
    } finally {
      cont.close();
      netns.close();
    }
  }
  trace(FP.bridge.linkDeleted);
  if (cfg.macspoofchk) {
    const { spoofCheckTeardown, spoofCheckId } = await import('../../lib/nft/spoofcheck.js');
    await spoofCheckTeardown(spoofCheckId(ctx.env.containerId, ctx.env.ifname)).catch((e) => errors.push(toCniError(e)));
  }
  if (cfg.ipMasq) {
    // In every usable backend, the configured one first: a network switched from one to the other still loses the old rules.
    const k: MasqKnown = { families: familiesOf(ctx), cidrs: [...known] };
    await inCleanupBackends(cfg.ipMasqBackend, async (b) => (await masquerade(b)).del(masqOwner(ctx), k)).catch((e) => errors.push(toCniError(e)));
  }
  if (errors.length) throw errors[0];
}

async function check(ctx: Ctx): Promise<void> {
  const cfg = ctx.config;
  if (cfg.tap) return (await import('./tap-port.js')).checkTap(ctx);
  const prev = ctx.prevResult;
  if (!prev) throw new CniError(ErrorCode.InvalidNetworkConfig, 'CHECK needs a prevResult');
  const fail = (msg: string, details = '') => new CniError(ErrorCode.CheckFailed, msg, details);
  const type = ipamType(ctx);
  if (type) await delegate({ command: 'CHECK', type, stdin: ctx.stdin, env: ctx.env });

  const netns = Netns.open(ctx.env.netns);
  const host = Rtnl.open();
  const cont = Rtnl.open(netns);
  try {
    const br = await host.linkByName(cfg.bridge);
    if (!br || br.kind !== 'bridge') throw fail(`bridge ${cfg.bridge} not found`);
    const contIf = prev.interfaces.find((i) => i.sandbox && i.name === ctx.env.ifname);
    if (!contIf) throw fail(`prevResult has no interface ${ctx.env.ifname} in a sandbox`);
    const l = await cont.linkByName(ctx.env.ifname);
    if (!l) throw fail(`interface ${ctx.env.ifname} not found in ${ctx.env.netns}`);
    if (l.kind !== 'veth') throw fail(`${ctx.env.ifname} is not a veth`);
    if (contIf.mac && contIf.mac.toLowerCase() !== l.mac) throw fail(`${ctx.env.ifname} has MAC ${l.mac}, expected ${contIf.mac}`);
    const hostVeth = l.peerIndex !== undefined ? await host.linkByIndex(l.peerIndex) : undefined;
    if (!hostVeth || hostVeth.master !== br.index) throw fail(`the host end of ${ctx.env.ifname} is not a port of ${cfg.bridge}`);
    if (cfg.macspoofchk) {
      const { spoofCheckVerify, spoofCheckId } = await import('../../lib/nft/spoofcheck.js');
      await spoofCheckVerify(hostVeth.name, l.mac, spoofCheckId(ctx.env.containerId, ctx.env.ifname));
    }

    const addrs = await cont.addresses(l.index);
    const ifIndex = prev.interfaces.indexOf(contIf);
    for (const ip of prev.ips) {
      if (ip.interface !== undefined && ip.interface !== ifIndex) continue;
      const want = parseCidr(ip.address);
      if (!addrs.some((a) => { const c = parseCidr(a.cidr); return c.ip === want.ip && c.prefix === want.prefix && c.family === want.family; })) {
        throw fail(`address ${ip.address} not found on ${ctx.env.ifname}`);
      }
    }
    const routes = await cont.routes();
    for (const r of prev.routes) {
      const dst = canonicalNetwork(r.dst);
      const fam = parseCidr(dst).family;
      const found = routes.some((x) => x.oif === l.index && x.dst === dst && (!r.gw || (x.gw !== undefined && formatIP(fam, parseIP(x.gw).ip) === formatIP(fam, parseIP(r.gw).ip))));
      if (!found) throw fail(`route to ${r.dst}${r.gw ? ` via ${r.gw}` : ''} not found in ${ctx.env.netns}`);
    }
    if (cfg.ipMasq && type) await (await masquerade(masqBackend(cfg))).check(masqOwner(ctx), prev.ips.map((ip) => ip.address));
  } finally {
    host.close();
    cont.close();
    netns.close();
  }
}

export default definePlugin({
  name: 'bridge',
  schema: bridgeConfig,
  knownArgs: ['MAC', 'IP'],
  // Host-TAP mode acts only on the plugin's own namespace, never CNI_NETNS (docs/microvm.md).
  allowsHostNetns: (cfg) => cfg.tap !== undefined,
  add,
  del,
  check,
  async gc(ctx) {
    const errors: unknown[] = [];
    if (ctx.config.ipam?.type) {
      await delegate({ command: 'GC', type: ctx.config.ipam.type, stdin: ctx.stdin, env: ctx.env }).catch((e) => errors.push(e));
    }
    // Host-TAP mode: this network's TAPs whose attachment the runtime no longer uses.
    if (ctx.config.tap) await (await import('./tap-port.js')).gcTaps(ctx).catch((e) => errors.push(e));
    if (ctx.config.ipMasq) {
      const valid = ctx.validAttachments;
      await inCleanupBackends(ctx.config.ipMasqBackend, async (b) => (await masquerade(b)).gc(ctx.config.name, valid, familiesOf(ctx))).catch((e) => errors.push(e));
    }
    if (errors.length) throw toCniError(errors[0]);
  },
  async status(ctx) {
    // ADD would fail without a usable masquerade backend: say so now, naming the missing tool.
    if (ctx.config.ipMasq) assertUsable(ctx.config.ipMasqBackend, 'iptables', 'bridge ipMasqBackend');
    if (ctx.config.ipam?.type) await delegate({ command: 'STATUS', type: ctx.config.ipam.type, stdin: ctx.stdin, env: ctx.env });
  },
});
