import { CniError, ErrorCode } from '../../lib/cni/errors.js';
import { formatIP, parseIP, type Family } from '../../lib/ip/index.js';
import type { Range, RangeSet } from './config.js';
import type { Store } from './store.js';

export interface Allocated {
  family: Family;
  ip: bigint;
  range: Range;
}

function rangeOf(set: RangeSet, family: Family, ip: bigint): Range | undefined {
  return set.find((r) => r.family === family && ip >= r.start && ip <= r.end);
}

/**
 * Picks the next free address of a range set, round-robin: the search starts
 * after the last address handed out (as the reference does), skipping
 * gateways and addresses on file.
 */
export function allocateNext(store: Store, set: RangeSet, setIndex: number, taken: Set<string>, who: { containerId: string; ifname: string }): Allocated {
  const last = store.lastReserved(setIndex);
  let startRange = 0;
  let cursor: bigint | undefined;
  if (last) {
    try {
      const p = parseIP(last);
      const r = rangeOf(set, p.family, p.ip);
      if (r) {
        startRange = set.indexOf(r);
        cursor = p.ip;
      }
    } catch {
      // a damaged cursor only loses round-robin position
    }
  }
  // Walk every address once: after the cursor to the end of its range, the
  // other ranges in order, then the cursor's range up to the cursor.
  const segments: { r: Range; lo: bigint; hi: bigint }[] = [];
  const first = set[startRange];
  segments.push({ r: first, lo: cursor !== undefined ? cursor + 1n : first.start, hi: first.end });
  for (let k = 1; k < set.length; k++) {
    const r = set[(startRange + k) % set.length];
    segments.push({ r, lo: r.start, hi: r.end });
  }
  if (cursor !== undefined) segments.push({ r: first, lo: first.start, hi: cursor });
  for (const { r, lo, hi } of segments) {
    for (let ip = lo; ip <= hi; ip++) {
      if (ip === r.gateway) continue;
      const text = formatIP(r.family, ip);
      if (taken.has(text)) continue;
      if (store.reserve(text, who.containerId, who.ifname, setIndex)) return { family: r.family, ip, range: r };
    }
  }
  const desc = set.map((r) => `${formatIP(r.family, r.start)}-${formatIP(r.family, r.end)}`).join(',');
  throw new CniError(ErrorCode.AddressExhausted, `no IP addresses available in range set: ${desc}`);
}

/** Reserves a requested address in whichever set contains it. */
export function allocateRequested(store: Store, sets: RangeSet[], requested: string, who: { containerId: string; ifname: string }): { setIndex: number; alloc: Allocated } {
  const p = parseIP(requested.includes('/') ? requested.slice(0, requested.indexOf('/')) : requested);
  for (let i = 0; i < sets.length; i++) {
    const r = rangeOf(sets[i], p.family, p.ip);
    if (!r) continue;
    if (p.ip === r.gateway) throw new CniError(ErrorCode.AddressUnavailable, `requested IP ${requested} is the gateway`);
    if (!store.reserve(formatIP(p.family, p.ip), who.containerId, who.ifname, i)) {
      throw new CniError(ErrorCode.AddressUnavailable, `requested IP address ${formatIP(p.family, p.ip)} is already allocated`, `network ${store.dir}`);
    }
    return { setIndex: i, alloc: { family: p.family, ip: p.ip, range: r } };
  }
  throw new CniError(ErrorCode.AddressUnavailable, `no IP ranges contain requested IP ${requested}`);
}

/** How many addresses of a set are still free (for STATUS). */
export function freeCount(set: RangeSet, taken: Set<string>): bigint {
  let free = 0n;
  for (const r of set) {
    let size = r.end - r.start + 1n;
    if (r.gateway >= r.start && r.gateway <= r.end) size -= 1n;
    free += size;
  }
  for (const t of taken) {
    try {
      const p = parseIP(t);
      const r = rangeOf(set, p.family, p.ip);
      if (r && p.ip !== r.gateway) free -= 1n;
    } catch {
      // not an address file
    }
  }
  return free;
}
