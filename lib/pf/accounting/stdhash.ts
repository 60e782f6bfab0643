/**
 * libstdc++'s std::hash<std::string> on 64-bit targets (_Hash_bytes: a
 * MurmurHash2 variant, seed 0xc70f6907), written here because the Aos
 * service manager names its accounting chains AOS_<hex of this hash>_IN/OUT
 * and our chains must carry the same names. No npm package implements this
 * exact variant. The algorithm step by step, and the vectors with how they
 * were derived (g++/libstdc++ on the build machine): docs/accounting.md.
 */
const MASK = (1n << 64n) - 1n;
const MUL = (0xc6a4a793n << 32n) + 0x5bd1e995n;
const SEED = 0xc70f6907n;

const shiftMix = (v: bigint) => v ^ (v >> 47n);

export function stdHash(s: string): bigint {
  const buf = Buffer.from(s, 'utf8');
  const len = BigInt(buf.length);
  const aligned = buf.length & ~7;
  let hash = (SEED ^ ((len * MUL) & MASK)) & MASK;
  for (let p = 0; p < aligned; p += 8) {
    const data = (shiftMix((buf.readBigUInt64LE(p) * MUL) & MASK) * MUL) & MASK;
    hash ^= data;
    hash = (hash * MUL) & MASK;
  }
  const rest = buf.length & 7;
  if (rest) {
    let data = 0n;
    for (let n = rest - 1; n >= 0; n--) data = (data << 8n) + BigInt(buf[aligned + n]);
    hash ^= data;
    hash = (hash * MUL) & MASK;
  }
  hash = (shiftMix(hash) * MUL) & MASK;
  return shiftMix(hash);
}

/** The lowercase hex the Aos service manager prints (no padding, as std::hex does). */
export function stdHashHex(s: string): string {
  return stdHash(s).toString(16);
}
