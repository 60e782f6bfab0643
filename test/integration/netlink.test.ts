import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Netns, readSysctl, writeSysctl } from '../../lib/netlink/ns.js';
import { Rtnl, errnoOf } from '../../lib/netlink/rtnl.js';
import { must, sh } from '../helpers/sandbox.js';

// lib/netlink driven directly from the test process (vitest forks: the main
// thread is ours to setns), checked against what `ip` reports.
const A = `cnits-nl-a-${process.pid}`;
const B = `cnits-nl-b-${process.pid}`;
let a: Netns;
let b: Netns;
let ra: Rtnl;
let rb: Rtnl;

beforeAll(() => {
  must(['ip', 'netns', 'add', A]);
  must(['ip', 'netns', 'add', B]);
  a = Netns.open(`/var/run/netns/${A}`);
  b = Netns.open(`/var/run/netns/${B}`);
  ra = Rtnl.open(a);
  rb = Rtnl.open(b);
});
afterAll(() => {
  ra?.close();
  rb?.close();
  a?.close();
  b?.close();
  sh(['ip', 'netns', 'del', A]);
  sh(['ip', 'netns', 'del', B]);
});

const ipIn = (ns: string, ...argv: string[]) => must(['ip', 'netns', 'exec', ns, 'ip', ...argv]);

describe('lib/netlink in real namespaces', () => {
  it('creates a veth pair across namespaces in one request', async () => {
    await ra.createVeth({ name: 'va', peerName: 'vb', peerNsFd: b.fd, mtu: 1400, mac: '02:00:00:00:00:0a' });
    const va = await ra.linkByName('va');
    const vb = await rb.linkByName('vb');
    expect(va).toMatchObject({ kind: 'veth', mtu: 1400, mac: '02:00:00:00:00:0a', up: false });
    expect(vb?.kind).toBe('veth');
    expect(va?.peerIndex).toBe(vb?.index);
    expect(ipIn(A, '-o', 'link', 'show', 'va')).toContain('mtu 1400');
    expect(ipIn(B, '-o', 'link', 'show', 'vb')).toContain('vb@');
  });

  it('bridges, enslaves, sets up, hairpin', async () => {
    await ra.createBridge('br-t', {});
    const br = (await ra.linkByName('br-t'))!;
    const va = (await ra.linkByName('va'))!;
    expect(br.kind).toBe('bridge');
    await ra.setMaster(va.index, br.index);
    await ra.setHairpin(va.index, true);
    await ra.setUp(va.index);
    await ra.setUp(br.index);
    expect((await ra.linkByName('va'))?.master).toBe(br.index);
    expect(ipIn(A, '-d', 'link', 'show', 'va')).toMatch(/hairpin on/);
    expect(ipIn(A, '-o', 'link', 'show', 'br-t')).toMatch(/UP/);
    await expect(ra.createBridge('br-t', {})).rejects.toSatisfy((e) => errnoOf(e) === 'EEXIST');
  });

  it('addresses (v4 and v6, no DAD), routes and neighbours', async () => {
    const vb = (await rb.linkByName('vb'))!;
    await rb.setUp(vb.index);
    await rb.addAddress(vb.index, '10.123.0.2/24');
    await rb.addAddress(vb.index, 'fd00:123::2/64', { noDad: true });
    const addrs = (await rb.addresses(vb.index)).map((x) => x.cidr);
    expect(addrs).toEqual(expect.arrayContaining(['10.123.0.2/24', 'fd00:123::2/64']));
    expect(ipIn(B, '-o', 'addr', 'show', 'dev', 'vb')).toContain('inet 10.123.0.2/24 brd 10.123.0.255');
    await rb.addRoute({ dst: '0.0.0.0/0', gw: '10.123.0.1', index: vb.index });
    await rb.addRoute({ dst: '192.168.77.0/24', gw: '10.123.0.9', index: vb.index, priority: 5 });
    expect(ipIn(B, 'route', 'show')).toContain('default via 10.123.0.1 dev vb');
    expect(ipIn(B, 'route', 'show')).toContain('192.168.77.0/24 via 10.123.0.9 dev vb');
    const routes = await rb.routes(4);
    expect(routes).toContainEqual(expect.objectContaining({ dst: '0.0.0.0/0', gw: '10.123.0.1', oif: vb.index }));
    await rb.delRoute({ dst: '192.168.77.0/24', gw: '10.123.0.9', index: vb.index, priority: 5 });
    expect(ipIn(B, 'route', 'show')).not.toContain('192.168.77.0/24');
    await rb.setNeighbour(vb.index, '10.123.0.50', '02:00:00:00:00:50');
    expect(ipIn(B, 'neigh', 'show', 'dev', 'vb')).toContain('10.123.0.50 lladdr 02:00:00:00:00:50 PERMANENT');
    expect(await rb.neighbours(vb.index)).toContainEqual({ index: vb.index, ip: '10.123.0.50', mac: '02:00:00:00:00:50', permanent: true });
    await rb.delNeighbour(vb.index, '10.123.0.50');
    expect(ipIn(B, 'neigh', 'show', 'dev', 'vb')).not.toContain('10.123.0.50');
    await rb.delAddress(vb.index, '10.123.0.2/24');
    expect(ipIn(B, '-o', 'addr', 'show', 'dev', 'vb')).not.toContain('10.123.0.2');
  });

  it('sets MAC, MTU and promiscuity; sysctl writes land in the namespace', async () => {
    const vb = (await rb.linkByName('vb'))!;
    await rb.setMac(vb.index, '02:00:00:00:00:bb');
    await rb.setMtu(vb.index, 1300);
    await rb.setPromisc(vb.index, true);
    expect(await rb.linkByIndex(vb.index)).toMatchObject({ mac: '02:00:00:00:00:bb', mtu: 1300, promisc: true });
    const host = readSysctl(['net', 'ipv4', 'conf', 'all', 'forwarding']);
    b.run(() => writeSysctl(['net', 'ipv4', 'conf', 'all', 'forwarding'], host === '1' ? '0' : '1'));
    expect(b.run(() => readSysctl(['net', 'ipv4', 'conf', 'all', 'forwarding']))).toBe(host === '1' ? '0' : '1');
    expect(readSysctl(['net', 'ipv4', 'conf', 'all', 'forwarding'])).toBe(host); // the test's own namespace is untouched
  });

  it('sets and clears all-multicast and the transmit queue length', async () => {
    const vb = (await rb.linkByName('vb'))!;
    await rb.setAllmulti(vb.index, true);
    await rb.setTxqlen(vb.index, 321);
    expect(await rb.linkByIndex(vb.index)).toMatchObject({ allmulti: true, txqlen: 321 });
    const [shown] = JSON.parse(ipIn(B, '-j', 'link', 'show', 'vb'));
    expect(shown.flags).toContain('ALLMULTI');
    expect(shown.txqlen).toBe(321);
    await rb.setAllmulti(vb.index, false);
    await rb.setTxqlen(vb.index, 0);
    expect(await rb.linkByIndex(vb.index)).toMatchObject({ allmulti: false, txqlen: 0 });
    expect(JSON.parse(ipIn(B, '-j', 'link', 'show', 'vb'))[0].flags).not.toContain('ALLMULTI');
  });

  it('VLAN links: created where the kernel has 802.1Q, a clear errno otherwise', async () => {
    const va = (await ra.linkByName('va'))!;
    try {
      await ra.createVlan('va.100', va.index, 100);
      expect(ipIn(A, '-d', 'link', 'show', 'va.100')).toContain('vlan protocol 802.1Q id 100');
    } catch (err) {
      console.log(`kernel refused a VLAN link (${errnoOf(err)}): error path only`);
      expect(errnoOf(err)).toMatch(/^E[A-Z]+$/);
    }
  });

  it('deletes links; a missing one is ENODEV, a missing namespace is undefined', async () => {
    const va = (await ra.linkByName('va'))!;
    await ra.deleteLink(va.index);
    expect(await ra.linkByName('va')).toBeUndefined();
    expect(await rb.linkByName('vb')).toBeUndefined(); // the peer went with it
    await expect(ra.deleteLink(va.index)).rejects.toSatisfy((e) => errnoOf(e) === 'ENODEV');
    expect(Netns.tryOpen('/var/run/netns/cnits-does-not-exist')).toBeUndefined();
    expect(() => Netns.open('/proc/self/status')).toThrow(/not a network namespace/);
  });
});
