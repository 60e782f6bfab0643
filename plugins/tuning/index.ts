import { definePlugin, type PluginContext } from '../../lib/cni/skel.js';
import { CniError, ErrorCode } from '../../lib/cni/errors.js';
import type { Result } from '../../lib/cni/result.js';
import { Netns, readSysctl, writeSysctl as setSysctl } from '../../lib/netlink/ns.js';
import { Rtnl, errnoOf, type LinkInfo } from '../../lib/netlink/rtnl.js';
import {
  changesLink, checkAllowlist, DEFAULT_ALLOWLIST, DEFAULT_DATA_DIR, duplicateSysctlKeys, resolveSettings, tuningConfig,
  type Settings, type Sysctl, type TuningConfig,
} from './config.js';
import { backupFile, jsonName, listSaved, readSaved, removeSaved, removeTemps, writeSaved, type Saved } from './backup.js';
import { FP, testHook, trace } from '../../lib/cni/trace.js';

/**
 * tuning (chained): sysctls under /proc/sys/net and link attributes (MAC,
 * promiscuity, MTU, all-multicast, txqueuelen) of CNI_IFNAME, set inside the
 * container namespace. The originals are saved before anything changes and
 * put back by DEL (the reference does not restore sysctls; we do).
 */
type Ctx = PluginContext<TuningConfig>;
type LinkValues = Pick<Saved, 'mac' | 'promisc' | 'mtu' | 'allmulti' | 'txQLen'>;

/**
 * The allowlist's path: /etc/cni/tuning/allowlist.conf as the reference, or
 * $CNI_TS_TUNING_ALLOWLIST (tests use it). Deliberately not a config key: the
 * allowlist polices the config, which must not pick its own policy.
 */
const allowlistFile = () => testHook('CNI_TS_TUNING_ALLOWLIST') || DEFAULT_ALLOWLIST;

function settings(ctx: Ctx): Settings {
  const dups = duplicateSysctlKeys(ctx.stdin.toString('utf8'));
  if (dups.length) throw new CniError(ErrorCode.InvalidNetworkConfig, 'duplicated sysctl keys are not allowed', dups.join(', '));
  return resolveSettings(ctx.config, ctx.env.ifname, ctx.args);
}

function needPrev(ctx: Ctx): Result {
  if (!ctx.prevResult) throw new CniError(ErrorCode.InvalidNetworkConfig, 'Required prevResult missing', 'tuning must be chained after an interface plugin');
  return ctx.prevResult;
}

const reason = (err: unknown) => `${errnoOf(err) ?? ''} ${(err as Error)?.message ?? err}`.trim();
const refused = (what: string, err: unknown) => (err instanceof CniError ? err : new CniError(ErrorCode.KernelRefused, what, reason(err)));

// /proc/sys/net shows the namespace of the thread that opens the file, so
// sysctls are read and written only inside `ns.run`.
function readSysctls(ns: Netns, list: Sysctl[]): Record<string, string> {
  return ns.run(() => {
    const out: Record<string, string> = {};
    for (const s of list) {
      try {
        out[s.path] = readSysctl(s.path.split('/'));
      } catch (err) {
        const code = errnoOf(err);
        if (code === 'ENOENT') throw new CniError(ErrorCode.InvalidNetworkConfig, `no such sysctl: "${s.key}"`, `/proc/sys/${s.path}`);
        if (code === 'EACCES' || code === 'EPERM') continue; // write-only (route/flush): nothing to restore
        throw new CniError(ErrorCode.IOFailure, `failed to read sysctl "${s.key}"`, reason(err));
      }
    }
    return out;
  });
}

function writeSysctl(path: string, value: string): void {
  try {
    setSysctl(path.split('/'), value);
  } catch (err) {
    throw new CniError(ErrorCode.KernelRefused, `failed to set sysctl /proc/sys/${path} to "${value}"`, reason(err));
  }
}

/** Sets what `v` names, in the reference's order; `failed` decides whether to stop (ADD) or go on (DEL). */
async function setLink(nl: Rtnl, link: LinkInfo, v: LinkValues, failed: (e: CniError) => void): Promise<void> {
  const i = link.index;
  const steps: [boolean, string, () => Promise<void>][] = [
    [v.mac !== undefined, `MAC address to ${v.mac}`, () => nl.setMac(i, v.mac!)],
    [v.promisc !== undefined, `promiscuous mode ${v.promisc ? 'on' : 'off'}`, () => nl.setPromisc(i, v.promisc!)],
    [Boolean(v.mtu), `MTU to ${v.mtu}`, () => nl.setMtu(i, v.mtu!)],
    [v.allmulti !== undefined, `all-multicast mode ${v.allmulti ? 'on' : 'off'}`, () => nl.setAllmulti(i, v.allmulti!)],
    [v.txQLen !== undefined, `transmit queue length to ${v.txQLen}`, () => nl.setTxqlen(i, v.txQLen!)],
  ];
  for (const [wanted, what, run] of steps) {
    if (!wanted) continue;
    try {
      await run();
      trace(FP.tuning.linkChanged);
    } catch (err) {
      failed(refused(`failed to set ${what} on ${link.name}`, err));
    }
  }
}

/** The current values of everything `s` is about to change. */
function originals(ns: Netns, link: LinkInfo, s: Settings): Saved {
  const saved: Saved = {};
  if (s.mac !== undefined) saved.mac = link.mac;
  if (s.promisc !== undefined) saved.promisc = link.promisc;
  if (s.mtu !== undefined) saved.mtu = link.mtu;
  if (s.allmulti !== undefined) saved.allmulti = link.allmulti;
  if (s.txQLen !== undefined) saved.txQLen = link.txqlen;
  if (s.sysctls.length) saved.sysctl = readSysctls(ns, s.sysctls);
  return saved;
}

/** Best effort: every value it can put back, link first, then sysctls (which may depend on the link, like ipv6 mtu). */
async function restore(ns: Netns, nl: Rtnl, link: LinkInfo | undefined, saved: Saved): Promise<string[]> {
  const errors: string[] = [];
  if (link) await setLink(nl, link, saved, (e) => errors.push(e.message));
  // The file is root's, but a path out of net/ would reach the host's sysctls: never follow one.
  const entries = Object.entries(saved.sysctl ?? {}).filter(([p]) => p.startsWith('net/') && !p.split('/').includes('..'));
  ns.run(() => {
    for (const [path, value] of entries) {
      try {
        writeSysctl(path, value);
      } catch (err) {
        if (!/ENOENT/.test((err as CniError).details)) errors.push((err as Error).message); // its interface is gone
      }
    }
  });
  return errors;
}

/** The sandboxed interface named CNI_IFNAME gets the new MAC (any of that name when none is sandboxed). */
function withMac(prev: Result, ifname: string, mac: string | undefined): Result {
  if (mac === undefined) return prev;
  const sandboxed = prev.interfaces.some((i) => i.name === ifname && i.sandbox);
  const interfaces = prev.interfaces.map((i) => (i.name === ifname && (!sandboxed || i.sandbox) ? { ...i, mac } : i));
  return { ...prev, interfaces };
}

async function add(ctx: Ctx): Promise<Result> {
  const s = settings(ctx);
  checkAllowlist(s.sysctls.map((x) => x.key), allowlistFile());
  const prev = needPrev(ctx);
  if (!s.sysctls.length && !changesLink(s)) return prev;
  const { containerId: id, ifname, netns } = ctx.env;
  const ns = Netns.open(netns);
  const nl = Rtnl.open(ns);
  try {
    const link = await nl.linkByName(ifname);
    if (!link) throw new CniError(ErrorCode.InvalidEnvironment, `interface ${ifname} not found in ${netns}`);
    const before = originals(ns, link, s);
    const file = backupFile(s.dataDir, id, ifname);
    // An earlier ADD without DEL in between: its originals are the real ones.
    const earlier = readSaved(file) ?? undefined;
    if (earlier?.containerID !== undefined && (earlier.containerID !== id || earlier.ifname !== ifname)) {
      throw new CniError(ErrorCode.InvalidEnvironment, `${file} holds the settings of container ${earlier.containerID} interface ${earlier.ifname}`);
    }
    const kept: Saved = { containerID: id, ifname, ...before, ...earlier, network: ctx.config.name, sysctl: { ...before.sysctl, ...earlier?.sysctl } };
    if (!Object.keys(kept.sysctl!).length) delete kept.sysctl;
    writeSaved(file, kept);
    trace(FP.tuning.originalsSaved);
    try {
      ns.run(() =>
        s.sysctls.forEach((x) => {
          writeSysctl(x.path, x.value);
          trace(FP.tuning.sysctlSet);
        }),
      );
      await setLink(nl, link, s, (e) => {
        throw e;
      });
    } catch (err) {
      // Nothing of a failed ADD stays: the values and the file go back to what they were.
      await restore(ns, nl, link, before);
      if (earlier) writeSaved(file, earlier);
      else removeSaved(file);
      throw err;
    }
    return withMac(prev, ifname, s.mac);
  } finally {
    nl.close();
    ns.close();
  }
}

/** Restores and forgets; a missing file, namespace or interface is not an error. */
async function del(ctx: Ctx): Promise<void> {
  const dataDir = ctx.config.dataDir || DEFAULT_DATA_DIR;
  const { containerId: id, ifname } = ctx.env;
  const ours = jsonName(backupFile(dataDir, id, ifname));
  removeTemps(dataDir, (name) => name !== ours);
  const file = backupFile(dataDir, id, ifname);
  const saved: Saved | null | undefined = readSaved(file); // ours, or the reference plugin's (same name)
  if (saved === undefined) return;
  if (saved?.containerID !== undefined && (saved.containerID !== id || saved.ifname !== ifname)) return; // another attachment's, by name collision
  let ns: Netns | undefined;
  try {
    ns = saved && ctx.env.netns ? Netns.tryOpen(ctx.env.netns) : undefined;
  } catch {
    ns = undefined; // a stale path that is no namespace any more: nothing left to restore
  }
  if (ns && saved) {
    const nl = Rtnl.open(ns);
    try {
      const link = await nl.linkByName(ifname);
      const errors = await restore(ns, nl, link, saved);
      if (errors.length) process.stderr.write(`tuning: could not restore everything: ${errors.join('; ')}\n`);
    } finally {
      nl.close();
      ns.close();
    }
  }
  removeSaved(file);
}

const sameValue = (a: string, b: string) => a.trim().split(/\s+/).join(' ') === b.trim().split(/\s+/).join(' ');

async function check(ctx: Ctx): Promise<void> {
  const s = settings(ctx);
  needPrev(ctx);
  const { ifname, netns } = ctx.env;
  const fail = (msg: string) => new CniError(ErrorCode.CheckFailed, msg);
  const ns = Netns.open(netns);
  const nl = Rtnl.open(ns);
  try {
    const current = ns.run(() =>
      s.sysctls.map((x) => {
        try {
          return readSysctl(x.path.split('/'));
        } catch (err) {
          throw fail(`cannot read sysctl /proc/sys/${x.path}: ${reason(err)}`);
        }
      }),
    );
    s.sysctls.forEach((x, n) => {
      // Whitespace-insensitive: the kernel prints ranges with a tab.
      if (!sameValue(current[n], x.value)) throw fail(`sysctl /proc/sys/${x.path} is "${current[n].trim()}", configured "${x.value}"`);
    });
    const l = await nl.linkByName(ifname);
    if (!l) throw fail(`Cannot find container link ${ifname}`);
    if (s.mac !== undefined && l.mac !== s.mac) throw fail(`${ifname} has MAC ${l.mac}, configured ${s.mac}`);
    if (s.promisc !== undefined && l.promisc !== s.promisc) throw fail(`${ifname} promiscuous mode is ${l.promisc}, configured ${s.promisc}`);
    if (s.mtu !== undefined && l.mtu !== s.mtu) throw fail(`${ifname} has MTU ${l.mtu}, configured ${s.mtu}`);
    if (s.allmulti !== undefined && l.allmulti !== s.allmulti) throw fail(`${ifname} all-multicast mode is ${l.allmulti}, configured ${s.allmulti}`);
    if (s.txQLen !== undefined && l.txqlen !== s.txQLen) throw fail(`${ifname} has transmit queue length ${l.txqlen}, configured ${s.txQLen}`);
  } finally {
    nl.close();
    ns.close();
  }
}

/**
 * Drops saved settings of this network's attachments the runtime no longer
 * has (their namespaces are gone). The directory is shared by all networks
 * and GC is given one network's attachments: only files recording this
 * network are GC's; one of another network or without a record (the
 * reference's, binaries' up to fb6743a) stays for its DEL.
 */
async function gc(ctx: Ctx): Promise<void> {
  const dataDir = ctx.config.dataDir || DEFAULT_DATA_DIR;
  const keep = new Set(ctx.validAttachments.map((a) => `${a.containerID}/${a.ifname}`));
  const keepNames = new Set(ctx.validAttachments.map((a) => jsonName(backupFile(dataDir, a.containerID, a.ifname))));
  removeTemps(dataDir, (name) => keepNames.has(name), ctx.config.name);
  for (const e of listSaved(dataDir)) {
    if (e.network !== ctx.config.name || keep.has(`${e.containerID}/${e.ifname}`)) continue;
    try {
      removeSaved(e.file);
    } catch {
      // goes on past errors, as GC should
    }
  }
}

export default definePlugin({ name: 'tuning', schema: tuningConfig, knownArgs: ['MAC'], add, del, check, gc });
