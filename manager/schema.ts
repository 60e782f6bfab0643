import { z } from 'zod';

/**
 * What the service manager reads from disk: network lists (conflists) and
 * libcni's cniCacheV1 result files. Plugin objects pass through whole (the
 * plugin validates its own keys); the list's own keys are checked here so
 * a bad file fails before any plugin runs.
 */
export const pluginConf = z
  .object({
    type: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/, 'plugin type must be a file name'),
    capabilities: z.record(z.string(), z.boolean()).optional(),
  })
  .passthrough();
export type PluginConf = z.infer<typeof pluginConf>;

export const networkList = z
  .object({
    cniVersion: z.string().regex(/^\d+\.\d+\.\d+$/, 'cniVersion must be like 1.0.0'),
    name: z.string().regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/, 'network name must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$'),
    plugins: z.array(pluginConf).min(1, 'a network list needs at least one plugin'),
  })
  .passthrough();
export type NetworkList = z.infer<typeof networkList>;

export const cacheEntry = z.object({
  kind: z.literal('cniCacheV1'),
  containerId: z.string(),
  config: z.string(),
  ifName: z.string(),
  networkName: z.string(),
  cniArgs: z.array(z.tuple([z.string(), z.string()])).optional(),
  capabilityArgs: z.record(z.string(), z.unknown()).optional(),
  result: z.record(z.string(), z.unknown()).optional(),
});
export type CacheEntry = z.infer<typeof cacheEntry>;
