import { spawn } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync, realpathSync } from 'node:fs';
import { Resolver } from 'node:dns/promises';
import { CniError, ErrorCode } from '../../lib/cni/errors.js';
import { which } from '../../lib/exec/index.js';
import { readOwnFile } from '../../lib/exec/safefs.js';
import { FP, trace } from '../../lib/cni/trace.js';

/**
 * The dnsmasq of one network. A pid is only ever signalled after checking
 * that /proc says it is our dnsmasq running our config file for that
 * network: the command line alone is not enough (any user can start a
 * process called "dnsmasq" with our --conf-file, and we would signal it
 * instead of starting the real one), so the process must also run as our
 * uid (real and effective) and its /proc/<pid>/exe must be the dnsmasq
 * binary we start. A stale pidfile pointing at a foreign process is ignored.
 */
function cmdline(pid: number): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  } catch {
    return [];
  }
}

/** The dnsmasq binary's real path (what /proc/<pid>/exe of one we started shows), resolved once. */
let realBinary: string | null | undefined;
function dnsmasqRealPath(): string | undefined {
  if (realBinary === undefined) {
    const bin = dnsmasqBinary();
    try {
      realBinary = bin ? realpathSync(bin) : null;
    } catch {
      realBinary = null;
    }
  }
  return realBinary ?? undefined;
}

export function isOurDnsmasq(pid: number, confPath: string): boolean {
  const argv = cmdline(pid);
  if (argv.length === 0 || !argv.includes(`--conf-file=${confPath}`)) return false;
  let status: string;
  try {
    status = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return false;
  }
  // A zombie has an empty cmdline; state "Z" is not a running daemon either.
  if (/^State:\s+Z/m.test(status)) return false;
  // Real and effective uid ours: another user's process is never "our dnsmasq".
  const uid = /^Uid:\s+(\d+)\s+(\d+)/m.exec(status);
  const me = process.geteuid?.() ?? 0;
  if (!uid || Number(uid[1]) !== me || Number(uid[2]) !== me) return false;
  const bin = dnsmasqRealPath();
  if (!bin) return false;
  let exe: string;
  try {
    exe = readlinkSync(`/proc/${pid}/exe`);
  } catch {
    return false;
  }
  // " (deleted)": the package was upgraded under the running daemon (still ours: the uid says so).
  return exe === bin || exe === `${bin} (deleted)`;
}

/** Our dnsmasq for this network: from the pidfile, else (pidfile wiped) by scanning /proc. */
export function findDnsmasq(pidPath: string, confPath: string): number | undefined {
  let text: string | undefined;
  try {
    text = readOwnFile(pidPath); // not through a symlink, not another user's file
  } catch {
    // unusable pidfile: scan
  }
  const pid = Number(text?.trim());
  if (Number.isInteger(pid) && pid > 0 && isOurDnsmasq(pid, confPath)) return pid;
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (Number.isInteger(pid) && pid > 1 && isOurDnsmasq(pid, confPath)) return pid;
  }
  return undefined;
}

export function dnsmasqBinary(): string | undefined {
  return which('dnsmasq');
}

/** Starts dnsmasq; it forks, and its parent exits only once the daemon is serving (or failed). */
export function startDnsmasq(confPath: string): Promise<void> {
  // The resolved binary: the one isOurDnsmasq recognises by /proc/<pid>/exe.
  const bin = dnsmasqRealPath();
  if (!bin) return Promise.reject(new CniError(ErrorCode.NotAvailable, 'dnsmasq not found', 'install dnsmasq-base'));
  return new Promise((resolve, reject) => {
    // stdout must not be inherited: the runtime reads ours until EOF.
    const child = spawn(bin, ['-u', 'root', `--conf-file=${confPath}`], { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
    trace(FP.dnsname.dnsmasqSpawned);
    let err = '';
    child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
    child.on('error', (e) => reject(new CniError(ErrorCode.IOFailure, 'failed to start dnsmasq', e.message)));
    child.on('exit', (code) => {
      child.stderr!.destroy();
      if (code === 0) resolve();
      else reject(new CniError(ErrorCode.IOFailure, `dnsmasq failed to start (exit ${code})`, err.trim()));
    });
  });
}

/** SIGHUP to a pid findDnsmasq returned (re-checked: it must still be our dnsmasq). */
export function reload(pid: number, confPath: string): boolean {
  if (!isOurDnsmasq(pid, confPath)) return false;
  process.kill(pid, 'SIGHUP');
  return true;
}

export async function stop(pid: number, confPath: string): Promise<void> {
  if (!isOurDnsmasq(pid, confPath)) return;
  process.kill(pid, 'SIGTERM');
  for (let i = 0; i < 200; i++) {
    if (!isOurDnsmasq(pid, confPath)) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  if (isOurDnsmasq(pid, confPath)) process.kill(pid, 'SIGKILL');
}

/** Waits until `server` answers `name` with `ip` (dnsmasq re-reads its hosts asynchronously after SIGHUP). */
export async function waitForAnswer(server: string, name: string, ip: string, timeoutMs = 3000): Promise<boolean> {
  const r = new Resolver({ timeout: 200, tries: 1 });
  r.setServers([server]);
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      const answers = ip.includes(':') ? await r.resolve6(name) : await r.resolve4(name);
      if (answers.includes(ip)) return true;
    } catch {
      // not yet
    }
    await new Promise((res) => setTimeout(res, 5));
  }
  return false;
}

/** Waits until `server` no longer answers `name` (after a DEL's reload). */
export async function waitForGone(server: string, name: string, ip: string, timeoutMs = 3000): Promise<boolean> {
  const r = new Resolver({ timeout: 200, tries: 1 });
  r.setServers([server]);
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      const answers = ip.includes(':') ? await r.resolve6(name) : await r.resolve4(name);
      if (!answers.includes(ip)) return true;
    } catch {
      return true; // NXDOMAIN (or no answer at all): the name is gone
    }
    await new Promise((res) => setTimeout(res, 5));
  }
  return false;
}
