import { z } from 'zod';
import { netConf, obj } from '../../lib/cni/schema.js';
import { chainNameSchema } from '../firewall/config.js';
import { backendName, type Backend } from '../../lib/pf/backend.js';
import { forwardDropMode } from '../../lib/pf/coexist.js';

// Aos writes ports as strings ("8080", "80,443", "8000:8080"); numbers are accepted too.
const portish = z.union([z.string(), z.number().int()]).transform(String);

/** iptables unless configured: the Aos 9.0 monitor reads iptables (Aos 9.1 on writes nftables itself). */
export const DEFAULT_BACKEND: Backend = 'iptables';

export const DEFAULT_STATE_PATH = '/run/containers/cni/aos-firewall/aos_chains.conf';

export const aosFirewallConfig = netConf({
  uuid: z.string().min(1, 'uuid is required'),
  iptablesAdminChainName: z.string({ required_error: 'iptablesAdminChainName must be specified' }).min(1, 'iptablesAdminChainName must be specified'),
  allowPublicConnections: z.boolean().default(false),
  runtimeStatePath: z.string().min(1).default(DEFAULT_STATE_PATH),
  /** The packet filter (lib/pf/backend.ts): unset is iptables, or nftables where only nft is there. */
  backend: backendName.optional(),
  /** backend nftables on a host whose iptables FORWARD policy is DROP: open the instance's subnet there (default) or refuse. */
  iptablesForwardDrop: forwardDropMode.optional(),
  inputAccess: z.array(obj({ port: portish, protocol: z.string().optional() })).nullish(),
  outputAccess: z
    .array(obj({ dstIp: z.string().min(1), dstPort: portish.optional(), proto: z.string().optional(), srcIp: z.string().optional() }))
    .nullish(),
});
export type AosFirewallConfig = z.output<typeof aosFirewallConfig>;
export { chainNameSchema };
