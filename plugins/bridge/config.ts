import { z } from 'zod';
import { netConf, obj } from '../../lib/cni/schema.js';
import { backendName } from '../../lib/pf/backend.js';

const vlanId = z.number().int().min(0).max(4094);
// A uid/gid as TUNSETOWNER/TUNSETGROUP take it; 4294967295 is (uid_t)-1, the kernel's "nobody set", which it refuses.
const id32 = z.number().int().min(0).max(4294967294);

/**
 * Host-TAP mode (docs/microvm.md): the port is a TAP in the plugin's own
 * namespace for a VM on this host, instead of a veth into CNI_NETNS.
 */
export const tapConfig = obj({
  name: z
    .string()
    .regex(/^[^/:%\s]+$/, 'not a valid interface name')
    .refine((s) => Buffer.byteLength(s) >= 1 && Buffer.byteLength(s) <= 15 && s !== '.' && s !== '..', 'not a valid interface name (1 to 15 bytes, not . or ..)')
    .optional(),
  owner: id32.optional(),
  group: id32.optional(),
  multiQueue: z.boolean().default(false),
});
export type TapConfig = z.output<typeof tapConfig>;

export const bridgeConfig = netConf({
  // No '%': the kernel would take it as a name template ("br%d") and create another name.
  bridge: z
    .string()
    .regex(/^[^/:%\s]+$/, 'not a valid interface name')
    .refine((s) => Buffer.byteLength(s) <= 15 && s !== '.' && s !== '..', 'not a valid interface name (at most 15 bytes, not . or ..)')
    .default('cni0'),
  isGateway: z.boolean().default(false),
  isDefaultGateway: z.boolean().default(false),
  forceAddress: z.boolean().default(false),
  ipMasq: z.boolean().default(false),
  // The reference's option: unset means iptables, or nftables where only nft is there (lib/pf/backend.ts).
  ipMasqBackend: backendName.optional(),
  mtu: z.number().int().min(0).max(65535).default(0),
  hairpinMode: z.boolean().default(false),
  promiscMode: z.boolean().default(false),
  vlan: vlanId.default(0),
  vlanTrunk: z.array(obj({ id: vlanId.optional(), minID: vlanId.optional(), maxID: vlanId.optional() })).optional(),
  // The reference's default since v1.8.0: with vlan or vlanTrunk set, the port leaves VLAN 1 (full isolation).
  preserveDefaultVlan: z.boolean().default(false),
  enabledad: z.boolean().default(false),
  macspoofchk: z.boolean().default(false),
  disableContainerInterface: z.boolean().default(false),
  tap: tapConfig.optional(),
  // Loosely typed here: the IPAM plugin validates its own section. No section,
  // or one without a type, means a layer-2 attachment (the reference reads it so).
  ipam: z.object({ type: z.string().optional() }).passthrough().optional(),
  runtimeConfig: obj({ mac: z.string().optional() }).optional(),
  args: obj({ cni: obj({ mac: z.string().optional() }).optional() }).optional(),
});
export type BridgeConfig = z.output<typeof bridgeConfig>;

/** The VLAN ids of vlanTrunk, expanded and deduplicated. */
export function trunkIds(cfg: BridgeConfig): number[] {
  const ids = new Set<number>();
  for (const t of cfg.vlanTrunk ?? []) {
    if (t.id !== undefined) ids.add(t.id);
    if (t.minID !== undefined || t.maxID !== undefined) {
      if (t.minID === undefined || t.maxID === undefined || t.minID > t.maxID) {
        throw new Error('vlanTrunk ranges need minID <= maxID');
      }
      for (let i = t.minID; i <= t.maxID; i++) ids.add(i);
    }
  }
  return [...ids].sort((a, b) => a - b);
}
