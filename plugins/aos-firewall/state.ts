import { unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { z } from 'zod';
import { ownDir, readOwnFile, rewriteFd, UnsafePathError, withOwnFileLock, writeOwnFile } from '../../lib/exec/safefs.js';
import { CniError, ErrorCode } from '../../lib/cni/errors.js';
import { describeZodError } from '../../lib/cni/schema.js';
import { FP, trace } from '../../lib/cni/trace.js';
import { canonicalNetwork, isIP } from '../../lib/ip/index.js';

/**
 * The state file the Aos aos-firewall plugin keeps (default
 * /run/containers/cni/aos-firewall/aos_chains.conf): a JSON object from
 * instance uuid to what was applied, flock()ed on the file itself. Same
 * file, same fields, same lock as the original, so either plugin can take
 * over from the other. Ours is 0600 in a directory of root's own, opened
 * without following symlinks (the file is root's and names iptables rules).
 */
// passthrough: fields a newer original adds are kept when we rewrite its file.
const accessRuleSchema = z.object({ dstIp: z.string(), dstPort: z.string(), proto: z.string(), srcIp: z.string() }).passthrough();
export const accessChainSchema = z
  .object({
    name: z.string().min(1),
    containerID: z.string(),
    /** Go's net.IPNet: IP as text, Mask as base64 bytes. */
    address: z.object({ IP: z.string(), Mask: z.string() }).passthrough(),
    gateway: z.string(),
    gatewayPrefixLen: z.string(),
    publicInterface: z.string(),
    outRules: z.array(accessRuleSchema).nullable(),
    inputPortsUDP: z.array(z.string()).nullable(),
    inputPortsTCP: z.array(z.string()).nullable(),
    hasInternetConnection: z.boolean(),
  })
  .passthrough();
export type AccessRule = z.output<typeof accessRuleSchema>;
export type AccessChain = z.output<typeof accessChainSchema>;

/**
 * The file's entries by uuid. A Map, not an object: uuids are input, and
 * "constructor", "__proto__" or "toString" must be keys like any other
 * (as plain-object keys they found Object.prototype's members, and an
 * assignment to "__proto__" replaced the prototype instead of adding an
 * entry). Entries are parsed through accessChainSchema when used, so one
 * malformed entry (another writer's) fails only the operations on that
 * uuid and is written back as it was.
 */
export class StateMap {
  private readonly raw: Map<string, unknown>;

  constructor(entries: Iterable<readonly [string, unknown]> = []) {
    this.raw = new Map(entries);
  }

  /** Parses the file's text (empty or null: no entries). Not through z.record: zod drops a "__proto__" key. */
  static parse(text: string, path: string): StateMap {
    if (text.trim() === '') return new StateMap();
    let v: unknown;
    try {
      v = JSON.parse(text);
    } catch (err) {
      throw new CniError(ErrorCode.DecodingFailure, `state file ${path} is not valid JSON`, String(err));
    }
    if (v === null) return new StateMap();
    if (typeof v !== 'object' || Array.isArray(v)) throw new CniError(ErrorCode.DecodingFailure, `state file ${path} is not a JSON object`);
    return new StateMap(Object.entries(v)); // JSON.parse makes every key, "__proto__" included, an own property
  }

  has(uuid: string): boolean {
    return this.raw.has(uuid);
  }

  get(uuid: string): AccessChain | undefined {
    if (!this.raw.has(uuid)) return undefined;
    const r = accessChainSchema.safeParse(this.raw.get(uuid));
    if (!r.success) throw new CniError(ErrorCode.DecodingFailure, `state entry "${uuid}" is malformed`, describeZodError(r.error));
    return r.data;
  }

  set(uuid: string, entry: AccessChain): this {
    this.raw.set(uuid, entry);
    return this;
  }

  delete(uuid: string): boolean {
    return this.raw.delete(uuid);
  }

  keys(): string[] {
    return [...this.raw.keys()];
  }

  /**
   * The instance subnets (canonical `IP/P`) of every entry but `except`'s,
   * read leniently and without parsing whole entries (one per call, whatever
   * the number of instances): an entry without a readable address has none.
   */
  subnets(except: string): Set<string> {
    const out = new Set<string>();
    for (const [uuid, v] of this.raw) {
      if (uuid === except) continue;
      const a = (v as { address?: { IP?: unknown; Mask?: unknown } } | null)?.address;
      if (typeof a?.IP !== 'string' || typeof a.Mask !== 'string' || !isIP(a.IP)) continue;
      out.add(canonicalNetwork(`${a.IP}/${maskToPrefix(a.Mask)}`));
    }
    return out;
  }

  /** A copy with one entry set. */
  with(uuid: string, entry: AccessChain): StateMap {
    return new StateMap(this.raw).set(uuid, entry);
  }

  /** The file's text: Object.fromEntries defines own properties, so "__proto__" is written as a key too. */
  text(): string {
    return JSON.stringify(Object.fromEntries(this.raw), null, ' ');
  }
}

function refuse(err: unknown, what: string): never {
  if (err instanceof UnsafePathError) throw new CniError(ErrorCode.IOFailure, `aos-firewall refuses ${what}: ${err.message}`, 'it must be root\'s own (no symlink, not writable by group or others)');
  throw err;
}

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
  /** The locked descriptor of the file, while `update` runs. */
  private fd: number | undefined;

  constructor(readonly path: string) {}

  /** Runs fn with the file locked, handing it the map and saving what fn leaves in it. */
  async update<T>(fn: (state: StateMap) => Promise<T> | T): Promise<T> {
    this.dir(true);
    let locked = false;
    try {
      return await withOwnFileLock(this.path, {
        mode: 0o600,
        timeoutMs: 60_000,
        timeoutError: () => new CniError(ErrorCode.TryAgainLater, `timed out waiting for the lock on ${this.path}`),
      }, async (fd) => {
        locked = true;
        this.fd = fd;
        try {
          this.recover();
          const state = this.read();
          const before = state.text();
          const out = await fn(state);
          if (state.text() !== before) this.write(state);
          return out;
        } finally {
          this.fd = undefined;
        }
      });
    } catch (err) {
      if (!locked) refuse(err, this.path);
      throw err;
    }
  }

  /** The file's directory, checked (and created) before anything in it is touched. */
  private dir(create: boolean): void {
    const dir = dirname(this.path);
    try {
      ownDir(dir, { create, mode: 0o700 });
    } catch (err) {
      refuse(err, `the directory ${dir}`);
    }
  }

  /**
   * Replaces the file's content (call with the lock held, inside `update`).
   * The file is rewritten in place — it is also the lock, as with the
   * original plugin, so it cannot be renamed over — and a process killed
   * between the truncation and the write would leave it empty or cut,
   * losing every instance's entry. So the new content goes first, whole,
   * to a journal (`<path>.journal`, written aside and renamed), then into
   * the file through the locked descriptor; the journal is removed last,
   * and `recover` completes a write a dead process left.
   */
  write(state: StateMap): void {
    const fd = this.lockedFd();
    const text = state.text();
    try {
      writeOwnFile(this.journal, text, 0o600, `${this.journal}.tmp`);
    } catch (err) {
      refuse(err, this.journal);
    }
    trace(FP.aosFirewall.stateJournaled);
    rewriteFd(fd, text);
    this.dropJournal();
    trace(FP.aosFirewall.stateWritten);
  }

  private lockedFd(): number {
    if (this.fd === undefined) throw new Error('aos-firewall: state written without the lock');
    return this.fd;
  }

  private get journal(): string {
    return `${this.path}.journal`;
  }

  private dropJournal(): void {
    unlinkIfThere(this.journal);
  }

  /** With the lock held: finishes the write of a process that died half way, and drops a half-written journal. */
  private recover(): void {
    unlinkIfThere(`${this.journal}.tmp`);
    const text = this.readJournal();
    if (text === undefined) return;
    rewriteFd(this.lockedFd(), text);
    this.dropJournal();
  }

  /** A journal is the newer whole content (its writer died, or is still busy, before copying it in: see write). */
  private readJournal(): string | undefined {
    try {
      return readOwnFile(this.journal);
    } catch (err) {
      return refuse(err, this.journal);
    }
  }

  read(): StateMap {
    if (this.fd === undefined) this.dir(false);
    let text: string | undefined;
    try {
      text = this.readJournal() ?? readOwnFile(this.path);
    } catch (err) {
      if (err instanceof CniError) throw err;
      if (err instanceof UnsafePathError) refuse(err, this.path);
      throw new CniError(ErrorCode.IOFailure, `cannot read ${this.path}`, String(err));
    }
    return text === undefined ? new StateMap() : StateMap.parse(text, this.path);
  }
}

function unlinkIfThere(path: string): void {
  try {
    unlinkSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}
