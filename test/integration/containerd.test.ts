import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, existsSync, fstatSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type IptablesState, type LogMark, type Owned, REFERENCE, buildRootfs, ClientEngine, HOST_NET_LOCK_WAIT, hostNetLock, iptablesAdded, iptablesRestore,
  iptablesState, markEngineLogs, mountsBelow, nsInode, otherBuildClient, pluginDir, run, treeHash, usesClient,
} from '../helpers/podman.js';
import { BIN, ROOT } from '../helpers/sandbox.js';
import { MODE, machineEngineFiles, modeEnv, removeMachineEngineFiles, stopEngines } from '../helpers/mode.js';

// containerd's own CLI: `ctr run --cni --rootfs <busybox> …` against a
// containerd this test starts with its root, state and sockets in a temp dir.
//
// `ctr run --cni` does not take its CNI setup from the daemon: ctr itself
// calls go-cni's New(WithDefaultConf) (cmd/ctr/commands/run/run.go), whose
// directories are compiled in — /etc/cni/net.d (the first list found there
// only) and the plugin dir (/opt/cni/bin upstream, /usr/lib/cni in Debian's
// patched build) — with no flag or environment variable to change them; the
// daemon's CRI `bin_dir`/`conf_dir` only serve CRI pods. So ctr runs here in a
// private mount namespace (unshare --mount) in which the test's list and
// plugins are bind-mounted over /etc/cni/net.d and /usr/lib/cni: the
// machine's directories are never written (hashed before and after).
//
// ctr adds the network after creating the task, and removes it (CNI DEL) only
// when it ran attached, after the task is gone: the DEL comes with an empty
// CNI_NETNS. A detached (`-d`) container is never removed from the network.
//
// Of the machine's links and iptables only what is the test's own is compared
// and removed (its bridge and the container's veth; rules naming its network,
// bridge, container or subnets, and the chains its plugins made while nobody
// else uses them: see Owned in test/helpers/podman.ts).
//
// Engine mode (CNI_TS_MODE=engine, our plugins): ctr's plugin calls run in the
// machine's network namespace and ctr's private mount namespace, and the test
// starts no engine. ctr is the plugins' parent and shares that mount namespace
// with them, so the client starts an engine for that pair (docs/engine.md,
// client step 10: only a namespace made for the call alone is refused), and the
// suite checks it as the podman suite does: started by ctr's own calls, idle
// exit (ctr hands the plugins CNI_TS_ENGINE_IDLE), and an upgrade between two
// more runs, in ctr's mount namespace (the one that engine serves), which the
// test holds open with a descriptor and enters with nsenter.
const IDLE = 10;
const SETS = (process.env.CNITS_CONTAINERD_PLUGIN_DIRS ?? `reference=${REFERENCE},ours=${BIN}`)
  .split(',').map((s) => {
    const [label, dir] = s.split('=');
    return { label, dir };
  });
const PLUGINS = ['bridge', 'host-local', 'portmap', 'loopback'];
const CACHE = '/var/lib/cni/results';
const WATCHED = ['/etc/cni', '/usr/lib/cni', '/opt/cni'];
const NS = 'cnits';

/** The container's script: report, ping the gateway, then wait for the test to release it. */
const CHECK = `#!/bin/sh
ip -o link show lo
ip -4 -o addr show dev eth0
ip -6 -o addr show dev eth0 scope global
ping -c 1 -W 3 "$1" >/dev/null && echo PING-OK
echo READY
while [ ! -e /release ]; do sleep 0.1; done
`;

/** Runs argv in a private mount namespace with `conf` over /etc/cni/net.d and `plugins` over /usr/lib/cni. */
const NSWRAP = `#!/bin/sh
set -e
conf="$1"; plugins="$2"; shift 2
mount --bind "$conf" /etc/cni/net.d
mount --bind "$plugins" /usr/lib/cni
exec "$@"
`;

/** Those of `names` that exist as links in the machine's namespace. */
function linksPresent(names: string[]): string[] {
  const all = new Set((JSON.parse(run(['ip', '-j', 'link', 'show']).stdout) as { ifname: string }[]).map((l) => l.ifname));
  return names.filter((n) => n && all.has(n));
}

function sysctl(path: string): string {
  return readFileSync(path, 'utf8');
}

describe.each(SETS)('ctr run --cni (containerd 1.6) with the $label plugins ($dir)', ({ label, dir }) => {
  const id = `c-${process.pid}`;
  const fullId = `${NS}-${id}`; // go-cni's container id: <namespace>-<id>
  const third = 20 + (process.pid % 100) * 2 + (label === 'reference' ? 0 : 1);
  const net = { name: `cnits-ctrd-${label}-${process.pid}`, bridge: `cnitsc${process.pid % 100000}${label[0]}`, gw4: `10.232.${third}.1`, subnet4: `10.232.${third}.0/24`, subnet6: `fd00:232:${third.toString(16)}::/64` };
  let tmp = '';
  let containerd: ChildProcess | undefined;
  let borrowed: string[] = [];
  let before: { ipt: IptablesState; watched: string; fwd4: string; fwd6: string; runContainerd: boolean };
  const owned: Owned = { network: net.name, bridges: [net.bridge], prefixes: [`10.232.${third}.`, `fd00:232:${third.toString(16)}:`], containerIds: [fullId] };
  /** The container's host-side veth, once seen. */
  const veths: string[] = [];
  let out = '';
  let ctr: ChildProcess | undefined;
  let exited: Promise<number>;
  let unlock: (() => void) | undefined;
  /** Engine mode applies: our client is in front of this set's plugins. */
  const engine = MODE === 'engine' && usesClient(dir);
  let logs: Map<string, LogMark> | undefined;
  let eng: ClientEngine | undefined;
  /** Engine mode: a descriptor holding ctr's mount namespace, for the runs after the first. */
  let mntFd: number | undefined;
  /** The machine namespace's engine files before this run: what the run adds is removed at the end. */
  let engineFilesBefore = new Set<string>();
  /** Every container id given to ctr run (the engine-mode upgrade adds two). */
  const ids = [id];
  /** The environment ctr hands the plugins (libcni): the mode's, and engine mode's idle period. */
  const ctrEnv = (): NodeJS.ProcessEnv => ({ ...process.env, ...modeEnv(), ...(engine ? { CNI_TS_ENGINE_IDLE: String(IDLE) } : {}) });

  const sock = () => join(tmp, 'containerd.sock');
  const ctrArgs = (...args: string[]) => ['ctr', '--address', sock(), '--namespace', NS, ...args];

  beforeAll(async () => {
    unlock = await hostNetLock();
    engineFilesBefore = machineEngineFiles();
    // Engine mode: ctr's engine is of a mount namespace made for this run (nobody else's can be
    // there, nothing to stop); only the logs are marked, to read what came after.
    if (engine) logs = markEngineLogs(dir);
    before = {
      ipt: iptablesState(),
      watched: treeHash(WATCHED), fwd4: sysctl('/proc/sys/net/ipv4/ip_forward'), fwd6: sysctl('/proc/sys/net/ipv6/conf/all/forwarding'),
      runContainerd: existsSync('/run/containerd'),
    };
    tmp = mkdtempSync(join(tmpdir(), `cnits-ctrd-${label}-`));
    for (const d of ['root', 'state', 'opt', 'runc', 'fifo', 'net.d', 'ipam']) mkdirSync(join(tmp, d));
    buildRootfs(join(tmp, 'rootfs'));
    writeFileSync(join(tmp, 'rootfs/check.sh'), CHECK, { mode: 0o755 });
    writeFileSync(join(tmp, 'nswrap.sh'), NSWRAP, { mode: 0o755 });
    // Copies, not links: a link back into /usr/lib/cni would point at itself under the bind mount.
    borrowed = pluginDir(join(tmp, 'plugins'), dir, PLUGINS, true).borrowed;
    if (borrowed.length) console.log(`containerd/${label}: taken from ${REFERENCE}: ${borrowed.join(', ')}`);
    const list = JSON.parse(readFileSync(join(ROOT, 'conf.d/50-containerd.conflist'), 'utf8'));
    list.name = net.name;
    Object.assign(list.plugins[0], { bridge: net.bridge });
    list.plugins[0].ipam.ranges = [[{ subnet: net.subnet4 }], [{ subnet: net.subnet6 }]];
    list.plugins[0].ipam.dataDir = join(tmp, 'ipam');
    list.plugins.push({ type: 'loopback' });
    writeFileSync(join(tmp, 'net.d', '10-containerd-net.conflist'), JSON.stringify(list, null, 2));
    const q = JSON.stringify;
    writeFileSync(join(tmp, 'config.toml'), [
      'version = 2',
      `root = ${q(join(tmp, 'root'))}`,
      `state = ${q(join(tmp, 'state'))}`,
      // CRI would read /etc/cni/net.d and start pods' sandboxes; the rest need hardware or are unused.
      'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",'
        + ' "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp",'
        + ' "io.containerd.internal.v1.tracing"]',
      '[grpc]', `  address = ${q(sock())}`,
      '[ttrpc]', `  address = ${q(`${sock()}.ttrpc`)}`,
      '[debug]', `  address = ${q(join(tmp, 'debug.sock'))}`,
      '[metrics]', '  address = ""',
      '[plugins."io.containerd.internal.v1.opt"]', `  path = ${q(join(tmp, 'opt'))}`,
      '',
    ].join('\n'));
    const log = openSync(join(tmp, 'containerd.log'), 'a');
    containerd = spawn('containerd', ['--config', join(tmp, 'config.toml')], { stdio: ['ignore', log, log], env: { ...process.env, ...modeEnv() } });
    closeSync(log);
    const deadline = Date.now() + 20_000;
    while (run(ctrArgs('version'), { timeoutMs: 5000 }).code !== 0) {
      if (Date.now() > deadline || containerd.exitCode !== null) throw new Error(`containerd did not start: ${readFileSync(join(tmp, 'containerd.log'), 'utf8')}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }, HOST_NET_LOCK_WAIT + 120_000);

  afterAll(async () => {
    if (!tmp) {
      unlock?.();
      return;
    }
    if (ctr && ctr.exitCode === null) {
      writeFileSync(join(tmp, 'rootfs/release'), '');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
      ctr.kill('SIGKILL');
    }
    if (containerd) {
      for (const i of ids) {
        run(ctrArgs('task', 'kill', '--signal', 'SIGKILL', i));
        run(ctrArgs('task', 'delete', '--force', i));
        run(ctrArgs('container', 'delete', i));
      }
      containerd.kill('SIGTERM');
      await new Promise((r) => setTimeout(r, 500));
      if (containerd.exitCode === null) containerd.kill('SIGKILL');
    }
    // Engine mode: the engines the copies in tmp/plugins started (ctr's clients, in its private
    // mount namespace, where they start one) stopped before the sweep below would SIGKILL them;
    // then the namespace is let go.
    stopEngines(undefined, { dirs: [tmp], anyMount: true });
    removeMachineEngineFiles(engineFilesBefore);
    if (mntFd !== undefined) closeSync(mntFd);
    // Shims and anything else started with this temp dir on its command line.
    for (const p of readdirSync('/proc')) {
      if (!/^\d+$/.test(p) || Number(p) === process.pid) continue;
      try {
        if (readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(`${tmp}/`)) process.kill(Number(p), 'SIGKILL');
      } catch {
        // gone
      }
    }
    if (existsSync(`/sys/class/net/${net.bridge}`)) run(['ip', 'link', 'del', net.bridge]);
    for (const f of existsSync(CACHE) ? readdirSync(CACHE) : []) if (f.startsWith(`${net.name}-`)) rmSync(join(CACHE, f), { force: true });
    if (before) iptablesRestore(before.ipt, owned);
    if (before) writeFileSync('/proc/sys/net/ipv4/ip_forward', before.fwd4);
    if (before) writeFileSync('/proc/sys/net/ipv6/conf/all/forwarding', before.fwd6);
    // containerd 1.6 puts shim sockets in /run/containerd/s whatever its state dir (a constant).
    if (!before.runContainerd) {
      for (const d of ['/run/containerd/s', '/run/containerd/fifo', '/run/containerd']) {
        try {
          rmdirSync(d);
        } catch {
          // not empty or gone
        }
      }
    }
    for (const m of mountsBelow(tmp)) run(['umount', '-l', m]);
    rmSync(tmp, { recursive: true, force: true });
    unlock?.();
  });

  it('a container gets an address on the list (bridge, host-local, portmap, loopback), has lo up and reaches the gateway', async () => {
    const argv = ['unshare', '--mount', '--propagation', 'private', '/bin/sh', join(tmp, 'nswrap.sh'), join(tmp, 'net.d'), join(tmp, 'plugins'),
      ...ctrArgs('run', '--rm', '--cni', '--runc-root', join(tmp, 'runc'), '--fifo-dir', join(tmp, 'fifo'), '--cgroup', '', '--rootfs', join(tmp, 'rootfs'),
        id, '/bin/sh', '/check.sh', net.gw4)];
    // ctr runs libcni itself and hands the plugins its environment.
    ctr = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: ctrEnv() });
    let err = '';
    ctr.stdout?.on('data', (b) => (out += b));
    ctr.stderr?.on('data', (b) => (err += b));
    exited = new Promise((res) => ctr?.on('exit', (code) => res(code ?? 1)));
    const deadline = Date.now() + 30_000;
    while (!out.includes('READY') && ctr.exitCode === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(out, `ctr run: ${out}${err}`).toContain('READY');
    if (engine && ctr.pid !== undefined) {
      // The pair ctr's plugin calls run in: the machine's network namespace and ctr's (unshare's) mount namespace.
      mntFd = openSync(`/proc/${ctr.pid}/ns/mnt`, 'r');
      eng = new ClientEngine(join(tmp, 'plugins'), dir, nsInode('self', 'net')!, fstatSync(mntFd).ino, logs!);
    }
    expect(out).toMatch(/^1: lo: <LOOPBACK,UP,LOWER_UP>/m);
    const v4 = out.match(/inet (10\.232\.\d+\.\d+)\/24/)?.[1];
    expect(v4, out).toBeDefined();
    expect(out).toMatch(new RegExp(`inet6 ${net.subnet6.replace('::/64', '')}:[0-9a-f:]+/64`));
    expect(out, 'ping to the gateway').toContain('PING-OK');
  });

  it('while it runs: the veth is a port of the bridge, the address is allocated, the NAT chain and libcni cache entry exist', () => {
    const links = JSON.parse(run(['ip', '-j', 'link', 'show', 'master', net.bridge]).stdout || '[]');
    expect(links.length, 'ports on the bridge').toBe(1);
    veths.push(...links.map((l: { ifname: string }) => l.ifname));
    const v4 = out.match(/inet (10\.232\.\d+\.\d+)\/24/)?.[1] ?? '';
    expect(readFileSync(join(tmp, 'ipam', net.name, v4), 'utf8')).toContain(fullId);
    expect(Object.values(iptablesState()).join('\n')).toContain(`id: \\"${fullId}\\"`);
    expect(existsSync(join(CACHE, `${net.name}-${fullId}-eth0`))).toBe(true);
  });

  it("when the container exits, ctr's DEL (with no netns any more) removes its veth, addresses, NAT rules and cache entry", async () => {
    writeFileSync(join(tmp, 'rootfs/release'), '');
    const code = await Promise.race([exited, new Promise<number>((r) => setTimeout(() => r(-1), 20_000))]);
    expect(code, out).toBe(0);
    expect(JSON.parse(run(['ip', '-j', 'link', 'show', 'master', net.bridge]).stdout || '[]')).toEqual([]);
    const left = existsSync(join(tmp, 'ipam', net.name)) ? readdirSync(join(tmp, 'ipam', net.name)).filter((f) => /^[0-9a-f.:]+$/.test(f) && /\d/.test(f)) : [];
    expect(left, 'IPAM allocations').toEqual([]);
    expect(existsSync(join(CACHE, `${net.name}-${fullId}-eth0`)), 'libcni cache entry').toBe(false);
    expect(run(ctrArgs('container', 'list', '--quiet')).stdout.trim()).toBe('');
    const added = iptablesAdded(before.ipt, owned);
    const ours = added.rules.map(([, , r]) => r).filter((r) => r.includes(fullId));
    // The reference bridge (1.1.1) returns from DEL right after IPAM when CNI_NETNS is
    // empty, so it never removes the container's ipMasq chain; ours does.
    if (label === 'reference') {
      if (ours.length) console.log(`containerd/reference: left behind by the reference bridge's DEL:\n${ours.join('\n')}`);
    } else {
      expect(ours).toEqual([]);
    }
  });

  it.runIf(engine)("engine mode: ctr's first plugin call started the engine of its namespaces (the machine's network, ctr's mount namespace) from the plugin dir's cni-ts, with ctr's CNI_TS_ENGINE_IDLE; it served ctr's DEL", () => {
    if (!eng) throw new Error('ctr did not run (see the first failure)');
    const log = eng.log();
    const pid = eng.pid();
    expect(pid, eng.describe()).toBeDefined();
    expect(ClientEngine.exeOf(pid!)).toBe(eng.exe);
    // The pair's first engine was started by a client with ctr's environment: the idle period it got is ctr's.
    const first = /^\S+ engine (\d+) started: build \S+, \d+ workers, idle (\d+) s, socket (\S+)$/m.exec(log);
    expect(first, log).not.toBeNull();
    expect(first![2], 'idle period of the first engine').toBe(String(IDLE));
    expect(first![3]).toBe(`${eng.base}.sock`);
    expect(log).toContain(` engine ${pid} started`);
    // The DEL after the container exited (the engine was up by then; the ADDs may have been quicker).
    for (const p of ['loopback', 'portmap', 'bridge']) {
      expect(log, `${p} DEL in the engine`).toMatch(new RegExp(`^\\S+ ${p} DEL pid=\\d+ container=${fullId} if=eth0 [\\d.]+ms exit=0 code=-$`, 'm'));
    }
  });

  it.runIf(engine)(`engine mode: with the container gone the engine exits by itself after CNI_TS_ENGINE_IDLE (${IDLE} s); its socket and pid file go with it`, async () => {
    if (!eng) throw new Error('ctr did not run (see the first failure)');
    const e = eng;
    const live = e.pid();
    await expect.poll(() => e.gone(), { timeout: (IDLE + 20) * 1000, interval: 250 }).toBe(true);
    const drain = e.lastDrain();
    expect(drain?.why, e.log()).toBe(`idle for ${IDLE} s`);
    // Its last activity (last answer, or its start: counted from just before its log says so) was
    // the idle period before (checked once a second).
    expect(drain!.afterMs).toBeGreaterThan(IDLE * 1000 - 500);
    expect(drain!.afterMs).toBeLessThan((IDLE + 5) * 1000);
    if (live !== undefined) expect(drain!.pid, 'the engine serving when the container went').toBe(live);
    expect(e.log()).toContain(` engine ${drain!.pid} exits`);
  });

  it.runIf(engine)('engine mode: upgrade — beside the old engine, a client of another build runs the next container itself (exec path); the old engine drains and exits', async () => {
    if (!eng || mntFd === undefined) throw new Error('ctr did not run (see the first failure)');
    const e = eng;
    const other = otherBuildClient(join(tmp, 'plugins'), dir);
    /** An attached run (check.sh returns at once: /release is there) in ctr's mount namespace. */
    const runCtr = (cid: string) => {
      ids.push(cid);
      owned.containerIds.push(`${NS}-${cid}`);
      const r = run(['nsenter', `--mount=/proc/${process.pid}/fd/${mntFd}`, '--', ...ctrArgs('run', '--rm', '--cni', '--runc-root', join(tmp, 'runc'),
        '--fifo-dir', join(tmp, 'fifo'), '--cgroup', '', '--rootfs', join(tmp, 'rootfs'), cid, '/bin/sh', '/check.sh', net.gw4)], { env: ctrEnv() });
      expect(r.code, `ctr run ${cid}: ${r.stdout}${r.stderr}`).toBe(0);
      expect(r.stdout).toMatch(/inet 10\.232\.\d+\.\d+\/24/);
      expect(r.stdout, 'ping to the gateway').toContain('PING-OK');
      // ctr's DEL after it: nothing of the container left on the bridge or in IPAM.
      expect(JSON.parse(run(['ip', '-j', 'link', 'show', 'master', net.bridge]).stdout || '[]')).toEqual([]);
      expect(readdirSync(join(tmp, 'ipam', net.name)).filter((f) => /^[0-9a-f.:]+$/.test(f) && /\d/.test(f)), 'IPAM allocations').toEqual([]);
      expect(existsSync(join(CACHE, `${net.name}-${NS}-${cid}-eth0`)), 'libcni cache entry').toBe(false);
    };
    // The old engine must be up when the new client comes (it idled out above): a run of the old
    // build first, then that engine once it listens.
    runCtr(`o-${process.pid}`);
    await expect.poll(() => e.listening(), { timeout: 15_000, interval: 100 }).toBeDefined();
    const old = e.listening()!;
    expect(e.running()).toContain(old);
    other.install();
    try {
      const next = `n-${process.pid}`;
      runCtr(next);
      await expect.poll(() => e.running().includes(old), { timeout: 30_000, interval: 200 }).toBe(false);
      const log = e.log();
      expect(log).toContain(` engine ${old} draining: a client of build ${other.id}`);
      expect(log).toContain(` engine ${old} exits`);
      // No engine ran a call of the new run: each went back to its client.
      expect(log).not.toContain(`container=${NS}-${next} `);
    } finally {
      other.restore();
    }
  });

  it('cleanup leaves the machine as it was: its links and iptables, sysctls, /etc/cni, /usr/lib/cni, /opt/cni', async () => {
    if (existsSync(`/sys/class/net/${net.bridge}`)) run(['ip', 'link', 'del', net.bridge]);
    iptablesRestore(before.ipt, owned);
    writeFileSync('/proc/sys/net/ipv4/ip_forward', before.fwd4);
    writeFileSync('/proc/sys/net/ipv6/conf/all/forwarding', before.fwd6);
    expect(iptablesAdded(before.ipt, owned)).toEqual({ rules: [], chains: [] });
    expect(linksPresent([net.bridge, ...veths])).toEqual([]);
    expect(treeHash(WATCHED)).toBe(before.watched);
    expect(mountsBelow('/etc/cni')).toEqual([]);
    expect(mountsBelow('/usr/lib/cni')).toEqual([]);
  });
});
