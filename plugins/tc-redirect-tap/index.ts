import { definePlugin, type PluginContext } from '../../lib/cni/skel.js';
import { CniError, ErrorCode } from '../../lib/cni/errors.js';
import type { Result } from '../../lib/cni/result.js';
import { Netns } from '../../lib/netlink/ns.js';
import { Rtnl, errnoOf, type LinkInfo, kernelError } from '../../lib/netlink/rtnl.js';
import { createTap } from '../../lib/netlink/tap.js';
import { addQdisc, delQdisc, qdiscs, INGRESS_HANDLE, TC_H_INGRESS } from '../../lib/netlink/tc.js';
import { addRedirect, delFilterPrio, isRedirectTo, listFilters, type FilterInfo } from '../../lib/netlink/tc-filter.js';
import { KNOWN_ARGS, tapSettings, tcRedirectTapConfig, type TapSettings, type TcRedirectTapConfig } from './config.js';

/**
 * tc-redirect-tap (after AWS's plugin of that name, for Firecracker-style
 * VMs): chained after a plugin that put CNI_IFNAME into CNI_NETNS, it makes
 * a TAP in that namespace and ties the two together with tc — an ingress
 * qdisc on each and a match-all filter whose action is `mirred egress
 * redirect` to the other. A VM on the TAP using the container interface's
 * MAC and addresses then is the container, as far as the network can tell.
 * Everything it makes lives in the container namespace, so there is no GC.
 */
type Ctx = PluginContext<TcRedirectTapConfig>;


function settings(ctx: Ctx): TapSettings {
  const tap = tapSettings(ctx.config, ctx.args);
  if (tap.name === ctx.env.ifname) throw new CniError(ErrorCode.InvalidNetworkConfig, `the TAP cannot have the container interface's name "${tap.name}"`);
  return tap;
}

function requirePrev(ctx: Ctx): Result {
  if (!ctx.prevResult) throw new CniError(ErrorCode.InvalidNetworkConfig, 'tc-redirect-tap must be chained after an interface plugin: missing prevResult');
  return ctx.prevResult;
}

const isTap = (l: LinkInfo | undefined): boolean => l?.kind === 'tun' && l.tun?.tap === true;
const ingressOf = async (nl: Rtnl, index: number) => (await qdiscs(nl, index)).find((q) => q.parent === TC_H_INGRESS && q.kind === 'ingress');

async function withNs<T>(ns: Netns, fn: (nl: Rtnl) => Promise<T>): Promise<T> {
  const nl = Rtnl.open(ns);
  try {
    return await fn(nl);
  } finally {
    nl.close();
  }
}

async function add(ctx: Ctx): Promise<Result> {
  const prev = requirePrev(ctx);
  const tap = settings(ctx);
  const { netns, ifname } = ctx.env;
  if (!prev.interfaces.some((i) => i.name === ifname && i.sandbox === netns)) {
    throw new CniError(ErrorCode.InvalidNetworkConfig, `prevResult has no interface "${ifname}" in ${netns} to redirect`);
  }
  const ns = Netns.open(netns);
  try {
    const made = await withNs(ns, async (nl) => {
      const cont = await nl.linkByName(ifname);
      if (!cont) throw new CniError(ErrorCode.InvalidEnvironment, `no interface "${ifname}" in ${netns}`);
      // Someone else's ingress qdisc is not ours to take over, nor to delete on DEL.
      if (await ingressOf(nl, cont.index)) throw new CniError(ErrorCode.InvalidEnvironment, `"${ifname}" already has an ingress qdisc`);
      let tapLink: LinkInfo | undefined;
      let tapMade = false;
      let qdiscMade = false;
      try {
        createTap({ name: tap.name, multiQueue: tap.multiQueue, owner: tap.owner, group: tap.group }, ns);
        tapMade = true; // IFF_TUN_EXCL: the device of that name is the one just made
        tapLink = await nl.linkByName(tap.name);
        if (!tapLink || !isTap(tapLink)) throw new CniError(ErrorCode.Internal, `TAP "${tap.name}" not found after creating it`);
        const t = tapLink;
        const step = async (what: string, fn: () => Promise<unknown>) => {
          try {
            await fn();
          } catch (err) {
            throw kernelError(what, err);
          }
        };
        await step(`failed to set the MTU of ${tap.name} to ${cont.mtu}`, () => nl.setMtu(t.index, cont.mtu));
        await step(`failed to set ${tap.name} up`, () => nl.setUp(t.index));
        await step(`failed to add an ingress qdisc to ${tap.name}`, () => addQdisc(nl, t.index, TC_H_INGRESS, INGRESS_HANDLE, 'ingress'));
        await step(`failed to add an ingress qdisc to ${ifname}`, () => addQdisc(nl, cont.index, TC_H_INGRESS, INGRESS_HANDLE, 'ingress'));
        qdiscMade = true;
        await step(`failed to redirect ${ifname} to ${tap.name}`, () => addRedirect(nl, cont.index, t.index));
        await step(`failed to redirect ${tap.name} to ${ifname}`, () => addRedirect(nl, t.index, cont.index));
        return (await nl.linkByIndex(t.index)) ?? t;
      } catch (err) {
        // Undo in reverse; the TAP's own qdisc and filters go with the TAP.
        if (qdiscMade) await delQdisc(nl, cont.index, TC_H_INGRESS).catch(() => undefined);
        const made = tapLink ?? (tapMade ? await nl.linkByName(tap.name).catch(() => undefined) : undefined);
        if (made) await nl.deleteLink(made.index).catch(() => undefined);
        throw err;
      }
    });
    return { ...prev, interfaces: [...prev.interfaces, { name: made.name, mac: made.mac, sandbox: netns }] };
  } finally {
    ns.close();
  }
}

/**
 * Our filters on the container interface: match-all redirects to the TAP,
 * or (the TAP gone) to nothing — mirred forgets a target that unregisters.
 */
const oursOn = (filters: FilterInfo[], tapIndex: number) => filters.filter((f) => isRedirectTo(f, tapIndex));

async function del(ctx: Ctx): Promise<void> {
  const tap = settings(ctx);
  if (!ctx.env.netns) return;
  let ns: Netns | undefined;
  try {
    ns = Netns.tryOpen(ctx.env.netns);
  } catch (err) {
    // The caller's own namespace is refused, never taken for "gone".
    if (err instanceof CniError && err.code === ErrorCode.InvalidNetNS) throw err;
    return; // a stale path that is no namespace any more: everything of ours went with it
  }
  if (!ns) return;
  try {
    await withNs(ns, async (nl) => {
      const tapLink = await nl.linkByName(tap.name);
      const tapIndex = tapLink && isTap(tapLink) ? tapLink.index : 0;
      const cont = await nl.linkByName(ctx.env.ifname);
      // The container interface first, while its filter still names the TAP.
      if (cont && (await ingressOf(nl, cont.index))) {
        const all = await listFilters(nl, cont.index);
        const ours = oursOn(all, tapIndex);
        try {
          if (ours.length > 0 && ours.length === all.length) await delQdisc(nl, cont.index, TC_H_INGRESS);
          else {
            // Someone else's filters share the qdisc: only our priorities go, when nothing else is in them.
            for (const f of ours) {
              const same = all.filter((g) => g.prio === f.prio && g.protocol === f.protocol);
              if (same.every((g) => isRedirectTo(g, tapIndex))) await delFilterPrio(nl, cont.index, f.prio, f.protocol).catch((err) => {
                if (errnoOf(err) !== 'ENOENT') throw err;
              });
            }
          }
        } catch (err) {
          throw kernelError(`failed to remove the redirect from ${ctx.env.ifname}`, err);
        }
      }
      if (tapLink && isTap(tapLink)) {
        await nl.deleteLink(tapLink.index).catch((err) => {
          if (errnoOf(err) !== 'ENODEV') throw kernelError(`failed to delete TAP ${tap.name}`, err);
        });
      }
    });
  } finally {
    ns.close();
  }
}

async function check(ctx: Ctx): Promise<void> {
  const prev = requirePrev(ctx);
  const tap = settings(ctx);
  const { netns, ifname } = ctx.env;
  const fail = (msg: string, details = '') => new CniError(ErrorCode.CheckFailed, msg, details);
  if (!prev.interfaces.some((i) => i.name === tap.name && i.sandbox === netns)) throw fail(`prevResult does not list TAP "${tap.name}" in ${netns}`);
  const ns = Netns.open(netns);
  try {
    await withNs(ns, async (nl) => {
      const t = await nl.linkByName(tap.name);
      if (!t) throw fail(`TAP "${tap.name}" not found in ${netns}`);
      if (!isTap(t)) throw fail(`"${tap.name}" is not a TAP`, `kind ${t.kind ?? 'none'}`);
      const cont = await nl.linkByName(ifname);
      if (!cont) throw fail(`interface "${ifname}" not found in ${netns}`);
      if (t.mtu !== cont.mtu) throw fail(`MTU of ${tap.name} (${t.mtu}) differs from ${ifname}'s (${cont.mtu})`);
      for (const [from, to] of [[cont, t], [t, cont]]) {
        if (!(await ingressOf(nl, from.index))) throw fail(`no ingress qdisc on ${from.name}`);
        const filters = await listFilters(nl, from.index);
        if (!filters.some((f) => isRedirectTo(f, to.index))) {
          const seen = filters.map((f) => `${f.kind} prio ${f.prio} ${f.mirred.map((m) => `mirred ${m.eaction} to ifindex ${m.ifindex}`).join(',') || 'no mirred'}`);
          throw fail(`no redirect filter from ${from.name} to ${to.name}`, seen.length ? `filters on ${from.name} ingress: ${seen.join('; ')}` : `no filters on ${from.name} ingress`);
        }
      }
    });
  } finally {
    ns.close();
  }
}

export default definePlugin({ name: 'tc-redirect-tap', schema: tcRedirectTapConfig, knownArgs: KNOWN_ARGS, add, del, check });
