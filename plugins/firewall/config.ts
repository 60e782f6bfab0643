import { z } from 'zod';
import { netConf } from '../../lib/cni/schema.js';
import { backendName } from '../../lib/pf/backend.js';
import { forwardDropMode } from '../../lib/pf/coexist.js';

/** iptables chain names: at most 28 characters, no spaces. */
export const chainNameSchema = z.string().min(1).max(28).regex(/^[A-Za-z0-9_.:-]+$/, 'not a valid iptables chain name');

export const firewallConfig = netConf({
  // podman 4 writes "backend": "" — empty means the default (iptables, else nftables when only nft is installed).
  backend: z.union([z.literal(''), backendName, z.literal('firewalld')]).optional(),
  iptablesAdminChainName: chainNameSchema.optional(),
  ingressPolicy: z.enum(['', 'open', 'same-bridge', 'isolated']).optional(),
  firewalldZone: z.string().optional(),
  // nftables backend on a host whose iptables FORWARD policy is DROP: open the network there (one rule) or refuse.
  iptablesForwardDrop: forwardDropMode.optional(),
});
export type FirewallConfig = z.output<typeof firewallConfig>;
