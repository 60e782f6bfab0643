import { definePlugin, type PluginContext } from '../../lib/cni/skel.js';
import { CniError, ErrorCode } from '../../lib/cni/errors.js';
import type { Result } from '../../lib/cni/result.js';
import { canonicalIP } from '../../lib/ip/index.js';
import { which } from '../../lib/exec/index.js';
import { assertUsable, chooseBackend, inCleanupBackends, type Backend } from '../../lib/pf/backend.js';
import { dnsPorts, type DnsPorts } from '../../lib/pf/dns/index.js';
import { DEFAULT_BACKEND, DNS_NAME, dnsnameConfig, type DnsnameConfig } from './config.js';
import { readFileSync } from 'node:fs';
import { Tree, type Entry, type NetworkState } from './files.js';
import { FP, trace } from '../../lib/cni/trace.js';
import { dnsmasqBinary, findDnsmasq, reload, startDnsmasq, stop, waitForAnswer, waitForGone } from './dnsmasq.js';

/**
 * dnsname: one dnsmasq per network, bound to the bridge, answering the
 * names (K8S_POD_NAME and aliases) of the containers on it; with the Aos
 * extensions multiDomain (networks resolve each other's domains) and
 * remoteServers (upstreams).
 */
type Ctx = PluginContext<DnsnameConfig>;
type IpFamily = 4 | 6;
const familyOf = (ip: string): IpFamily => (ip.includes(':') ? 6 : 4);
const WHAT = 'dnsname backend';
/** The port-53 openings (lib/pf/dns) of the backend this call uses. */
const chosenPorts = (cfg: DnsnameConfig) => dnsPorts(chooseBackend(cfg.backend, DEFAULT_BACKEND, WHAT));
/** Closing a network's openings: a DEL or GC does it in every usable backend, the configured (or default) one first. */
type CloseAll = (network: string, families: IpFamily[]) => Promise<void>;
const closeEverywhere = (cfg: DnsnameConfig): CloseAll => (network, families) =>
  inCleanupBackends(cfg.backend || DEFAULT_BACKEND, async (b: Backend) => (await dnsPorts(b)).closeNetwork(network, families));
const closeIn = (ports: DnsPorts): CloseAll => (network, families) => ports.closeNetwork(network, families);

interface Attachment {
  bridge: string;
  bridgeIP: string;
  ips: string[];
  names: string[];
}

function attachmentOf(ctx: Ctx): Attachment {
  const prev = ctx.prevResult;
  if (!prev) throw new CniError(ErrorCode.InvalidNetworkConfig, 'dnsname must be chained after bridge: missing prevResult');
  const bridge = prev.interfaces[0]?.name;
  if (!bridge) throw new CniError(ErrorCode.InvalidNetworkConfig, 'prevResult has no interfaces: dnsname needs the bridge as the first');
  const ips = prev.ips.map((ip) => canonicalIP(ip.address.split('/')[0]));
  if (ips.length === 0) throw new CniError(ErrorCode.InvalidNetworkConfig, 'prevResult has no IP addresses');
  const gw = prev.ips.find((ip) => ip.gateway && !ip.gateway.includes(':'))?.gateway ?? prev.ips.find((ip) => ip.gateway)?.gateway;
  if (!gw) throw new CniError(ErrorCode.InvalidNetworkConfig, 'prevResult has no gateway: dnsmasq listens on the bridge address');
  const podName = ctx.args.get('K8S_POD_NAME');
  if (!podName) throw new CniError(ErrorCode.InvalidEnvironment, 'required CNI_ARGS K8S_POD_NAME missing', 'the container name dnsname publishes');
  if (!DNS_NAME.test(podName)) throw new CniError(ErrorCode.InvalidEnvironment, 'K8S_POD_NAME is not a valid DNS name', JSON.stringify(podName));
  // A Map of the record's own entries: a network named "constructor" must not find Object.prototype's.
  const aliases = new Map(Object.entries(ctx.config.runtimeConfig?.aliases ?? {})).get(ctx.config.name) ?? [];
  const names = [...new Set([podName, ...aliases].map((n) => n.toLowerCase()))];
  return { bridge, bridgeIP: canonicalIP(gw), ips, names };
}

const same = (e: Entry, ctx: Ctx) => e.containerID === ctx.env.containerId && e.ifname === ctx.env.ifname;

/** Rewrites the localservers of the other multiDomain networks and reloads their dnsmasq. */
function syncOthers(tree: Tree, changed: string): void {
  const all = tree.networks();
  for (const o of all) {
    if (o.network === changed || !o.multiDomain) continue;
    tree.write(o, all);
    const pid = findDnsmasq(tree.pidPath(o.network), tree.confPath(o.network));
    if (pid) reload(pid, tree.confPath(o.network));
  }
}

async function teardown(tree: Tree, network: string, families: IpFamily[], close: CloseAll): Promise<void> {
  const pid = findDnsmasq(tree.pidPath(network), tree.confPath(network));
  if (pid) await stop(pid, tree.confPath(network));
  tree.remove(network);
  await close(network, families);
  syncOthers(tree, network);
}

const allFamilies = (): IpFamily[] => (which('ip6tables-save') ? [4, 6] : [4]);

/** After the files are written: the port-53 rule, dnsmasq (re)loaded, and the wait until the name answers. */
async function publish(ctx: Ctx, ports: DnsPorts, tree: Tree, s: NetworkState, a: Attachment, firstOnNetwork: boolean, old: NetworkState | undefined): Promise<void> {
  const cfg = ctx.config;
  // The port-53 opening comes with the network's first container (CHECK
  // verifies it is still there); later ADDs only refresh it (nftables: an
  // iptables INPUT policy turned DROP since; iptables: nothing to do).
  const opening = { network: s.network, bridge: s.bridge, family: familyOf(a.bridgeIP), iptablesInputDrop: cfg.iptablesInputDrop };
  if (firstOnNetwork || old?.bridge !== a.bridge) await ports.open(opening);
  else await ports.refresh(opening);
  const conf = tree.confPath(cfg.name);
  const pid = findDnsmasq(tree.pidPath(cfg.name), conf);
  if (!pid || !reload(pid, conf)) {
    trace(FP.dnsname.startingDnsmasq);
    await startDnsmasq(conf); // first ADD, or the daemon died
  }
  trace(FP.dnsname.dnsmasqSignalled);
  if (firstOnNetwork && cfg.multiDomain) syncOthers(tree, cfg.name);
  // dnsmasq re-reads its hosts file asynchronously: return once the name answers.
  if (!(await waitForAnswer(a.bridgeIP, `${a.names[0]}.${s.domain}`, a.ips.find((ip) => familyOf(ip) === 4) ?? a.ips[0]))) {
    throw new CniError(ErrorCode.IOFailure, `dnsmasq on ${a.bridgeIP} does not answer for ${a.names[0]}`);
  }
}

/** A failed ADD's undo: the network as it was, or gone if this container was its first. */
async function undoAdd(ports: DnsPorts, tree: Tree, s: NetworkState, a: Attachment, firstOnNetwork: boolean, old: NetworkState | undefined): Promise<void> {
  if (firstOnNetwork || !old) {
    await teardown(tree, s.network, [familyOf(a.bridgeIP)], closeIn(ports));
    return;
  }
  if (old.bridge !== a.bridge) await ports.close({ network: s.network, bridge: a.bridge, family: familyOf(a.bridgeIP) });
  tree.write(old, tree.networks());
  const pid = findDnsmasq(tree.pidPath(old.network), tree.confPath(old.network));
  if (pid) reload(pid, tree.confPath(old.network));
}

/** prevResult's bridge must exist here: dnsmasq binds to it (/proc/self/net is this process's namespace, unlike /sys). */
function requireBridge(bridge: string): void {
  let dev = '';
  try {
    dev = readFileSync('/proc/self/net/dev', 'utf8');
  } catch {
    return; // no procfs: dnsmasq will tell
  }
  if (!dev.split('\n').some((l) => l.trimStart().startsWith(`${bridge}:`))) {
    throw new CniError(ErrorCode.InvalidNetworkConfig, `bridge "${bridge}" from prevResult does not exist`, 'dnsname binds dnsmasq to the bridge the previous plugin created');
  }
}

async function add(ctx: Ctx): Promise<Result> {
  const cfg = ctx.config;
  const a = attachmentOf(ctx);
  requireBridge(a.bridge);
  const ports = await chosenPorts(cfg);
  const tree = new Tree();
  await tree.locked(async () => {
    trace(FP.dnsname.locked);
    const old = tree.read(cfg.name);
    const s: NetworkState = {
      network: cfg.name, domain: cfg.domainName.toLowerCase(), bridge: a.bridge, bridgeIP: a.bridgeIP,
      multiDomain: cfg.multiDomain, remoteServers: cfg.remoteServers, entries: (old?.entries ?? []).filter((e) => !same(e, ctx)),
    };
    for (const e of s.entries) {
      const clash = e.names.find((n) => a.names.includes(n));
      if (clash) throw new CniError(ErrorCode.NameTaken, `name "${clash}" is already taken on network ${cfg.name}`, `by container ${e.containerID}`);
    }
    s.entries.push({ containerID: ctx.env.containerId, ifname: ctx.env.ifname, ips: a.ips, names: a.names });
    const firstOnNetwork = !old || old.entries.length === 0;
    trace(FP.dnsname.stateRead);
    tree.write(s, tree.networks());
    trace(FP.dnsname.filesWritten);
    try {
      await publish(ctx, ports, tree, s, a, firstOnNetwork, old);
    } catch (err) {
      // Leave the host as before this ADD (a runtime may never send the DEL).
      await undoAdd(ports, tree, s, a, firstOnNetwork, old).catch((undoErr) => {
        process.stderr.write(`dnsname: undoing the failed ADD: ${(undoErr as Error)?.message ?? undoErr}\n`);
      });
      throw err;
    }
    trace(FP.dnsname.nameAnswers);
  });
  const prev = ctx.prevResult!;
  const dedupe = (xs: string[]) => [...new Set(xs)];
  return {
    ...prev,
    dns: {
      ...prev.dns,
      nameservers: dedupe([a.bridgeIP, ...(prev.dns.nameservers ?? [])]),
      search: dedupe([cfg.domainName.toLowerCase(), ...(prev.dns.search ?? [])]),
    },
  };
}

/** Works from state.json alone: no prevResult, no namespace, /run wiped, dnsmasq dead are all fine. */
async function del(ctx: Ctx): Promise<void> {
  const tree = new Tree();
  await tree.locked(async () => {
    const s = tree.read(ctx.config.name);
    const mine = s?.entries.filter((e) => same(e, ctx)) ?? [];
    const rest = s?.entries.filter((e) => !same(e, ctx)) ?? [];
    if (!s || rest.length === 0) {
      await teardown(tree, ctx.config.name, s ? [familyOf(s.bridgeIP)] : allFamilies(), closeEverywhere(ctx.config));
      return;
    }
    if (mine.length === 0 && !tree.stale(s)) return;
    // (Not ours, but the hosts file is stale: an ADD died between writing it and state.json. Regenerated below.)
    s.entries = rest;
    tree.write(s, tree.networks());
    const conf = tree.confPath(s.network);
    const pid = findDnsmasq(tree.pidPath(s.network), conf);
    if (!pid || !reload(pid, conf)) await startDnsmasq(conf); // others still need it
    for (const e of mine) await waitForGone(s.bridgeIP, `${e.names[0]}.${s.domain}`, e.ips[0]);
  });
}

async function check(ctx: Ctx): Promise<void> {
  const a = attachmentOf(ctx);
  const ports = await chosenPorts(ctx.config);
  const tree = new Tree();
  const fail = (msg: string, details = '') => new CniError(ErrorCode.CheckFailed, msg, details);
  const s = tree.read(ctx.config.name);
  if (!s) throw fail(`no dnsname state for network ${ctx.config.name}`);
  const e = s.entries.find((x) => same(x, ctx));
  if (!e) throw fail(`container ${ctx.env.containerId} has no names on network ${ctx.config.name}`);
  if (e.names.join() !== a.names.join() || e.ips.join() !== a.ips.join()) throw fail('the container\'s names or addresses differ from prevResult', `${e.names.join(',')} ${e.ips.join(',')}`);
  const hosts = tree.readFile(s.network, 'addnhosts');
  if (hosts === undefined) throw fail('addnhosts is missing');
  for (const ip of e.ips) {
    if (!hosts.split('\n').includes(`${ip}\t${e.names.join('\t')}`)) throw fail(`addnhosts has no line for ${ip}`);
  }
  if (!findDnsmasq(tree.pidPath(s.network), tree.confPath(s.network))) throw fail(`dnsmasq for network ${s.network} is not running`);
  await ports.check({ network: s.network, bridge: s.bridge, family: familyOf(s.bridgeIP) });
}

async function gc(ctx: Ctx): Promise<void> {
  const valid = new Set(ctx.validAttachments.map((v) => `${v.containerID}\n${v.ifname}`));
  const tree = new Tree();
  await tree.locked(async () => {
    const s = tree.read(ctx.config.name);
    if (!s) {
      // A directory without state.json is what an ADD that died before writing it leaves: no one's.
      if (tree.exists(ctx.config.name)) await teardown(tree, ctx.config.name, allFamilies(), closeEverywhere(ctx.config));
      return;
    }
    const keep = s.entries.filter((e) => valid.has(`${e.containerID}\n${e.ifname}`));
    if (keep.length === s.entries.length && !tree.stale(s)) return;
    if (keep.length === 0) {
      await teardown(tree, s.network, [familyOf(s.bridgeIP)], closeEverywhere(ctx.config));
      return;
    }
    s.entries = keep;
    tree.write(s, tree.networks());
    const pid = findDnsmasq(tree.pidPath(s.network), tree.confPath(s.network));
    if (pid) reload(pid, tree.confPath(s.network));
  });
}

export default definePlugin({
  name: 'dnsname',
  schema: dnsnameConfig,
  knownArgs: ['K8S_POD_NAME', 'K8S_POD_NAMESPACE', 'K8S_POD_INFRA_CONTAINER_ID', 'K8S_POD_UID'],
  add,
  del,
  check,
  gc,
  async status(ctx) {
    if (!dnsmasqBinary()) throw new CniError(ErrorCode.NotAvailable, 'dnsmasq not found', 'install dnsmasq-base');
    assertUsable(ctx.config.backend, DEFAULT_BACKEND, WHAT);
  },
});

