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

function ipVersionOf(cidr: string): '4' | '6' {
  return cidr.includes(':') ? '6' : '4';
}

/** Writes a result in the given version's shape, in the reference's key order. */
export function formatResult(result: Result, version: CniVersion): Record<string, unknown> {
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
