// Load: COUNT containers (200) with IN_FLIGHT (16) calls in flight, through
// libcni (test/tools/cnitool) with the podman-style list (bridge+host-local,
// portmap, firewall, tuning, dnsname): ADD all, then DEL all, for the
// reference plugins, ours in exec mode and ours in engine mode, one after the
// other in one host namespace of the bench (each mode on its own network).
// Throughput (containers per second of wall time), per-call median and p95;
// for engine mode also the engine's peak resident set over the load (VmHWM of
// a fresh engine, warmed up just before) and its resident set when idle after.
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { lists } from './chains.mjs';
import { engineEvents, engineId, engineLog, enginePid, median, memoryOf, modeEnv, order, percentile, sleep, stopEngine } from './host.mjs';

function run(argv, env) {
  return new Promise((res) => {
    const t0 = performance.now();
    const child = spawn(argv[0], argv.slice(1), { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (b) => (out += b));
    child.stderr.on('data', (b) => (out += b));
    child.on('error', (e) => res({ code: 127, out: String(e), ms: performance.now() - t0 }));
    child.on('close', (code) => res({ code: code ?? 1, out, ms: performance.now() - t0 }));
  });
}

/** fn over 0..n-1 with at most `limit` in flight, started in index order. */
async function pool(n, limit, fn) {
  const out = new Array(n);
  let next = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      out[i] = await fn(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, n) }, worker));
  return out;
}

const batchNetns = (verb, names) => spawnSync('ip', ['-batch', '-'], { input: names.map((n) => `netns ${verb} ${n}\n`).join('') });

/**
 * Returns { count, inFlight, modes: { ref|exec|engine: { add, del: { wallMs, perSec, median, p95, failed, firstError,
 * inEngine (engine: median of the per-call sum of the engine's own times) } } }, engine: { hwm, rss, idleRss, pid } }.
 */
export async function runLoad({ tmp, H, OURS, REF, CNITOOL, ensureEngine, exes, COUNT = 200, IN_FLIGHT = 16, stopped = () => false }) {
  const LH = `${H}-load`;
  spawnSync('ip', ['netns', 'add', LH]);
  spawnSync('nsenter', [`--net=/var/run/netns/${LH}`, 'ip', 'link', 'set', 'lo', 'up']);
  const id = engineId(`/var/run/netns/${LH}`);
  const out = { count: COUNT, inFlight: IN_FLIGHT, modes: {}, engine: {}, engineId: id };
  for (const who of order(0)) {
    const tag = `l${who}`;
    const list = lists(tag, tmp, { ref: 0, exec: 1, engine: 2 }[who], 184).podman;
    const netd = join(tmp, `netd-${tag}`);
    mkdirSync(netd, { recursive: true });
    writeFileSync(join(netd, 'podman.conflist'), JSON.stringify(list));
    const ns = (i) => `${H}-L${who[0]}${i}`;
    const env = (cid, i) => ({
      PATH: process.env.PATH, ...modeEnv(who), NETCONFPATH: netd, CNI_PATH: who === 'ref' ? REF : OURS, CNI_CACHEDIR: join(tmp, `cache-${tag}`),
      CNI_CONTAINERID: cid, CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAME=${cid}`, XDG_RUNTIME_DIR: join(tmp, `xdg-${tag}`),
      CAP_ARGS: JSON.stringify({ portMappings: [{ hostPort: 41000 + i, containerPort: 80, protocol: 'tcp' }], aliases: { [list.name]: [`a${i}`] } }),
    });
    const cnitool = (cmd, i, cid) => run(['nsenter', `--net=/var/run/netns/${LH}`, CNITOOL, cmd, list.name, `/var/run/netns/${ns(i)}`], env(cid, i));
    const names = Array.from({ length: COUNT + 4 }, (_, i) => ns(i));
    batchNetns('add', names);
    try {
      if (who === 'engine') {
        // A fresh engine for this load (its VmHWM is the load's), warm before timing.
        stopEngine(id, exes);
        ensureEngine(id, ['nsenter', `--net=/var/run/netns/${LH}`]);
      }
      // Warm-up, every mode alike: 4 containers, 4 in flight, ADD then DEL (untimed).
      for (const cmd of ['add', 'del']) {
        const w = await pool(4, 4, (k) => cnitool(cmd, COUNT + k, `lw${who}${k}`));
        const bad = w.find((r) => r.code !== 0);
        if (bad) throw new Error(`load warm-up ${cmd} (${who}) failed: ${bad.out.trim().slice(0, 300)}`);
      }
      const since = Date.now();
      const m = {};
      for (const cmd of ['add', 'del']) {
        if (stopped()) throw new Error('interrupted');
        const t0 = performance.now();
        const runs = await pool(COUNT, IN_FLIGHT, (i) => cnitool(cmd, i, `ld${who}${i}`));
        const wallMs = performance.now() - t0;
        const failed = runs.filter((r) => r.code !== 0);
        const ms = runs.map((r) => r.ms);
        m[cmd] = { wallMs, perSec: (COUNT / wallMs) * 1000, median: median(ms), p95: percentile(ms, 95), max: Math.max(...ms), failed: failed.length, firstError: failed[0]?.out.trim().slice(0, 200) };
      }
      if (who === 'engine') {
        const pid = enginePid(id);
        const lines = engineLog(id, since - 1000);
        for (const cmd of ['add', 'del']) {
          const per = new Map();
          const plugins = new Map();
          for (const l of lines) {
            if (l.command !== cmd.toUpperCase() || !new RegExp(`^ld${who}\\d+$`).test(l.container)) continue;
            per.set(l.container, (per.get(l.container) ?? 0) + l.ms);
            plugins.set(l.plugin, [...(plugins.get(l.plugin) ?? []), l.ms]);
          }
          m[cmd].inEngine = median([...per.values()]);
          m[cmd].served = per.size;
          m[cmd].perPlugin = Object.fromEntries([...plugins].map(([p, xs]) => [p, median(xs)]));
        }
        out.engineEvents = engineEvents(id, since).filter((e) => !/^engine \d+ (started|draining|exits)/.test(e));
        if (pid) {
          const mem = memoryOf(pid);
          sleep(10_000);
          out.engine = { pid, hwm: mem.hwm, rss: mem.rss, idleRss: memoryOf(pid).rss, idleAfterS: 10 };
        }
      }
      out.modes[who] = m;
    } finally {
      batchNetns('del', names);
    }
  }
  return out;
}
