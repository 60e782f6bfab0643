import { existsSync } from 'node:fs';
import { execPlugin, findPlugin, PluginError, type ExecOptions } from './exec.js';
import { ResultCache, type CacheEntry } from './cache.js';
import { compareVersions } from '../lib/cni/version.js';
import { networkList, type NetworkList, type PluginConf } from './schema.js';

/**
 * Runs network lists as a runtime (libcni) and the Aos service manager do:
 * each plugin gets its own object plus cniVersion, name, prevResult and the
 * runtimeConfig of the capabilities it declares; ADD threads results and
 * caches the last; DEL runs in reverse order (the spec's order) with the
 * cached result, going on past errors; a failed ADD is undone.
 */
export type { NetworkList, PluginConf };

export interface RuntimeConf {
  containerId: string;
  netns?: string;
  ifname: string;
  args?: [string, string][];
  capabilityArgs?: Record<string, unknown>;
}

export interface Attachment {
  containerID: string;
  ifname: string;
}

export interface ManagerOptions {
  cniPath?: string[];
  cacheDir?: string;
  timeoutMs?: number;
  busyRetryMs?: number;
  onExec?: ExecOptions['onExec'];
}

export class ListError extends Error {
  constructor(
    message: string,
    readonly errors: PluginError[],
  ) {
    super(`${message}: ${errors.map((e) => e.message).join('; ')}`);
    this.name = 'ListError';
  }
}

export function parseNetworkList(bytes: Buffer | string): NetworkList {
  const parsed = networkList.safeParse(JSON.parse(bytes.toString()));
  if (!parsed.success) {
    throw new Error(`not a network list: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(top)'}: ${i.message}`).join('; ')}`);
  }
  return parsed.data;
}

export class CniManager {
  readonly cniPath: string[];
  readonly cache: ResultCache;
  private readonly exec: ExecOptions;

  constructor(opts: ManagerOptions = {}) {
    this.cniPath = opts.cniPath ?? ['/opt/cni/bin'];
    this.cache = new ResultCache(opts.cacheDir ?? '/var/lib/cni');
    this.exec = { cniPath: this.cniPath, timeoutMs: opts.timeoutMs ?? 60_000, busyRetryMs: opts.busyRetryMs, onExec: opts.onExec };
  }

  /** A plugin's stdin: its object, the list's name and version, prevResult, runtimeConfig. */
  pluginConfig(list: NetworkList, plugin: PluginConf, rt: RuntimeConf, prevResult?: unknown): string {
    const conf: Record<string, unknown> = { ...plugin, cniVersion: list.cniVersion, name: list.name };
    // Capability names come from the list and the caller: own properties
    // only (`constructor` is in every object), and fromEntries so that even
    // `__proto__` stays a plain key.
    const caps = rt.capabilityArgs ?? {};
    const runtimeConfig = Object.fromEntries(
      Object.entries(plugin.capabilities ?? {})
        .filter(([cap, on]) => on && Object.hasOwn(caps, cap))
        .map(([cap]) => [cap, caps[cap]]),
    );
    if (Object.keys(runtimeConfig).length) conf.runtimeConfig = runtimeConfig;
    if (prevResult !== undefined) conf.prevResult = prevResult;
    return JSON.stringify(conf);
  }

  private run(list: NetworkList, plugin: PluginConf, rt: RuntimeConf, command: 'ADD' | 'DEL' | 'CHECK', prevResult?: unknown) {
    return execPlugin(
      { type: plugin.type, command, containerId: rt.containerId, netns: rt.netns, ifname: rt.ifname, args: rt.args, stdin: this.pluginConfig(list, plugin, rt, prevResult) },
      this.exec,
    );
  }

  async addNetworkList(list: NetworkList, rt: RuntimeConf): Promise<Record<string, unknown>> {
    let result: unknown;
    for (let i = 0; i < list.plugins.length; i++) {
      try {
        result = await this.run(list, list.plugins[i], rt, 'ADD', result);
      } catch (err) {
        // Undo: DEL the plugins already run, the failed one included (it may
        // have done half its work), last first.
        await this.delPlugins({ ...list, plugins: list.plugins.slice(0, i + 1) }, rt, result).catch(() => undefined);
        throw err;
      }
    }
    try {
      this.cache.write({
        kind: 'cniCacheV1', containerId: rt.containerId, config: Buffer.from(JSON.stringify(list)).toString('base64'), ifName: rt.ifname,
        networkName: list.name, ...(rt.args?.length ? { cniArgs: rt.args } : {}), ...(rt.capabilityArgs ? { capabilityArgs: rt.capabilityArgs } : {}),
        result: result as Record<string, unknown>,
      });
    } catch (err) {
      // Without its cache entry the attachment could never be DELed with its result: undo it
      // (a network name too long for a file name, an unwritable cache directory).
      await this.delPlugins(list, rt, result).catch(() => undefined);
      throw err;
    }
    return result as Record<string, unknown>;
  }

  private async delPlugins(list: NetworkList, rt: RuntimeConf, prevResult: unknown): Promise<void> {
    const errors: PluginError[] = [];
    for (const plugin of [...list.plugins].reverse()) {
      try {
        await this.run(list, plugin, rt, 'DEL', prevResult);
      } catch (err) {
        errors.push(err instanceof PluginError ? err : new PluginError(plugin.type, 999, String(err)));
      }
    }
    if (errors.length) throw new ListError(`DEL of ${list.name} failed`, errors);
  }

  /** Reverse order, the cached result as prevResult, past every error (all reported); the cache entry goes last. */
  async deleteNetworkList(list: NetworkList, rt: RuntimeConf): Promise<void> {
    const cached = this.cache.read(list.name, rt.containerId, rt.ifname);
    await this.delPlugins(list, { ...rt, args: rt.args ?? cached?.cniArgs, capabilityArgs: rt.capabilityArgs ?? cached?.capabilityArgs }, cached?.result);
    this.cache.remove(list.name, rt.containerId, rt.ifname);
  }

  async checkNetworkList(list: NetworkList, rt: RuntimeConf): Promise<void> {
    if (compareVersions(list.cniVersion, '0.4.0') < 0) throw new Error(`CHECK needs cniVersion 0.4.0 or later, the list is ${list.cniVersion}`);
    const cached = this.cache.read(list.name, rt.containerId, rt.ifname);
    if (!cached?.result) throw new Error(`no cached result for ${list.name}/${rt.containerId}/${rt.ifname}`);
    // What ADD was given (capabilities, CNI_ARGS) comes from the cache unless the caller repeats it.
    const full = { ...rt, args: rt.args ?? cached.cniArgs, capabilityArgs: rt.capabilityArgs ?? cached.capabilityArgs };
    for (const plugin of list.plugins) await this.run(list, plugin, full, 'CHECK', cached.result);
  }

  getNetworkListCachedConfig(list: NetworkList, rt: RuntimeConf): { config: Buffer; rt: RuntimeConf } | undefined {
    const e = this.cache.read(list.name, rt.containerId, rt.ifname);
    if (!e) return undefined;
    return { config: Buffer.from(e.config, 'base64'), rt: { ...rt, args: e.cniArgs, capabilityArgs: e.capabilityArgs } };
  }

  getNetworkListCachedResult(list: NetworkList, rt: RuntimeConf): Record<string, unknown> | undefined {
    return this.cache.read(list.name, rt.containerId, rt.ifname)?.result;
  }

  /** Each plugin found, and its VERSION supports the list's cniVersion. */
  async validateNetworkList(list: NetworkList): Promise<void> {
    for (const plugin of list.plugins) {
      findPlugin(plugin.type, this.cniPath);
      const info = (await execPlugin({ type: plugin.type, command: 'VERSION', stdin: JSON.stringify({ cniVersion: list.cniVersion }) }, this.exec)) as { supportedVersions?: string[] };
      if (!info?.supportedVersions?.includes(list.cniVersion)) {
        throw new PluginError(plugin.type, 1, `plugin ${plugin.type} does not support cniVersion ${list.cniVersion}`, JSON.stringify(info?.supportedVersions));
      }
    }
  }

  /** GC every plugin (cniVersion 1.1.0 lists) and drop cache entries that are not valid. */
  async gcNetworkList(list: NetworkList, valid: Attachment[]): Promise<void> {
    const keep = new Set(valid.map((v) => `${v.containerID}\n${v.ifname}`));
    for (const e of this.cache.list(list.name)) if (!keep.has(`${e.containerId}\n${e.ifName}`)) this.cache.remove(list.name, e.containerId, e.ifName);
    if (compareVersions(list.cniVersion, '1.1.0') < 0) return;
    const errors: PluginError[] = [];
    for (const plugin of list.plugins) {
      const stdin = JSON.stringify({ ...plugin, cniVersion: list.cniVersion, name: list.name, 'cni.dev/valid-attachments': valid });
      await execPlugin({ type: plugin.type, command: 'GC', stdin }, this.exec).catch((e) => errors.push(e as PluginError));
    }
    if (errors.length) throw new ListError(`GC of ${list.name} failed`, errors);
  }

  async statusNetworkList(list: NetworkList): Promise<void> {
    if (compareVersions(list.cniVersion, '1.1.0') < 0) return;
    for (const plugin of list.plugins) {
      await execPlugin({ type: plugin.type, command: 'STATUS', stdin: JSON.stringify({ ...plugin, cniVersion: list.cniVersion, name: list.name }) }, this.exec);
    }
  }

  /**
   * After a restart: DEL every cached attachment whose namespace is gone,
   * then GC with what is left. `netnsOf` maps a container to its namespace
   * path (the Aos service manager uses /run/netns/<instance>).
   */
  async reconcile(list: NetworkList, netnsOf: (containerId: string) => string = (id) => `/run/netns/${id}`): Promise<CacheEntry[]> {
    const gone: CacheEntry[] = [];
    for (const e of this.cache.list(list.name)) {
      if (existsSync(netnsOf(e.containerId))) continue;
      await this.deleteNetworkList(list, { containerId: e.containerId, ifname: e.ifName, args: e.cniArgs, capabilityArgs: e.capabilityArgs }).catch(() => undefined);
      gone.push(e);
    }
    const valid = this.cache.list(list.name).map((e) => ({ containerID: e.containerId, ifname: e.ifName }));
    await this.gcNetworkList(list, valid).catch(() => undefined);
    return gone;
  }
}
