import { definePlugin, type PluginContext } from '../../lib/cni/skel.js';
import { CniError, ErrorCode, toCniError } from '../../lib/cni/errors.js';
import { delegate } from '../../lib/cni/delegate.js';
import { ownerTag } from '../../lib/cni/owner.js';
import type { Result } from '../../lib/cni/result.js';
import { compareVersions } from '../../lib/cni/version.js';
import { Netns, writeSysctl } from '../../lib/netlink/ns.js';
import { Rtnl, errnoOf, type LinkInfo, kernelError } from '../../lib/netlink/rtnl.js';
import { createTap } from '../../lib/netlink/tap.js';
import { canonicalNetwork, formatIP, parseCidr, parseIP } from '../../lib/ip/index.js';
import { macProblem, tapConfig, type TapConfig } from './config.js';

/**
 * tap: a TAP device named CNI_IFNAME inside the container's namespace, for
 * a VM run in that namespace (Kata, firecracker-containerd): the VMM opens
 * it as its NIC. Optionally a port of a bridge that already exists in the
 * namespace, optionally with addresses and routes from the IPAM plugin.
 */
type Ctx = PluginContext<TapConfig>;


/** The IPAM plugin's type; none (no "ipam", or an empty type, as the reference reads it) means layer 2 only. */
const ipamType = (ctx: Ctx): string | undefined => ctx.config.ipam?.type || undefined;

/** The MAC asked for, as the reference ranks them: runtimeConfig, then CNI_ARGS MAC, then the config's `mac`. */
function requestedMac(ctx: Ctx): string | undefined {
  const fromArgs = ctx.args.get('MAC') || undefined;
  if (fromArgs !== undefined) {
    const p = macProblem(fromArgs);
    if (p) throw new CniError(ErrorCode.InvalidEnvironment, 'invalid MAC in CNI_ARGS', p);
  }
  return (ctx.config.runtimeConfig?.mac ?? fromArgs ?? ctx.config.mac)?.toLowerCase().replace(/-/g, ':');
}

/**
 * Written on the TAP as its alias: DEL removes a link named CNI_IFNAME only
 * when it is a TAP carrying this, so a link this plugin did not make (one
 * that made our ADD fail, say) is never deleted for having the name.
 */
const ownerOf = (ctx: Ctx) => ownerTag('tap', { network: ctx.config.name, containerID: ctx.env.containerId, ifname: ctx.env.ifname });

const isTap = (l: LinkInfo) => l.kind === 'tun' && l.tun?.tap === true;

async function findBridge(cont: Rtnl, name: string, netns: string): Promise<LinkInfo> {
  const br = await cont.linkByName(name);
  if (!br) throw new CniError(ErrorCode.InvalidNetworkConfig, `bridge ${name} not found`, `no link named ${name} in ${netns}; the tap plugin attaches to an existing bridge and does not create one`);
  if (br.kind !== 'bridge') throw new CniError(ErrorCode.InvalidNetworkConfig, `${name} is not a bridge`, `${name} in ${netns} is of kind ${br.kind ?? 'none'}`);
  return br;
}

async function add(ctx: Ctx): Promise<Result> {
  const cfg = ctx.config;
  const ifname = ctx.env.ifname;
  const type = ipamType(ctx);
  // A layer-2 TAP has no address, and results before 0.3.0 are made of
  // addresses: refuse before making anything (the reference fails only when
  // printing its result, and leaves the TAP).
  if (!type && compareVersions(ctx.cniVersion, '0.3.0') < 0) {
    throw new CniError(ErrorCode.IncompatibleVersion, 'cannot convert: no valid IP addresses', `a tap without "ipam" has no address to report in a cniVersion ${ctx.cniVersion} result`);
  }
  const mac = requestedMac(ctx);
  const netns = Netns.open(ctx.env.netns);
  const cont = Rtnl.open(netns);
  let tap: LinkInfo | undefined;
  let ipamDone = false;
  try {
    // Everything that can be refused without changing anything comes first.
    if (await cont.linkByName(ifname)) {
      throw new CniError(ErrorCode.InvalidEnvironment, `container already has an interface named ${ifname}`, ctx.env.netns);
    }
    const br = cfg.bridge ? await findBridge(cont, cfg.bridge, ctx.env.netns) : undefined;

    // Made in the container's namespace directly (no temporary name to
    // rename: nothing of the host's can collide). IFF_TUN_EXCL: a TAP of
    // that name appearing meanwhile is refused, never adopted.
    createTap({ name: ifname, multiQueue: cfg.multiQueue, owner: cfg.owner, group: cfg.group }, netns);
    tap = await cont.linkByName(ifname);
    if (!tap || !isTap(tap)) throw new CniError(ErrorCode.KernelRefused, `TAP ${ifname} not found after creation`);
    const index = tap.index;
    try {
      await cont.setAlias(index, ownerOf(ctx));
      if (cfg.mtu) await cont.setMtu(index, cfg.mtu);
      if (mac) await cont.setMac(index, mac);
    } catch (err) {
      throw kernelError(`failed to configure TAP ${ifname}`, err);
    }
    if (br) {
      try {
        await cont.setMaster(index, br.index);
      } catch (err) {
        throw kernelError(`failed to set TAP ${ifname} as a port of bridge ${br.name}`, err);
      }
    }
    await cont.setUp(index).catch((err) => {
      throw kernelError(`failed to set TAP ${ifname} up`, err);
    });

    let ipam: Result | undefined;
    if (type) {
      ipam = await delegate({ command: 'ADD', type, stdin: ctx.stdin, env: ctx.env });
      ipamDone = true;
      if (!ipam || ipam.ips.length === 0) throw new CniError(ErrorCode.InvalidNetworkConfig, 'IPAM plugin returned missing IP config');
    }
    const now = await cont.linkByIndex(index);
    const result: Result = {
      interfaces: [{ name: ifname, mac: now?.mac ?? mac ?? tap.mac, sandbox: ctx.env.netns }],
      // All addresses are the TAP's, the one interface of the result.
      ips: (ipam?.ips ?? []).map((ip) => ({ ...ip, interface: 0 })),
      routes: [...(ipam?.routes ?? [])],
      // The reference reports the network's `dns`; without one, what IPAM said.
      dns: cfg.dns && Object.keys(cfg.dns).length ? cfg.dns : (ipam?.dns ?? {}),
    };
    if (type) await configureAddresses(cont, netns, index, ifname, result);
    return result;
  } catch (err) {
    // Leave nothing behind: the TAP (by the index this call made it with), the allocation.
    if (tap) await cont.deleteLink(tap.index).catch(() => undefined);
    if (ipamDone && type) await delegate({ command: 'DEL', type, stdin: ctx.stdin, env: ctx.env }).catch(() => undefined);
    throw toCniError(err);
  } finally {
    cont.close();
    netns.close();
  }
}

/** What the reference's ConfigureIface does on the TAP: sysctls, addresses, routes. */
async function configureAddresses(cont: Rtnl, netns: Netns, index: number, ifname: string, result: Result): Promise<void> {
  const hasV6 = result.ips.some((ip) => ip.address.includes(':'));
  netns.run(() => {
    // A gratuitous ARP once the guest's link comes up, so neighbours holding
    // a reused address's old MAC learn the new one. Best effort, as there.
    try {
      writeSysctl(['net', 'ipv4', 'conf', ifname, 'arp_notify'], '1');
    } catch {
      // no IPv4 in this kernel: nothing to announce
    }
    if (hasV6) {
      for (const dev of ['lo', ifname]) writeSysctl(['net', 'ipv6', 'conf', dev, 'disable_ipv6'], '0');
      // The addresses stay while the VMM closes and reopens the TAP.
      writeSysctl(['net', 'ipv6', 'conf', ifname, 'keep_addr_on_down'], '1');
    }
  });
  try {
    // No DAD: until the guest attaches the TAP has no carrier, and its IPv6
    // addresses would stay tentative (unusable) until then.
    for (const ip of result.ips) await cont.addAddress(index, ip.address, { noDad: ip.address.includes(':') });
    for (const r of result.routes) {
      const fam = r.dst.includes(':') ? 6 : 4;
      const gw = r.gw ?? result.ips.find((ip) => (ip.address.includes(':') ? 6 : 4) === fam && ip.gateway)?.gateway;
      try {
        await cont.addRoute({ dst: canonicalNetwork(r.dst), gw, index, mtu: r.mtu, priority: r.priority, table: r.table, advmss: r.advmss });
      } catch (err) {
        if (errnoOf(err) !== 'EEXIST') throw err;
      }
    }
  } catch (err) {
    throw kernelError(`failed to configure addresses of ${ifname}`, err);
  }
}

async function del(ctx: Ctx): Promise<void> {
  const errors: CniError[] = [];
  // IPAM first: the address is released even when the namespace is gone.
  const type = ipamType(ctx);
  if (type) await delegate({ command: 'DEL', type, stdin: ctx.stdin, env: ctx.env }).catch((e) => errors.push(toCniError(e)));
  const netns = ctx.env.netns ? Netns.tryOpen(ctx.env.netns) : undefined;
  if (netns) {
    const cont = Rtnl.open(netns);
    try {
      // Only our TAP: another link (or someone else's TAP) that has the name
      // stays, and DEL still succeeds, since there is nothing of ours to remove.
      const failed = await cont.deleteOwnLink(ctx.env.ifname, (l) => isTap(l) && l.alias === ownerOf(ctx));
      if (failed) errors.push(failed);
    } finally {
      cont.close();
      netns.close();
    }
  }
  if (errors.length) throw errors[0];
}

async function check(ctx: Ctx): Promise<void> {
  const cfg = ctx.config;
  const ifname = ctx.env.ifname;
  const prev = ctx.prevResult;
  if (!prev) throw new CniError(ErrorCode.InvalidNetworkConfig, 'Required prevResult missing');
  const fail = (msg: string, details = '') => new CniError(ErrorCode.CheckFailed, msg, details);
  const type = ipamType(ctx);
  if (type) await delegate({ command: 'CHECK', type, stdin: ctx.stdin, env: ctx.env });
  const mac = requestedMac(ctx);

  const contIf = prev.interfaces.find((i) => i.name === ifname && i.sandbox === ctx.env.netns);
  if (!contIf) throw fail(`prevResult has no interface ${ifname} in sandbox ${ctx.env.netns}`);
  const netns = Netns.open(ctx.env.netns);
  const cont = Rtnl.open(netns);
  try {
    const l = await cont.linkByName(ifname);
    if (!l) throw fail(`interface ${ifname} not found in ${ctx.env.netns}`);
    if (!isTap(l)) throw fail(`${ifname} is not a TAP`, `kind ${l.kind ?? 'none'}`);
    if (!l.up) throw fail(`${ifname} is down`);
    if (cfg.mtu && l.mtu !== cfg.mtu) throw fail(`${ifname} has MTU ${l.mtu}, configured ${cfg.mtu}`);
    const wantMac = (mac ?? contIf.mac)?.toLowerCase();
    if (wantMac && l.mac !== wantMac) throw fail(`${ifname} has MAC ${l.mac}, expected ${wantMac}`);
    const tun = l.tun!;
    const show = (v: number | undefined) => (v === undefined ? 'none' : String(v));
    if (tun.owner !== cfg.owner) throw fail(`${ifname} has owner ${show(tun.owner)}, configured ${show(cfg.owner)}`);
    if (tun.group !== cfg.group) throw fail(`${ifname} has group ${show(tun.group)}, configured ${show(cfg.group)}`);
    if (tun.multiQueue !== cfg.multiQueue) throw fail(`${ifname} is ${tun.multiQueue ? '' : 'not '}multi-queue, configured ${cfg.multiQueue ? '' : 'not '}multi-queue`);
    if (cfg.bridge) {
      const br = await cont.linkByName(cfg.bridge);
      if (!br || br.kind !== 'bridge') throw fail(`bridge ${cfg.bridge} not found in ${ctx.env.netns}`);
      if (l.master !== br.index) throw fail(`${ifname} is not a port of bridge ${cfg.bridge}`);
    }

    const addrs = await cont.addresses(l.index);
    const ifIndex = prev.interfaces.indexOf(contIf);
    for (const ip of prev.ips) {
      if (ip.interface !== undefined && ip.interface !== ifIndex) continue;
      const want = parseCidr(ip.address);
      const found = addrs.some((a) => {
        const c = parseCidr(a.cidr);
        return c.family === want.family && c.ip === want.ip && c.prefix === want.prefix;
      });
      if (!found) throw fail(`address ${ip.address} not found on ${ifname}`);
    }
    const routes = await cont.routes();
    for (const r of prev.routes) {
      const dst = canonicalNetwork(r.dst);
      const fam = parseCidr(dst).family;
      const same = (a: string, b: string) => formatIP(fam, parseIP(a).ip) === formatIP(fam, parseIP(b).ip);
      if (!routes.some((x) => x.oif === l.index && x.dst === dst && (!r.gw || (x.gw !== undefined && same(x.gw, r.gw))))) {
        throw fail(`route to ${r.dst}${r.gw ? ` via ${r.gw}` : ''} not found in ${ctx.env.netns}`);
      }
    }
  } finally {
    cont.close();
    netns.close();
  }
}

export default definePlugin({
  name: 'tap',
  schema: tapConfig,
  knownArgs: ['MAC'],
  add,
  del,
  check,
  // TAPs live in container namespaces, which GC cannot enumerate (they go with the namespace): only IPAM has state to collect.
  async gc(ctx) {
    const type = ipamType(ctx);
    if (type) await delegate({ command: 'GC', type, stdin: ctx.stdin, env: ctx.env });
  },
  async status(ctx) {
    const type = ipamType(ctx);
    if (type) await delegate({ command: 'STATUS', type, stdin: ctx.stdin, env: ctx.env });
  },
});
