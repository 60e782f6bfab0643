import { closeSync, constants, fchmodSync, fstatSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { z } from 'zod';
import { FP, trace } from '../lib/cni/trace.js';
import { withIptablesLock } from '../lib/iptables/index.js';
import { cleanupBackends, type Backend } from '../lib/pf/backend.js';
import { collector, type Collector, type Direction, type Snapshot, type Swap } from '../lib/pf/accounting/index.js';
import { IptablesCollector, type Iptables } from '../lib/pf/accounting/iptables.js';
import { SYSTEM_IN, SYSTEM_OUT } from '../lib/pf/accounting/layout.js';

export type { Iptables };

/**
 * The traffic monitor of the Aos service manager: per-instance download
 * and upload totals read from the accounting counters (one read per
 * collection and backend in use, whatever the number of instances:
 * `iptables-save -c`, or `nft -j list table inet cni_ts_accounting`;
 * lib/pf/accounting),
 * kept in SQLite (WAL) so they survive restarts and chain re-creation,
 * reset at the start of each accounting period (UTC), and enforced: an
 * instance over its limit has its traffic dropped (iptables: its counting
 * rule swapped for DROP; nftables: its address in the blocked set) until
 * the next period.
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
  /** The backend its counters are in (the traffic-accounting plugin's); iptables when unset. */
  backend?: Backend;
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

/** The monitor's counters of the host's own traffic, in `backend` (default iptables, as before backends existed). */
export async function ensureSystemChains(backend: Backend = 'iptables'): Promise<void> {
  await (await collector(backend)).ensureSystem();
}

/** traffic-off: the system counters removed in every usable backend (fine when none are there). */
export async function removeSystemChains(): Promise<void> {
  for (const b of cleanupBackends(undefined)) await (await collector(b)).removeSystem();
}

/** Where the monitor reads: a collector per backend, the lock, and the backend of the system counters. */
export interface MonitorBackends {
  collectors?: Partial<Record<Backend, Collector>>;
  /** The per-namespace lock plugins take too (default withIptablesLock). */
  lock?: <T>(fn: () => Promise<T>) => Promise<T>;
  /** The backend whose system counters (AOS_SYSTEM_IN/OUT) are read (default iptables). */
  system?: Backend;
}

export class TrafficMonitor {
  private readonly q;
  private readonly lock: <T>(fn: () => Promise<T>) => Promise<T>;
  private readonly collectors: Partial<Record<Backend, Collector>>;
  private readonly systemBackend: Backend;

  constructor(
    private readonly db: Db,
    private readonly period: Period = 'day',
    private readonly now: () => Date = () => new Date(),
    /** The backends to read: collectors (default: each backend's own, loaded when used), or iptables operations alone (unit tests' fakes). */
    source: MonitorBackends | Iptables = {},
    /** How long a collection waits for another connection's SQLite write lock before failing. */
    private readonly busyMs = 5000,
  ) {
    if ('save' in source) {
      this.collectors = { iptables: new IptablesCollector(source) };
      this.lock = source.lock ?? withIptablesLock;
      this.systemBackend = 'iptables';
    } else {
      this.collectors = { ...(source.collectors ?? {}) };
      this.lock = source.lock ?? withIptablesLock;
      this.systemBackend = source.system ?? 'iptables';
    }
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

  private async collectorOf(b: Backend): Promise<Collector> {
    return (this.collectors[b] ??= await collector(b));
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
   * One cycle under two locks: SQLite's write lock, then the per-namespace
   * lock the plugins take (every monitor takes them in this order and
   * plugins take only the second, so none waits for the other in a circle;
   * a monitor waiting for SQLite holds up no plugin). Under both: read the
   * counters, stage the new totals and baselines, apply the swaps, and only
   * then commit. A failed apply rolls everything back, so totals, baselines
   * and block states keep matching the rules that are still in place and
   * the next collection counts from there (committing first set the
   * baseline of a counting rule that stayed to 0, and the next collection
   * counted its bytes twice). Left: a COMMIT failing after a successful
   * apply, which in WAL with the write lock held takes an I/O error; then a
   * swap is not recorded, and the next collections undo it and count from
   * the new rule (bytes since the last commit go uncounted, none twice).
   * With instances in both backends, a failure applying the second one's
   * swaps after the first one's succeeded is the same case.
   */
  async collect(instances: Instance[]): Promise<Usage[]> {
    trace(FP.collect.start);
    await this.begin();
    let committed = false;
    try {
      return await this.lock(async () => {
        const usage = await this.cycle(instances);
        this.db.exec('COMMIT');
        committed = true;
        trace(FP.collect.totalsStored);
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

  /** The body of collect, in its transaction and under the lock: read (once per backend in use), stage, apply. */
  private async cycle(instances: Instance[]): Promise<Usage[]> {
    const used = new Set<Backend>([this.systemBackend, ...instances.map((i) => i.backend ?? 'iptables')]);
    const snaps = new Map<Backend, Snapshot>();
    for (const b of used) snaps.set(b, await (await this.collectorOf(b)).snapshot());
    trace(FP.collect.savedAndParsed);
    const start = periodStart(this.now(), this.period);
    const swaps = new Map<Backend, Swap[]>([...used].map((b) => [b, []]));
    const usage: Usage[] = [];
    const lastMap = new Map((this.q.allLast.all() as { chain: string; last: number }[]).map((r) => [r.chain, Number(r.last)]));
    const totMap = new Map((this.q.allTotals.all() as { chain: string; time: number; value: number }[]).map((r) => [r.chain, { time: Number(r.time), value: Number(r.value) }]));
    const newLast = new Map<string, number>();
    const newTot = new Map<string, [number, number]>();
    for (const inst of instances) {
      const backend = inst.backend ?? 'iptables';
      const snap = snaps.get(backend)!;
      const dirs: { d: Direction; limit?: number }[] = [
        { d: { chain: inst.inChain, dir: 'in', ip: inst.ip }, limit: inst.downloadLimit },
        { d: { chain: inst.outChain, dir: 'out', ip: inst.ip }, limit: inst.uploadLimit },
      ];
      const totals: number[] = [];
      let blocked = false;
      for (const { d, limit } of dirs) {
        const { counting, bytes: raw, dropping } = snap.read(d);
        const last = lastMap.get(d.chain);
        // A counter below the last reading means the chain was re-created: count from zero.
        const delta = counting ? (last !== undefined && raw >= last ? raw - last : raw) : 0;
        newLast.set(d.chain, counting ? raw : 0);
        const row = totMap.get(d.chain);
        const value = (row && row.time === start ? row.value : 0) + delta; // a new period starts from zero
        newTot.set(d.chain, [start, value]);
        totals.push(value);
        const over = limit !== undefined && limit > 0 && value > limit;
        if (over && counting && !dropping) {
          // Block (the reading above already took its bytes); the counter starts again from zero.
          swaps.get(backend)!.push({ d, to: 'drop' });
          this.q.block.run(d.chain, start);
          newLast.set(d.chain, 0);
        } else if (!over && dropping) {
          // A new period (or a raised limit): count again, from zero.
          swaps.get(backend)!.push({ d, to: 'count' });
          this.q.unblock.run(d.chain);
          newLast.set(d.chain, 0);
        }
        blocked ||= (over && counting) || (over && dropping);
      }
      usage.push({ id: inst.id, download: totals[0], upload: totals[1], downloadLimit: inst.downloadLimit, uploadLimit: inst.uploadLimit, blocked });
    }
    // The host's own traffic, when the system counters are there.
    const system = snaps.get(this.systemBackend)!.system();
    if (system) {
      const totals = ([[SYSTEM_IN, system.in], [SYSTEM_OUT, system.out]] as const).map(([chain, raw]) => {
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
    // Throws on failure: collect rolls the staged rows back.
    for (const [b, list] of swaps) await (await this.collectorOf(b)).apply(snaps.get(b)!, list);
    return usage;
  }
}
