import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, Sandbox, must, sh } from '../helpers/sandbox.js';

const VLAN = join(BIN, 'vlan');

/** This kernel's 802.1Q support, probed once in a throwaway namespace (this CI machine's kernel has no 8021q). */
function probe8021q(): { ok: boolean; why: string } {
  const ns = `cnits-vlan-probe-${process.pid}`;
  sh(['ip', 'netns', 'add', ns]);
  try {
    must(['ip', 'netns', 'exec', ns, 'ip', 'link', 'add', 'p0', 'type', 'veth', 'peer', 'name', 'p1']);
    const r = sh(['ip', 'netns', 'exec', ns, 'ip', 'link', 'add', 'link', 'p0', 'name', 'p0.10', 'type', 'vlan', 'id', '10']);
    return { ok: r.code === 0, why: r.stderr.trim() };
  } finally {
    sh(['ip', 'netns', 'del', ns]);
  }
}
const HAS_8021Q = probe8021q();

let sb: Sandbox;
beforeEach(() => {
  sb = new Sandbox('vlan');
  // The master: one end of a veth in the host namespace (this kernel has no dummy links either).
  must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'add', 'm0', 'type', 'veth', 'peer', 'name', 'm0p']);
  // Both ends up: the vlan link then has a carrier (its routes are not "linkdown").
  must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'set', 'm0', 'up']);
  must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'set', 'm0p', 'up']);
});
afterEach(() => sb.cleanup());

const dataDir = () => join(sb.dir, 'ipam');
const conf = (extra: Record<string, unknown> = {}) => ({
  cniVersion: '1.0.0',
  name: 'vnet',
  type: 'vlan',
  master: 'm0',
  vlanId: 10,
  ipam: { type: 'host-local', subnet: '10.93.0.0/24', routes: [{ dst: '10.94.0.0/16' }], dataDir: dataDir() },
  ...extra,
});
const call = (command: string, c: { path: string } | undefined, config: unknown, id = 'ctr1') =>
  sb.plugin(VLAN, { command, containerId: id, ...(c ? { netns: c.path } : {}) }, config);
/** host-local's allocations of the network (files named by address). */
const allocations = () => {
  const dir = join(dataDir(), 'vnet');
  return existsSync(dir) ? readdirSync(dir).filter((f) => f !== 'lock' && !f.startsWith('last_reserved_ip')) : [];
};
const links = (ns: string) => JSON.parse(must(['ip', 'netns', 'exec', ns, 'ip', '-d', '-j', 'link', 'show'])) as any[];
const names = (ns: string) => links(ns).map((l) => l.ifname).sort();
/** The host namespace's links, addresses and nat rules; the master's link-local addresses finish DAD meanwhile, which is no change of ours. */
const hostState = () => sb.hostState().replace(/ tentative/g, '');

describe('vlan: errors and idempotent DEL (any kernel)', () => {
  it('refuses bad configs before creating anything', () => {
    const c = sb.container();
    const before = hostState();
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ master: undefined }, /master/],
      [{ master: '' }, /master/],
      [{ vlanId: 4095 }, /VLAN ID/],
      [{ vlanId: -1 }, /VLAN ID/],
      [{ ipam: undefined }, /ipam/],
      [{ master: 'nope0' }, /failed to lookup master "nope0"/],
      [{ mtu: 9000 }, /invalid MTU 9000, must be \[0, master MTU\(1500\)\]/],
    ];
    for (const [extra, why] of cases) {
      const r = call('ADD', c, conf(extra));
      expect(r.code, JSON.stringify(extra)).not.toBe(0);
      expect(r.json?.code, r.stdout).toBe(7);
      expect(`${r.json?.msg} ${r.json?.details ?? ''}`).toMatch(why);
    }
    expect(names(c.name)).toEqual(['lo']);
    expect(hostState()).toBe(before);
    expect(allocations()).toEqual([]);
  });

  it('DEL succeeds without a namespace, with a gone one, and leaves an interface that is not a vlan alone', () => {
    expect(call('DEL', undefined, conf()).code).toBe(0);
    const gone = sb.container();
    sb.removeContainer(gone.name);
    expect(call('DEL', gone, conf()).code).toBe(0);
    const c = sb.container();
    must(['ip', 'netns', 'exec', c.name, 'ip', 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'x1']);
    const r = call('DEL', c, conf());
    expect(r.code, r.stdout).toBe(0);
    expect(names(c.name)).toContain('eth0');
  });

  it('CHECK fails when the link is not there', () => {
    const c = sb.container();
    const prevResult = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', sandbox: c.path }], ips: [{ address: '10.93.0.2/24', interface: 0 }] };
    const r = call('CHECK', c, conf({ prevResult }));
    expect(r.code).not.toBe(0);
    expect(r.json?.code).toBeGreaterThan(0);
  });
});

describe.runIf(!HAS_8021Q.ok)(`vlan on a kernel without 802.1Q (${HAS_8021Q.why})`, () => {
  it('ADD fails with a clean error naming the missing support, and leaves no link and no allocation', () => {
    const c = sb.container();
    const before = hostState();
    for (const extra of [{}, { mtu: 1400 }]) {
      const r = call('ADD', c, conf(extra));
      expect(r.code).not.toBe(0);
      expect(r.json?.code, r.stdout).toBe(112);
      expect(r.json?.msg).toMatch(/802\.1Q VLAN support \(module 8021q\)/);
      expect(names(c.name)).toEqual(['lo']);
      expect(hostState()).toBe(before);
      expect(allocations()).toEqual([]);
    }
    // linkInContainer: the master in the container namespace, the same refusal, nothing left there either.
    must(['ip', 'netns', 'exec', c.name, 'ip', 'link', 'add', 'm0', 'type', 'veth', 'peer', 'name', 'm0p']);
    const r = call('ADD', c, conf({ linkInContainer: true }));
    expect(r.json?.code, r.stdout).toBe(112);
    expect(names(c.name)).toEqual(['lo', 'm0', 'm0p']);
    expect(allocations()).toEqual([]);
    expect(call('DEL', c, conf()).code).toBe(0);
  });
});

describe.runIf(HAS_8021Q.ok)('vlan on a kernel with 802.1Q', () => {
  for (const variant of [
    { what: 'master in the host namespace', extra: {} as Record<string, unknown> },
    { what: 'master in the host namespace, mtu 1400', extra: { mtu: 1400 } as Record<string, unknown> },
    { what: 'master in the container namespace (linkInContainer)', extra: { linkInContainer: true } as Record<string, unknown> },
  ]) {
    it(`ADD, addresses, CHECK, DEL: ${variant.what}`, () => {
      const c = sb.container();
      if (variant.extra.linkInContainer) {
        must(['ip', 'netns', 'exec', c.name, 'ip', 'link', 'add', 'm0', 'type', 'veth', 'peer', 'name', 'm0p']);
        must(['ip', 'netns', 'exec', c.name, 'ip', 'link', 'set', 'm0', 'up']);
        must(['ip', 'netns', 'exec', c.name, 'ip', 'link', 'set', 'm0p', 'up']);
      }
      const add = call('ADD', c, conf(variant.extra));
      expect(add.code, add.stdout + add.stderr).toBe(0);
      const res = add.json;
      expect(res.interfaces).toHaveLength(1);
      expect(res.interfaces[0]).toMatchObject({ name: 'eth0', sandbox: c.path });
      expect(res.ips).toEqual([expect.objectContaining({ address: '10.93.0.2/24', gateway: '10.93.0.1', interface: 0 })]);

      const eth0 = links(c.name).find((l) => l.ifname === 'eth0');
      expect(eth0.linkinfo.info_kind).toBe('vlan');
      expect(eth0.linkinfo.info_data.id).toBe(10);
      expect(eth0.address).toBe(res.interfaces[0].mac);
      expect(eth0.flags).toContain('UP');
      if (variant.extra.mtu) expect(eth0.mtu).toBe(1400);
      const addrs = JSON.parse(must(['ip', 'netns', 'exec', c.name, 'ip', '-j', 'addr', 'show', 'eth0']))[0].addr_info;
      expect(addrs.some((a: any) => a.local === '10.93.0.2' && a.prefixlen === 24)).toBe(true);
      expect(must(['ip', 'netns', 'exec', c.name, 'ip', 'route', 'show', '10.94.0.0/16'])).toContain('via 10.93.0.1 dev eth0');
      // The host keeps no vlan link: it was made in the container.
      expect(links(sb.host).some((l) => l.linkinfo?.info_kind === 'vlan')).toBe(false);
      expect(allocations()).toEqual(['10.93.0.2']);

      const prevResult = res;
      expect(call('CHECK', c, conf({ ...variant.extra, prevResult })).code).toBe(0);
      const wrongId = call('CHECK', c, conf({ ...variant.extra, vlanId: 11, prevResult }));
      expect(wrongId.json?.code, wrongId.stdout).toBe(115);
      expect(wrongId.json?.msg).toMatch(/VLAN id 10, expected 11/);

      expect(call('DEL', c, conf({ ...variant.extra, prevResult })).code).toBe(0);
      expect(names(c.name)).not.toContain('eth0');
      expect(allocations()).toEqual([]);
      expect(call('DEL', c, conf({ ...variant.extra, prevResult })).code).toBe(0);
    });
  }

  it('a second ADD of the same ifname is refused and keeps the first', () => {
    const c = sb.container();
    expect(call('ADD', c, conf()).code).toBe(0);
    const again = call('ADD', c, conf(), 'ctr2');
    expect(again.code).not.toBe(0);
    expect(names(c.name)).toContain('eth0');
    expect(allocations()).toEqual(['10.93.0.2']);
  });
});
