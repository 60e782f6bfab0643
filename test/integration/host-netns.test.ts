import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CniError } from '../../lib/cni/errors.js';
import { allowCallerNetns, Netns } from '../../lib/netlink/ns.js';
import { BIN, Sandbox, must } from '../helpers/sandbox.js';

/**
 * §3 of issue 13: CNI_NETNS naming the namespace the runtime called from is
 * not a container. Every plugin here runs inside the sandbox's "host"
 * namespace, so CNI_NETNS=/var/run/netns/<host> (or /proc/self/ns/net) is
 * the caller's own namespace: each call must be refused with code 8 before
 * it changes anything, and the host must be exactly as before — its lo up,
 * the interface named by CNI_IFNAME still there, no bridge, veth, qdisc,
 * address, saved file or IPAM allocation. CNI_NETNS_OVERRIDE=1 (libcni's
 * variable) lets a runtime ask for it explicitly.
 */
let sb: Sandbox;
beforeEach(() => {
  sb = new Sandbox('hns');
  // The host's own interfaces a confused plugin would take for the container's:
  // eth0 (bridge DEL would delete it, tuning would change it; a veth, as this
  // kernel has no dummy links) and a veth pair
  // whose one end bandwidth would take for the container side.
  must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'add', 'eth0', 'mtu', '1500', 'type', 'veth', 'peer', 'name', 'eth0p']);
  must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'set', 'eth0', 'up']);
  must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'add', 'hv0', 'type', 'veth', 'peer', 'name', 'hv1']);
});
afterEach(() => sb.cleanup());

const hostPath = () => `/var/run/netns/${sb.host}`;
const plugin = (name: string) => join(BIN, name);
const linkOf = (name: string) => JSON.parse(must(['ip', 'netns', 'exec', sb.host, 'ip', '-j', 'link', 'show']) || '[]').find((l: any) => l.ifname === name);
const qdiscs = () => must(['ip', 'netns', 'exec', sb.host, 'tc', 'qdisc', 'show']);
/** Everything these plugins could change in the host namespace and the sandbox's files. */
const snapshot = () => [sb.hostState(), qdiscs(), JSON.stringify(files(sb.dir))].join('\n');
function files(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, withFileTypes: false }).map(String).sort();
}

const bridgeConf = () => ({
  cniVersion: '1.0.0', name: 'hns', type: 'bridge', bridge: 'hnsbr0', isGateway: true,
  ipam: { type: 'host-local', subnet: '10.213.0.0/24', dataDir: join(sb.dir, 'ipam') },
});
const prevResult = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', sandbox: '/x' }], ips: [{ address: '10.213.0.2/24', interface: 0 }], dns: {} };
const tuningConf = () => ({ cniVersion: '1.0.0', name: 'hns', type: 'tuning', mtu: 1400, dataDir: join(sb.dir, 'tuning'), prevResult });
const bandwidthConf = () => ({
  cniVersion: '1.0.0', name: 'hns', type: 'bandwidth', ingressRate: 8_000_000, ingressBurst: 200_000,
  prevResult: { ...prevResult, interfaces: [{ name: 'hv0' }, { name: 'hv1', sandbox: '/x' }], ips: [{ address: '10.213.0.2/24', interface: 1 }] },
});
const loConf = { cniVersion: '1.0.0', name: 'hns', type: 'loopback' };

/** Each call that treats CNI_NETNS as the container, with the host interface CNI_IFNAME names. */
const calls = () => [
  { plugin: 'bridge', command: 'ADD', ifname: 'ct0', conf: bridgeConf() },
  { plugin: 'bridge', command: 'DEL', ifname: 'eth0', conf: bridgeConf() },
  { plugin: 'bridge', command: 'CHECK', ifname: 'eth0', conf: { ...bridgeConf(), prevResult } },
  { plugin: 'loopback', command: 'DEL', ifname: 'eth0', conf: loConf },
  { plugin: 'loopback', command: 'ADD', ifname: 'eth0', conf: loConf },
  { plugin: 'tuning', command: 'ADD', ifname: 'eth0', conf: tuningConf() },
  { plugin: 'tuning', command: 'DEL', ifname: 'eth0', conf: tuningConf() },
  { plugin: 'bandwidth', command: 'ADD', ifname: 'hv1', conf: bandwidthConf() },
  { plugin: 'bandwidth', command: 'DEL', ifname: 'hv1', conf: bandwidthConf() },
];

describe('CNI_NETNS naming the caller\'s own namespace', () => {
  it('is refused with code 8 by every plugin and command that takes it, and the host is left as it was', () => {
    for (const netns of [hostPath(), '/proc/self/ns/net']) {
      for (const c of calls()) {
        const before = snapshot();
        const what = `${c.plugin} ${c.command} CNI_NETNS=${netns}`;
        const r = sb.plugin(plugin(c.plugin), { command: c.command, containerId: 'hns1', netns, ifname: c.ifname }, c.conf);
        expect(r.code, `${what}: ${r.stdout}${r.stderr}`).toBe(1);
        expect(r.json, what).toMatchObject({ code: 8, msg: "CNI_NETNS is the plugin's own network namespace, not a container's" });
        expect(r.json.details, what).toMatch(/CNI_NETNS_OVERRIDE/);
        expect(snapshot(), what).toBe(before);
        expect(linkOf('lo').flags, what).toContain('UP');
        expect(linkOf('eth0'), what).toMatchObject({ mtu: 1500 });
        expect(linkOf('ct0'), what).toBeUndefined();
        expect(linkOf('hnsbr0'), what).toBeUndefined();
        expect(qdiscs(), what).not.toMatch(/tbf/);
      }
    }
  });

  it('is allowed when the runtime sets CNI_NETNS_OVERRIDE (libcni), and only then', () => {
    const netns = hostPath();
    const call = (command: string, override?: string) =>
      sb.plugin(plugin('loopback'), { command, containerId: 'hns1', netns, env: override === undefined ? {} : { CNI_NETNS_OVERRIDE: override } }, loConf);
    for (const value of ['0', 'false', 'yes', '']) {
      expect(call('DEL', value).json, `CNI_NETNS_OVERRIDE=${value}`).toMatchObject({ code: 8 });
      expect(linkOf('lo').flags).toContain('UP');
    }
    expect(call('DEL', '1').code).toBe(0);
    expect(linkOf('lo').flags).not.toContain('UP');
    expect(call('ADD', 'TRUE').code).toBe(0);
    expect(linkOf('lo').flags).toContain('UP');
    // bridge's DEL, as asked, deletes the host interface CNI_IFNAME names.
    const d = sb.plugin(plugin('bridge'), { command: 'DEL', containerId: 'hns1', netns, ifname: 'eth0', env: { CNI_NETNS_OVERRIDE: 'true' } }, bridgeConf());
    expect(d.code, d.stdout).toBe(0);
    expect(linkOf('eth0')).toBeUndefined();
  });

  it('a container namespace is still accepted, and a namespace opened by descriptor is checked again', () => {
    const c = sb.container();
    const r = sb.plugin(plugin('loopback'), { command: 'ADD', containerId: 'hns1', netns: c.path }, loConf);
    expect(r.code, r.stdout).toBe(0);
    // In-process (the test runs in the machine's namespace): Netns refuses the
    // caller's own namespace on the descriptor it opened, before any setns.
    allowCallerNetns(false);
    let err: unknown;
    try {
      Netns.open('/proc/self/ns/net').close();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CniError);
    expect((err as CniError).code).toBe(8);
  });
});
