import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { parseCniArgs } from '../../lib/cni/args.js';
import { readEnv } from '../../lib/cni/env.js';
import { CniError } from '../../lib/cni/errors.js';
import { formatResult, parseResult } from '../../lib/cni/result.js';
import { netConf, obj } from '../../lib/cni/schema.js';
import { invoke, definePlugin } from '../../lib/cni/skel.js';
import { compareVersions, requireSupported, versionInfo } from '../../lib/cni/version.js';

const code = (fn: () => unknown) => {
  try {
    fn();
  } catch (e) {
    if (e instanceof CniError) return e.code;
    throw e;
  }
  return 0;
};

describe('CNI_ARGS', () => {
  it('parses pairs and honours IgnoreUnknown', () => {
    const m = parseCniArgs('IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.0.0.5', ['IP']);
    expect(m.get('IP')).toBe('10.0.0.5');
    expect(m.get('K8S_POD_NAME')).toBe('web');
  });
  it('rejects unknown keys without IgnoreUnknown, and malformed pairs', () => {
    expect(code(() => parseCniArgs('FOO=1', ['IP']))).toBe(4);
    expect(code(() => parseCniArgs('IgnoreUnknown=false;FOO=1', ['IP']))).toBe(4);
    expect(code(() => parseCniArgs('IP', ['IP']))).toBe(4);
    expect(parseCniArgs('IgnoreUnknown=true;FOO=a=b', []).get('FOO')).toBe('a=b');
  });
});

describe('environment', () => {
  const base = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'abc', CNI_NETNS: '/var/run/netns/x', CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin' };
  it('accepts a complete ADD environment', () => {
    const env = readEnv(base);
    expect(env).toMatchObject({ command: 'ADD', containerId: 'abc', ifname: 'eth0', path: ['/opt/cni/bin'] });
  });
  it('names missing variables with code 4', () => {
    expect(code(() => readEnv({ ...base, CNI_NETNS: undefined }))).toBe(4);
    expect(code(() => readEnv({ ...base, CNI_PATH: '' }))).toBe(4);
    expect(readEnv({ CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'a', CNI_IFNAME: 'eth0', CNI_PATH: '/x' }).command).toBe('DEL');
    expect(code(() => readEnv({ CNI_COMMAND: 'BOGUS' }))).toBe(4);
  });
  it('validates container ids and interface names', () => {
    expect(code(() => readEnv({ ...base, CNI_CONTAINERID: '../etc' }))).toBe(4);
    expect(code(() => readEnv({ ...base, CNI_CONTAINERID: 'a/b' }))).toBe(4);
    expect(code(() => readEnv({ ...base, CNI_IFNAME: 'eth0123456789ab' }))).toBe(0); // 15 bytes
    expect(code(() => readEnv({ ...base, CNI_IFNAME: 'eth0123456789abc' }))).toBe(4); // 16 bytes
    expect(code(() => readEnv({ ...base, CNI_IFNAME: 'a:b' }))).toBe(4);
    expect(code(() => readEnv({ ...base, CNI_IFNAME: '..' }))).toBe(4);
    expect(code(() => readEnv({ ...base, CNI_IFNAME: 'a b' }))).toBe(4);
  });
});

describe('versions', () => {
  it('compares numerically and rejects unknown versions with code 1', () => {
    expect(compareVersions('0.4.0', '0.10.0')).toBeLessThan(0);
    expect(compareVersions('1.1.0', '1.0.0')).toBeGreaterThan(0);
    expect(code(() => requireSupported('0.5.0'))).toBe(1);
    expect(requireSupported('0.3.1')).toBe('0.3.1');
  });
  it('serves 0.1.0 and 0.2.0 as the reference does (no cniVersion is 0.1.0), except where its plugin does not', () => {
    expect(requireSupported('0.2.0', 'bridge')).toBe('0.2.0');
    expect(requireSupported('0.1.0', 'host-local')).toBe('0.1.0');
    expect(requireSupported(undefined, 'bridge')).toBe('0.1.0');
    expect(requireSupported('', 'tuning')).toBe('0.1.0');
    // Debian's 1.1.1: bandwidth from 0.3.0, firewall from 0.4.0.
    expect(code(() => requireSupported('0.2.0', 'bandwidth'))).toBe(1);
    expect(requireSupported('0.3.0', 'bandwidth')).toBe('0.3.0');
    expect(code(() => requireSupported('0.3.1', 'firewall'))).toBe(1);
    expect(code(() => requireSupported(undefined, 'firewall'))).toBe(1);
    expect(requireSupported('0.4.0', 'firewall')).toBe('0.4.0');
  });
  it('answers VERSION in the caller version when supported, with the plugin\'s own list', () => {
    const all = ['0.1.0', '0.2.0', '0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'];
    expect(versionInfo('0.4.0').cniVersion).toBe('0.4.0');
    expect(versionInfo('9.9.9').cniVersion).toBe('1.1.0');
    expect(versionInfo(undefined).supportedVersions).toEqual(all);
    for (const p of ['bridge', 'host-local', 'portmap', 'tuning', 'loopback', 'dnsname']) expect(versionInfo('0.2.0', p)).toEqual({ cniVersion: '0.2.0', supportedVersions: all });
    expect(versionInfo('0.2.0', 'bandwidth')).toEqual({ cniVersion: '1.1.0', supportedVersions: all.slice(2) });
    expect(versionInfo('0.3.1', 'firewall')).toEqual({ cniVersion: '1.1.0', supportedVersions: ['0.4.0', '1.0.0', '1.1.0'] });
  });
});

describe('result conversion', () => {
  const v040 = {
    cniVersion: '0.4.0',
    interfaces: [{ name: 'eth0', mac: '00:11:22:33:44:55', sandbox: '/var/run/netns/x' }],
    ips: [
      { version: '4', interface: 0, address: '10.0.0.2/24', gateway: '10.0.0.1' },
      { version: '6', interface: 0, address: 'fd00::2/64', gateway: 'fd00::1' },
    ],
    routes: [{ dst: '0.0.0.0/0', gw: '10.0.0.1' }],
    dns: { nameservers: ['10.0.0.1'] },
  };
  it('reads 0.4.0 and writes 1.0.0 without ips[].version', () => {
    const out = formatResult(parseResult(v040), '1.0.0') as { ips: Record<string, unknown>[] };
    expect(out.ips[0]).toEqual({ interface: 0, address: '10.0.0.2/24', gateway: '10.0.0.1' });
    expect(out).toMatchObject({ cniVersion: '1.0.0', dns: { nameservers: ['10.0.0.1'] } });
  });
  it('writes ips[].version for 0.3.x from the address family', () => {
    const v1 = formatResult(parseResult(v040), '1.1.0');
    const back = formatResult(parseResult(v1), '0.3.1') as { ips: { version: string }[] };
    expect(back.ips.map((i) => i.version)).toEqual(['4', '6']);
  });
  it('keeps 1.1.0 fields only for 1.1.0', () => {
    const r = parseResult({ cniVersion: '1.1.0', interfaces: [{ name: 'e', mtu: 1400 }], routes: [{ dst: '0.0.0.0/0', mtu: 1300, table: 100 }] });
    expect(formatResult(r, '1.1.0')).toMatchObject({ interfaces: [{ name: 'e', mtu: 1400 }], routes: [{ mtu: 1300, table: 100 }] });
    expect(formatResult(r, '1.0.0')).toMatchObject({ interfaces: [{ name: 'e' }], routes: [{ dst: '0.0.0.0/0' }] });
    expect((formatResult(r, '1.0.0') as { interfaces: object[] }).interfaces[0]).not.toHaveProperty('mtu');
  });
  it('rejects results of versions it does not speak', () => {
    expect(code(() => parseResult({ cniVersion: '0.5.0', ips: [] }))).toBe(1);
    expect(code(() => parseResult({ cniVersion: '1.0.0', ips: [{ gateway: 'x' }] }))).toBe(6);
  });

  // The reference's own output for bridge + host-local, dual stack with routes (see parity.test.ts).
  const v020 = {
    cniVersion: '0.2.0',
    ip4: { ip: '10.1.0.2/24', gateway: '10.1.0.1', routes: [{ dst: '192.168.0.0/16' }, { dst: '0.0.0.0/0', gw: '10.1.0.1' }] },
    ip6: { ip: 'fd00:1::2/64', gateway: 'fd00:1::1', routes: [{ dst: 'fd00:9::/64', gw: 'fd00:1::9' }, { dst: '::/0', gw: 'fd00:1::1' }] },
    dns: { nameservers: ['10.1.0.1'] },
  };
  it('reads a 0.2.0 result (ip4/ip6) into the model, as libcni converts it', () => {
    expect(parseResult(v020)).toEqual({
      interfaces: [],
      ips: [{ address: '10.1.0.2/24', gateway: '10.1.0.1' }, { address: 'fd00:1::2/64', gateway: 'fd00:1::1' }],
      routes: [{ dst: '192.168.0.0/16' }, { dst: '0.0.0.0/0', gw: '10.1.0.1' }, { dst: 'fd00:9::/64', gw: 'fd00:1::9' }, { dst: '::/0', gw: 'fd00:1::1' }],
      dns: { nameservers: ['10.1.0.1'] },
    });
    expect(formatResult(parseResult(v020), '0.4.0')).toEqual({
      cniVersion: '0.4.0',
      ips: [{ version: '4', address: '10.1.0.2/24', gateway: '10.1.0.1' }, { version: '6', address: 'fd00:1::2/64', gateway: 'fd00:1::1' }],
      routes: v020.ip4.routes.concat(v020.ip6.routes),
      dns: { nameservers: ['10.1.0.1'] },
    });
    // 0.1.0 has the same shape; a result without cniVersion but with ip4 is 0.1.0.
    expect(parseResult({ ...v020, cniVersion: '0.1.0' })).toEqual(parseResult(v020));
    expect(parseResult({ ip4: { ip: '10.1.0.2/24' } }).ips).toEqual([{ address: '10.1.0.2/24' }]);
    // ip4 must be IPv4 and ip6 IPv6; ip is required.
    expect(code(() => parseResult({ cniVersion: '0.2.0', ip4: { ip: 'fd00::2/64' } }))).toBe(6);
    expect(code(() => parseResult({ cniVersion: '0.2.0', ip6: { gateway: 'fd00::1' } }))).toBe(6);
  });
  it('writes 0.2.0 and 0.1.0 results in the reference\'s shape and key order', () => {
    // Round trip through the model keeps the reference's JSON byte for byte.
    expect(JSON.stringify(formatResult(parseResult(v020), '0.2.0'))).toBe(JSON.stringify(v020));
    expect(JSON.stringify(formatResult(parseResult(v020), '0.1.0'))).toBe(JSON.stringify({ ...v020, cniVersion: '0.1.0' }));
    // From a newer result: interfaces dropped, the first address of each family kept, routes by destination family.
    const many = parseResult({
      cniVersion: '1.1.0',
      interfaces: [{ name: 'eth0', mac: '00:11:22:33:44:55', sandbox: '/x' }],
      ips: [{ interface: 0, address: '10.0.0.2/24', gateway: '10.0.0.1' }, { interface: 0, address: '10.0.1.2/24' }],
      routes: [{ dst: '0.0.0.0/0', gw: '10.0.0.1', mtu: 1400 }, { dst: '::/0', gw: 'fd00::1' }],
    });
    expect(formatResult(many, '0.2.0')).toEqual({ cniVersion: '0.2.0', ip4: { ip: '10.0.0.2/24', gateway: '10.0.0.1', routes: [{ dst: '0.0.0.0/0', gw: '10.0.0.1' }] }, dns: {} });
    // Nothing to write without an address (libcni: "cannot convert: no valid IP addresses").
    expect(code(() => formatResult({ interfaces: [{ name: 'eth0' }], ips: [], routes: [], dns: {} }, '0.2.0'))).toBe(1);
  });
});

describe('config schemas', () => {
  const schema = netConf({ ipam: obj({ type: z.string(), dataDir: z.string().optional() }).optional(), mtu: z.number().default(0) });
  it('accepts keys case-insensitively, an exact key winning', () => {
    const c = schema.parse({ cniVersion: '1.0.0', Name: 'n', TYPE: 'bridge', IPAM: { Type: 'host-local', datadir: '/d' }, MTU: 1400 });
    expect(c).toMatchObject({ name: 'n', type: 'bridge', ipam: { type: 'host-local', dataDir: '/d' }, mtu: 1400 });
    expect(schema.parse({ name: 'n', type: 't', mtu: 1, MTU: 2 }).mtu).toBe(1);
  });
  it('ignores unknown keys and rejects bad network names', () => {
    expect(schema.parse({ name: 'n', type: 't', whatever: { x: 1 } })).not.toHaveProperty('whatever');
    expect(schema.safeParse({ name: '../x', type: 't' }).success).toBe(false);
    expect(schema.safeParse({ name: 'a/b', type: 't' }).success).toBe(false);
  });
});

describe('dispatch', () => {
  const plugin = definePlugin({
    name: 'fake',
    schema: netConf({}),
    add: async (ctx) => ({ interfaces: [], ips: ctx.prevResult?.ips ?? [], routes: [], dns: {} }),
    del: async () => undefined,
    check: async () => undefined,
  });
  const env = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c', CNI_NETNS: '/x', CNI_IFNAME: 'eth0', CNI_PATH: '/x' };
  const run = (vars: Record<string, string>, conf: unknown) => invoke(plugin, vars, Buffer.from(typeof conf === 'string' ? conf : JSON.stringify(conf)));
  const codeOf = async (p: Promise<unknown>) => p.then(() => 0, (e: CniError) => e.code);

  it('reads a 0.2.0 prevResult and writes 0.2.0 results', async () => {
    const out = await run(env, { cniVersion: '1.0.0', name: 'n', type: 'fake', prevResult: { cniVersion: '0.2.0', ip4: { ip: '10.1.0.2/16' } } });
    expect(out.output).toEqual({ cniVersion: '1.0.0', ips: [{ address: '10.1.0.2/16' }], dns: {} });
    const old = await run(env, { cniVersion: '0.2.0', name: 'n', type: 'fake', prevResult: { cniVersion: '0.3.1', ips: [{ version: '6', address: 'fd00::2/64' }] } });
    expect(old.output).toEqual({ cniVersion: '0.2.0', ip6: { ip: 'fd00::2/64' }, dns: {} });
    const none = await run(env, { name: 'n', type: 'fake', prevResult: { ip4: { ip: '10.1.0.2/16' } } });
    expect(none.output).toEqual({ cniVersion: '0.1.0', ip4: { ip: '10.1.0.2/16' }, dns: {} });
  });
  it('converts prevResult to the config version', async () => {
    const out = await run(env, { cniVersion: '1.0.0', name: 'n', type: 'fake', prevResult: { cniVersion: '0.3.1', ips: [{ version: '4', address: '10.1.0.2/16' }] } });
    expect(out.output).toEqual({ cniVersion: '1.0.0', ips: [{ address: '10.1.0.2/16' }], dns: {} });
  });
  it('gives the spec codes for bad input', async () => {
    expect(await codeOf(run(env, '{"cniVersion":'))).toBe(6);
    expect(await codeOf(run(env, { cniVersion: '7.0.0', name: 'n', type: 'fake' }))).toBe(1);
    expect(await codeOf(run(env, { cniVersion: '1.0.0', type: 'fake' }))).toBe(7);
    expect(await codeOf(run({ ...env, CNI_COMMAND: 'CHECK' }, { cniVersion: '0.3.1', name: 'n', type: 'fake' }))).toBe(1);
    expect(await codeOf(run({ ...env, CNI_COMMAND: 'GC' }, { cniVersion: '1.0.0', name: 'n', type: 'fake' }))).toBe(1);
    expect(await codeOf(run({ ...env, CNI_COMMAND: 'STATUS' }, { cniVersion: '1.1.0', name: 'n', type: 'fake' }))).toBe(0);
  });
});
