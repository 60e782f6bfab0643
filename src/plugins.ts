import type { Plugin } from '../lib/cni/skel.js';
import type { BaseNetConf } from '../lib/cni/schema.js';

/**
 * The plugins of the multicall binary, by the name they are invoked as.
 * Each is loaded only when invoked (esbuild keeps dynamic imports lazy).
 * Looked up by names from argv and from configs (a delegated `ipam.type`):
 * no prototype, so `constructor` or `toString` is no plugin.
 */
export const PLUGINS: Record<string, () => Promise<Plugin<BaseNetConf>>> = Object.setPrototypeOf({
  bridge: async () => (await import('../plugins/bridge/index.js')).default as unknown as Plugin<BaseNetConf>,
  'host-local': async () => (await import('../plugins/host-local/index.js')).default as unknown as Plugin<BaseNetConf>,
  bandwidth: async () => (await import('../plugins/bandwidth/index.js')).default as unknown as Plugin<BaseNetConf>,
  'traffic-accounting': async () => (await import('../plugins/traffic-accounting/index.js')).default as unknown as Plugin<BaseNetConf>,
  dnsname: async () => (await import('../plugins/dnsname/index.js')).default as unknown as Plugin<BaseNetConf>,
  firewall: async () => (await import('../plugins/firewall/index.js')).default as unknown as Plugin<BaseNetConf>,
  portmap: async () => (await import('../plugins/portmap/index.js')).default as unknown as Plugin<BaseNetConf>,
  'aos-firewall': async () => (await import('../plugins/aos-firewall/index.js')).default as unknown as Plugin<BaseNetConf>,
  tuning: async () => (await import('../plugins/tuning/index.js')).default as unknown as Plugin<BaseNetConf>,
  loopback: async () => (await import('../plugins/loopback/index.js')).default as unknown as Plugin<BaseNetConf>,
}, null);
