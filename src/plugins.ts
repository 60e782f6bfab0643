import type { Plugin } from '../lib/cni/skel.js';
import type { BaseNetConf } from '../lib/cni/schema.js';
import registry from '../plugins/registry.json';

type Load = () => Promise<Plugin<BaseNetConf>>;

/**
 * One loader per plugin. esbuild bundles only what a static import() names,
 * so each plugin is written here once more; the names themselves come from
 * plugins/registry.json (also read by the build, the Makefile and the
 * benchmarks), and a table that differs from it refuses to load below — the
 * build runs this module, so such a binary is never built
 * (test/unit/registry.test.ts says the same from source).
 */
const LOADERS: Record<string, Load> = {
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
  tap: async () => (await import('../plugins/tap/index.js')).default as unknown as Plugin<BaseNetConf>,
  'tc-redirect-tap': async () => (await import('../plugins/tc-redirect-tap/index.js')).default as unknown as Plugin<BaseNetConf>,
  vlan: async () => (await import('../plugins/vlan/index.js')).default as unknown as Plugin<BaseNetConf>,
};

/** The registered plugin names (plugins/registry.json), in its order. */
export const PLUGIN_NAMES: readonly string[] = registry.plugins;

/** Names registered without a loader here, and loaders of names not registered: both empty, or this module fails. */
export function registryMismatch(names: readonly string[], loaders: Record<string, unknown>): { unloadable: string[]; unregistered: string[] } {
  return {
    unloadable: names.filter((n) => !Object.hasOwn(loaders, n)),
    unregistered: Object.keys(loaders).filter((n) => !names.includes(n)),
  };
}

{
  const { unloadable, unregistered } = registryMismatch(PLUGIN_NAMES, LOADERS);
  if (unloadable.length || unregistered.length) {
    throw new Error(`src/plugins.ts and plugins/registry.json differ: ${[
      ...unloadable.map((n) => `${n} is registered but has no loader`),
      ...unregistered.map((n) => `${n} has a loader but is not registered`),
    ].join('; ')}`);
  }
}

/**
 * The plugins of the multicall binary, by the name they are invoked as.
 * Each is loaded only when invoked (esbuild keeps dynamic imports lazy).
 * Looked up by names from argv and from configs (a delegated `ipam.type`):
 * no prototype, so `constructor` or `toString` is no plugin.
 */
export const PLUGINS: Record<string, Load> = Object.setPrototypeOf(Object.fromEntries(PLUGIN_NAMES.map((n) => [n, LOADERS[n]])), null);
