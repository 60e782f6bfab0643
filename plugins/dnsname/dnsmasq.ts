import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { Resolver } from 'node:dns/promises';
import { CniError, ErrorCode } from '../../lib/cni/errors.js';
import { which } from '../../lib/exec/index.js';
import { trace } from '../../lib/cni/trace.js';

/**
 * The dnsmasq of one network. A pid is only ever signalled after checking
 * that /proc says it is dnsmasq running our config file for that network —
 * a stale pidfile pointing at a foreign process is ignored.
 */
function cmdline(pid: number): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  } catch {
    return [];
  }
}

export function isOurDnsmasq(pid: number, confPath: string): boolean {
  const argv = cmdline(pid);
  if (argv.length === 0 || !argv[0].endsWith('dnsmasq')) return false;
  // A zombie has an empty cmdline; state "Z" is not a running daemon either.
  try {
    if (/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'))) return false;
  } catch {
    return false;
  }
  return argv.includes(`--conf-file=${confPath}`);
}

/** Our dnsmasq for this network: from the pidfile, else (pidfile wiped) by scanning /proc. */
export function findDnsmasq(pidPath: string, confPath: string): number | undefined {
  try {
    const pid = Number(readFileSync(pidPath, 'utf8').trim());
    if (Number.isInteger(pid) && pid > 0 && isOurDnsmasq(pid, confPath)) return pid;
  } catch {
    // no pidfile
  }
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
  const bin = dnsmasqBinary();
  if (!bin) return Promise.reject(new CniError(ErrorCode.NotAvailable, 'dnsmasq not found', 'install dnsmasq-base'));
  return new Promise((resolve, reject) => {
    // stdout must not be inherited: the runtime reads ours until EOF.
    const child = spawn(bin, ['-u', 'root', `--conf-file=${confPath}`], { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
    trace('dnsname: dnsmasq spawned');
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

export function reload(pid: number): void {
  process.kill(pid, 'SIGHUP');
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
