import { z } from 'zod';
import { netConf, obj } from '../../lib/cni/schema.js';
import { CniError, ErrorCode } from '../../lib/cni/errors.js';
import { broadcast, contains, formatIP, isCidr, isIP, network, parseCidr, parseIP, type Family } from '../../lib/ip/index.js';

const ip = z.string().refine(isIP, 'must be an IP address');
const cidr = z.string().refine(isCidr, 'must be a CIDR (address/prefix)');

const rangeSchema = obj({
  subnet: cidr,
  rangeStart: ip.optional(),
  rangeEnd: ip.optional(),
  gateway: ip.optional(),
});
const routeSchema = obj({ dst: cidr, gw: ip.optional() });

export const ipamSchema = obj({
  type: z.string(),
  ranges: z.array(z.array(rangeSchema).min(1)).optional(),
  // The legacy single-range form.
  subnet: cidr.optional(),
  rangeStart: ip.optional(),
  rangeEnd: ip.optional(),
  gateway: ip.optional(),
  routes: z.array(routeSchema).optional(),
  dataDir: z.string().min(1).optional(),
  resolvConf: z.string().optional(),
});

export const hostLocalConfig = netConf({
  ipam: ipamSchema,
  runtimeConfig: obj({ ips: z.array(z.string()).optional() }).optional(),
  args: obj({ cni: obj({ ips: z.array(z.string()).optional() }).optional() }).optional(),
}).superRefine((conf, ctx) => {
  // A 0.1.0/0.2.0 result holds one address per family (ip4, ip6): a second
  // range set of a family would allocate an address no one is told about.
  // Refused as the reference does (no cniVersion is 0.1.0).
  const version = conf.cniVersion || '0.1.0';
  if (version !== '0.1.0' && version !== '0.2.0') return;
  const sets = conf.ipam.ranges ?? (conf.ipam.subnet ? [[{ subnet: conf.ipam.subnet }]] : []);
  const families = sets.map((set) => (set[0].subnet.includes(':') ? 6 : 4));
  if (families.filter((f) => f === 4).length > 1 || families.filter((f) => f === 6).length > 1) {
    ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['ipam', 'ranges'], message: `CNI version ${version} does not support more than 1 address per family` });
  }
});
export type HostLocalConfig = z.output<typeof hostLocalConfig>;
export type IpamConfig = z.output<typeof ipamSchema>;

/** A range with every default filled in (the reference's canonical form). */
export interface Range {
  family: Family;
  subnet: string;
  prefix: number;
  net: bigint;
  start: bigint;
  end: bigint;
  gateway: bigint;
}
export type RangeSet = Range[];

const invalid = (msg: string, details = '') => new CniError(ErrorCode.InvalidNetworkConfig, msg, details);

export function canonicalRange(r: z.output<typeof rangeSchema>): Range {
  const c = parseCidr(r.subnet);
  const net = network(c);
  const size = c.family === 4 ? 32 : 128;
  if (c.prefix > size - 2) throw invalid(`network ${r.subnet} too small to allocate from`);
  // As the reference: a subnet is written as its network address. One with
  // host bits set (10.99.7.5/24) is most likely a typo for something else.
  if (c.ip !== net.ip) {
    throw invalid(`Network has host bits set. For a subnet mask of length ${c.prefix} the network address is ${formatIP(c.family, net.ip)}`);
  }
  const last = c.family === 4 ? broadcast(net) - 1n : broadcast(net);
  const inSubnet = (name: string, s: string | undefined, dflt: bigint): bigint => {
    if (s === undefined) return dflt;
    const p = parseIP(s);
    if (!contains(net, p.family, p.ip)) throw invalid(`${name} ${s} not in network ${r.subnet}`);
    return p.ip;
  };
  const start = inSubnet('rangeStart', r.rangeStart, net.ip + 1n);
  const end = inSubnet('rangeEnd', r.rangeEnd, last);
  if (start > end) throw invalid(`rangeStart ${r.rangeStart} is after rangeEnd ${r.rangeEnd}`);
  const gateway = inSubnet('gateway', r.gateway, net.ip + 1n);
  return { family: c.family, subnet: `${formatIP(c.family, net.ip)}/${c.prefix}`, prefix: c.prefix, net: net.ip, start, end, gateway };
}

/** The range sets of a config: `ranges`, or the legacy keys as one set. */
export function rangeSets(ipam: IpamConfig): RangeSet[] {
  const raw = ipam.ranges ?? (ipam.subnet ? [[{ subnet: ipam.subnet, rangeStart: ipam.rangeStart, rangeEnd: ipam.rangeEnd, gateway: ipam.gateway }]] : []);
  if (raw.length === 0) throw invalid('no IP ranges specified');
  // Errors name the range set, in the reference's words.
  const sets = raw.map((set, i) =>
    set.map((r) => {
      try {
        return canonicalRange(r);
      } catch (err) {
        throw err instanceof CniError ? invalid(`invalid range set ${i}: ${err.msg}`, err.details) : err;
      }
    }),
  );
  const all = sets.flat();
  for (const set of sets) {
    if (new Set(set.map((r) => r.family)).size > 1) throw invalid('mixed address families in one range set');
  }
  for (let i = 0; i < all.length; i++) {
    for (let j = i + 1; j < all.length; j++) {
      const a = all[i];
      const b = all[j];
      if (a.family === b.family && a.start <= b.end && b.start <= a.end) {
        throw invalid(`range ${a.subnet} overlaps with range ${b.subnet}`);
      }
    }
  }
  return sets;
}
