import { spawn } from 'node:child_process';
import { accessSync, constants, lstatSync, readlinkSync, realpathSync, statSync, type Stats } from 'node:fs';
import { dirname, join, resolve } from 'node:path';

/**
 * Runs a tool by argv (never through a shell). Runtimes often start plugins
 * with an empty environment, so system directories are searched even when
 * PATH lacks them. The caller's PATH is honoured, but we run as root beside
 * other users: a candidate is taken only when it is a regular executable
 * that nobody but root (or we) could have placed or swapped — the file and
 * every directory above it owned by root or us and not writable by group
 * or others (a sticky directory such as /tmp excepted on the way, as its
 * entries can only be replaced by their owner). Anything else is skipped,
 * so a user's directory early on PATH cannot stand in for iptables-restore.
 */
const SYSTEM_DIRS = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];
const found = new Map<string, string>();

function trustedBy(uid: number, st: Stats): boolean {
  return st.uid === 0 || st.uid === uid;
}

function trustedDir(dir: string, uid: number): boolean {
  for (let d = realpathSync(dir); ; d = dirname(d)) {
    const st = statSync(d);
    if (!trustedBy(uid, st)) return false;
    if ((st.mode & 0o022) !== 0 && (st.mode & 0o1000) === 0) return false;
    if (d === '/') return true;
  }
}

/**
 * `p` when it is an executable only root or we control, following its
 * symlinks (iptables-restore → /etc/alternatives → xtables-nft-multi) and
 * checking every directory on the way; else undefined. The path itself is
 * returned, not the resolved one: multi-call tools pick their applet by it.
 */
export function trustedExecutable(p: string): string | undefined {
  const uid = process.geteuid?.() ?? 0;
  try {
    let cur = p;
    for (let hops = 0; hops < 16; hops++) {
      if (!trustedDir(dirname(cur), uid)) return undefined;
      const st = lstatSync(cur);
      if (st.isSymbolicLink()) {
        cur = resolve(dirname(cur), readlinkSync(cur));
        continue;
      }
      if (!st.isFile() || !trustedBy(uid, st) || (st.mode & 0o022) !== 0) return undefined;
      accessSync(cur, constants.X_OK);
      return p;
    }
  } catch {
    // missing, unreadable or a loop: not a candidate
  }
  return undefined;
}

export function which(tool: string): string | undefined {
  const hit = found.get(tool);
  if (hit) return hit;
  const dirs = [...(process.env.PATH ?? '').split(':').filter((d) => d.startsWith('/')), ...SYSTEM_DIRS];
  for (const dir of dirs) {
    const p = trustedExecutable(join(dir, tool));
    if (p) {
      found.set(tool, p);
      return p;
    }
  }
  return undefined;
}

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function run(tool: string, args: string[], input?: string): Promise<ExecResult> {
  const file = which(tool);
  if (!file) return Promise.resolve({ code: 127, stdout: '', stderr: `${tool}: not found` });
  return new Promise((resolve) => {
    const child = spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, LC_ALL: 'C' } });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.stdin.on('error', () => undefined);
    child.on('error', (e) => resolve({ code: 127, stdout: '', stderr: e.message }));
    child.on('close', (code) =>
      resolve({ code: code ?? 1, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') }),
    );
    child.stdin.end(input ?? '');
  });
}

/** A process started now whose input is written later (to hide its start-up behind other work). */
export interface Started {
  /**
   * Writes the input and waits for the exit. Failpoints (lib/cni/trace.ts):
   * `half` runs once the first half of the input is in the pipe, `written`
   * once all of it is and the pipe is closed.
   */
  finish(input: string, half?: () => void, written?: () => void): Promise<ExecResult>;
}

export function start(tool: string, args: string[], opts: { inheritFds?: number[] } = {}): Started {
  const file = which(tool);
  if (!file) return { finish: async () => ({ code: 127, stdout: '', stderr: `${tool}: not found` }) };
  // inheritFds: open files the child keeps (as fd 3, 4, …), e.g. a lock that must outlive us if we die first.
  const child = spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe', ...(opts.inheritFds ?? [])], env: { ...process.env, LC_ALL: 'C' } });
  const [stdin, stdout, stderr] = [child.stdin!, child.stdout!, child.stderr!];
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  stdout.on('data', (b: Buffer) => out.push(b));
  stderr.on('data', (b: Buffer) => err.push(b));
  stdin.on('error', () => undefined);
  const done = new Promise<ExecResult>((resolve) => {
    child.on('error', (e) => resolve({ code: 127, stdout: '', stderr: e.message }));
    child.on('close', (code) =>
      resolve({ code: code ?? 1, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') }),
    );
  });
  return {
    async finish(input: string, half?: () => void, written?: () => void) {
      if (half && input.length > 1) {
        const mid = input.length >> 1;
        await new Promise<void>((res) => stdin.write(input.slice(0, mid), () => res()));
        half();
        input = input.slice(mid);
      }
      if (written) await new Promise<void>((res) => stdin.end(input, () => res()));
      else stdin.end(input);
      written?.();
      return done;
    },
  };
}
