import { definePlugin, type PluginContext } from '../../lib/cni/skel.js';
import { CniError, ErrorCode, toCniError } from '../../lib/cni/errors.js';
import { delegate } from '../../lib/cni/delegate.js';
import type { Result } from '../../lib/cni/result.js';
import { Netns, writeSysctl } from '../../lib/netlink/ns.js';
import { Rtnl, errnoOf, unsupported, type LinkInfo, kernelError } from '../../lib/netlink/rtnl.js';
import { canonicalNetwork, formatIP, parseCidr, parseIP } from '../../lib/ip/index.js';
import { vlanConfig, type VlanConfig } from './config.js';

/**
 * vlan: an 802.1Q link on `master` that becomes CNI_IFNAME in the container
 * namespace, with the addresses and routes of the IPAM plugin. The link is
 * created on the master's side (the host, or the container with
 * `linkInContainer`) and, from the host, straight into the container in one
 * request (IFLA_NET_NS_FD) under its final name, so no half-made link with a
 * temporary name is ever visible.
 */
type Ctx = PluginContext<VlanConfig>;


/** The socket on the master's side: the host's, or the container's with linkInContainer. */
const masterSide = (cfg: VlanConfig, netns: Netns) => (cfg.linkInContainer ? Rtnl.open(netns) : Rtnl.open());

async function findMaster(nl: Rtnl, cfg: VlanConfig): Promise<LinkInfo> {
  const m = await nl.linkByName(cfg.master);
  if (!m) throw new CniError(ErrorCode.InvalidNetworkConfig, `failed to lookup master "${cfg.master}"`, `no such link${cfg.linkInContainer ? ' in the container namespace' : ''}`);
  return m;
}

async function add(ctx: Ctx): Promise<Result> {
  const cfg = ctx.config;
  const ifname = ctx.env.ifname;
  const netns = Netns.open(ctx.env.netns);
  const cont = Rtnl.open(netns);
  const side = cfg.linkInContainer ? cont : Rtnl.open();
  let created = false;
  let ipamDone = false;
  try {
    const master = await findMaster(side, cfg);
    if (cfg.mtu > master.mtu) throw new CniError(ErrorCode.InvalidNetworkConfig, `invalid MTU ${cfg.mtu}, must be [0, master MTU(${master.mtu})]`);
    if (await cont.linkByName(ifname)) throw new CniError(ErrorCode.InvalidEnvironment, `container already has an interface named ${ifname}`, ctx.env.netns);
    try {
      await side.createVlan(ifname, master.index, cfg.vlanId, cfg.mtu || undefined, cfg.linkInContainer ? undefined : netns.fd);
    } catch (err) {
      if (unsupported(err)) {
        throw new CniError(ErrorCode.KernelRefused, 'failed to create vlan: the kernel has no 802.1Q VLAN support (module 8021q)', `${errnoOf(err)}: the kernel does not know link kind "vlan"`);
      }
      throw kernelError(`failed to create vlan ${ifname} on ${cfg.master}`, err);
    }
    created = true;
    const link = await cont.linkByName(ifname);
    if (!link) throw new CniError(ErrorCode.KernelRefused, `vlan ${ifname} not found in ${ctx.env.netns} after creation`);

    const ipam = await delegate({ command: 'ADD', type: cfg.ipam.type, stdin: ctx.stdin, env: ctx.env });
    ipamDone = true;
    if (!ipam || ipam.ips.length === 0) throw new CniError(ErrorCode.InvalidNetworkConfig, 'IPAM plugin returned missing IP config');
    const result: Result = {
      interfaces: [{ name: ifname, mac: link.mac, sandbox: ctx.env.netns }],
      ips: ipam.ips.map((ip) => ({ ...ip, interface: 0 })),
      routes: [...ipam.routes],
      dns: cfg.dns ?? ipam.dns ?? {},
    };
    if (result.ips.some((ip) => ip.address.includes(':'))) {
      netns.run(() => writeSysctl(['net', 'ipv6', 'conf', ifname, 'disable_ipv6'], '0'));
    }
    try {
      for (const ip of result.ips) await cont.addAddress(link.index, ip.address);
      await cont.setUp(link.index);
      for (const r of result.routes) {
        const fam = r.dst.includes(':') ? 6 : 4;
        const gw = r.gw ?? result.ips.find((ip) => (ip.address.includes(':') ? 6 : 4) === fam)?.gateway;
        try {
          await cont.addRoute({ dst: canonicalNetwork(r.dst), gw, index: link.index, mtu: r.mtu, priority: r.priority, table: r.table, advmss: r.advmss });
        } catch (err) {
          if (errnoOf(err) !== 'EEXIST') throw err;
        }
      }
    } catch (err) {
      throw kernelError(`failed to configure ${ifname} in ${ctx.env.netns}`, err);
    }
    return result;
  } catch (err) {
    // Leave nothing behind: the link (in the container, wherever it was made) and the allocation.
    if (created) {
      const l = await cont.linkByName(ifname).catch(() => undefined);
      if (l) await cont.deleteLink(l.index).catch(() => undefined);
    }
    if (ipamDone) await delegate({ command: 'DEL', type: cfg.ipam.type, stdin: ctx.stdin, env: ctx.env }).catch(() => undefined);
    throw toCniError(err);
  } finally {
    if (side !== cont) side.close();
    cont.close();
    netns.close();
  }
}

/** Idempotent: the allocation first (also when the namespace is gone), then the container's vlan link if it is still there. */
async function del(ctx: Ctx): Promise<void> {
  const errors: CniError[] = [];
  await delegate({ command: 'DEL', type: ctx.config.ipam.type, stdin: ctx.stdin, env: ctx.env }).catch((e) => errors.push(toCniError(e)));
  const netns = ctx.env.netns ? Netns.tryOpen(ctx.env.netns) : undefined;
  if (netns) {
    const cont = Rtnl.open(netns);
    try {
      // Only a vlan link: an interface of that name made by someone else is not ours to remove.
      const failed = await cont.deleteOwnLink(ctx.env.ifname, (l) => l.kind === 'vlan');
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
  const prev = ctx.prevResult;
  if (!prev) throw new CniError(ErrorCode.InvalidNetworkConfig, 'vlan: Required prevResult missing');
  const fail = (msg: string) => new CniError(ErrorCode.CheckFailed, msg);
  await delegate({ command: 'CHECK', type: cfg.ipam.type, stdin: ctx.stdin, env: ctx.env });
  const netns = Netns.open(ctx.env.netns);
  const cont = Rtnl.open(netns);
  const side = masterSide(cfg, netns);
  try {
    const contIf = prev.interfaces.find((i) => i.name === ctx.env.ifname && i.sandbox === ctx.env.netns);
    if (!contIf) throw fail(`prevResult has no interface ${ctx.env.ifname} in sandbox ${ctx.env.netns}`);
    const master = await findMaster(side, cfg);
    const l = await cont.linkByName(ctx.env.ifname);
    if (!l) throw fail(`interface ${ctx.env.ifname} not found in ${ctx.env.netns}`);
    if (l.kind !== 'vlan') throw fail(`${ctx.env.ifname} is not a vlan link`);
    if (l.vlanId !== cfg.vlanId) throw fail(`${ctx.env.ifname} has VLAN id ${l.vlanId}, expected ${cfg.vlanId}`);
    // The parent index is the master's only when both live in the same namespace.
    if (cfg.linkInContainer && l.peerIndex !== master.index) throw fail(`${ctx.env.ifname} is not on ${cfg.master}`);
    if (cfg.mtu && l.mtu !== cfg.mtu) throw fail(`${ctx.env.ifname} has MTU ${l.mtu}, expected ${cfg.mtu}`);
    if (contIf.mac && contIf.mac.toLowerCase() !== l.mac) throw fail(`${ctx.env.ifname} has MAC ${l.mac}, expected ${contIf.mac}`);
    const addrs = await cont.addresses(l.index);
    const ifIndex = prev.interfaces.indexOf(contIf);
    for (const ip of prev.ips) {
      if (ip.interface !== undefined && ip.interface !== ifIndex) continue;
      const want = parseCidr(ip.address);
      if (!addrs.some((a) => { const c = parseCidr(a.cidr); return c.family === want.family && c.ip === want.ip && c.prefix === want.prefix; })) {
        throw fail(`address ${ip.address} not found on ${ctx.env.ifname}`);
      }
    }
    const routes = await cont.routes();
    for (const r of prev.routes) {
      const dst = canonicalNetwork(r.dst);
      const fam = parseCidr(dst).family;
      const found = routes.some((x) => x.dst === dst && (!r.gw || (x.gw !== undefined && formatIP(fam, parseIP(x.gw).ip) === formatIP(fam, parseIP(r.gw).ip))));
      if (!found) throw fail(`route to ${r.dst}${r.gw ? ` via ${r.gw}` : ''} not found in ${ctx.env.netns}`);
    }
  } finally {
    side.close();
    cont.close();
    netns.close();
  }
}

export default definePlugin({ name: 'vlan', schema: vlanConfig, add, del, check });
