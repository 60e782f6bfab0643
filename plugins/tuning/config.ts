import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { netConf, obj } from '../../lib/cni/schema.js';
import { CniError, ErrorCode } from '../../lib/cni/errors.js';

export const DEFAULT_DATA_DIR = '/run/cni/tuning';
export const DEFAULT_ALLOWLIST = '/etc/cni/tuning/allowlist.conf';

// Go's map[string]string refuses numbers; accepting `"somaxconn": 512` costs nothing.
const sysctlMap = z.record(z.string(), z.union([z.string(), z.number()]).transform(String));
const mtu = z.number().int().nonnegative().max(2 ** 31 - 1); // 0 = unset, as the reference
const txQLen = z.number().int().nonnegative().max(2 ** 31 - 1); // 0 is a valid queue length
const linkKeys = {
  mac: z.string().optional(),
  promisc: z.boolean().optional(),
  mtu: mtu.optional(),
  txQLen: txQLen.optional(),
  allmulti: z.boolean().optional(),
};

export const tuningConfig = netConf({
  sysctl: sysctlMap.nullish(),
  ...linkKeys,
  dataDir: z.string().optional(),
  runtimeConfig: obj({ mac: z.string().optional() }).optional(),
  args: obj({ cni: obj({ sysctl: sysctlMap.nullish(), ...linkKeys }).optional() }).optional(),
});
export type TuningConfig = z.output<typeof tuningConfig>;

export interface Sysctl {
  /** As written in the config (the allowlist judges its normalised form, `allowlistKey`). */
  key: string;
  /** Below /proc/sys, always under net/, with IFNAME substituted. */
  path: string;
  value: string;
}

/** What one attachment asks for, after every source is merged; undefined = leave alone. */
export interface Settings {
  sysctls: Sysctl[];
  mac?: string;
  promisc?: boolean;
  mtu?: number;
  txQLen?: number;
  allmulti?: boolean;
  dataDir: string;
}

const invalid = (msg: string, details = '') => new CniError(ErrorCode.InvalidNetworkConfig, msg, details);

/** Lowercase colon form of a 6-byte MAC (`:` or `-` separated), as the kernel reports it. */
export function normalizeMac(mac: string): string {
  const parts = mac.split(/[:-]/);
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{2}$/.test(p))) {
    throw invalid(`invalid MAC address "${mac}"`, 'expected six hex bytes like 02:00:00:00:00:01');
  }
  return parts.join(':').toLowerCase();
}

/**
 * A sysctl key → its path below /proc/sys. Dotted keys become paths; a key
 * that already contains '/' is taken as a path, so interface names with dots
 * (eth0.100) can be named. Either way the key is split into segments first,
 * and an empty, `.` or `..` segment is refused: nothing is normalised away,
 * so the key the allowlist judged is the path written
 * (`net.ipv4.conf./../net/ipv4/ip_forward` once passed an allowlist of
 * `^net\.ipv4\.conf\..*` and, normalised, set ip_forward). The first segment
 * must be `net`: /proc/sys/net is per namespace, the rest is the host's.
 * IFNAME is substituted after the split (once, as the reference), inside its
 * segment, so CNI_IFNAME may itself contain dots.
 */
export function sysctlSegments(key: string): string[] {
  const segments = key.includes('/') ? key.split('/') : key.split('.');
  for (const seg of segments) {
    if (seg === '' || seg === '.' || seg === '..' || seg.includes('\0')) {
      throw invalid(`invalid net sysctl key: "${key}"`, 'empty, "." and ".." segments are not allowed');
    }
  }
  if (segments[0] !== 'net' || segments.length < 2) throw invalid(`invalid net sysctl key: "${key}"`, 'only sysctls under net. can be set');
  return segments;
}

/**
 * The key as the allowlist sees it: its segments joined with dots, the form
 * the reference's allowlists are written in, so `net/ipv4/conf/all/x` and
 * `net.ipv4.conf.all.x` are judged alike (and IFNAME is still literal, as the
 * reference matches the key before substitution).
 */
export function allowlistKey(key: string): string {
  return sysctlSegments(key).join('.');
}

export function sysctlPath(key: string, ifname: string): string {
  const segments = sysctlSegments(key);
  const at = segments.findIndex((seg) => seg.includes('IFNAME'));
  if (at >= 0) segments[at] = segments[at].replace('IFNAME', ifname);
  if (segments.some((seg) => seg === '.' || seg === '..' || seg.includes('/'))) throw invalid(`invalid net sysctl key: "${key}"`, `with IFNAME=${ifname}`);
  return segments.join('/');
}

/**
 * Merges the sources the way the reference does: the MAC from the config,
 * then CNI_ARGS MAC=, then runtimeConfig.mac, then args.cni (which also
 * overrides and extends every other key).
 */
export function resolveSettings(cfg: TuningConfig, ifname: string, cniArgs: Map<string, string>): Settings {
  const a = cfg.args?.cni ?? {};
  const macs = [cfg.mac, cniArgs.get('MAC'), cfg.runtimeConfig?.mac, a.mac].filter((m) => m !== undefined && m !== '');
  const mac = macs.at(-1);
  const mtuValue = a.mtu ?? cfg.mtu;
  const raw = { ...(cfg.sysctl ?? {}), ...(a.sysctl ?? {}) };
  const sysctls = Object.entries(raw).map(([key, value]) => ({ key, path: sysctlPath(key, ifname), value }));
  const byPath = new Map<string, string>();
  for (const s of sysctls) {
    const other = byPath.get(s.path);
    if (other !== undefined) throw invalid('duplicated sysctl keys are not allowed', `"${other}" and "${s.key}" both name ${s.path}`);
    byPath.set(s.path, s.key);
  }
  return {
    sysctls,
    mac: mac === undefined ? undefined : normalizeMac(mac),
    promisc: a.promisc ?? cfg.promisc,
    mtu: mtuValue ? mtuValue : undefined,
    txQLen: a.txQLen ?? cfg.txQLen,
    allmulti: a.allmulti ?? cfg.allmulti,
    dataDir: cfg.dataDir || DEFAULT_DATA_DIR,
  };
}

export function changesLink(s: Settings): boolean {
  return s.mac !== undefined || s.promisc !== undefined || s.mtu !== undefined || s.txQLen !== undefined || s.allmulti !== undefined;
}

/**
 * The reference's sysctl allowlist: when the file exists, one regular
 * expression per line (unanchored, as Go's MatchString), and every key must
 * match one — in its normalised form (`allowlistKey`), which is the form
 * that is then written, never the raw text. No file, no restriction.
 */
export function checkAllowlist(keys: string[], file: string): void {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new CniError(ErrorCode.IOFailure, `failed to read sysctl allowlist ${file}`, String(err));
  }
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l !== '');
  const patterns = lines.map((l) => {
    try {
      return new RegExp(l);
    } catch (err) {
      throw invalid(`invalid regular expression in sysctl allowlist ${file}`, (err as Error).message);
    }
  });
  for (const key of keys) {
    const name = allowlistKey(key);
    if (!patterns.some((p) => p.test(name))) {
      throw invalid(`Sysctl ${key} is not allowed. Only the following sysctls are allowed: [${lines.join(' ')}]`);
    }
  }
}

/**
 * Keys written twice in the top-level "sysctl" object. JSON.parse keeps the
 * last silently; the reference refuses such a config, and so do we. The
 * text has already parsed as JSON, so the scanner can trust its syntax.
 */
export function duplicateSysctlKeys(text: string): string[] {
  const s = new Scanner(text);
  const seen = new Set<string>();
  const dups = new Set<string>();
  s.value((top) => {
    s.ws();
    if (top.toLowerCase() !== 'sysctl' || s.peek() !== '{') return s.value();
    s.value((key) => {
      if (seen.has(key)) dups.add(key);
      seen.add(key);
      s.value();
    });
  });
  return [...dups];
}

class Scanner {
  private i = 0;
  constructor(private readonly t: string) {}
  peek(): string {
    return this.t[this.i] ?? '';
  }
  ws(): void {
    while (' \t\r\n'.includes(this.peek()) && this.i < this.t.length) this.i++;
  }
  private str(): string {
    const start = this.i++;
    while (this.i < this.t.length && this.t[this.i] !== '"') this.i += this.t[this.i] === '\\' ? 2 : 1;
    this.i++;
    return JSON.parse(this.t.slice(start, this.i)) as string;
  }
  /** Skips one value; inside an object, `member` gets each key and must consume its value. */
  value(member?: (key: string) => void): void {
    this.ws();
    const open = this.peek();
    if (open === '"') return void this.str();
    if (open !== '{' && open !== '[') {
      while (this.i < this.t.length && !' \t\r\n,]}'.includes(this.peek())) this.i++;
      return;
    }
    this.i++;
    for (;;) {
      this.ws();
      const c = this.peek();
      if (c === '' || c === '}' || c === ']') return void this.i++;
      if (c === ',') {
        this.i++;
        continue;
      }
      if (open === '[') {
        this.value();
        continue;
      }
      const key = this.str();
      this.ws();
      this.i++; // ':'
      if (member) member(key);
      else this.value();
    }
  }
}
