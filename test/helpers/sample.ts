import { mulberry32 } from '../fuzz/generate.js';

/**
 * `make test` runs seeded samples of the long suites (crash, fuzz, scale);
 * `make test-full` sets CNI_TS_FULL=1 and runs them whole. The sample is the
 * same on every run (CNI_TS_SAMPLE_SEED picks another one, printed by each
 * suite so a failure can be reproduced).
 */
export const FULL = process.env.CNI_TS_FULL === '1';
export const SAMPLE_SEED = Number(process.env.CNI_TS_SAMPLE_SEED ?? 20261201) >>> 0;

/** `n` items of `items` (all of them under CNI_TS_FULL=1 or when there are no more), picked by `seed`, in their original order. */
export function sample<T>(items: T[], n: number, seed: number): T[] {
  if (FULL || items.length <= n) return items;
  const rnd = mulberry32((SAMPLE_SEED ^ seed) >>> 0);
  const picked = new Set<number>();
  while (picked.size < n) picked.add(Math.floor(rnd() * items.length));
  return [...picked].sort((a, b) => a - b).map((i) => items[i]);
}

/** `full` under CNI_TS_FULL=1, else `sampled`. */
export const sized = <T>(sampled: T, full: T): T => (FULL ? full : sampled);
