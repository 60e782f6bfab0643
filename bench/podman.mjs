// Real podman (Debian's 4.3, CNI backend, runc): median wall time of
// `podman run --rm --network <net> --rootfs <busybox> /bin/true` with the
// reference plugins in /usr/lib/cni, ours in exec mode and ours in engine
// mode, on one network that `podman network create` wrote, interleaved
// (reference, exec, engine in turn, rotated) so machine noise hits all three,
// plus `--network none` (podman + runc alone) as the floor. Standalone:
//   node bench/podman.mjs            (BENCH_RUNS=15 by default)
//   BENCH_PODMAN_BORROW=firewall node bench/podman.mjs   (take these from the reference)
// Prints a markdown table, then one line `RESULT <json>` (read by bench.mjs).
//
// podman hands its own environment to the plugins (libcni): exec mode is
// podman run with CNI_TS_ENGINE=off in its environment; every exec-mode run is
// checked to have sent nothing to the engine. Engine mode: podman runs in the
// machine's namespaces, so its plugins use the machine's engine
// (/run/cni-ts/engine-<machine netns>-<machine mntns>), started by the first
// call from our copy of the plugins and stopped at the end.
//
// Everything podman writes goes to a temp dir (see test/helpers/podman.ts for
// why each setting is needed); what the plugins leave on the host for this
// network (bridge, iptables chains, IPAM/cache/dnsname dirs) is removed at the
// end. The whole run holds the tests' host-network lock.
import { spawnSync } from 'node:child_process';
import {
  chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmdirSync, rmSync,
  symlinkSync, writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { registered } from '../scripts/registry.mjs';
import {
  engineFilesNow, engineId, engineLog, enginePid, enginesOf, exeOf, fmt, hostNetLock, iptablesRestore, iptablesState, killByCmdline, median,
  MODES, modeEnv, mountsBelow, order, ratio, removeEngineFiles, sleep, stopEngine,
} from './host.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const RUNS = Number(process.env.BENCH_RUNS ?? 15);
const REF = '/usr/lib/cni';
const OURS = process.env.BENCH_PODMAN_OURS ?? join(root, 'bin');
const BORROW = (process.env.BENCH_PODMAN_BORROW ?? '').split(',').filter(Boolean);
// The plugins podman's default list runs (a subset of plugins/registry.json).
const PLUGINS = registered(['bridge', 'host-local', 'portmap', 'firewall', 'tuning', 'dnsname', 'loopback']);
const NET = `cnits-bench-${process.pid}`;
const BASE = JSON.parse(readFileSync(join(root, 'bench/baseline-exec.json'), 'utf8'));

const sh = (argv, opts = {}) => {
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', timeout: 120_000, ...opts });
  return { code: r.status ?? 1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
};
const cgroups = () => readdirSync('/sys/fs/cgroup').flatMap((c) => {
  const p = join('/sys/fs/cgroup', c, 'libpod_parent');
  return existsSync(p) ? [...readdirSync(p, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => join(p, e.name)), p] : [];
});

const lock = hostNetLock();
// Short: podman refuses a --runroot (which conmon's exit command passes) over 50 characters.
const dir = mkdtempSync(join(tmpdir(), 'cnits-pmb-'));
const OUR_EXE = join(dir, 'plugins-ours', '.bin', 'cni-ts');
const filesBefore = engineFilesNow();
const machineId = engineId();

// Plugin directories: ours (a copy of the client and cni-ts, so a rebuild of
// bin/ cannot race the benchmark; the engine is the copy's) with the
// reference for what bin/ lacks or BORROW names.
function pluginDir(name, source) {
  const target = join(dir, name);
  mkdirSync(join(target, '.bin'), { recursive: true });
  const copies = new Map();
  const borrowed = [];
  for (const p of PLUGINS) {
    const own = join(source, p);
    if (source === REF || !existsSync(own) || BORROW.includes(p)) {
      if (source !== REF) borrowed.push(p);
      symlinkSync(join(REF, p), join(target, p));
      continue;
    }
    const real = realpathSync(own);
    if (!copies.has(real)) {
      const dest = join(target, '.bin', basename(real));
      copyFileSync(real, dest);
      chmodSync(dest, 0o755);
      // The client executes the cni-ts beside it (and starts the engine from it).
      if (basename(real) === 'cni-ts-client') {
        copyFileSync(join(dirname(real), 'cni-ts'), join(target, '.bin', 'cni-ts'));
        chmodSync(join(target, '.bin', 'cni-ts'), 0o755);
      }
      copies.set(real, dest);
    }
    symlinkSync(copies.get(real), join(target, p));
    const v = sh([join(target, p)], { env: { PATH: process.env.PATH, CNI_TS_ENGINE: 'off', CNI_COMMAND: 'VERSION' }, input: '{"cniVersion":"1.0.0"}' });
    if (!v.stdout.includes('supportedVersions')) throw new Error(`${own} does not answer VERSION (being rebuilt?): ${v.stderr}`);
  }
  return { target, borrowed };
}

function limits() {
  const text = readFileSync('/proc/self/limits', 'utf8');
  const hard = (label, fb) => {
    const m = text.match(new RegExp(`^${label}\\s+\\S+\\s+(\\S+)`, 'm'));
    return m && m[1] !== 'unlimited' ? Number(m[1]) : fb;
  };
  const pidMax = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8').trim()) || 4194304;
  return { nofile: hard('Max open files', 1048576), nproc: Math.min(hard('Max processes', 4194304), pidMax) };
}

/**
 * `conmonEnv`: containers.conf's conmon_env_vars. podman gives conmon only
 * those (default: PATH), and conmon runs podman's exit command (`podman
 * container cleanup`, which tears the network down too: a second DEL of every
 * plugin) with that environment, not podman's: exec mode needs
 * CNI_TS_ENGINE=off there as well.
 */
function containersConf(name, pluginsDir, conmonEnv) {
  const q = JSON.stringify;
  const { nofile, nproc } = limits();
  const file = join(dir, `${name}.conf`);
  writeFileSync(file, [
    '[containers]', `default_ulimits = [${q(`nofile=${nofile}:${nofile}`)}, ${q(`nproc=${nproc}:${nproc}`)}]`,
    '[network]', 'network_backend = "cni"', `cni_plugin_dirs = [${q(pluginsDir)}]`, `network_config_dir = ${q(join(dir, 'net'))}`,
    '[engine]', ...(conmonEnv ? [`conmon_env_vars = [${conmonEnv.map((e) => q(e)).join(', ')}]`] : []), 'runtime = "runc"', 'cgroup_manager = "cgroupfs"', 'events_logger = "file"', 'lock_type = "file"',
    `tmp_dir = ${q(join(dir, 'tmp'))}`, `volume_path = ${q(join(dir, 'volumes'))}`, `image_copy_tmp_dir = ${q(join(dir, 'tmp'))}`,
    '[engine.runtimes]', `runc = [${q(join(dir, 'runc-wrapper'))}]`, '',
  ].join('\n'));
  return { PATH: process.env.PATH, HOME: join(dir, 'home'), CONTAINERS_CONF: file, CONTAINERS_STORAGE_CONF: join(dir, 'storage.conf') };
}

let bridge = '';
let third = 0;
let iptBefore;
let cgBefore;
let forwardBefore;
let env;
const podman = (which, args) => sh(['podman', ...args], { env: env[which] });

function cleanup() {
  if (env) {
    podman('ref', ['rm', '--all', '--force', '--time', '0']);
    podman('ref', ['network', 'rm', '--force', NET]);
  }
  // Our engine(s): the machine's, and any other our copy started (before the copy goes).
  for (const e of enginesOf([OUR_EXE])) stopEngine(e.id, [OUR_EXE]);
  stopEngine(machineId, [OUR_EXE]);
  removeEngineFiles(machineId, filesBefore);
  killByCmdline(`${dir}/`);
  if (bridge && existsSync(`/sys/class/net/${bridge}`)) sh(['ip', 'link', 'del', bridge]);
  rmSync(join('/var/lib/cni/networks', NET), { recursive: true, force: true });
  rmSync(join('/run/containers/cni/dnsname', NET), { recursive: true, force: true });
  for (const f of existsSync('/var/lib/cni/results') ? readdirSync('/var/lib/cni/results') : []) {
    if (f.startsWith(`${NET}-`)) rmSync(join('/var/lib/cni/results', f), { force: true });
  }
  if (iptBefore) iptablesRestore(iptBefore, { networks: [NET], bridges: bridge ? [bridge] : [], prefixes: third ? [`10.231.${third}.`] : [], containerIds: [] });
  if (forwardBefore !== undefined) writeFileSync('/proc/sys/net/ipv4/ip_forward', forwardBefore);
  for (let i = 0; cgBefore && i < 30; i++) {
    let busy = false;
    for (const cg of cgroups()) {
      if (cgBefore.has(cg)) continue;
      try {
        rmdirSync(cg);
      } catch (e) {
        if (e.code !== 'ENOENT') busy = true;
      }
    }
    if (!busy) break;
    sleep(100);
  }
  for (const m of mountsBelow(dir)) sh(['umount', '-l', m]);
  rmSync(dir, { recursive: true, force: true });
}

function time(which, network) {
  const t0 = process.hrtime.bigint();
  const r = podman(which, ['run', '--rm', '--network', network, '--rootfs', join(dir, 'rootfs'), '/bin/true']);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.code !== 0) throw new Error(`podman run (${which}, ${network}) failed: ${r.stderr}`);
  return ms;
}

try {
  for (const d of ['net', 'tmp', 'volumes', 'root', 'runroot', 'runc', 'home', 'rootfs/bin', 'rootfs/etc', 'rootfs/proc', 'rootfs/sys', 'rootfs/dev']) {
    mkdirSync(join(dir, d), { recursive: true });
  }
  copyFileSync('/bin/busybox', join(dir, 'rootfs/bin/busybox'));
  chmodSync(join(dir, 'rootfs/bin/busybox'), 0o755);
  symlinkSync('busybox', join(dir, 'rootfs/bin/true'));
  writeFileSync(join(dir, 'runc-wrapper'), `#!/bin/sh\nexec /usr/bin/runc --root ${JSON.stringify(join(dir, 'runc'))} "$@"\n`, { mode: 0o755 });
  writeFileSync(join(dir, 'storage.conf'), `[storage]\ndriver = "vfs"\ngraphroot = ${JSON.stringify(join(dir, 'root'))}\nrunroot = ${JSON.stringify(join(dir, 'runroot'))}\n`);
  iptBefore = iptablesState();
  cgBefore = new Set(cgroups());
  forwardBefore = readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8');
  const ours = pluginDir('plugins-ours', OURS);
  const ref = pluginDir('plugins-ref', REF);
  const conmonPath = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'; // podman's default conmon_env_vars
  const execConmon = [conmonPath, ...Object.entries(modeEnv('exec')).map(([k, v]) => `${k}=${v}`)];
  env = { ref: containersConf('ref', ref.target), exec: { ...containersConf('exec', ours.target, execConmon), ...modeEnv('exec') }, engine: containersConf('engine', ours.target) };

  // An engine in the machine's namespace that is not our copy's would take our
  // plugins' calls, and its delegation to host-local (through CNI_PATH, our
  // copy's client) would queue behind the very call that made it: wait for it to idle out.
  for (let deadline = Date.now() + 150_000; ;) {
    const foreign = stopEngine(machineId, [OUR_EXE]).foreign;
    if (!foreign.length) break;
    if (Date.now() > deadline) throw new Error(`an engine not of this bench serves the machine's namespace: ${foreign.map(([p, e]) => `${p} ${e}`).join(', ')}`);
    sleep(1000);
  }

  for (let i = 0; ; i++) {
    third = 200 + ((process.pid + i) % 40);
    const r = podman('ref', ['network', 'create', '--subnet', `10.231.${third}.0/24`, NET]);
    if (r.code === 0) break;
    if (i > 10 || !/already (used|in use)/.test(r.stderr)) throw new Error(`podman network create: ${r.stderr}`);
  }
  bridge = JSON.parse(podman('ref', ['network', 'inspect', NET]).stdout)[0].network_interface;
  const plugins = JSON.parse(readFileSync(join(dir, 'net', `${NET}.conflist`), 'utf8')).plugins.map((p) => p.type);
  // Warm-up (page cache, first bridge setup; engine mode: starts the engine and warms its workers).
  for (let i = 0; i < 2; i++) for (const w of order(i)) time(w, NET);
  time('ref', 'none');
  const pid = enginePid(machineId);
  if (!pid || exeOf(pid) !== OUR_EXE) throw new Error(`after the warm-up the machine's engine is ${pid ? `${pid} (${exeOf(pid)})` : 'not running'}, not our copy's (${OUR_EXE})`);
  const since = Date.now();
  const logLines = () => engineLog(machineId, since).length;
  const t = { ref: [], exec: [], engine: [], none: [] };
  let leaks = 0;
  for (let i = 0; i < RUNS; i++) {
    for (const who of order(i)) {
      const before = who === 'exec' ? logLines() : 0;
      t[who].push(time(who, NET));
      if (who === 'exec') leaks += logLines() - before;
    }
    t.none.push(time('ref', 'none'));
  }
  const lines = engineLog(machineId, since);
  const others = enginesOf([OUR_EXE]).filter((e) => e.id !== machineId);
  const m = Object.fromEntries([...MODES, 'none'].map((w) => [w, median(t[w])]));
  const base = BASE.podman ?? {};
  const share = (w) => m[w] - m.none;
  console.log(`podman run --rm --rootfs <busybox> /bin/true — ${RUNS} runs each, one warm-up round, interleaved, medians (list: ${plugins.join(', ')})`);
  if (ours.borrowed.length) console.log(`"ours" took from ${REF}: ${ours.borrowed.join(', ')}`);
  console.log('');
  console.log(`| network | reference (ms) | ours exec (ms) | exec / ref | ours engine (ms) | engine / ref | exec on ${BASE.date} (ms) |`);
  console.log('|---|---:|---:|---:|---:|---:|---:|');
  console.log(`| ${NET.replace(/-\d+$/, '')} (podman's list) | ${fmt(m.ref)} | ${fmt(m.exec)} | ${ratio(m.exec, m.ref)} | ${fmt(m.engine)} | ${ratio(m.engine, m.ref)} | ${fmt(base["cnits-bench (podman's list)"]?.ours)} |`);
  console.log(`| none (podman + runc alone) | ${fmt(m.none)} | ${fmt(m.none)} | — | ${fmt(m.none)} | — | ${fmt(base['none (podman + runc alone)']?.ours)} |`);
  console.log(`| CNI share (list − none) | ${fmt(share('ref'))} | ${fmt(share('exec'))} | ${ratio(share('exec'), share('ref'))} | ${fmt(share('engine'))} | ${ratio(share('engine'), share('ref'))} | ${fmt(base['CNI share (list − none)']?.ours)} |`);
  const perRun = lines.length / RUNS;
  const inEngine = lines.reduce((a, l) => a + l.ms, 0) / RUNS;
  const byCmd = {};
  for (const l of lines) byCmd[l.command] = (byCmd[l.command] ?? 0) + 1;
  console.log('');
  console.log(`Engine mode: the machine's engine (engine-${machineId}) answered ${fmt(perRun, 1)} requests per \`podman run\` (${Object.entries(byCmd).map(([k, n]) => `${k} ${fmt(n / RUNS, 1)}`).join(', ')}), ${fmt(inEngine)} ms of engine time per run (sum of its per-request times, queue included).`
    + ` Exec mode (CNI_TS_ENGINE=off in podman's environment): ${leaks === 0 ? 'no request reached the engine' : `${leaks} requests reached the engine (the variable did not reach every plugin call)`}.`
    + `${others.length ? ` Other engines our copy started: ${others.map((e) => e.id).join(', ')}.` : ''}`);
  console.log(`RESULT ${JSON.stringify({ runs: RUNS, ref: m.ref, exec: m.exec, engine: m.engine, none: m.none, requestsPerRun: perRun, inEnginePerRun: inEngine, execLeaks: leaks })}`);
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
