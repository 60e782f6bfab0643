import { DatabaseSync } from 'node:sqlite';
import { trace } from '../cni/trace.js';
import { apply, Batch, save, transaction, type Rule } from '../iptables/index.js';

/**
 * The traffic monitor of the Aos service manager: per-instance download
 * and upload totals read from the accounting chains' byte counters (one
 * `iptables-save -c` per collection, whatever the number of instances),
 * kept in SQLite (WAL) so they survive restarts and chain re-creation,
 * reset at the start of each accounting period (UTC), and enforced: an
 * instance over its limit has its counting rule swapped for DROP until the
 * next period.
 */
export type Period = 'minute' | 'hour' | 'day' | 'month' | 'year';

/** Start of the accounting period containing `t` (UTC). */
export function periodStart(t: Date, period: Period): number {
  const y = t.getUTCFullYear();
  const mo = t.getUTCMonth();
  const d = t.getUTCDate();
  switch (period) {
    case 'minute':
      return Date.UTC(y, mo, d, t.getUTCHours(), t.getUTCMinutes());
    case 'hour':
      return Date.UTC(y, mo, d, t.getUTCHours());
    case 'day':
      return Date.UTC(y, mo, d);
    case 'month':
      return Date.UTC(y, mo, 1);
    case 'year':
      return Date.UTC(y, 0, 1);
  }
}

export interface Instance {
  id: string;
  ip: string;
  inChain: string;
  outChain: string;
  downloadLimit?: number;
  uploadLimit?: number;
}

export interface Usage {
  id: string;
  download: number;
  upload: number;
  downloadLimit?: number;
  uploadLimit?: number;
  blocked: boolean;
}

/** The little of SQLite the monitor needs (node:sqlite's DatabaseSync has it). */
export interface Db {
  exec(sql: string): void;
  prepare(sql: string): { run(...a: unknown[]): unknown; get(...a: unknown[]): unknown; all(...a: unknown[]): unknown[] };
  close(): void;
}

export async function openDb(path: string): Promise<Db> {
  const db = new DatabaseSync(path) as unknown as Db;
  db.exec('PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;');
  // traffic: the total of a chain in the period that started at `time`; counters: the last raw counter read.
  db.exec(`CREATE TABLE IF NOT EXISTS traffic (chain TEXT PRIMARY KEY, time INTEGER NOT NULL, value INTEGER NOT NULL);
           CREATE TABLE IF NOT EXISTS counters (chain TEXT PRIMARY KEY, last INTEGER NOT NULL);
           CREATE TABLE IF NOT EXISTS blocked (chain TEXT PRIMARY KEY, time INTEGER NOT NULL);`);
  return db;
}

export const SYSTEM_IN = 'AOS_SYSTEM_IN';
export const SYSTEM_OUT = 'AOS_SYSTEM_OUT';
export const LOCAL_RANGES = ['127.0.0.0/8', '10.0.0.0/8', '192.168.0.0/16', '172.16.0.0/12'];

/**
 * The host's own traffic with the outside: AOS_SYSTEM_IN (from INPUT) and
 * AOS_SYSTEM_OUT (from OUTPUT), RETURN for the local ranges, then a rule
 * without match or target whose counter is the total.
 */
export async function ensureSystemChains(): Promise<void> {
  await transaction(4, 'filter', (p) => {
    for (const [chain, parent, flag] of [[SYSTEM_IN, 'INPUT', '-s'], [SYSTEM_OUT, 'OUTPUT', '-d']] as const) {
      p.ensureChain(chain);
      if (p.rulesOf(chain).length === 0) {
        for (const r of LOCAL_RANGES) p.appendUnique({ chain, spec: [flag, r, '-j', 'RETURN'] });
        p.appendUnique({ chain, spec: [] });
      }
      p.insertUnique({ chain: parent, spec: ['-j', chain] });
    }
  });
}

export async function removeSystemChains(): Promise<void> {
  await transaction(4, 'filter', (p) => p.removeChain(SYSTEM_IN).removeChain(SYSTEM_OUT));
}

const countRule = (chain: string, flag: '-s' | '-d', ip: string): Rule => ({ chain, spec: [flag, `${ip}/32`] });
const dropRule = (chain: string, flag: '-s' | '-d', ip: string): Rule => ({ chain, spec: [flag, `${ip}/32`, '-j', 'DROP'] });

/** The two iptables operations the monitor uses (unit tests give a fake). */
export interface Iptables {
  save: typeof save;
  apply: typeof apply;
}

export class TrafficMonitor {
  private readonly q;

  constructor(
    private readonly db: Db,
    private readonly period: Period = 'day',
    private readonly now: () => Date = () => new Date(),
    private readonly ipt: Iptables = { save, apply },
  ) {
    // Prepared once: a collection touches every chain.
    this.q = {
      block: db.prepare('INSERT OR REPLACE INTO blocked (chain, time) VALUES (?, ?)'),
      unblock: db.prepare('DELETE FROM blocked WHERE chain = ?'),
      allLast: db.prepare('SELECT chain, last FROM counters'),
      allTotals: db.prepare('SELECT chain, time, value FROM traffic'),
      // One statement per table and collection, rows as JSON (SQLite's json_each).
      putLast: db.prepare("INSERT INTO counters (chain, last) SELECT value->>'$[0]', value->>'$[1]' FROM json_each(?) WHERE true ON CONFLICT(chain) DO UPDATE SET last = excluded.last"),
      putTotals: db.prepare("INSERT INTO traffic (chain, time, value) SELECT value->>'$[0]', value->>'$[1]', value->>'$[2]' FROM json_each(?) WHERE true ON CONFLICT(chain) DO UPDATE SET time = excluded.time, value = excluded.value"),
    };
  }

  /** Reads every counter once and updates totals, periods and limits. */
  async collect(instances: Instance[]): Promise<Usage[]> {
    trace('collect: start');
    const table = await this.ipt.save(4, 'filter', { counters: true, keep: (line) => line.includes(' AOS_') });
    trace('collect: saved and parsed');
    const start = periodStart(this.now(), this.period);
    const byChain = new Map<string, Rule[]>();
    for (const r of table.rules) {
      const list = byChain.get(r.chain) ?? [];
      list.push(r);
      byChain.set(r.chain, list);
    }
    const batch = new Batch('filter');
    const usage: Usage[] = [];
    this.db.exec('BEGIN IMMEDIATE'); // one commit for the whole collection
    try {
    const lastMap = new Map((this.q.allLast.all() as { chain: string; last: number }[]).map((r) => [r.chain, Number(r.last)]));
    const totMap = new Map((this.q.allTotals.all() as { chain: string; time: number; value: number }[]).map((r) => [r.chain, { time: Number(r.time), value: Number(r.value) }]));
    const newLast = new Map<string, number>();
    const newTot = new Map<string, [number, number]>();
    for (const inst of instances) {
      const dirs = [
        { chain: inst.inChain, flag: '-d' as const, limit: inst.downloadLimit },
        { chain: inst.outChain, flag: '-s' as const, limit: inst.uploadLimit },
      ];
      const totals: number[] = [];
      let blocked = false;
      for (const d of dirs) {
        const rules = byChain.get(d.chain) ?? [];
        const counting = rules.find((r) => r.spec.length === 2 && r.spec[0] === d.flag && r.spec[1] === `${inst.ip}/32`);
        const dropping = rules.find((r) => r.spec.join(' ') === dropRule(d.chain, d.flag, inst.ip).spec.join(' '));
        const raw = Number(counting?.counters?.bytes ?? 0n);
        const last = lastMap.get(d.chain);
        // A counter below the last reading means the chain was re-created: count from zero.
        const delta = counting ? (last !== undefined && raw >= last ? raw - last : raw) : 0;
        newLast.set(d.chain, counting ? raw : 0);
        const row = totMap.get(d.chain);
        const value = (row && row.time === start ? row.value : 0) + delta; // a new period starts from zero
        newTot.set(d.chain, [start, value]);
        totals.push(value);
        const over = d.limit !== undefined && d.limit > 0 && value > d.limit;
        if (over && counting && !dropping) {
          // Swap the counting rule for DROP (the reading above already took its bytes).
          batch.delete(counting).append(dropRule(d.chain, d.flag, inst.ip));
          this.q.block.run(d.chain, start);
          newLast.set(d.chain, 0);
        } else if (!over && dropping) {
          // A new period (or a raised limit): count again.
          batch.delete(dropping).append(countRule(d.chain, d.flag, inst.ip));
          this.q.unblock.run(d.chain);
          newLast.set(d.chain, 0);
        }
        blocked ||= (over && counting !== undefined) || (over && dropping !== undefined);
      }
      usage.push({ id: inst.id, download: totals[0], upload: totals[1], downloadLimit: inst.downloadLimit, uploadLimit: inst.uploadLimit, blocked });
    }
    // The host's own traffic, when the system chains are there.
    if (byChain.has(SYSTEM_IN) || byChain.has(SYSTEM_OUT)) {
      const totals = [SYSTEM_IN, SYSTEM_OUT].map((chain) => {
        const raw = Number((byChain.get(chain) ?? []).find((r) => r.spec.length === 0)?.counters?.bytes ?? 0n);
        const last = lastMap.get(chain);
        const delta = last !== undefined && raw >= last ? raw - last : raw;
        newLast.set(chain, raw);
        const row = totMap.get(chain);
        const value = (row && row.time === start ? row.value : 0) + delta;
        newTot.set(chain, [start, value]);
        return value;
      });
      usage.push({ id: '(system)', download: totals[0], upload: totals[1], blocked: false });
    }
    this.q.putLast.run(JSON.stringify([...newLast]));
    this.q.putTotals.run(JSON.stringify([...newTot].map(([c, [t, v]]) => [c, t, v])));
    this.db.exec('COMMIT');
    trace('collect: totals stored');
    } catch (err) {
      this.db.exec('ROLLBACK');
      throw err;
    }
    await this.ipt.apply(4, [batch]);
    return usage;
  }
}
