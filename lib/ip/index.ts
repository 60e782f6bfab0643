import ipaddr from 'ipaddr.js';

/**
 * IP arithmetic for allocation: addresses as bigints so v4 and v6 share
 * one code path. ipaddr.js does the parsing and printing.
 */
export type Family = 4 | 6;

export interface Cidr {
  family: Family;
  /** The address as written (may have host bits set, like 10.0.0.5/24). */
  ip: bigint;
  prefix: number;
}

const bits = (f: Family) => (f === 4 ? 32 : 128);

export function isIP(s: string): boolean {
  return ipaddr.isValid(s) && (ipaddr.IPv4.isValidFourPartDecimal(s) || (s.includes(':') && ipaddr.IPv6.isValid(s)));
}

export function parseIP(s: string): { family: Family; ip: bigint } {
  if (!isIP(s)) throw new Error(`invalid IP address "${s}"`);
  const addr = ipaddr.parse(s);
  if (addr.kind() === 'ipv6' && (addr as ipaddr.IPv6).isIPv4MappedAddress()) {
    return parseIP((addr as ipaddr.IPv6).toIPv4Address().toString());
  }
  return { family: addr.kind() === 'ipv4' ? 4 : 6, ip: bytesToBigint(addr.toByteArray()) };
}

export function parseCidr(s: string): Cidr {
  const slash = s.indexOf('/');
  if (slash < 0) throw new Error(`invalid CIDR "${s}"`);
  const { family, ip } = parseIP(s.slice(0, slash));
  const p = s.slice(slash + 1);
  const prefix = Number(p);
  if (!/^\d+$/.test(p) || prefix > bits(family)) throw new Error(`invalid CIDR "${s}"`);
  return { family, ip, prefix };
}

export function isCidr(s: string): boolean {
  try {
    parseCidr(s);
    return true;
  } catch {
    return false;
  }
}

export function mask(family: Family, prefix: number): bigint {
  const b = BigInt(bits(family));
  return ((1n << b) - 1n) ^ ((1n << (b - BigInt(prefix))) - 1n);
}

export function network(c: Cidr): Cidr {
  return { ...c, ip: c.ip & mask(c.family, c.prefix) };
}

export function broadcast(c: Cidr): bigint {
  return c.ip | (((1n << BigInt(bits(c.family))) - 1n) ^ mask(c.family, c.prefix));
}

export function contains(c: Cidr, family: Family, ip: bigint): boolean {
  return family === c.family && (ip & mask(c.family, c.prefix)) === (c.ip & mask(c.family, c.prefix));
}

export function formatIP(family: Family, ip: bigint): string {
  const n = bits(family) / 8;
  const bytes: number[] = [];
  for (let i = n - 1; i >= 0; i--) bytes.push(Number((ip >> BigInt(i * 8)) & 0xffn));
  return ipaddr.fromByteArray(bytes).toString();
}

export function formatCidr(c: Cidr): string {
  return `${formatIP(c.family, c.ip)}/${c.prefix}`;
}

/** Canonical text of a CIDR's network (`10.1.2.0/24`). */
export function canonicalNetwork(s: string): string {
  return formatCidr(network(parseCidr(s)));
}

export function toBytes(family: Family, ip: bigint): Buffer {
  const n = bits(family) / 8;
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[n - 1 - i] = Number((ip >> BigInt(i * 8)) & 0xffn);
  return b;
}

export function bytesToBigint(bytes: ArrayLike<number>): bigint {
  let v = 0n;
  for (let i = 0; i < bytes.length; i++) v = (v << 8n) | BigInt(bytes[i]);
  return v;
}

export function fromBytes(b: Uint8Array): { family: Family; ip: bigint } {
  return { family: b.length === 4 ? 4 : 6, ip: bytesToBigint(b) };
}

/** Normalises an address's text (`fd00::0001` → `fd00::1`). */
export function canonicalIP(s: string): string {
  const { family, ip } = parseIP(s);
  return formatIP(family, ip);
}
