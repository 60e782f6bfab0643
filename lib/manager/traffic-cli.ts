import { createServer } from 'node:http';
import { join } from 'node:path';
import { writeSync } from 'node:fs';
import { ensureSystemChains, openDb, TrafficMonitor, type Instance, type Period, type Usage } from './traffic.js';
import type { CniManager, NetworkList } from './network.js';
import { stdHashHex } from '../iptables/stdhash.js';

/** The instances of a list that carry traffic-accounting, from the result cache. */
export function instancesOf(list: NetworkList, mgr: CniManager, limits: Record<string, { download?: number; upload?: number }>): Instance[] {
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
    const h = stdHashHex(id);
    out.push({ id, ip, inChain: `AOS_${h}_IN`, outChain: `AOS_${h}_OUT`, downloadLimit: limits[id]?.download, uploadLimit: limits[id]?.upload });
  }
  return out;
}

function table(rows: Usage[]): string {
  const head = ['instance', 'download', 'upload', 'limit (down/up)', 'state'];
  const lines = rows.map((u) => [u.id, String(u.download), String(u.upload), `${u.downloadLimit ?? '-'}/${u.uploadLimit ?? '-'}`, u.blocked ? 'BLOCKED' : 'ok']);
  const w = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  return [head, ...lines].map((l) => l.map((c, i) => c.padEnd(w[i])).join('  ').trimEnd()).join('\n') + '\n';
}

export async function trafficCommand(command: 'traffic' | 'serve', list: NetworkList, mgr: CniManager, opts: Record<string, string>): Promise<number> {
  const db = await openDb(opts.db ?? join(mgr.cache.dir, 'traffic.db'));
  const limits = opts.limits ? (JSON.parse(opts.limits) as Record<string, { download?: number; upload?: number }>) : {};
  const monitor = new TrafficMonitor(db, (opts.period ?? 'day') as Period);
  try {
    await ensureSystemChains();
    if (command === 'traffic') {
      const instances = instancesOf(list, mgr, limits);
      const t0 = performance.now();
      const usage = await monitor.collect(instances);
      process.stderr.write(`collected ${instances.length} instances in ${(performance.now() - t0).toFixed(1)} ms\n`);
      writeSync(1, table(usage));
      return 0;
    }
    let last: Usage[] = [];
    let collectMs = 0;
    const tick = async () => {
      const t0 = performance.now();
      last = await monitor.collect(instancesOf(list, mgr, limits));
      collectMs = performance.now() - t0;
    };
    await tick();
    if (opts['metrics-port']) {
      createServer((_req, res) => {
        const m = [
          '# TYPE cni_instance_download_bytes gauge',
          ...last.map((u) => `cni_instance_download_bytes{instance="${u.id}"} ${u.download}`),
          '# TYPE cni_instance_upload_bytes gauge',
          ...last.map((u) => `cni_instance_upload_bytes{instance="${u.id}"} ${u.upload}`),
          '# TYPE cni_instance_blocked gauge',
          ...last.map((u) => `cni_instance_blocked{instance="${u.id}"} ${u.blocked ? 1 : 0}`),
          '# TYPE cni_traffic_collect_seconds gauge',
          `cni_traffic_collect_seconds ${(collectMs / 1000).toFixed(4)}`,
        ];
        res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' }).end(`${m.join('\n')}\n`);
      }).listen(Number(opts['metrics-port']), '127.0.0.1');
    }
    const every = Number(opts.interval ?? 60) * 1000;
    for (;;) {
      await new Promise((r) => setTimeout(r, every));
      await tick();
    }
  } finally {
    if (command === 'traffic') db.close();
  }
}
