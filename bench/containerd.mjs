// containerd's own CLI: median wall time of `ctr run --rm --cni --rootfs
// <busybox> <id> /bin/true` with the reference plugins, ours in exec mode and
// ours in engine mode, interleaved (reference, exec, engine in turn, rotated),
// plus the same without --cni as the floor, against a containerd this script
// starts with its root, state and sockets in a temp dir (never the machine's
// containerd or its config). Standalone: node bench/containerd.mjs
// (BENCH_RUNS=15). Prints a markdown table, then `RESULT <json>`.
//
// As in test/integration/containerd.test.ts: `ctr run --cni` runs libcni
// itself with its directories compiled in (/etc/cni/net.d, and /usr/lib/cni in
// Debian's build), so ctr runs in a private mount namespace in which the
// bench's list and plugins are bind-mounted over those two; the machine's
// directories are never written. Unlike the test, the mount namespace is made
// once per plugin set (a holder process) and every `ctr run` enters it with
// nsenter: the engine serves one (network, mount) namespace pair, so ctr
// calls in a fresh `unshare --mount` each time would each meet no engine. The
// engine is then the one the first call in that namespace pair starts, as it
// would be for a ctr in the machine's own mount namespace with the plugins
// installed. ctr hands the plugins its own environment: exec mode is ctr with
// CNI_TS_ENGINE=off (checked: no exec-mode run may reach the engine).
import { spawn, spawnSync } from 'node:child_process';
import {
  chmodSync, closeSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, realpathSync, rmdirSync, rmSync,
  symlinkSync, writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { registered } from '../scripts/registry.mjs';
import {
  engineFilesNow, engineId, engineLog, enginePid, enginesOf, exeOf, fmt, hostNetLock, iptablesRestore, iptablesState, killByCmdline, median,
  MODES, modeEnv, mountsBelow, nsIno, order, ratio, removeEngineFiles, sleep, stopEngine, waitEngine,
} from './host.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const RUNS = Number(process.env.BENCH_RUNS ?? 15);
const REF = '/usr/lib/cni';
const OURS = process.env.BENCH_CONTAINERD_OURS ?? join(root, 'bin');
// The plugins containerd's two lists run (a subset of plugins/registry.json).
const PLUGINS = registered(['bridge', 'host-local', 'portmap', 'loopback']);
const NS = 'cnitsb';
const CACHE = '/var/lib/cni/results';

const sh = (argv, opts = {}) => {
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', timeout: 120_000, killSignal: 'SIGKILL', ...opts });
  return { code: r.status ?? 1, stdout: r.stdout ?? '', stderr: `${r.stderr ?? ''}${r.error ? ` (${r.error.message})` : ''}` };
};

const lock = hostNetLock();
const dir = mkdtempSync(join(tmpdir(), 'cnits-ctb-'));
const OUR_EXE = join(dir, 'plugins-ours', '.bin', 'cni-ts');
const filesBefore = engineFilesNow();
const sock = join(dir, 'containerd.sock');
const ctrArgs = (...args) => ['ctr', '--address', sock, '--namespace', NS, ...args];
const third = { ref: 40 + (process.pid % 100) * 2, ours: 41 + (process.pid % 100) * 2 };
const nets = Object.fromEntries(['ref', 'ours'].map((s) => [s, {
  name: `cnits-ctrb-${s}-${process.pid}`, bridge: `cnitsb${process.pid % 100000}${s[0]}`,
  subnet4: `10.233.${third[s]}.0/24`, subnet6: `fd00:233:${third[s].toString(16)}::/64`,
}]));
const ids = [];
const holders = {};
let containerd;
let before;
const setOf = (who) => (who === 'ref' ? 'ref' : 'ours');

/** Plugin directory `set`: copies (the directory is bind-mounted over /usr/lib/cni, where a link back there would point at itself). */
function pluginDir(set) {
  const target = join(dir, `plugins-${set}`);
  mkdirSync(join(target, '.bin'), { recursive: true });
  for (const p of PLUGINS) {
    if (set === 'ref') {
      copyFileSync(join(REF, p), join(target, p));
      chmodSync(join(target, p), 0o755);
      continue;
    }
    const real = realpathSync(join(OURS, p));
    const dest = join(target, '.bin', basename(real));
    if (!existsSync(dest)) {
      copyFileSync(real, dest);
      chmodSync(dest, 0o755);
      if (basename(real) === 'cni-ts-client') {
        copyFileSync(join(dirname(real), 'cni-ts'), join(target, '.bin', 'cni-ts'));
        chmodSync(join(target, '.bin', 'cni-ts'), 0o755);
      }
    }
    symlinkSync(dest, join(target, p));
    const v = sh([join(target, p)], { env: { PATH: process.env.PATH, CNI_TS_ENGINE: 'off', CNI_COMMAND: 'VERSION' }, input: '{"cniVersion":"1.0.0"}' });
    if (!v.stdout.includes('supportedVersions')) throw new Error(`${p} (copy of ${real}) does not answer VERSION: ${v.stderr}`);
  }
  return target;
}

/** A process (sleep) holding a private mount namespace with `set`'s list and plugins over /etc/cni/net.d and /usr/lib/cni. */
function holder(set) {
  const wrap = join(dir, 'nswrap.sh');
  const child = spawn('unshare', ['--mount', '--propagation', 'private', '/bin/sh', wrap, join(dir, `net.d-${set}`), join(dir, `plugins-${set}`), 'sleep', '1000000'], { stdio: 'ignore', detached: false });
  child.on('error', () => undefined);
  const deadline = Date.now() + 10_000;
  for (;;) {
    let comm = '';
    try {
      comm = readFileSync(`/proc/${child.pid}/comm`, 'utf8').trim();
    } catch {
      // gone: failed
    }
    if (comm === 'sleep') break;
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`the mount namespace holder for ${set} did not come up (${comm || 'exited'})`);
    sleep(20);
  }
  return child;
}
const inHolder = (set, argv) => ['nsenter', `--mount=/proc/${holders[set].pid}/ns/mnt`, '--', ...argv];

function cleanup() {
  if (containerd) {
    const listed = sh(ctrArgs('containers', 'list', '--quiet'), { timeout: 10_000 }).stdout.split('\n').filter(Boolean);
    for (const c of listed) {
      sh(ctrArgs('task', 'kill', '--signal', 'SIGKILL', c));
      sh(ctrArgs('task', 'delete', '--force', c));
      sh(ctrArgs('containers', 'delete', c));
    }
    containerd.kill('SIGTERM');
    for (let i = 0; i < 50 && containerd.exitCode === null && containerd.signalCode === null; i++) sleep(100);
    if (containerd.exitCode === null && containerd.signalCode === null) containerd.kill('SIGKILL');
  }
  // Our engines (the holder's; any other our copy started), before the holders and the copy go.
  const engineIdsSeen = new Set(enginesOf([OUR_EXE]).map((e) => e.id));
  for (const h of Object.values(holders)) {
    const m = nsIno(`/proc/${h.pid}/ns/mnt`);
    if (m) engineIdsSeen.add(`${nsIno('/proc/self/ns/net')}-${m}`);
  }
  for (const id of engineIdsSeen) stopEngine(id, [OUR_EXE]);
  for (const h of Object.values(holders)) h.kill('SIGKILL');
  killByCmdline(`${dir}/`); // shims, holders
  for (const id of engineIdsSeen) removeEngineFiles(id, filesBefore);
  for (const n of Object.values(nets)) {
    if (existsSync(`/sys/class/net/${n.bridge}`)) sh(['ip', 'link', 'del', n.bridge]);
    for (const f of existsSync(CACHE) ? readdirSync(CACHE) : []) if (f.startsWith(`${n.name}-`)) rmSync(join(CACHE, f), { force: true });
  }
  if (before) {
    const v = Object.values(nets);
    iptablesRestore(before.ipt, {
      networks: v.map((n) => n.name), bridges: v.map((n) => n.bridge), containerIds: ids,
      prefixes: v.flatMap((n) => [n.subnet4.replace(/0\/24$/, ''), n.subnet6.replace(/:\/64$/, '')]),
    });
    writeFileSync('/proc/sys/net/ipv4/ip_forward', before.fwd4);
    writeFileSync('/proc/sys/net/ipv6/conf/all/forwarding', before.fwd6);
    // containerd 1.6 puts shim sockets in /run/containerd/s whatever its state dir.
    if (!before.runContainerd) {
      for (const d of ['/run/containerd/s', '/run/containerd/fifo', '/run/containerd']) {
        try {
          rmdirSync(d);
        } catch {
          // not empty or gone
        }
      }
    }
  }
  for (const m of mountsBelow(dir)) sh(['umount', '-l', m]);
  rmSync(dir, { recursive: true, force: true });
}

function time(who, i, cni = true) {
  const cid = `b${process.pid}-${who}-${i}`;
  ids.push(`${NS}-${cid}`); // go-cni's container id: <namespace>-<id>
  const argv = inHolder(setOf(who), ctrArgs('run', '--rm', ...(cni ? ['--cni'] : []), '--runc-root', join(dir, 'runc'), '--fifo-dir', join(dir, 'fifo'), '--cgroup', '',
    '--rootfs', join(dir, 'rootfs'), cid, '/bin/true'));
  const t0 = process.hrtime.bigint();
  const r = sh(argv, { env: { PATH: process.env.PATH, ...modeEnv(who) } });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.code !== 0) throw new Error(`ctr run (${who}${cni ? '' : ', no --cni'}) failed: ${r.stdout}${r.stderr}`);
  return ms;
}

try {
  before = {
    ipt: iptablesState(), fwd4: readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8'), fwd6: readFileSync('/proc/sys/net/ipv6/conf/all/forwarding', 'utf8'),
    runContainerd: existsSync('/run/containerd'),
  };
  for (const d of ['root', 'state', 'opt', 'runc', 'fifo', 'ipam', 'rootfs/bin', 'rootfs/etc', 'rootfs/proc', 'rootfs/sys', 'rootfs/dev', 'rootfs/tmp']) mkdirSync(join(dir, d), { recursive: true });
  copyFileSync('/bin/busybox', join(dir, 'rootfs/bin/busybox'));
  chmodSync(join(dir, 'rootfs/bin/busybox'), 0o755);
  for (const a of ['sh', 'true']) symlinkSync('busybox', join(dir, 'rootfs/bin', a));
  writeFileSync(join(dir, 'rootfs/etc/passwd'), 'root:x:0:0:root:/:/bin/sh\n');
  writeFileSync(join(dir, 'rootfs/etc/group'), 'root:x:0:\n');
  writeFileSync(join(dir, 'nswrap.sh'), '#!/bin/sh\nset -e\nconf="$1"; plugins="$2"; shift 2\nmount --bind "$conf" /etc/cni/net.d\nmount --bind "$plugins" /usr/lib/cni\nexec "$@"\n', { mode: 0o755 });
  for (const set of ['ref', 'ours']) {
    pluginDir(set);
    const n = nets[set];
    const list = JSON.parse(readFileSync(join(root, 'conf.d/50-containerd.conflist'), 'utf8'));
    list.name = n.name;
    Object.assign(list.plugins[0], { bridge: n.bridge });
    list.plugins[0].ipam.ranges = [[{ subnet: n.subnet4 }], [{ subnet: n.subnet6 }]];
    list.plugins[0].ipam.dataDir = join(dir, 'ipam', set);
    list.plugins.push({ type: 'loopback' });
    mkdirSync(join(dir, `net.d-${set}`));
    writeFileSync(join(dir, `net.d-${set}`, '10-bench.conflist'), JSON.stringify(list, null, 2));
  }
  const plugins = JSON.parse(readFileSync(join(dir, 'net.d-ours', '10-bench.conflist'), 'utf8')).plugins.map((p) => p.type);
  const q = JSON.stringify;
  writeFileSync(join(dir, 'config.toml'), [
    'version = 2', `root = ${q(join(dir, 'root'))}`, `state = ${q(join(dir, 'state'))}`,
    // CRI would read /etc/cni/net.d and start pods' sandboxes; the rest need hardware or are unused.
    'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",'
      + ' "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp",'
      + ' "io.containerd.internal.v1.tracing"]',
    '[grpc]', `  address = ${q(sock)}`, '[ttrpc]', `  address = ${q(`${sock}.ttrpc`)}`, '[debug]', `  address = ${q(join(dir, 'debug.sock'))}`,
    '[metrics]', '  address = ""', '[plugins."io.containerd.internal.v1.opt"]', `  path = ${q(join(dir, 'opt'))}`, '',
  ].join('\n'));
  const log = openSync(join(dir, 'containerd.log'), 'a');
  containerd = spawn('containerd', ['--config', join(dir, 'config.toml')], { stdio: ['ignore', log, log], env: { PATH: process.env.PATH } });
  containerd.on('error', () => undefined);
  closeSync(log);
  const t0 = Date.now();
  while (sh(ctrArgs('version'), { timeout: 5000 }).code !== 0) {
    if (Date.now() - t0 > 30_000 || containerd.exitCode !== null) throw new Error(`containerd did not start: ${readFileSync(join(dir, 'containerd.log'), 'utf8').slice(-2000)}`);
    sleep(100);
  }
  const startS = (Date.now() - t0) / 1000;
  for (const set of ['ref', 'ours']) holders[set] = holder(set);
  const engine = `${nsIno('/proc/self/ns/net')}-${nsIno(`/proc/${holders.ours.pid}/ns/mnt`)}`;

  // Warm-up (page cache, first bridge setup; engine mode: the first call starts the engine of ctr's namespaces).
  let started = 'by the first plugin call';
  for (let i = 0; i < 2; i++) {
    for (const w of order(i)) time(w, `w${i}`);
    time('ref', `wn${i}`, false);
    if (i === 0 && !waitEngine(engine, 5000)) {
      // The client starts an engine only from init's mount namespace or its parent's (native/client.c);
      // ctr, its parent, is in the holder's, so this is a fallback: started here as the client would.
      started = 'by the bench (the client started none)';
      const e = spawn('nsenter', [`--mount=/proc/${holders.ours.pid}/ns/mnt`, '--', OUR_EXE, 'engine', '--dir', '/run/cni-ts'], { detached: true, stdio: 'ignore', cwd: '/', env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', MALLOC_ARENA_MAX: '2' } }); // as native/client.c starts one
      e.on('error', () => undefined);
      e.unref();
      if (!waitEngine(engine, 15_000)) throw new Error(`no engine came up for ctr's namespaces (${engine})`);
    }
  }
  const pid = enginePid(engine);
  if (!pid || exeOf(pid) !== OUR_EXE) throw new Error(`after the warm-up the engine of ${engine} is ${pid ? `${pid} (${exeOf(pid)})` : 'not running'}, not our copy's`);
  const since = Date.now();
  const logLines = () => engineLog(engine, since).length;
  const t = { ref: [], exec: [], engine: [], none: [] };
  let leaks = 0;
  for (let i = 0; i < RUNS; i++) {
    for (const who of order(i)) {
      const n0 = who === 'exec' ? logLines() : 0;
      t[who].push(time(who, i));
      if (who === 'exec') leaks += logLines() - n0;
    }
    t.none.push(time('ref', `n${i}`, false));
  }
  const lines = engineLog(engine, since);
  const m = Object.fromEntries([...MODES, 'none'].map((w) => [w, median(t[w])]));
  const share = (w) => m[w] - m.none;
  const byCmd = {};
  for (const l of lines) byCmd[l.command] = (byCmd[l.command] ?? 0) + 1;
  console.log(`ctr run --rm --cni --rootfs <busybox> <id> /bin/true (containerd ${sh(['containerd', '--version']).stdout.split(' ')[2] ?? '?'}, runc) — ${RUNS} runs each, one warm-up round, interleaved, medians (list: ${plugins.join(', ')}, IPv4 + IPv6)`);
  console.log('');
  console.log('| network | reference (ms) | ours exec (ms) | exec / ref | ours engine (ms) | engine / ref |');
  console.log('|---|---:|---:|---:|---:|---:|');
  console.log(`| --cni (the list) | ${fmt(m.ref)} | ${fmt(m.exec)} | ${ratio(m.exec, m.ref)} | ${fmt(m.engine)} | ${ratio(m.engine, m.ref)} |`);
  console.log(`| no --cni (containerd + runc alone) | ${fmt(m.none)} | ${fmt(m.none)} | — | ${fmt(m.none)} | — |`);
  console.log(`| CNI share (--cni − none) | ${fmt(share('ref'))} | ${fmt(share('exec'))} | ${ratio(share('exec'), share('ref'))} | ${fmt(share('engine'))} | ${ratio(share('engine'), share('ref'))} |`);
  console.log('');
  console.log(`containerd started in ${startS.toFixed(1)} s (its own root, state and sockets in a temp dir; CRI disabled). Engine mode: engine-${engine} (ctr's namespaces; started ${started}) answered ${fmt(lines.length / RUNS, 1)} requests per \`ctr run\` (${Object.entries(byCmd).map(([k, n]) => `${k} ${fmt(n / RUNS, 1)}`).join(', ')}), ${fmt(lines.reduce((a, l) => a + l.ms, 0) / RUNS)} ms of engine time per run. Exec mode (CNI_TS_ENGINE=off in ctr's environment): ${leaks === 0 ? 'no request reached the engine' : `${leaks} requests reached the engine`}.`);
  console.log(`RESULT ${JSON.stringify({ runs: RUNS, ref: m.ref, exec: m.exec, engine: m.engine, none: m.none, requestsPerRun: lines.length / RUNS, execLeaks: leaks, startS })}`);
} catch (e) {
  console.error(e instanceof Error ? e.message : e);
  process.exitCode = 1;
} finally {
  try {
    cleanup();
  } finally {
    lock.release();
  }
}
