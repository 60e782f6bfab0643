import type { z } from 'zod';
import { CniError, ErrorCode } from './errors.js';
import { readEnv, type CniEnv, type Command } from './env.js';
import { parseCniArgs } from './args.js';
import { parseResult, formatResult, type Result } from './result.js';
import { requireSupported, requireAtLeast, versionInfo, sniffVersion, errorOutput, type CniVersion } from './version.js';
import { describeZodError, type BaseNetConf } from './schema.js';

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
  if (env.command === 'VERSION') return versionOutcome(stdin);
  const raw = decodeConfig(stdin);
  const cniVersion = requireSupported(typeof raw.cniVersion === 'string' ? raw.cniVersion : undefined);
  const config = validateConfig(plugin.schema, raw);
  if (env.command === 'CHECK') requireAtLeast(cniVersion, '0.4.0', 'CHECK');
  if (env.command === 'GC' || env.command === 'STATUS') requireAtLeast(cniVersion, '1.1.0', env.command);
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

export function versionOutcome(stdin: Buffer): Outcome {
  const output = versionInfo(sniffVersion(stdin));
  return { cniVersion: output.cniVersion, output };
}

