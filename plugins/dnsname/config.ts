import { z } from 'zod';
import { netConf, obj } from '../../lib/cni/schema.js';
import { isIP } from '../../lib/ip/index.js';
import { backendName, type Backend } from '../../lib/pf/backend.js';
import { dropMode } from '../../lib/pf/coexist.js';

/** The port-53 opening's packet filter when `backend` is unset: iptables, or nftables where only nft is there (lib/pf/backend.ts). */
export const DEFAULT_BACKEND: Backend = 'iptables';

/** DNS names: dot-separated labels of letters, digits, '-' and '_' (no spaces, newlines, '/'). */
export const DNS_NAME = /^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*$/;
export const dnsName = z.string().regex(DNS_NAME, 'not a valid DNS name (letters, digits, - and _ in dot-separated labels)');

export const dnsnameConfig = netConf({
  domainName: dnsName.default('dns.podman'),
  multiDomain: z.boolean().default(false),
  remoteServers: z.array(z.string().refine(isIP, 'must be an IP address')).default([]),
  backend: backendName.optional(),
  // backend nftables on a host whose iptables INPUT policy is DROP: open port 53 from the bridge there too (default) or refuse.
  iptablesInputDrop: dropMode.optional(),
  runtimeConfig: obj({ aliases: z.record(z.string(), z.array(dnsName)).optional() }).optional(),
});
export type DnsnameConfig = z.output<typeof dnsnameConfig>;
