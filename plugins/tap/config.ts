import { z } from 'zod';
import { netConf, obj } from '../../lib/cni/schema.js';
import { dnsSchema } from '../../lib/cni/result.js';

/**
 * A uid or gid as the kernel takes it for TUNSETOWNER / TUNSETGROUP: a
 * uint32 (the reference's `*uint32`), but not 4294967295, which is the
 * kernel's "no owner" and refused by it (EINVAL).
 */
const id = z.number().int().min(0, 'must be a uid/gid (0 to 4294967294)').max(0xfffffffe, 'must be a uid/gid (0 to 4294967294)');

// No '%': the kernel would take it as a name template and give another name.
const ifname = z
  .string()
  .regex(/^[^/:%\s]+$/, 'not a valid interface name')
  .refine((s) => Buffer.byteLength(s) <= 15 && s !== '.' && s !== '..', 'not a valid interface name (at most 15 bytes, not . or ..)');

/** What a TAP's MAC may be: six octets, unicast and not all zero (the kernel refuses the others with EADDRNOTAVAIL). */
export function macProblem(mac: string): string | undefined {
  const parts = mac.split(/[:-]/);
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{2}$/.test(p))) return `"${mac}" is not a MAC address (six hex octets)`;
  const bytes = parts.map((p) => parseInt(p, 16));
  if (bytes[0] & 1) return `"${mac}" is a multicast MAC address`;
  if (bytes.every((b) => b === 0)) return `"${mac}" is the all-zero MAC address`;
  return undefined;
}

const mac = z.string().superRefine((s, c) => {
  const p = macProblem(s);
  if (p) c.addIssue({ code: z.ZodIssueCode.custom, message: p });
});

export const tapConfig = netConf({
  // 0: the kernel's default (1500). A TAP takes 68 to 65521 (65535 less its Ethernet header), checked here so a bad one fails before anything is made.
  mtu: z.number().int().refine((n) => n === 0 || (n >= 68 && n <= 65521), 'must be 0 (default) or 68 to 65521').default(0),
  mac: mac.optional(),
  multiQueue: z.boolean().default(false),
  owner: id.optional(),
  group: id.optional(),
  // The reference sets this SELinux label on the `ip tuntap` it runs. No
  // SELinux here and no helper process to label: accepted and ignored.
  selinuxContext: z.string().optional(),
  // A bridge inside the container namespace, made by someone else (the reference requires it to exist too).
  bridge: ifname.optional(),
  // Loosely typed here: the IPAM plugin validates its own section. No section,
  // or one without a type, means a layer-2 TAP (the reference reads it so).
  ipam: z.object({ type: z.string().optional() }).passthrough().optional(),
  // The network's DNS settings, reported in the result as the reference does.
  dns: dnsSchema.optional(),
  runtimeConfig: obj({ mac: mac.optional() }).optional(),
});
export type TapConfig = z.output<typeof tapConfig>;
