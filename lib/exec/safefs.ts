import { closeSync, constants, fchmodSync, fstatSync, ftruncateSync, lstatSync, mkdirSync, openSync, readFileSync, realpathSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { withFileLock } from './lock.js';

/**
 * Files and directories of state a root process keeps, on a machine shared
 * with other users. Another user must not be able to make us write through
 * a symlink they planted or into a directory they own or can write, so:
 * directories are checked component by component from / (no symlinks after
 * resolving, owned by root or us, not writable by group/other — a sticky
 * directory like /tmp excepted on the way, since its entries can only be
 * replaced by their owner), and files are opened with O_NOFOLLOW and
 * checked on the open descriptor.
 */
export class UnsafePathError extends Error {}

// Node opens with O_CLOEXEC already (libuv); said explicitly because a
// descriptor a daemon we start inherits would keep a lock held.
const O_CLOEXEC = 0o2000000;
const NOFOLLOW = constants.O_NOFOLLOW | O_CLOEXEC;
const S_ISVTX = 0o1000;

const myUid = (): number => process.geteuid?.() ?? 0;

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException)?.code;
}

/** Splits an absolute path into its cumulative prefixes: /a/b → [/, /a, /a/b]. */
function prefixes(abs: string): string[] {
  const out = ['/'];
  let cur = '';
  for (const part of abs.split('/').filter(Boolean)) out.push((cur += `/${part}`));
  return out;
}

/**
 * Makes sure `path` is a directory only we (and root) can change, creating
 * missing components with `mode` when `create` is set. Returns the real
 * path to use from then on (symlinks in the existing part resolved, then
 * every component checked). Without `create`, missing components are
 * fine (nothing is there to trust yet) and the path is returned as it
 * would be created. Throws UnsafePathError saying which component fails.
 */
export function ownDir(path: string, opts: { create?: boolean; mode?: number } = {}): string {
  const mode = opts.mode ?? 0o700;
  const abs = resolve(path);
  // The longest existing prefix, resolved; the rest is to be created.
  let existing = abs;
  const rest: string[] = [];
  let real: string;
  for (;;) {
    try {
      real = realpathSync(existing);
      break;
    } catch (err) {
      if (errno(err) !== 'ENOENT' || existing === '/') throw new UnsafePathError(`${existing}: ${(err as Error).message}`);
      rest.unshift(basename(existing));
      existing = dirname(existing);
    }
  }
  const steps = prefixes(real);
  const me = myUid();
  const check = (p: string, strict: boolean): void => {
    const st = lstatSync(p);
    if (st.isSymbolicLink()) throw new UnsafePathError(`${p} is a symbolic link`);
    if (!st.isDirectory()) throw new UnsafePathError(`${p} is not a directory`);
    if (strict ? st.uid !== me : st.uid !== me && st.uid !== 0) throw new UnsafePathError(`${p} is owned by uid ${st.uid}`);
    const othersWrite = (st.mode & 0o022) !== 0;
    if (othersWrite && (strict || (st.mode & S_ISVTX) === 0)) throw new UnsafePathError(`${p} is writable by group or others (mode ${(st.mode & 0o7777).toString(8)})`);
  };
  // The ancestors may be root's; the directory itself (and all we create) must be ours.
  steps.forEach((p, i) => check(p, i === steps.length - 1 && rest.length === 0));
  let cur = real;
  for (const name of rest) {
    cur = join(cur, name);
    if (!opts.create) continue;
    try {
      mkdirSync(cur, { mode });
    } catch (err) {
      if (errno(err) !== 'EEXIST') throw new UnsafePathError(`cannot create ${cur}: ${(err as Error).message}`);
    }
    check(cur, true);
  }
  return cur;
}

/** Opens a file with O_NOFOLLOW; it must be a regular file we own. Throws UnsafePathError for anything else but ENOENT. */
export function openOwnFile(path: string, flags: number, mode = 0o600): number {
  let fd: number;
  try {
    fd = openSync(path, flags | NOFOLLOW, mode);
  } catch (err) {
    if (errno(err) === 'ELOOP') throw new UnsafePathError(`${path} is a symbolic link`);
    throw err;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new UnsafePathError(`${path} is not a regular file`);
    if (st.uid !== myUid()) throw new UnsafePathError(`${path} is owned by uid ${st.uid}`);
    return fd;
  } catch (err) {
    closeSync(fd);
    throw err;
  }
}

/** A file's text, or undefined when it does not exist (never through a symlink, never another user's file). */
export function readOwnFile(path: string): string | undefined {
  let fd: number;
  try {
    fd = openOwnFile(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (err) {
    if (errno(err) === 'ENOENT') return undefined;
    throw err;
  }
  try {
    return readFileSync(fd, 'utf8');
  } finally {
    closeSync(fd);
  }
}

/**
 * Replaces a file atomically: written to `tmp` (`.<name>.tmp` beside it unless given; any
 * leftover there, a symlink included, is removed first and the temp file
 * is created exclusively, so nothing is written through), then renamed
 * over the file (rename replaces a symlink, it does not follow it).
 */
export function writeOwnFile(path: string, text: string, mode = 0o600, tmp = join(dirname(path), `.${basename(path)}.tmp`)): void {
  try {
    unlinkSync(tmp);
  } catch (err) {
    if (errno(err) !== 'ENOENT') throw err;
  }
  const fd = openOwnFile(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, mode);
  try {
    fchmodSync(fd, mode); // exactly this mode, whatever the umask
    writeAll(fd, text);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}

/** Rewrites an open file's whole content in place (for a file that is also a lock, so it cannot be renamed over). */
export function rewriteFd(fd: number, text: string): void {
  ftruncateSync(fd, 0);
  writeAll(fd, text, 0);
}

function writeAll(fd: number, text: string, position?: number): void {
  const buf = Buffer.from(text, 'utf8');
  let off = 0;
  while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off, position === undefined ? null : position + off);
}

/**
 * Runs fn holding an exclusive flock on `path`, opened (and created, mode
 * `mode`) with O_NOFOLLOW and checked to be our regular file; fn gets that
 * read-write descriptor. The flock itself is taken by lib/exec/lock.ts on
 * /proc/self/fd/<fd>, which reopens the very inode we checked.
 */
export async function withOwnFileLock<T>(
  path: string,
  opts: { mode?: number; timeoutMs: number; timeoutError: () => Error },
  fn: (fd: number) => Promise<T> | T,
): Promise<T> {
  const mode = opts.mode ?? 0o600;
  const fd = openOwnFile(path, constants.O_RDWR | constants.O_CREAT, mode);
  try {
    if ((fstatSync(fd).mode & 0o7777) !== mode) fchmodSync(fd, mode); // one made by an older version with a wider mode
    return await withFileLock(`/proc/self/fd/${fd}`, { readOnly: true, queueKey: path, timeoutMs: opts.timeoutMs, timeoutError: opts.timeoutError }, () => fn(fd));
  } finally {
    closeSync(fd);
  }
}
