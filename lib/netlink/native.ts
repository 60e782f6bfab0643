import { closeSync, existsSync, mkdirSync, openSync, renameSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as sea from 'node:sea';

/**
 * Native addons of the suite: `sys` (our setns/flock helper, native/sys.c)
 * and `netlink` (the netlink package's socket binding). In the standalone
 * binary they travel as SEA assets and are written once to a root-owned
 * directory (content-addressed names, atomic rename) because dlopen needs a
 * file; nothing depends on HOME. Outside the binary (tests run from source)
 * they load from the build tree and node_modules.
 */
declare const __NATIVE_HASHES__: Record<string, string> | undefined;

export type AddonName = 'sys' | 'netlink';
const cache = new Map<AddonName, unknown>();

export function loadAddon<T>(name: AddonName): T {
  const hit = cache.get(name);
  if (hit) return hit as T;
  const path = sea.isSea() ? extractAsset(name) : devPath(name);
  const mod = { exports: {} as T };
  process.dlopen(mod, path);
  cache.set(name, mod.exports);
  return mod.exports;
}

function devPath(name: AddonName): string {
  const root = resolve(fileURLToPath(import.meta.url), '../../..');
  if (name === 'netlink') return join(root, 'node_modules/netlink/prebuilds/linux-x64/node.napi.node');
  return join(process.env.CNI_TS_NATIVE_DIR ?? join(root, '.build/native'), `${name}.node`);
}

function extractAsset(name: AddonName): string {
  const hash = typeof __NATIVE_HASHES__ === 'object' ? __NATIVE_HASHES__[name] : 'dev';
  for (const dir of candidateDirs()) {
    const file = join(dir, `${name}-${hash}.node`);
    try {
      if (existsSync(file)) return file;
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      const st = statSync(dir);
      if (st.uid !== process.getuid?.() || (st.mode & 0o022) !== 0) continue; // not ours: never load from it
      const tmp = `${file}.${process.pid}.tmp`;
      const fd = openSync(tmp, 'w', 0o700);
      try {
        writeSync(fd, new Uint8Array(sea.getRawAsset(`${name}.node`) as ArrayBuffer));
      } finally {
        closeSync(fd);
      }
      renameSync(tmp, file);
      return file;
    } catch {
      // read-only or foreign: try the next place
    }
  }
  throw new Error(`cannot write native addon ${name} to any of ${candidateDirs().join(', ')}`);
}

function candidateDirs(): string[] {
  const uid = process.getuid?.() ?? 0;
  const dirs = [];
  if (process.env.CNI_TS_NATIVE_DIR) dirs.push(process.env.CNI_TS_NATIVE_DIR);
  if (uid === 0) dirs.push('/run/cni-ts/native');
  dirs.push(join(tmpdir(), `cni-ts-native-${uid}`));
  return dirs;
}
