import { z } from 'zod';
import { netConf } from '../../lib/cni/schema.js';

/** iptables chain names: at most 28 characters, no spaces. */
export const chainNameSchema = z.string().min(1).max(28).regex(/^[A-Za-z0-9_.:-]+$/, 'not a valid iptables chain name');

export const firewallConfig = netConf({
  // podman 4 writes "backend": "" — empty means the default (iptables), as in the reference.
  backend: z.enum(['', 'iptables', 'firewalld']).optional(),
  iptablesAdminChainName: chainNameSchema.optional(),
  ingressPolicy: z.enum(['', 'open', 'same-bridge', 'isolated']).optional(),
  firewalldZone: z.string().optional(),
});
export type FirewallConfig = z.output<typeof firewallConfig>;
