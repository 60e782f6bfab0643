import { mkdtempSync, rmSync } from 'node:fs';
import { DatabaseSync } from 'node:sqlite';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openDb, TrafficMonitor, type Db, type Iptables } from '../../manager/traffic.js';
import { escapeLabelValue, metricsText, parseLimits } from '../../manager/traffic-cli.js';
import { CniError, ErrorCode } from '../../lib/cni/errors.js';
import { parseSave, type Batch, type TableState } from '../../lib/iptables/index.js';
import { parseMetrics } from '../helpers/prometheus.js';

// The monitor's bookkeeping around a failing iptables-restore and a busy
// database, and the metrics text. iptables is a fake here (the failing
// restore is also reproduced for real, with the xtables lock held, in
// test/integration/traffic-monitor.test.ts); SQLite is real.

/** An in-memory filter table: counters set by the test, batches applied unless `failApply`; records the lock. */
class FakeTable implements Iptables {
  bytes = { in: 0, out: 0 };
  rules = new Set(['-A AOS_h_IN -d 10.0.0.2/32', '-A AOS_h_OUT -s 10.0.0.2/32']);
  failApply = false;
  locked = false;
  /** What was done outside the lock (should stay empty). */
  unlocked: string[] = [];
  lock = async <T>(fn: () => Promise<T>): Promise<T> => {
    this.locked = true;
    try {
      return await fn();
    } finally {
      this.locked = false;
    }
  };
  save = async (): Promise<TableState> => {
    if (!this.locked) this.unlocked.push('save');
    const lines = [...this.rules].map((r) => `[1:${r.includes('_IN') ? this.bytes.in : this.bytes.out}] ${r}`);
    return parseSave(`*filter\n:AOS_h_IN - [0:0]\n:AOS_h_OUT - [0:0]\n${lines.join('\n')}\nCOMMIT\n`).get('filter')!;
  };
  apply = async (_f: number, batches: Batch[]) => {
    if (!this.locked) this.unlocked.push('apply');
    if (batches.every((b) => b.empty)) return;
    if (this.failApply) throw new CniError(ErrorCode.IptablesFailed, 'iptables-restore failed', 'Another app is currently holding the xtables lock.');
    for (const b of batches) {
      for (const line of b.text().split('\n')) {
        if (line.startsWith('-D ')) this.rules.delete(`-A ${line.slice(3)}`);
        if (line.startsWith('-A ')) this.rules.add(line);
      }
    }
  };
}

const rows = (db: Db) => ({
  traffic: db.prepare('SELECT chain, time, value FROM traffic ORDER BY chain').all(),
  counters: db.prepare('SELECT chain, last FROM counters ORDER BY chain').all(),
  blocked: db.prepare('SELECT chain, time FROM blocked ORDER BY chain').all(),
});

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'cnits-traffic-unit-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('traffic monitor: apply first, commit after', () => {
  const inst = { id: 'i', ip: '10.0.0.2', inChain: 'AOS_h_IN', outChain: 'AOS_h_OUT' };
  const now = () => new Date(Date.UTC(2026, 0, 1, 10, 0, 10));

  it('a failed apply leaves totals, baselines and block states as they were; the next collection counts once', async () => {
    const db = await openDb(join(dir, 'traffic.db'));
    const ipt = new FakeTable();
    const mon = new TrafficMonitor(db, 'day', now, ipt);
    ipt.bytes = { in: 300, out: 500 };
    expect((await mon.collect([inst]))[0]).toMatchObject({ download: 300, upload: 500, blocked: false });
    const before = rows(db);

    ipt.failApply = true; // the swap for DROP cannot be applied
    await expect(mon.collect([{ ...inst, uploadLimit: 100 }])).rejects.toThrow(/iptables-restore failed/);
    expect(rows(db)).toEqual(before);
    expect(ipt.rules.has('-A AOS_h_OUT -s 10.0.0.2/32')).toBe(true);

    ipt.failApply = false;
    ipt.bytes = { in: 300, out: 800 }; // the same rule, 300 more bytes
    expect((await mon.collect([inst]))[0]).toMatchObject({ download: 300, upload: 800, blocked: false }); // not 500 + 800
    expect((await mon.collect([{ ...inst, uploadLimit: 100 }]))[0]).toMatchObject({ upload: 800, blocked: true });
    expect(ipt.rules.has('-A AOS_h_OUT -s 10.0.0.2/32 -j DROP')).toBe(true);
    expect(ipt.unlocked).toEqual([]); // save and apply both under the iptables lock
    db.close();
  });

  it('waits for another connection\'s write without failing; fails cleanly, changing nothing, when it lasts', async () => {
    const file = join(dir, 'traffic.db');
    const db = await openDb(file);
    const ipt = new FakeTable();
    const mon = new TrafficMonitor(db, 'day', now, ipt, 300);
    ipt.bytes = { in: 10, out: 20 };
    await mon.collect([inst]);
    const before = rows(db);
    const other = new DatabaseSync(file);
    other.exec('BEGIN IMMEDIATE');
    ipt.bytes = { in: 15, out: 25 };
    await expect(mon.collect([inst])).rejects.toThrow(/database is locked/);
    expect(rows(db)).toEqual(before);
    // Released while the collection waits: it goes through.
    const pending = mon.collect([inst]);
    setTimeout(() => other.exec('ROLLBACK'), 50);
    expect((await pending)[0]).toMatchObject({ download: 15, upload: 25 });
    other.close();
    db.close();
  });
});

describe('metrics text', () => {
  const state = (ids: string[]) => ({
    usage: ids.map((id, i) => ({ id, download: 100 + i, upload: 200 + i, blocked: i === 0 })),
    collectMs: 12.5,
    failures: 3,
    lastSuccess: 1_700_000_000_000,
  });

  it('escapes backslash, double quote and newline in label values', () => {
    expect(escapeLabelValue('a\\b"c\nd')).toBe('a\\\\b\\"c\\nd');
    expect(escapeLabelValue('plain-id_1')).toBe('plain-id_1');
  });

  it('an id that tries to close its series and start another stays one series', () => {
    const evil = 'x\\"} 1\ncni_instance_download_bytes{instance="forged"} 999\n# ';
    const samples = parseMetrics(metricsText(state([evil, 'inst-2'])));
    const down = samples.filter((s) => s.name === 'cni_instance_download_bytes');
    expect(down.map((s) => [s.labels.instance, s.value])).toEqual([[evil, '100'], ['inst-2', '101']]);
    expect(samples.filter((s) => s.labels.instance === 'forged')).toEqual([]);
    expect(samples.find((s) => s.name === 'cni_traffic_collect_failures_total')?.value).toBe('3');
    expect(samples.find((s) => s.name === 'cni_traffic_collect_seconds')?.value).toBe('0.0125');
  });
});

describe('--limits', () => {
  it('is a Map: an instance named like an Object.prototype member gets its own limit or none', () => {
    const m = parseLimits('{"constructor":{"upload":5},"a":{"download":1}}');
    expect(m.get('constructor')).toEqual({ upload: 5 });
    expect(m.get('toString')).toBeUndefined();
    expect(parseLimits(undefined).size).toBe(0);
    expect(() => parseLimits('{"a":{"download":-1}}')).toThrow(/--limits for "a"/);
    expect(() => parseLimits('[1]')).toThrow(/must be an object/);
  });
});
