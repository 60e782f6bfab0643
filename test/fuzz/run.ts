import { appendFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { generateCase, type FuzzCase } from './generate.js';
import { commandOf, FuzzWorld, judge, minus, type RunOutcome, type Slot } from './harness.js';

/**
 * The fuzz loop: cases run in batches, one per slot at a time; a case that
 * ADDs successfully is DELed at once with the same config; after every batch
 * the world's state is compared with the snapshot taken before it. State a
 * batch leaves behind that no rule below explains is pinned on one case by
 * replaying the batch, case by case, in a fresh world.
 */
export const TIMEOUT_MS = 10_000;
/**
 * dnsname's ADD waits up to 3 s for dnsmasq to answer, holding the one lock
 * of the whole tree: with 4 slots a case may queue behind three such waits.
 */
const TIMEOUTS: Record<string, number> = { dnsname: 30_000 };
export const timeoutOf = (plugin: string) => TIMEOUTS[plugin] ?? TIMEOUT_MS;

export interface CaseResult {
  c: FuzzCase;
  outcome: RunOutcome;
  problems: string[];
  /** ADD exited 0 (and was DELed). */
  added: boolean;
}

export interface Failure {
  plugin: string;
  seed: number;
  index: number;
  why: string;
  mutations: string[];
  c?: FuzzCase;
}

export interface PluginStats {
  cases: number;
  ms: number;
  exit0: number;
  addOk: number;
  codes: Map<number, number>;
  internal: Map<string, number>;
  slowest: { ms: number; index: number; mutations: string[] }[];
}

/** FUZZ_LOG=file: one line per case as it starts and ends (for finding what hangs). */
const trace = (line: string) => {
  if (process.env.FUZZ_LOG) appendFileSync(process.env.FUZZ_LOG, `${new Date().toISOString()} ${line}\n`);
};

/**
 * Found by this fuzz and reported, not fixed here (plugin logic rather than
 * input validation): what the test tolerates until they are fixed. Remove an
 * entry with its fix, and the fuzz checks the strict rule again.
 */
export const KNOWN = {
  /**
   * A failed ADD of these plugins leaves state behind; the DEL a runtime
   * sends after a failed ADD (the spec asks it to) must remove it, so the
   * test sends that DEL too and checks the state after it.
   */
  delAfterFailedAdd: {
    // (dnsname was here until its ADD learned to undo itself: none now.)
  } as Record<string, string>,
  /** Left even by a failed ADD, never removed by DEL; `repair` removes it between batches. */
  residue: {
    bridge: {
      why: 'ADD creates the bridge before the IPAM plugin validates its section: an ADD failing in IPAM leaves a new, empty bridge (as the reference does)',
      ok: (l: string, bridges: Set<string>, ported: Set<string>) => {
        const dev = /^host (?:link (\S+) kind=bridge |tc qdisc \S+ \S+ dev (\S+) root$|sysctl \/proc\/sys\/net\/ipv4\/conf\/([^/]+)\/)/.exec(l);
        const name = dev && (dev[1] ?? dev[2] ?? dev[3]);
        return !!name && bridges.has(name) && !ported.has(name);
      },
    },
  } as Record<string, { why: string; ok: (l: string, bridges: Set<string>, ported: Set<string>) => boolean }>,
};

export async function runCase(world: FuzzWorld, c: FuzzCase, slot: Slot): Promise<CaseResult> {
  trace(`start ${c.plugin} #${c.index} slot ${slot.index} [${c.mutations.join(', ').slice(0, 300)}]`);
  const timeout = timeoutOf(c.plugin);
  const outcome = await world.run(c.plugin, c, slot, timeout);
  trace(`end ${c.plugin} #${c.index} exit ${outcome.code ?? outcome.signal} ${Math.round(outcome.ms)} ms`);
  const command = commandOf(c.env);
  const problems = judge(command, outcome, timeout);
  let added = false;
  if (outcome.code === 0 && command === 'ADD') {
    added = true;
    const del = await world.run(c.plugin, { env: { ...c.env, CNI_COMMAND: 'DEL' }, stdin: c.stdin }, slot, timeout);
    const dp = judge('DEL', del, timeout);
    if (del.code !== 0 && !del.timedOut) dp.push(`DEL after a successful ADD failed: ${del.stdout.toString().slice(0, 300)}`);
    problems.push(...dp.map((p) => `DEL: ${p}`));
  } else if (outcome.code === 1 && command === 'ADD' && KNOWN.delAfterFailedAdd[c.plugin]) {
    // As the runtime does after a failed ADD (see KNOWN).
    const del = await world.run(c.plugin, { env: { ...c.env, CNI_COMMAND: 'DEL' }, stdin: c.stdin }, slot, timeout);
    problems.push(...judge('DEL', del, timeout).map((p) => `DEL after the failed ADD: ${p}`));
  }
  return { c, outcome, problems, added };
}

/**
 * State changes a case may leave:
 *  - always: the stores' `lock` and `last_reserved_ip.N` files and new empty
 *    directories (host-local creates its network directory and lock before it
 *    can know the allocation fails, as the reference does), and a netfilter
 *    table coming into existence with its built-in chains (ip6tables' nat on
 *    the first IPv6 rule there);
 *  - after a successful ADD+DEL in the batch, what the plugins keep by design
 *    when the last container goes (SHARED below), as the reference plugins do.
 * Everything else, added or removed, is a change to the host.
 */
/**
 * An nftables snapshot line (test/fuzz/harness.ts) of `family table`: its
 * table itself, or a chain (`name hook`), set or map (`name` with no
 * elements), rule (`chain`, and its comment) of it that `ok` accepts.
 * Shared structure only: an element, a rule commented with a container's
 * id, uuid or address, a named counter, never match unless `ok` says so.
 */
type NftItem =
  | { kind: 'table' }
  | { kind: 'chain'; name: string; hook: string }
  | { kind: 'set' | 'map'; name: string; empty: boolean; elems: string }
  | { kind: 'rule'; chain: string; expr: string; comment: string }
  | { kind: 'counter'; name: string };
function nftOf(family: string, table: string, ok: (it: NftItem) => boolean): (l: string) => boolean {
  const head = `host nft `;
  return (l) => {
    if (!l.startsWith(head)) return false;
    const [kind, fam, tab, ...rest] = l.slice(head.length).split(' ');
    if (fam !== family || tab !== table) return false;
    const tail = rest.join(' ');
    switch (kind) {
      case 'table':
        return rest.length === 0 && ok({ kind: 'table' });
      case 'chain':
        return ok({ kind: 'chain', name: rest[0], hook: /^hook=(\S+)/.exec(rest[1] ?? '')?.[1] ?? '' });
      case 'set':
      case 'map': {
        const elems = tail.slice(rest[0].length + 1);
        return ok({ kind, name: rest[0], empty: elems === '[]', elems });
      }
      case 'rule': {
        const c = tail.lastIndexOf(' comment=');
        return c > 0 && ok({ kind: 'rule', chain: rest[0], expr: tail.slice(rest[0].length + 1, c), comment: tail.slice(c + ' comment='.length) });
      }
      case 'counter':
        return ok({ kind: 'counter', name: rest[0] });
      default:
        return false;
    }
  };
}

export const SHARED: Record<string, ((l: string, bridges: Set<string>) => boolean)[]> = {
  // The bridge stays, with its gateway addresses, their routes, its promisc flag and forwarding on (the reference never removes them).
  bridge: [
    (l) => /^host link \S+ kind=bridge /.test(l),
    (l, br) => /^host (addr|tc qdisc \S+ \S+ dev) (\S+)/.test(l) && br.has(/^host (addr|tc qdisc \S+ \S+ dev) (\S+)/.exec(l)![2]),
    (l, br) => /^host route .* dev=(\S+) /.test(l) && br.has(/ dev=(\S+) /.exec(l)![1]),
    (l) => /^host sysctl \/proc\/sys\/net\/ipv[46]\/(ip_forward|conf\/all\/forwarding)/.test(l),
    (l, br) => /^host sysctl \/proc\/sys\/net\/ipv4\/conf\/([^/]+)\//.test(l) && br.has(/conf\/([^/]+)\//.exec(l)![1]),
    // macspoofchk's table and base chain stay (as the reference leaves them); the per-container chains and rules go.
    (l) => /^host nft (table bridge nat$|chain bridge nat PREROUTING hook=prerouting )/.test(l),
    // ipMasq on nftables (lib/pf/masq/nftables.ts, the reference's table): the table, its two chains and postrouting's
    // three fixed rules stay; masq_checks' rules (one per container address) go.
    nftOf('inet', 'cni_plugins_masquerade', (it) =>
      it.kind === 'table' ||
      (it.kind === 'chain' && ((it.name === 'postrouting' && it.hook === 'postrouting') || (it.name === 'masq_checks' && it.hook === '-'))) ||
      (it.kind === 'rule' && it.chain === 'postrouting' && it.comment === '-' &&
        /^\[(\{"match":\{"op":"==","left":\{"payload":\{"protocol":"ip6?","field":"daddr"\}\},"right":\{"prefix":\{"addr":"(224\.0\.0\.0","len":4|ff00::","len":8)\}\}\}\},\{"return":null\}|\{"goto":\{"target":"masq_checks"\}\})\]$/.test(it.expr))),
  ],
  // The shared chains and their jumps, the admin chain the config names, the isolation stages.
  firewall: [
    (l) => /^host ipt[46] filter :\S+ -$/.test(l),
    (l) => /^host ipt[46] filter -A (FORWARD|CNI-FORWARD) (.* )?-j \S+$/.test(l) && !/ -[sd] /.test(l),
    (l) => /^host ipt[46] filter -A CNI-ISOLATION-STAGE-[12] /.test(l),
    // nftables (lib/pf/forward/nftables.ts): the table, the forward chain's fixed rules ("cni-ts …" comments), the admin
    // chains and the bridges' isolation elements (kept as the isolation chains are); accept4/accept6 (the containers) empty.
    nftOf('inet', 'cni_ts_firewall', (it) =>
      it.kind === 'table' ||
      (it.kind === 'chain' && (it.name === 'forward' ? it.hook === 'forward' : it.hook === '-')) ||
      ((it.kind === 'set' || it.kind === 'map') && (/^accept[46]$/.test(it.name) ? it.empty : ['bridges', 'isolated', 'within'].includes(it.name))) ||
      (it.kind === 'rule' && it.chain === 'forward' && /^cni-ts (isolated|same-bridge|admin \S+|accept[46]( replies)?)$/.test(it.comment))),
  ],
  portmap: [
    (l) => /^host ipt[46] nat :CNI-HOSTPORT-\S+ -$/.test(l),
    (l) => /^host ipt[46] nat -A (PREROUTING|OUTPUT|POSTROUTING) .* -j CNI-HOSTPORT-\S+$/.test(l),
    (l) => /^host ipt[46] nat -A CNI-HOSTPORT-(MASQ|SETMARK) /.test(l),
    (l) => /^host sysctl .*route_localnet/.test(l),
    // nftables (the reference's `ip`/`ip6 cni_hostport`, lib/pf/portmap/rules.ts): the tables, their chains, the
    // prerouting/output jumps (with the last ADD's conditions) and hostports_all's two; every rule commented with a
    // container id (hostports, masquerading, cni_ts_owners) goes.
    ...['ip', 'ip6'].map((fam) =>
      nftOf(fam, 'cni_hostport', (it) =>
        it.kind === 'table' ||
        (it.kind === 'chain' &&
          ({ prerouting: 'prerouting', output: 'output', masquerading: 'postrouting', hostports_all: '-', hostip_hostports: '-', hostports: '-', cni_ts_owners: '-' } as Record<string, string>)[it.name] === it.hook) ||
        (it.kind === 'rule' && it.comment === '-' &&
          ((/^(prerouting|output)$/.test(it.chain) && it.expr.endsWith(',{"jump":{"target":"hostports_all"}}]')) ||
            (it.chain === 'hostports_all' && /^\[\{"jump":\{"target":"(hostip_hostports|hostports)"\}\}\]$/.test(it.expr))))),
    ),
  ],
  'aos-firewall': [
    (l) => /^host ipt4 filter :AOS-\S+ -$/.test(l),
    (l) => /^host ipt4 filter -A (FORWARD|OUTPUT) -j AOS-/.test(l),
    // nftables (lib/pf/aos/nftables.ts): the table, its maps and sets empty, the forward chain's fixed steps ("aos: …",
    // no uuid) and access_other; an instance's chains (CNI-<hash>[-fwd]) and its "aos <uuid>: …" rules go.
    nftOf('inet', 'cni_ts_aos', (it) =>
      it.kind === 'table' ||
      (it.kind === 'chain' && ((it.name === 'forward' && it.hook === 'forward') || (it.name === 'access_other' && it.hook === '-'))) ||
      ((it.kind === 'set' || it.kind === 'map') && it.empty && ['forward_access', 'forward_port', 'output_icmp', 'output_new'].includes(it.name)) ||
      (it.kind === 'rule' && it.chain === 'forward' && it.comment.startsWith('aos: '))),
  ],
  // nftables (lib/pf/dns/nftables.ts): the table, its input chain and rule; the bridges set empty (a network's element goes with its last container).
  dnsname: [
    nftOf('inet', 'cni_ts_dns', (it) =>
      it.kind === 'table' ||
      (it.kind === 'chain' && it.name === 'input' && it.hook === 'input') ||
      (it.kind === 'set' && it.name === 'bridges' && it.empty) ||
      (it.kind === 'rule' && it.chain === 'input' && it.comment === "cni-ts dnsname: DNS from the networks' bridges")),
  ],
  // nftables (lib/pf/accounting/nftables.ts): the table, a skip-range group's chain, its fixed rules and its maps and sets
  // (empty); an instance's counters (AOS_<h>_IN/OUT) and map elements go.
  'traffic-accounting': [
    nftOf('inet', 'cni_ts_accounting', (it) =>
      it.kind === 'table' ||
      (it.kind === 'chain' && /^acct_\w+$/.test(it.name) && it.hook === 'forward') ||
      ((it.kind === 'set' || it.kind === 'map') && it.empty && /^(blocked_)?(in|out)_\w+$/.test(it.name)) ||
      (it.kind === 'rule' && /^acct_\w+$/.test(it.chain) && /^(blocked )?(download|upload)$/.test(it.comment))),
  ],
  // `cni-manager traffic` installs the traffic monitor's system chains (AOS_SYSTEM_IN/OUT) and keeps them.
  // …and its traffic database (--db, default <cache-dir>/traffic.db).
  'cni-manager': [
    (l) => /^file mgr\/[^/]+\.db(-wal|-shm|-journal)? /.test(l),
    (l) => /^host ipt4 filter (:AOS_SYSTEM_(IN|OUT) -|-A (INPUT|OUTPUT|AOS_SYSTEM_(IN|OUT))\b.*AOS_SYSTEM|-A AOS_SYSTEM_(IN|OUT)( |$))/.test(l),
    // …on nftables (--backend nftables): system_in/system_out and their counters in the accounting table.
    nftOf('inet', 'cni_ts_accounting', (it) =>
      it.kind === 'table' ||
      (it.kind === 'chain' && ((it.name === 'system_in' && it.hook === 'input') || (it.name === 'system_out' && it.hook === 'output'))) ||
      (it.kind === 'counter' && /^AOS_SYSTEM_(IN|OUT)$/.test(it.name)) ||
      (it.kind === 'rule' && /^system_(in|out)$/.test(it.chain))),
  ],
};

/** `file <path> <kind>` lines of the snapshot, parsed without a regex (paths may be thousands of characters). */
function fileLine(l: string): { path: string; kind: string } | undefined {
  if (!l.startsWith('file ')) return undefined;
  const sp = l.lastIndexOf(' ');
  return { path: l.slice(5, sp), kind: l.slice(sp + 1) };
}

export function unexplained(plugin: string, before: string[], after: string[], anyAdd: boolean): string[] {
  const added = minus(after, before);
  const removed = minus(before, after);
  const bridges = new Set<string>();
  const ported = new Set<string>();
  for (const l of [...before, ...after]) {
    const m = /^host link (\S+) kind=bridge /.exec(l);
    if (m) bridges.add(m[1]);
    const p = /^host link \S+ kind=\S+ master=(\S+) /.exec(l);
    if (p && p[1] !== '-') ported.add(p[1]);
  }
  const known = KNOWN.residue[plugin];
  const shared = (l: string) => (anyAdd && (SHARED[plugin] ?? []).some((ok) => ok(l, bridges))) || !!known?.ok(l, bridges, ported);
  const fileOk = (l: string, kind: string) => kind === 'bookkeeping' || (kind === 'emptyjson' && plugin === 'aos-firewall') || shared(l);
  // A new directory is fine when everything new in it is.
  const dirsWithFiles = new Set<string>();
  for (const l of added) {
    const f = fileLine(l);
    if (f && f.kind !== 'dir' && !fileOk(l, f.kind)) for (let p = f.path; p.includes('/'); ) dirsWithFiles.add((p = p.slice(0, p.lastIndexOf('/'))));
  }
  const okAdded = (l: string) => {
    if (/^host ipt[46] \S+ :(PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) ACCEPT$/.test(l)) return true;
    const f = fileLine(l);
    if (f) return f.kind === 'dir' ? !dirsWithFiles.has(f.path.replace(/\/$/, '')) : fileOk(l, f.kind);
    return shared(l);
  };
  // Removed: only a shared thing that changed (the bridge's flags, its address under forceAddress).
  const okRemoved = (l: string) => (fileLine(l)?.kind === 'bookkeeping') || shared(l);
  return [...added.filter((l) => !okAdded(l)).map((l) => `+ ${l.slice(0, 300)}`), ...removed.filter((l) => !okRemoved(l)).map((l) => `- ${l.slice(0, 300)}`)];
}

/** Runs `indexes` over the slots, each slot one case at a time. */
export async function pool<I, T>(slots: Slot[], items: I[], fn: (slot: Slot, item: I) => Promise<T>): Promise<T[]> {
  const out: T[] = new Array(items.length);
  let next = 0;
  let error: unknown;
  // Every worker runs to the end even when one throws: nothing may still be
  // running in the sandbox when the caller cleans it up.
  await Promise.all(
    slots.map(async (slot) => {
      while (next < items.length && error === undefined) {
        const i = next++;
        try {
          out[i] = await fn(slot, items[i]);
        } catch (err) {
          error ??= err;
        }
      }
    }),
  );
  if (error !== undefined) throw error;
  return out;
}

function record(stats: PluginStats, r: CaseResult): void {
  stats.cases++;
  if (r.outcome.code === 0) stats.exit0++;
  if (r.added) stats.addOk++;
  try {
    const e = JSON.parse(r.outcome.stdout.toString()) as { code?: number; msg?: string };
    if (r.outcome.code === 1 && typeof e.code === 'number') {
      stats.codes.set(e.code, (stats.codes.get(e.code) ?? 0) + 1);
      if (e.code === 999) stats.internal.set(String(e.msg).slice(0, 120), (stats.internal.get(String(e.msg).slice(0, 120)) ?? 0) + 1);
    }
  } catch {
    // not JSON: judged elsewhere
  }
  stats.slowest.push({ ms: Math.round(r.outcome.ms), index: r.c.index, mutations: r.c.mutations });
  stats.slowest.sort((a, b) => b.ms - a.ms);
  stats.slowest.length = Math.min(stats.slowest.length, 3);
}

/** GC acts on every attachment it is not told about: it runs alone, after the batch's other cases. */
const isGc = (c: FuzzCase) => c.env.CNI_COMMAND === 'GC';

export interface WorldRef {
  world: FuzzWorld;
  /** Throws the world away and builds (and warms up) a fresh one. */
  renew(): Promise<void>;
}

export async function fuzzPlugin(
  ref: WorldRef,
  plugin: string,
  seed: number,
  indexes: number[],
  onIsolate: (cases: FuzzCase[], plugin: string) => Promise<Failure | undefined>,
): Promise<{ failures: Failure[]; stats: PluginStats }> {
  const failures: Failure[] = [];
  const stats: PluginStats = { cases: 0, ms: 0, exit0: 0, addOk: 0, codes: new Map(), internal: new Map(), slowest: [] };
  const t0 = performance.now();
  let baseline = ref.world.snapshot();
  // Cases per state comparison: the snapshot costs about as much as two cases.
  const batch = ref.world.slots.length * 8;
  for (let start = 0; start < indexes.length; start += batch) {
    const ids = indexes.slice(start, start + batch);
    const cases = ids.map((i) => generateCase(plugin, i, seed));
    const world = ref.world;
    const results = await pool(world.slots, cases.filter((c) => !isGc(c)), (slot, c) => runCase(world, c, slot));
    for (const c of cases.filter(isGc)) results.push(await runCase(world, c, world.slots[0]));
    for (const r of results) {
      record(stats, r);
      if (r.problems.length) failures.push(failureOf(r, r.problems.join('; ')));
    }
    trace('snapshot');
    let snap = world.snapshot();
    trace('snapshot done');
    const anyAdd = results.some((r) => r.added);
    const diff = unexplained(plugin, baseline, snap, anyAdd);
    if (diff.length) {
      const culprit = await onIsolate(cases, plugin);
      failures.push(
        culprit ?? {
          plugin, seed, index: ids[0], mutations: [],
          why: `batch ${ids[0]}..${ids[ids.length - 1]} changed the host state, no single case did alone: ${diff.slice(0, 20).join(' | ')}`,
        },
      );
      // Later batches must not trip over this one's leftovers.
      await ref.renew();
      snap = ref.world.snapshot();
    } else if (minus(snap, baseline).length || minus(baseline, snap).length) {
      // Only what plugins keep by design: put the fuzz bridge back as it was, drop other bridges.
      if (world.repair()) snap = world.snapshot();
    }
    baseline = snap;
  }
  stats.ms = performance.now() - t0;
  return { failures, stats };
}

export function failureOf(r: CaseResult, why: string): Failure {
  const out = r.outcome;
  const detail = `exit ${out.code ?? out.signal} in ${Math.round(out.ms)} ms, stdout ${JSON.stringify(out.stdout.toString().slice(0, 300))}, stderr ${JSON.stringify(out.stderr.slice(0, 300))}`;
  return { plugin: r.c.plugin, seed: r.c.seed, index: r.c.index, why: `${why} (${detail})`, mutations: r.c.mutations, c: r.c };
}

/**
 * Replays cases one by one in `world`, snapshotting around each: the first
 * that leaves unexplained state is the culprit.
 */
export async function isolate(world: FuzzWorld, cases: FuzzCase[]): Promise<Failure | undefined> {
  let before = world.snapshot();
  for (const c of cases) {
    const r = await runCase(world, c, world.slots[0]);
    let after = world.snapshot();
    const diff = unexplained(c.plugin, before, after, r.added);
    if (diff.length) return failureOf(r, `changed the host state: ${diff.slice(0, 20).join(' | ')}`);
    if (world.repair()) after = world.snapshot();
    before = after;
  }
  return undefined;
}

/**
 * A saved case (test/fuzz/regressions/*.json): a plugin's env and stdin (or
 * cni-manager's argv), templates with the generator's placeholders; why it
 * is kept; optionally the error code (or exit code) it must now end with.
 */
export interface Regression {
  plugin: string;
  env?: Record<string, string | null>;
  stdinBase64?: string;
  argv?: string[];
  why: string;
  seed?: number;
  index?: number;
  mutations?: string[];
  expectCode?: number;
  expectExit?: number;
}

export function toRegression(f: Failure): Regression | undefined {
  if (!f.c) return undefined;
  return { plugin: f.plugin, env: f.c.env, stdinBase64: f.c.stdin.toString('base64'), why: f.why, seed: f.seed, index: f.index, mutations: f.mutations };
}

/** FUZZ_SAVE=dir: failing cases are written there as regression files. */
export function save(dir: string, f: Failure): string | undefined {
  const reg = toRegression(f);
  if (!reg) return undefined;
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${f.plugin}-${f.seed}-${f.index}.json`);
  writeFileSync(file, `${JSON.stringify(reg, null, 2)}\n`);
  return file;
}
