import { z } from 'zod';
import { netConf } from '../../lib/cni/schema.js';
import { dnsSchema } from '../../lib/cni/result.js';

/**
 * The reference vlan plugin's keys: the parent link `master` (in the host
 * namespace, or in the container's with `linkInContainer`), the 802.1Q id
 * `vlanId`, an optional `mtu` (at most the master's, checked at ADD), and
 * the IPAM plugin that gives the link its addresses.
 */
export const vlanConfig = netConf({
  master: z
    .string({ required_error: '"master" field is required. It specifies the host interface name to create the VLAN for' })
    .min(1, '"master" field is required. It specifies the host interface name to create the VLAN for')
    .regex(/^[^/:%\s]+$/, 'not a valid interface name')
    .refine((s) => Buffer.byteLength(s) <= 15 && s !== '.' && s !== '..', 'not a valid interface name (at most 15 bytes, not . or ..)'),
  vlanId: z.number().int().min(0, 'invalid VLAN ID (must be between 0 and 4094)').max(4094, 'invalid VLAN ID (must be between 0 and 4094)').default(0),
  mtu: z.number().int().min(0).max(65535).default(0),
  linkInContainer: z.boolean().default(false),
  // The link's addresses come only from IPAM (the reference requires one).
  ipam: z.object({ type: z.string().min(1, 'ipam.type is required') }).passthrough(),
  dns: dnsSchema.optional(),
});
export type VlanConfig = z.output<typeof vlanConfig>;
