/**
 * Hostile-input generator for the plugin fuzz test (issue 8, item 5).
 *
 * Every case is a mutation of a valid base config for one plugin, plus
 * (sometimes) a mutated environment and (sometimes) mutated stdin bytes. A
 * case is a pure function of (seed, plugin, index): `generateCase` rebuilds
 * any single case without generating the ones before it, so a failure found
 * at index 4711 is reproduced with FUZZ_SEED alone.
 *
 * Cases are templates: paths that only exist at run time are placeholders
 * (see PH) that the runner substitutes, byte for byte, just before the run.
 * That keeps saved regressions replayable in a fresh sandbox.
 *
 * Safety, since the plugins run as root: every path a plugin writes under
 * (host-local's `dataDir`, aos-firewall's `runtimeStatePath`, tuning's
 * `dataDir`, dnsname's XDG_RUNTIME_DIR) is forced into the sandbox after the
 * mutations, under every spelling a case-insensitive reader would accept;
 * CNI_PATH only ever names the suite's bin/, the sandbox or nonexistent
 * directories (so no `type` can exec a system binary), CNI_NETNS never names a
 * namespace outside the sandbox, and shell payloads only `touch` a canary file
 * inside the sandbox. Byte-level damage (invalid UTF-8, NULs) is only put into
 * strings that are not paths and not keys.
 */

/** Placeholders the runner replaces with the sandbox's real values. */
export const PH = {
  /** the sandbox temp dir (also the plugins' cwd) */
  SB: '@@SB@@',
  /** an empty container namespace of the runner's slot */
  NETNS: '@@NETNS@@',
  /** the namespace of the slot's base attachment (eth0 on the fuzz bridge) */
  BASENS: '@@BASENS@@',
  /** the host end of the base attachment's veth */
  VETH: '@@VETH@@',
  /** the base attachment's IPv4 address */
  IP: '@@IP@@',
  /** the directory of the plugin links (bin/) */
  BIN: '@@BIN@@',
} as const;

/** The file a shell-injection payload would create: it must never exist. */
export const CANARY = `${PH.SB}/PWNED`;

/** Fixed names of the fuzz network (the base attachments live in BASE_NET with their own store). */
export const NET = 'fuzznet';
export const BASE_NET = 'fzbase';
export const BRIDGE = 'fzbr0';
export const SUBNET = '10.99.0.0/24';
export const GATEWAY = '10.99.0.1';
export const SUBNET6 = 'fd99::/64';
export const GATEWAY6 = 'fd99::1';

export const PLUGIN_NAMES = [
  'bridge', 'host-local', 'firewall', 'aos-firewall', 'dnsname', 'bandwidth', 'traffic-accounting', 'portmap', 'tuning', 'loopback',
  'tap', 'tc-redirect-tap', 'vlan',
] as const;

export interface FuzzCase {
  plugin: string;
  seed: number;
  index: number;
  /** CNI_* (and nothing else): a value, or null for "unset". Templates with PH placeholders. */
  env: Record<string, string | null>;
  /** stdin, a template with PH placeholders (may be invalid UTF-8 or not JSON at all) */
  stdin: Buffer;
  /** what was done to the base, for humans */
  mutations: string[];
}

// ---------------------------------------------------------------- PRNG

/** mulberry32: a tiny, good-enough 32-bit PRNG. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** FNV-1a over the parts: one independent stream per (seed, plugin, index). */
export function hashSeed(...parts: (string | number)[]): number {
  let h = 0x811c9dc5;
  for (const ch of parts.join('\u0001')) {
    h ^= ch.charCodeAt(0);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

export class Rng {
  private readonly next: () => number;
  constructor(seed: number) {
    this.next = mulberry32(seed);
  }
  float(): number {
    return this.next();
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }
  /** Picks by weight: [[weight, value], ...]. */
  weighted<T>(items: readonly (readonly [number, T])[]): T {
    const total = items.reduce((s, [w]) => s + w, 0);
    let x = this.next() * total;
    for (const [w, v] of items) {
      x -= w;
      if (x < 0) return v;
    }
    return items[items.length - 1][1];
  }
}

// ---------------------------------------------------------------- hostile values

const MiB = 1024 * 1024;
const SHELL = [
  `$(touch ${CANARY})`,
  `\`touch ${CANARY}\``,
  `;touch ${CANARY};`,
  `| touch ${CANARY}`,
  `&& touch ${CANARY}`,
  `\ntouch ${CANARY}\n`,
  `'; touch ${CANARY}; '`,
  `"; touch ${CANARY}; "`,
  '${IFS}',
  '-j ACCEPT',
  '--help',
  '-A INPUT -j ACCEPT',
  '\n-A INPUT -j ACCEPT\n',
  'x\nCOMMIT\n*filter\n-A INPUT -j ACCEPT\nCOMMIT\n',
  'server=/evil/1.2.3.4\naddn-hosts=/etc/passwd',
  '%s%s%s%n',
];
const NAMES = [
  'a\nb', 'a\u0000b', '\u0000', '..', '.', '...', '/', '../../../../etc/passwd', 'a/b', '/tmp', ' ', '\t', 'a b', '-rf', '*', '?', '[',
  '%00', '\u202e', '\ud800', '\udfff', '\uffff', '\ufeff', 'ä', '😀', 'x'.repeat(16), 'x'.repeat(256), 'x'.repeat(4097), 'lo', 'eth0',
  'eth%d', '\r\n', '"', '\\', "'", '<>', '-', '_', '0', 'NUL', '__proto__', 'constructor', 'toString', 'hasOwnProperty',
];
const ADDRESSES = [
  '10.0.0.0/33', '10.0.0.0/-1', '10.0.0.0/', '/24', '300.1.1.1', '300.1.1.1/24', '::::', ':::/64', '1.2.3', '1.2.3.4.5', '10.0.0.1/24/24',
  '0.0.0.0/0', '::/0', '0.0.0.0', '255.255.255.255', '255.255.255.255/32', '::', 'fe80::1%eth0', '::ffff:10.99.0.5', '10.99.0.5 ', ' 10.99.0.5',
  '010.099.000.005', '0x0a.0.0.1', '10.99.0.500', '1::2::3', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', '10.99.0.0/24\n', '10.99.0.0/8',
  '127.0.0.1', '127.0.0.0/8', '224.0.0.1', '224.0.0.0/4', '10.99.0.1-10.99.0.2', 'localhost', '10.99.0.0/0x18', '10.99.0.0/024', '1e3',
  '10.99.0.5/32', '10.99.0.0/31', '10.99.0.0/30', 'fd99::1/129', 'fd99::/64', 'fd99::/127', '10.99.0.255', '10.99.0.0', '10.99.1.1',
  '2001:db8::1', '-1.0.0.0', '1.2.3.4/24 ', '10.99.0.1/24', GATEWAY, '10.99.0.150', '10.99.0.150/24',
];
const WRONG_TYPES: unknown[] = [
  null, true, false, 0, -1, 1, 1.5, -0.5, 1e308, -1e308, 2 ** 53 + 1, 2 ** 32, 2 ** 31, 65536, 1e21, '', ' ', '0', '-1', 'NaN',
  'Infinity', '1e999', 'null', 'true', [], {}, [null], [[]], { '': null }, ['a'], [1, 'a', null], { a: { b: { c: [] } } },
];
const NUMBERS: unknown[] = [
  1e308, -1e308, 2 ** 53 + 1, 2 ** 64, -1, -(2 ** 31), 2 ** 31, 2 ** 32, 2 ** 32 - 1, 4294967295 * 8, 5e-324, 0.5, -0, 0, 65535, 65536,
  4095, 4096, 4094, 31, 32, 'NaN', '1e999', '-Infinity', '12', 12.0000001, 100.0001, 3_600_001, 101,
];
/** Raw byte sequences: invalid UTF-8, NUL, raw control characters (invalid inside JSON strings). */
const BAD_BYTES: number[][] = [
  [0xff], [0xfe, 0xff], [0xc3, 0x28], [0xed, 0xa0, 0x80], [0xc0, 0xaf], [0xf4, 0x90, 0x80, 0x80], [0x80], [0xe2, 0x82], [0x00], [0x0a],
  [0x1b], [0xf8, 0x88, 0x80, 0x80, 0x80],
];
const NOT_JSON = [
  '', ' ', '\n', 'null', '[]', '"x"', '123', 'true', '{', '}', '{"a":}', '{}', '{"cniVersion":"1.0.0"}', '\u0000', 'NaN', '{"cniVersion":1.0}',
  '{"cniVersion":"1.0.0","name":"fuzznet"}', "{'cniVersion':'1.0.0'}", '{"cniVersion":"1.0.0",}', '/* c */ {}', '[{"cniVersion":"1.0.0"}]',
  '{"cniVersion":"9.9.9","name":"fuzznet","type":"x"}', '{"cniVersion":"","name":"fuzznet","type":"x"}', '{"cniVersion":null}',
];

function hostileString(r: Rng): string {
  return r.weighted<() => string>([
    [4, () => r.pick(SHELL)],
    [6, () => r.pick(NAMES)],
    [5, () => r.pick(ADDRESSES)],
    [1, () => 'A'.repeat(MiB)],
    [1, () => '€'.repeat(MiB / 4)],
    [1, () => r.pick(NAMES).repeat(1 + r.int(64))],
  ])();
}

// ---------------------------------------------------------------- base configs

export interface BaseCase {
  config: Record<string, unknown>;
  env: Record<string, string | null>;
}

const prevResultTemplate = (version: string, withV6 = false): Record<string, unknown> => ({
  cniVersion: version,
  interfaces: [{ name: BRIDGE }, { name: PH.VETH }, { name: 'eth0', sandbox: PH.BASENS }],
  ips: [
    { ...(version < '1.0.0' ? { version: '4' } : {}), address: `${PH.IP}/24`, gateway: GATEWAY, interface: 2 },
    ...(withV6 ? [{ ...(version < '1.0.0' ? { version: '6' } : {}), address: 'fd99::99/64', gateway: GATEWAY6, interface: 2 }] : []),
  ],
  routes: [{ dst: '0.0.0.0/0', gw: GATEWAY }],
  dns: {},
});

const ipamTemplate = (r: Rng): Record<string, unknown> => {
  const form = r.weighted([[6, 'ranges'], [2, 'legacy'], [2, 'dual']] as const);
  const common = { type: 'host-local', dataDir: `${PH.SB}/ipam`, routes: [{ dst: '0.0.0.0/0' }] };
  if (form === 'legacy') return { ...common, subnet: SUBNET, rangeStart: '10.99.0.100', rangeEnd: '10.99.0.250', gateway: GATEWAY };
  const v4 = [{ subnet: SUBNET, rangeStart: '10.99.0.100', rangeEnd: '10.99.0.250', gateway: GATEWAY }];
  if (form === 'dual') return { ...common, ranges: [v4, [{ subnet: SUBNET6, rangeStart: 'fd99::100', rangeEnd: 'fd99::1ff', gateway: GATEWAY6 }]] };
  return { ...common, ranges: [v4] };
};

/**
 * Every base config, as each plugin's tests and conf.d use it: the chained
 * ones get the slot's base attachment as prevResult. `id` makes names that
 * must be unique per case (container id, aliases, uuids) unique.
 */
export function baseCase(plugin: string, r: Rng, id: string, command: string): BaseCase {
  const picked = command === 'GC' || command === 'STATUS' ? '1.1.0' : r.pick(['0.3.1', '0.4.0', '1.0.0', '1.0.0', '1.1.0', '1.1.0']);
  // firewall declares 0.4.0 and later, as its reference binary does (lib/cni/version.ts); mapped, not re-picked, so every other case stays the same.
  const version = plugin === 'firewall' && picked === '0.3.1' ? '0.4.0' : picked;
  const common = { cniVersion: version, name: NET };
  const env: Record<string, string | null> = {
    CNI_COMMAND: command,
    CNI_CONTAINERID: id,
    CNI_NETNS: PH.NETNS,
    CNI_IFNAME: 'eth0',
    CNI_ARGS: r.chance(0.5) ? `IgnoreUnknown=1;K8S_POD_NAME=${id}` : null,
    CNI_PATH: PH.BIN,
  };
  // The packet-filter backend (lib/pf): from the case's id, not the stream, so every other draw stays as it was.
  const backend = (hashSeed(`${id}/backend`) & 1) === 1 ? 'nftables' : 'iptables';
  const prev = () => prevResultTemplate(r.pick(['0.3.1', '0.4.0', '1.0.0', '1.1.0']), r.chance(0.15));
  let config: Record<string, unknown>;
  switch (plugin) {
    case 'bridge':
      config = {
        ...common, type: 'bridge', bridge: BRIDGE, isGateway: true, isDefaultGateway: r.chance(0.3), ipMasq: r.chance(0.7), ipMasqBackend: backend, hairpinMode: r.chance(0.5),
        promiscMode: false, mtu: r.pick([0, 1500, 1400]), ipam: ipamTemplate(r),
        ...(r.chance(0.2) ? { runtimeConfig: { mac: '02:99:00:00:00:aa' } } : {}),
        ...(r.chance(0.1) ? { args: { cni: { mac: '02:99:00:00:00:bb' } } } : {}),
      };
      break;
    case 'host-local':
      config = {
        ...common, type: 'host-local', ipam: { ...ipamTemplate(r), ...(r.chance(0.3) ? { resolvConf: `${PH.SB}/resolv.conf` } : {}) },
        ...(r.chance(0.2) ? { runtimeConfig: { ips: ['10.99.0.150'] } } : {}),
        ...(r.chance(0.1) ? { args: { cni: { ips: ['10.99.0.160'] } } } : {}),
      };
      break;
    case 'firewall':
      config = {
        ...common, type: 'firewall', backend, ingressPolicy: r.pick(['same-bridge', 'open', 'isolated', '']),
        iptablesAdminChainName: 'CNI-ADMIN', prevResult: prev(),
      };
      break;
    case 'aos-firewall': {
      const uuid = `${hex8(id)}-f022-4f22-8f22-f022f022f022`; // the fuzz's own suffix: never in a real state file
      config = {
        ...common, cniVersion: command === 'GC' || command === 'STATUS' ? '1.1.0' : '0.4.0', type: 'aos-firewall', backend, uuid,
        iptablesAdminChainName: `INSTANCE_${uuid}`, allowPublicConnections: false, runtimeStatePath: `${PH.SB}/aos/aos_chains.conf`,
        inputAccess: [{ port: '8080', protocol: 'tcp' }, { port: '9000:9010', protocol: 'udp' }],
        outputAccess: [{ dstIp: '198.51.100.5', dstPort: '8080', proto: 'tcp', srcIp: '' }],
        prevResult: prev(),
      };
      break;
    }
    case 'dnsname':
      env.CNI_ARGS = `IgnoreUnknown=1;K8S_POD_NAME=${id}`;
      config = {
        ...common, type: 'dnsname', backend, domainName: 'fuzz.lan', multiDomain: r.chance(0.3), remoteServers: r.chance(0.5) ? ['192.0.2.53'] : [],
        capabilities: { aliases: true }, runtimeConfig: { aliases: { [NET]: [`al-${id}`] } }, prevResult: prev(),
      };
      break;
    case 'bandwidth':
      env.CNI_NETNS = PH.BASENS;
      config = {
        ...common, type: 'bandwidth', ingressRate: 1_000_000, ingressBurst: 12_800, egressRate: 2_000_000, egressBurst: 12_800, prevResult: prev(),
        ...(r.chance(0.2) ? { runtimeConfig: { bandwidth: { ingressRate: 8_000_000, ingressBurst: 80_000, egressRate: 8_000_000, egressBurst: 80_000 } } } : {}),
      };
      if (r.chance(0.25)) {
        for (const k of ['ingressRate', 'ingressBurst', 'egressRate', 'egressBurst']) delete config[k];
        config.runtimeConfig = { bandwidth: { ingressRate: 8_000_000, ingressBurst: 80_000, egressRate: 4_000_000, egressBurst: 40_000 } };
      }
      break;
    case 'traffic-accounting':
      config = { ...common, type: 'traffic-accounting', backend, instanceId: `inst-${id}`, skipRanges: ['10.0.0.0/8', '192.168.0.0/16'], prevResult: prev() };
      break;
    case 'portmap':
      config = {
        ...common, type: 'portmap', backend, capabilities: { portMappings: true }, snat: true,
        runtimeConfig: { portMappings: [{ hostPort: 18080, containerPort: 80, protocol: 'tcp' }, { hostPort: 18081, containerPort: 81, protocol: 'udp', hostIP: GATEWAY }] },
        prevResult: prev(),
      };
      break;
    case 'tuning':
      env.CNI_NETNS = PH.BASENS;
      config = {
        ...common, type: 'tuning', sysctl: { 'net.ipv4.conf.IFNAME.arp_filter': '1', 'net.core.somaxconn': '512' }, mtu: 1400, promisc: true,
        allmulti: r.chance(0.5), txQLen: 2000, dataDir: `${PH.SB}/tuning`, prevResult: prev(),
      };
      break;
    case 'loopback':
      config = { ...common, type: 'loopback' };
      break;
    case 'tap':
      config = {
        ...common, type: 'tap', mtu: r.pick([0, 1500, 1400]), multiQueue: r.chance(0.3), owner: r.pick([0, 1000, 65534]), group: r.pick([0, 1000]),
        ...(r.chance(0.7) ? { ipam: ipamTemplate(r) } : {}),
        ...(r.chance(0.2) ? { mac: '02:99:00:00:00:dd' } : {}),
      };
      break;
    case 'tc-redirect-tap':
      env.CNI_NETNS = PH.BASENS;
      config = { ...common, type: 'tc-redirect-tap', prevResult: prev(), ...(r.chance(0.3) ? { tapName: 'fztap0' } : {}) };
      break;
    case 'vlan':
      // This kernel has no 8021q: every ADD fails, which must leave nothing (the allocation released).
      config = { ...common, type: 'vlan', master: BRIDGE, vlanId: r.pick([10, 100, 4094]), mtu: r.pick([0, 1400]), ipam: ipamTemplate(r) };
      break;
    default:
      throw new Error(`no base config for ${plugin}`);
  }
  if (command === 'GC') {
    config['cni.dev/valid-attachments'] = [{ containerID: id, ifname: 'eth0' }];
    if (r.chance(0.3)) config['cni.dev/attachments'] = [{ containerID: id, ifname: 'eth0' }];
  }
  return { config, env };
}

function hex8(s: string): string {
  return hashSeed(s).toString(16).padStart(8, '0');
}

/** Keys that are filesystem paths a plugin writes under: forced into the sandbox after mutation. */
const PATH_KEYS: Record<string, { at: string[]; key: string; value: string }[]> = {
  bridge: [{ at: ['ipam'], key: 'dataDir', value: `${PH.SB}/ipam` }],
  'host-local': [{ at: ['ipam'], key: 'dataDir', value: `${PH.SB}/ipam` }],
  'aos-firewall': [{ at: [], key: 'runtimeStatePath', value: `${PH.SB}/aos/aos_chains.conf` }],
  tap: [{ at: ['ipam'], key: 'dataDir', value: `${PH.SB}/ipam` }],
  vlan: [{ at: ['ipam'], key: 'dataDir', value: `${PH.SB}/ipam` }],
  tuning: [
    { at: [], key: 'dataDir', value: `${PH.SB}/tuning` },
    { at: ['args', 'cni'], key: 'dataDir', value: `${PH.SB}/tuning` },
  ],
};

/** Path-valued mutations that stay inside the sandbox (the runner's cwd is the sandbox too). */
const SANDBOX_PATHS = [
  `${PH.SB}/regular-file`, `${PH.SB}/fifo`, `${PH.SB}/emptydir`, `${PH.SB}/ipam/../other`, `${PH.SB}/new\ndir`, `${PH.SB}/${'d'.repeat(300)}`,
  `${PH.SB}/${'d/'.repeat(2100)}x`, `${PH.SB}/regular-file/sub`, 'relative-dir', './x', '', ' ', `${PH.SB}/$(touch PWNED)`, `${PH.SB}/ä😀`,
  `${PH.SB}/emptydir/`, `${PH.SB}//double//slash`, `${PH.SB}/readonly-dir/x`,
];

const isObj = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

/**
 * Forces every path key into the sandbox, under every spelling a
 * case-insensitive reader (lib/cni/schema.ts obj()) could pick, on every
 * object a case-insensitive reader could take as the parent. A value the
 * mutation chose from SANDBOX_PATHS is kept.
 */
export function forcePaths(plugin: string, config: Record<string, unknown>): void {
  for (const spec of PATH_KEYS[plugin] ?? []) {
    let parents: Record<string, unknown>[] = [config];
    for (const seg of spec.at) {
      const next: Record<string, unknown>[] = [];
      for (const p of parents) for (const [k, v] of Object.entries(p)) if (k.toLowerCase() === seg.toLowerCase() && isObj(v)) next.push(v);
      parents = next;
    }
    for (const p of parents) {
      let exact = false;
      for (const [k, v] of Object.entries(p)) {
        if (k.toLowerCase() !== spec.key.toLowerCase()) continue;
        if (k === spec.key) exact = true;
        if (typeof v === 'string' && !SANDBOX_PATHS.includes(v)) p[k] = spec.value;
      }
      // The exact spelling wins over the others, and must exist: a reader
      // would otherwise fall back to the machine's default directory.
      if (!exact || typeof p[spec.key] !== 'string') p[spec.key] = spec.value;
    }
  }
}

// ---------------------------------------------------------------- mutation

type Path = (string | number)[];

function collectPaths(v: unknown, path: Path, out: Path[], depth = 0): void {
  if (depth > 8) return;
  if (Array.isArray(v)) {
    v.forEach((x, i) => {
      out.push([...path, i]);
      collectPaths(x, [...path, i], out, depth + 1);
    });
  } else if (isObj(v)) {
    for (const k of Object.keys(v)) {
      out.push([...path, k]);
      collectPaths(v[k], [...path, k], out, depth + 1);
    }
  }
}

function parentOf(root: unknown, path: Path): unknown {
  let cur = root;
  for (const seg of path.slice(0, -1)) cur = (cur as Record<string | number, unknown>)?.[seg];
  return cur;
}

function getAt(root: unknown, path: Path): unknown {
  let cur = root;
  for (const seg of path) cur = (cur as Record<string | number, unknown>)?.[seg];
  return cur;
}

function setAt(root: unknown, path: Path, value: unknown): void {
  const parent = parentOf(root, path) as Record<string | number, unknown>;
  if (parent && typeof parent === 'object') parent[path[path.length - 1]] = value;
}

function deleteAt(root: unknown, path: Path): void {
  const parent = parentOf(root, path);
  const last = path[path.length - 1];
  if (Array.isArray(parent) && typeof last === 'number') parent.splice(last, 1);
  else if (isObj(parent)) delete parent[last as string];
}

const show = (p: Path) => (p.length ? p.join('.') : '(root)');
const brief = (v: unknown): string => {
  if (Array.isArray(v) && v.length > 100) return `[${brief(v[0])} ×${v.length}]`;
  const s = typeof v === 'string' && v.length > 200 ? JSON.stringify(v.slice(0, 200)) + `…(${v.length} chars)` : JSON.stringify(v) ?? String(v);
  return s.length > 60 ? `${s.slice(0, 40)}…(${s.length} chars)` : s;
};

/** Sentinels replaced after serialisation (JSON.stringify cannot make these). */
const DEEP = '@@DEEP@@';
const RAW = '@@RAW@@';
const BIG = '@@BIG@@';

/** Keys a case may add: unknown ones (ignored by the spec), prototype tricks, known optional ones per plugin. */
const EXTRA_KEYS: Record<string, [string, unknown][]> = {
  '*': [
    ['__proto__', { polluted: true, type: 'host-local' }], ['constructor', { prototype: { polluted: true } }], ['unknownKey', 'x'],
    ['prevResult', { cniVersion: '1.0.0', ips: [{ address: '10.0.0.0/33' }] }], ['prevResult', 'garbage'], ['prevResult', { cniVersion: '0.1.0' }],
    ['runtimeConfig', { garbage: [1, 2, 3] }], ['args', { cni: 5 }], ['cni.dev/valid-attachments', [{ containerID: 5 }]],
    ['cni.dev/valid-attachments', [{ containerID: 'x\ny', ifname: '../..' }]], ['capabilities', 'x'],
  ],
  bridge: [
    ['vlan', 100], ['vlanTrunk', [{ minID: 1, maxID: 4094 }]], ['vlanTrunk', [{ minID: 10, maxID: 5 }]], ['macspoofchk', true], ['enabledad', true],
    ['forceAddress', true], ['disableContainerInterface', true], ['preserveDefaultVlan', false], ['promiscMode', true], ['bridge', 'fzbr1'],
  ],
  'host-local': [
    ['ipam', { type: 'host-local', subnet: '10.99.0.0/30', dataDir: `${PH.SB}/ipam` }],
    ...['/dev/zero', `${PH.SB}/fifo`, `${PH.SB}/emptydir`, '/dev/stdin', `${PH.SB}/symlink-loop`, '/proc/self/environ', ''].map(
      (resolvConf): [string, unknown] => ['ipam', { type: 'host-local', subnet: SUBNET, rangeStart: '10.99.0.100', dataDir: `${PH.SB}/ipam`, resolvConf }],
    ),
  ],
  firewall: [['backend', 'firewalld'], ['firewalldZone', 'trusted'], ['iptablesAdminChainName', 'CNI-FUZZ-ADMIN']],
  'aos-firewall': [['allowPublicConnections', true], ['inputAccess', [{ port: '1:65535' }]], ['inputAccess', [{ port: '1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16' }]]],
  bandwidth: [['ingressDelay', 40], ['egressLoss', 1], ['ingressJitter', 5], ['egressReorder', 2]],
  'traffic-accounting': [['skipRanges', []], ['instanceId', '']],
  portmap: [
    ['masqAll', true], ['markMasqBit', 31], ['externalSetMarkChain', 'KUBE-MARK-MASQ'], ['conditionsV4', ['-s', '10.0.0.0/8']],
    ['conditionsV4', ['-j', 'ACCEPT']], ['conditionsV6', ['-m', 'comment', '--comment', 'x y']], ['backend', 'nftables'], ['snat', false],
  ],
  tuning: [['mac', '02:99:00:00:00:cc'], ['sysctl', { 'net/ipv4/conf/IFNAME/../../../../kernel/fuzz_nonexistent': '1' }], ['sysctl', { 'net.ipv4.conf.IFNAME.forwarding': '1' }]],
  dnsname: [['multiDomain', true], ['domainName', 'a.b.c'], ['remoteServers', ['::1', '192.0.2.54']]],
  loopback: [],
  tap: [['bridge', 'fzbr9'], ['bridge', BRIDGE], ['multiQueue', 'yes'], ['owner', -1], ['owner', 4294967296], ['mac', '01:00:5e:00:00:01'], ['selinuxcontext', 'x']],
  'tc-redirect-tap': [['tapName', 'eth0'], ['tapName', 'a'.repeat(16)], ['tapOwner', 1000], ['tapGroup', -1], ['multiQueue', true]],
  vlan: [['master', 'nonexistent0'], ['vlanId', 4095], ['vlanId', -1], ['linkInContainer', true], ['mtu', 65536]],
};

type MutationKind = 'wrongType' | 'hostileString' | 'number' | 'delete' | 'deep' | 'hugeString' | 'bigArray' | 'caseKey' | 'extraKey' | 'address' | 'sandboxPath' | 'rawBytes';

function mutateConfig(plugin: string, config: Record<string, unknown>, r: Rng, log: string[]): void {
  const paths: Path[] = [];
  collectPaths(config, [], paths);
  const kind = r.weighted<MutationKind>([
    [22, 'wrongType'], [20, 'hostileString'], [10, 'number'], [10, 'delete'], [2, 'deep'], [3, 'hugeString'], [2, 'bigArray'],
    [4, 'caseKey'], [8, 'extraKey'], [14, 'address'], [2, 'sandboxPath'], [4, 'rawBytes'],
  ]);
  if (paths.length === 0 || kind === 'extraKey') {
    const [k, v] = r.pick([...EXTRA_KEYS['*'], ...(EXTRA_KEYS[plugin] ?? []), ...(EXTRA_KEYS[plugin] ?? [])]);
    // __proto__ must become an own key, as JSON.parse makes it.
    Object.defineProperty(config, k, { value: structuredClone(v), enumerable: true, writable: true, configurable: true });
    log.push(`add ${k}=${brief(v)}`);
    return;
  }
  // Leaves are where validation lives: prefer them.
  const leaves = paths.filter((p) => {
    const v = getAt(config, p);
    return v === null || typeof v !== 'object';
  });
  const path = leaves.length && r.chance(0.75) ? r.pick(leaves) : r.pick(paths);
  const current = getAt(config, path);
  const set = (v: unknown, what: string) => {
    setAt(config, path, v);
    log.push(`${what} ${show(path)}=${brief(v)}`);
  };
  switch (kind) {
    case 'wrongType':
      return set(structuredClone(r.pick(WRONG_TYPES)), 'type');
    case 'hostileString':
      return set(typeof current === 'string' && r.chance(0.3) ? current + r.pick(NAMES) : hostileString(r), 'string');
    case 'number':
      return set(r.pick(NUMBERS), 'number');
    case 'delete':
      deleteAt(config, path);
      log.push(`delete ${show(path)}`);
      return;
    case 'deep':
      return set(`${DEEP}${r.pick([1000, 10000, 100000])}:${r.pick(['[', '{'])}`, 'deep');
    case 'hugeString':
      return set(r.pick(['A'.repeat(MiB), `${current}`.repeat(Math.ceil(MiB / Math.max(1, `${current}`.length))), '\n'.repeat(MiB), '\\'.repeat(MiB / 2)]), 'huge');
    case 'bigArray': {
      const el = Array.isArray(current) && current.length ? current[0] : current;
      // At most a few MiB of JSON: big enough to hurt, small enough to generate.
      const size = Math.max(8, (JSON.stringify(el) ?? 'null').length);
      const n = Math.min(r.pick([1000, 10000, 100000]), Math.floor((4 * MiB) / size));
      // Expanded at serialisation, so later mutations never walk (or share) 100000 elements.
      return set(`${BIG}${n}:${JSON.stringify(el) ?? 'null'}`, `array×${n}`);
    }
    case 'caseKey': {
      const last = path[path.length - 1];
      const parent = parentOf(config, path);
      if (typeof last !== 'string' || last === '' || !isObj(parent)) return set(null, 'type');
      const variant = r.pick([last.toUpperCase(), last.toLowerCase(), last[0].toUpperCase() + last.slice(1)]);
      const keepOld = r.chance(0.5);
      Object.defineProperty(parent, variant, { value: keepOld ? r.pick(WRONG_TYPES) : current, enumerable: true, writable: true, configurable: true });
      if (!keepOld && variant !== last) delete parent[last];
      log.push(`case ${show(path)}→${variant}${keepOld ? ' (both)' : ''}`);
      return;
    }
    case 'address':
      return set(r.pick(ADDRESSES), 'addr');
    case 'sandboxPath':
      return set(r.pick(SANDBOX_PATHS), 'path');
    case 'rawBytes':
      // Only into a string that is neither a key nor a path (see the header).
      if (typeof current === 'string' && !/dataDir|runtimeStatePath/i.test(String(path[path.length - 1]))) return set(`${current}${RAW}`, 'bytes');
      return set(structuredClone(r.pick(WRONG_TYPES)), 'type');
  }
}

/** Serialises, then expands the sentinels. */
function serialise(config: Record<string, unknown>, r: Rng, log: string[]): Buffer {
  let text = JSON.stringify(config);
  const deep = new RegExp(`"${DEEP}(\\d+):([\\[{])"`, 'g');
  text = text.replace(deep, (_, n: string, open: string) => {
    const depth = Number(n);
    return open === '[' ? `${'['.repeat(depth)}${']'.repeat(depth)}` : `${'{"a":'.repeat(depth)}null${'}'.repeat(depth)}`;
  });
  const big = new RegExp(`"${BIG}(\\d+):((?:[^"\\\\]|\\\\.)*)"`, 'g');
  text = text.replace(big, (_, n: string, escaped: string) => {
    const el = JSON.parse(`"${escaped}"`) as string;
    const count = Math.min(Number(n), Math.floor((8 * MiB) / Math.max(1, el.length)));
    return `[${Array.from({ length: count }, () => el).join(',')}]`;
  });
  if (!text.includes(RAW)) return Buffer.from(text);
  const bytes = Buffer.from(r.pick(BAD_BYTES));
  log.push(`raw bytes ${bytes.toString('hex')}`);
  const parts = text.split(RAW);
  const out: Buffer[] = [];
  parts.forEach((p, i) => {
    if (i) out.push(bytes);
    out.push(Buffer.from(p));
  });
  return Buffer.concat(out);
}

/** Damage to the serialised bytes as a whole. */
function mutateStdin(stdin: Buffer, r: Rng, log: string[]): Buffer {
  const kind = r.weighted([
    [6, 'notJson'], [5, 'truncate'], [2, 'bom'], [2, 'utf16'], [3, 'trailing'], [2, 'twice'], [2, 'deepTop'], [1, 'tooBig'], [3, 'dupKey'],
    [2, 'nul'], [2, 'bigNumber'],
  ] as const);
  log.push(`stdin ${kind}`);
  switch (kind) {
    case 'notJson':
      return Buffer.from(r.pick(NOT_JSON));
    case 'truncate':
      // Never valid: the closing brace of the top object is gone.
      return stdin.subarray(0, r.int(Math.max(1, stdin.length - 1)));
    case 'bom':
      return Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), stdin]);
    case 'utf16':
      return Buffer.from(stdin.toString('utf8'), 'utf16le');
    case 'trailing':
      return Buffer.concat([stdin, Buffer.from(r.pick(['xyz', '\u0000', ']', '}', ' {"a":1}', '\n\n\n', '/*']))]);
    case 'twice':
      return Buffer.concat([stdin, stdin]);
    case 'deepTop': {
      const n = r.pick([10000, 100000, 1000000]);
      return Buffer.from(`${'['.repeat(n)}${']'.repeat(n)}`);
    }
    case 'tooBig':
      return Buffer.concat([stdin.subarray(0, stdin.length - 1), Buffer.from(`,"pad":"${'x'.repeat(17 * MiB)}"}`)]);
    case 'dupKey': {
      // A later duplicate wins in JSON.parse: only for keys that are not paths.
      const key = r.pick(['cniVersion', 'name', 'type', 'prevResult', 'runtimeConfig', 'args']);
      const v = r.chance(0.5) ? JSON.stringify(r.pick(WRONG_TYPES)) : JSON.stringify(hostileString(r));
      return Buffer.concat([stdin.subarray(0, stdin.length - 1), Buffer.from(`,${JSON.stringify(key)}:${v}}`)]);
    }
    case 'nul':
      return Buffer.concat([stdin.subarray(0, 1), Buffer.from([0]), stdin.subarray(1)]);
    case 'bigNumber':
      return Buffer.concat([stdin.subarray(0, stdin.length - 1), Buffer.from(`,"mtu":1e999,"x":-0,"y":1e-400,"z":123456789012345678901234567890}`)]);
  }
}

// ---------------------------------------------------------------- environment

const ENV_VALUES: Record<string, (string | null)[]> = {
  CNI_COMMAND: [null, '', 'add', 'ADD ', 'ADD\n', 'ADDD', 'VERSION', 'DEL', 'CHECK', 'GC', 'STATUS', 'version', `$(touch ${CANARY})`, 'A'.repeat(100000), 'ÄDD'],
  CNI_CONTAINERID: [null, '', 'a/b', 'a\nb', '../x', '..', '.', '-x', '_x', 'x y', `$(touch ${CANARY})`, 'ä', 'a;b', 'a:b', '\t', 'x'.repeat(100000), 'a..b', 'A'],
  CNI_NETNS: [
    null, '', '/nonexistent', '/nonexistent/x', `${PH.SB}/regular-file`, PH.SB, '/proc/self/ns/net', '/proc/self/ns/mnt', '/proc/self/ns/uts',
    '/proc/self/ns/ipc', '/proc/self/ns/user', '/proc/self/ns/pid', '/proc/self/ns/cgroup', '/dev/null', '/dev/zero', `${PH.SB}/fifo`,
    'relative-netns', `/${'x'.repeat(5000)}`, `${PH.NETNS}\n`, `${PH.NETNS}/..`, '/proc/self/fd/0', `${PH.SB}/emptydir`, `${PH.SB}/symlink-loop`,
  ],
  CNI_IFNAME: [
    null, '', 'x'.repeat(16), 'x'.repeat(1000), 'eth/0', 'eth:0', 'eth 0', '.', '..', '...', 'eth0\n', 'lo', 'ä'.repeat(8), 'ä'.repeat(7),
    `$(touch ${CANARY})`, 'e;th', '`x`', 'eth0.100', 'all', 'default', '-eth0', '*', 'eth%d', 'x'.repeat(15), '\u00a0', 'eth\u2028',
  ],
  CNI_ARGS: [
    null, '', 'a=b=c;;=', ';;;', '=', '==', '=x', 'x', 'IgnoreUnknown=1;IP=300.1.1.1', 'IgnoreUnknown=1;IP=10.99.0.200',
    'IgnoreUnknown=1;IP=10.99.0.200,10.99.0.201', 'IgnoreUnknown=1;IP=,', 'IgnoreUnknown=1;IP=10.99.0.1', 'IgnoreUnknown=1;IP=10.98.0.5',
    `IgnoreUnknown=1;K8S_POD_NAME=$(touch ${CANARY})`, 'IgnoreUnknown=1;K8S_POD_NAME=a\nb', 'IgnoreUnknown=1;K8S_POD_NAME=',
    'IgnoreUnknown=1;MAC=zz:zz', 'IgnoreUnknown=1;MAC=ff:ff:ff:ff:ff:ff', 'IgnoreUnknown=1;MAC=00:00:00:00:00:00', 'IgnoreUnknown=0;FOO=1',
    `IgnoreUnknown=true;${'K=V;'.repeat(20000)}`, `IgnoreUnknown=1;K8S_POD_NAME=${'x'.repeat(300)}`, 'IgnoreUnknown=1;K8S_POD_NAME=..',
    'IgnoreUnknown=1;IgnoreUnknown=0;X=1', 'IgnoreUnknown=1;K8S_POD_NAME=web', 'IgnoreUnknown=1;IP=fd99::5', 'IgnoreUnknown=1;IP=10.99.0.0/24',
  ],
  CNI_PATH: [
    null, '', ':', '::::', '/nonexistent', `${PH.SB}/emptydir`, `${PH.BIN}:/nonexistent`, `/nonexistent:${PH.BIN}`, 'relative', `${PH.SB}/regular-file`,
    `${'/nonexistent'.repeat(1000)}`, `${PH.BIN}/`, `${PH.BIN}\n`,
  ],
};

function mutateEnv(env: Record<string, string | null>, r: Rng, log: string[]): void {
  const n = 1 + (r.chance(0.3) ? 1 : 0);
  for (let i = 0; i < n; i++) {
    const key = r.pick(Object.keys(ENV_VALUES));
    const v = r.pick(ENV_VALUES[key]);
    env[key] = v;
    log.push(`env ${key}=${v === null ? '(unset)' : brief(v)}`);
  }
}

// ---------------------------------------------------------------- cases

const COMMANDS = [[65, 'ADD'], [12, 'DEL'], [8, 'CHECK'], [6, 'GC'], [5, 'STATUS'], [4, 'VERSION']] as const;

export function caseId(plugin: string, index: number): string {
  const tag = plugin.split('-').map((w) => w[0]).join('');
  return `fz${tag}${index}`;
}

/** One case, rebuilt from (seed, plugin, index) alone. */
export function generateCase(plugin: string, index: number, seed: number): FuzzCase {
  const r = new Rng(hashSeed(seed, plugin, index));
  const command = r.weighted(COMMANDS);
  const id = caseId(plugin, index);
  const { config, env } = baseCase(plugin, r, id, command);
  const mutations: string[] = [`${command}`];
  // A few cases stay valid, so the success path (and its DEL) runs too.
  const configMutations = r.weighted([[6, 0], [55, 1], [25, 2], [10, 3], [4, 5]] as const);
  for (let i = 0; i < configMutations; i++) mutateConfig(plugin, config, r, mutations);
  forcePaths(plugin, config);
  if (r.chance(0.3)) mutateEnv(env, r, mutations);
  let stdin = serialise(config, r, mutations);
  if (r.chance(0.12)) stdin = mutateStdin(stdin, r, mutations);
  return { plugin, seed, index, env, stdin, mutations };
}

/** Byte-level replaceAll on a Buffer (stdin may be invalid UTF-8). */
export function replaceBytes(buf: Buffer, from: string, to: string): Buffer {
  const needle = Buffer.from(from);
  let at = buf.indexOf(needle);
  if (at < 0) return buf;
  const out: Buffer[] = [];
  let start = 0;
  const rep = Buffer.from(to);
  while (at >= 0) {
    out.push(buf.subarray(start, at), rep);
    start = at + needle.length;
    at = buf.indexOf(needle, start);
  }
  out.push(buf.subarray(start));
  return Buffer.concat(out);
}

/** Substitutes the placeholders: the env and stdin the plugin really gets. */
export function materialise(c: { env: Record<string, string | null>; stdin: Buffer }, vars: Record<string, string>): { env: Record<string, string | null>; stdin: Buffer } {
  const env: Record<string, string | null> = {};
  for (const [k, v] of Object.entries(c.env)) {
    env[k] = v === null ? null : Object.entries(vars).reduce((s, [ph, real]) => s.split(ph).join(real), v);
  }
  let stdin = c.stdin;
  for (const [ph, real] of Object.entries(vars)) stdin = replaceBytes(stdin, ph, real);
  return { env, stdin };
}

// ---------------------------------------------------------------- cni-manager argv

/** Network lists the manager cases name, written by the runner under <sandbox>/mgr-lists. */
export const MANAGER_LISTS: Record<string, string | Buffer> = {
  'valid.conflist': JSON.stringify({ cniVersion: '1.1.0', name: 'fzmgr', plugins: [{ type: 'loopback' }] }),
  'failing.conflist': JSON.stringify({ cniVersion: '1.1.0', name: 'fzmgr', plugins: [{ type: 'loopback' }, { type: 'host-local' }] }),
  'missing-plugin.conflist': JSON.stringify({ cniVersion: '1.0.0', name: 'fzmgr', plugins: [{ type: 'nonexistent' }] }),
  'traversal.conflist': JSON.stringify({ cniVersion: '1.0.0', name: 'fzmgr', plugins: [{ type: '../../bin/sh' }] }),
  'no-plugins.conflist': JSON.stringify({ cniVersion: '1.0.0', name: 'fzmgr', plugins: [] }),
  'bad-name.conflist': JSON.stringify({ cniVersion: '1.0.0', name: '../x', plugins: [{ type: 'loopback' }] }),
  'plugins-garbage.conflist': JSON.stringify({ cniVersion: '1.0.0', name: 'fzmgr', plugins: [5, null, 'x'] }),
  'version-garbage.conflist': JSON.stringify({ cniVersion: 1, name: 'fzmgr', plugins: [{ type: 'loopback' }] }),
  'caps-garbage.conflist': JSON.stringify({ cniVersion: '1.0.0', name: 'fzmgr', plugins: [{ type: 'loopback', capabilities: 'all' }] }),
  'empty.conflist': '',
  'not-json.conflist': 'hello\n',
  'array.conflist': '[]',
  'null.conflist': 'null',
  'truncated.conflist': '{"cniVersion":"1.0.0","name":"fzmgr","plugins":[{"type":"loop',
  'binary.conflist': Buffer.from([0xff, 0xfe, 0x00, 0x01, 0x7b, 0xc3, 0x28, 0x0a]),
  'deep.conflist': `${'['.repeat(100000)}${']'.repeat(100000)}`,
  'huge.conflist': JSON.stringify({ cniVersion: '1.0.0', name: 'x'.repeat(MiB), plugins: [{ type: 'loopback' }] }),
};
const GARBAGE_LISTS = Object.keys(MANAGER_LISTS).filter((n) => !n.startsWith('valid') && !n.startsWith('failing'));
const LIST_PATHS = ['/nonexistent.conflist', `${PH.SB}/emptydir`, `${PH.SB}/fifo`, `${PH.SB}/symlink-loop`, '', '-', `${PH.SB}/regular-file`];

export interface ManagerCase {
  seed: number;
  index: number;
  /** argv after `cni-manager`, a template with PH placeholders */
  argv: string[];
  mutations: string[];
}

const MANAGER_OPTIONS: [string, string[]][] = [
  ['--netns', ['/nonexistent', `${PH.SB}/regular-file`, `${PH.SB}/fifo`, '', '/proc/self/ns/mnt']],
  ['--ifname', ['', 'x'.repeat(300), 'a/b', '..', 'eth0\n', '$(touch ' + CANARY + ')']],
  ['--args', ['a=b=c;;=', '=', '', ';;;', 'x', 'IgnoreUnknown=0;FOO=1', 'K8S_POD_NAME=a\nb']],
  // (one argv string may hold at most 128 KiB)
  ['--cap', ['{', 'null', '[]', '"x"', '5', '{"aliases":5}', `${'['.repeat(50000)}${']'.repeat(50000)}`, '{"portMappings":[{"hostPort":"x"}]}', '']],
  ['--limits', ['{', 'null', '[1]', '"x"', '{"a":{"download":"lots"}}', '']],
  ['--timeout', ['abc', '-1', '0', '1e308', 'NaN', '', '1']],
  ['--period', ['bogus', '', 'day\n']],
  ['--interval', ['abc', '-1', '0', '']],
  ['--metrics-port', ['99999', 'abc', '-1', '']],
  ['--db', [`${PH.SB}/mgr/x.db`, `${PH.SB}/emptydir`, `${PH.SB}/fifo`, `${PH.SB}/regular-file`, `${PH.SB}/nonexistent-dir/x.db`]],
  ['--bogus', ['x']],
  ['-x', ['y']],
  ['--', ['add']],
];
const MANAGER_COMMANDS = ['add', 'del', 'check', 'status', 'gc', 'traffic', 'serve', '', 'ADD', 'help', 'x'.repeat(1000), `$(touch ${CANARY})`, 'add\n', '-', '--help'];
const MANAGER_IDS = ['a/b', '../x', '..', `$(touch ${CANARY})`, '-x', '', 'x'.repeat(300), 'a\nb', '--help', 'ä'];

/** Forced first: the manager may only touch the sandbox (its cache, our plugins, a slot's namespace). */
export const MANAGER_FORCED = ['--cache-dir', `${PH.SB}/mgr`, '--cni-path', PH.BIN, '--netns', PH.NETNS, '--timeout', '8000'];

export function generateManagerCase(index: number, seed: number): ManagerCase {
  const r = new Rng(hashSeed(seed, 'cni-manager', index));
  const mutations: string[] = [];
  let command = r.pick(['add', 'add', 'del', 'check', 'status', 'gc', 'traffic']);
  let list = `${PH.SB}/mgr-lists/${r.pick(['valid.conflist', 'valid.conflist', 'failing.conflist', ...GARBAGE_LISTS])}`;
  let ids = [`fzm${index}`];
  const opts: string[] = [];
  const n = 1 + r.int(3);
  for (let i = 0; i < n; i++) {
    const kind = r.weighted([[3, 'command'], [4, 'list'], [2, 'ids'], [6, 'option'], [1, 'missingValue'], [1, 'noArgs']] as const);
    if (kind === 'command') command = r.pick(MANAGER_COMMANDS);
    else if (kind === 'list') list = r.chance(0.7) ? `${PH.SB}/mgr-lists/${r.pick(GARBAGE_LISTS)}` : r.pick(LIST_PATHS);
    else if (kind === 'ids') ids = r.chance(0.2) ? [] : [r.pick(MANAGER_IDS), ...(r.chance(0.2) ? ['second'] : [])];
    else if (kind === 'option') {
      const [name, values] = r.pick(MANAGER_OPTIONS);
      opts.push(name, r.pick(values));
    } else if (kind === 'missingValue') opts.push(r.pick(MANAGER_OPTIONS)[0]);
    mutations.push(kind);
    if (kind === 'noArgs') return { seed, index, argv: r.chance(0.5) ? [] : [command], mutations };
  }
  // serve runs until killed when the list is good: only ever with a list that cannot be read.
  if (command === 'serve' && (list.endsWith('/valid.conflist') || list.endsWith('/failing.conflist'))) list = `${PH.SB}/mgr-lists/${r.pick(GARBAGE_LISTS)}`;
  const argv = [command, list, ...ids, ...MANAGER_FORCED, ...opts];
  // A missing value must stay last to be missing.
  mutations.unshift(argv.slice(0, 3).map((a) => brief(a)).join(' '));
  return { seed, index, argv, mutations };
}
