import { readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, must, Sandbox, TEST_BIN } from '../helpers/sandbox.js';
import { Traffic } from '../helpers/traffic.js';

const BRIDGE = join(BIN, 'bridge');
const FIREWALL = join(BIN, 'firewall');
const AOS = join(BIN, 'aos-firewall');
let sb: Sandbox;
let net: Traffic;
beforeEach(() => {
  sb = new Sandbox('fw');
  net = new Traffic(sb.dir);
});
afterEach(() => {
  net.stop();
  sb.cleanup();
});

const filter = (bin = 'iptables-save') => sb.inHost([bin, '-t', 'filter']).stdout.replace(/^#.*\n/gm, '');

/** bridge + firewall, chained as podman does. */
function attach(id: string, br: string, subnet: string, fw: Record<string, unknown> = {}) {
  const c = sb.container();
  const bconf = { cniVersion: '1.0.0', name: `net-${br}`, type: 'bridge', bridge: br, isGateway: true, isDefaultGateway: true, ipam: { type: 'host-local', subnet, dataDir: join(sb.dir, 'ipam') } };
  const b = sb.plugin(BRIDGE, { command: 'ADD', containerId: id, netns: c.path }, bconf);
  expect(b.code, b.stdout + b.stderr).toBe(0);
  const fconf = { cniVersion: '1.0.0', name: `net-${br}`, type: 'firewall', backend: 'iptables', ...fw, prevResult: b.json };
  const f = sb.plugin(FIREWALL, { command: 'ADD', containerId: id, netns: c.path }, fconf);
  expect(f.code, f.stdout + f.stderr).toBe(0);
  expect(f.json).toEqual(b.json);
  return { ns: c.name, path: c.path, ip: b.json.ips[0].address.split('/')[0] as string, fconf, id };
}

describe('firewall (reference semantics)', () => {
  it('lets the container through a DROP FORWARD policy with the reference chains; DEL closes it again', async () => {
    must(['ip', 'netns', 'exec', sb.host, 'iptables', '-P', 'FORWARD', 'DROP']);
    const a = attach('a1', 'fwa0', '10.62.1.0/24');
    const b = attach('b1', 'fwb0', '10.62.2.0/24', { backend: '' }); // as podman 4 writes it: empty = iptables
    await net.serve(b.ns, [7000]);
    expect(net.reach(a.ns, b.ip, 7000)).toBe(true);
    const rules = filter();
    expect(rules).toContain('-A FORWARD -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD');
    expect(rules).toContain('-A CNI-FORWARD -m comment --comment "CNI firewall plugin admin overrides" -j CNI-ADMIN');
    expect(rules).toContain(`-A CNI-FORWARD -d ${a.ip}/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`);
    expect(rules).toContain(`-A CNI-FORWARD -s ${a.ip}/32 -j ACCEPT`);
    expect(rules.match(/-j CNI-FORWARD/g)).toHaveLength(1);

    expect(sb.plugin(FIREWALL, { command: 'CHECK', containerId: 'a1', netns: a.path }, a.fconf).code).toBe(0);
    for (const x of [a, b]) expect(sb.plugin(FIREWALL, { command: 'DEL', containerId: x.id, netns: x.path }, x.fconf).code).toBe(0);
    expect(net.reach(a.ns, b.ip, 7000)).toBe(false);
    expect(filter()).not.toContain(`${a.ip}/32`);
    const check = sb.plugin(FIREWALL, { command: 'CHECK', containerId: 'a1', netns: a.path }, a.fconf);
    expect(check.json).toMatchObject({ code: 115, details: `-A CNI-FORWARD -d ${a.ip}/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT` });
    expect(sb.plugin(FIREWALL, { command: 'DEL', containerId: 'a1', netns: a.path }, a.fconf).code).toBe(0);
  });

  it('ingressPolicy isolated blocks traffic between two bridges', async () => {
    const a = attach('a1', 'fwa0', '10.62.1.0/24', { ingressPolicy: 'isolated' });
    const b = attach('b1', 'fwb0', '10.62.2.0/24', { ingressPolicy: 'isolated' });
    await net.serve(a.ns, [7000]);
    await net.serve(b.ns, [7000]);
    expect(net.reach(a.ns, b.ip, 7000)).toBe(false);
    expect(net.reach(b.ns, a.ip, 7000)).toBe(false);
    expect(net.reach(sb.host, a.ip, 7000)).toBe(true);
    expect(filter()).toContain('-A CNI-ISOLATION-STAGE-1 -i fwa0 -o fwa0 -m comment --comment "CNI firewall plugin rules (ingressPolicy: isolated)" -j DROP');
    expect(sb.plugin(FIREWALL, { command: 'CHECK', containerId: 'a1', netns: a.path }, a.fconf).code).toBe(0);
  });

  it('ingressPolicy same-bridge allows within one bridge and blocks across', async () => {
    const a1 = attach('a1', 'fwa0', '10.62.1.0/24', { ingressPolicy: 'same-bridge' });
    const a2 = attach('a2', 'fwa0', '10.62.1.0/24', { ingressPolicy: 'same-bridge' });
    const b = attach('b1', 'fwb0', '10.62.2.0/24', { ingressPolicy: 'same-bridge' });
    await net.serve(a2.ns, [7000]);
    await net.serve(b.ns, [7000]);
    expect(net.reach(a1.ns, a2.ip, 7000)).toBe(true);
    expect(net.reach(a1.ns, b.ip, 7000)).toBe(false);
    const f = filter();
    expect(f.split('\n').filter((l) => l.startsWith('-A FORWARD'))[0]).toContain('-j CNI-ISOLATION-STAGE-1'); // before CNI-FORWARD
    expect(f.match(/-A CNI-ISOLATION-STAGE-1 -i fwa0 ! -o fwa0/g)).toHaveLength(1);
  });

  it('gives code 1 for CHECK below 0.4.0, 2 for firewalld, 7 without prevResult, and changes nothing', () => {
    const before = filter();
    const base = { cniVersion: '1.0.0', name: 'n', type: 'firewall', prevResult: { cniVersion: '1.0.0', ips: [{ address: '10.62.9.2/24' }] } };
    const call = { command: 'ADD', containerId: 'x', netns: sb.container().path };
    expect(sb.plugin(FIREWALL, { ...call, command: 'CHECK' }, { ...base, cniVersion: '0.3.1' }).json.code).toBe(1);
    expect(sb.plugin(FIREWALL, call, { ...base, backend: 'firewalld' }).json.code).toBe(2);
    expect(sb.plugin(FIREWALL, call, { ...base, prevResult: undefined }).json.code).toBe(7);
    expect(sb.plugin(FIREWALL, call, { ...base, ingressPolicy: 'bogus' }).json.code).toBe(7);
    expect(sb.plugin(FIREWALL, call, { ...base, iptablesAdminChainName: 'has space' }).json.code).toBe(7);
    expect(filter()).toBe(before);
  });

  it('works the same on the iptables-legacy backend (CNI_TS_IPTABLES, a test hook: the test build)', () => {
    const env = { CNI_TS_IPTABLES: 'legacy' };
    const FIREWALL = join(TEST_BIN, 'firewall');
    const conf = { cniVersion: '1.0.0', name: 'n', type: 'firewall', prevResult: { cniVersion: '1.0.0', ips: [{ address: '10.62.9.2/24' }] } };
    const call = { command: 'ADD', containerId: 'x', netns: sb.container().path, env };
    expect(sb.plugin(FIREWALL, call, conf).code).toBe(0);
    expect(sb.plugin(FIREWALL, call, conf).code).toBe(0);
    const legacy = filter('iptables-legacy-save');
    expect(legacy).toContain('-A CNI-FORWARD -s 10.62.9.2/32 -j ACCEPT');
    expect(legacy.match(/-s 10.62.9.2\/32 -j ACCEPT/g)).toHaveLength(1);
    expect(filter('iptables-nft-save')).not.toContain('10.62.9.2');
    expect(sb.plugin(FIREWALL, { ...call, command: 'CHECK' }, conf).code).toBe(0);
    expect(sb.plugin(FIREWALL, { ...call, command: 'DEL' }, conf).code).toBe(0);
    expect(filter('iptables-legacy-save')).not.toContain('10.62.9.2');
  });

  it('many plugin processes at once lose no rule and duplicate none', async () => {
    const n = 20;
    const confs = Array.from({ length: n }, (_, i) => ({ cniVersion: '1.0.0', name: 'n', type: 'firewall', prevResult: { cniVersion: '1.0.0', ips: [{ address: `10.63.0.${i + 2}/24` }] } }));
    const path = sb.container().path;
    const runs = await Promise.all(confs.map((c, i) => sb.pluginAsync(FIREWALL, { command: 'ADD', containerId: `c${i}`, netns: path }, c)));
    for (const r of runs) expect(r.code, r.stdout + r.stderr).toBe(0);
    const f = filter();
    for (let i = 0; i < n; i++) expect(f.match(new RegExp(`-s 10\\.63\\.0\\.${i + 2}/32 -j ACCEPT`, 'g'))).toHaveLength(1);
    expect(f.match(/-j CNI-FORWARD/g)).toHaveLength(1);
    expect(f.match(/-j CNI-ADMIN/g)).toHaveLength(1);
    const dels = await Promise.all(confs.map((c, i) => sb.pluginAsync(FIREWALL, { command: 'DEL', containerId: `c${i}`, netns: path }, c)));
    for (const r of dels) expect(r.code).toBe(0);
    expect(filter()).not.toContain('10.63.0.');
  });
});

describe('aos-firewall: bad input changes nothing', () => {
  const prev = { cniVersion: '0.4.0', ips: [{ version: '4', address: '10.64.0.2/16', gateway: '10.64.0.1' }] };
  const good = () => ({
    cniVersion: '0.4.0', name: 'n', type: 'aos-firewall', uuid: 'u1', iptablesAdminChainName: 'INSTANCE_u1',
    runtimeStatePath: join(sb.dir, 'state.conf'), prevResult: prev,
  });
  const cases: [string, Record<string, unknown>, number][] = [
    ['missing iptablesAdminChainName', { iptablesAdminChainName: undefined }, 7],
    ['an unsupported protocol', { inputAccess: [{ port: '80', protocol: 'sctp' }] }, 7],
    ['an empty port', { inputAccess: [{ port: '', protocol: 'tcp' }] }, 7],
    ['16 ports', { inputAccess: [{ port: Array.from({ length: 16 }, (_, i) => 1000 + i).join(','), protocol: 'tcp' }] }, 7],
    ['a port like 80;reboot', { inputAccess: [{ port: '80;reboot' }] }, 7],
    ['a port like $(x)', { inputAccess: [{ port: '$(x)' }] }, 7],
    ['a port out of range', { inputAccess: [{ port: '70000' }] }, 7],
    ['an outputAccess with a malformed IP', { outputAccess: [{ dstIp: '10.0.0.300', dstPort: '80', proto: 'tcp' }] }, 7],
    ['an outputAccess with a shell in it', { outputAccess: [{ dstIp: '10.0.0.3; rm -rf /', dstPort: '80', proto: 'tcp' }] }, 7],
    ['a missing prevResult on ADD', { prevResult: undefined }, 7],
    ['an IPv6 instance', { prevResult: { cniVersion: '0.4.0', ips: [{ version: '6', address: 'fd00::2/64', gateway: 'fd00::1' }] } }, 2],
  ];
  for (const [name, patch, code] of cases) {
    it(name, () => {
      must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'add', 'br-x', 'type', 'bridge']);
      must(['ip', 'netns', 'exec', sb.host, 'ip', 'addr', 'add', '10.64.0.1/16', 'dev', 'br-x']);
      const before = filter();
      const r = sb.plugin(AOS, { command: 'ADD', containerId: 'u1', netns: sb.container().path }, { ...good(), ...patch });
      expect(r.code).toBe(1);
      expect(r.json).toMatchObject({ code, msg: expect.any(String) });
      expect(filter()).toBe(before);
      expect(existsSync(join(sb.dir, 'state.conf')) ? JSON.parse(readFileSync(join(sb.dir, 'state.conf'), 'utf8') || '{}') : {}).toEqual({});
    });
  }

  it('the same config with nothing wrong is accepted (the cases above fail for their reason only)', () => {
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'add', 'br-x', 'type', 'bridge']);
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'addr', 'add', '10.64.0.1/16', 'dev', 'br-x']);
    const r = sb.plugin(AOS, { command: 'ADD', containerId: 'u1', netns: sb.container().path }, { ...good(), inputAccess: [{ port: '80,443,8000:8010', protocol: 'tcp' }] });
    expect(r.code, r.stdout).toBe(0);
    expect(filter()).toContain('-p tcp -m multiport --dports 80,443,8000:8010 -j RETURN');
  });

  it('concurrent ADDs and DELs of many instances keep every rule and the state file whole', async () => {
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'add', 'br-x', 'type', 'bridge']);
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'addr', 'add', '10.64.0.1/16', 'dev', 'br-x']);
    const n = 16;
    const path = sb.container().path;
    const confs = Array.from({ length: n }, (_, i) => ({
      ...good(), uuid: `u${i}`, iptablesAdminChainName: `INSTANCE_u${i}`, inputAccess: [{ port: String(8000 + i) }],
      prevResult: { cniVersion: '0.4.0', ips: [{ version: '4', address: `10.64.0.${i + 2}/16`, gateway: '10.64.0.1' }] },
    }));
    const runs = await Promise.all(confs.map((c) => sb.pluginAsync(AOS, { command: 'ADD', containerId: c.uuid, netns: path }, c)));
    for (const r of runs) expect(r.code, r.stdout + r.stderr).toBe(0);
    const state = JSON.parse(readFileSync(join(sb.dir, 'state.conf'), 'utf8'));
    expect(Object.keys(state)).toHaveLength(n);
    const f = filter();
    for (let i = 0; i < n; i++) expect(f.match(new RegExp(`-A AOS-FORWARD-PORT -d 10\\.64\\.0\\.${i + 2}/32 `, 'g'))).toHaveLength(1);
    expect(f.match(/-A FORWARD -j AOS-FORWARD$/gm)).toHaveLength(1);
    const checks = await Promise.all(confs.map((c) => sb.pluginAsync(AOS, { command: 'CHECK', containerId: c.uuid, netns: path }, c)));
    for (const r of checks) expect(r.code, r.stdout).toBe(0);
    const dels = await Promise.all(confs.map((c) => sb.pluginAsync(AOS, { command: 'DEL', containerId: c.uuid, netns: path }, { ...c, prevResult: undefined })));
    for (const r of dels) expect(r.code, r.stdout).toBe(0);
    expect(JSON.parse(readFileSync(join(sb.dir, 'state.conf'), 'utf8'))).toEqual({});
    expect(filter()).not.toContain('10.64.0.');
    expect(filter()).not.toMatch(/:CNI-/);
  });
});
