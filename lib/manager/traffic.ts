import { DatabaseSync } from 'node:sqlite';
import { apply, Batch, save, type Rule } from '../iptables/index.js';

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

const countRule = (chain: string, flag: '-s' | '-d', ip: string): Rule => ({ chain, spec: [flag, `${ip}/32`] });
const dropRule = (chain: string, flag: '-s' | '-d', ip: string): Rule => ({ chain, spec: [flag, `${ip}/32`, '-j', 'DROP'] });

/** The two iptables operations the monitor uses (unit tests give a fake). */
export interface Iptables {
  save: typeof save;
  apply: typeof apply;
}

export class TrafficMonitor {
  constructor(
    private readonly db: Db,
    private readonly period: Period = 'day',
    private readonly now: () => Date = () => new Date(),
    private readonly ipt: Iptables = { save, apply },
  ) {}

  /** Reads every counter once and updates totals, periods and limits. */
  async collect(instances: Instance[]): Promise<Usage[]> {
    const table = await this.ipt.save(4, 'filter', { counters: true });
    const start = periodStart(this.now(), this.period);
    const byChain = new Map<string, Rule[]>();
    for (const r of table.rules) {
      const list = byChain.get(r.chain) ?? [];
      list.push(r);
      byChain.set(r.chain, list);
    }
    const batch = new Batch('filter');
    const usage: Usage[] = [];
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
        const last = (this.db.prepare('SELECT last FROM counters WHERE chain = ?').get(d.chain) as { last: number } | undefined)?.last;
        // A counter below the last reading means the chain was re-created: count from zero.
        const delta = counting ? (last !== undefined && raw >= last ? raw - last : raw) : 0;
        this.db.prepare('INSERT INTO counters (chain, last) VALUES (?, ?) ON CONFLICT(chain) DO UPDATE SET last = excluded.last').run(d.chain, counting ? raw : 0);
        const row = this.db.prepare('SELECT time, value FROM traffic WHERE chain = ?').get(d.chain) as { time: number; value: number } | undefined;
        const value = (row && row.time === start ? row.value : 0) + delta; // a new period starts from zero
        this.db.prepare('INSERT INTO traffic (chain, time, value) VALUES (?, ?, ?) ON CONFLICT(chain) DO UPDATE SET time = excluded.time, value = excluded.value').run(d.chain, start, value);
        totals.push(value);
        const over = d.limit !== undefined && d.limit > 0 && value > d.limit;
        if (over && counting && !dropping) {
          // Swap the counting rule for DROP (the reading above already took its bytes).
          batch.delete(counting).append(dropRule(d.chain, d.flag, inst.ip));
          this.db.prepare('INSERT OR REPLACE INTO blocked (chain, time) VALUES (?, ?)').run(d.chain, start);
          this.db.prepare('UPDATE counters SET last = 0 WHERE chain = ?').run(d.chain);
        } else if (!over && dropping) {
          // A new period (or a raised limit): count again.
          batch.delete(dropping).append(countRule(d.chain, d.flag, inst.ip));
          this.db.prepare('DELETE FROM blocked WHERE chain = ?').run(d.chain);
          this.db.prepare('UPDATE counters SET last = 0 WHERE chain = ?').run(d.chain);
        }
        blocked ||= (over && counting !== undefined) || (over && dropping !== undefined);
      }
      usage.push({ id: inst.id, download: totals[0], upload: totals[1], downloadLimit: inst.downloadLimit, uploadLimit: inst.uploadLimit, blocked });
    }
    await this.ipt.apply(4, [batch]);
    return usage;
  }
}
