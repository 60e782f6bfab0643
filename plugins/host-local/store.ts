import { closeSync, openSync, readdirSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ownDir, UnsafePathError, withOwnFileLock } from '../../lib/exec/safefs.js';
import { CniError, ErrorCode } from '../../lib/cni/errors.js';
import { FP, trace } from '../../lib/cni/trace.js';

/**
 * host-local's on-disk store, file-compatible with the reference plugin:
 * `<dataDir>/<network>/<ip>` holds `<containerID>\r\n<ifname>`,
 * `last_reserved_ip.<set>` the round-robin cursor, and `lock` is flock()ed
 * around every change, so our plugin and the reference one can share a
 * directory.
 */
export interface Allocation {
  ip: string;
  containerId: string;
  ifname: string;
}

const LINE_BREAK = '\r\n';
const LOCK_TIMEOUT_MS = 60_000;

export class Store {
  dir: string;

  constructor(dataDir: string, network: string) {
    this.dir = join(dataDir, network);
  }

  /**
   * Runs fn holding the network's lock; a dead holder's lock is released by
   * the kernel. We write here as root: the directory must be root's (its
   * ancestors root's too, or sticky like /tmp) and not writable by group or
   * others, else another user could swap a file for a symlink under us; the
   * lock is opened without following one.
   */
  async locked<T>(fn: () => T | Promise<T>): Promise<T> {
    try {
      this.dir = ownDir(this.dir, { create: true, mode: 0o755 });
    } catch (err) {
      if (err instanceof UnsafePathError) throw new CniError(ErrorCode.IOFailure, `host-local refuses its data directory: ${err.message}`, 'it must be our own: no symlink, not writable by group or others');
      throw err;
    }
    try {
      return await withOwnFileLock(join(this.dir, 'lock'), {
        timeoutMs: LOCK_TIMEOUT_MS,
        timeoutError: () => new CniError(ErrorCode.TryAgainLater, 'timed out waiting for the IPAM lock', this.dir),
      }, () => fn());
    } catch (err) {
      if (err instanceof UnsafePathError) throw new CniError(ErrorCode.IOFailure, `host-local refuses its lock: ${err.message}`, 'it must be our own regular file');
      throw err;
    }
  }

  private fileOf(ip: string): string {
    return join(this.dir, ip);
  }

  /** Records ip for the container; false when the address is taken. */
  reserve(ip: string, containerId: string, ifname: string, rangeSet: number): boolean {
    let fd: number;
    try {
      fd = openSync(this.fileOf(ip), 'wx', 0o644);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw err;
    }
    try {
      trace(FP.hostLocal.allocationCreated);
      writeFileSync(fd, `${containerId}${LINE_BREAK}${ifname}`);
    } finally {
      closeSync(fd);
    }
    trace(FP.hostLocal.allocationWritten);
    this.writeLastReserved(rangeSet, ip);
    trace(FP.hostLocal.cursorWritten);
    return true;
  }

  private writeLastReserved(rangeSet: number, ip: string): void {
    const file = join(this.dir, `last_reserved_ip.${rangeSet}`);
    const tmp = `${file}.tmp`;
    writeFileSync(tmp, ip);
    renameSync(tmp, file);
  }

  lastReserved(rangeSet: number): string | undefined {
    try {
      return readFileSync(join(this.dir, `last_reserved_ip.${rangeSet}`), 'utf8').trim();
    } catch {
      return undefined;
    }
  }

  /** Every allocation of this network (reads the directory once). */
  all(): Allocation[] {
    let names: string[];
    try {
      names = readdirSync(this.dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const out: Allocation[] = [];
    for (const name of names) {
      if (name === 'lock' || name.startsWith('last_reserved_ip') || name.endsWith('.tmp')) continue;
      let text: string;
      try {
        text = readFileSync(this.fileOf(name), 'utf8');
      } catch {
        continue;
      }
      const [containerId = '', ifname = ''] = text.split(/\r?\n/);
      out.push({ ip: name, containerId: containerId.trim(), ifname: ifname.trim() });
    }
    return out;
  }

  has(ip: string): boolean {
    try {
      readFileSync(this.fileOf(ip));
      return true;
    } catch {
      return false;
    }
  }

  release(ip: string): void {
    try {
      unlinkSync(this.fileOf(ip));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
}
