// Issue 15, item 5: the traffic monitor reads all instances' counters in one
// call; 500 instances collected on nftables no slower than on iptables in the
// same run. In a throwaway network namespace: 500 instances' accounting on
// each backend, made by the traffic-accounting plugin itself (two networks,
// one per backend, in the result cache cni-manager reads; through the
// client and the namespace's engine, which the bench stops at the end), then
// `cni-manager traffic` collections interleaved iptables / nftables, each
// reporting the time of its collection (read every counter, stage totals in
// SQLite, commit); besides, the read alone (`iptables-save -c` /
// `nft -j list table`). Prints a markdown table with the ratio, then one line
// `RESULT {...}`; removes everything it made (the namespace, its temp dir).
// Standalone as root: `node bench/collect.mjs` (BENCH_COLLECT_INSTANCES,
// BENCH_COLLECT_RUNS to change 500 and 15).
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { copyBin, engineFilesNow, engineId, fmt, median, ratio, removeEngineFiles, stopEngine } from './host.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const N = Number(process.env.BENCH_COLLECT_INSTANCES ?? 500);
const RUNS = Number(process.env.BENCH_COLLECT_RUNS ?? 15);
const BACKENDS = ['iptables', 'nftables'];
const H = `cnits-col-${process.pid}`;
const NETNS = `/var/run/netns/${H}`;
const C = `${H}-c`; // CNI_NETNS of every instance (the plugin never enters it; the host's own would be refused)
const tmp = mkdtempSync(join(tmpdir(), 'cnits-col-'));
const BIN = join(tmp, 'bin'); // a private copy: a build during the run does not swap the binary under it
const CACHE = join(tmp, 'cache');
const inH = (argv) => ['nsenter', `--net=${NETNS}`, ...argv];
const ENV = { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' };

function must(argv, input) {
  const r = spawnSync(argv[0], argv.slice(1), { input, encoding: 'utf8', env: ENV, maxBuffer: 256 << 20 });
  if (r.status !== 0) throw new Error(`${argv.join(' ')}: ${r.status}\n${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** One async run (the setup runs a few ADDs at once: the plugins take their own locks). */
function runAsync(argv, env, input) {
  return new Promise((res) => {
    const child = spawn(argv[0], argv.slice(1), { env: { ...ENV, ...env } });
    let out = '';
    let err = '';
    child.stdout.on('data', (b) => (out += b));
    child.stderr.on('data', (b) => (err += b));
    child.on('close', (code) => res({ code, out, err }));
    child.stdin.end(input);
  });
}

const net = (backend) => `col-${backend === 'iptables' ? 'ipt' : 'nft'}`;
const ipOf = (backend, i) => `10.${backend === 'iptables' ? 60 : 61}.${Math.floor(i / 250)}.${(i % 250) + 2}`;
const instanceOf = (backend, i) => `${net(backend)}-instance-${String(i).padStart(4, '0')}`;
const listOf = (backend) => ({ cniVersion: '0.4.0', name: net(backend), plugins: [{ type: 'traffic-accounting', backend }] });

/** One instance: the plugin's ADD (prevResult as bridge would give it), and the cache entry cni-manager writes for it. */
async function addInstance(backend, i) {
  const id = instanceOf(backend, i);
  const result = { cniVersion: '0.4.0', interfaces: [{ name: 'eth0', sandbox: `/var/run/netns/${C}` }], ips: [{ version: '4', address: `${ipOf(backend, i)}/16`, interface: 0 }] };
  const conf = { cniVersion: '0.4.0', name: net(backend), type: 'traffic-accounting', backend, prevResult: result };
  const env = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: id, CNI_NETNS: `/var/run/netns/${C}`, CNI_IFNAME: 'eth0', CNI_PATH: BIN };
  const r = await runAsync(inH([join(BIN, 'traffic-accounting')]), env, JSON.stringify(conf));
  if (r.code !== 0) throw new Error(`ADD ${id} (${backend}): ${r.err}${r.out}`);
  const entry = {
    kind: 'cniCacheV1', containerId: id, ifName: 'eth0', networkName: net(backend),
    config: Buffer.from(JSON.stringify(listOf(backend))).toString('base64'), result,
  };
  writeFileSync(join(CACHE, 'results', `${net(backend)}-${id}-eth0`), JSON.stringify(entry), { mode: 0o600 });
}

async function setup(backend) {
  const t0 = performance.now();
  let next = 0;
  const worker = async () => {
    while (next < N) await addInstance(backend, next++);
  };
  await Promise.all([worker(), worker(), worker()]);
  return (performance.now() - t0) / 1000;
}

/** One collection of a backend's network: the time cni-manager reports for it (ms), and the process's wall time. */
function collect(backend) {
  const list = join(tmp, `${net(backend)}.conflist`);
  const t0 = performance.now();
  const argv = inH([join(BIN, 'cni-manager'), 'traffic', list, '--cache-dir', CACHE, '--db', join(tmp, `${backend}.db`), '--backend', backend]);
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', env: ENV, maxBuffer: 64 << 20 });
  const wall = performance.now() - t0;
  if (r.status !== 0) throw new Error(`traffic ${backend}: ${r.stderr}`);
  const m = /collected (\d+) instances in ([\d.]+) ms/.exec(r.stderr);
  if (!m || Number(m[1]) !== N) throw new Error(`traffic ${backend}: unexpected report ${JSON.stringify(r.stderr)}`);
  const rows = r.stdout.split('\n').filter((l) => l.startsWith(`${net(backend)}-instance-`));
  if (rows.length !== N) throw new Error(`traffic ${backend}: ${rows.length} rows, expected ${N}`);
  return { ms: Number(m[2]), wall };
}

/** The read alone, as the monitor does it (one call of the backend's tool). */
function readOnce(backend) {
  const argv = backend === 'iptables' ? ['iptables-save', '-c', '-t', 'filter'] : ['nft', '-j', 'list', 'table', 'inet', 'cni_ts_accounting'];
  const t0 = performance.now();
  must(inH(argv));
  return performance.now() - t0;
}

function table(res) {
  const line = (name, a, b) => `| ${name} | ${fmt(median(a))} | ${fmt(median(b))} | ${ratio(median(b), median(a))} |`;
  return [
    `Traffic monitor, ${N} instances per backend, median of ${RUNS} interleaved runs (ms):`,
    '',
    '| | iptables | nftables | nftables / iptables |',
    '|---|---:|---:|---:|',
    line('collection (cni-manager traffic: read, totals, commit)', res.iptables.ms, res.nftables.ms),
    line('read alone (iptables-save -c / nft -j list table)', res.iptables.read, res.nftables.read),
    line('cni-manager traffic process (wall)', res.iptables.wall, res.nftables.wall),
    '',
  ].join('\n');
}

const engineFilesBefore = engineFilesNow();
let engine; // the namespace's engine id, once the namespace exists

function cleanup() {
  if (engine) {
    stopEngine(engine, [join(BIN, 'cni-ts')]);
    removeEngineFiles(engine, engineFilesBefore);
  }
  for (const ns of [H, C]) spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
  rmSync(tmp, { recursive: true, force: true });
}

async function main() {
  if (process.getuid?.() !== 0) throw new Error('run as root (it makes a network namespace)');
  copyBin(join(root, 'bin'), BIN);
  must(['ip', 'netns', 'add', H]);
  engine = engineId(NETNS);
  must(['ip', 'netns', 'add', C]);
  must(inH(['ip', 'link', 'set', 'lo', 'up']));
  mkdirSync(join(CACHE, 'results'), { recursive: true, mode: 0o700 });
  for (const b of BACKENDS) writeFileSync(join(tmp, `${net(b)}.conflist`), JSON.stringify(listOf(b)));
  const setupS = {};
  for (const b of BACKENDS) {
    setupS[b] = await setup(b);
    process.stderr.write(`${b}: ${N} instances added in ${setupS[b].toFixed(1)} s\n`);
  }
  const res = Object.fromEntries(BACKENDS.map((b) => [b, { ms: [], wall: [], read: [] }]));
  for (const b of BACKENDS) collect(b); // warm-up: the system counters made, the databases created
  for (let i = 0; i < RUNS; i++) {
    for (const b of i % 2 ? [...BACKENDS].reverse() : BACKENDS) {
      const c = collect(b);
      res[b].ms.push(c.ms);
      res[b].wall.push(c.wall);
      res[b].read.push(readOnce(b));
    }
  }
  process.stdout.write(table(res));
  const summary = Object.fromEntries(BACKENDS.map((b) => [b, { collectMs: median(res[b].ms), readMs: median(res[b].read), wallMs: median(res[b].wall), setupS: setupS[b] }]));
  process.stdout.write(`RESULT ${JSON.stringify({ instances: N, runs: RUNS, ...summary, ratio: median(res.nftables.ms) / median(res.iptables.ms) })}\n`);
}

try {
  await main();
} finally {
  cleanup();
}
