import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync, realpathSync, rmSync, statSync, unlinkSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';

/**
 * The test matrix (docs/engine.md): every integration test runs once with
 * the plugins executed by their client (`CNI_TS_MODE=exec`, the default:
 * `CNI_TS_ENGINE=off` in every environment a test hands a plugin, so the
 * client executes cni-ts itself and starts nothing) and once through the
 * resident engine (`CNI_TS_MODE=engine`: the client forwards each call to
 * the engine of its (network, mount) namespace pair, starting one on first
 * use).
 */
export type Mode = 'exec' | 'engine';

function parseMode(value: string | undefined): Mode {
  if (value === undefined || value === '' || value === 'exec') return 'exec';
  if (value === 'engine') return 'engine';
  throw new Error(`CNI_TS_MODE must be "exec" or "engine", not ${JSON.stringify(value)}`);
}

export const MODE: Mode = parseMode(process.env.CNI_TS_MODE);

/** What to merge into every environment a test gives a plugin (or cnitool, cni-manager, podman, containerd …). */
export function modeEnv(): Record<string, string> {
  return MODE === 'exec' ? { CNI_TS_ENGINE: 'off' } : {};
}

/** modeEnv() as `KEY=VALUE` arguments, for argv that go through env(1). */
export function modeEnvArgs(): string[] {
  return Object.entries(modeEnv()).map(([k, v]) => `${k}=${v}`);
}

/**
 * The argv prefix that runs a plugin (or anything that runs plugins:
 * cnitool, cni-manager) inside the test's "host" namespace `ns`. Engine
 * mode uses nsenter, which keeps the test process's mount namespace:
 * `ip netns exec` makes a new mount namespace per call (to remount /sys),
 * and every call would then get an engine of its own.
 */
export function inNetns(ns: string): string[] {
  return MODE === 'exec' ? ['ip', 'netns', 'exec', ns] : ['nsenter', `--net=/run/netns/${ns}`, '--'];
}

/**
 * The test process's own environment, for code that runs plugins from
 * inside it and passes on only what it finds there (the service-manager
 * library, manager/exec.ts): CNI_TS_ENGINE=off in exec mode, unset in
 * engine mode. Called once per test file by the setup file
 * (test/helpers/mode-setup.ts).
 */
export function applyModeToProcessEnv(): void {
  if (MODE === 'exec') process.env.CNI_TS_ENGINE = 'off';
  else delete process.env.CNI_TS_ENGINE;
}

const ROOT = resolve(__dirname, '../..');
/** Where engines of the shipped build and of the test build keep their files (root: docs/engine.md). */
const ENGINE_DIRS = ['/run/cni-ts', '/run/cni-ts/test'];
/** The executables an engine of this repository runs from. */
const OWN_BINARIES = [join(ROOT, 'bin/cni-ts'), join(ROOT, '.build/test-bin/cni-ts')];

export interface StopOptions {
  /**
   * Directories holding copies of the binary (podman's and containerd's
   * plugin dirs, a sandbox's private bin/): an engine whose executable is a
   * `cni-ts` below one of them is ours too.
   */
  dirs?: string[];
  /**
   * Engines of the namespace in every mount namespace, not only the test
   * process's: for a sandbox's own namespace (nobody else's engines live
   * there), and for callers in a private mount namespace (`unshare --mount`).
   */
  anyMount?: boolean;
}

const nsIno = (path: string): number | undefined => {
  try {
    return statSync(path).ino;
  } catch {
    return undefined;
  }
};

function realOrSelf(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return p;
  }
}

/** Whether `pid` runs one of our binaries (also after it was replaced by a rebuild: "… (deleted)"). */
function runsOurBinary(pid: number, dirs: string[]): boolean {
  let exe: string;
  try {
    exe = readlinkSync(`/proc/${pid}/exe`).replace(/ \(deleted\)$/, '');
  } catch {
    return false;
  }
  const own = OWN_BINARIES.flatMap((b) => [b, realOrSelf(b)]);
  if (own.includes(exe)) return true;
  if (basename(exe) !== 'cni-ts') return false;
  return dirs.flatMap((d) => [d, realOrSelf(d)]).some((d) => exe.startsWith(`${d.replace(/\/+$/, '')}/`));
}

function isEngine(pid: number): boolean {
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    return argv[1] === 'engine';
  } catch {
    return false;
  }
}

/** Alive and not a zombie (an engine's parent is init, which may reap late). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\S+ \(.*\) [ZX] /s.test(stat);
  } catch {
    return false;
  }
}

const sleepSync = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

/**
 * Stops the engine(s) serving the network namespace `ns` (/run/netns/<ns>;
 * the test process's own one when undefined) from the test process's mount
 * namespace (any with `anyMount`): found by their pid files in /run/cni-ts
 * and /run/cni-ts/test, and — for one still starting, which has written no
 * pid file yet — among the processes. Only a process whose executable is
 * this repository's bin/cni-ts or .build/test-bin/cni-ts (or a `cni-ts`
 * below opts.dirs) and that runs `engine` is signalled: SIGTERM (the engine
 * finishes what it has and removes its socket and pid file), up to 10 s,
 * then SIGKILL. Nothing there: nothing done.
 *
 * Also in exec mode: there nothing should have started an engine, but if
 * something did (a caller that dropped CNI_TS_ENGINE on the way), the
 * engine must not outlive the test; it is reported on stderr.
 */
export function stopEngines(ns?: string, opts: StopOptions = {}): void {
  const net = nsIno(ns === undefined ? '/proc/self/ns/net' : `/run/netns/${ns}`);
  const mnt = nsIno('/proc/self/ns/mnt');
  if (net === undefined || mnt === undefined) return;
  const dirs = opts.dirs ?? [];
  const matches = (pid: number): boolean => {
    if (!Number.isInteger(pid) || pid <= 1 || pid === process.pid || !alive(pid)) return false;
    if (nsIno(`/proc/${pid}/ns/net`) !== net) return false;
    if (!opts.anyMount && nsIno(`/proc/${pid}/ns/mnt`) !== mnt) return false;
    return isEngine(pid) && runsOurBinary(pid, dirs);
  };
  const found = new Map<number, string | undefined>(); // pid → its pid file
  for (const dir of ENGINE_DIRS) {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      continue;
    }
    const prefix = opts.anyMount ? `engine-${net}-` : `engine-${net}-${mnt}.`;
    for (const name of names) {
      if (!name.startsWith(prefix) || !name.endsWith('.pid')) continue;
      const file = join(dir, name);
      let pid: number;
      try {
        pid = Number(readFileSync(file, 'utf8').trim());
      } catch {
        continue;
      }
      if (matches(pid)) found.set(pid, file);
    }
  }
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!found.has(pid) && matches(pid)) found.set(pid, undefined);
  }
  if (found.size === 0) {
    if (ns !== undefined) removeStale(net, opts.anyMount ? undefined : mnt);
    return;
  }
  if (MODE === 'exec') {
    const what = [...found.keys()].map((pid) => `${pid} (${readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').trim()})`);
    process.stderr.write(`stopEngines(${ns ?? 'own namespace'}): engine(s) running in exec mode: ${what.join(', ')}\n`);
  }
  const signal = (pid: number, sig: NodeJS.Signals) => {
    try {
      process.kill(pid, sig);
    } catch {
      // gone
    }
  };
  for (const pid of found.keys()) signal(pid, 'SIGTERM');
  const waitGone = (ms: number) => {
    const deadline = Date.now() + ms;
    while ([...found.keys()].some(alive) && Date.now() < deadline) sleepSync(50);
  };
  waitGone(10_000);
  const stubborn = [...found.keys()].filter(alive);
  for (const pid of stubborn) signal(pid, 'SIGKILL');
  if (stubborn.length) {
    process.stderr.write(`stopEngines(${ns ?? 'own namespace'}): engine(s) ${stubborn.join(', ')} ignored SIGTERM for 10 s: SIGKILLed\n`);
    waitGone(5_000);
  }
  // A killed engine leaves its pid file and socket behind: remove them while they are still its.
  for (const [pid, file] of found) {
    if (!file || alive(pid)) continue;
    try {
      if (Number(readFileSync(file, 'utf8').trim()) !== pid) continue;
      unlinkSync(file);
      unlinkSync(file.replace(/\.pid$/, '.sock'));
    } catch {
      // gone already (the engine removed them itself)
    }
  }
  if (ns !== undefined) removeStale(net, opts.anyMount ? undefined : mnt);
}

/** The engine files (pid, socket, lock, log) of the machine's own network namespace there are now. */
export function machineEngineFiles(): Set<string> {
  const net = nsIno('/proc/self/ns/net');
  const out = new Set<string>();
  if (net === undefined) return out;
  for (const dir of ENGINE_DIRS) {
    try {
      for (const n of readdirSync(dir)) if (n.startsWith(`engine-${net}-`)) out.add(join(dir, n));
    } catch {
      // no such directory
    }
  }
  return out;
}

/**
 * For tests that run a runtime in the machine's own namespace (podman,
 * containerd; under the host-net lock, so no other test makes such files
 * meanwhile): removes the engine files of that namespace made since
 * `before` whose engine is not running any more.
 */
export function removeMachineEngineFiles(before: Set<string>): void {
  for (const file of machineEngineFiles()) {
    if (before.has(file)) continue;
    const base = file.replace(/\.(pid|sock|lock|log|log\.1)$/, '');
    try {
      const pid = Number(readFileSync(`${base}.pid`, 'utf8').trim());
      if (alive(pid) && isEngine(pid)) continue;
    } catch {
      // no pid file: no engine runs
    }
    rmSync(file, { force: true });
  }
}

/**
 * The files of engines of network namespace `net` (and mount namespace
 * `mnt`, or any) that are not running any more: the pid file and socket of
 * one that died without removing them (SIGKILLed: a failpoint, a client's
 * timeout), and the lock and log every engine leaves, so that a later
 * namespace given the same inode number finds none of them and a test run
 * leaves nothing in the engine directories. Only for a test's own namespace.
 */
function removeStale(net: number, mnt: number | undefined): void {
  for (const dir of ENGINE_DIRS) {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      continue;
    }
    const prefix = mnt === undefined ? `engine-${net}-` : `engine-${net}-${mnt}.`;
    const engines = new Set(names.filter((n) => n.startsWith(prefix)).map((n) => n.replace(/\.(pid|sock|lock|log|log\.1)$/, '')));
    for (const base of engines) {
      const file = join(dir, base);
      try {
        const pid = Number(readFileSync(`${file}.pid`, 'utf8').trim());
        if (alive(pid) && isEngine(pid)) continue;
      } catch {
        // no pid file: no engine runs
      }
      for (const ext of ['pid', 'sock', 'lock', 'log', 'log.1']) rmSync(`${file}.${ext}`, { force: true });
    }
  }
}

/**
 * Whether the clients this process runs start engines: the client refuses
 * only a mount namespace made for the call alone (neither init's nor its
 * parent's: native/client.c, step 10 of docs/engine.md), and the clients
 * started here share this process's.
 */
export function clientsStartEngines(): boolean {
  return nsIno('/proc/self/ns/mnt') !== undefined;
}

/**
 * Engine mode: has the client of `bin` (a plugin directory: bin/ or the test
 * build's) start the engine of namespace `ns` (and the test process's mount
 * namespace) the way it does on a first call — a VERSION, answered by the
 * exec path — and waits (up to `timeoutMs`) until the engine listens, so
 * that the test's own calls all reach the engine instead of the first one
 * taking the exec path. Returns whether it listens. A no-op in exec mode.
 */
export function startEngine(ns: string, bin: string, timeoutMs = 10_000): boolean {
  if (MODE !== 'engine' || !clientsStartEngines()) return false;
  const net = nsIno(`/run/netns/${ns}`);
  const mnt = nsIno('/proc/self/ns/mnt');
  if (net === undefined || mnt === undefined) return false;
  const dir = realOrSelf(bin) === realOrSelf(join(ROOT, '.build/test-bin')) ? '/run/cni-ts/test' : '/run/cni-ts';
  const base = join(dir, `engine-${net}-${mnt}`);
  // Not the socket file alone (one left by a killed engine of a namespace that had the same inode
  // number may be there): a live engine of this namespace whose log says it started (it logs that
  // once its socket is in place).
  const listening = () => {
    try {
      const pid = Number(readFileSync(`${base}.pid`, 'utf8').trim());
      if (!alive(pid) || !isEngine(pid) || nsIno(`/proc/${pid}/ns/net`) !== net) return false;
      return readFileSync(`${base}.log`, 'utf8').includes(`engine ${pid} started`);
    } catch {
      return false;
    }
  };
  if (listening()) return true;
  const argv = [...inNetns(ns), join(bin, 'loopback')];
  spawnSync(argv[0], argv.slice(1), { input: '{"cniVersion":"1.0.0"}', env: { PATH: process.env.PATH ?? '', CNI_COMMAND: 'VERSION' }, encoding: 'utf8' });
  const deadline = Date.now() + timeoutMs;
  while (!listening() && Date.now() < deadline) sleepSync(20);
  return listening();
}

/** The engines of this repository's binaries that are running now (pid and command line), for leak checks. */
export function runningEngines(): string[] {
  const out: string[] = [];
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid) || !alive(pid) || !isEngine(pid) || !runsOurBinary(pid, [])) continue;
    try {
      out.push(`${pid} ${readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').trim()}`);
    } catch {
      // gone
    }
  }
  return out;
}
