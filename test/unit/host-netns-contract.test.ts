import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { CniError } from '../../lib/cni/errors.js';
import { netConf } from '../../lib/cni/schema.js';
import { definePlugin, invoke, type PluginContext } from '../../lib/cni/skel.js';

/**
 * The contract layer's side of "the host namespace is not a container"
 * (issue 13 §3): the check runs before the plugin, for ADD, DEL and CHECK,
 * and the two ways to lift it — CNI_NETNS_OVERRIDE and a plugin's
 * `allowsHostNetns` hook for a host-device mode — reach the plugin (and its
 * delegates, through env.netnsOverride). The plugin here only records that
 * it ran; the kernel side is test/integration/host-netns.test.ts.
 */
const conf = netConf({ hostDevice: z.boolean().optional() });
type C = z.output<typeof conf>;
const ran: PluginContext<C>[] = [];
const record = async (ctx: PluginContext<C>) => {
  ran.push(ctx);
};
const base = {
  name: 'probe',
  schema: conf,
  add: async (ctx: PluginContext<C>) => {
    ran.push(ctx);
    return { interfaces: [], ips: [], routes: [], dns: {} };
  },
  del: record,
  check: record,
};
const plain = definePlugin<C>(base);
const hostDevice = definePlugin<C>({ ...base, allowsHostNetns: (c) => c.hostDevice === true });

const env = (command: string, extra: Record<string, string> = {}) => ({
  CNI_COMMAND: command, CNI_CONTAINERID: 'c1', CNI_NETNS: '/proc/self/ns/net', CNI_IFNAME: 'eth0', CNI_PATH: '/nonexistent', ...extra,
});
const stdin = (extra: Record<string, unknown> = {}) => Buffer.from(JSON.stringify({ cniVersion: '1.0.0', name: 'n', type: 'probe', ...extra }));
async function codeOf(p: Promise<unknown>): Promise<number> {
  try {
    await p;
    return 0;
  } catch (e) {
    if (e instanceof CniError) return e.code;
    throw e;
  }
}

describe('CNI_NETNS = the caller\'s own namespace, in the contract layer', () => {
  it('is refused (code 8) for ADD, DEL and CHECK before the plugin runs', async () => {
    ran.length = 0;
    for (const command of ['ADD', 'DEL', 'CHECK']) expect(await codeOf(invoke(plain, env(command), stdin())), command).toBe(8);
    expect(ran).toHaveLength(0);
  });
  it('runs the plugin when the runtime sets CNI_NETNS_OVERRIDE, which the plugin sees (to pass on to delegates)', async () => {
    ran.length = 0;
    expect(await codeOf(invoke(plain, env('DEL', { CNI_NETNS_OVERRIDE: 'true' }), stdin()))).toBe(0);
    expect(ran.map((c) => c.env.netnsOverride)).toEqual([true]);
  });
  it('runs the plugin when its allowsHostNetns hook accepts the configuration, and only then', async () => {
    ran.length = 0;
    expect(await codeOf(invoke(hostDevice, env('ADD'), stdin()))).toBe(8);
    expect(await codeOf(invoke(hostDevice, env('ADD'), stdin({ hostDevice: false })))).toBe(8);
    expect(await codeOf(invoke(hostDevice, env('ADD'), stdin({ hostDevice: true })))).toBe(0);
    expect(ran.map((c) => c.env.netnsOverride)).toEqual([true]);
  });
  it('leaves other namespaces, missing paths and an empty CNI_NETNS to the plugin', async () => {
    ran.length = 0;
    for (const netns of ['/proc/self/ns/mnt', '/nonexistent/netns']) expect(await codeOf(invoke(plain, env('ADD', { CNI_NETNS: netns }), stdin())), netns).toBe(0);
    expect(await codeOf(invoke(plain, env('DEL', { CNI_NETNS: '' }), stdin()))).toBe(0);
    expect(ran).toHaveLength(3);
  });
});
