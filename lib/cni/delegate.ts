import { spawn } from 'node:child_process';
import { accessSync, constants, realpathSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { CniError, ErrorCode } from './errors.js';
import type { Command, CniEnv } from './env.js';
import { parseResult, type Result } from './result.js';
import type { Plugin } from './skel.js';
import type { BaseNetConf } from './schema.js';

/**
 * Delegation as a runtime does it: find `type` in CNI_PATH, run it with the
 * same stdin and CNI_* variables. When that file is this very executable
 * (the multicall binary), the plugin runs in this process instead, which
 * saves a whole process start per ADD.
 */
type Resolver = (type: string) => Promise<Plugin<BaseNetConf>> | undefined;
let inProcess: Resolver | undefined;
let selfPaths: string[] = [];

/**
 * `executable` is this binary; its sibling `cni-ts-client` (engine mode's
 * client, docs/engine.md) stands for it too: the plugin names in CNI_PATH
 * link to the client, which would only hand the call back to this code.
 */
export function registerInProcessPlugins(resolver: Resolver, executable: string): void {
  inProcess = resolver;
  selfPaths = [];
  for (const file of [executable, join(dirname(executable), 'cni-ts-client')]) {
    try {
      selfPaths.push(realpathSync(file));
    } catch {
      // not there
    }
  }
}

export function findInPath(type: string, paths: string[]): string {
  if (type === '' || type.includes('/') || type === '.' || type === '..') {
    throw new CniError(ErrorCode.InvalidNetworkConfig, 'invalid plugin type', type);
  }
  for (const dir of paths) {
    const candidate = join(dir, type);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // try the next directory
    }
  }
  throw new CniError(ErrorCode.DelegateFailed, `failed to find plugin "${type}" in path`, JSON.stringify(paths));
}

export interface DelegateRequest {
  command: Command;
  type: string;
  stdin: Buffer;
  env: CniEnv;
}

export async function delegate(req: DelegateRequest): Promise<Result | undefined> {
  const file = findInPath(req.type, req.env.path);
  const vars: NodeJS.ProcessEnv = {
    ...process.env,
    CNI_COMMAND: req.command,
    CNI_CONTAINERID: req.env.containerId,
    CNI_NETNS: req.env.netns,
    CNI_IFNAME: req.env.ifname,
    CNI_ARGS: req.env.args,
    CNI_PATH: req.env.path.join(':'),
  };
  // The delegate gets the same namespace; if the caller's own one was allowed for us, it is for it.
  if (req.env.netnsOverride) vars.CNI_NETNS_OVERRIDE = '1';
  const loader = inProcess && isSelf(file) ? inProcess(req.type) : undefined;
  if (loader) {
    const { invoke } = await import('./skel.js');
    const outcome = await invoke(await loader, vars, req.stdin);
    return outcome.result;
  }
  return execPlugin(file, vars, req.stdin, req.command === 'ADD');
}

function isSelf(file: string): boolean {
  try {
    return selfPaths.includes(realpathSync(file));
  } catch {
    return false;
  }
}

function execPlugin(file: string, vars: NodeJS.ProcessEnv, stdin: Buffer, wantResult: boolean): Promise<Result | undefined> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, [], { env: vars, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.stdin.on('error', () => undefined); // a plugin may exit without reading stdin
    child.on('error', (e) => reject(new CniError(ErrorCode.DelegateFailed, `failed to run plugin ${file}`, e.message)));
    child.on('close', (code, signal) => {
      const stdout = Buffer.concat(out).toString('utf8');
      const stderr = Buffer.concat(err).toString('utf8').trim();
      if (stderr) process.stderr.write(`${file}: ${stderr}\n`);
      if (code !== 0) {
        reject(parseErrorOutput(stdout) ?? new CniError(ErrorCode.DelegateFailed, `plugin ${file} failed (${signal ?? `exit ${code}`})`, stderr));
        return;
      }
      if (!wantResult) return resolve(undefined);
      try {
        resolve(parseResult(JSON.parse(stdout)));
      } catch (e) {
        reject(e instanceof CniError ? e : new CniError(ErrorCode.DecodingFailure, `plugin ${file} printed an invalid result`, String(e)));
      }
    });
    child.stdin.end(stdin);
  });
}

/** Reads a plugin's error JSON ({code, msg, details}) from its stdout. */
export function parseErrorOutput(stdout: string): CniError | undefined {
  try {
    const e = JSON.parse(stdout) as { code?: unknown; msg?: unknown; details?: unknown };
    if (typeof e.code === 'number' && typeof e.msg === 'string') {
      return new CniError(e.code, e.msg, typeof e.details === 'string' ? e.details : '');
    }
  } catch {
    // not JSON
  }
  return undefined;
}
