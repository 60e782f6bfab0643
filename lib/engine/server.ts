import { createHash } from 'node:crypto';
import { closeSync, constants, lstatSync, openSync, readFileSync, renameSync, statSync, unlinkSync, chmodSync, writeSync, fstatSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import * as sea from 'node:sea';
import { Worker } from 'node:worker_threads';
import { openOwnFile, ownDir, writeOwnFile } from '../exec/safefs.js';
import { addonPathsForWorkers, loadAddon } from '../netlink/native.js';
import { decodeRequest, encodeResponse, envMap, frameLength, MAX_REQUEST, ProtocolError, type Request, type Response } from './protocol.js';
import type { Job, JobDone } from './worker.js';

/**
 * The resident engine (docs/engine.md): `cni-ts engine --dir D [--idle S]
 * [--workers N]`. The main thread owns the socket: it checks who connects
 * (SO_PEERCRED: our own uid only), reads one bounded request, checks that
 * the caller sees the world as the engine does (same namespaces and root;
 * otherwise the client is told to execute the plugin itself), and queues
 * the call — one at a time per container and interface, in arrival order —
 * for a pool of worker threads (lib/engine/worker.ts), each of which runs
 * the plugin exactly as the standalone binary would. The engine exits after
 * an idle period, and drains and exits when a client of another build
 * appears (an upgrade).
 */
export const DEFAULTS = {
  idleSeconds: 120,
  workers: Math.min(4, Math.max(2, availableParallelism())),
  requestsPerWorker: 1000,
  maxConnections: 256,
  maxQueued: 256,
  requestTimeoutMs: 10_000,
  logBytes: 1024 * 1024,
  /** Workers beyond the first are ended after this long without a call (memory back when idle)… */
  workerIdleMs: 30_000,
  /** …and the last one after this long (the next call then starts one: ~50–100 ms). */
  lastWorkerIdleMs: 60_000,
  workerYoungMb: 4,
} as const;

interface Sys {
  peercred(fd: number): [number, number, number];
  flockWait(fd: number, exclusive: boolean, timeoutMs: number): boolean;
}

/** What the engine and its clients agree on: the bundle's hash (the client has it compiled in). */
export function buildId(): string {
  if (!sea.isSea()) return 'dev';
  return createHash('sha256').update(Buffer.from(sea.getRawAsset('bundle.js') as ArrayBuffer)).digest('hex').slice(0, 16);
}

/** The engine serving callers in this process's network and mount namespaces. */
export function engineId(): string {
  return `${statSync('/proc/self/ns/net').ino}-${statSync('/proc/self/ns/mnt').ino}`;
}

export const enginePaths = (dir: string, id = engineId()) => ({
  socket: join(dir, `engine-${id}.sock`),
  lock: join(dir, `engine-${id}.lock`),
  pid: join(dir, `engine-${id}.pid`),
  log: join(dir, `engine-${id}.log`),
});

/** Whether the process `pid` sees the same namespaces and root as this one. */
function sameWorld(pid: number): string | undefined {
  for (const ns of ['net', 'mnt', 'user', 'pid']) {
    const a = statSync(`/proc/self/ns/${ns}`);
    const b = statSync(`/proc/${pid}/ns/${ns}`);
    if (a.ino !== b.ino || a.dev !== b.dev) return `the caller is in another ${ns} namespace`;
  }
  const a = statSync('/');
  const b = statSync(`/proc/${pid}/root`);
  if (a.ino !== b.ino || a.dev !== b.dev) return 'the caller has another root directory';
  return undefined;
}

/**
 * A client the engine's own plugins started (delegation to a plugin of
 * another install: same build, other directory). Served here it would wait
 * behind the very call that made it (same container and interface) while
 * that call holds a worker: it is told to take the exec path instead.
 */
function ownChild(pid: number): boolean {
  try {
    return /^PPid:\s*(\d+)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] === String(process.pid);
  } catch {
    return false;
  }
}

class Log {
  private fd: number;
  private size: number;
  constructor(private readonly path: string) {
    this.fd = openOwnFile(path, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT);
    this.size = fstatSync(this.fd).size;
  }
  line(text: string): void {
    const buf = Buffer.from(`${new Date().toISOString()} ${text.replace(/[\x00-\x1f]/g, ' ')}\n`, 'utf8');
    if (this.size + buf.length > DEFAULTS.logBytes) {
      // Bounded: the current file becomes .1 (the older .1 is dropped).
      closeSync(this.fd);
      renameSync(this.path, `${this.path}.1`);
      this.fd = openOwnFile(this.path, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT);
      this.size = 0;
    }
    try {
      writeSync(this.fd, buf);
      this.size += buf.length;
    } catch {
      // a full /run must not stop the engine
    }
  }
}

interface Pending {
  job: Job;
  key: string | undefined;
  socket: Socket;
  peer: number;
  start: number;
  netnsFd?: number;
  command: string;
}

interface Slot {
  worker: Worker;
  busy?: Pending;
  served: number;
  idleSince: number;
}

const USAGE = 'usage: cni-ts engine --dir DIR [--idle SECONDS] [--workers N] [--worker-requests N]';

function parseArgs(args: string[]): { dir: string; idle: number; workers: number; workerRequests: number } {
  let dir: string | undefined;
  let idle: number = DEFAULTS.idleSeconds;
  let workers: number = DEFAULTS.workers;
  let workerRequests: number = DEFAULTS.requestsPerWorker;
  for (let i = 0; i < args.length; i += 2) {
    const v = args[i + 1];
    const n = Number(v);
    if (args[i] === '--dir' && v) dir = v;
    else if (args[i] === '--idle' && Number.isInteger(n) && n > 0) idle = n;
    else if (args[i] === '--workers' && Number.isInteger(n) && n > 0 && n <= 64) workers = n;
    else if (args[i] === '--worker-requests' && Number.isInteger(n) && n > 0) workerRequests = n;
    else throw new Error(`${USAGE} (at "${args[i]}")`);
  }
  if (!dir) throw new Error(USAGE);
  return { dir, idle, workers, workerRequests };
}

/** The code a worker evaluates: the same bundle the binary runs, with its code cache. */
const WORKER_BOOT = `
const { Script } = require('node:vm');
const sea = require('node:sea');
const script = new Script(sea.getAsset('bundle.js', 'utf8'), { filename: 'cni-ts.js', cachedData: new Uint8Array(sea.getAsset('bundle.cache')) });
const mod = { exports: {} };
script.runInThisContext()(mod.exports, require, mod, process.execPath, '/');
`;

export async function engineMain(args: string[]): Promise<number> {
  const opts = parseArgs(args);
  // The umask runtimes run plugins with (files the plugins create get the modes they get in exec mode);
  // the engine's own files are made 0600/0700 explicitly.
  process.umask(0o022);
  const uid = process.geteuid?.() ?? 0;
  const dir = ownDir(opts.dir, { create: true });
  if ((lstatSync(dir).mode & 0o077) !== 0) throw new Error(`${dir} is accessible by group or others`);
  // Socket activation (a systemd socket unit, docs/engine.md): the listening socket is fd 3,
  // `engine.sock`, systemd's to keep; the engine takes no lock (systemd starts one at a time).
  const activated = process.env.LISTEN_PID === String(process.pid) && process.env.LISTEN_FDS === '1';
  const paths = activated ? { ...enginePaths(dir, 'activated'), socket: join(dir, 'engine.sock') } : enginePaths(dir);
  const sys = loadAddon<Sys>('sys');
  const addons = addonPathsForWorkers(); // held here for good: see lib/netlink/native.ts
  let lockFd: number | undefined;
  if (!activated) {
    lockFd = openOwnFile(paths.lock, constants.O_RDWR | constants.O_CREAT);
    if (!sys.flockWait(lockFd, true, 0)) return 0; // another engine has it
  }
  const build = buildId();
  const log = new Log(paths.log);
  writeOwnFile(paths.pid, `${process.pid}\n`);

  const slots: Slot[] = [];
  const ready: Pending[] = [];
  const keyQueues = new Map<string, Pending[]>();
  let nextId = 1;
  let connections = 0;
  let inFlight = 0;
  let lastActivity = Date.now();
  let draining = false;
  let socketIno: number | undefined;

  const server = createServer({ allowHalfOpen: true, pauseOnConnect: false });
  if (activated) {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ fd: 3 }, () => resolve());
    });
  } else {
    const tmp = `${paths.socket}.${process.pid}`;
    try {
      unlinkSync(tmp);
    } catch {
      // none
    }
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ path: tmp, backlog: 512 }, () => resolve());
    });
    chmodSync(tmp, 0o600);
    renameSync(tmp, paths.socket);
    socketIno = lstatSync(paths.socket).ino;
  }
  log.line(`engine ${process.pid} started${activated ? ' (socket activated)' : ''}: build ${build}, ${opts.workers} workers, idle ${opts.idle} s, socket ${paths.socket}`);

  const removeOwnFiles = () => {
    try {
      if (socketIno !== undefined && lstatSync(paths.socket).ino === socketIno) unlinkSync(paths.socket);
    } catch {
      // gone already
    }
    socketIno = undefined;
    try {
      if (statSync(paths.pid).isFile()) unlinkSync(paths.pid);
    } catch {
      // gone
    }
  };

  const exitWhenDone = () => {
    if (draining && inFlight === 0) {
      log.line(`engine ${process.pid} exits`);
      process.exit(0);
    }
  };

  /** Stop taking connections; finish what is queued; exit. */
  const drain = (why: string) => {
    if (draining) return;
    draining = true;
    log.line(`engine ${process.pid} draining: ${why}`);
    server.close();
    removeOwnFiles();
    if (lockFd !== undefined) closeSync(lockFd); // a new engine may start now
    exitWhenDone();
  };

  process.on('SIGTERM', () => drain('SIGTERM'));
  process.on('SIGINT', () => drain('SIGINT'));
  setInterval(() => {
    if (!draining && connections === 0 && inFlight === 0 && Date.now() - lastActivity > opts.idle * 1000) drain(`idle for ${opts.idle} s`);
    // Idle workers give their memory back.
    for (const slot of [...slots]) {
      const idleFor = slots.length > 1 ? DEFAULTS.workerIdleMs : DEFAULTS.lastWorkerIdleMs;
      if (slot.busy || Date.now() - slot.idleSince < idleFor) continue;
      slots.splice(slots.indexOf(slot), 1);
      endWorker(slot);
    }
  }, 1000).unref();

  /**
   * Ends a worker by letting its event loop run dry (it closes its port), not
   * by terminate(): a forced stop can land while the netlink binding is about
   * to call into JavaScript, and the binding answers the refused call with a
   * C++ exception no one catches, which aborts the whole engine. terminate()
   * only for a worker that has not ended 5 s later (something keeps it busy).
   */
  const endWorker = (slot: Slot) => {
    slot.worker.postMessage({ stop: true });
    const t = setTimeout(() => {
      log.line('worker did not end by itself: terminated');
      void slot.worker.terminate();
    }, 5000);
    t.unref();
    slot.worker.once('exit', () => clearTimeout(t));
  };

  const reply = (socket: Socket, r: Response) => {
    if (socket.destroyed) return;
    socket.end(encodeResponse(r));
  };

  const spawnWorker = (): Slot => {
    // A small young generation: a call allocates little, and each worker's semi-spaces are resident memory.
    const worker = new Worker(WORKER_BOOT, {
      eval: true, workerData: { cniTsEngineWorker: true, cniTsAddons: addons }, stdout: true, stderr: true,
      resourceLimits: { maxYoungGenerationSizeMb: DEFAULTS.workerYoungMb },
    });
    const slot: Slot = { worker, served: 0, idleSince: Date.now() };
    worker.on('message', (done: JobDone) => finish(slot, done));
    worker.on('error', (err) => log.line(`worker error: ${err?.stack ?? err}`));
    worker.on('exit', () => {
      const i = slots.indexOf(slot);
      if (i >= 0) slots.splice(i, 1);
      const p = slot.busy;
      if (p) {
        // Died mid-request: the client sees the connection close without an answer (ADD/CHECK: code 11).
        slot.busy = undefined;
        log.line(`${p.job.name} ${p.command} pid=${p.peer} ${containerOf(p)}: worker died mid-request`);
        p.socket.destroy();
        complete(p);
      }
      dispatch();
    });
    slots.push(slot);
    return slot;
  };

  const containerOf = (p: Pending) => `container=${p.job.env.CNI_CONTAINERID ?? '-'} if=${p.job.env.CNI_IFNAME ?? '-'}`;

  const complete = (p: Pending) => {
    inFlight--;
    lastActivity = Date.now();
    if (p.netnsFd !== undefined) closeSync(p.netnsFd);
    if (p.key !== undefined) {
      const q = keyQueues.get(p.key)!;
      q.shift();
      if (q.length) ready.push(q[0]);
      else keyQueues.delete(p.key);
    }
    exitWhenDone();
  };

  const finish = (slot: Slot, done: JobDone) => {
    const p = slot.busy;
    slot.busy = undefined;
    slot.served++;
    slot.idleSince = Date.now();
    if (!p || p.job.id !== done.id) return;
    const stdout = Buffer.from(done.stdout);
    let code = '-';
    if (done.exit !== 0) {
      try {
        code = String(JSON.parse(stdout.toString('utf8')).code);
      } catch {
        code = '?';
      }
    }
    log.line(`${p.job.name} ${p.command} pid=${p.peer} ${containerOf(p)} ${(performance.now() - p.start).toFixed(1)}ms exit=${done.exit} code=${code}`);
    reply(p.socket, { status: 'done', exit: done.exit, stdout, stderr: Buffer.from(done.stderr) });
    if (done.retire || slot.served >= opts.workerRequests) {
      if (done.retire) log.line(`worker retired: ${done.retire}`);
      const i = slots.indexOf(slot);
      if (i >= 0) slots.splice(i, 1);
      endWorker(slot);
    }
    complete(p);
    dispatch();
  };

  const dispatch = () => {
    while (ready.length) {
      let slot = slots.find((s) => !s.busy);
      if (!slot && slots.length < opts.workers) slot = spawnWorker();
      if (!slot) return;
      const p = ready.shift()!;
      slot.busy = p;
      slot.worker.postMessage(p.job);
    }
  };

  const accept = (socket: Socket, req: Request, peer: number) => {
    const why = draining ? 'the engine is draining' : req.build !== build ? `the engine is build ${build}, the client ${req.build}` : inFlight >= DEFAULTS.maxQueued ? 'the engine is at capacity' : ownChild(peer) ? 'a call made by a plugin running in this engine' : sameWorld(peer);
    if (why) {
      reply(socket, { status: 'exec', reason: why });
      if (req.build !== build && !draining) drain(`a client of build ${req.build}`);
      return;
    }
    const env = envMap(req.env);
    let netnsFd: number | undefined;
    if (req.netnsFd !== undefined) {
      try {
        // The caller's own descriptor, through /proc while it waits for us: its view of CNI_NETNS.
        netnsFd = openSync(`/proc/${peer}/fd/${req.netnsFd}`, constants.O_RDONLY | constants.O_NONBLOCK);
      } catch {
        netnsFd = undefined; // the worker opens the path as the binary would
      }
    }
    const job: Job = { id: nextId++, name: req.name, env, stdin: req.stdin, netnsVia: netnsFd !== undefined ? `/proc/self/fd/${netnsFd}` : undefined };
    const key = env.CNI_CONTAINERID !== undefined && env.CNI_COMMAND !== 'GC' && env.CNI_COMMAND !== 'STATUS' && env.CNI_COMMAND !== 'VERSION'
      ? `${env.CNI_CONTAINERID}\0${env.CNI_IFNAME ?? ''}` : undefined;
    const p: Pending = { job, key, socket, peer, start: performance.now(), netnsFd, command: env.CNI_COMMAND ?? '' };
    inFlight++;
    if (key === undefined) ready.push(p);
    else {
      const q = keyQueues.get(key);
      if (q) q.push(p); // waits for the one before it (arrival order)
      else {
        keyQueues.set(key, [p]);
        ready.push(p);
      }
    }
    dispatch();
  };

  server.on('connection', (socket: Socket) => {
    lastActivity = Date.now();
    const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
    let peer: [number, number, number];
    try {
      if (typeof fd !== 'number' || fd < 0) throw new Error('no descriptor');
      peer = sys.peercred(fd);
    } catch (err) {
      log.line(`refused a connection: no peer credentials (${(err as Error).message})`);
      socket.destroy();
      return;
    }
    if (peer[1] !== uid) {
      log.line(`refused pid ${peer[0]}: uid ${peer[1]} is not the engine's (${uid})`);
      socket.destroy();
      return;
    }
    if (connections >= DEFAULTS.maxConnections) {
      log.line(`declined pid ${peer[0]}: ${connections} connections open`);
      reply(socket, { status: 'exec', reason: 'the engine has too many connections' });
      return;
    }
    connections++;
    socket.on('close', () => {
      connections--;
      lastActivity = Date.now();
    });
    socket.on('error', () => undefined); // a client that went away: its request still completes
    const chunks: Buffer[] = [];
    let have = 0;
    let want: number | undefined;
    let done = false;
    socket.setTimeout(DEFAULTS.requestTimeoutMs, () => {
      if (done) return;
      log.line(`refused pid ${peer[0]}: no whole request within ${DEFAULTS.requestTimeoutMs} ms`);
      socket.destroy();
    });
    socket.on('data', (b: Buffer) => {
      if (done) return;
      chunks.push(b);
      have += b.length;
      try {
        const all = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
        want ??= frameLength(all, MAX_REQUEST);
        if (want === undefined || have < want) return;
        if (have > want) throw new ProtocolError('bytes after the request');
        done = true;
        socket.setTimeout(0);
        accept(socket, decodeRequest(all), peer[0]);
      } catch (err) {
        done = true;
        log.line(`refused pid ${peer[0]}: ${err instanceof ProtocolError ? 'malformed request' : 'error'}: ${(err as Error).message}`);
        socket.destroy();
      }
    });
  });

  return new Promise<number>(() => undefined); // runs until it drains (process.exit)
}
