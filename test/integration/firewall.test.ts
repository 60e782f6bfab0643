import { readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, must, Sandbox, TEST_BIN } from '../helpers/sandbox.js';
import { Traffic } from '../helpers/traffic.js';
import { BACKENDS } from '../helpers/backends.js';

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
/** Our nftables table as `nft list` prints it ('' when it does not exist). */
const nftTable = () => sb.inHost(['nft', 'list', 'table', 'inet', 'cni_ts_firewall']).stdout;
/** The iptables-side openings of the nftables backend (lib/pf/coexist.ts). */
const openings = () => filter().split('\n').filter((l) => l.includes('cni-ts nftables network'));
const fw = (cmd: string, x: { id: string; path: string; fconf: Record<string, unknown> }, patch: Record<string, unknown> = {}) =>
  sb.plugin(FIREWALL, { command: cmd, containerId: x.id, netns: x.path }, { ...x.fconf, ...patch });

/** bridge + firewall, chained as podman does. */
function attach(id: string, br: string, subnet: string, fw: Record<string, unknown> = {}, net = `net-${br}`) {
  const c = sb.container();
  const bconf = { cniVersion: '1.0.0', name: net, type: 'bridge', bridge: br, isGateway: true, isDefaultGateway: true, ipam: { type: 'host-local', subnet, dataDir: join(sb.dir, 'ipam') } };
  const b = sb.plugin(BRIDGE, { command: 'ADD', containerId: id, netns: c.path }, bconf);
  expect(b.code, b.stdout + b.stderr).toBe(0);
  const fconf = { cniVersion: '1.0.0', name: net, type: 'firewall', backend: 'iptables', ...fw, prevResult: b.json };
  const f = sb.plugin(FIREWALL, { command: 'ADD', containerId: id, netns: c.path }, fconf);
  expect(f.code, f.stdout + f.stderr).toBe(0);
  expect(f.json).toEqual(b.json);
  return { ns: c.name, path: c.path, ip: b.json.ips[0].address.split('/')[0] as string, fconf, id, bconf };
}

describe.each(BACKENDS)('firewall (reference semantics) on %s', (backend) => {
  const nft = backend === 'nftables';
  const conf = (extra: Record<string, unknown> = {}) => ({ backend, ...extra });

  it('lets the container through a DROP FORWARD policy; DEL closes it again', async () => {
    must(['ip', 'netns', 'exec', sb.host, 'iptables', '-P', 'FORWARD', 'DROP']);
    const a = attach('a1', 'fwa0', '10.62.1.0/24', conf());
    const b = attach('b1', 'fwb0', '10.62.2.0/24', nft ? conf() : { backend: '' }); // as podman 4 writes it: empty = iptables
    await net.serve(b.ns, [7000]);
    expect(net.reach(a.ns, b.ip, 7000)).toBe(true);
    const rules = filter();
    if (!nft) {
      expect(rules).toContain('-A FORWARD -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD');
      expect(rules).toContain('-A CNI-FORWARD -m comment --comment "CNI firewall plugin admin overrides" -j CNI-ADMIN');
      expect(rules).toContain(`-A CNI-FORWARD -d ${a.ip}/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`);
      expect(rules).toContain(`-A CNI-FORWARD -s ${a.ip}/32 -j ACCEPT`);
      expect(rules.match(/-j CNI-FORWARD/g)).toHaveLength(1);
    } else {
      const t = nftTable();
      expect(t).toContain('type filter hook forward priority filter; policy accept;');
      expect(t).toContain(`${a.ip} comment "net-fwa0 a1 eth0"`);
      expect(t).toContain(`${b.ip} comment "net-fwb0 b1 eth0"`);
      expect(t).toContain('jump CNI-ADMIN comment "cni-ts admin CNI-ADMIN"');
      // One opening per network on the iptables side (the policy is DROP), nothing else of ours there.
      expect(openings()).toEqual([
        '-A FORWARD -m conntrack --ctorigsrc 10.62.2.0/24 -m comment --comment "cni-ts nftables network net-fwb0" -j ACCEPT',
        '-A FORWARD -m conntrack --ctorigsrc 10.62.1.0/24 -m comment --comment "cni-ts nftables network net-fwa0" -j ACCEPT',
      ]);
      expect(rules).not.toContain('CNI-FORWARD');
    }

    expect(fw('CHECK', a).code).toBe(0);
    for (const x of [a, b]) expect(fw('DEL', x).code).toBe(0);
    expect(net.reach(a.ns, b.ip, 7000)).toBe(false);
    expect(filter()).not.toContain(`${a.ip}/32`);
    const check = fw('CHECK', a);
    if (!nft) expect(check.json).toMatchObject({ code: 115, details: `-A CNI-FORWARD -d ${a.ip}/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT` });
    else {
      expect(nftTable()).not.toContain(a.ip);
      expect(openings()).toEqual([]);
      expect(check.json).toMatchObject({ code: 115, details: expect.stringContaining(`element ${a.ip} (comment "net-fwa0 a1 eth0") of set accept4`) });
    }
    expect(fw('DEL', a).code).toBe(0);
  });

  it('ingressPolicy isolated blocks traffic between two bridges', async () => {
    const a = attach('a1', 'fwa0', '10.62.1.0/24', conf({ ingressPolicy: 'isolated' }));
    const b = attach('b1', 'fwb0', '10.62.2.0/24', conf({ ingressPolicy: 'isolated' }));
    await net.serve(a.ns, [7000]);
    await net.serve(b.ns, [7000]);
    expect(net.reach(a.ns, b.ip, 7000)).toBe(false);
    expect(net.reach(b.ns, a.ip, 7000)).toBe(false);
    expect(net.reach(sb.host, a.ip, 7000)).toBe(true);
    if (!nft) expect(filter()).toContain('-A CNI-ISOLATION-STAGE-1 -i fwa0 -o fwa0 -m comment --comment "CNI firewall plugin rules (ingressPolicy: isolated)" -j DROP');
    else expect(nftTable()).toMatch(/set isolated \{\n\s+type ifname\n\s+elements = \{ "fwa0" comment "net-fwa0",\s+"fwb0" comment "net-fwb0" \}/);
    expect(fw('CHECK', a).code).toBe(0);
  });

  it('ingressPolicy same-bridge allows within one bridge and blocks across', async () => {
    const a1 = attach('a1', 'fwa0', '10.62.1.0/24', conf({ ingressPolicy: 'same-bridge' }));
    const a2 = attach('a2', 'fwa0', '10.62.1.0/24', conf({ ingressPolicy: 'same-bridge' }));
    const b = attach('b1', 'fwb0', '10.62.2.0/24', conf({ ingressPolicy: 'same-bridge' }));
    await net.serve(a2.ns, [7000]);
    await net.serve(b.ns, [7000]);
    await net.serve(sb.outsidePeer().name, [7000]);
    expect(net.reach(a1.ns, a2.ip, 7000)).toBe(true);
    expect(net.reach(a1.ns, b.ip, 7000)).toBe(false);
    expect(net.reach(b.ns, a2.ip, 7000)).toBe(false);
    expect(net.reach(a1.ns, '203.0.113.9', 7000)).toBe(true); // out of the bridges: not isolated
    if (!nft) {
      const f = filter();
      expect(f.split('\n').filter((l) => l.startsWith('-A FORWARD'))[0]).toContain('-j CNI-ISOLATION-STAGE-1'); // before CNI-FORWARD
      expect(f.match(/-A CNI-ISOLATION-STAGE-1 -i fwa0 ! -o fwa0/g)).toHaveLength(1);
    } else {
      const t = nftTable();
      expect(t).toMatch(/set within \{\n\s+type ifname \. ifname\n\s+elements = \{ "fwa0" \. "fwa0" comment "net-fwa0",\s+"fwb0" \. "fwb0" comment "net-fwb0" \}/);
      // Isolation comes before the admin chain and the accepts.
      const rules = t.slice(t.indexOf('chain forward')).split('\n').map((l) => l.trim()).filter((l) => l.includes('comment'));
      expect(rules.map((l) => /comment "([^"]*)"/.exec(l)![1])).toEqual(['cni-ts isolated', 'cni-ts same-bridge', 'cni-ts admin CNI-ADMIN', 'cni-ts accept4 replies', 'cni-ts accept4', 'cni-ts accept6 replies', 'cni-ts accept6']);
    }
    for (const x of [a1, a2, b]) expect(fw('CHECK', x).code).toBe(0);
  });

  it('many plugin processes at once lose no rule and duplicate none', async () => {
    const n = 20;
    const confs = Array.from({ length: n }, (_, i) => ({ cniVersion: '1.0.0', name: 'n', type: 'firewall', backend, prevResult: { cniVersion: '1.0.0', ips: [{ address: `10.63.0.${i + 2}/24` }] } }));
    const path = sb.container().path;
    const runs = await Promise.all(confs.map((c, i) => sb.pluginAsync(FIREWALL, { command: 'ADD', containerId: `c${i}`, netns: path }, c)));
    for (const r of runs) expect(r.code, r.stdout + r.stderr).toBe(0);
    if (!nft) {
      const f = filter();
      for (let i = 0; i < n; i++) expect(f.match(new RegExp(`-s 10\\.63\\.0\\.${i + 2}/32 -j ACCEPT`, 'g'))).toHaveLength(1);
      expect(f.match(/-j CNI-FORWARD/g)).toHaveLength(1);
      expect(f.match(/-j CNI-ADMIN/g)).toHaveLength(1);
    } else {
      const t = nftTable();
      for (let i = 0; i < n; i++) expect(t.match(new RegExp(`10\\.63\\.0\\.${i + 2} comment "n c${i} eth0"`, 'g'))).toHaveLength(1);
      expect(t.match(/jump CNI-ADMIN/g)).toHaveLength(1);
      expect(t.match(/ip saddr @accept4 accept/g)).toHaveLength(1);
    }
    const dels = await Promise.all(confs.map((c, i) => sb.pluginAsync(FIREWALL, { command: 'DEL', containerId: `c${i}`, netns: path }, c)));
    for (const r of dels) expect(r.code).toBe(0);
    expect(filter()).not.toContain('10.63.0.');
    expect(nftTable()).not.toContain('10.63.0.');
  });
});

describe('firewall', () => {
  it('gives code 1 for CHECK below 0.4.0, 2 for firewalld, 7 without prevResult or with bad options, and changes nothing', () => {
    const before = filter();
    const base = { cniVersion: '1.0.0', name: 'n', type: 'firewall', prevResult: { cniVersion: '1.0.0', ips: [{ address: '10.62.9.2/24' }] } };
    const call = { command: 'ADD', containerId: 'x', netns: sb.container().path };
    expect(sb.plugin(FIREWALL, { ...call, command: 'CHECK' }, { ...base, cniVersion: '0.3.1' }).json.code).toBe(1);
    expect(sb.plugin(FIREWALL, call, { ...base, backend: 'firewalld' }).json.code).toBe(2);
    expect(sb.plugin(FIREWALL, call, { ...base, prevResult: undefined }).json.code).toBe(7);
    expect(sb.plugin(FIREWALL, call, { ...base, ingressPolicy: 'bogus' }).json.code).toBe(7);
    expect(sb.plugin(FIREWALL, call, { ...base, iptablesAdminChainName: 'has space' }).json.code).toBe(7);
    expect(sb.plugin(FIREWALL, call, { ...base, backend: 'nft' }).json.code).toBe(7);
    expect(sb.plugin(FIREWALL, call, { ...base, iptablesForwardDrop: 'ignore' }).json.code).toBe(7);
    // A valid iptables chain name that nft cannot take.
    expect(sb.plugin(FIREWALL, call, { ...base, backend: 'nftables', iptablesAdminChainName: 'CNI:ADMIN' }).json).toMatchObject({ code: 7, msg: expect.stringContaining('cannot be an nftables chain name') });
    expect(filter()).toBe(before);
    expect(nftTable()).toBe('');
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

  it('nftables: DEL needs no prevResult (elements are found by owner); a backend switch is cleaned up by DEL', () => {
    const prev = (i: number) => ({ cniVersion: '1.0.0', ips: [{ address: `10.62.9.${i}/24` }, { address: `fd00:62::${i}/64` }] });
    const path = sb.container().path;
    const conf = (i: number, backend: string) => ({ cniVersion: '1.0.0', name: 'n', type: 'firewall', backend, prevResult: prev(i) });
    const run = (cmd: string, i: number, c: Record<string, unknown>) => sb.plugin(FIREWALL, { command: cmd, containerId: `c${i}`, netns: path }, c);
    for (const i of [2, 3]) expect(run('ADD', i, conf(i, 'nftables')).code).toBe(0);
    expect(nftTable()).toContain('fd00:62::2 comment "n c2 eth0"');
    expect(run('DEL', 2, { ...conf(2, 'nftables'), prevResult: undefined }).code).toBe(0);
    expect(nftTable()).not.toMatch(/10\.62\.9\.2\b|fd00:62::2\b/);
    expect(nftTable()).toContain('10.62.9.3 comment "n c3 eth0"');
    // Added with nftables, the network switched to iptables: DEL still removes it; and the other way round.
    expect(run('DEL', 3, conf(3, 'iptables')).code).toBe(0);
    expect(nftTable()).not.toContain('10.62.9.3');
    expect(run('ADD', 4, conf(4, 'iptables')).code).toBe(0);
    expect(filter()).toContain('-A CNI-FORWARD -s 10.62.9.4/32 -j ACCEPT');
    expect(run('DEL', 4, conf(4, 'nftables')).code).toBe(0);
    expect(filter()).not.toContain('10.62.9.4');
    expect(run('DEL', 4, conf(4, 'nftables')).code).toBe(0);
  });

  it('nftables: the admin chain comes first and is never flushed (an operator rule there blocks and survives ADDs)', async () => {
    const a = attach('a1', 'fwa0', '10.62.1.0/24', { backend: 'nftables' });
    const b = attach('b1', 'fwb0', '10.62.2.0/24', { backend: 'nftables' });
    await net.serve(b.ns, [7000, 7001]);
    must(['ip', 'netns', 'exec', sb.host, 'nft', 'add', 'rule', 'inet', 'cni_ts_firewall', 'CNI-ADMIN', 'ip', 'daddr', b.ip, 'tcp', 'dport', '7000', 'drop']);
    expect(net.reach(a.ns, b.ip, 7000)).toBe(false);
    expect(net.reach(a.ns, b.ip, 7001)).toBe(true);
    // Another network with its own admin chain: both jumps, the operator's rule still there.
    attach('c1', 'fwc0', '10.62.3.0/24', { backend: 'nftables', iptablesAdminChainName: 'MY-ADMIN' });
    expect(nftTable()).toMatch(/jump CNI-ADMIN comment "cni-ts admin CNI-ADMIN"\n\s+jump MY-ADMIN comment "cni-ts admin MY-ADMIN"/);
    expect(net.reach(a.ns, b.ip, 7000)).toBe(false);
    expect(fw('CHECK', a).code).toBe(0);
  });
});

describe('firewall nftables beside an iptables FORWARD policy of DROP (issue 15 item 4)', () => {
  it('the hole: an accept in our table does not override the DROP; the opening (one rule per network, gone with its last container) closes it', async () => {
    const a = attach('a1', 'fwa0', '10.62.1.0/24', { backend: 'nftables' });
    const b = attach('b1', 'fwb0', '10.62.2.0/24', { backend: 'nftables' });
    await net.serve(b.ns, [7000]);
    expect(net.reach(a.ns, b.ip, 7000)).toBe(true);
    expect(openings()).toEqual([]); // policy ACCEPT: nothing to open
    must(['ip', 'netns', 'exec', sb.host, 'iptables', '-P', 'FORWARD', 'DROP']);
    // Our table still accepts both (elements there), the iptables chain at the same hook drops.
    expect(nftTable()).toContain(`${a.ip} comment "net-fwa0 a1 eth0"`);
    expect(net.reach(a.ns, b.ip, 7000)).toBe(false);
    // ADD again (idempotent) with the policy DROP: the network's opening; replies of its connections too.
    expect(fw('ADD', a).code).toBe(0);
    expect(openings()).toEqual(['-A FORWARD -m conntrack --ctorigsrc 10.62.1.0/24 -m comment --comment "cni-ts nftables network net-fwa0" -j ACCEPT']);
    expect(net.reach(a.ns, b.ip, 7000)).toBe(true);
    expect(net.reach(b.ns, a.ip, 7000)).toBe(false); // b's network is not opened: b starts nothing through
    // A second container of the network: still one rule; the first one's DEL keeps it.
    const a2 = attach('a2', 'fwa0', '10.62.1.0/24', { backend: 'nftables' });
    expect(openings()).toHaveLength(1);
    expect(fw('DEL', a).code).toBe(0);
    expect(openings()).toHaveLength(1);
    expect(net.reach(a2.ns, b.ip, 7000)).toBe(true);
    expect(fw('DEL', a2).code).toBe(0);
    expect(openings()).toEqual([]);
    expect(net.reach(a2.ns, b.ip, 7000)).toBe(false);
  });

  it('iptablesForwardDrop "refuse": ADD fails naming the policy and leaves nothing; "open" (the default) lets it through', async () => {
    must(['ip', 'netns', 'exec', sb.host, 'iptables', '-P', 'FORWARD', 'DROP']);
    const b = attach('b1', 'fwb0', '10.62.2.0/24', { backend: 'nftables' });
    await net.serve(b.ns, [7000]);
    const c = sb.container();
    const bconf = { cniVersion: '1.0.0', name: 'net-fwa0', type: 'bridge', bridge: 'fwa0', isGateway: true, isDefaultGateway: true, ipam: { type: 'host-local', subnet: '10.62.1.0/24', dataDir: join(sb.dir, 'ipam') } };
    const br = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'a1', netns: c.path }, bconf);
    const a = { id: 'a1', path: c.path, fconf: { cniVersion: '1.0.0', name: 'net-fwa0', type: 'firewall', backend: 'nftables', iptablesForwardDrop: 'refuse', prevResult: br.json } };
    const before = { filter: filter(), nft: nftTable() };
    const r = fw('ADD', a);
    expect(r.code).toBe(1);
    expect(r.json).toMatchObject({ code: 50, msg: 'iptables FORWARD policy is DROP: nftables rules alone cannot let network "net-fwa0" through' });
    expect(r.json.details).toContain('iptablesForwardDrop is "refuse"');
    expect({ filter: filter(), nft: nftTable() }).toEqual(before);
    expect(net.reach(c.name, b.ip, 7000)).toBe(false);
    expect(fw('DEL', a).code).toBe(0);
    expect(fw('ADD', a, { iptablesForwardDrop: 'open' }).code).toBe(0);
    expect(net.reach(c.name, b.ip, 7000)).toBe(true);
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
