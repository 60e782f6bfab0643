import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, ROOT, Sandbox, must } from '../helpers/sandbox.js';

/**
 * The tap plugin (plugins/tap): a TAP named CNI_IFNAME in the container's
 * namespace, for a VM run there. test/helpers/guest.py plays the VM: it
 * attaches to the TAP (as a given uid/gid) and answers ARP and ping.
 */
const TAP = join(BIN, 'tap');
const GUEST = join(ROOT, 'test/helpers/guest.py');
// Ids without a name in /etc/passwd and /etc/group, so that `ip -j` prints them as numbers.
const UID = 4242;
const OTHER_UID = 4243;
const GID = 4343;
const OTHER_GID = 4344;
const T = 120_000;

let sb: Sandbox;
let guests: ChildProcess[] = [];
beforeEach(() => {
  sb = new Sandbox('tap');
});
afterEach(() => {
  // Our own guests only, by the process we started.
  for (const g of guests) if (g.exitCode === null && g.signalCode === null) g.kill('SIGKILL');
  guests = [];
  sb.cleanup();
});

const conf = (over: Record<string, unknown> = {}) => ({ cniVersion: '1.0.0', name: 'tapnet', type: 'tap', ...over });
const call = (command: string, c: { path: string }, config: unknown, opts: { id?: string; ifname?: string; args?: string } = {}) =>
  sb.plugin(TAP, { command, containerId: opts.id ?? 'vm1', netns: c.path, ifname: opts.ifname, args: opts.args }, config);
const linkJson = (ns: string, name = 'eth0') => {
  const r = sb.inNs(ns, ['ip', '-d', '-j', 'link', 'show', name]);
  return r.code === 0 ? JSON.parse(r.stdout)[0] : undefined;
};
/** A namespace's links and addresses, for "nothing changed" comparisons. */
const nsState = (ns: string) => sb.inNs(ns, ['ip', '-o', 'link', 'show']).stdout + sb.inNs(ns, ['ip', '-o', 'addr', 'show']).stdout;
const ipamDir = () => join(sb.dir, 'ipam');
const allocations = (net = 'tapnet') => {
  const d = join(ipamDir(), net);
  return existsSync(d) ? readdirSync(d).filter((f) => /^[0-9.]+$/.test(f) && f.includes('.')) : [];
};
/** A bridge inside the container namespace, with an address (the tap plugin attaches to it, never creates it). */
function bridgeIn(ns: string, name = 'br0', cidr = '10.66.0.1/24'): void {
  must(['ip', 'netns', 'exec', ns, 'ip', 'link', 'add', name, 'type', 'bridge']);
  must(['ip', 'netns', 'exec', ns, 'ip', 'addr', 'add', cidr, 'dev', name]);
  must(['ip', 'netns', 'exec', ns, 'ip', 'link', 'set', name, 'up']);
}

interface Guest {
  proc: ChildProcess;
  /** The first stdout line matching `re` (rejects when the guest exits or after `ms` without one). */
  line(re: RegExp, ms?: number): Promise<string>;
  exitCode(): Promise<number | null>;
}

function startGuest(ns: string, args: string[]): Guest {
  const proc = spawn('ip', ['netns', 'exec', ns, 'python3', GUEST, '--timeout', '60', ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  guests.push(proc);
  let out = '';
  let err = '';
  const waiters: (() => void)[] = [];
  const wake = () => waiters.splice(0).forEach((w) => w());
  proc.stdout!.on('data', (b) => ((out += b), wake()));
  proc.stderr!.on('data', (b) => (err += b));
  const exited = new Promise<number | null>((res) => proc.on('close', (code) => (wake(), res(code))));
  return {
    proc,
    exitCode: () => exited,
    line(re, ms = 30_000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`guest: no line matching ${re} in ${ms} ms; stdout ${JSON.stringify(out)} stderr ${JSON.stringify(err)}`)), ms);
        const look = () => {
          const hit = out.split('\n').slice(0, -1).find((l) => re.test(l)); // whole lines only
          if (hit !== undefined) {
            clearTimeout(timer);
            resolve(hit);
          } else if (proc.exitCode !== null || proc.signalCode !== null) {
            clearTimeout(timer);
            reject(new Error(`guest exited (${proc.exitCode}) without a line matching ${re}; stdout ${JSON.stringify(out)} stderr ${JSON.stringify(err)}`));
          } else waiters.push(look);
        };
        look();
      });
    },
  };
}

/** A guest's attempt to attach, as the given uid (and gid): "ready" or "attach-failed ERRNO". */
async function attachAs(ns: string, ids: string[], extra: string[] = []): Promise<string> {
  const g = startGuest(ns, ['--tap', 'eth0', '--ip', '10.66.0.9', '--mac', '02:00:00:00:bb:09', ...ids, ...extra]);
  const line = await g.line(/^(ready|attach-failed)/);
  g.proc.stdin!.end();
  await g.exitCode();
  return line.trim();
}

describe('tap', () => {
  it('ADD makes the TAP as configured, on a bridge in the container; the guest attaches and pings; CHECK; DEL is idempotent', async () => {
    const c = sb.container();
    bridgeIn(c.name);
    const cfg = conf({ bridge: 'br0', owner: UID, group: GID, mtu: 1400, mac: '02:00:00:00:aa:01', multiQueue: true, selinuxContext: 'system_u:system_r:container_t:s0' });
    const r = call('ADD', c, cfg);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.json).toEqual({ cniVersion: '1.0.0', interfaces: [{ name: 'eth0', mac: '02:00:00:00:aa:01', sandbox: c.path }], dns: {} });

    // Read back from the kernel: every attribute.
    const l = linkJson(c.name);
    expect(l).toMatchObject({ ifname: 'eth0', mtu: 1400, address: '02:00:00:00:aa:01', master: 'br0' });
    expect(l.flags).toContain('UP');
    expect(l.linkinfo.info_kind).toBe('tun');
    expect(l.linkinfo.info_data).toMatchObject({ type: 'tap', pi: false, multi_queue: true, persist: true });
    expect(String(l.linkinfo.info_data.user)).toBe(String(UID));
    expect(String(l.linkinfo.info_data.group)).toBe(String(GID));
    expect(l.ifalias).toBe('cni-ts tap net=tapnet id=vm1 if=eth0');
    // Nothing of it in the sandbox's host namespace.
    expect(sb.inHost(['ip', '-o', 'link', 'show', 'type', 'tun']).stdout).toBe('');

    // The VM: attaches as the owner (and group), pings the bridge, and answers the container's ping.
    const g = startGuest(c.name, ['--tap', 'eth0', '--ip', '10.66.0.2', '--mac', '02:00:00:00:aa:02', '--uid', String(UID), '--gid', String(GID), '--multi-queue', '--ping', '10.66.0.1', '--via', '10.66.0.1', '--count', '3']);
    expect(await g.line(/^(ready|attach-failed)/)).toBe('ready');
    expect(await g.line(/^ping /)).toBe('ping 3/3');
    const ping = sb.inNs(c.name, ['ping', '-c', '3', '-i', '0.3', '-W', '3', '10.66.0.2']);
    expect(ping.code, ping.stdout + ping.stderr).toBe(0);
    g.proc.stdin!.end();
    await g.exitCode();

    const chk = call('CHECK', c, { ...cfg, prevResult: r.json });
    expect(chk.code, chk.stdout + chk.stderr).toBe(0);

    const d = call('DEL', c, cfg);
    expect(d.code, d.stdout + d.stderr).toBe(0);
    expect(d.stdout).toBe('');
    expect(linkJson(c.name)).toBeUndefined();
    expect(linkJson(c.name, 'br0')).toMatchObject({ ifname: 'br0' }); // the bridge is not ours: it stays
    expect(call('DEL', c, cfg).code).toBe(0);
    sb.removeContainer(c.name);
    expect(call('DEL', c, cfg).code).toBe(0);
    // DEL without a namespace at all (CNI_NETNS is optional for DEL).
    expect(sb.plugin(TAP, { command: 'DEL', containerId: 'vm1' }, cfg).code).toBe(0);
  }, T);

  it('owner: only that uid may attach; group: only a member of that group; both: both; neither: anyone', async () => {
    const c = sb.container();
    expect(call('ADD', c, conf({ owner: UID })).code).toBe(0);
    // The refused one first: a single-queue TAP takes one guest at a time.
    expect(await attachAs(c.name, ['--uid', String(OTHER_UID)])).toBe('attach-failed EPERM');
    expect(await attachAs(c.name, ['--uid', String(UID)])).toBe('ready');
    expect(call('DEL', c, conf({ owner: UID })).code).toBe(0);

    expect(call('ADD', c, conf({ group: GID })).code).toBe(0);
    const t = linkJson(c.name).linkinfo.info_data;
    expect(t.user).toBeUndefined();
    expect(String(t.group)).toBe(String(GID));
    expect(await attachAs(c.name, ['--uid', String(OTHER_UID), '--gid', String(OTHER_GID)])).toBe('attach-failed EPERM');
    expect(await attachAs(c.name, ['--uid', String(OTHER_UID), '--gid', String(GID)])).toBe('ready');
    expect(call('DEL', c, conf({ group: GID })).code).toBe(0);

    // Both: the uid AND the group must match (the kernel's rule).
    const both = conf({ owner: UID, group: GID });
    expect(call('ADD', c, both).code).toBe(0);
    expect(await attachAs(c.name, ['--uid', String(UID), '--gid', String(OTHER_GID)])).toBe('attach-failed EPERM');
    expect(await attachAs(c.name, ['--uid', String(OTHER_UID), '--gid', String(GID)])).toBe('attach-failed EPERM');
    expect(await attachAs(c.name, ['--uid', String(UID), '--gid', String(GID)])).toBe('ready');
    expect(call('DEL', c, both).code).toBe(0);

    // Neither: the kernel lets ANY process that can open /dev/net/tun attach (docs/tap.md says so).
    expect(call('ADD', c, conf()).code).toBe(0);
    const t0 = linkJson(c.name).linkinfo.info_data;
    expect([t0.user, t0.group]).toEqual([undefined, undefined]);
    expect(await attachAs(c.name, ['--uid', String(OTHER_UID), '--gid', String(OTHER_GID)])).toBe('ready');
    expect(call('DEL', c, conf()).code).toBe(0);
    expect(linkJson(c.name)).toBeUndefined();
  }, T);

  it('with ipam: the address and routes are on the TAP, the result points at it, the guest is reachable; DEL releases the address', async () => {
    const c = sb.container();
    const ipam = { type: 'host-local', subnet: '10.67.0.0/24', gateway: '10.67.0.1', dataDir: ipamDir(), routes: [{ dst: '10.68.0.0/16' }] };
    const cfg = conf({ ipam, dns: { nameservers: ['10.67.0.53'] } });
    const r = call('ADD', c, cfg);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const mac = linkJson(c.name).address;
    expect(r.json).toEqual({
      cniVersion: '1.0.0',
      interfaces: [{ name: 'eth0', mac, sandbox: c.path }],
      ips: [{ interface: 0, address: '10.67.0.2/24', gateway: '10.67.0.1' }],
      routes: [{ dst: '10.68.0.0/16' }],
      dns: { nameservers: ['10.67.0.53'] },
    });
    expect(sb.inNs(c.name, ['ip', '-o', '-4', 'addr', 'show', 'dev', 'eth0']).stdout).toContain('inet 10.67.0.2/24');
    expect(sb.inNs(c.name, ['ip', 'route', 'show', '10.68.0.0/16']).stdout).toContain('10.68.0.0/16 via 10.67.0.1 dev eth0');
    expect(sb.inNs(c.name, ['cat', '/proc/sys/net/ipv4/conf/eth0/arp_notify']).stdout.trim()).toBe('1');
    expect(allocations()).toEqual(['10.67.0.2']);

    const g = startGuest(c.name, ['--tap', 'eth0', '--ip', '10.67.0.3', '--mac', '02:00:00:00:cc:03']);
    expect(await g.line(/^(ready|attach-failed)/)).toBe('ready');
    const ping = sb.inNs(c.name, ['ping', '-c', '2', '-i', '0.3', '-W', '3', '10.67.0.3']);
    expect(ping.code, ping.stdout + ping.stderr).toBe(0);
    g.proc.stdin!.end();
    await g.exitCode();

    expect(call('CHECK', c, { ...cfg, prevResult: r.json }).code).toBe(0);
    const d = call('DEL', c, cfg);
    expect(d.code, d.stdout + d.stderr).toBe(0);
    expect(allocations()).toEqual([]);
    expect(linkJson(c.name)).toBeUndefined();
    // The namespace gone: the allocation of a second ADD is still released.
    expect(call('ADD', c, cfg).code).toBe(0);
    expect(allocations()).toHaveLength(1);
    sb.removeContainer(c.name);
    expect(call('DEL', c, cfg).code).toBe(0);
    expect(allocations()).toEqual([]);
  }, T);

  it('writes the result in the version asked for (0.4.0 with ip versions, 0.2.0 as ip4) and takes the MAC from CNI_ARGS and runtimeConfig', () => {
    const ipam = { type: 'host-local', subnet: '10.69.0.0/24', dataDir: ipamDir() };
    const c1 = sb.container();
    const r4 = call('ADD', c1, conf({ cniVersion: '0.4.0', ipam, mac: '02:00:00:00:00:01' }), { args: 'IgnoreUnknown=1;MAC=02:00:00:00:00:02' });
    expect(r4.code, r4.stdout).toBe(0);
    expect(r4.json).toEqual({
      cniVersion: '0.4.0',
      interfaces: [{ name: 'eth0', mac: '02:00:00:00:00:02', sandbox: c1.path }],
      ips: [{ version: '4', interface: 0, address: '10.69.0.2/24', gateway: '10.69.0.1' }],
      dns: {},
    });
    expect(linkJson(c1.name).address).toBe('02:00:00:00:00:02');
    expect(call('CHECK', c1, conf({ cniVersion: '0.4.0', ipam, mac: '02:00:00:00:00:01', prevResult: r4.json }), { args: 'IgnoreUnknown=1;MAC=02:00:00:00:00:02' }).code).toBe(0);

    const c2 = sb.container();
    const r2 = call('ADD', c2, conf({ cniVersion: '0.2.0', ipam, runtimeConfig: { mac: '02:00:00:00:00:03' } }), { id: 'vm2', args: 'IgnoreUnknown=1;MAC=02:00:00:00:00:02' });
    expect(r2.code, r2.stdout).toBe(0);
    expect(r2.json).toEqual({ cniVersion: '0.2.0', ip4: { ip: '10.69.0.3/24', gateway: '10.69.0.1' }, dns: {} });
    expect(linkJson(c2.name).address).toBe('02:00:00:00:00:03');

    // 0.2.0 without ipam cannot express a result: refused before anything is made.
    const c3 = sb.container();
    const before = nsState(c3.name);
    expect(call('ADD', c3, conf({ cniVersion: '0.2.0' })).json).toMatchObject({ code: 1, msg: 'cannot convert: no valid IP addresses' });
    expect(nsState(c3.name)).toBe(before);
    expect(call('DEL', c1, conf({ cniVersion: '0.4.0', ipam })).code).toBe(0);
    expect(call('DEL', c2, conf({ cniVersion: '0.2.0', ipam }), { id: 'vm2' }).code).toBe(0);
    expect(allocations()).toEqual([]);
  }, T);

  it('CHECK fails (code 115) when the TAP was changed by hand or removed', () => {
    const c = sb.container();
    bridgeIn(c.name);
    const cfg = conf({ bridge: 'br0', owner: UID, mtu: 1400, multiQueue: true });
    const r = call('ADD', c, cfg);
    expect(r.code, r.stdout).toBe(0);
    const check = () => call('CHECK', c, { ...cfg, prevResult: r.json });
    const ipl = (...a: string[]) => must(['ip', 'netns', 'exec', c.name, 'ip', 'link', 'set', 'eth0', ...a]);
    expect(check().code).toBe(0);

    ipl('mtu', '1300');
    const bad = check();
    expect(bad.code).toBe(1);
    expect(bad.json).toMatchObject({ code: 115, msg: 'eth0 has MTU 1300, configured 1400' });
    ipl('mtu', '1400');
    expect(check().code).toBe(0);
    ipl('down');
    expect(check().json).toMatchObject({ code: 115, msg: 'eth0 is down' });
    ipl('up');
    ipl('address', '02:00:00:00:00:99');
    expect(check().json).toMatchObject({ code: 115, msg: `eth0 has MAC 02:00:00:00:00:99, expected ${r.json.interfaces[0].mac}` });
    ipl('address', r.json.interfaces[0].mac);
    ipl('nomaster');
    expect(check().json).toMatchObject({ code: 115, msg: 'eth0 is not a port of bridge br0' });
    ipl('master', 'br0');
    expect(check().code).toBe(0);

    // Replaced by a TAP of another owner and queue mode, otherwise the same.
    const ip = (...a: string[]) => must(['ip', 'netns', 'exec', c.name, 'ip', ...a]);
    ip('link', 'del', 'eth0');
    expect(check().json).toMatchObject({ code: 115, msg: `interface eth0 not found in ${c.path}` });
    ip('tuntap', 'add', 'mode', 'tap', 'name', 'eth0', 'user', String(OTHER_UID), 'multi_queue');
    ipl('address', r.json.interfaces[0].mac);
    ipl('mtu', '1400');
    ipl('master', 'br0');
    ipl('up');
    expect(check().json).toMatchObject({ code: 115, msg: `eth0 has owner ${OTHER_UID}, configured ${UID}` });
    ip('link', 'del', 'eth0');
    ip('tuntap', 'add', 'mode', 'tap', 'name', 'eth0', 'user', String(UID));
    for (const a of [['address', r.json.interfaces[0].mac], ['mtu', '1400'], ['master', 'br0'], ['up']]) ipl(...a);
    expect(check().json).toMatchObject({ code: 115, msg: 'eth0 is not multi-queue, configured multi-queue' });
    ip('link', 'del', 'eth0');
    ip('link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0p');
    ipl('up');
    expect(check().json).toMatchObject({ code: 115, msg: 'eth0 is not a TAP' });

    // prevResult is required, and its interface must be in this sandbox.
    expect(call('CHECK', c, cfg).json).toMatchObject({ code: 7 });
    expect(call('CHECK', c, { ...cfg, prevResult: { ...r.json, interfaces: [{ ...r.json.interfaces[0], sandbox: '/var/run/netns/other' }] } }).json).toMatchObject({ code: 115 });
  }, T);

  it('CHECK verifies the addresses and routes of prevResult', () => {
    const c = sb.container();
    const cfg = conf({ ipam: { type: 'host-local', subnet: '10.70.0.0/24', dataDir: ipamDir(), routes: [{ dst: '10.71.0.0/16' }] } });
    const r = call('ADD', c, cfg);
    expect(r.code, r.stdout).toBe(0);
    const check = () => call('CHECK', c, { ...cfg, prevResult: r.json });
    expect(check().code).toBe(0);
    must(['ip', 'netns', 'exec', c.name, 'ip', 'route', 'del', '10.71.0.0/16']);
    expect(check().json).toMatchObject({ code: 115, msg: `route to 10.71.0.0/16 not found in ${c.path}` });
    must(['ip', 'netns', 'exec', c.name, 'ip', 'addr', 'del', '10.70.0.2/24', 'dev', 'eth0']);
    expect(check().json).toMatchObject({ code: 115, msg: 'address 10.70.0.2/24 not found on eth0' });
    expect(call('DEL', c, cfg).code).toBe(0);
  }, T);

  it('bad input is a CNI error and leaves nothing: no link, no allocation', () => {
    const c = sb.container();
    // This kernel has no dummy links: a veth pair is the "some other link".
    must(['ip', 'netns', 'exec', c.name, 'ip', 'link', 'add', 'dum0', 'type', 'veth', 'peer', 'name', 'dum1']);
    const before = nsState(c.name);
    const ipam = { type: 'host-local', subnet: '10.72.0.0/24', dataDir: ipamDir() };
    const cases: [Record<string, unknown>, number, RegExp, string?][] = [
      [{ owner: 'abc' }, 7, /owner/],
      [{ owner: -1 }, 7, /owner/],
      [{ owner: 4294967295 }, 7, /owner/],
      [{ owner: 1.5 }, 7, /owner/],
      [{ group: 2 ** 32 }, 7, /group/],
      [{ mtu: 70000 }, 7, /mtu/],
      [{ mtu: 65522 }, 7, /mtu/],
      [{ mtu: 10 }, 7, /mtu/],
      [{ mac: 'zz:00:00:00:00:01' }, 7, /mac/],
      [{ mac: '01:00:5e:00:00:01' }, 7, /multicast/],
      [{ runtimeConfig: { mac: '02:00' } }, 7, /mac/],
      [{ multiQueue: 'yes' }, 7, /multiQueue/],
      [{ bridge: 'nobr0' }, 7, /nobr0/],
      [{ bridge: 'dum0' }, 7, /not a bridge/],
      [{ bridge: 'a/b' }, 7, /bridge/],
      [{ ipam: { type: 'no-such-ipam' } }, 114, /no-such-ipam/],
      // IPAM answers, then a route cannot be added (gateway not on the link): the TAP goes and the address is released.
      [{ ipam: { ...ipam, routes: [{ dst: '10.99.0.0/16', gw: '192.0.2.1' }] } }, 112, /failed to configure addresses/],
      [{}, 4, /MAC/, 'MAC=not-a-mac'],
    ];
    for (const [over, code, re, args] of cases) {
      const r = call('ADD', c, conf(over), { args });
      expect(r.code, JSON.stringify(over)).toBe(1);
      expect(r.json, JSON.stringify(over)).toMatchObject({ code });
      expect(`${r.json.msg} ${r.json.details ?? ''}`, JSON.stringify(over)).toMatch(re);
      expect(nsState(c.name), JSON.stringify(over)).toBe(before);
      expect(allocations(), JSON.stringify(over)).toEqual([]);
    }
  }, T);

  it('an existing link named CNI_IFNAME (not ours) fails ADD untouched, and DEL leaves it', () => {
    const c = sb.container();
    const ip = (...a: string[]) => must(['ip', 'netns', 'exec', c.name, 'ip', ...a]);
    const cfg = conf({ owner: UID });
    for (const make of [['link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0p'], ['tuntap', 'add', 'mode', 'tap', 'name', 'eth0']]) {
      ip(...make);
      ip('link', 'set', 'eth0', 'mtu', '1300');
      const before = nsState(c.name);
      const r = call('ADD', c, cfg);
      expect(r.code).toBe(1);
      expect(r.json).toMatchObject({ code: 4, msg: 'container already has an interface named eth0' });
      expect(nsState(c.name)).toBe(before);
      // DEL (a runtime's cleanup after the failed ADD) succeeds and removes nothing that is not its own.
      expect(call('DEL', c, cfg).code).toBe(0);
      expect(nsState(c.name)).toBe(before);
      ip('link', 'del', 'eth0');
    }
    // Our TAP, but another container's (or network's) DEL: not its to delete either.
    expect(call('ADD', c, cfg, { id: 'vmA' }).code).toBe(0);
    expect(call('DEL', c, cfg, { id: 'vmB' }).code).toBe(0);
    expect(call('DEL', c, conf({ name: 'othernet', owner: UID }), { id: 'vmA' }).code).toBe(0);
    expect(linkJson(c.name)).toMatchObject({ ifname: 'eth0' });
    expect(call('DEL', c, cfg, { id: 'vmA' }).code).toBe(0);
    expect(linkJson(c.name)).toBeUndefined();
  }, T);

  it('uses CNI_IFNAME as the name, and refuses the caller\'s own namespace', () => {
    const c = sb.container();
    const r = call('ADD', c, conf(), { ifname: 'tap-vm0' });
    expect(r.code, r.stdout).toBe(0);
    expect(r.json.interfaces[0].name).toBe('tap-vm0');
    expect(linkJson(c.name, 'tap-vm0').linkinfo.info_data.type).toBe('tap');
    expect(call('DEL', c, conf(), { ifname: 'tap-vm0' }).code).toBe(0);
    expect(linkJson(c.name, 'tap-vm0')).toBeUndefined();

    const host = { path: `/var/run/netns/${sb.host}` };
    const before = sb.hostState();
    expect(call('ADD', host, conf()).json).toMatchObject({ code: 8 });
    expect(sb.hostState()).toBe(before);
  }, T);
});
