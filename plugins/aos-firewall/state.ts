import { mkdirSync, readFileSync, renameSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { withFileLock } from '../../lib/exec/lock.js';
import { CniError, ErrorCode } from '../../lib/cni/errors.js';
import { trace } from '../../lib/cni/trace.js';

/**
 * The state file the Aos aos-firewall plugin keeps (default
 * /run/containers/cni/aos-firewall/aos_chains.conf): a JSON object from
 * instance uuid to what was applied, flock()ed on the file itself. Same
 * file, same fields, same lock as the original, so either plugin can take
 * over from the other.
 */
export interface AccessRule {
  dstIp: string;
  dstPort: string;
  proto: string;
  srcIp: string;
}

export interface AccessChain {
  name: string;
  containerID: string;
  /** Go's net.IPNet: IP as text, Mask as base64 bytes. */
  address: { IP: string; Mask: string };
  gateway: string;
  gatewayPrefixLen: string;
  publicInterface: string;
  outRules: AccessRule[] | null;
  inputPortsUDP: string[] | null;
  inputPortsTCP: string[] | null;
  hasInternetConnection: boolean;
}

export type StateMap = Record<string, AccessChain>;

export function maskToBase64(prefix: number): string {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0);
  return b.toString('base64');
}

export function maskToPrefix(mask: string): number {
  const b = Buffer.from(mask, 'base64');
  let n = 0;
  for (const byte of b) for (let i = 7; i >= 0; i--) if (byte & (1 << i)) n++;
  return n;
}

export class StateFile {
  constructor(readonly path: string) {}

  /** Runs fn with the file locked, handing it the map and saving what fn leaves in it. */
  async update<T>(fn: (state: StateMap) => Promise<T> | T): Promise<T> {
    try {
      mkdirSync(dirname(this.path), { recursive: true, mode: 0o755 });
    } catch (err) {
      throw new CniError(ErrorCode.IOFailure, `cannot create ${dirname(this.path)}`, String(err));
    }
    return withFileLock(this.path, {
      mode: 0o644,
      timeoutMs: 60_000,
      timeoutError: () => new CniError(ErrorCode.TryAgainLater, `timed out waiting for the lock on ${this.path}`),
    }, async () => {
      this.recover();
      const state = this.read();
      const before = JSON.stringify(state);
      const out = await fn(state);
      if (JSON.stringify(state) !== before) this.write(state);
      return out;
    });
  }

  /**
   * Replaces the file's content (call with the lock held, inside `update`).
   * The file is rewritten in place — it is also the lock, as with the
   * original plugin, so it cannot be renamed over — and a process killed
   * between the truncation and the write would leave it empty or cut,
   * losing every instance's entry. So the new content goes first, whole,
   * to a journal (`<path>.journal`, written aside and renamed), then into
   * the file; the journal is removed last, and `recover` completes a write
   * a dead process left.
   */
  write(state: StateMap): void {
    const text = JSON.stringify(state, null, ' ');
    writeFileSync(`${this.journal}.tmp`, text, { mode: 0o644 });
    renameSync(`${this.journal}.tmp`, this.journal);
    trace('aos-firewall: state journaled');
    writeFileSync(this.path, text);
    unlinkSync(this.journal);
    trace('aos-firewall: state written');
  }

  private get journal(): string {
    return `${this.path}.journal`;
  }

  /** With the lock held: finishes the write of a process that died half way, and drops a half-written journal. */
  private recover(): void {
    rmSync(`${this.journal}.tmp`, { force: true });
    const text = this.readJournal();
    if (text === undefined) return;
    writeFileSync(this.path, text);
    unlinkSync(this.journal);
  }

  /** A journal is the newer whole content (its writer died, or is still busy, before copying it in: see write). */
  private readJournal(): string | undefined {
    try {
      return readFileSync(this.journal, 'utf8');
    } catch {
      return undefined;
    }
  }

  read(): StateMap {
    let text: string;
    try {
      text = this.readJournal() ?? readFileSync(this.path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
      throw new CniError(ErrorCode.IOFailure, `cannot read ${this.path}`, String(err));
    }
    if (text.trim() === '') return {};
    try {
      const v = JSON.parse(text) as unknown;
      return v && typeof v === 'object' && !Array.isArray(v) ? (v as StateMap) : {};
    } catch (err) {
      throw new CniError(ErrorCode.DecodingFailure, `state file ${this.path} is not valid JSON`, String(err));
    }
  }
}
