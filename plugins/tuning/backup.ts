import { readdirSync, unlinkSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { ownDir, readOwnFile, writeOwnFile } from '../../lib/exec/safefs.js';
import { z } from 'zod';
import { obj } from '../../lib/cni/schema.js';
import { CniError, ErrorCode } from '../../lib/cni/errors.js';

/**
 * The originals an ADD changed, kept until DEL puts them back. The fields
 * are the reference's (`mac`, `promisc`, `mtu`, `allmulti`, `txQLen`), so
 * each side can read the other's file; `sysctl` (path below /proc/sys →
 * old value) and the attachment's ids are ours. `network` is the owner
 * record GC goes by: the directory is shared by every network, and GC is
 * given one network's attachments (binaries up to fb6743a wrote no
 * `network`, the reference no ids: GC leaves those files to DEL).
 */
export const savedSchema = obj({
  network: z.string().optional(),
  containerID: z.string().optional(),
  ifname: z.string().optional(),
  mac: z.string().optional(),
  promisc: z.boolean().optional(),
  mtu: z.number().int().optional(),
  allmulti: z.boolean().optional(),
  txQLen: z.number().int().optional(),
  sysctl: z.record(z.string(), z.string()).optional(),
});
export type Saved = z.output<typeof savedSchema>;

/**
 * The reference's file name, so either plugin's DEL restores the other's ADD
 * (a suite swapped under running containers still cleans up). The name alone
 * can collide (`a_b` + `c` and `a` + `b_c`): the ids inside decide.
 */
export function backupFile(dataDir: string, containerID: string, ifname: string): string {
  return join(dataDir, `${containerID}_${ifname}.json`);
}

/** Missing → undefined; unreadable or not ours (corrupt JSON) → `null`, to be removed. */
export function readSaved(file: string): Saved | null | undefined {
  let text: string | undefined;
  try {
    // Never through a symlink, never another user's file, in a directory only we control.
    ownDir(dirname(file));
    text = readOwnFile(file);
  } catch (err) {
    throw new CniError(ErrorCode.IOFailure, `failed to read ${file}`, String((err as Error)?.message ?? err));
  }
  if (text === undefined) return undefined;
  try {
    const parsed = savedSchema.safeParse(JSON.parse(text));
    return parsed.success ? parsed.data : null;
  } catch {
    return null;
  }
}

/** Written whole or not at all (temp file + rename), readable by root only. */
export function writeSaved(file: string, saved: Saved): void {
  try {
    // As root beside other users: the directory must be ours and not writable by
    // group or others, the temp file is created exclusively (never through a symlink).
    ownDir(dirname(file), { create: true, mode: 0o700 });
    writeOwnFile(file, `${JSON.stringify(saved, null, 1)}\n`, 0o600, `${file}.${process.pid}.tmp`);
  } catch (err) {
    throw new CniError(ErrorCode.IOFailure, `failed to save the original settings to ${file}`, String(err));
  }
}

export function removeSaved(file: string): void {
  try {
    unlinkSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new CniError(ErrorCode.IOFailure, `failed to remove ${file}`, String(err));
  }
}

/** Our files in dataDir with the attachment they belong to (for GC). */
export function listSaved(dataDir: string): { file: string; network?: string; containerID: string; ifname: string }[] {
  let names: string[];
  try {
    names = readdirSync(dataDir);
  } catch {
    return [];
  }
  const out = [];
  for (const name of names.filter((n) => n.endsWith('.json'))) {
    const file = join(dataDir, name);
    let saved: Saved | null | undefined;
    try {
      saved = readSaved(file);
    } catch {
      continue; // unreadable: GC goes on past errors
    }
    if (saved?.containerID && saved.ifname) out.push({ file, network: saved.network, containerID: saved.containerID, ifname: saved.ifname });
  }
  return out;
}

/** Whether a process of that id exists (EPERM: it does, someone else's). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

/**
 * Temp files a SIGKILLed writeSaved left behind (`<file>.<pid>.tmp`): those
 * of `keep(jsonName)` false. DEL passes its own file, GC every valid one
 * and its network: GC takes only a temp whose writer is gone (a live one is
 * an ADD in progress, maybe another network's) and that names its network
 * or is cut short (its owner unknowable, and useless to anyone).
 */
export function removeTemps(dataDir: string, keep: (jsonName: string) => boolean, gcNetwork?: string): void {
  let names: string[];
  try {
    names = readdirSync(dataDir);
  } catch {
    return;
  }
  for (const name of names) {
    const m = /^(.+\.json)\.(\d+)\.tmp$/.exec(name);
    if (!m || keep(m[1])) continue;
    if (gcNetwork !== undefined) {
      if (alive(Number(m[2]))) continue;
      let saved: Saved | null | undefined;
      try {
        saved = readSaved(join(dataDir, name));
      } catch {
        continue; // unreadable: not provably ours
      }
      if (saved && saved.network !== gcNetwork) continue;
    }
    try {
      unlinkSync(join(dataDir, name));
    } catch {
      // gone already
    }
  }
}

export const jsonName = (file: string) => basename(file);
