import { spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { basename, join } from 'node:path';
import { callEngine, engineDisabled, isOurClient } from '../lib/engine/client.js';

/**
 * Runs one CNI plugin the way a runtime does: found through CNI_PATH, its
 * config on stdin, the CNI_* variables in the environment (CNI_ARGS passed
 * intact), stdout parsed as a result or an error JSON, stderr kept for
 * diagnostics. An exec that fails with "text file busy" (a binary being
 * replaced) is retried up to 5 times, 1 s apart; every run has a timeout.
 */
export class PluginError extends Error {
  constructor(
    readonly plugin: string,
    readonly code: number,
    readonly msg: string,
    readonly details = '',
    readonly stderr = '',
  ) {
    super(`plugin ${plugin} failed: ${msg}${details ? ` (${details})` : ''}`);
    this.name = 'PluginError';
  }
}

export interface ExecRequest {
  type: string;
  command: 'ADD' | 'DEL' | 'CHECK' | 'GC' | 'STATUS' | 'VERSION';
  containerId?: string;
  netns?: string;
  ifname?: string;
  args?: [string, string][];
  stdin: Buffer | string;
}

export interface ExecOptions {
  cniPath: string[];
  timeoutMs: number;
  /** How long to wait between "text file busy" retries (tests shorten it). */
  busyRetryMs?: number;
  onExec?: (type: string, command: string, ms: number) => void;
}

export function findPlugin(type: string, cniPath: string[]): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(type)) throw new PluginError(type, 7, `invalid plugin type "${type}"`);
  for (const dir of cniPath) {
    const p = join(dir, type);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // next directory
    }
  }
  throw new PluginError(type, 114, `failed to find plugin "${type}" in path ${JSON.stringify(cniPath)}`);
}

interface Outcome {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  spawnError?: NodeJS.ErrnoException;
  timedOut: boolean;
}

/**
 * A plugin of this install runs in its engine when one answers, without a
 * client process (lib/engine/client.ts); otherwise, and whenever the engine
 * says nothing was done, it is executed. An engine lost mid-request fails
 * ADD and CHECK with code 11 (the work may be half done) and executes
 * anything else (DEL is idempotent).
 */
async function once(file: string, env: NodeJS.ProcessEnv, stdin: Buffer | string, timeoutMs: number): Promise<Outcome> {
  if (!engineDisabled() && isOurClient(file)) {
    const vars = Object.fromEntries(Object.entries(env).filter((e): e is [string, string] => e[1] !== undefined));
    const r = await callEngine(basename(file), vars, Buffer.from(stdin), timeoutMs);
    if (r.kind === 'done') return { code: r.exit, signal: null, stdout: r.stdout.toString('utf8'), stderr: r.stderr.toString('utf8'), timedOut: false };
    if (r.kind === 'lost' && (env.CNI_COMMAND === 'ADD' || env.CNI_COMMAND === 'CHECK')) {
      const error = { cniVersion: '1.1.0', code: 11, msg: 'try again later', details: `${r.reason} while handling ${env.CNI_COMMAND}; the work may be half done: retry, or DEL to clean up` };
      return { code: 1, signal: null, stdout: JSON.stringify(error), stderr: '', timedOut: false };
    }
  }
  return spawnOnce(file, env, stdin, timeoutMs);
}

function spawnOnce(file: string, env: NodeJS.ProcessEnv, stdin: Buffer | string, timeoutMs: number): Promise<Outcome> {
  return new Promise((resolve) => {
    let child: ReturnType<typeof spawn>;
    try {
      child = spawn(file, [], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    } catch (e) {
      // Node throws some exec failures (ETXTBSY) synchronously.
      resolve({ code: null, signal: null, stdout: '', stderr: '', spawnError: e as NodeJS.ErrnoException, timedOut: false });
      return;
    }
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.stdout!.on('data', (b: Buffer) => out.push(b));
    child.stderr!.on('data', (b: Buffer) => err.push(b));
    child.stdin!.on('error', () => undefined);
    child.on('error', (e) => {
      clearTimeout(timer);
      resolve({ code: null, signal: null, stdout: '', stderr: '', spawnError: e as NodeJS.ErrnoException, timedOut });
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8'), timedOut });
    });
    child.stdin!.end(stdin);
  });
}

export async function execPlugin(req: ExecRequest, opts: ExecOptions): Promise<unknown> {
  const file = findPlugin(req.type, opts.cniPath);
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
    CNI_COMMAND: req.command,
    CNI_PATH: opts.cniPath.join(':'),
  };
  if (req.containerId !== undefined) env.CNI_CONTAINERID = req.containerId;
  if (req.netns !== undefined) env.CNI_NETNS = req.netns;
  if (req.ifname !== undefined) env.CNI_IFNAME = req.ifname;
  if (req.args?.length) env.CNI_ARGS = req.args.map(([k, v]) => `${k}=${v}`).join(';');
  if (process.env.XDG_RUNTIME_DIR) env.XDG_RUNTIME_DIR = process.env.XDG_RUNTIME_DIR;
  // Engine mode's settings (docs/engine.md) reach the plugins' client as they reach us.
  for (const k of ['CNI_TS_ENGINE', 'CNI_TS_ENGINE_TIMEOUT', 'CNI_TS_ENGINE_IDLE']) if (process.env[k]) env[k] = process.env[k];
  const t0 = performance.now();
  let r: Outcome;
  for (let attempt = 1; ; attempt++) {
    r = await once(file, env, req.stdin, opts.timeoutMs);
    if (r.spawnError?.code === 'ETXTBSY' && attempt < 5) {
      await new Promise((res) => setTimeout(res, opts.busyRetryMs ?? 1000));
      continue;
    }
    break;
  }
  opts.onExec?.(req.type, req.command, performance.now() - t0);
  if (r.spawnError) throw new PluginError(req.type, 114, `cannot run ${file}`, r.spawnError.message);
  if (r.timedOut) throw new PluginError(req.type, 11, `timed out after ${opts.timeoutMs} ms`, '', r.stderr);
  if (r.code !== 0) {
    try {
      const e = JSON.parse(r.stdout) as { code?: number; msg?: string; details?: string };
      if (typeof e.code === 'number') throw new PluginError(req.type, e.code, e.msg ?? '', e.details ?? '', r.stderr);
    } catch (err) {
      if (err instanceof PluginError) throw err;
    }
    throw new PluginError(req.type, 999, r.stderr.trim() || `exit ${r.code ?? r.signal}`, '', r.stderr);
  }
  if (r.stdout.trim() === '') return undefined;
  try {
    return JSON.parse(r.stdout);
  } catch {
    throw new PluginError(req.type, 6, 'plugin printed something that is not JSON', r.stdout.slice(0, 200), r.stderr);
  }
}
