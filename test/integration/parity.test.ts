import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, Sandbox } from '../helpers/sandbox.js';

/**
 * Issue 13 §7: where a black-box run found bridge and host-local behaving
 * otherwise than the reference plugins (Debian's containernetworking-plugins
 * 1.1.1 in /usr/lib/cni). Each case runs ours and the reference on the same
 * input, each in its own sandbox, and compares what they answer and do.
 */
const BRIDGE = join(BIN, 'bridge');
const HOST_LOCAL = join(BIN, 'host-local');
const REF = '/usr/lib/cni';
const REF_BRIDGE = join(REF, 'bridge');
const REF_HOST_LOCAL = join(REF, 'host-local');

let sb: Sandbox;
let ref: Sandbox;
beforeEach(() => {
  sb = new Sandbox('par');
  ref = new Sandbox('parref');
});
afterEach(() => {
  sb.cleanup();
  ref.cleanup();
});

const conf = (s: Sandbox, over: Record<string, unknown> = {}, ipam: Record<string, unknown> = {}) => ({
  cniVersion: '1.0.0',
  name: 'parnet',
  type: 'bridge',
  bridge: 'parbr0',
  isGateway: true,
  isDefaultGateway: true,
  ipam: { type: 'host-local', subnet: '10.91.0.0/24', dataDir: join(s.dir, 'ipam'), ...ipam },
  ...over,
});
const allocations = (s: Sandbox, net = 'parnet') => {
  const d = join(s.dir, 'ipam', net);
  return existsSync(d) ? readdirSync(d).filter((f) => /[.:]/.test(f) && !f.startsWith('last_reserved_ip')).sort() : [];
};
/**
 * The sandbox's host state without IPv6 DAD's passing "tentative" flag: a
 * link-local address created just before the first snapshot may finish DAD
 * between the two, which is not something the plugin left behind.
 */
const hostState = (s: Sandbox) => s.hostState().replace(/ tentative\b/g, '');
const containerLinks = (s: Sandbox, ns: string) => s.inNs(ns, ['ip', '-o', 'link', 'show']).stdout.trim().split('\n').length;
const dualStack = (s: Sandbox, version: string) =>
  conf(s, { cniVersion: version }, {
    subnet: undefined,
    ranges: [[{ subnet: '10.91.0.0/24' }], [{ subnet: 'fd00:91::/64' }]],
    routes: [{ dst: '192.168.0.0/16' }, { dst: 'fd00:99::/64', gw: 'fd00:91::9' }],
  });

describe('cniVersion 0.1.0 and 0.2.0, as the reference serves them', () => {
  it('VERSION lists what each reference plugin lists, plus 1.1.0', () => {
    for (const p of ['bridge', 'host-local', 'portmap', 'tuning', 'loopback', 'dnsname', 'bandwidth', 'firewall']) {
      const theirs = sb.plugin(join(REF, p), { command: 'VERSION' }, { cniVersion: '0.2.0' });
      const ours = sb.plugin(join(BIN, p), { command: 'VERSION' }, { cniVersion: '0.2.0' });
      expect(ours.json.supportedVersions, p).toEqual([...theirs.json.supportedVersions, '1.1.0']);
    }
  });

  for (const version of ['0.2.0', '0.1.0']) {
    it(`bridge + host-local ${version}: the reference's result, key for key; DEL leaves nothing`, () => {
      const c = sb.container();
      const rc = ref.container();
      const ours = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'old1', netns: c.path }, dualStack(sb, version));
      const theirs = ref.plugin(REF_BRIDGE, { command: 'ADD', containerId: 'old1', netns: rc.path, path: REF }, dualStack(ref, version));
      expect(theirs.code, theirs.stdout).toBe(0);
      expect(ours.code, ours.stdout + ours.stderr).toBe(0);
      // Same fresh store and subnets on both sides: the very same addresses, so the whole JSON compares (key order too).
      expect(JSON.stringify(ours.json)).toBe(JSON.stringify(theirs.json));
      expect(ours.json).toMatchObject({ cniVersion: version, ip4: { ip: '10.91.0.2/24', gateway: '10.91.0.1' }, ip6: { ip: 'fd00:91::2/64' }, dns: {} });
      expect(ours.json).not.toHaveProperty('interfaces');
      expect(sb.inNs(c.name, ['ip', '-o', 'addr', 'show', 'dev', 'eth0']).stdout).toContain('inet 10.91.0.2/24');
      expect(sb.inNs(c.name, ['ip', 'route', 'show', '192.168.0.0/16']).stdout).toContain('via 10.91.0.1');

      // CHECK needs 0.4.0 on both.
      const check = sb.plugin(BRIDGE, { command: 'CHECK', containerId: 'old1', netns: c.path }, { ...dualStack(sb, version), prevResult: ours.json });
      expect(check.json).toMatchObject({ code: 1 });
      expect(ref.plugin(REF_BRIDGE, { command: 'CHECK', containerId: 'old1', netns: rc.path, path: REF }, { ...dualStack(ref, version), prevResult: theirs.json }).json).toMatchObject({ code: 1 });

      // DEL with the old-format prevResult (read into our model) frees everything.
      const del = sb.plugin(BRIDGE, { command: 'DEL', containerId: 'old1', netns: c.path }, { ...dualStack(sb, version), prevResult: ours.json });
      expect(del.code, del.stdout).toBe(0);
      expect(allocations(sb)).toEqual([]);
      expect(sb.inNs(c.name, ['ip', '-o', 'link', 'show', 'eth0']).code).not.toBe(0);
    });
  }

  it('0.2.0 across implementations: our bridge reads the reference host-local\'s result, the reference bridge reads ours', () => {
    const c1 = sb.container();
    const a = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'x1', netns: c1.path, path: REF }, dualStack(sb, '0.2.0'));
    expect(a.code, a.stdout + a.stderr).toBe(0);
    expect(a.json).toMatchObject({ cniVersion: '0.2.0', ip4: { ip: '10.91.0.2/24' }, ip6: { ip: 'fd00:91::2/64' } });
    const c2 = sb.container();
    const b = sb.plugin(REF_BRIDGE, { command: 'ADD', containerId: 'x2', netns: c2.path, path: BIN }, dualStack(sb, '0.2.0'));
    expect(b.code, b.stdout + b.stderr).toBe(0);
    expect(b.json).toMatchObject({ cniVersion: '0.2.0', ip4: { ip: '10.91.0.3/24' }, ip6: { ip: 'fd00:91::3/64' } });
    expect(sb.plugin(BRIDGE, { command: 'DEL', containerId: 'x1', netns: c1.path, path: REF }, dualStack(sb, '0.2.0')).code).toBe(0);
    expect(sb.plugin(REF_BRIDGE, { command: 'DEL', containerId: 'x2', netns: c2.path, path: BIN }, dualStack(sb, '0.2.0')).code).toBe(0);
    expect(allocations(sb)).toEqual([]);
  });

  it('host-local 0.2.0 refuses a second range set of one family, as the reference does', () => {
    const two = (s: Sandbox) => ({ cniVersion: '0.2.0', name: 'parnet', type: 'host-local', ipam: { type: 'host-local', ranges: [[{ subnet: '10.91.0.0/24' }], [{ subnet: '10.92.0.0/24' }]], dataDir: join(s.dir, 'ipam') } });
    const c = sb.container();
    const theirs = ref.plugin(REF_HOST_LOCAL, { command: 'ADD', containerId: 'r', netns: c.path, path: REF }, two(ref));
    const ours = sb.plugin(HOST_LOCAL, { command: 'ADD', containerId: 'r', netns: c.path }, two(sb));
    expect(theirs.json.msg).toBe('CNI version 0.2.0 does not support more than 1 address per family');
    expect(ours.code).toBe(1);
    expect(ours.json.code).toBe(7);
    expect(ours.json.details).toContain(theirs.json.msg);
    expect(allocations(sb)).toEqual([]);
    // 0.3.0 can express both.
    expect(sb.plugin(HOST_LOCAL, { command: 'ADD', containerId: 'r', netns: c.path }, { ...two(sb), cniVersion: '0.3.0' }).json.ips).toHaveLength(2);
  });
});

describe('host-local: a subnet with host bits set', () => {
  for (const ipam of [{ subnet: '10.99.7.5/24' }, { ranges: [[{ subnet: '10.99.8.0/24' }], [{ subnet: 'fd00:99::5/64' }]] }]) {
    it(`is refused as the reference refuses it: ${JSON.stringify(ipam)}`, () => {
      const c = sb.container();
      const make = (s: Sandbox) => ({ cniVersion: '1.0.0', name: 'hbnet', type: 'host-local', ipam: { type: 'host-local', dataDir: join(s.dir, 'ipam'), ...ipam } });
      const theirs = ref.plugin(REF_HOST_LOCAL, { command: 'ADD', containerId: 'h', netns: c.path, path: REF }, make(ref));
      const ours = sb.plugin(HOST_LOCAL, { command: 'ADD', containerId: 'h', netns: c.path }, make(sb));
      expect(theirs.code).toBe(1);
      expect(theirs.json.msg).toMatch(/^invalid range set \d: Network has host bits set/);
      expect(ours.code).toBe(1);
      // The reference's words; code 7 (invalid network config) where the reference has its catch-all 999.
      expect(ours.json).toMatchObject({ code: 7, msg: theirs.json.msg });
      expect(allocations(sb, 'hbnet')).toEqual([]);
    });
  }
});

describe('bridge', () => {
  it('sets arp_notify on the container interface, as the reference does: neighbours follow its MAC at once', () => {
    // arp_notify=1 makes the kernel send a gratuitous ARP when the interface
    // comes up and whenever its MAC changes, so neighbours holding an entry
    // for the address (a reused address, a MAC set later by tuning) switch at
    // once instead of after the entry goes stale. The one sent at link-up is
    // usually lost on a fresh veth (the bridge port is not forwarding yet:
    // the same for the reference), so the MAC change is what is observed.
    const cfg = conf(sb);
    const kc = sb.container();
    expect(sb.plugin(BRIDGE, { command: 'ADD', containerId: 'keep', netns: kc.path }, cfg).code).toBe(0); // 10.91.0.2
    const c1 = sb.container();
    const a = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'n1', netns: c1.path }, cfg);
    expect(a.code, a.stdout + a.stderr).toBe(0);
    expect(a.json.ips[0].address).toBe('10.91.0.3/24');
    expect(sb.inNs(c1.name, ['sysctl', '-n', 'net.ipv4.conf.eth0.arp_notify']).stdout.trim()).toBe('1');
    // No lock time: an ARP may override the entry however recently it changed (the default is 1 s).
    expect(sb.inNs(kc.name, ['sysctl', '-w', 'net.ipv4.neigh.eth0.locktime=0']).code).toBe(0);
    expect(sb.inNs(kc.name, ['ping', '-c', '1', '-W', '2', '10.91.0.3']).code).toBe(0);
    const neigh = () => sb.inNs(kc.name, ['ip', 'neigh', 'show', '10.91.0.3', 'dev', 'eth0']).stdout;
    expect(neigh()).toContain(a.json.interfaces[2].mac);
    const mac2 = '02:91:00:00:00:03';
    expect(sb.inNs(c1.name, ['ip', 'link', 'set', 'eth0', 'address', mac2]).code).toBe(0);
    // Without the announcement the entry keeps the old MAC until it is next used and probed.
    let seen = '';
    for (let i = 0; i < 30 && !seen.includes(mac2); i++) {
      seen = neigh();
      if (!seen.includes(mac2)) sb.inHost(['sleep', '0.1']);
    }
    expect(seen).toContain(mac2);
    // The reference sets the same key.
    const rc = ref.container();
    expect(ref.plugin(REF_BRIDGE, { command: 'ADD', containerId: 'n1', netns: rc.path, path: REF }, conf(ref)).code).toBe(0);
    expect(ref.inNs(rc.name, ['sysctl', '-n', 'net.ipv4.conf.eth0.arp_notify']).stdout.trim()).toBe('1');
  });

  it('isGateway: a second IPv4 gateway on the bridge is refused unless forceAddress, as the reference does', () => {
    const netA = (s: Sandbox) => conf(s, { name: 'neta' });
    const netB = (s: Sandbox, over: Record<string, unknown> = {}) => conf(s, { name: 'netb', ...over }, { subnet: '10.92.0.0/24' });
    for (const s of [sb, ref]) {
      const path = s === sb ? BIN : REF;
      const bin = s === sb ? BRIDGE : REF_BRIDGE;
      expect(s.plugin(bin, { command: 'ADD', containerId: 'a', netns: s.container().path, path }, netA(s)).code).toBe(0);
    }
    const before = hostState(sb);
    const c = sb.container();
    const ours = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'b', netns: c.path }, netB(sb));
    const theirs = ref.plugin(REF_BRIDGE, { command: 'ADD', containerId: 'b', netns: ref.container().path, path: REF }, netB(ref));
    expect(theirs.json.msg).toBe('failed to set bridge addr: "parbr0" already has an IP address different from 10.92.0.1/24');
    expect(ours.code).toBe(1);
    expect(ours.json).toMatchObject({ code: 7, msg: theirs.json.msg });
    // Nothing left of the failed ADD: no veth, no address, no allocation.
    expect(hostState(sb)).toBe(before);
    expect(allocations(sb, 'netb')).toEqual([]);
    expect(containerLinks(sb, c.name)).toBe(1);

    // forceAddress replaces the bridge's address, as the reference's does.
    const forced = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'b', netns: c.path }, netB(sb, { forceAddress: true }));
    expect(forced.code, forced.stdout).toBe(0);
    const addrs = sb.inHost(['ip', '-4', '-o', 'addr', 'show', 'dev', 'parbr0']).stdout;
    expect(addrs).toContain('10.92.0.1/24');
    expect(addrs).not.toContain('10.91.0.1/24');
  });

  it('isGateway: several IPv6 gateways are fine when their subnets do not overlap', () => {
    const v6 = (name: string, subnet: string) => conf(sb, { name }, { subnet });
    expect(sb.plugin(BRIDGE, { command: 'ADD', containerId: 'a', netns: sb.container().path }, v6('six1', 'fd00:93::/64')).code).toBe(0);
    const b = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'b', netns: sb.container().path }, v6('six2', 'fd00:94::/64'));
    expect(b.code, b.stdout).toBe(0);
    const addrs = sb.inHost(['ip', '-6', '-o', 'addr', 'show', 'dev', 'parbr0']).stdout;
    expect(addrs).toContain('fd00:93::1/64');
    expect(addrs).toContain('fd00:94::1/64');
    // Overlapping ones conflict.
    const c = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'c', netns: sb.container().path }, v6('six3', 'fd00:93::/48'));
    expect(c.json).toMatchObject({ code: 7, msg: expect.stringContaining('already has an IP address different from fd00:93::1/48') });
  });

  it('without ipam attaches the container at layer 2, as the reference does; CHECK and DEL work', () => {
    for (const ipam of [undefined, {}]) {
      const l2 = (s: Sandbox) => ({ ...conf(s), ipam, isGateway: false, isDefaultGateway: false });
      const c = sb.container();
      const rc = ref.container();
      const ours = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'l2', netns: c.path }, l2(sb));
      const theirs = ref.plugin(REF_BRIDGE, { command: 'ADD', containerId: 'l2', netns: rc.path, path: REF }, l2(ref));
      expect(theirs.code, theirs.stdout).toBe(0);
      expect(ours.code, ours.stdout + ours.stderr).toBe(0);
      // Same shape: interfaces only (names of the veth and MACs differ), dns {}.
      const shape = (r: { interfaces: { name: string; mac: string; sandbox?: string }[] }) =>
        JSON.stringify({ ...r, interfaces: r.interfaces.map((i) => ({ ...i, name: i.name.replace(/^veth[0-9a-f]{8}$/, 'VETH'), mac: 'MAC', sandbox: i.sandbox ? 'NS' : undefined })) });
      expect(shape(ours.json)).toBe(shape(theirs.json));
      expect(ours.json).not.toHaveProperty('ips');
      expect(sb.inNs(c.name, ['ip', '-o', 'link', 'show', 'eth0']).stdout).toMatch(/state UP|,UP/);
      expect(sb.inNs(c.name, ['ip', '-4', '-o', 'addr', 'show', 'dev', 'eth0']).stdout).toBe('');
      expect(sb.inHost(['ip', '-o', 'link', 'show', 'master', 'parbr0']).stdout).toContain(ours.json.interfaces[1].name);
      const withPrev = { ...l2(sb), prevResult: ours.json };
      expect(sb.plugin(BRIDGE, { command: 'CHECK', containerId: 'l2', netns: c.path }, withPrev).code).toBe(0);
      expect(sb.plugin(BRIDGE, { command: 'DEL', containerId: 'l2', netns: c.path }, withPrev).code).toBe(0);
      expect(sb.plugin(BRIDGE, { command: 'DEL', containerId: 'l2', netns: c.path }, withPrev).code).toBe(0);
      expect(containerLinks(sb, c.name)).toBe(1);
      expect(sb.inHost(['ip', '-o', 'link', 'show', 'type', 'veth']).stdout).toBe('');
      expect(ref.plugin(REF_BRIDGE, { command: 'DEL', containerId: 'l2', netns: rc.path, path: REF }, l2(ref)).code).toBe(0);
    }
  });

  it('without ipam and cniVersion 0.2.0: refused before anything is made (the reference fails after attaching, and leaves the veth)', () => {
    const c = sb.container();
    const before = hostState(sb);
    const r = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'l2', netns: c.path }, { ...conf(sb), cniVersion: '0.2.0', ipam: undefined });
    expect(r.json).toMatchObject({ code: 1, msg: 'cannot convert: no valid IP addresses' });
    expect(hostState(sb)).toBe(before);
    expect(containerLinks(sb, c.name)).toBe(1);
  });

  it('refuses hairpinMode with promiscMode with the reference\'s message, leaving nothing', () => {
    const pair = (s: Sandbox) => conf(s, { hairpinMode: true, promiscMode: true });
    const c = sb.container();
    const before = hostState(sb);
    const ours = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'hp', netns: c.path }, pair(sb));
    const theirs = ref.plugin(REF_BRIDGE, { command: 'ADD', containerId: 'hp', netns: ref.container().path, path: REF }, pair(ref));
    expect(theirs.json.msg).toBe('cannot set hairpin mode and promiscuous mode at the same time.');
    expect(ours.code).toBe(1);
    expect(ours.json).toMatchObject({ code: 7, msg: theirs.json.msg });
    expect(hostState(sb)).toBe(before);
    expect(containerLinks(sb, c.name)).toBe(1);
    expect(allocations(sb)).toEqual([]);
  });
});
