import { spawn } from 'node:child_process';
import { closeSync, constants, lstatSync, openSync, realpathSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { basename, dirname, join } from 'node:path';
import { TEST_HOOKS } from '../cni/hooks.js';
import { loadAddon } from '../netlink/native.js';
import { decodeResponse, encodeRequest, frameLength, MAX_REQUEST, MAX_RESPONSE, type Response } from './protocol.js';
import { buildId, enginePaths } from './server.js';

/**
 * The engine's client for Node callers (cni-manager and the service-manager
 * library, manager/exec.ts): the same steps as native/client.c
 * (docs/engine.md, "Client, step by step") without a client process. Only
 * for plugins of this very install (their CNI_PATH entry links to the
 * `cni-ts-client` beside this binary), so the engine is of this build.
 */
export type EngineOutcome =
  | { kind: 'done'; exit: number; stdout: Buffer; stderr: Buffer }
  /** Nothing was done: run the plugin yourself (no engine, declined, not ours, disabled). */
  | { kind: 'exec'; reason: string }
  /** Sent, but no whole answer: the work may be half done. */
  | { kind: 'lost'; reason: string };

const CLEAN_PATH = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** The socket directory for this uid (and build variant); undefined where there is none. */
export function engineDir(): string | undefined {
  const uid = process.geteuid?.() ?? 0;
  let dir: string;
  if (uid === 0) dir = '/run/cni-ts';
  else {
    const xdg = process.env.XDG_RUNTIME_DIR;
    if (!xdg || !xdg.startsWith('/')) return undefined;
    dir = join(xdg, 'cni-ts');
  }
  return TEST_HOOKS ? join(dir, 'test') : dir;
}

/** Whether `file` (a plugin found in CNI_PATH) is the engine client of this install. */
export function isOurClient(file: string): boolean {
  try {
    const real = realpathSync(file);
    return basename(real) === 'cni-ts-client' && realpathSync(join(dirname(real), 'cni-ts')) === realpathSync(process.execPath);
  } catch {
    return false;
  }
}

export function engineDisabled(env: NodeJS.ProcessEnv = process.env): boolean {
  if (env.CNI_TS_ENGINE === 'off') return true;
  try {
    lstatSync('/etc/cni-ts/engine-off');
    return true;
  } catch {
    return false;
  }
}

/** Starts an engine for the next calls, detached (its own session, no inherited descriptors, a clean environment). */
export function startEngine(dir: string, idleSeconds?: number): void {
  const args = ['engine', '--dir', dir];
  if (idleSeconds) args.push('--idle', String(idleSeconds));
  try {
    const child = spawn(process.execPath, args, { detached: true, stdio: 'ignore', cwd: '/', env: { PATH: CLEAN_PATH.slice(5), MALLOC_ARENA_MAX: '2' }, argv0: 'cni-ts' });
    child.on('error', () => undefined);
    child.unref();
  } catch {
    // the exec path still answers
  }
}

function dirState(dir: string): 'ok' | 'missing' | 'unsafe' {
  try {
    const st = lstatSync(dir);
    return st.isDirectory() && st.uid === (process.geteuid?.() ?? 0) && (st.mode & 0o077) === 0 ? 'ok' : 'unsafe';
  } catch {
    return 'missing';
  }
}

export async function callEngine(name: string, env: Record<string, string>, stdin: Buffer, timeoutMs: number): Promise<EngineOutcome> {
  const dir = engineDir();
  const state = dir ? dirState(dir) : 'unsafe';
  if (!dir || state !== 'ok') {
    if (dir && state === 'missing') maybeStart(dir); // the engine makes it (0700)
    return { kind: 'exec', reason: `engine directory ${state}` };
  }
  if (stdin.length > MAX_REQUEST / 2) return { kind: 'exec', reason: 'request over the limit' };
  const paths = enginePaths(dir);
  const socket = await new Promise<Socket | undefined>((resolve) => {
    const s = connect(paths.socket);
    s.once('connect', () => resolve(s));
    s.once('error', () => resolve(undefined));
  });
  if (!socket) {
    maybeStart(dir);
    return { kind: 'exec', reason: 'no engine' };
  }
  const sys = loadAddon<{ peercred(fd: number): [number, number, number] }>('sys');
  let enginePid = 0;
  try {
    const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd ?? -1;
    const [pid, uid] = sys.peercred(fd);
    enginePid = pid;
    if (uid !== (process.geteuid?.() ?? 0)) throw new Error(`the engine runs as uid ${uid}`);
  } catch (err) {
    socket.destroy();
    return { kind: 'exec', reason: (err as Error).message };
  }
  let netnsFd: number | undefined;
  if (env.CNI_NETNS) {
    try {
      netnsFd = openSync(env.CNI_NETNS, constants.O_RDONLY | constants.O_NONBLOCK);
    } catch {
      netnsFd = undefined;
    }
  }
  const request = encodeRequest({
    build: buildId(), name, stdin, netnsFd,
    env: Object.entries(env).map(([k, v]) => Buffer.from(`${k}=${v}`, 'utf8')),
  });
  try {
    return await new Promise<EngineOutcome>((resolve) => {
      const chunks: Buffer[] = [];
      let sent = false;
      let settled = false;
      const settle = (o: EngineOutcome) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        socket.destroy();
        resolve(o);
      };
      const timer = setTimeout(() => {
        try {
          if (enginePid > 0) process.kill(enginePid, 'SIGKILL'); // it hangs: the next call starts a fresh one
        } catch {
          // gone
        }
        settle({ kind: 'lost', reason: `the cni-ts engine (pid ${enginePid}) did not answer within ${Math.round(timeoutMs / 1000)} s (killed)` });
      }, timeoutMs);
      socket.on('data', (b: Buffer) => chunks.push(b));
      socket.on('error', () => undefined);
      socket.on('close', () => {
        if (!sent) return settle({ kind: 'exec', reason: 'the engine closed before the request was sent' });
        const all = Buffer.concat(chunks);
        try {
          const len = frameLength(all, MAX_RESPONSE);
          if (len === undefined || len !== all.length) throw new Error('incomplete answer');
          const r: Response = decodeResponse(all);
          settle(r.status === 'exec' ? { kind: 'exec', reason: r.reason } : { kind: 'done', exit: r.exit, stdout: r.stdout, stderr: r.stderr });
        } catch {
          settle({ kind: 'lost', reason: `the cni-ts engine (pid ${enginePid}) closed the connection before answering` });
        }
      });
      socket.write(request, (err) => {
        if (err) settle({ kind: 'exec', reason: 'the request could not be sent' });
        else sent = true;
      });
    });
  } finally {
    if (netnsFd !== undefined) closeSync(netnsFd);
  }
}

function maybeStart(dir: string): void {
  if (engineDisabled()) return;
  // An engine that holds its lock is running or starting: nothing to do.
  try {
    const fd = openSync(enginePaths(dir).lock, constants.O_RDONLY | constants.O_NOFOLLOW);
    try {
      if (!loadAddon<{ flockWait(fd: number, x: boolean, ms: number): boolean }>('sys').flockWait(fd, true, 0)) return;
    } finally {
      closeSync(fd); // releases the probe's lock, if it got it
    }
  } catch {
    // no lock file yet: no engine
  }
  const idle = Number(process.env.CNI_TS_ENGINE_IDLE);
  startEngine(dir, Number.isInteger(idle) && idle > 0 ? idle : undefined);
}
