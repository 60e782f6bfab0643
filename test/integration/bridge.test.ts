import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, Sandbox } from '../helpers/sandbox.js';

const BRIDGE = join(BIN, 'bridge');
let sb: Sandbox;
beforeEach(() => {
  sb = new Sandbox('br');
});
afterEach(() => sb.cleanup());

function netconf(over: Record<string, unknown> = {}, ipam: Record<string, unknown> = {}) {
  return {
    cniVersion: '1.0.0',
    name: 'testnet',
    type: 'bridge',
    bridge: 'cnitest0',
    isGateway: true,
    isDefaultGateway: true,
    ipMasq: true,
    ipam: { type: 'host-local', subnet: '10.77.0.0/24', dataDir: join(sb.dir, 'ipam'), ...ipam },
    ...over,
  };
}
const allocations = (net = 'testnet') => {
  const d = join(sb.dir, 'ipam', net);
  // Allocation files are named by address (the store's lock and cursor files are not).
  return existsSync(d) ? readdirSync(d).filter((f) => /^[0-9.]+$|^[0-9a-f:]+$/.test(f) && /[.:]/.test(f)).sort() : [];
};
const natChains = () => sb.inHost(['iptables-save', '-t', 'nat']).stdout.split('\n').filter((l) => l.startsWith(':CNI-'));
/**
 * The sandbox's host state without IPv6 DAD's passing "tentative" flag: a
 * link-local address created just before the first snapshot may finish DAD
 * between the two, which is not something the plugin left behind.
 */
const hostState = (s: Sandbox) => s.hostState().replace(/ tentative\b/g, '');
const hostVeths = () => sb.inHost(['ip', '-o', 'link', 'show', 'type', 'veth']).stdout.trim();

describe('bridge + host-local in real namespaces', () => {
  it('ADD wires the container: address, default route, gateway reachable', () => {
    const c = sb.container();
    const r = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'ctr1', netns: c.path }, netconf({ hairpinMode: true }, { routes: [{ dst: '0.0.0.0/0' }] }));
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(sb.inHost(['cat', `/sys/class/net/${r.json.interfaces[1].name}/brport/hairpin_mode`]).stdout.trim()).toBe('1');
    expect(sb.inHost(['cat', `/sys/class/net/${r.json.interfaces[1].name}/master/uevent`]).stdout).toContain('INTERFACE=cnitest0');
    expect(r.json.interfaces.map((i: { name: string }) => i.name)).toEqual(['cnitest0', expect.stringMatching(/^veth[0-9a-f]{8}$/), 'eth0']);
    expect(r.json.interfaces[2].sandbox).toBe(c.path);
    expect(r.json.ips).toEqual([{ interface: 2, address: '10.77.0.2/24', gateway: '10.77.0.1' }]);
    expect(r.json.routes).toContainEqual({ dst: '0.0.0.0/0', gw: '10.77.0.1' });
    expect(sb.inNs(c.name, ['ip', '-o', 'addr', 'show', 'dev', 'eth0']).stdout).toContain('inet 10.77.0.2/24');
    expect(sb.inNs(c.name, ['ip', 'route', 'show', 'default']).stdout).toContain('default via 10.77.0.1 dev eth0');
    expect(sb.inHost(['ip', '-o', 'addr', 'show', 'dev', 'cnitest0']).stdout).toContain('inet 10.77.0.1/24');
    expect(sb.inNs(c.name, ['ping', '-c', '1', '-W', '2', '10.77.0.1']).code).toBe(0);
    expect(sb.inHost(['sysctl', '-n', 'net.ipv4.ip_forward']).stdout.trim()).toBe('1');
    expect(natChains()).toHaveLength(1);
  });

  it("pins the bridge's MAC, so a container leaving does not change the gateway's MAC under the others", () => {
    const ids = ['m1', 'm2', 'm3'];
    const adds = ids.map((id) => {
      const c = sb.container();
      const r = sb.plugin(BRIDGE, { command: 'ADD', containerId: id, netns: c.path }, netconf());
      expect(r.code, r.stdout).toBe(0);
      return { c, r };
    });
    expect(sb.inHost(['cat', '/sys/class/net/cnitest0/addr_assign_type']).stdout.trim()).toBe('3'); // NET_ADDR_SET
    const mac = () => sb.inHost(['cat', '/sys/class/net/cnitest0/address']).stdout.trim();
    const before = mac();
    expect(adds.every(({ r }) => r.json.interfaces[0].mac === before)).toBe(true);
    for (const [i, { c, r }] of adds.entries()) {
      expect(sb.plugin(BRIDGE, { command: 'DEL', containerId: ids[i], netns: c.path }, { ...netconf(), prevResult: r.json }).code).toBe(0);
      expect(mac()).toBe(before);
    }
  });

  it("a later ADD leaves the bridge's neighbour table alone (the MAC is pinned once, not on every ADD)", () => {
    const c1 = sb.container();
    const r1 = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'n1', netns: c1.path }, netconf());
    expect(r1.code, r1.stdout).toBe(0);
    // The host learns the first container's MAC.
    expect(sb.inHost(['ping', '-c', '1', '-W', '2', '10.77.0.2']).code).toBe(0);
    const neigh = () => sb.inHost(['ip', 'neigh', 'show', 'dev', 'cnitest0', '10.77.0.2']).stdout;
    expect(neigh()).toMatch(/lladdr/);
    const c2 = sb.container();
    expect(sb.plugin(BRIDGE, { command: 'ADD', containerId: 'n2', netns: c2.path }, netconf()).code).toBe(0);
    // Setting the bridge's MAC again (even to the same value) would have flushed this entry.
    expect(neigh()).toMatch(/lladdr/);
  });

  it('CHECK passes, then fails once the address or the route is removed by hand', () => {
    const c = sb.container();
    const conf = netconf();
    const add = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'ctr1', netns: c.path }, conf);
    expect(add.code).toBe(0);
    const withPrev = { ...conf, prevResult: add.json };
    expect(sb.plugin(BRIDGE, { command: 'CHECK', containerId: 'ctr1', netns: c.path }, withPrev).code).toBe(0);
    sb.inNs(c.name, ['ip', 'route', 'del', 'default']);
    const noRoute = sb.plugin(BRIDGE, { command: 'CHECK', containerId: 'ctr1', netns: c.path }, withPrev);
    expect(noRoute.code).toBe(1);
    expect(noRoute.json.msg).toMatch(/route/);
    sb.inNs(c.name, ['ip', 'route', 'add', 'default', 'via', '10.77.0.1']);
    expect(sb.plugin(BRIDGE, { command: 'CHECK', containerId: 'ctr1', netns: c.path }, withPrev).code).toBe(0);
    sb.inNs(c.name, ['ip', 'addr', 'del', '10.77.0.2/24', 'dev', 'eth0']);
    const noAddr = sb.plugin(BRIDGE, { command: 'CHECK', containerId: 'ctr1', netns: c.path }, withPrev);
    expect(noAddr.code).toBe(1);
    expect(noAddr.json.msg).toMatch(/address 10\.77\.0\.2\/24/);
  });

  it('delegates to an IPAM binary that is not ours (the reference host-local), and the reference bridge uses ours', () => {
    // Our bridge, with CNI_PATH holding only the reference plugins: IPAM runs as a separate process.
    const c1 = sb.container();
    const conf = netconf();
    const a = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'x1', netns: c1.path, path: '/usr/lib/cni' }, conf);
    expect(a.code, a.stdout + a.stderr).toBe(0);
    expect(a.json.ips[0].address).toBe('10.77.0.2/24');
    // The reference bridge delegating to our host-local, sharing the same store.
    const c2 = sb.container();
    const b = sb.plugin('/usr/lib/cni/bridge', { command: 'ADD', containerId: 'x2', netns: c2.path, path: BIN }, netconf({ cniVersion: '1.0.0' }));
    expect(b.code, b.stdout + b.stderr).toBe(0);
    expect(b.json.ips[0].address).toBe('10.77.0.3/24');
    expect(allocations()).toEqual(['10.77.0.2', '10.77.0.3']);
    expect(sb.plugin(BRIDGE, { command: 'DEL', containerId: 'x1', netns: c1.path, path: '/usr/lib/cni' }, conf).code).toBe(0);
    expect(sb.plugin('/usr/lib/cni/bridge', { command: 'DEL', containerId: 'x2', netns: c2.path, path: BIN }, netconf()).code).toBe(0);
    expect(allocations()).toEqual([]);
  });

  it('macspoofchk: frames with another MAC are dropped at the bridge; the nft layout is the reference\'s; DEL removes it', () => {
    const nftTable = (s = sb) => s.inHost(['nft', 'list', 'table', 'bridge', 'nat']).stdout;
    const c = sb.container();
    const conf = netconf({ macspoofchk: true });
    const r = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'spoof1', netns: c.path }, conf);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const [veth, mac] = [r.json.interfaces[1].name as string, r.json.interfaces[2].mac as string];
    expect(nftTable()).toContain(`iifname "${veth}" jump cni-br-iface-spoof1-eth0 comment "macspoofchk-spoof1-eth0"`);
    expect(nftTable()).toContain(`ether saddr ${mac} return comment "macspoofchk-spoof1-eth0"`);
    expect(sb.inNs(c.name, ['ping', '-c', '1', '-W', '2', '10.77.0.1']).code).toBe(0);
    // The container takes another MAC: its frames no longer get through.
    expect(sb.inNs(c.name, ['ip', 'neigh', 'flush', 'all']).code).toBe(0);
    expect(sb.inNs(c.name, ['ip', 'link', 'set', 'eth0', 'address', '02:11:22:33:44:55']).code).toBe(0);
    expect(sb.inNs(c.name, ['ping', '-c', '1', '-W', '1', '10.77.0.1']).code).not.toBe(0);
    expect(sb.plugin(BRIDGE, { command: 'CHECK', containerId: 'spoof1', netns: c.path }, { ...conf, prevResult: r.json }).json?.code).toBe(115); // the MAC differs
    expect(sb.inNs(c.name, ['ip', 'link', 'set', 'eth0', 'address', mac]).code).toBe(0);
    expect(sb.inNs(c.name, ['ping', '-c', '1', '-W', '2', '10.77.0.1']).code).toBe(0);
    expect(sb.plugin(BRIDGE, { command: 'CHECK', containerId: 'spoof1', netns: c.path }, { ...conf, prevResult: r.json }).code).toBe(0);

    // The reference bridge writes the same table for the same container (handles, veth and MAC aside).
    const ref = new Sandbox('brref');
    try {
      const rc = ref.container();
      const rr = ref.plugin('/usr/lib/cni/bridge', { command: 'ADD', containerId: 'spoof1', netns: rc.path, path: '/usr/lib/cni' }, { ...conf, ipam: { ...conf.ipam, dataDir: join(ref.dir, 'ipam') } });
      expect(rr.code, rr.stdout + rr.stderr).toBe(0);
      const norm = (text: string, v: string, m: string) => text.replaceAll(v, 'VETH').replaceAll(m, 'MAC').replace(/ # handle \d+/g, '');
      expect(norm(nftTable(), veth, mac)).toBe(norm(nftTable(ref), rr.json.interfaces[1].name, rr.json.interfaces[2].mac));
      // Our DEL removes what the reference's ADD made (same names and comments).
      expect(ref.plugin(BRIDGE, { command: 'DEL', containerId: 'spoof1', netns: rc.path }, { ...conf, ipam: { ...conf.ipam, dataDir: join(ref.dir, 'ipam') } }).code).toBe(0);
      expect(nftTable(ref)).not.toContain('spoof1');
    } finally {
      ref.cleanup();
    }

    expect(sb.plugin(BRIDGE, { command: 'DEL', containerId: 'spoof1', netns: c.path }, { ...conf, prevResult: r.json }).code).toBe(0);
    expect(nftTable()).not.toContain('spoof1');
    expect(sb.plugin(BRIDGE, { command: 'DEL', containerId: 'spoof1', netns: c.path }, conf).code).toBe(0); // again: fine
  });

  it('CHECK with cniVersion below 0.4.0 is code 1', () => {
    const c = sb.container();
    const r = sb.plugin(BRIDGE, { command: 'CHECK', containerId: 'ctr1', netns: c.path }, netconf({ cniVersion: '0.3.1' }));
    expect(r.json.code).toBe(1);
  });

  it('DEL twice succeeds and leaves no veth, allocation or NAT chain', () => {
    const c = sb.container();
    const conf = netconf();
    const add = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'ctr1', netns: c.path }, conf);
    expect(add.code).toBe(0);
    expect(allocations()).toEqual(['10.77.0.2']);
    for (let i = 0; i < 2; i++) {
      const del = sb.plugin(BRIDGE, { command: 'DEL', containerId: 'ctr1', netns: c.path }, { ...conf, prevResult: add.json });
      expect(del.code, del.stdout).toBe(0);
      expect(del.stdout).toBe('');
    }
    expect(allocations()).toEqual([]);
    expect(natChains()).toEqual([]);
    expect(hostVeths()).toBe('');
    expect(sb.inNs(c.name, ['ip', '-o', 'link', 'show', 'eth0']).code).not.toBe(0);
  });

  it('DEL after the namespace is gone frees the address and the NAT chain (no prevResult)', () => {
    const c = sb.container();
    const conf = netconf();
    expect(sb.plugin(BRIDGE, { command: 'ADD', containerId: 'ctr1', netns: c.path }, conf).code).toBe(0);
    sb.removeContainer(c.name);
    const del = sb.plugin(BRIDGE, { command: 'DEL', containerId: 'ctr1', netns: c.path }, conf);
    expect(del.code, del.stdout).toBe(0);
    expect(allocations()).toEqual([]);
    expect(natChains()).toEqual([]);
    // and without CNI_NETNS at all
    expect(sb.plugin(BRIDGE, { command: 'DEL', containerId: 'ctr1' }, conf).code).toBe(0);
  });

  it('30 concurrent ADDs into 30 namespaces get 30 distinct addresses', async () => {
    const conf = netconf();
    const cs = Array.from({ length: 30 }, () => sb.container());
    const runs = await Promise.all(cs.map((c, i) => sb.pluginAsync(BRIDGE, { command: 'ADD', containerId: `ctr${i}`, netns: c.path }, conf)));
    for (const r of runs) expect(r.code, r.stdout + r.stderr).toBe(0);
    const ips = runs.map((r) => r.json.ips[0].address);
    expect(new Set(ips).size).toBe(30);
    expect(allocations()).toHaveLength(30);
    expect(natChains()).toHaveLength(30);
    expect(sb.inNs(cs[29].name, ['ping', '-c', '1', '-W', '2', '10.77.0.1']).code).toBe(0);
    const dels = await Promise.all(cs.map((c, i) => sb.pluginAsync(BRIDGE, { command: 'DEL', containerId: `ctr${i}`, netns: c.path }, conf)));
    for (const r of dels) expect(r.code, r.stdout).toBe(0);
    expect(allocations()).toEqual([]);
    expect(natChains()).toEqual([]);
    expect(hostVeths()).toBe('');
  });

  it('dual stack: v4 and v6 addresses and default routes', () => {
    const c = sb.container();
    const conf = netconf({}, { subnet: undefined, ranges: [[{ subnet: '10.78.0.0/24' }], [{ subnet: 'fd00:78::/64' }]] });
    const r = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'ctr1', netns: c.path }, conf);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.json.ips.map((i: { address: string }) => i.address)).toEqual(['10.78.0.2/24', 'fd00:78::2/64']);
    expect(sb.inNs(c.name, ['ip', '-6', '-o', 'addr', 'show', 'dev', 'eth0']).stdout).toContain('fd00:78::2/64');
    expect(sb.inNs(c.name, ['ip', '-6', 'route', 'show', 'default']).stdout).toContain('via fd00:78::1');
    expect(sb.inNs(c.name, ['ping', '-6', '-c', '1', '-W', '3', 'fd00:78::1']).code).toBe(0);
    expect(sb.inHost(['ip6tables-save', '-t', 'nat']).stdout).toMatch(/-A POSTROUTING -s fd00:78::2\/128 .* -j CNI-/);
    expect(sb.plugin(BRIDGE, { command: 'DEL', containerId: 'ctr1', netns: c.path }, conf).code).toBe(0);
    expect(sb.inHost(['ip6tables-save', '-t', 'nat']).stdout).not.toMatch(/CNI-/);
  });

  it('GC removes exactly the attachments that are not valid', () => {
    const conf = netconf({ cniVersion: '1.1.0' });
    const cs = [sb.container(), sb.container(), sb.container()];
    cs.forEach((c, i) => expect(sb.plugin(BRIDGE, { command: 'ADD', containerId: `ctr${i}`, netns: c.path }, conf).code).toBe(0));
    const gc = sb.plugin(BRIDGE, { command: 'GC' }, { ...conf, 'cni.dev/valid-attachments': [{ containerID: 'ctr1', ifname: 'eth0' }] });
    expect(gc.code, gc.stdout).toBe(0);
    expect(allocations()).toEqual(['10.77.0.3']);
    const chains = natChains();
    expect(chains).toHaveLength(1);
    expect(sb.inHost(['iptables-save', '-t', 'nat']).stdout).toContain('id: \\"ctr1\\"');
  });

  it('STATUS reports when the range is used up', () => {
    const conf = netconf({ cniVersion: '1.1.0' }, { rangeStart: '10.77.0.10', rangeEnd: '10.77.0.10' });
    expect(sb.plugin(BRIDGE, { command: 'STATUS' }, conf).code).toBe(0);
    expect(sb.plugin(BRIDGE, { command: 'ADD', containerId: 'a', netns: sb.container().path }, conf).code).toBe(0);
    const st = sb.plugin(BRIDGE, { command: 'STATUS' }, conf);
    expect(st.json.code).toBe(50);
  });
});

describe('bad input gets the right code and leaves nothing behind', () => {
  const cases: [string, (path: string) => { call: Record<string, unknown>; conf: unknown }, number][] = [
    ['malformed JSON', (p) => ({ call: { containerId: 'x', netns: p }, conf: '{"cniVersion": "1.0.0", "name": ' }), 6],
    ['unknown cniVersion', (p) => ({ call: { containerId: 'x', netns: p }, conf: netconf({ cniVersion: '4.2.0' }) }), 1],
    ['missing CNI_CONTAINERID', (p) => ({ call: { netns: p }, conf: netconf() }), 4],
    ['16-byte ifname', (p) => ({ call: { containerId: 'x', netns: p, ifname: 'eth0123456789abc' }, conf: netconf() }), 4],
    ['container id with ..', (p) => ({ call: { containerId: '../../etc', netns: p }, conf: netconf() }), 4],
    ['network name with /', (p) => ({ call: { containerId: 'x', netns: p }, conf: netconf({ name: '../evil/net' }) }), 7],
    ['ipMasq not a boolean', (p) => ({ call: { containerId: 'x', netns: p }, conf: netconf({ ipMasq: 'yes' }) }), 7],
    ['unknown ipMasqBackend', (p) => ({ call: { containerId: 'x', netns: p }, conf: netconf({ ipMasqBackend: 'pf' }) }), 7],
    ['netns that does not exist', () => ({ call: { containerId: 'x', netns: '/var/run/netns/nope-cnits' }, conf: netconf() }), 4],
  ];
  for (const [name, make, code] of cases) {
    it(name, () => {
      const c = sb.container();
      const before = hostState(sb);
      const { call, conf } = make(c.path);
      const r = sb.plugin(BRIDGE, { command: 'ADD', ...call } as never, conf);
      expect(r.code).toBe(1);
      expect(r.json).toMatchObject({ code, msg: expect.any(String) });
      expect(hostState(sb)).toBe(before);
      expect(existsSync(join(sb.dir, 'ipam', 'testnet')) ? allocations() : []).toEqual([]);
      expect(sb.inNs(c.name, ['ip', '-o', 'link', 'show']).stdout.trim().split('\n')).toHaveLength(1);
    });
  }

  it('exhaustion: code 110, no veth, no chain, nothing allocated for the failed one', () => {
    const conf = netconf({}, { rangeStart: '10.77.0.10', rangeEnd: '10.77.0.10' });
    expect(sb.plugin(BRIDGE, { command: 'ADD', containerId: 'a', netns: sb.container().path }, conf).code).toBe(0);
    const before = hostState(sb);
    const c = sb.container();
    const r = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'b', netns: c.path }, conf);
    expect(r.json.code).toBe(110);
    expect(hostState(sb)).toBe(before);
    expect(allocations()).toEqual(['10.77.0.10']);
    expect(sb.inNs(c.name, ['ip', '-o', 'link', 'show']).stdout.trim().split('\n')).toHaveLength(1);
  });

  it('VLAN: works where the kernel filters VLANs, otherwise a clear error and nothing left', () => {
    const probe = sb.inHost(['ip', 'link', 'add', 'vlprobe', 'type', 'bridge', 'vlan_filtering', '1']);
    sb.inHost(['ip', 'link', 'del', 'vlprobe']);
    const c = sb.container();
    const conf = netconf({ bridge: 'cnivlan0', vlan: 100 });
    const before = hostState(sb);
    const r = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'v', netns: c.path }, conf);
    if (probe.code !== 0) {
      console.log(`kernel has no bridge vlan_filtering (${probe.stderr.trim()}): checking the error path only`);
      expect(r.json.code).toBe(112);
      expect(hostState(sb)).toBe(before);
      expect(allocations()).toEqual([]);
    } else {
      expect(r.code, r.stdout).toBe(0);
      expect(sb.inHost(['bridge', 'vlan', 'show']).stdout).toMatch(/100 PVID/);
    }
  });
});

describe('the binary', () => {
  it('ignores NODE_OPTIONS and runs without HOME or with a read-only one', () => {
    const marker = join(sb.dir, 'injected');
    writeFileSync(join(sb.dir, 'inject.js'), `require('fs').writeFileSync(${JSON.stringify(marker)}, 'x')`);
    const c = sb.container();
    const r = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'h', netns: c.path, env: { NODE_OPTIONS: `--require ${join(sb.dir, 'inject.js')}`, HOME: '/proc/nonexistent' } }, netconf());
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(existsSync(marker)).toBe(false);
    const v = sb.plugin(BRIDGE, { command: 'VERSION', env: { NODE_OPTIONS: '--max-old-space-size=1' } }, { cniVersion: '0.4.0' });
    expect(v.json).toEqual({ cniVersion: '0.4.0', supportedVersions: ['0.1.0', '0.2.0', '0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] });
  });
});
