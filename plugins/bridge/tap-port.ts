import { createHash } from 'node:crypto';
import { CniError, ErrorCode, toCniError } from '../../lib/cni/errors.js';
import { delegate } from '../../lib/cni/delegate.js';
import type { Result } from '../../lib/cni/result.js';
import { Rtnl, errnoOf, macToBytes, macToString, type LinkInfo } from '../../lib/netlink/rtnl.js';
import { createTap } from '../../lib/netlink/tap.js';
import { masquerade, type MasqKnown } from '../../lib/pf/masq/index.js';
import { inCleanupBackends } from '../../lib/pf/backend.js';
import { parseCidr } from '../../lib/ip/index.js';
import {
  addDefaultRoutes,
  attachPort,
  configureGateway,
  ensureBridge,
  familiesOf,
  ipamType,
  masqBackend,
  masqOwner,
  requestedMac,
  validateAdd,
  type Ctx,
} from './index.js';

/**
 * bridge's host-TAP mode (docs/microvm.md): the port is a TAP created in the
 * plugin's own (host) namespace, for a VM that runs on this host
 * (Firecracker, QEMU), and enslaved to the bridge like a veth's host end.
 * CNI_NETNS is never entered: it is only reported as the guest NIC's
 * sandbox. The plugin cannot configure anything inside the VM; the result
 * says what the VM manager passes on (guest MAC, addresses, gateway).
 */

const ALIAS_PREFIX = 'cni-ts bridge-tap';

/** The TAP's name: configured, or derived from the attachment so DEL and CHECK find it without it being named. */
export function tapName(ctx: Ctx): string {
  if (ctx.config.tap?.name) return ctx.config.tap.name;
  const h = createHash('sha256').update(`${ctx.config.name}\0${ctx.env.containerId}\0${ctx.env.ifname}`).digest('hex');
  return `tap${h.slice(0, 11)}`;
}

/**
 * What marks a TAP as this attachment's (IFLA_IFALIAS): DEL, CHECK and GC
 * act on a TAP only if it carries it, never on another host link that
 * happens to have the name. Network names, container ids and ifnames have
 * no whitespace, so the fields split unambiguously.
 */
function ownerAlias(network: string, containerId: string, ifname: string): string {
  return `${ALIAS_PREFIX} net=${network} id=${containerId} if=${ifname}`;
}
const aliasOf = (ctx: Ctx) => ownerAlias(ctx.config.name, ctx.env.containerId, ctx.env.ifname);

function parseAlias(alias: string | undefined): { network: string; containerId: string; ifname: string } | undefined {
  const m = /^cni-ts bridge-tap net=(\S+) id=(\S+) if=(\S+)$/.exec(alias ?? '');
  return m ? { network: m[1], containerId: m[2], ifname: m[3] } : undefined;
}

const isTap = (l: LinkInfo) => l.kind === 'tun' && l.tun?.tap === true;
const isOurs = (l: LinkInfo, alias: string) => isTap(l) && l.alias === alias;

/**
 * The guest's MAC (what the VM manager gives the VM, Firecracker's
 * guest_mac): the requested one (`mac` as for a container), else a locally
 * administered unicast one derived from the attachment, so a repeated ADD
 * reports the same. The TAP keeps the kernel's MAC: it is the host's side.
 */
export function guestMac(ctx: Ctx): string {
  const want = requestedMac(ctx);
  if (want !== undefined) {
    let b: Buffer;
    try {
      b = macToBytes(want);
    } catch {
      throw new CniError(ErrorCode.InvalidNetworkConfig, `invalid MAC address "${want}"`);
    }
    if (b[0] & 1) throw new CniError(ErrorCode.InvalidNetworkConfig, `MAC address "${want}" is multicast; a guest NIC needs a unicast one`);
    return macToString(b);
  }
  const b = createHash('sha256').update(`${ctx.env.containerId}\0${ctx.env.ifname}`).digest().subarray(0, 6);
  b[0] = (b[0] & 0xfc) | 0x02; // unicast, locally administered
  return macToString(b);
}

/** The kernel's answer to a VLAN request without bridge VLAN filtering, named as the missing feature. */
function vlanError(err: unknown, vlanFiltering: boolean): CniError {
  const e = toCniError(err);
  if (vlanFiltering && /\b(EOPNOTSUPP|ENOTSUP)\b|Operation not supported/.test(`${e.message} ${errnoOf(err) ?? ''}`)) {
    return new CniError(ErrorCode.KernelRefused, 'this kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING), which "vlan" and "vlanTrunk" need', e.message);
  }
  return e;
}

export async function addTap(ctx: Ctx): Promise<Result> {
  const cfg = ctx.config;
  const tap = cfg.tap!;
  const { trunk, vlanFiltering } = validateAdd(ctx);
  const name = tapName(ctx);
  const alias = aliasOf(ctx);
  // The kernel refuses a longer alias; refused here, before anything exists.
  if (Buffer.byteLength(alias) > 255) {
    throw new CniError(ErrorCode.InvalidNetworkConfig, 'network name and container id too long to mark the TAP as ours', `the TAP's alias "${alias}" is over 255 bytes`);
  }
  const mac = guestMac(ctx);
  const type = ipamType(ctx);
  const isGateway = cfg.isGateway || cfg.isDefaultGateway;

  const masq = cfg.ipMasq && type ? await masquerade(masqBackend(cfg)) : undefined;
  const masqPrepared = masq?.prepare();
  const host = Rtnl.open();
  let bridge: { index: number; created: boolean } | undefined;
  let tapIndex: number | undefined;
  let spoofCheckSet = false;
  let ipamDone = false;
  try {
    // A link of that name that is not ours is left alone (createTap would refuse it too, IFF_TUN_EXCL);
    // checked first so that a collision leaves no bridge behind either.
    const existing = await host.linkByName(name);
    if (existing) {
      const why = isOurs(existing, alias) ? 'it is this attachment\'s TAP: ADD was already done (DEL first)' : `it is not a TAP of this attachment (kind ${existing.kind ?? 'none'}); left untouched`;
      throw new CniError(ErrorCode.InvalidEnvironment, `a link named "${name}" already exists`, why);
    }
    let br: LinkInfo & { created: boolean };
    try {
      br = await ensureBridge(host, cfg, vlanFiltering);
    } catch (err) {
      throw vlanError(err, vlanFiltering);
    }
    bridge = { index: br.index, created: br.created };
    createTap({ name, owner: tap.owner, group: tap.group, multiQueue: tap.multiQueue });
    const link = await host.linkByName(name);
    if (!link) throw new CniError(ErrorCode.KernelRefused, `TAP ${name} not found after creation`);
    tapIndex = link.index;
    try {
      await host.setAlias(link.index, alias);
      if (cfg.mtu) await host.setMtu(link.index, cfg.mtu);
    } catch (err) {
      throw new CniError(ErrorCode.KernelRefused, `failed to set up TAP ${name}`, `${errnoOf(err) ?? ''} ${(err as Error).message}`.trim());
    }
    try {
      await attachPort(host, link, br, cfg, trunk, vlanFiltering);
    } catch (err) {
      throw vlanError(err, vlanFiltering);
    }
    if (cfg.macspoofchk) {
      // Only the guest's MAC may enter the bridge from its TAP.
      const { spoofCheckSetup, spoofCheckId } = await import('../../lib/nft/spoofcheck.js');
      spoofCheckSet = true;
      await spoofCheckSetup(name, mac, spoofCheckId(ctx.env.containerId, ctx.env.ifname));
    }
    let ipam: Result | undefined;
    if (type) {
      ipam = await delegate({ command: 'ADD', type, stdin: ctx.stdin, env: ctx.env });
      ipamDone = true;
      if (!ipam || ipam.ips.length === 0) throw new CniError(ErrorCode.InvalidNetworkConfig, 'IPAM plugin returned missing IP config');
    }
    // The guest NIC is interface 2: its addresses are the VM manager's to give the VM (kernel ip=, MMDS, DHCP).
    const result: Result = {
      interfaces: [
        { name: br.name, mac: br.mac },
        { name, mac: link.mac },
        { name: ctx.env.ifname, mac, ...(ctx.env.netns ? { sandbox: ctx.env.netns } : {}) },
      ],
      ips: (ipam?.ips ?? []).map((ip) => ({ ...ip, interface: 2 })),
      routes: [...(ipam?.routes ?? [])],
      dns: ipam?.dns ?? {},
    };
    if (cfg.isDefaultGateway) addDefaultRoutes(result);
    if (isGateway) await configureGateway(host, br, result, cfg.forceAddress);
    if (masq) await masq.add(masqOwner(ctx), result.ips.map((ip) => ip.address), masqPrepared);
    const brNow = await host.linkByIndex(br.index);
    if (brNow) result.interfaces[0].mac = brNow.mac;
    return result;
  } catch (err) {
    // Leave nothing: the TAP, the spoof check, the allocation, the NAT rules, a bridge this call made.
    if (tapIndex !== undefined) await host.deleteLink(tapIndex).catch(() => undefined);
    if (spoofCheckSet) await import('../../lib/nft/spoofcheck.js').then((m) => m.spoofCheckTeardown(m.spoofCheckId(ctx.env.containerId, ctx.env.ifname))).catch(() => undefined);
    if (ipamDone && type) await delegate({ command: 'DEL', type, stdin: ctx.stdin, env: ctx.env }).catch(() => undefined);
    if (masq && ipamDone) await masq.del(masqOwner(ctx), { families: familiesOf(ctx), cidrs: [] }).catch(() => undefined);
    if (bridge?.created) {
      // Only while it has no port: another ADD may have joined it meanwhile.
      const ports = await host.links().then((ls) => ls.filter((l) => l.master === bridge!.index).length).catch(() => 1);
      if (ports === 0) await host.deleteLink(bridge.index).catch(() => undefined);
    }
    throw toCniError(err);
  } finally {
    await masqPrepared?.release();
    host.close();
  }
}

export async function delTap(ctx: Ctx): Promise<void> {
  const cfg = ctx.config;
  const errors: CniError[] = [];
  if (cfg.ipam?.type) {
    await delegate({ command: 'DEL', type: cfg.ipam.type, stdin: ctx.stdin, env: ctx.env }).catch((e) => errors.push(toCniError(e)));
  }
  // CNI_NETNS plays no part: the TAP is in this namespace, found by name and recognised by its alias.
  const host = Rtnl.open();
  try {
    const name = tapName(ctx);
    const failed = await host.deleteOwnLink(name, (l) => isOurs(l, aliasOf(ctx)), `failed to delete TAP ${name}`);
    if (failed) errors.push(failed);
  } finally {
    host.close();
  }
  if (cfg.macspoofchk) {
    const { spoofCheckTeardown, spoofCheckId } = await import('../../lib/nft/spoofcheck.js');
    await spoofCheckTeardown(spoofCheckId(ctx.env.containerId, ctx.env.ifname)).catch((e) => errors.push(toCniError(e)));
  }
  if (cfg.ipMasq) {
    const k: MasqKnown = { families: familiesOf(ctx), cidrs: (ctx.prevResult?.ips ?? []).map((ip) => ip.address) };
    await inCleanupBackends(cfg.ipMasqBackend, async (b) => (await masquerade(b)).del(masqOwner(ctx), k)).catch((e) => errors.push(toCniError(e)));
  }
  if (errors.length) throw errors[0];
}

export async function checkTap(ctx: Ctx): Promise<void> {
  const cfg = ctx.config;
  const tap = cfg.tap!;
  const prev = ctx.prevResult;
  if (!prev) throw new CniError(ErrorCode.InvalidNetworkConfig, 'CHECK needs a prevResult');
  const fail = (msg: string, details = '') => new CniError(ErrorCode.CheckFailed, msg, details);
  const type = ipamType(ctx);
  if (type) await delegate({ command: 'CHECK', type, stdin: ctx.stdin, env: ctx.env });
  const host = Rtnl.open();
  try {
    const br = await host.linkByName(cfg.bridge);
    if (!br || br.kind !== 'bridge') throw fail(`bridge ${cfg.bridge} not found`);
    const name = tapName(ctx);
    const l = await host.linkByName(name);
    if (!l) throw fail(`TAP ${name} not found`);
    if (!isTap(l)) throw fail(`${name} is not a TAP (kind ${l.kind ?? 'none'})`);
    if (l.alias !== aliasOf(ctx)) throw fail(`${name} is not this attachment's TAP`, `alias "${l.alias ?? ''}"`);
    if (!l.up) throw fail(`TAP ${name} is down`);
    if (l.master !== br.index) throw fail(`TAP ${name} is not a port of ${cfg.bridge}`);
    const t = l.tun!;
    if (t.owner !== tap.owner) throw fail(`TAP ${name} has owner ${t.owner ?? 'none'}, expected ${tap.owner ?? 'none'}`);
    if (t.group !== tap.group) throw fail(`TAP ${name} has group ${t.group ?? 'none'}, expected ${tap.group ?? 'none'}`);
    if (t.multiQueue !== tap.multiQueue) throw fail(`TAP ${name} is ${t.multiQueue ? '' : 'not '}multi-queue, expected ${tap.multiQueue ? '' : 'not '}multi-queue`);
    if (cfg.mtu && l.mtu !== cfg.mtu) throw fail(`TAP ${name} has MTU ${l.mtu}, expected ${cfg.mtu}`);
    // The guest NIC: the last interface of that name (the TAP comes before it).
    const guestIndex = prev.interfaces.map((i) => i.name).lastIndexOf(ctx.env.ifname);
    if (guestIndex < 0) throw fail(`prevResult has no interface ${ctx.env.ifname}`);
    const mac = guestMac(ctx);
    const reported = prev.interfaces[guestIndex].mac;
    if (reported && reported.toLowerCase() !== mac) throw fail(`${ctx.env.ifname} has MAC ${reported} in prevResult, expected ${mac}`);
    if (cfg.isGateway || cfg.isDefaultGateway) {
      const addrs = await host.addresses(br.index);
      for (const ip of prev.ips) {
        if (!ip.gateway || (ip.interface !== undefined && ip.interface !== guestIndex)) continue;
        const prefix = parseCidr(ip.address).prefix;
        const gw = parseCidr(`${ip.gateway}/${prefix}`);
        if (!addrs.some((a) => { const c = parseCidr(a.cidr); return c.family === gw.family && c.ip === gw.ip && c.prefix === gw.prefix; })) {
          throw fail(`gateway address ${ip.gateway}/${prefix} not found on ${cfg.bridge}`);
        }
      }
    }
    if (cfg.macspoofchk) {
      const { spoofCheckVerify, spoofCheckId } = await import('../../lib/nft/spoofcheck.js');
      await spoofCheckVerify(name, mac, spoofCheckId(ctx.env.containerId, ctx.env.ifname));
    }
    if (cfg.ipMasq && type) await (await masquerade(masqBackend(cfg))).check(masqOwner(ctx), prev.ips.map((ip) => ip.address));
  } finally {
    host.close();
  }
}

/** GC: this network's TAPs (by their alias) whose attachment the runtime no longer lists. */
export async function gcTaps(ctx: Ctx): Promise<void> {
  const valid = new Set(ctx.validAttachments.map((a) => `${a.containerID}\0${a.ifname}`));
  const host = Rtnl.open();
  try {
    for (const l of await host.links()) {
      if (!isTap(l)) continue;
      const owner = parseAlias(l.alias);
      if (!owner || owner.network !== ctx.config.name || valid.has(`${owner.containerId}\0${owner.ifname}`)) continue;
      await host.deleteLink(l.index).catch((e) => {
        if (errnoOf(e) !== 'ENODEV') throw e;
      });
    }
  } finally {
    host.close();
  }
}
