import type { z } from 'zod';
import { CniError, ErrorCode } from './errors.js';
import { readEnv, type CniEnv, type Command } from './env.js';
import { parseCniArgs } from './args.js';
import { parseResult, formatResult, type Result } from './result.js';
import { requireSupported, requireAtLeast, versionInfo, sniffVersion, errorOutput, type CniVersion } from './version.js';
import { describeZodError, type BaseNetConf } from './schema.js';
import { allowCallerNetns, refuseCallerNetns } from '../netlink/ns.js';

export interface Attachment {
  containerID: string;
  ifname: string;
}

/** Everything a plugin gets for one invocation; plugins never read env or stdin themselves. */
export interface PluginContext<C> {
  command: Command;
  env: CniEnv;
  config: C;
  cniVersion: CniVersion;
  /** The bytes the runtime sent, handed unchanged to a delegated IPAM plugin. */
  stdin: Buffer;
  prevResult: Result | undefined;
  args: Map<string, string>;
  /** GC only: the attachments the runtime still uses. */
  validAttachments: Attachment[];
}

export interface Plugin<C extends BaseNetConf> {
  name: string;
  schema: z.ZodType<C, z.ZodTypeDef, unknown>;
  /** CNI_ARGS keys this plugin understands (others need IgnoreUnknown). */
  knownArgs?: readonly string[];
  add(ctx: PluginContext<C>): Promise<Result>;
  del(ctx: PluginContext<C>): Promise<void>;
  check(ctx: PluginContext<C>): Promise<void>;
  gc?(ctx: PluginContext<C>): Promise<void>;
  status?(ctx: PluginContext<C>): Promise<void>;
  /**
   * The one exception to "CNI_NETNS is never the caller's own namespace"
   * (see `checkNetns`): a plugin mode whose job is a host-side device (a TAP
   * for a VM, say) says so in its configuration, and this returns true for
   * such a configuration. Without it, or when it returns false, a CNI_NETNS
   * naming the namespace the runtime called from is refused (code 8) before
   * the plugin runs, unless the runtime sets CNI_NETNS_OVERRIDE. No plugin
   * uses it yet. A plugin that allows it passes the override on to plugins
   * it delegates to (`env.netnsOverride` is set for it).
   */
  allowsHostNetns?(config: C): boolean;
}

export function definePlugin<C extends BaseNetConf>(p: Plugin<C>): Plugin<C> {
  return p;
}

/** What an invocation produced: the JSON for stdout, if any. */
export interface Outcome {
  cniVersion: string;
  output?: Record<string, unknown>;
  /** The same result, unformatted, for in-process delegation. */
  result?: Result;
}

export { sniffVersion, errorOutput };

export function decodeConfig(stdin: Buffer): Record<string, unknown> {
  let raw: unknown;
  try {
    raw = JSON.parse(stdin.toString('utf8'));
  } catch (err) {
    throw new CniError(ErrorCode.DecodingFailure, 'error decoding network config', (err as Error).message);
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new CniError(ErrorCode.DecodingFailure, 'error decoding network config', 'not a JSON object');
  }
  return raw as Record<string, unknown>;
}

export function validateConfig<C>(schema: z.ZodType<C, z.ZodTypeDef, unknown>, raw: unknown): C {
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    throw new CniError(ErrorCode.InvalidNetworkConfig, 'invalid network config', describeZodError(parsed.error));
  }
  return parsed.data;
}

/** Runs one command of a plugin: env and stdin in, a formatted result (or a CniError) out. */
export async function invoke<C extends BaseNetConf>(
  plugin: Plugin<C>,
  vars: NodeJS.ProcessEnv,
  stdin: Buffer,
): Promise<Outcome> {
  const env = readEnv(vars);
  if (env.command === 'VERSION') return versionOutcome(stdin, plugin.name);
  const raw = decodeConfig(stdin);
  const cniVersion = requireSupported(typeof raw.cniVersion === 'string' ? raw.cniVersion : undefined, plugin.name);
  const config = validateConfig(plugin.schema, raw);
  if (env.command === 'CHECK') requireAtLeast(cniVersion, '0.4.0', 'CHECK');
  if (env.command === 'GC' || env.command === 'STATUS') requireAtLeast(cniVersion, '1.1.0', env.command);
  checkNetns(plugin, env, config);
  const ctx: PluginContext<C> = {
    command: env.command,
    env,
    config,
    cniVersion,
    stdin,
    prevResult: config.prevResult === undefined || config.prevResult === null ? undefined : parseResult(config.prevResult),
    args: parseCniArgs(env.args, plugin.knownArgs ?? []),
    validAttachments: config['cni.dev/valid-attachments'] ?? [],
  };
  switch (env.command) {
    case 'ADD': {
      const result = await plugin.add(ctx);
      return { cniVersion, output: formatResult(result, cniVersion), result };
    }
    case 'DEL':
      await plugin.del(ctx);
      return { cniVersion };
    case 'CHECK':
      await plugin.check(ctx);
      return { cniVersion };
    case 'GC':
      if (plugin.gc) await plugin.gc(ctx);
      return { cniVersion };
    case 'STATUS':
      if (plugin.status) await plugin.status(ctx);
      return { cniVersion };
  }
}

/**
 * Refuses, before the plugin changes anything, a CNI_NETNS that is the
 * namespace this process was called from (same nsfs device and inode as
 * /proc/self/ns/net at start). Every plugin that is handed CNI_NETNS treats
 * it as the container: with the host's own namespace, bridge would move the
 * "container" veth end into the host and its DEL delete a host interface by
 * CNI_IFNAME, loopback's DEL would take the host's lo down. libcni's skel
 * has this check too, but runs it after the plugin (the damage is done) and
 * only for ADD and DEL; here it runs first and for every command that takes
 * CNI_NETNS, with libcni's code (8, ErrInvalidNetNS). Allowed when the
 * runtime sets CNI_NETNS_OVERRIDE (libcni's name for exactly this) or the
 * plugin's configuration is a host-device mode (`allowsHostNetns`). Netns
 * (lib/netlink/ns.ts) checks again on the descriptor it actually opens.
 */
function checkNetns<C extends BaseNetConf>(plugin: Plugin<C>, env: CniEnv, config: C): void {
  const allowed = env.netnsOverride || plugin.allowsHostNetns?.(config) === true;
  if (allowed) env.netnsOverride = true;
  allowCallerNetns(allowed);
  const takesNetns = env.command === 'ADD' || env.command === 'DEL' || env.command === 'CHECK';
  if (takesNetns && env.netns !== '' && !allowed) refuseCallerNetns(env.netns);
}

export function versionOutcome(stdin: Buffer, plugin?: string): Outcome {
  const output = versionInfo(sniffVersion(stdin), plugin);
  return { cniVersion: output.cniVersion, output };
}

