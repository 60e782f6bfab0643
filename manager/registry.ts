import { closeSync, constants, fstatSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { formatIP, network as cidrNetwork, parseCidr } from '../lib/ip/index.js';
import { readRegularFile } from '../lib/exec/files.js';
import { cacheEntry, type CacheEntry } from './schema.js';

/**
 * The network registry view (`cni-manager networks`): which networks this
 * host has and who is attached to them, built only from what is already
 * recorded — the network configurations of a conf dir, cni-manager's result
 * cache and libcni's (containerd, podman, cnitool). Both caches hold
 * cniCacheV1 files: <dir>/results/<network>-<containerID>-<ifname>.
 *
 * The first part is pure (configs + cache entries in, the registry out) so
 * the unit tests can feed it anything; the readers at the end do the file
 * system part, skipping (with a warning) whatever they cannot trust.
 * The JSON shape is documented in docs/registry.md.
 */

// ---- what we read from configurations (only the keys the view shows; the rest passes) ----

const vlanId = z.number().int().min(0).max(4094);
const rangeSchema = z.object({ subnet: z.string(), gateway: z.string().optional() }).passthrough();
const ipamSchema = z
  .object({
    type: z.string().optional(),
    subnet: z.string().optional(),
    gateway: z.string().optional(),
    ranges: z.array(z.array(rangeSchema)).optional(),
    // static IPAM
    addresses: z.array(z.object({ address: z.string(), gateway: z.string().optional() }).passthrough()).optional(),
  })
  .passthrough();
const pluginSchema = z
  .object({
    type: z.string(),
    bridge: z.string().optional(),
    vlan: vlanId.optional(),
    vlanTrunk: z.array(z.object({ id: vlanId.optional(), minID: vlanId.optional(), maxID: vlanId.optional() }).passthrough()).optional(),
    vlanId: vlanId.optional(),
    master: z.string().optional(),
    ipam: ipamSchema.optional(),
  })
  .passthrough();
/** A .conflist, or a single-plugin .conf/.json (libcni turns one into a list of one). */
const confSchema = z.union([
  z.object({ name: z.string().min(1), plugins: z.array(pluginSchema).min(1) }).passthrough(),
  pluginSchema.extend({ name: z.string().min(1) }),
]);
type PluginView = z.infer<typeof pluginSchema>;

// ---- what we read from results (any version: 0.3+ interfaces/ips, 0.1/0.2 ip4/ip6) ----

const resultSchema = z
  .object({
    interfaces: z.array(z.object({ name: z.string(), mac: z.string().optional(), sandbox: z.string().optional() }).passthrough()).optional(),
    ips: z.array(z.object({ address: z.string(), gateway: z.string().optional(), interface: z.number().int().optional() }).passthrough()).optional(),
    ip4: z.object({ ip: z.string() }).passthrough().nullish(),
    ip6: z.object({ ip: z.string() }).passthrough().nullish(),
  })
  .passthrough();

// ---- the registry model ----

export const CACHE_SOURCES = ['cni-manager', 'libcni', 'shared'] as const;
/** Which cache an entry came from; "shared" when --cache-dir and --libcni-cache-dir are the same directory (the default, /var/lib/cni). */
export type CacheSource = (typeof CACHE_SOURCES)[number];

/** in-use: configured and attached; no-users: configured, nothing attached; cache-only: not in the conf dir, known only from cache entries. */
export type NetworkState = 'in-use' | 'no-users' | 'cache-only';

export interface VlanView {
  /** bridge: the port's access VLAN (`vlan`); vlan plugin: `vlanId`. */
  id?: number;
  /** bridge `vlanTrunk`, expanded to ranges as written ("10", "20-30"). */
  trunk?: string[];
  /** vlan plugin: the parent link. */
  master?: string;
}

export interface NetworkView {
  name: string;
  state: NetworkState;
  /** The first plugin's type (bridge, vlan, tap, …): what kind of network it is. */
  kind: string;
  /** Every plugin type of the list, in order; IPAM types as "<plugin>/<ipam>" are not listed, see ipam. */
  plugins: string[];
  ipam: string | null;
  bridge: string | null;
  vlan: VlanView | null;
  cidrs: string[];
  gateways: string[];
  attachments: number;
  /** The conf dir file, or null for a network known only from caches (then the config is the cached one). */
  confFile: string | null;
}

export interface AttachmentView {
  network: string;
  containerId: string;
  ifname: string;
  /** MAC of the interface in the container / guest (the result's interface with a sandbox). */
  mac: string | null;
  /** The host side: the first result interface without a sandbox that is not the network's bridge (host veth, TAP). */
  hostDevice: string | null;
  /** Every such host interface in result order (a host veth and bandwidth's ifb, say). */
  hostDevices: string[];
  ips: string[];
  cache: CacheSource;
  cacheFile: string;
}

export interface Registry {
  version: 1;
  networks: NetworkView[];
  attachments: AttachmentView[];
  warnings: string[];
}

export interface ConfInput {
  file: string;
  bytes: Buffer | string;
}

export interface CacheInput {
  source: CacheSource;
  file: string;
  entry: CacheEntry;
}

interface ParsedConf {
  name: string;
  plugins: PluginView[];
}

function parseConf(bytes: Buffer | string): ParsedConf {
  const raw: unknown = JSON.parse(bytes.toString());
  const c = confSchema.parse(raw);
  if ('plugins' in c && Array.isArray(c.plugins)) return { name: c.name, plugins: c.plugins as PluginView[] };
  return { name: c.name, plugins: [c as PluginView] };
}

function zodMessage(err: unknown): string {
  if (err instanceof z.ZodError) return err.issues.map((i) => `${i.path.join('.') || '(top)'}: ${i.message}`).join('; ');
  return (err as Error).message;
}

/** host-local's default gateway: the subnet's first address. */
function defaultGateway(subnet: string): string | undefined {
  try {
    const n = cidrNetwork(parseCidr(subnet));
    return formatIP(n.family, n.ip + 1n);
  } catch {
    return undefined;
  }
}

function canonicalSubnet(subnet: string): string {
  try {
    const n = cidrNetwork(parseCidr(subnet));
    return `${formatIP(n.family, n.ip)}/${n.prefix}`;
  } catch {
    return subnet;
  }
}

function describe(conf: ParsedConf): Omit<NetworkView, 'state' | 'attachments' | 'confFile'> {
  const plugins = conf.plugins;
  const main = plugins.find((p) => p.ipam) ?? plugins[0];
  const bridgePlugin = plugins.find((p) => p.type === 'bridge');
  // The bridge plugin's default name is cni0; other plugins (tap) name one only when they join it.
  const bridge = bridgePlugin ? (bridgePlugin.bridge ?? 'cni0') : (plugins.find((p) => p.bridge)?.bridge ?? null);
  let vlan: VlanView | null = null;
  const vlanPlugin = plugins.find((p) => p.type === 'vlan');
  if (vlanPlugin && vlanPlugin.vlanId !== undefined) vlan = { id: vlanPlugin.vlanId, ...(vlanPlugin.master ? { master: vlanPlugin.master } : {}) };
  else if (bridgePlugin && (bridgePlugin.vlan || bridgePlugin.vlanTrunk?.length)) {
    vlan = {};
    if (bridgePlugin.vlan) vlan.id = bridgePlugin.vlan;
    if (bridgePlugin.vlanTrunk?.length) {
      vlan.trunk = bridgePlugin.vlanTrunk.map((t) => (t.id !== undefined ? String(t.id) : `${t.minID ?? '?'}-${t.maxID ?? '?'}`));
    }
  }
  const cidrs: string[] = [];
  const gateways: string[] = [];
  const add = (list: string[], v: string | undefined) => {
    if (v && !list.includes(v)) list.push(v);
  };
  const ipam = main.ipam;
  if (ipam) {
    const hostLocal = ipam.type === 'host-local';
    if (ipam.subnet) {
      add(cidrs, canonicalSubnet(ipam.subnet));
      add(gateways, ipam.gateway ?? (hostLocal ? defaultGateway(ipam.subnet) : undefined));
    }
    for (const set of ipam.ranges ?? []) {
      for (const r of set) {
        add(cidrs, canonicalSubnet(r.subnet));
        add(gateways, r.gateway ?? (hostLocal ? defaultGateway(r.subnet) : undefined));
      }
    }
    for (const a of ipam.addresses ?? []) {
      add(cidrs, canonicalSubnet(a.address));
      add(gateways, a.gateway);
    }
  }
  return {
    name: conf.name,
    kind: main.type,
    plugins: plugins.map((p) => p.type),
    ipam: ipam?.type ?? null,
    bridge,
    vlan,
    cidrs,
    gateways,
  };
}

function attachmentOf(input: CacheInput, bridge: string | null, warn: (m: string) => void): AttachmentView {
  const e = input.entry;
  const view: AttachmentView = {
    network: e.networkName, containerId: e.containerId, ifname: e.ifName, mac: null, hostDevice: null, hostDevices: [], ips: [], cache: input.source, cacheFile: input.file,
  };
  if (!e.result) return view;
  const parsed = resultSchema.safeParse(e.result);
  if (!parsed.success) {
    warn(`${input.file}: result not understood (${zodMessage(parsed.error)}); shown without interfaces`);
    return view;
  }
  const r = parsed.data;
  const ifs = r.interfaces ?? [];
  const inside = ifs.find((i) => i.sandbox && i.name === e.ifName) ?? ifs.find((i) => i.sandbox);
  view.mac = inside?.mac ?? null;
  view.hostDevices = ifs.filter((i) => !i.sandbox && i.name !== bridge).map((i) => i.name);
  view.hostDevice = view.hostDevices[0] ?? null;
  view.ips = (r.ips ?? []).map((i) => i.address);
  if (r.ip4?.ip) view.ips.push(r.ip4.ip);
  if (r.ip6?.ip) view.ips.push(r.ip6.ip);
  return view;
}

/**
 * The registry from configurations and cache entries. A configuration that
 * does not parse, or a second one of the same name (libcni uses the first by
 * file name order, so do we), is a warning. A network only in caches is
 * described from its cached config.
 */
export function buildRegistry(confs: ConfInput[], entries: CacheInput[]): Registry {
  const warnings: string[] = [];
  const warn = (m: string) => warnings.push(m);
  const byName = new Map<string, { view: Omit<NetworkView, 'state' | 'attachments' | 'confFile'>; confFile: string | null }>();
  for (const c of [...confs].sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : 0))) {
    let conf: ParsedConf;
    try {
      conf = parseConf(c.bytes);
    } catch (err) {
      warn(`${c.file}: skipped, not a network configuration (${zodMessage(err)})`);
      continue;
    }
    if (byName.has(conf.name)) {
      warn(`${c.file}: skipped, network "${conf.name}" is already defined by ${byName.get(conf.name)!.confFile}`);
      continue;
    }
    byName.set(conf.name, { view: describe(conf), confFile: c.file });
  }
  const sorted = [...entries].sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : 0));
  for (const e of sorted) {
    if (byName.has(e.entry.networkName)) continue;
    let view: Omit<NetworkView, 'state' | 'attachments' | 'confFile'> | undefined;
    try {
      const conf = parseConf(Buffer.from(e.entry.config, 'base64'));
      view = { ...describe(conf), name: e.entry.networkName };
    } catch (err) {
      warn(`${e.file}: the cached network configuration does not parse (${zodMessage(err)}); network "${e.entry.networkName}" shown without details`);
      view = { name: e.entry.networkName, kind: '', plugins: [], ipam: null, bridge: null, vlan: null, cidrs: [], gateways: [] };
    }
    byName.set(e.entry.networkName, { view, confFile: null });
  }
  const attachments = sorted.map((e) => attachmentOf(e, byName.get(e.entry.networkName)?.view.bridge ?? null, warn));
  attachments.sort((a, b) => cmp([a.network, a.containerId, a.ifname, a.cache], [b.network, b.containerId, b.ifname, b.cache]));
  const networks: NetworkView[] = [...byName.values()]
    .map(({ view, confFile }) => {
      const n = attachments.filter((a) => a.network === view.name).length;
      const state: NetworkState = confFile === null ? 'cache-only' : n > 0 ? 'in-use' : 'no-users';
      // Keys in the documented order (docs/registry.md), whatever order they were gathered in.
      return {
        name: view.name, state, kind: view.kind, plugins: view.plugins, ipam: view.ipam, bridge: view.bridge, vlan: view.vlan,
        cidrs: view.cidrs, gateways: view.gateways, attachments: n, confFile,
      };
    })
    .sort((a, b) => cmp([a.name], [b.name]));
  return { version: 1, networks, attachments, warnings };
}

function cmp(a: string[], b: string[]): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
  return 0;
}

// ---- rendering ----

function table(rows: string[][]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('  ').trimEnd()).join('\n');
}

const dash = (v: string | null | undefined | string[]) => (Array.isArray(v) ? (v.length ? v.join(',') : '-') : v || '-');

function vlanText(v: VlanView | null): string {
  if (!v) return '-';
  const parts: string[] = [];
  if (v.id !== undefined) parts.push(String(v.id));
  if (v.trunk) parts.push(`trunk:${v.trunk.join(',')}`);
  // One token per cell, like `ip -br`: 42@eth1 (the vlan link's own notation), 7+trunk:100,200-210.
  return parts.join('+') + (v.master ? `@${v.master}` : '');
}

const STATE_TEXT: Record<NetworkState, string> = { 'in-use': 'in-use', 'no-users': 'NO-USERS', 'cache-only': 'CACHE-ONLY' };

/** Two aligned tables (networks, then attachments), like `ip -br`: one line each, "-" for nothing. */
export function formatRegistry(reg: Registry): string {
  const nets = [['NETWORK', 'STATE', 'KIND', 'PLUGINS', 'BRIDGE', 'VLAN', 'CIDR', 'GATEWAY', 'USERS']];
  for (const n of reg.networks) {
    nets.push([n.name, STATE_TEXT[n.state], dash(n.kind), dash(n.ipam ? [...n.plugins, `ipam:${n.ipam}`] : n.plugins), dash(n.bridge), vlanText(n.vlan), dash(n.cidrs), dash(n.gateways), String(n.attachments)]);
  }
  const atts = [['NETWORK', 'CONTAINER', 'IFNAME', 'MAC', 'HOSTDEV', 'IPS', 'CACHE']];
  for (const a of reg.attachments) atts.push([a.network, a.containerId, a.ifname, dash(a.mac), dash(a.hostDevice), dash(a.ips), a.cache]);
  return `${table(nets)}\n\n${table(atts)}\n`;
}

// ---- the file system part ----

/** A cache file larger than this is not a result (libcni's are a few KiB). */
const MAX_ENTRY = 4 * 1024 * 1024;
const O_DIRECTORY = 0o200000;
const myUid = (): number => process.geteuid?.() ?? 0;

/**
 * Every cniCacheV1 entry of <dir>/results, or none with a warning. We run as
 * root, and a cache another user could write would let them make us read
 * (and print) any file through a symlink, or hang on a FIFO: the results
 * directory and each file must not be symlinks, must belong to root (libcni's
 * cache; `allowOwnUid`: or to us, cni-manager's own cache when run by another
 * user) and must not be writable by group or others. The directory is opened
 * once and its entries are read through /proc/self/fd/<dirfd>/<name>, so a
 * directory swapped after the check is not followed. Entries with a `.tmp`
 * in the name are writes in progress (cache.ts), not results.
 */
export function readCacheDir(dir: string, source: CacheSource, opts: { allowOwnUid: boolean }): { entries: CacheInput[]; warnings: string[] } {
  const warnings: string[] = [];
  const entries: CacheInput[] = [];
  const results = join(dir, 'results');
  const okUid = (uid: number) => uid === 0 || (opts.allowOwnUid && uid === myUid());
  let dfd: number;
  try {
    dfd = openSync(results, constants.O_RDONLY | constants.O_NOFOLLOW | O_DIRECTORY);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return { entries, warnings }; // nothing cached yet
    if (code === 'ELOOP' || code === 'ENOTDIR') warnings.push(`${results}: skipped, a symbolic link or not a directory`);
    else warnings.push(`${results}: skipped, ${(err as Error).message}`);
    return { entries, warnings };
  }
  try {
    const st = fstatSync(dfd);
    if (!okUid(st.uid)) {
      warnings.push(`${results}: skipped, owned by uid ${st.uid} (a ${source} cache must be root's)`);
      return { entries, warnings };
    }
    if (st.mode & 0o022) {
      warnings.push(`${results}: skipped, writable by group or others (mode ${(st.mode & 0o7777).toString(8)})`);
      return { entries, warnings };
    }
    const base = `/proc/self/fd/${dfd}`;
    for (const name of readdirSync(base).sort()) {
      if (name.includes('.tmp')) continue;
      const file = join(results, name);
      let fd: number;
      try {
        fd = openSync(join(base, name), constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') continue; // removed since the listing (a DEL)
        warnings.push(`${file}: skipped, ${code === 'ELOOP' ? 'a symbolic link' : (err as Error).message}`);
        continue;
      }
      try {
        const fst = fstatSync(fd);
        if (!fst.isFile()) {
          if (!fst.isDirectory()) warnings.push(`${file}: skipped, not a regular file`);
          continue;
        }
        if (!okUid(fst.uid)) {
          warnings.push(`${file}: skipped, owned by uid ${fst.uid}, not root`);
          continue;
        }
        if (fst.mode & 0o022) {
          warnings.push(`${file}: skipped, writable by group or others (mode ${(fst.mode & 0o7777).toString(8)})`);
          continue;
        }
        if (fst.size > MAX_ENTRY) {
          warnings.push(`${file}: skipped, larger than ${MAX_ENTRY} bytes`);
          continue;
        }
        let raw: unknown;
        try {
          raw = JSON.parse(readFileSync(fd, 'utf8'));
        } catch (err) {
          warnings.push(`${file}: skipped, not JSON (${(err as Error).message})`);
          continue;
        }
        const e = cacheEntry.safeParse(raw);
        if (!e.success) {
          warnings.push(`${file}: skipped, not a cniCacheV1 entry (${zodMessage(e.error)})`);
          continue;
        }
        entries.push({ source, file, entry: e.data });
      } catch (err) {
        warnings.push(`${file}: skipped, ${(err as Error).message}`);
      } finally {
        closeSync(fd);
      }
    }
  } catch (err) {
    warnings.push(`${results}: ${(err as Error).message}`);
  } finally {
    closeSync(dfd);
  }
  return { entries, warnings };
}

/** The same directory (device and inode), to read a cache once when both options name it. */
function sameDir(a: string, b: string): boolean {
  const id = (p: string) => {
    try {
      const fd = openSync(join(p, 'results'), constants.O_RDONLY | constants.O_NOFOLLOW | O_DIRECTORY);
      try {
        const st = fstatSync(fd);
        return `${st.dev}:${st.ino}`;
      } finally {
        closeSync(fd);
      }
    } catch {
      return `path:${join(p, 'results')}`;
    }
  };
  return id(a) === id(b);
}

/** The network configurations of a conf dir, as libcni finds them: *.conf, *.conflist, *.json. */
export function readConfDir(dir: string): { confs: ConfInput[]; warnings: string[] } {
  const confs: ConfInput[] = [];
  const warnings: string[] = [];
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') warnings.push(`${dir}: ${(err as Error).message}`);
    return { confs, warnings };
  }
  for (const name of names.sort()) {
    if (!/\.(conf|conflist|json)$/.test(name)) continue;
    const file = join(dir, name);
    try {
      confs.push({ file, bytes: readRegularFile(file, 16 * 1024 * 1024) }); // a FIFO must not hang the view
    } catch (err) {
      warnings.push(`${file}: skipped, ${(err as Error).message}`);
    }
  }
  return { confs, warnings };
}

/** Reads everything and builds the registry; warnings of every step are in the result. */
export function loadRegistry(opts: { confDir: string; cacheDir: string; libcniCacheDir: string }): Registry {
  const conf = readConfDir(opts.confDir);
  const warnings = [...conf.warnings];
  const entries: CacheInput[] = [];
  if (sameDir(opts.cacheDir, opts.libcniCacheDir)) {
    const r = readCacheDir(opts.cacheDir, 'shared', { allowOwnUid: false });
    entries.push(...r.entries);
    warnings.push(...r.warnings);
  } else {
    const m = readCacheDir(opts.cacheDir, 'cni-manager', { allowOwnUid: true });
    const l = readCacheDir(opts.libcniCacheDir, 'libcni', { allowOwnUid: false });
    entries.push(...m.entries, ...l.entries);
    warnings.push(...m.warnings, ...l.warnings);
  }
  const reg = buildRegistry(conf.confs, entries);
  return { ...reg, warnings: [...warnings, ...reg.warnings] };
}
