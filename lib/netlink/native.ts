import { closeSync, constants, fstatSync, lstatSync, mkdirSync, openSync, readSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as sea from 'node:sea';
import { isMainThread, workerData } from 'node:worker_threads';
import { CniError, ErrorCode } from '../cni/errors.js';
import { testHook } from '../cni/hooks.js';

/**
 * Native addons of the suite: `sys` (our setns/flock helper, native/sys.c)
 * and `netlink` (the netlink package's socket binding). In the standalone
 * binary they travel as SEA assets; dlopen needs a file, so each is written
 * once to a directory of the current user (content-addressed names, atomic
 * rename) and loaded from there. Outside the binary (tests run from source)
 * they load from the build tree and node_modules.
 *
 * A `.node` file runs inside the plugin — as root — the moment it is loaded,
 * so what is loaded must be exactly the embedded addon, whoever could touch
 * the directory: the file is opened (O_NOFOLLOW), the open descriptor is
 * checked (a regular file, ours, not writable by group or others) and its
 * bytes compared with the SEA asset, and then that descriptor is what is
 * loaded (`/proc/self/fd/<fd>`), never the path, which could be swapped in
 * between. The directory must be ours and not writable by group or others,
 * checked on every start (not only when creating it). A missing or
 * mismatching file is (re)written atomically. Root uses /run/cni-ts/native
 * only: it never falls back to a shared temp directory, where another user
 * could have made `cni-ts-native-0` first; if /run is unusable it fails
 * with an error saying so. Nothing depends on HOME.
 */
declare const __NATIVE_HASHES__: Record<string, string> | undefined;

export type AddonName = 'sys' | 'netlink';
const ADDONS: AddonName[] = ['sys', 'netlink'];
const cache = new Map<AddonName, unknown>();
const paths = new Map<AddonName, string>();

export function loadAddon<T>(name: AddonName): T {
  const hit = cache.get(name);
  if (hit) return hit as T;
  const path = addonPath(name);
  const mod = { exports: {} as T };
  process.dlopen(mod, path);
  cache.set(name, mod.exports);
  return mod.exports;
}

/**
 * Where `name` is loaded from. In the binary that is `/proc/self/fd/<n>`, and
 * glibc knows a loaded library by that name alone: were the descriptor closed
 * and its number reused for the other addon, a later dlopen of the same name
 * would return the first library (the netlink binding would come back as
 * `sys`). Node closes the descriptors a worker thread opened when the worker
 * ends, so the engine's workers (which come and go) never open their own:
 * the engine's main thread installs both addons once, keeps the descriptors
 * for the life of the process, and hands the names to every worker
 * (`workerData.cniTsAddons`, see {@link addonPathsForWorkers}).
 */
function addonPath(name: AddonName): string {
  const known = paths.get(name);
  if (known) return known;
  const handed = isMainThread ? undefined : (workerData as { cniTsAddons?: Partial<Record<AddonName, string>> } | undefined)?.cniTsAddons?.[name];
  const path = handed ?? (sea.isSea() ? installedAddon(name) : devPath(name));
  paths.set(name, path);
  return path;
}

/** For the engine's main thread: both addons installed now, their names for the workers it starts. */
export function addonPathsForWorkers(): Record<AddonName, string> {
  if (!isMainThread) throw new Error('addon descriptors are held by the main thread only');
  return Object.fromEntries(ADDONS.map((n) => [n, addonPath(n)])) as Record<AddonName, string>;
}

function devPath(name: AddonName): string {
  const root = resolve(fileURLToPath(import.meta.url), '../../..');
  if (name === 'netlink') return join(root, 'node_modules/netlink/prebuilds/linux-x64/node.napi.node');
  return join(testHook('CNI_TS_NATIVE_DIR') ?? join(root, '.build/native'), `${name}.node`);
}

/** Where the addons may live for this user: never a directory another user can write. */
export function candidateDirs(uid: number): string[] {
  // A test build may name its own directory (lib/cni/hooks.ts); the shipped binary never reads it.
  const hook = testHook('CNI_TS_NATIVE_DIR');
  if (hook) return [hook];
  if (uid === 0) return ['/run/cni-ts/native'];
  // Another user's process: its own TMPDIR choice, under its own uid.
  return [join(tmpdir(), `cni-ts-native-${uid}`)];
}

/**
 * The embedded addon `name` as a path to dlopen: `/proc/self/fd/<fd>` of a
 * verified descriptor. The descriptor stays open for the life of the
 * process: glibc recognises an already loaded library by its path name, so
 * a reused fd number must never name a second library.
 */
function installedAddon(name: AddonName): string {
  const asset = Buffer.from(sea.getRawAsset(`${name}.node`) as ArrayBuffer);
  const hash = typeof __NATIVE_HASHES__ === 'object' ? __NATIVE_HASHES__[name] : 'dev';
  const uid = process.getuid?.() ?? 0;
  const tried: string[] = [];
  for (const dir of candidateDirs(uid)) {
    try {
      return `/proc/self/fd/${installIn(dir, `${name}-${hash}.node`, asset, uid)}`;
    } catch (err) {
      tried.push(`${dir}: ${(err as Error).message}`);
    }
  }
  const why = uid === 0 ? '; as root it is never put in a shared temp directory (another user could have planted one there)' : '';
  throw new CniError(ErrorCode.IOFailure, `cannot install the native addon ${name}`, `${tried.join('; ')}${why}`);
}

/** The verified descriptor of `<dir>/<base>`, writing the file first when it is missing or wrong. */
export function installIn(dir: string, base: string, asset: Buffer, uid: number): number {
  ownDirectory(dir, uid);
  const file = join(dir, base);
  const found = openMatching(file, asset, uid);
  if (typeof found === 'number') return found;
  // Missing, or not the embedded addon (a planted or damaged file): the
  // directory is ours, so replace it atomically, then verify what is there.
  writeAtomically(file, asset);
  const again = openMatching(file, asset, uid);
  if (typeof again === 'number') return again;
  throw new Error(`${file} is not the embedded addon even after rewriting it (${again})`);
}

/** Creates `dir` if needed and insists it is a real directory of `uid` that no group or other can write. */
function ownDirectory(dir: string, uid: number): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = lstatSync(dir);
  if (!st.isDirectory()) throw new Error('not a directory (a symlink is not followed)');
  if (st.uid !== uid) throw new Error(`owned by uid ${st.uid}, not ${uid}`);
  if ((st.mode & 0o022) !== 0) throw new Error(`writable by group or others (mode ${(st.mode & 0o7777).toString(8)})`);
}

/**
 * Opens `file` without following a symlink and returns the descriptor if it
 * is a regular file of `uid`, not writable by group or others, whose bytes
 * are exactly `asset`; otherwise says why not. (libuv opens with O_CLOEXEC:
 * the descriptor is not inherited by the tools a plugin runs.)
 */
function openMatching(file: string, asset: Buffer, uid: number): number | string {
  let fd: number;
  try {
    // O_NONBLOCK: a FIFO in its place must not hang the open; it fails the checks below.
    fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return 'missing';
    if (code === 'ELOOP') return 'a symlink';
    throw err;
  }
  let why = '';
  const st = fstatSync(fd);
  if (!st.isFile()) why = 'not a regular file';
  else if (st.uid !== uid) why = `owned by uid ${st.uid}`;
  else if ((st.mode & 0o022) !== 0) why = 'writable by group or others';
  else if (st.size !== asset.length || !sameBytes(fd, asset)) why = 'different contents';
  if (!why) return fd;
  closeSync(fd);
  return why;
}

function sameBytes(fd: number, asset: Buffer): boolean {
  const buf = Buffer.allocUnsafe(asset.length + 1);
  let n = 0;
  for (;;) {
    const got = readSync(fd, buf, n, buf.length - n, n);
    if (got === 0) break;
    n += got;
    if (n > asset.length) return false; // grew since fstat
  }
  return n === asset.length && buf.subarray(0, n).equals(asset);
}

function writeAtomically(file: string, asset: Buffer): void {
  const tmp = `${file}.${process.pid}.tmp`;
  const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
  let fd: number;
  try {
    fd = openSync(tmp, flags, 0o500);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    unlinkSync(tmp); // left by a killed process that had our pid; the directory is ours
    fd = openSync(tmp, flags, 0o500);
  }
  try {
    for (let off = 0; off < asset.length; ) off += writeSync(fd, asset, off, asset.length - off);
  } catch (err) {
    closeSync(fd);
    unlinkSync(tmp);
    throw err;
  }
  closeSync(fd);
  renameSync(tmp, file);
}
