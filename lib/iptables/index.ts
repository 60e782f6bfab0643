import { CniError, ErrorCode } from '../cni/errors.js';
import { run, start, type Started } from '../exec/index.js';

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
}

export interface TableState {
  /** Chain name → policy (`-` for user chains). */
  chains: Map<string, string>;
  rules: Rule[];
}

/** Splits one iptables-save line into argv, honouring its double quotes. */
export function splitRuleLine(line: string): string[] {
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

export function parseSave(text: string): Map<string, TableState> {
  const tables = new Map<string, TableState>();
  let cur: TableState | undefined;
  for (const line of text.split('\n')) {
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
      if (argv[0]?.startsWith('[')) argv = argv.slice(1); // counters from -c
      if (argv[0] === '-A' && argv.length >= 2) cur.rules.push({ chain: argv[1], spec: argv.slice(2) });
    }
  }
  return tables;
}

const tool = (f: IpFamily, what: 'save' | 'restore') => `${f === 6 ? 'ip6tables' : 'iptables'}-${what}`;

export async function save(family: IpFamily, table: string): Promise<TableState> {
  const r = await run(tool(family, 'save'), ['-t', table]);
  if (r.code !== 0) {
    throw new CniError(ErrorCode.IptablesFailed, `${tool(family, 'save')} failed`, r.stderr.trim());
  }
  return parseSave(r.stdout).get(table) ?? { chains: new Map(), rules: [] };
}

/** A batch of changes to one table, applied atomically by `apply`. */
export class Batch {
  private lines: string[] = [];
  constructor(readonly table: string) {}

  get empty(): boolean {
    return this.lines.length === 0;
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
  const r = proc ? await proc.finish(input) : await run(tool(family, 'restore'), RESTORE_ARGS, input);
  if (r.code !== 0) {
    throw new CniError(ErrorCode.IptablesFailed, `${tool(family, 'restore')} failed`, `${r.stderr.trim()}\ninput:\n${input}`);
  }
}

export function sameRule(a: Rule, b: Rule): boolean {
  return a.chain === b.chain && a.spec.length === b.spec.length && a.spec.every((x, i) => x === b.spec[i]);
}
