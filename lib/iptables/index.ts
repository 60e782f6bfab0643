import { CniError, ErrorCode } from '../cni/errors.js';
import { run, start, type Started } from '../exec/index.js';
import { failpoints, FP, testHook, trace } from '../cni/trace.js';
import { statSync } from 'node:fs';
import { AsyncLocalStorage } from 'node:async_hooks';
import { withFileLock } from '../exec/lock.js';

/**
 * iptables as data: a rule is (table, chain, argv). Changes are batched into
 * one `iptables-restore --noflush -w` per family and call, and state is read
 * back with one `iptables-save` per table, parsed into the same data.
 */
export type IpFamily = 4 | 6;

export interface Rule {
  chain: string;
  /** The rule's match and target, as argv (without `-A chain`). */
  spec: string[];
  /** Packet and byte counters, when read with `iptables-save -c`. */
  counters?: { packets: bigint; bytes: bigint };
}

export interface TableState {
  /** Chain name → policy (`-` for user chains). */
  chains: Map<string, string>;
  rules: Rule[];
}

/** Splits one iptables-save line into argv, honouring its double quotes. */
export function splitRuleLine(line: string): string[] {
  if (!line.includes('"')) return line.split(' ').filter((w) => w !== ''); // the common case, fast
  const out: string[] = [];
  let cur = '';
  let inWord = false;
  let quoted = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quoted) {
      if (c === '\\' && i + 1 < line.length && (line[i + 1] === '"' || line[i + 1] === '\\')) cur += line[++i];
      else if (c === '"') quoted = false;
      else cur += c;
    } else if (c === '"') {
      quoted = true;
      inWord = true;
    } else if (c === ' ' || c === '\t') {
      if (inWord) out.push(cur);
      cur = '';
      inWord = false;
    } else {
      cur += c;
      inWord = true;
    }
  }
  if (inWord) out.push(cur);
  return out;
}

/** Quotes one argument for iptables-restore's parser. */
export function quoteArg(a: string): string {
  if (a !== '' && !/[\s"\\']/.test(a)) return a;
  return `"${a.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

export function parseSave(text: string, keep?: (line: string) => boolean): Map<string, TableState> {
  const tables = new Map<string, TableState>();
  let cur: TableState | undefined;
  for (const line of text.split('\n')) {
    if (keep && line.length && line[0] !== '*' && line[0] !== ':' && !keep(line)) continue; // a reader that needs few rules skips the rest unparsed
    if (line.startsWith('*')) {
      cur = { chains: new Map(), rules: [] };
      tables.set(line.slice(1).trim(), cur);
    } else if (!cur || line.startsWith('#') || line === 'COMMIT' || line.trim() === '') {
      continue;
    } else if (line.startsWith(':')) {
      const [name, policy] = line.slice(1).split(' ');
      cur.chains.set(name, policy ?? '-');
    } else {
      let argv = splitRuleLine(line);
      let counters: Rule['counters'];
      const m = /^\[(\d+):(\d+)\]$/.exec(argv[0] ?? '');
      if (m) {
        counters = { packets: BigInt(m[1]), bytes: BigInt(m[2]) };
        argv = argv.slice(1);
      }
      if (argv[0] === '-A' && argv.length >= 2) cur.rules.push({ chain: argv[1], spec: argv.slice(2), ...(counters ? { counters } : {}) });
    }
  }
  return tables;
}

/**
 * The host's iptables: `iptables-restore`/`iptables-save` as the system's
 * alternatives select them (nft or legacy). CNI_TS_IPTABLES=legacy|nft
 * picks one explicitly in the test build (a test hook; the tests run both).
 */
function tool(f: IpFamily, what: 'save' | 'restore'): string {
  const backend = testHook('CNI_TS_IPTABLES');
  const base = f === 6 ? 'ip6tables' : 'iptables';
  return backend === 'legacy' || backend === 'nft' ? `${base}-${backend}-${what}` : `${base}-${what}`;
}

export async function save(family: IpFamily, table: string, opts: { counters?: boolean; keep?: (line: string) => boolean } = {}): Promise<TableState> {
  const r = await run(tool(family, 'save'), ['-t', table, ...(opts.counters ? ['-c'] : [])]);
  if (r.code !== 0) {
    throw new CniError(ErrorCode.IptablesFailed, `${tool(family, 'save')} failed`, r.stderr.trim());
  }
  return parseSave(r.stdout, opts.keep).get(table) ?? { chains: new Map(), rules: [] };
}

/** A batch of changes to one table, applied atomically by `apply`. */
export class Batch {
  private lines: string[] = [];
  constructor(readonly table: string) {}

  get empty(): boolean {
    return this.lines.length === 0;
  }
  /** Creates a chain; the whole restore fails if it already exists. */
  newChain(name: string): this {
    this.lines.push(`-N ${quoteArg(name)}`);
    return this;
  }
  /** Declares a chain; with --noflush an existing chain is emptied. */
  declareChain(name: string): this {
    this.lines.unshift(`:${name} - [0:0]`);
    return this;
  }
  append(rule: Rule): this {
    this.lines.push(['-A', rule.chain, ...rule.spec].map(quoteArg).join(' '));
    return this;
  }
  insert(rule: Rule, position = 1): this {
    this.lines.push(['-I', rule.chain, String(position), ...rule.spec].map(quoteArg).join(' '));
    return this;
  }
  delete(rule: Rule): this {
    this.lines.push(['-D', rule.chain, ...rule.spec].map(quoteArg).join(' '));
    return this;
  }
  flushChain(name: string): this {
    this.lines.push(`-F ${quoteArg(name)}`);
    return this;
  }
  deleteChain(name: string): this {
    this.lines.push(`-X ${quoteArg(name)}`);
    return this;
  }
  text(): string {
    return `*${this.table}\n${this.lines.join('\n')}\nCOMMIT\n`;
  }
}

/**
 * An iptables-restore started before its rules are known: a plugin starts
 * it first thing and hands it the batch once the addresses are allocated,
 * so the tool's own start-up overlaps the netlink work. Unused, it is given
 * empty input and exits without touching anything.
 */
export class PendingRestore {
  private proc: Started | undefined;
  constructor(readonly family: IpFamily) {
    this.proc = start(tool(family, 'restore'), RESTORE_ARGS);
  }
  take(): Started | undefined {
    const p = this.proc;
    this.proc = undefined;
    return p;
  }
  async discard(): Promise<void> {
    await this.take()?.finish('');
  }
}

const RESTORE_ARGS = ['--noflush', '-w', '10'];

/** Applies batches of one family in one iptables-restore call (no call when all are empty). */
export async function apply(family: IpFamily, batches: Batch[], pending?: PendingRestore): Promise<void> {
  const used = batches.filter((b) => !b.empty);
  const proc = pending?.family === family ? pending.take() : undefined;
  if (used.length === 0) {
    await proc?.finish('');
    return;
  }
  const input = used.map((b) => b.text()).join('');
  // Failpoints: a crash with half the input written leaves a restore without COMMIT; one after all of it, a restore still running.
  // Under the iptables lock the restore inherits its fd: should this process die after handing over
  // its input, the lock stays held until the restore has committed, so nobody plans against the old table.
  const lockFd = lockHeld.getStore();
  const r = await (proc ?? start(tool(family, 'restore'), RESTORE_ARGS, { inheritFds: lockFd === undefined ? [] : [lockFd] })).finish(
    input,
    failpoints() ? () => trace(FP.iptables.restoreHalfWritten) : undefined,
    failpoints() ? () => trace(FP.iptables.restoreInputWritten) : undefined,
  );
  if (r.code !== 0) {
    throw new CniError(ErrorCode.IptablesFailed, `${tool(family, 'restore')} failed`, `${r.stderr.trim()}\ninput:\n${input}`);
  }
  trace(FP.iptables.restored);
}

export function sameRule(a: Rule, b: Rule): boolean {
  return a.chain === b.chain && a.spec.length === b.spec.length && a.spec.every((x, i) => x === b.spec[i]);
}

const ruleKey = (r: Rule) => `${r.chain}\0${r.spec.join('\0')}`;

/**
 * Plans changes to one table against the state read by one iptables-save:
 * each operation checks (and updates) that state, so a rule present is not
 * added twice and a rule absent is not deleted; the result is one Batch.
 */
export class TablePlan {
  readonly batch: Batch;
  private readonly rules: Rule[];
  /** rule key → how many copies are in the table, for O(1) lookups on big rulesets. */
  private readonly index = new Map<string, number>();
  private readonly chains: Set<string>;

  constructor(readonly table: string, state: TableState) {
    this.batch = new Batch(table);
    this.rules = state.rules.map((r) => ({ chain: r.chain, spec: r.spec }));
    for (const r of this.rules) this.count(r, 1);
    this.chains = new Set(state.chains.keys());
  }

  private count(r: Rule, delta: number): void {
    const k = ruleKey(r);
    const n = (this.index.get(k) ?? 0) + delta;
    if (n > 0) this.index.set(k, n);
    else this.index.delete(k);
  }

  hasChain(name: string): boolean {
    return this.chains.has(name);
  }
  chainNames(): string[] {
    return [...this.chains];
  }
  has(rule: Rule): boolean {
    return this.index.has(ruleKey(rule));
  }
  rulesOf(chain: string): Rule[] {
    return this.rules.filter((r) => r.chain === chain);
  }
  /** Every rule anywhere in the table that jumps (or goes) to `chain`. */
  jumpsTo(chain: string): Rule[] {
    return this.rules.filter((r) => {
      const i = r.spec.length - 2;
      return i >= 0 && (r.spec[i] === '-j' || r.spec[i] === '-g') && r.spec[i + 1] === chain;
    });
  }
  ensureChain(name: string): this {
    if (!this.chains.has(name)) {
      this.batch.newChain(name);
      this.chains.add(name);
    }
    return this;
  }
  appendUnique(rule: Rule): this {
    if (!this.has(rule)) {
      this.batch.append(rule);
      this.rules.push(rule);
      this.count(rule, 1);
    }
    return this;
  }
  /** Puts the rule first in its chain unless it is already somewhere in it. */
  insertUnique(rule: Rule): this {
    if (!this.has(rule)) {
      this.batch.insert(rule, 1);
      this.rules.unshift(rule);
      this.count(rule, 1);
    }
    return this;
  }
  /** Deletes every copy of the rule; absent is fine. */
  delete(rule: Rule): this {
    const k = ruleKey(rule);
    const n = this.index.get(k) ?? 0;
    if (n === 0) return this;
    for (let i = 0; i < n; i++) this.batch.delete(rule);
    this.index.delete(k);
    for (let i = this.rules.length - 1; i >= 0; i--) if (this.rules[i].chain === rule.chain && ruleKey(this.rules[i]) === k) this.rules.splice(i, 1);
    return this;
  }
  flushChain(name: string): this {
    if (!this.chains.has(name)) return this;
    let any = false;
    for (let i = this.rules.length - 1; i >= 0; i--) {
      if (this.rules[i].chain === name) {
        this.count(this.rules[i], -1);
        this.rules.splice(i, 1);
        any = true;
      }
    }
    if (any) this.batch.flushChain(name);
    return this;
  }
  /** Removes a chain, its rules and every jump to it. */
  removeChain(name: string): this {
    if (!this.chains.has(name)) return this;
    for (const j of this.jumpsTo(name)) this.delete(j);
    this.flushChain(name);
    this.batch.deleteChain(name);
    this.chains.delete(name);
    return this;
  }
}

/**
 * Serialises read-modify-write cycles of our own plugin processes on one
 * network namespace, so concurrent ADDs never plan against the same stale
 * state. The lock is a flock on the namespace itself (its nsfs file,
 * /proc/thread-self/ns/net): one per namespace, nothing on disk to leave
 * behind, and the kernel drops it if a plugin dies. Processes that are not
 * ours are covered by the restore's atomicity and one retry (a -N that lost
 * a race fails the whole restore, which is then planned again).
 *
 * Re-entrant within one async call chain: a plugin that must hold another
 * lock together with this one (aos-firewall's state file) takes this one
 * first and runs its transactions inside; they then do not lock again.
 * Taking this one second would make every such plugin wait for it while
 * holding its own lock, which convoys them all behind one waiter.
 */
const lockHeld = new AsyncLocalStorage<number>();

export async function withIptablesLock<T>(fn: () => Promise<T>): Promise<T> {
  if (lockHeld.getStore() !== undefined) return fn();
  trace(FP.iptables.locking);
  const ns = '/proc/thread-self/ns/net';
  return withFileLock(ns, {
    readOnly: true,
    queueKey: `netns:${statSync(ns).ino}`,
    timeoutMs: 60_000,
    timeoutError: () => new CniError(ErrorCode.TryAgainLater, 'timed out waiting for the iptables lock'),
  }, (fd) => lockHeld.run(fd, fn));
}

/**
 * One locked read-plan-apply cycle on one table of one family: one
 * iptables-save, the caller's plan, one iptables-restore (none when the plan
 * changed nothing). Returns what `plan` returned.
 */
export async function transaction<T>(family: IpFamily, table: string, plan: (p: TablePlan) => T, opts: { counters?: boolean } = {}): Promise<T> {
  return withIptablesLock(async () => {
    for (let attempt = 0; ; attempt++) {
      trace(FP.iptables.lockHeld);
      const state = await save(family, table, opts);
      trace(FP.iptables.saved);
      const p = new TablePlan(table, state);
      const out = plan(p);
      trace(FP.iptables.planned);
      try {
        await apply(family, [p.batch]);
        return out;
      } catch (err) {
        if (attempt >= 2) throw err;
      }
    }
  });
}

/** A rule as CHECK looks for it (lib/pf/check.ts): chain and normal-form spec. */
export const ruleKeyOf = (r: Rule) => `${r.chain} ${r.spec.join(' ')}`;
export const expectedRule = (r: Rule) => ({ key: ruleKeyOf(r), show: `-A ${r.chain} ${r.spec.join(' ')}` });
/** Every rule of a saved table as CHECK keys. */
export const ruleKeys = (state: TableState): Set<string> => new Set(state.rules.map(ruleKeyOf));

/**
 * DEL of known rules, written once: one iptables-restore deleting exactly
 * these rules (and then flushing and removing `chains`); should any be
 * missing, the whole restore fails and changes nothing, and one locked
 * save-plan-restore removes whatever of them is really there.
 */
export async function deleteExactly(family: IpFamily, table: string, rules: Rule[], chains: string[] = []): Promise<void> {
  if (rules.length === 0 && chains.length === 0) return;
  try {
    const batch = new Batch(table);
    for (const r of rules) batch.delete(r);
    for (const c of chains) batch.flushChain(c).deleteChain(c);
    await apply(family, [batch]);
    return;
  } catch {
    // fall through: read what is there
  }
  await transaction(family, table, (p) => {
    for (const r of rules) p.delete(r);
    for (const c of chains) p.removeChain(c);
  });
}
