import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  chmodSync, copyFileSync, existsSync, linkSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync,
  realpathSync, renameSync, rmSync, rmdirSync, statSync, symlinkSync, writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { machineEngineFiles, modeEnv, removeMachineEngineFiles, stopEngines } from './mode.js';
import { ROOT, TEST_BIN } from './sandbox.js';
import { basename, dirname, join } from 'node:path';

/**
 * Real podman (Debian's 4.3, CNI backend, runc) against a plugin directory, on
 * the machine's own network namespace — podman has no other — but with every
 * file podman itself writes kept in one temp dir:
 *
 *   CONTAINERS_CONF         the only containers.conf read (the machine's
 *                           /etc/containers and /usr/share/containers ones are
 *                           then ignored): network_config_dir, tmp_dir,
 *                           volume_path, image_copy_tmp_dir, lock_type "file"
 *                           (else /dev/shm/libpod_lock), and runc through a
 *                           wrapper adding --root <dir>/runc (else /run/runc;
 *                           podman's --runtime-flag is not passed on to the
 *                           `podman container cleanup` conmon runs on exit).
 *                           Also pinned: runtime "runc" (Debian's podman
 *                           defaults to crun, not installed), cgroup_manager
 *                           "cgroupfs" and events_logger "file" (what podman
 *                           picks itself without systemd; pinned so a machine
 *                           with systemd/journald behaves the same), and
 *                           default_ulimits (see hardLimits()).
 *   CONTAINERS_STORAGE_CONF graphroot, runroot (driver vfs: mounts nothing;
 *                           --rootfs containers use no image layers anyway).
 *
 * What stays outside, because neither podman 4.3 nor the plugins' configs as
 * podman writes them let it move (cleanup removes exactly this test's entries):
 *   /var/lib/cni/results/<net>-<id>-<if>   libcni's cache (libnetwork calls
 *                                          libcni.NewCNIConfig: default dir)
 *   /var/lib/cni/networks/<net>            host-local's default dataDir
 *   /run/containers/cni/dnsname/<net>      dnsname's files (podman, and the
 *                                          cleanup conmon starts, hand plugins
 *                                          an empty XDG_RUNTIME_DIR as root)
 *   /run/netns/netns-<uuid>                podman's netns (root: fixed dir)
 *   /sys/fs/cgroup/<c>/libpod_parent/…     cgroupfs manager's cgroups
 *   the bridge, iptables chains, net.ipv4.ip_forward
 */

export const REFERENCE = '/usr/lib/cni';
/** Every plugin podman 4.3 names in the list it writes (bridge+host-local, portmap, firewall, tuning, dnsname), and loopback. */
export const PODMAN_PLUGINS = ['bridge', 'host-local', 'portmap', 'firewall', 'tuning', 'dnsname', 'loopback'];
export const APPLETS = ['sh', 'ping', 'wget', 'nc', 'httpd', 'nslookup', 'hostname', 'ip', 'cat', 'sleep', 'true', 'timeout', 'ls', 'grep'];

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

export function run(argv: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number; input?: string } = {}): Run {
  const r = spawnSync(argv[0], argv.slice(1), {
    encoding: 'utf8', env: opts.env ?? process.env, timeout: opts.timeoutMs ?? 60_000, input: opts.input, killSignal: 'SIGKILL',
  });
  const timedOut = r.error && (r.error as NodeJS.ErrnoException).code === 'ETIMEDOUT' ? ` (timed out after ${opts.timeoutMs ?? 60_000} ms)` : '';
  return { code: r.status ?? 1, stdout: r.stdout ?? '', stderr: (r.stderr ?? '') + timedOut };
}

/**
 * Fills `target` with one entry per plugin name: from `source` when it has
 * that plugin, else from the reference (listed in `borrowed`). Plugins of
 * `source` other than the reference are copied (one copy per binary they
 * resolve to, the names linked to it) and each copy must answer VERSION, so a
 * rebuild of bin/ during the test cannot hand podman a half-written file
 * ("text file busy"). `copy` also copies reference binaries instead of
 * linking them (needed when `target` is later bind-mounted over
 * /usr/lib/cni, where a link back there would point at itself).
 */
export function pluginDir(target: string, source: string, names: string[], copy = false): { borrowed: string[] } {
  mkdirSync(join(target, '.bin'), { recursive: true });
  const borrowed: string[] = [];
  const copies = new Map<string, string>();
  const snapshot = (real: string, name: string) => {
    let dest = copies.get(real);
    if (!dest) {
      dest = join(target, '.bin', basename(real));
      const deadline = Date.now() + 60_000;
      for (;;) {
        copyFileSync(real, dest);
        chmodSync(dest, 0o755);
        // The engine-mode client (native/client.c) executes the cni-ts beside it: that comes along.
        if (basename(real) === 'cni-ts-client') {
          copyFileSync(join(dirname(real), 'cni-ts'), join(target, '.bin', 'cni-ts'));
          chmodSync(join(target, '.bin', 'cni-ts'), 0o755);
        }
        const probe = join(target, '.bin', name);
        const link = probe !== dest;
        if (link) symlinkSync(basename(real), probe);
        // The copy itself answers (exec path) in both modes: a probe that started an engine would
        // be a warm engine of the test's making, and in engine mode the runtime's first call is to start it.
        const v = spawnSync(probe, [], { env: { PATH: process.env.PATH, CNI_TS_ENGINE: 'off', CNI_COMMAND: 'VERSION' }, input: '{"cniVersion":"1.0.0"}', encoding: 'utf8' });
        if (link) rmSync(probe, { force: true });
        if (v.status === 0 && v.stdout.includes('supportedVersions')) break;
        if (Date.now() > deadline) throw new Error(`${real} (as ${name}) does not answer VERSION: ${v.stderr}${v.error ?? ''}`);
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 500);
      }
      copies.set(real, dest);
    }
    symlinkSync(dest, join(target, name));
  };
  for (const name of names) {
    const own = join(source, name);
    if (existsSync(own) && realpathSync(source) !== realpathSync(REFERENCE)) {
      snapshot(realpathSync(own), name);
      continue;
    }
    if (existsSync(own)) {
      if (copy) copyFileSync(own, join(target, name));
      else symlinkSync(own, join(target, name));
      continue;
    }
    borrowed.push(name);
    if (copy) copyFileSync(join(REFERENCE, name), join(target, name));
    else symlinkSync(join(REFERENCE, name), join(target, name));
  }
  return { borrowed };
}

/** A root filesystem for `--rootfs`: Debian's static busybox as /bin/busybox and one link per applet. */
export function buildRootfs(dir: string, applets = APPLETS): void {
  for (const d of ['bin', 'etc', 'proc', 'sys', 'dev', 'tmp', 'www', 'run']) mkdirSync(join(dir, d), { recursive: true });
  copyFileSync('/bin/busybox', join(dir, 'bin/busybox'));
  chmodSync(join(dir, 'bin/busybox'), 0o755);
  for (const a of applets) symlinkSync('busybox', join(dir, 'bin', a));
  writeFileSync(join(dir, 'etc/passwd'), 'root:x:0:0:root:/:/bin/sh\n');
  writeFileSync(join(dir, 'etc/group'), 'root:x:0:\n');
}

/**
 * Ulimits runc can actually apply here. Without default_ulimits, podman 4.3
 * asks runc for nofile and nproc 1048576 (root's defaults), above the hard
 * limits, and raising a hard limit needs CAP_SYS_RESOURCE, which this
 * machine's bounding set lacks: runc fails with "error setting rlimit type 7
 * (then 6): operation not permitted". nofile: the hard limit (20000 here).
 * nproc: podman lowers its own RLIMIT_NPROC (hard included) to
 * kernel.pid_max (32768 here) when it loads its config, so conmon and runc
 * inherit that, not the shell's 96365.
 */
export function hardLimits(): { nofile: number; nproc: number } {
  const text = readFileSync('/proc/self/limits', 'utf8');
  const hard = (label: string, fallback: number) => {
    const m = text.match(new RegExp(`^${label}\\s+\\S+\\s+(\\S+)`, 'm'));
    return m && m[1] !== 'unlimited' ? Number(m[1]) : fallback;
  };
  let pidMax = 4194304;
  try {
    pidMax = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8').trim()) || pidMax;
  } catch {
    // keep the default
  }
  return { nofile: hard('Max open files', 1048576), nproc: Math.min(hard('Max processes', 4194304), pidMax) };
}

/** sha256 over every path, mode and content (or link target) below the given roots; missing roots count as such. */
export function treeHash(roots: string[]): string {
  const h = createHash('sha256');
  const walk = (p: string) => {
    let st;
    try {
      st = lstatSync(p);
    } catch {
      h.update(`${p}\0missing\0`);
      return;
    }
    h.update(`${p}\0${st.mode}\0`);
    if (st.isSymbolicLink()) h.update(readlinkSync(p));
    else if (st.isDirectory()) for (const e of readdirSync(p).sort()) walk(join(p, e));
    else if (st.isFile()) h.update(readFileSync(p));
  };
  for (const r of roots) walk(r);
  return h.digest('hex');
}

const IPT = [['iptables-save', 'iptables-restore'], ['ip6tables-save', 'ip6tables-restore']] as const;
export type IptablesState = Record<string, string>;

/** iptables-save and ip6tables-save (keyed by the command), without comments and counters. */
export function iptablesState(): IptablesState {
  return Object.fromEntries(IPT.map(([save]) => [save, normalizeSave(run([save]).stdout)]));
}

function normalizeSave(text: string): string {
  return text.split('\n').filter((l) => !l.startsWith('#')).map((l) => l.replace(/ \[\d+:\d+\]$/, ' [0:0]')).join('\n');
}

function tables(text: string): Map<string, { chains: string[]; rules: string[] }> {
  const out = new Map<string, { chains: string[]; rules: string[] }>();
  let cur: { chains: string[]; rules: string[] } | undefined;
  for (const l of text.split('\n')) {
    if (l.startsWith('*')) out.set(l.slice(1), (cur = { chains: [], rules: [] }));
    else if (cur && l.startsWith(':')) cur.chains.push(l.slice(1).split(' ')[0]);
    else if (cur && l.startsWith('-A ')) cur.rules.push(l);
  }
  return out;
}

/**
 * What marks iptables state as this test's own: its network's name, its
 * bridge(s), its containers' ids, and address prefixes of its subnets (e.g.
 * `10.231.42.`), plus the per-container chains the plugins name after the
 * network and the container (bridge's ipMasq `CNI-<24 hex>`, portmap's
 * `CNI-DN-<21 hex>`: sha512(network name + container id), as the reference
 * names them). Everything else in the machine's tables belongs to someone
 * else — other tests, other runtimes, the machine — and may change while the
 * test runs: it is neither compared nor removed.
 */
export interface Owned {
  network: string;
  bridges: string[];
  /** Address prefixes of the test's subnets, up to and including the separator (`10.231.42.`, `fd00:232:2a:`). */
  prefixes: string[];
  containerIds: string[];
}

/** The per-container chains plugins name after (network, container id). */
export function containerChains(network: string, id: string): string[] {
  const h = createHash('sha512').update(network + id).digest('hex');
  return [`CNI-${h.slice(0, 24)}`, `CNI-DN-${h.slice(0, 21)}`];
}

function isOwnedRule(rule: string, o: Owned, chains: Set<string>): boolean {
  const [, chain] = rule.split(' ');
  const target = / -[jg] (\S+)/.exec(rule)?.[1];
  if (chains.has(chain) || (target && chains.has(target))) return true;
  const padded = `${rule} `;
  if (o.bridges.some((b) => padded.includes(` ${b} `))) return true;
  if (padded.includes(`"${o.network}"`) || padded.includes(`\\"${o.network}\\"`)) return true;
  if (o.containerIds.some((id) => rule.includes(id))) return true;
  return o.prefixes.some((p) => new RegExp(`(^|[\\s/,=])${p.replace(/[.]/g, '\\.')}[0-9a-f:]`).test(rule));
}

export interface IptablesAdded {
  /** [save command, table, rule as saved] */
  rules: [string, string, string][];
  /** [save command, table, chain] */
  chains: [string, string, string][];
}

/**
 * This test's iptables state now, beyond `before`: new rules it owns (see
 * Owned), its per-container chains, and the new CNI-* chains nobody else
 * uses (the shared chains its plugins created: CNI-FORWARD, CNI-HOSTPORT-*
 * …, as long as they jump to no chain that stays: their MASQUERADE and
 * MARK rules go with them) with the new rules that jump to them. Exactly what
 * iptablesRestore() removes; empty when the machine holds nothing of the test.
 */
export function iptablesAdded(before: IptablesState, owned: Owned): IptablesAdded {
  const added: IptablesAdded = { rules: [], chains: [] };
  const now = iptablesState();
  const perContainer = new Set(owned.containerIds.flatMap((id) => containerChains(owned.network, id)));
  for (const [save] of IPT) {
    const old = tables(before[save] ?? '');
    for (const [table, t] of tables(now[save])) {
      const o = old.get(table) ?? { chains: [], rules: [] };
      const fresh = t.rules.filter((r) => !o.rules.includes(r));
      const ours = new Set(fresh.filter((r) => isOwnedRule(r, owned, perContainer)));
      const left = t.rules.filter((r) => !ours.has(r));
      // Chains that can go: ours by name, and new CNI-* chains that jump to no chain that stays.
      const removable = new Set(t.chains.filter((c) => perContainer.has(c) || (c.startsWith('CNI-') && !o.chains.includes(c))));
      for (let changed = true; changed; ) {
        changed = false;
        for (const c of removable) {
          // A rule of c that jumps to a chain that stays (a built-in target, MASQUERADE or MARK, is no chain).
          const foreign = left.some((r) => {
            const target = / -[jg] (\S+)/.exec(r)?.[1] ?? '';
            return r.split(' ')[1] === c && t.chains.includes(target) && !removable.has(target);
          })
            || left.some((r) => !fresh.includes(r) && removable.has(/ -[jg] (\S+)/.exec(r)?.[1] ?? '') && / -[jg] (\S+)/.exec(r)?.[1] === c);
          if (foreign) {
            removable.delete(c);
            changed = true;
          }
        }
      }
      for (const r of t.rules) {
        const target = / -[jg] (\S+)/.exec(r)?.[1] ?? '';
        if (ours.has(r) || (fresh.includes(r) && removable.has(target)) || removable.has(r.split(' ')[1])) added.rules.push([save, table, r]);
      }
      for (const c of removable) added.chains.push([save, table, c]);
    }
  }
  return added;
}

/** Removes what iptablesAdded() reports, with one (ip6)iptables-restore --noflush per family. */
export function iptablesRestore(before: IptablesState, owned: Owned): void {
  const { rules, chains } = iptablesAdded(before, owned);
  for (const [save, restore] of IPT) {
    const byTable = new Map<string, string[]>();
    const add = (table: string, line: string) => byTable.set(table, [...(byTable.get(table) ?? []), line]);
    const gone = chains.filter(([s]) => s === save);
    for (const [s, table, r] of rules) {
      if (s !== save) continue;
      const chain = r.split(' ')[1];
      if (gone.some(([, t, c]) => t === table && c === chain)) continue; // flushed below
      add(table, `-D ${r.slice(3)}`);
    }
    for (const [, table, c] of gone) add(table, `-F ${c}`);
    for (const [, table, c] of gone) add(table, `-X ${c}`);
    if (byTable.size === 0) continue;
    const input = [...byTable].map(([t, lines]) => `*${t}\n${lines.join('\n')}\nCOMMIT\n`).join('');
    run([restore, '--noflush', '-w'], { input });
  }
}

export interface PodmanNetwork {
  name: string;
  subnet: string;
  gateway: string;
  bridge: string;
  conflist: any;
}

let counter = 0;

export class Podman {
  readonly tag: string;
  readonly dir: string;
  readonly rootfs: string;
  readonly plugins: string;
  readonly borrowed: string[];
  readonly env: NodeJS.ProcessEnv;
  readonly networks: PodmanNetwork[] = [];
  readonly containers = new Set<string>();
  readonly sandboxes = new Set<string>();
  private readonly cgroupsBefore: Set<string>;
  /** The machine namespace's engine files before this instance (removeMachineEngineFiles). */
  private readonly engineFilesBefore: Set<string>;

  /**
   * `source`: the plugin directory under test; plugins it lacks come from the
   * reference. `pluginEnv`: more variables for the plugins' environment
   * (engine mode: CNI_TS_ENGINE_IDLE), in podman's and in conmon's.
   */
  constructor(tag: string, source: string, pluginEnv: Record<string, string> = {}) {
    this.tag = `cnits-${tag}-${process.pid}-${++counter}`;
    // Short on purpose: conmon's exit command (`podman container cleanup`)
    // gets the runroot as --runroot, and podman refuses one longer than 50
    // characters ("the specified runroot is longer than 50 characters"), so
    // a container that exits by itself would never be cleaned up.
    this.dir = mkdtempSync(join(tmpdir(), 'cnits-pm-'));
    if (join(this.dir, 'runroot').length > 50) {
      rmSync(this.dir, { recursive: true, force: true });
      throw new Error(`${this.dir}/runroot is longer than podman's 50-character limit for --runroot: set TMPDIR to a shorter directory`);
    }
    this.cgroupsBefore = new Set(libpodCgroups());
    this.engineFilesBefore = machineEngineFiles();
    this.rootfs = join(this.dir, 'rootfs');
    this.plugins = join(this.dir, 'plugins');
    try {
      buildRootfs(this.rootfs);
      this.borrowed = pluginDir(this.plugins, source, PODMAN_PLUGINS).borrowed;
    } catch (e) {
      rmSync(this.dir, { recursive: true, force: true });
      throw e;
    }
    for (const d of ['net', 'tmp', 'volumes', 'root', 'runroot', 'runc', 'home']) mkdirSync(join(this.dir, d));
    const wrapper = join(this.dir, 'runc-wrapper');
    writeFileSync(wrapper, `#!/bin/sh\nexec /usr/bin/runc --root ${JSON.stringify(join(this.dir, 'runc'))} "$@"\n`, { mode: 0o755 });
    const { nofile, nproc } = hardLimits();
    const q = JSON.stringify;
    const path = process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin';
    // conmon gets only conmon_env_vars (default: PATH) and runs `podman container cleanup` (the DEL
    // of a container that exits by itself) with that: pluginEnv has to reach those calls too.
    const conmonEnv = Object.keys(pluginEnv).length
      ? [`conmon_env_vars = [${[`PATH=${path}`, ...Object.entries(pluginEnv).map(([k, v]) => `${k}=${v}`)].map((e) => q(e)).join(', ')}]`] : [];
    writeFileSync(join(this.dir, 'containers.conf'), [
      '[containers]',
      `default_ulimits = [${q(`nofile=${nofile}:${nofile}`)}, ${q(`nproc=${nproc}:${nproc}`)}]`,
      '[network]',
      'network_backend = "cni"',
      `cni_plugin_dirs = [${q(this.plugins)}]`,
      `network_config_dir = ${q(join(this.dir, 'net'))}`,
      '[engine]',
      ...conmonEnv,
      'runtime = "runc"',
      'cgroup_manager = "cgroupfs"',
      'events_logger = "file"',
      'lock_type = "file"',
      `tmp_dir = ${q(join(this.dir, 'tmp'))}`,
      `volume_path = ${q(join(this.dir, 'volumes'))}`,
      `image_copy_tmp_dir = ${q(join(this.dir, 'tmp'))}`,
      '[engine.runtimes]',
      `runc = [${q(wrapper)}]`,
      '',
    ].join('\n'));
    writeFileSync(join(this.dir, 'storage.conf'), [
      '[storage]',
      'driver = "vfs"',
      `graphroot = ${q(join(this.dir, 'root'))}`,
      `runroot = ${q(join(this.dir, 'runroot'))}`,
      '',
    ].join('\n'));
    const env: NodeJS.ProcessEnv = {
      PATH: path,
      HOME: join(this.dir, 'home'),
      CONTAINERS_CONF: join(this.dir, 'containers.conf'),
      CONTAINERS_STORAGE_CONF: join(this.dir, 'storage.conf'),
      // The test matrix's mode (test/helpers/mode.ts): podman hands its environment to the plugins (libcni).
      ...modeEnv(),
      ...pluginEnv,
    };
    this.env = env;
  }

  podman(args: string[], timeoutMs = 60_000): Run {
    return run(['podman', ...args], { env: this.env, timeoutMs });
  }

  must(args: string[], timeoutMs = 60_000): string {
    const r = this.podman(args, timeoutMs);
    if (r.code !== 0) throw new Error(`podman ${args.join(' ')} failed (${r.code}): ${r.stderr}${r.stdout}`);
    return r.stdout;
  }

  /**
   * `podman network create --subnet 10.<b>.<c>.0/24 <name>`, trying further
   * third octets when podman reports the subnet in use. podman 4.3 picks the
   * bridge itself (cni-podmanN, the first name no network and no live link has).
   */
  createNetwork(name: string, second: number, third: number): PodmanNetwork {
    let last = '';
    for (let i = 0; i < 20; i++) {
      const subnet = `10.${second}.${(third + i) % 250}.0/24`;
      const r = this.podman(['network', 'create', '--subnet', subnet, name]);
      if (r.code === 0) {
        const info = JSON.parse(this.must(['network', 'inspect', name]))[0];
        const net: PodmanNetwork = {
          name, subnet, gateway: info.subnets[0].gateway, bridge: info.network_interface,
          conflist: JSON.parse(readFileSync(join(this.dir, 'net', `${name}.conflist`), 'utf8')),
        };
        this.networks.push(net);
        return net;
      }
      last = r.stderr;
      if (!/already (used|in use)/.test(r.stderr)) break;
    }
    throw new Error(`podman network create ${name} failed: ${last}`);
  }

  /** Records a container (id or name) for cleanup, with its netns path. */
  track(nameOrId: string): string {
    const r = this.podman(['inspect', '--format', '{{.Id}} {{.NetworkSettings.SandboxKey}}', nameOrId]);
    const [id, sandbox] = r.stdout.trim().split(' ');
    if (id) this.containers.add(id);
    if (sandbox) this.sandboxes.add(sandbox);
    return id;
  }

  /** Removes everything this instance created; safe to call after any failure, and twice. */
  cleanup(): void {
    this.podman(['rm', '--all', '--force', '--time', '0'], 60_000);
    for (const n of this.networks) this.podman(['network', 'rm', '--force', n.name]);
    // Engine mode: the engine podman's plugins started (from the copies in this dir) in the machine's
    // namespace; stopped before killStrays would SIGKILL it (its command line names this dir).
    stopEngines(undefined, { dirs: [this.dir], anyMount: true });
    removeMachineEngineFiles(this.engineFilesBefore);
    this.killStrays();
    for (const n of this.networks) {
      if (existsSync(`/sys/class/net/${n.bridge}`)) run(['ip', 'link', 'del', n.bridge]);
      rmSync(join('/var/lib/cni/networks', n.name), { recursive: true, force: true });
      rmSync(join('/run/containers/cni/dnsname', n.name), { recursive: true, force: true });
      for (const f of safeList('/var/lib/cni/results')) if (f.startsWith(`${n.name}-`)) rmSync(join('/var/lib/cni/results', f), { force: true });
    }
    for (const s of this.sandboxes) {
      if (!s.startsWith('/run/netns/netns-') || !existsSync(s)) continue;
      run(['umount', s]);
      rmSync(s, { force: true });
    }
    // The container's cgroups (cgroupfs manager) and conmon's; a killed
    // conmon or `podman container cleanup` may take a moment to leave.
    const deadline = Date.now() + 3000;
    for (;;) {
      let busy = false;
      for (const cg of libpodCgroups()) {
        if (this.cgroupsBefore.has(cg)) continue;
        const base = cg.split('/').pop() ?? '';
        const ours = base === 'conmon' || base === 'libpod_parent' || [...this.containers].some((id) => base === `libpod-${id}`);
        if (ours && !rmdirQuiet(cg)) busy = true;
      }
      if (!busy || Date.now() > deadline) break;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 100);
    }
    for (const m of mountsBelow(this.dir)) run(['umount', '-l', m]);
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** conmon and anything else still running with this temp dir, or this test's networks' dnsname dirs, in its command line. */
  private killStrays(): void {
    const marks = [`${this.dir}/`, ...this.networks.map((n) => `/dnsname/${n.name}/`)];
    for (const name of readdirSync('/proc')) {
      const pid = Number(name);
      if (!Number.isInteger(pid) || pid === process.pid) continue;
      let cmd = '';
      try {
        cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      } catch {
        continue;
      }
      if (marks.some((m) => cmd.includes(m))) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
    }
  }
}

function safeList(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** false while the directory is there and cannot be removed (a cgroup with processes). */
function rmdirQuiet(p: string): boolean {
  try {
    rmdirSync(p);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ENOENT';
  }
}

/** Every libpod_parent cgroup directory (deepest first) of every v1 controller and the unified hierarchy. */
export function libpodCgroups(): string[] {
  const out: string[] = [];
  for (const c of safeList('/sys/fs/cgroup')) {
    const parent = join('/sys/fs/cgroup', c, 'libpod_parent');
    if (!existsSync(parent)) continue;
    for (const e of safeList(parent)) {
      const p = join(parent, e);
      try {
        if (lstatSync(p).isDirectory()) out.push(p);
      } catch {
        // gone
      }
    }
    out.push(parent);
  }
  return out;
}

/** Mount points at or below `dir`, deepest first. */
export function mountsBelow(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m): m is string => !!m && (m === dir || m.startsWith(`${dir}/`)))
    .sort((a, b) => b.length - a.length);
}

/**
 * Serialises the tests that work in the machine's own network namespace
 * (podman, containerd: vitest runs test files in parallel, and each compares
 * the host's links and iptables before and after). A directory is the lock;
 * one left by a dead process is taken over. Returns the release function.
 * The wait is long: one podman file holds it for minutes on a slow machine
 * (HOST_NET_LOCK_WAIT; callers' hooks allow for it).
 */
export const HOST_NET_LOCK_WAIT = 1_200_000;
export async function hostNetLock(timeoutMs = HOST_NET_LOCK_WAIT): Promise<() => void> {
  const dir = '/run/lock/cnits-hostnet';
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      mkdirSync(dir);
      writeFileSync(join(dir, 'pid'), String(process.pid));
      return () => rmSync(dir, { recursive: true, force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    let owner = 0;
    try {
      owner = Number(readFileSync(join(dir, 'pid'), 'utf8'));
    } catch {
      // being created or removed
    }
    if (owner && !existsSync(`/proc/${owner}`)) rmSync(dir, { recursive: true, force: true });
    if (Date.now() > deadline) throw new Error(`${dir} is held by pid ${owner}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The plugin directory `source` has our client in front of its plugins (engine mode applies), not the reference's binaries. */
export function usesClient(source: string): boolean {
  try {
    return basename(realpathSync(join(source, 'bridge'))) === 'cni-ts-client';
  } catch {
    return false;
  }
}

/** Where the engines of `source`'s client live: the test build's apart (docs/engine.md, "Where the engine lives"). */
function engineDir(source: string): string {
  let test = false;
  try {
    test = realpathSync(source) === realpathSync(TEST_BIN);
  } catch {
    // no test build
  }
  return test ? '/run/cni-ts/test' : '/run/cni-ts';
}

/** A namespace's inode number (`/proc/<pid>/ns/<kind>`), or undefined when it cannot be read. */
export function nsInode(pid: number | 'self', kind: 'net' | 'mnt'): number | undefined {
  try {
    return statSync(`/proc/${pid}/ns/${kind}`).ino;
  } catch {
    return undefined;
  }
}

export interface LogMark {
  ino: number;
  size: number;
}

/** The engine logs of `source`'s engine directory as they are now, so that ClientEngine.log() reads what came after. */
export function markEngineLogs(source: string): Map<string, LogMark> {
  const dir = engineDir(source);
  const marks = new Map<string, LogMark>();
  for (const name of safeList(dir)) {
    if (!name.endsWith('.log')) continue;
    try {
      const st = statSync(join(dir, name));
      marks.set(name, { ino: st.ino, size: st.size });
    } catch {
      // gone
    }
  }
  return marks;
}

/**
 * Engine mode with a real runtime: the engine that the runtime's plugin calls
 * start themselves (docs/engine.md, client step 10) from a plugin directory
 * pluginDir() made — its client and cni-ts copied into <plugins>/.bin, so the
 * engine's executable is that copy — for the namespace pair (inode numbers)
 * those calls run in. Only reads: the test starts no engine.
 */
export class ClientEngine {
  /** The executable an engine of this plugin directory runs. */
  readonly exe: string;
  /** <engine dir>/engine-<net>-<mnt>: .pid, .sock, .log (docs/engine.md). */
  readonly base: string;

  constructor(plugins: string, source: string, readonly net: number, readonly mnt: number, private readonly marks: Map<string, LogMark>) {
    this.exe = join(plugins, '.bin', 'cni-ts');
    this.base = join(engineDir(source), `engine-${net}-${mnt}`);
  }

  /** The pid the pid file names, when that process is a live engine. */
  pid(): number | undefined {
    let pid: number;
    try {
      pid = Number(readFileSync(`${this.base}.pid`, 'utf8').trim());
    } catch {
      return undefined;
    }
    return Number.isInteger(pid) && pid > 1 && isLiveEngine(pid) ? pid : undefined;
  }

  /** What /proc/<pid>/exe names (a binary replaced since: without " (deleted)"). */
  static exeOf(pid: number): string {
    try {
      return readlinkSync(`/proc/${pid}/exe`).replace(/ \(deleted\)$/, '');
    } catch {
      return '';
    }
  }

  /** Live engines running this directory's cni-ts in this namespace pair (in any namespaces: `anywhere`), pid file or not. */
  running(anywhere = false): number[] {
    return safeList('/proc').map(Number).filter((pid) => Number.isInteger(pid) && pid > 1 && isLiveEngine(pid) && ClientEngine.exeOf(pid) === this.exe
      && (anywhere || (nsInode(pid, 'net') === this.net && nsInode(pid, 'mnt') === this.mnt)));
  }

  /** A live engine of the pair whose log says it listens (it logs "started" once its socket is in place). */
  listening(): number | undefined {
    const pid = this.pid();
    return pid !== undefined && this.log().includes(` engine ${pid} started`) ? pid : undefined;
  }

  /** Nothing of an engine left: no process, no pid file, no socket. */
  gone(): boolean {
    return this.running().length === 0 && !existsSync(`${this.base}.pid`) && !existsSync(`${this.base}.sock`);
  }

  /** The pair's log since markEngineLogs() (also across a rotation to .log.1). */
  log(): string {
    const file = `${this.base}.log`;
    const mark = this.marks.get(basename(file));
    const read = (f: string, from = 0) => {
      try {
        return readFileSync(f).subarray(from).toString('utf8');
      } catch {
        return '';
      }
    };
    if (!mark) return read(file);
    let ino: number | undefined;
    try {
      ino = statSync(file).ino;
    } catch {
      // none yet
    }
    if (ino === mark.ino) return read(file, mark.size);
    let rotatedIno: number | undefined;
    try {
      rotatedIno = statSync(`${file}.1`).ino;
    } catch {
      // none
    }
    return (rotatedIno === mark.ino ? read(`${file}.1`, mark.size) : '') + read(file);
  }

  /**
   * The last drain in the log: which engine, why, and how long after the
   * engine's last activity before it (the last request it answered, or its
   * start) — for an idle exit, the idle period give or take its 1 s check.
   */
  lastDrain(): { pid: number; why: string; afterMs: number } | undefined {
    const lines = this.log().split('\n');
    const at = (l: string) => Date.parse(l.slice(0, l.indexOf(' ')));
    for (let i = lines.length - 1; i >= 0; i--) {
      const m = /^\S+ engine (\d+) draining: (.*)$/.exec(lines[i]);
      if (!m) continue;
      const before = lines.slice(0, i).reverse().find((l) => / pid=\d+ container=/.test(l) || / engine \d+ started/.test(l));
      return { pid: Number(m[1]), why: m[2], afterMs: before ? at(lines[i]) - at(before) : NaN };
    }
    return undefined;
  }

  /** For failure messages: the engine files of this network namespace and the live engines of this directory. */
  describe(): string {
    const dir = dirname(this.base);
    const files = safeList(dir).filter((n) => n.startsWith(`engine-${this.net}-`));
    const live = this.running(true).map((pid) => `${pid} (net ${nsInode(pid, 'net')}, mnt ${nsInode(pid, 'mnt')})`);
    return `expected ${this.base}.*; ${dir}: ${files.join(' ') || 'nothing'} of net ${this.net}; engines of ${this.exe}: ${live.join(', ') || 'none'}`;
  }
}

function isLiveEngine(pid: number): boolean {
  try {
    if (/^\S+ \(.*\) [ZX] /s.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))) return false;
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')[1] === 'engine';
  } catch {
    return false;
  }
}

/**
 * An upgrade in place: native/client.c compiled now with a build id of its
 * own (16 random hex digits; the test build's flag kept, so it looks for the
 * same engines); `install` renames it over <plugins>/.bin/cni-ts-client, which
 * every plugin name links to. cni-ts stays: the new client gets "exec" from
 * an engine of the old build and runs it itself. `restore` renames the old
 * client back.
 */
export function otherBuildClient(plugins: string, source: string): { id: string; install: () => void; restore: () => void } {
  const id = randomBytes(8).toString('hex');
  const client = join(plugins, '.bin', 'cni-ts-client');
  const fresh = `${client}.new`;
  const old = `${client}.old`;
  const test = engineDir(source) !== '/run/cni-ts';
  const r = spawnSync('gcc', ['-std=c11', '-O2', '-static', `-DCNI_TS_BUILD_ID="${id}"`, ...(test ? ['-DCNI_TS_TEST_BUILD'] : []),
    join(ROOT, 'native/client.c'), '-o', fresh], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`gcc native/client.c failed: ${r.stderr}${r.error ?? ''}`);
  return {
    id,
    install: () => {
      rmSync(old, { force: true });
      linkSync(client, old);
      renameSync(fresh, client);
    },
    restore: () => {
      if (existsSync(old)) renameSync(old, client);
    },
  };
}
