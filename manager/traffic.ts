import { closeSync, constants, fchmodSync, fstatSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { z } from 'zod';
import { trace } from '../lib/cni/trace.js';
import { apply, Batch, save, transaction, withIptablesLock, type Rule } from '../lib/iptables/index.js';

/**
 * The traffic monitor of the Aos service manager: per-instance download
 * and upload totals read from the accounting chains' byte counters (one
 * `iptables-save -c` per collection, whatever the number of instances),
 * kept in SQLite (WAL) so they survive restarts and chain re-creation,
 * reset at the start of each accounting period (UTC), and enforced: an
 * instance over its limit has its counting rule swapped for DROP until the
 * next period.
 */
export const period = z.enum(['minute', 'hour', 'day', 'month', 'year']);
export type Period = z.infer<typeof period>;

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

/**
 * Makes `path` a regular file of ours with mode 0600 (creating it when
 * `create`): the totals and limits are the operator's business, and a file
 * another user owns, or a symlink, could be swapped under us. Opened with
 * O_NOFOLLOW and checked through the fd, so what is checked is what is fixed.
 */
function ownPrivateFile(path: string, create: boolean): void {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDWR | constants.O_NOFOLLOW | constants.O_NONBLOCK | (create ? constants.O_CREAT : 0), 0o600);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (!create && code === 'ENOENT') return;
    if (code === 'ELOOP') throw new Error(`${path} is a symbolic link; refusing to use it`);
    throw err;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new Error(`${path} is not a regular file`);
    const uid = process.getuid?.();
    if (uid !== undefined && st.uid !== uid) throw new Error(`${path} belongs to uid ${st.uid}, not to us (uid ${uid}); refusing to use it`);
    if ((st.mode & 0o777) !== 0o600) fchmodSync(fd, 0o600);
  } finally {
    closeSync(fd);
  }
}

export async function openDb(path: string): Promise<Db> {
  if (path !== ':memory:' && path !== '') {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    // SQLite gives a new -wal and -shm the main file's mode (and owner), so
    // the main file decides; ones left by an older version are fixed too.
    ownPrivateFile(path, true);
    ownPrivateFile(`${path}-wal`, false);
    ownPrivateFile(`${path}-shm`, false);
  }
  const db = new DatabaseSync(path) as unknown as Db;
  // Opening may meet another monitor's write briefly; afterwards collect
  // waits for the write lock itself, without blocking the event loop.
  db.exec('PRAGMA busy_timeout=5000; PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;');
  // traffic: the total of a chain in the period that started at `time`; counters: the last raw counter read.
  db.exec(`CREATE TABLE IF NOT EXISTS traffic (chain TEXT PRIMARY KEY, time INTEGER NOT NULL, value INTEGER NOT NULL);
           CREATE TABLE IF NOT EXISTS counters (chain TEXT PRIMARY KEY, last INTEGER NOT NULL);
           CREATE TABLE IF NOT EXISTS blocked (chain TEXT PRIMARY KEY, time INTEGER NOT NULL);`);
  db.exec('PRAGMA busy_timeout=50');
  return db;
}

/** SQLITE_BUSY (and its extended codes): another connection holds the write lock. */
const isBusy = (err: unknown) => ((err as { errcode?: number }).errcode ?? 0) % 256 === 5;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

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

/** The iptables operations the monitor uses (unit tests give a fake). */
export interface Iptables {
  save: typeof save;
  apply: typeof apply;
  /** The per-namespace iptables lock (default withIptablesLock). */
  lock?: <T>(fn: () => Promise<T>) => Promise<T>;
}

export class TrafficMonitor {
  private readonly q;
  private readonly lock: <T>(fn: () => Promise<T>) => Promise<T>;

  constructor(
    private readonly db: Db,
    private readonly period: Period = 'day',
    private readonly now: () => Date = () => new Date(),
    private readonly ipt: Iptables = { save, apply },
    /** How long a collection waits for another connection's SQLite write lock before failing. */
    private readonly busyMs = 5000,
  ) {
    this.lock = ipt.lock ?? withIptablesLock;
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

  /** BEGIN IMMEDIATE, waiting (asynchronously) up to busyMs for another connection's write. */
  private async begin(): Promise<void> {
    const until = Date.now() + this.busyMs;
    for (let wait = 10; ; wait = Math.min(wait * 2, 250)) {
      try {
        this.db.exec('BEGIN IMMEDIATE');
        return;
      } catch (err) {
        if (!isBusy(err) || Date.now() >= until) throw err;
        await sleep(wait);
      }
    }
  }

  /**
   * Reads every counter once and updates totals, periods and limits.
   *
   * One cycle under two locks: SQLite's write lock, then the iptables lock
   * (every monitor takes them in this order and plugins take only the
   * second, so none waits for the other in a circle; a monitor waiting for
   * SQLite holds up no plugin). Under both: read the counters, stage the
   * new totals and baselines, apply the rule swaps, and only then commit.
   * A failed apply rolls everything back, so totals, baselines and block
   * states keep matching the rules that are still in place and the next
   * collection counts from there (committing first set the baseline of a
   * counting rule that stayed to 0, and the next collection counted its
   * bytes twice). Left: a COMMIT failing after a successful apply, which in
   * WAL with the write lock held takes an I/O error; then a swap is not
   * recorded, and the next collections undo it and count from the new rule
   * (bytes since the last commit go uncounted, none twice).
   */
  async collect(instances: Instance[]): Promise<Usage[]> {
    trace('collect: start');
    await this.begin();
    let committed = false;
    try {
      return await this.lock(async () => {
        const usage = await this.cycle(instances);
        this.db.exec('COMMIT');
        committed = true;
        trace('collect: totals stored');
        return usage;
      });
    } finally {
      if (!committed) {
        try {
          this.db.exec('ROLLBACK');
        } catch {
          // COMMIT's failure may have ended the transaction already
        }
      }
    }
  }

  /** The body of collect, in its transaction and under the iptables lock: read, stage, apply. */
  private async cycle(instances: Instance[]): Promise<Usage[]> {
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
    await this.ipt.apply(4, [batch]); // throws on failure: collect rolls the staged rows back
    return usage;
  }
}
