import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import { writeSync } from 'node:fs';
import { z } from 'zod';
import { ensureSystemChains, openDb, period, TrafficMonitor, type Instance, type Usage } from './traffic.js';
import type { CniManager, NetworkList } from './network.js';
import { chainsFor, DEFAULT_BACKEND } from '../lib/pf/accounting/layout.js';
import { backendName, chooseBackend, type Backend } from '../lib/pf/backend.js';
import { CniError } from '../lib/cni/errors.js';

const limit = z.object({ download: z.number().int().nonnegative().optional(), upload: z.number().int().nonnegative().optional() }).strict();
export type Limit = z.infer<typeof limit>;

/**
 * `--limits` JSON into a Map: instance ids are the operator's input and a
 * plain object would answer `constructor` or `__proto__` from its prototype.
 */
export function parseLimits(text: string | undefined): Map<string, Limit> {
  const out = new Map<string, Limit>();
  if (text === undefined) return out;
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new Error(`--limits is not JSON: ${(err as Error).message}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new Error('--limits must be an object of instance id → {download, upload}');
  for (const [id, v] of Object.entries(raw)) {
    const r = limit.safeParse(v);
    if (!r.success) throw new Error(`--limits for ${JSON.stringify(id)}: ${r.error.issues.map((i) => `${i.path.join('.') || 'value'}: ${i.message}`).join('; ')}`);
    out.set(id, r.data);
  }
  return out;
}

/** The options of `traffic` and `serve`, as given on the command line (strings). */
const trafficOptions = z.object({
  db: z.string().min(1).optional(),
  period: period.default('day'),
  interval: z.coerce.number().positive().max(86_400).default(60),
  'metrics-port': z.coerce.number().int().min(1).max(65_535).optional(),
  limits: z.string().optional(),
  /** Where the monitor's system counters go (instances are read where their plugin put them). */
  backend: backendName.optional(),
});

/**
 * The backend a traffic-accounting entry's counters are in, decided as the
 * plugin decided it: its `backend` when configured, else the plugin's
 * default where usable, else the other one.
 */
export function backendOf(entry: Record<string, unknown> | undefined): Backend {
  const configured = backendName.safeParse(entry?.backend);
  if (configured.success) return configured.data;
  try {
    return chooseBackend(undefined, DEFAULT_BACKEND, 'traffic-accounting backend');
  } catch {
    return DEFAULT_BACKEND; // neither tool: the read fails and says so
  }
}

/**
 * The instances of a list that carry traffic-accounting, from the result
 * cache, each with the backend its counters are in: read from the config
 * the instance was added with (the cache keeps it), so a list whose
 * backend changed still has its older instances read where they are.
 */
export function instancesOf(list: NetworkList, mgr: CniManager, limits: ReadonlyMap<string, Limit>): Instance[] {
  const out: Instance[] = [];
  for (const e of mgr.cache.list(list.name)) {
    let cfg: NetworkList;
    try {
      cfg = JSON.parse(Buffer.from(e.config, 'base64').toString()) as NetworkList;
    } catch {
      continue;
    }
    const ta = cfg.plugins.find((p) => p.type === 'traffic-accounting');
    const ip = ((e.result?.ips as { address: string }[] | undefined) ?? []).map((x) => x.address.split('/')[0]).find((x) => !x.includes(':'));
    if (!ta || !ip) continue;
    const id = typeof ta.instanceId === 'string' ? ta.instanceId : e.containerId;
    const c = chainsFor(id);
    out.push({ id, ip, inChain: c.in, outChain: c.out, downloadLimit: limits.get(id)?.download, uploadLimit: limits.get(id)?.upload, backend: backendOf(ta) });
  }
  return out;
}

/** An id as one table cell: control characters (a newline would start a fake row) shown escaped. */
const cell = (s: string) => (/[\x00-\x1f\x7f]/.test(s) ? JSON.stringify(s) : s);

function table(rows: Usage[]): string {
  const head = ['instance', 'download', 'upload', 'limit (down/up)', 'state'];
  const lines = rows.map((u) => [cell(u.id), String(u.download), String(u.upload), `${u.downloadLimit ?? '-'}/${u.uploadLimit ?? '-'}`, u.blocked ? 'BLOCKED' : 'ok']);
  const w = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  return [head, ...lines].map((l) => l.map((c, i) => c.padEnd(w[i])).join('  ').trimEnd()).join('\n') + '\n';
}

/**
 * A label value in the Prometheus text exposition format: backslash, double
 * quote and line feed are the three characters it escapes. Unescaped, an
 * instance id with `"` and a newline ended its series and wrote another.
 */
export function escapeLabelValue(v: string): string {
  return v.replace(/[\\"\n]/g, (c) => (c === '\n' ? '\\n' : `\\${c}`));
}

export interface MetricsState {
  /** The last successful collection's rows. */
  usage: Usage[];
  collectMs: number;
  /** Collections that failed since serve started. */
  failures: number;
  /** Unix time (ms) of the last successful collection, 0 before the first. */
  lastSuccess: number;
}

export function metricsText(s: MetricsState): string {
  const series = (name: string, help: string, value: (u: Usage) => number) => [
    `# HELP ${name} ${help}`,
    `# TYPE ${name} gauge`,
    ...s.usage.map((u) => `${name}{instance="${escapeLabelValue(u.id)}"} ${value(u)}`),
  ];
  return [
    ...series('cni_instance_download_bytes', 'Bytes received by the instance in the current accounting period.', (u) => u.download),
    ...series('cni_instance_upload_bytes', 'Bytes sent by the instance in the current accounting period.', (u) => u.upload),
    ...series('cni_instance_blocked', '1 while the instance is over its limit and its traffic dropped.', (u) => (u.blocked ? 1 : 0)),
    '# HELP cni_traffic_collect_seconds Duration of the last successful collection.',
    '# TYPE cni_traffic_collect_seconds gauge',
    `cni_traffic_collect_seconds ${(s.collectMs / 1000).toFixed(4)}`,
    '# HELP cni_traffic_collect_failures_total Collections that failed since serve started.',
    '# TYPE cni_traffic_collect_failures_total counter',
    `cni_traffic_collect_failures_total ${s.failures}`,
    '# HELP cni_traffic_last_success_timestamp_seconds Unix time of the last successful collection (0: none yet).',
    '# TYPE cni_traffic_last_success_timestamp_seconds gauge',
    `cni_traffic_last_success_timestamp_seconds ${(s.lastSuccess / 1000).toFixed(3)}`,
  ].join('\n') + '\n';
}

/** One line for the log: the first line of an error's details (iptables-restore's input stays out). */
function describe(err: unknown): string {
  if (err instanceof CniError) return err.details ? `${err.msg}: ${err.details.split('\n')[0]}` : err.msg;
  return (err instanceof Error ? err.message : String(err)).split('\n')[0];
}

const log = (msg: string) => process.stderr.write(`cni-manager serve: ${msg}\n`);

/** Listens on 127.0.0.1:port; a port that cannot be had is a plain Error with a clear message. */
function listen(server: Server, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      if (err.code === 'EADDRINUSE') reject(new Error(`metrics port ${port} on 127.0.0.1 is already in use`));
      else if (err.code === 'EACCES') reject(new Error(`not allowed to listen on 127.0.0.1:${port}`));
      else reject(new Error(`cannot listen on 127.0.0.1:${port}: ${err.message}`));
    };
    server.once('error', onError);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', onError);
      resolve();
    });
  });
}

export async function trafficCommand(command: 'traffic' | 'serve', list: NetworkList, mgr: CniManager, argOpts: Record<string, string>): Promise<number> {
  const parsed = trafficOptions.safeParse(argOpts);
  if (!parsed.success) {
    const i = parsed.error.issues[0];
    throw new Error(`--${i.path.join('.')}: ${i.message}`);
  }
  const opts = parsed.data;
  const limits = parseLimits(opts.limits);
  // The system counters: --backend, else the list's traffic-accounting backend (as its plugin decides it).
  const system = opts.backend ?? backendOf(list.plugins.find((p) => p.type === 'traffic-accounting') as Record<string, unknown> | undefined);
  const db = await openDb(opts.db ?? join(mgr.cache.dir, 'traffic.db'));
  const monitor = new TrafficMonitor(db, opts.period, undefined, { system });
  try {
    if (command === 'traffic') {
      await ensureSystemChains(system);
      const instances = instancesOf(list, mgr, limits);
      const t0 = performance.now();
      const usage = await monitor.collect(instances);
      process.stderr.write(`collected ${instances.length} instances in ${(performance.now() - t0).toFixed(1)} ms\n`);
      writeSync(1, table(usage));
      return 0;
    }
    return await serve(list, mgr, monitor, limits, opts.interval * 1000, opts['metrics-port'], system);
  } finally {
    db.close();
  }
}

/**
 * `serve`: the metrics port first (a taken port is a clear error before any
 * iptables work), then a collection every interval. A failed collection
 * (iptables-restore failing, SQLite busy, the system chains gone) is logged
 * and retried with backoff — 1 s, 2 s, 4 s … up to the larger of the
 * interval and a minute — while the metrics keep the last good numbers and
 * count the failures. SIGTERM or SIGINT ends it after the collection in
 * progress, exit 0.
 */
async function serve(list: NetworkList, mgr: CniManager, monitor: TrafficMonitor, limits: ReadonlyMap<string, Limit>, everyMs: number, port: number | undefined, system: Backend): Promise<number> {
  const state: MetricsState = { usage: [], collectMs: 0, failures: 0, lastSuccess: 0 };
  let server: Server | undefined;
  if (port !== undefined) {
    server = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' }).end(metricsText(state));
    });
    await listen(server, port);
    server.on('error', (err) => log(`metrics server: ${err.message}`));
  }
  let stopping = false;
  let wake = () => {};
  const stop = () => {
    stopping = true;
    wake();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  let systemChains = false;
  let inARow = 0;
  /** One collection; the delay before the next. */
  const tick = async (): Promise<number> => {
    try {
      // Made at start and again should someone remove them: the monitor owns them.
      if (!systemChains) await ensureSystemChains(system);
      systemChains = true;
      const t0 = performance.now();
      const usage = await monitor.collect(instancesOf(list, mgr, limits));
      state.collectMs = performance.now() - t0;
      state.usage = usage;
      state.lastSuccess = Date.now();
      systemChains = usage.some((u) => u.id === '(system)');
      if (inARow > 0) log(`collection recovered after ${inARow} failed attempt${inARow > 1 ? 's' : ''}`);
      inARow = 0;
      return everyMs;
    } catch (err) {
      inARow++;
      state.failures++;
      const delay = Math.min(1000 * 2 ** Math.min(inARow - 1, 20), Math.max(everyMs, 60_000));
      log(`collection failed (${inARow} in a row): ${describe(err)}; next attempt in ${delay / 1000} s`);
      return delay;
    }
  };
  try {
    let delay = await tick();
    while (!stopping) {
      await new Promise<void>((r) => {
        const t = setTimeout(r, delay);
        wake = () => {
          clearTimeout(t);
          r();
        };
      });
      if (stopping) break;
      delay = await tick();
    }
    return 0;
  } finally {
    process.off('SIGTERM', stop);
    process.off('SIGINT', stop);
    server?.close();
    server?.closeAllConnections();
  }
}
