// Shared by the bench scripts: statistics, the engines of engine mode
// (docs/engine.md: one per (network, mount) namespace pair, files
// /run/cni-ts/engine-<net ino>-<mnt ino>.{sock,pid,log,lock}), the lock the
// tests take around work in the machine's own network namespace, and the
// iptables bookkeeping that removes what a bench left in the machine's tables.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync, copyFileSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, realpathSync, rmSync, statSync, symlinkSync, writeFileSync,
} from 'node:fs';
import { join } from 'node:path';

export const ENGINE_DIR = '/run/cni-ts';

export const sleep = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

export const median = (xs) => {
  const s = xs.filter((x) => typeof x === 'number' && !Number.isNaN(x)).sort((a, b) => a - b);
  if (!s.length) return NaN;
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
/** Nearest-rank percentile. */
export const percentile = (xs, p) => {
  const s = xs.filter((x) => typeof x === 'number' && !Number.isNaN(x)).sort((a, b) => a - b);
  if (!s.length) return NaN;
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
};
export const fmt = (x, digits = 1) => (typeof x !== 'number' || Number.isNaN(x) ? '—' : x.toFixed(digits));
export const ratio = (a, b) => (typeof a !== 'number' || typeof b !== 'number' || Number.isNaN(a) || Number.isNaN(b) || b === 0 ? '—' : (a / b).toFixed(2));

/** The three columns, and what each puts in a plugin's environment. */
/**
 * Timed calls over a benchmark's columns (bench/backends.mjs, bench/microvm.mjs;
 * a column: `{ key, env }`). `series()`: an empty sample list per column;
 * `timed(c, argv, env, input)`: runs one call with the column's environment,
 * throws when it fails, returns its milliseconds; `measure(set, c, i, …)`:
 * the same, recorded unless `i` < 0 (the warm-up round); `last()`: the last
 * call's stdout (the result a DEL then gets as prevResult).
 */
export function columnTimer(cols) {
  let out = '';
  const timed = (c, argv, env, input = '') => {
    const t0 = process.hrtime.bigint();
    const r = spawnSync(argv[0], argv.slice(1), { env: { PATH: process.env.PATH, ...c.env, ...env }, input, encoding: 'utf8' });
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    if (r.status !== 0) throw new Error(`${argv.join(' ')} ${env.CNI_COMMAND ?? ''} (${c.key}) failed: ${r.stdout}${r.stderr}${r.error ?? ''}`);
    out = r.stdout;
    return ms;
  };
  const measure = (set, c, i, argv, env, input) => {
    const ms = timed(c, argv, env, input);
    if (i >= 0) set[c.key].push(ms);
  };
  return { series: () => Object.fromEntries(cols.map((c) => [c.key, []])), timed, measure, last: () => out };
}

export const MODES = ['ref', 'exec', 'engine'];
export const modeEnv = (who) => (who === 'exec' ? { CNI_TS_ENGINE: 'off' } : {});
/** Repetition i's order: the three in turn, rotated so that none is always first. */
export const order = (i) => MODES.map((_, k) => MODES[(i + k) % MODES.length]);

export function nsIno(path) {
  try {
    return statSync(path).ino;
  } catch {
    return undefined;
  }
}

/** The engine id of callers in network namespace `net` and mount namespace `mnt` (paths). */
export function engineId(net = '/proc/self/ns/net', mnt = '/proc/self/ns/mnt') {
  const a = nsIno(net);
  const b = nsIno(mnt);
  if (a === undefined || b === undefined) throw new Error(`no namespace at ${net} / ${mnt}`);
  return `${a}-${b}`;
}

export const engineFile = (id, ext) => join(ENGINE_DIR, `engine-${id}.${ext}`);

function alive(pid) {
  try {
    return !/^\S+ \(.*\) [ZX] /s.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

function isEngine(pid) {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')[1] === 'engine';
  } catch {
    return false;
  }
}

export function exeOf(pid) {
  try {
    return readlinkSync(`/proc/${pid}/exe`).replace(/ \(deleted\)$/, '');
  } catch {
    return undefined;
  }
}

/** The live engine of `id` by its pid file, or undefined. */
export function enginePid(id) {
  let pid;
  try {
    pid = Number(readFileSync(engineFile(id, 'pid'), 'utf8').trim());
  } catch {
    return undefined;
  }
  return Number.isInteger(pid) && pid > 1 && alive(pid) && isEngine(pid) && existsSync(engineFile(id, 'sock')) ? pid : undefined;
}

/** Waits until `id` has a live engine with its socket in place; its pid, or undefined after `ms`. */
export function waitEngine(id, ms = 15_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const pid = enginePid(id);
    if (pid || Date.now() > deadline) return pid;
    sleep(20);
  }
}

const realOrSelf = (p) => {
  try {
    return realpathSync(p);
  } catch {
    return p;
  }
};

/**
 * Stops the engine(s) of `id` whose executable is one of `exes` (our copies
 * of cni-ts): found by the pid file, and among the processes (one still
 * starting has written none). SIGTERM (the engine finishes what it has and
 * removes its socket and pid file), wait until gone (up to 15 s, then
 * SIGKILL and its files removed). An engine of `id` that is not ours is left
 * alone and reported. Returns { stopped: [pids], foreign: [[pid, exe]] }.
 */
export function stopEngine(id, exes) {
  const own = new Set(exes.flatMap((e) => [e, realOrSelf(e)]));
  const [net, mnt] = id.split('-').map(Number);
  const found = new Set();
  const foreign = [];
  const consider = (pid) => {
    if (!Number.isInteger(pid) || pid <= 1 || pid === process.pid || found.has(pid) || !alive(pid) || !isEngine(pid)) return;
    if (nsIno(`/proc/${pid}/ns/net`) !== net || nsIno(`/proc/${pid}/ns/mnt`) !== mnt) return;
    const exe = exeOf(pid);
    if (exe && own.has(exe)) found.add(pid);
    else if (!foreign.some(([p]) => p === pid)) foreign.push([pid, exe]);
  };
  try {
    consider(Number(readFileSync(engineFile(id, 'pid'), 'utf8').trim()));
  } catch {
    // no pid file
  }
  for (const name of readdirSync('/proc')) if (/^\d+$/.test(name)) consider(Number(name));
  for (const pid of found) {
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      // gone
    }
  }
  const deadline = Date.now() + 15_000;
  while ([...found].some(alive) && Date.now() < deadline) sleep(20);
  for (const pid of [...found].filter(alive)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  while ([...found].some(alive) && Date.now() < deadline + 5000) sleep(20);
  // A killed engine leaves its pid file and socket: removed while they are still its.
  try {
    const pid = Number(readFileSync(engineFile(id, 'pid'), 'utf8').trim());
    if (found.has(pid) && !alive(pid)) {
      rmSync(engineFile(id, 'pid'), { force: true });
      rmSync(engineFile(id, 'sock'), { force: true });
    }
  } catch {
    // gone
  }
  return { stopped: [...found], foreign };
}

/** Peak and current resident set of a process, MB (VmHWM, VmRSS of /proc/<pid>/status). */
export function memoryOf(pid) {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)?.[1] ?? NaN);
  return { hwm: kb('VmHWM') / 1024, rss: kb('VmRSS') / 1024 };
}

/**
 * The request lines an engine of `id` logged at or after `sinceMs` (epoch
 * ms), from engine-<id>.log and its rotated .log.1:
 * { at, plugin, command, pid (the client's), container, ifname, ms (accept → answer, queue included), exit }.
 */
export function engineLog(id, sinceMs = 0) {
  const out = [];
  for (const f of [engineFile(id, 'log.1'), engineFile(id, 'log')]) {
    let text;
    try {
      text = readFileSync(f, 'utf8');
    } catch {
      continue;
    }
    for (const l of text.split('\n')) {
      const m = /^(\S+) (\S+) (\S+) pid=(\d+) container=(\S*) if=(\S*) ([\d.]+)ms exit=(\d+)/.exec(l);
      if (!m) continue;
      const at = Date.parse(m[1]);
      if (at < sinceMs) continue;
      out.push({ at, plugin: m[2], command: m[3], pid: Number(m[4]), container: m[5], ifname: m[6], ms: Number(m[7]), exit: Number(m[8]) });
    }
  }
  return out;
}

/** The files of engine ids in /run/cni-ts now, so that only those the bench made are removed afterwards. */
export function engineFilesNow() {
  try {
    return new Set(readdirSync(ENGINE_DIR).filter((n) => n.startsWith('engine-')));
  } catch {
    return new Set();
  }
}

/** Removes the files of engine `id` (no live engine) that were not in `before`. */
export function removeEngineFiles(id, before) {
  if (enginePid(id)) return;
  for (const ext of ['log', 'log.1', 'lock', 'pid', 'sock']) {
    const name = `engine-${id}.${ext}`;
    if (!before.has(name)) rmSync(join(ENGINE_DIR, name), { force: true });
  }
}

/**
 * The lock the tests take around work in the machine's own network namespace
 * (test/helpers/podman.ts, hostNetLock): a directory; one left by a dead
 * process is taken over. Synchronous; returns the release function and how
 * long it waited.
 */
export function hostNetLock(timeoutMs = 1_200_000) {
  const dir = '/run/lock/cnits-hostnet';
  const t0 = Date.now();
  for (;;) {
    try {
      mkdirSync(dir);
      writeFileSync(join(dir, 'pid'), String(process.pid));
      return { release: () => rmSync(dir, { recursive: true, force: true }), waitedMs: Date.now() - t0 };
    } catch (e) {
      if (e.code !== 'EEXIST') throw e;
    }
    let owner = 0;
    try {
      owner = Number(readFileSync(join(dir, 'pid'), 'utf8'));
    } catch {
      // being created or removed
    }
    if (owner && !existsSync(`/proc/${owner}`)) rmSync(dir, { recursive: true, force: true });
    if (Date.now() - t0 > timeoutMs) throw new Error(`${dir} is held by pid ${owner}`);
    sleep(200);
  }
}

/** Kills (SIGKILL) every process other than us whose command line contains `text` (a temp dir: shims, dnsmasq, holders). */
export function killByCmdline(text) {
  const killed = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p) || Number(p) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(text)) {
        process.kill(Number(p), 'SIGKILL');
        killed.push(Number(p));
      }
    } catch {
      // gone
    }
  }
  return killed;
}

/** Mount points at or below `dir`, deepest first. */
export function mountsBelow(dir) {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m) => !!m && (m === dir || m.startsWith(`${dir}/`)))
    .sort((a, b) => b.length - a.length);
}

// ---- iptables of the machine's namespace (as test/helpers/podman.ts) ----

const IPT = [['iptables-save', 'iptables-restore'], ['ip6tables-save', 'ip6tables-restore']];

/** iptables-save and ip6tables-save, without comments and counters. */
export function iptablesState() {
  return Object.fromEntries(IPT.map(([save]) => [save, spawnSync(save, [], { encoding: 'utf8' }).stdout.split('\n')
    .filter((l) => !l.startsWith('#')).map((l) => l.replace(/ \[\d+:\d+\]$/, ' [0:0]')).join('\n')]));
}

function tables(text) {
  const out = new Map();
  let cur;
  for (const l of text.split('\n')) {
    if (l.startsWith('*')) out.set(l.slice(1), (cur = { chains: [], rules: [] }));
    else if (cur && l.startsWith(':')) cur.chains.push(l.slice(1).split(' ')[0]);
    else if (cur && l.startsWith('-A ')) cur.rules.push(l);
  }
  return out;
}

/** The per-container chains plugins name after (network, container id): bridge's ipMasq chain, portmap's DNAT chain. */
export function containerChains(network, id) {
  const h = createHash('sha512').update(network + id).digest('hex');
  return [`CNI-${h.slice(0, 24)}`, `CNI-DN-${h.slice(0, 21)}`];
}

function isOwnedRule(rule, o, chains) {
  const [, chain] = rule.split(' ');
  const target = / -[jg] (\S+)/.exec(rule)?.[1];
  if (chains.has(chain) || (target && chains.has(target))) return true;
  const padded = `${rule} `;
  if (o.bridges.some((b) => padded.includes(` ${b} `))) return true;
  if (o.networks.some((n) => padded.includes(`"${n}"`) || padded.includes(`\\"${n}\\"`))) return true;
  if (o.containerIds.some((id) => rule.includes(id))) return true;
  return o.prefixes.some((p) => new RegExp(`(^|[\\s/,=])${p.replace(/[.]/g, '\\.')}[0-9a-f:]`).test(rule));
}

/**
 * What the bench added to the machine's tables since `before`: new rules it
 * owns (naming its networks, bridges, containers, subnets: `owned` =
 * { networks, bridges, prefixes, containerIds }), its per-container chains,
 * and new CNI-* chains nobody else uses with the new rules jumping to them.
 */
export function iptablesAdded(before, owned) {
  const added = { rules: [], chains: [] };
  const now = iptablesState();
  const perContainer = new Set(owned.networks.flatMap((n) => owned.containerIds.flatMap((id) => containerChains(n, id))));
  for (const [save] of IPT) {
    const old = tables(before[save] ?? '');
    for (const [table, t] of tables(now[save])) {
      const o = old.get(table) ?? { chains: [], rules: [] };
      const fresh = t.rules.filter((r) => !o.rules.includes(r));
      const ours = new Set(fresh.filter((r) => isOwnedRule(r, owned, perContainer)));
      const left = t.rules.filter((r) => !ours.has(r));
      const removable = new Set(t.chains.filter((c) => perContainer.has(c) || (c.startsWith('CNI-') && !o.chains.includes(c))));
      for (let changed = true; changed;) {
        changed = false;
        for (const c of removable) {
          const foreign = left.some((r) => r.split(' ')[1] === c && !removable.has(/ -[jg] (\S+)/.exec(r)?.[1] ?? ''))
            || left.some((r) => !fresh.includes(r) && removable.has(/ -[jg] (\S+)/.exec(r)?.[1] ?? '') && / -[jg] (\S+)/.exec(r)?.[1] === c);
          if (foreign) {
            removable.delete(c);
            changed = true;
          }
        }
      }
      for (const r of t.rules) {
        const target = / -[jg] (\S+)/.exec(r)?.[1] ?? '';
        if (ours.has(r) || (fresh.includes(r) && removable.has(target)) || removable.has(r.split(' ')[1])) added.rules.push([save, table, r]);
      }
      for (const c of removable) added.chains.push([save, table, c]);
    }
  }
  return added;
}

/** Removes what iptablesAdded() reports, one (ip6)iptables-restore --noflush per family. Returns the count removed. */
export function iptablesRestore(before, owned) {
  const { rules, chains } = iptablesAdded(before, owned);
  for (const [save, restore] of IPT) {
    const byTable = new Map();
    const add = (table, line) => byTable.set(table, [...(byTable.get(table) ?? []), line]);
    const gone = chains.filter(([s]) => s === save);
    for (const [s, table, r] of rules) {
      if (s !== save) continue;
      const chain = r.split(' ')[1];
      if (gone.some(([, t, c]) => t === table && c === chain)) continue; // flushed below
      add(table, `-D ${r.slice(3)}`);
    }
    for (const [, table, c] of gone) add(table, `-F ${c}`);
    for (const [, table, c] of gone) add(table, `-X ${c}`);
    if (byTable.size === 0) continue;
    spawnSync(restore, ['--noflush', '-w'], { input: [...byTable].map(([t, lines]) => `*${t}\n${lines.join('\n')}\nCOMMIT\n`).join('') });
  }
  return rules.length + chains.length;
}

/**
 * A private copy of bin/ (the client, cni-ts and the plugin links) in `to`,
 * so that a rebuild of bin/ during the bench cannot race it; again while the
 * copy does not answer VERSION (copied half written).
 */
export function copyBin(from, to) {
  const deadline = Date.now() + 60_000;
  for (;;) {
    rmSync(to, { recursive: true, force: true });
    mkdirSync(to, { recursive: true });
    for (const name of readdirSync(from)) {
      const src = join(from, name);
      const st = lstatSync(src);
      if (st.isSymbolicLink()) symlinkSync(readlinkSync(src), join(to, name));
      else if (st.isFile()) {
        copyFileSync(src, join(to, name));
        chmodSync(join(to, name), st.mode & 0o7777);
      }
    }
    const v = spawnSync(join(to, 'bridge'), [], { env: { PATH: process.env.PATH, CNI_TS_ENGINE: 'off', CNI_COMMAND: 'VERSION' }, input: '{"cniVersion":"1.0.0"}', encoding: 'utf8' });
    if (v.status === 0 && v.stdout.includes('supportedVersions')) return;
    if (Date.now() > deadline) throw new Error(`the copy of ${from} does not answer VERSION: ${v.stderr}`);
    sleep(1000);
  }
}

/** Running engines (also still starting ones) whose executable is one of `exes`: [{ pid, id }]. */
export function enginesOf(exes) {
  const own = new Set(exes.flatMap((e) => [e, realOrSelf(e)]));
  const out = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (pid === process.pid || !isEngine(pid) || !alive(pid)) continue;
    const exe = exeOf(pid);
    if (!exe || !own.has(exe)) continue;
    const net = nsIno(`/proc/${pid}/ns/net`);
    const mnt = nsIno(`/proc/${pid}/ns/mnt`);
    if (net !== undefined && mnt !== undefined) out.push({ pid, id: `${net}-${mnt}` });
  }
  return out;
}

/** The engine's other log lines (starts, exits, retired workers, refusals) at or after `sinceMs`: text after the time. */
export function engineEvents(id, sinceMs = 0) {
  const out = [];
  for (const f of [engineFile(id, 'log.1'), engineFile(id, 'log')]) {
    let text;
    try {
      text = readFileSync(f, 'utf8');
    } catch {
      continue;
    }
    for (const l of text.split('\n')) {
      const m = /^(\S+) (.*)$/.exec(l);
      if (!m || / pid=\d+ container=/.test(l) || Date.parse(m[1]) < sinceMs) continue;
      out.push(m[2]);
    }
  }
  return out;
}
