import { z } from 'zod';
import { CniError, ErrorCode } from './errors.js';
import { compareVersions, isSupported, SUPPORTED_VERSIONS, type CniVersion } from './version.js';
import { obj, describeZodError } from './schema.js';
import { isCidr, isIP } from '../ip/index.js';

/**
 * One in-memory shape for results of every version (a superset of 1.1.0);
 * `parseResult` reads any supported version into it and `formatResult`
 * writes the version the config asks for.
 */
const interfaceSchema = obj({
  // Chained plugins put these names into iptables rules and dnsmasq's
  // configuration: never whitespace (iptables-save prints "-i a b" unquoted,
  // so the rule can no longer be deleted), '/', ':' or control characters,
  // none of which a Linux interface name can hold.
  name: z.string().regex(/^[^\s/:\p{Cc}]*$/u, "not an interface name (whitespace, '/', ':' or control characters)"),
  mac: z.string().optional(),
  mtu: z.number().int().optional(),
  sandbox: z.string().optional(),
  socketPath: z.string().optional(),
  pciID: z.string().optional(),
});
const ipSchema = obj({
  version: z.enum(['4', '6']).optional(),
  interface: z.number().int().nonnegative().optional(),
  // Checked here so no plugin ever builds a rule or route from a bad address.
  address: z.string().refine(isCidr, 'must be an address with its prefix, like 10.0.0.2/24'),
  gateway: z.string().refine(isIP, 'must be an IP address').optional(),
});
const routeSchema = obj({
  dst: z.string(),
  gw: z.string().optional(),
  mtu: z.number().int().optional(),
  advmss: z.number().int().optional(),
  priority: z.number().int().optional(),
  table: z.number().int().optional(),
  scope: z.number().int().optional(),
});
export const dnsSchema = obj({
  nameservers: z.array(z.string()).optional(),
  domain: z.string().optional(),
  search: z.array(z.string()).optional(),
  options: z.array(z.string()).optional(),
});
const resultSchema = obj({
  cniVersion: z.string(),
  interfaces: z.array(interfaceSchema).nullish(),
  ips: z.array(ipSchema).nullish(),
  routes: z.array(routeSchema).nullish(),
  dns: dnsSchema.nullish(),
});
/** 0.1.0 and 0.2.0: at most one address per family, each with its own routes, no interfaces. */
const legacyIpSchema = obj({
  ip: z.string().refine(isCidr, 'must be an address with its prefix, like 10.0.0.2/24'),
  gateway: z.string().refine(isIP, 'must be an IP address').nullish(),
  routes: z.array(obj({ dst: z.string(), gw: z.string().optional() })).nullish(),
});
const legacyResultSchema = obj({
  cniVersion: z.string(),
  ip4: legacyIpSchema.nullish(),
  ip6: legacyIpSchema.nullish(),
  dns: dnsSchema.nullish(),
});
const LEGACY = ['0.1.0', '0.2.0'];

export type Interface = z.output<typeof interfaceSchema>;
export type IPConfig = Omit<z.output<typeof ipSchema>, 'version'>;
export type Route = z.output<typeof routeSchema>;
export type DNS = z.output<typeof dnsSchema>;
export interface Result {
  interfaces: Interface[];
  ips: IPConfig[];
  routes: Route[];
  dns: DNS;
}

export function emptyResult(): Result {
  return { interfaces: [], ips: [], routes: [], dns: {} };
}

/** Reads a result (a prevResult, or a delegate's stdout) of any supported version. */
export function parseResult(raw: unknown): Result {
  const version = (raw as { cniVersion?: unknown } | null)?.cniVersion;
  if (typeof version === 'string' && LEGACY.includes(version)) return parseLegacyResult(raw);
  // Results before 1.0.0 may leave cniVersion out; an ip4/ip6 one is then 0.1.0, as libcni reads it.
  if ((version === undefined || version === '') && raw !== null && typeof raw === 'object' && ('ip4' in raw || 'ip6' in raw)) {
    return parseLegacyResult({ ...raw, cniVersion: '0.1.0' });
  }
  const parsed = resultSchema.safeParse(raw);
  if (!parsed.success) {
    throw new CniError(ErrorCode.DecodingFailure, 'invalid result', describeZodError(parsed.error));
  }
  const r = parsed.data;
  if (!isSupported(r.cniVersion)) {
    throw new CniError(
      ErrorCode.IncompatibleVersion,
      'unsupported result version',
      `result is "${r.cniVersion}", plugin supports ${JSON.stringify(SUPPORTED_VERSIONS)}`,
    );
  }
  return {
    interfaces: r.interfaces ?? [],
    ips: (r.ips ?? []).map(({ version: _v, ...ip }) => ip),
    routes: r.routes ?? [],
    dns: r.dns ?? {},
  };
}

/** A 0.1.0/0.2.0 result read as the reference's converter does: ip4 then ip6, each one's routes in that order. */
function parseLegacyResult(raw: unknown): Result {
  const parsed = legacyResultSchema.safeParse(raw);
  if (!parsed.success) {
    throw new CniError(ErrorCode.DecodingFailure, 'invalid result', describeZodError(parsed.error));
  }
  const r = parsed.data;
  const result = emptyResult();
  for (const [c, fam] of [[r.ip4, '4'], [r.ip6, '6']] as const) {
    if (!c) continue;
    // ip4 must hold an IPv4 address and ip6 an IPv6 one, or every later family test would be wrong.
    if (ipVersionOf(c.ip) !== fam) throw new CniError(ErrorCode.DecodingFailure, 'invalid result', `ip${fam}.ip: ${c.ip} is not an IPv${fam} address`);
    result.ips.push(c.gateway ? { address: c.ip, gateway: c.gateway } : { address: c.ip });
    for (const route of c.routes ?? []) result.routes.push(route.gw ? { dst: route.dst, gw: route.gw } : { dst: route.dst });
  }
  result.dns = r.dns ?? {};
  return result;
}

function ipVersionOf(cidr: string): '4' | '6' {
  return cidr.includes(':') ? '6' : '4';
}

/** Writes a result in the given version's shape, in the reference's key order. */
export function formatResult(result: Result, version: CniVersion): Record<string, unknown> {
  if (LEGACY.includes(version)) return formatLegacyResult(result, version);
  const v11 = compareVersions(version, '1.1.0') >= 0;
  const pre1 = compareVersions(version, '1.0.0') < 0;
  const out: Record<string, unknown> = { cniVersion: version };
  if (result.interfaces.length) {
    out.interfaces = result.interfaces.map((i) =>
      clean(v11 ? { ...i } : { name: i.name, mac: i.mac, sandbox: i.sandbox }),
    );
  }
  if (result.ips.length) {
    out.ips = result.ips.map((ip) =>
      clean({
        ...(pre1 ? { version: ipVersionOf(ip.address) } : {}),
        interface: ip.interface,
        address: ip.address,
        gateway: ip.gateway,
      }),
    );
  }
  if (result.routes.length) {
    out.routes = result.routes.map((r) => clean(v11 ? { ...r } : { dst: r.dst, gw: r.gw }));
  }
  out.dns = clean({ ...result.dns });
  return out;
}

function clean<T extends Record<string, unknown>>(o: T): T {
  for (const k of Object.keys(o)) {
    const v = o[k];
    if (v === undefined || v === '' || (Array.isArray(v) && v.length === 0)) delete o[k];
  }
  return o;
}

/**
 * The 0.1.0/0.2.0 shape, converted as the reference's libcni does: the first
 * address of each family becomes ip4/ip6 (the format has room for one), each
 * route goes to the family of its destination (dropped when that family has
 * no address), interfaces are not part of the format, and `dns` is always
 * written. A result without any address cannot be expressed at all.
 */
function formatLegacyResult(result: Result, version: CniVersion): Record<string, unknown> {
  const byFamily = new Map<'4' | '6', { ip: string; gateway?: string; routes?: { dst: string; gw?: string }[] }>();
  for (const ip of result.ips) {
    const fam = ipVersionOf(ip.address);
    if (!byFamily.has(fam)) byFamily.set(fam, clean({ ip: ip.address, gateway: ip.gateway }));
  }
  if (byFamily.size === 0) {
    throw new CniError(ErrorCode.IncompatibleVersion, 'cannot convert: no valid IP addresses', `a cniVersion ${version} result needs at least one IP address`);
  }
  for (const r of result.routes) {
    const c = byFamily.get(ipVersionOf(r.dst));
    if (c) (c.routes ??= []).push(clean({ dst: r.dst, gw: r.gw }));
  }
  const out: Record<string, unknown> = { cniVersion: version };
  if (byFamily.has('4')) out.ip4 = byFamily.get('4');
  if (byFamily.has('6')) out.ip6 = byFamily.get('6');
  out.dns = clean({ ...result.dns });
  return out;
}
