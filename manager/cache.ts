import { mkdirSync, readdirSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cacheEntry, type CacheEntry } from './schema.js';

/**
 * The result cache, in libcni's cniCacheV1 format (the files libcni and an
 * Aos service manager read): <cacheDir>/results/<network>-<containerID>-<ifname>,
 * written atomically with mode 0600. `config` is the network list's bytes, base64.
 */
export type { CacheEntry };

export class ResultCache {
  constructor(readonly dir: string) {}

  private file(network: string, containerId: string, ifname: string): string {
    return join(this.dir, 'results', `${network}-${containerId}-${ifname}`);
  }

  write(e: CacheEntry): void {
    const dir = join(this.dir, 'results');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const file = this.file(e.networkName, e.containerId, e.ifName);
    const tmp = `${file}.tmp${process.pid}`;
    writeFileSync(tmp, JSON.stringify(e), { mode: 0o600 });
    renameSync(tmp, file);
  }

  read(network: string, containerId: string, ifname: string): CacheEntry | undefined {
    try {
      const e = cacheEntry.safeParse(JSON.parse(readFileSync(this.file(network, containerId, ifname), 'utf8')));
      return e.success ? e.data : undefined;
    } catch {
      return undefined;
    }
  }

  remove(network: string, containerId: string, ifname: string): void {
    try {
      unlinkSync(this.file(network, containerId, ifname));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }

  /** Every cached attachment of a network. */
  list(network: string): CacheEntry[] {
    let names: string[];
    try {
      names = readdirSync(join(this.dir, 'results'));
    } catch {
      return [];
    }
    const out: CacheEntry[] = [];
    for (const n of names) {
      if (!n.startsWith(`${network}-`) || n.includes('.tmp')) continue;
      try {
        const e = cacheEntry.safeParse(JSON.parse(readFileSync(join(this.dir, 'results', n), 'utf8')));
        if (e.success && e.data.networkName === network) out.push(e.data);
      } catch {
        // not ours
      }
    }
    return out;
  }
}
