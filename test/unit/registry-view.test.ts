import { chmodSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { buildRegistry, formatRegistry, loadRegistry, readCacheDir, type CacheInput } from '../../manager/registry.js';

// The pure part of `cni-manager networks`: configs + cache entries → the registry,
// and the cache reader's refusals (symlinks, foreign owners, group-writable, garbage).

const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64');

const netA = {
  cniVersion: '1.0.0', name: 'neta',
  plugins: [
    { type: 'bridge', bridge: 'br-a', isGateway: true, ipam: { type: 'host-local', ranges: [[{ subnet: '10.1.0.0/24', gateway: '10.1.0.254' }], [{ subnet: 'fd00:1::/64' }]] } },
    { type: 'portmap', capabilities: { portMappings: true } },
  ],
};
const netVlan = { cniVersion: '1.0.0', name: 'netv', plugins: [{ type: 'vlan', master: 'eth1', vlanId: 42, ipam: { type: 'static', addresses: [{ address: '192.168.5.10/24', gateway: '192.168.5.1' }] } }] };
const netTrunk = { cniVersion: '0.4.0', name: 'nett', type: 'bridge', vlan: 7, vlanTrunk: [{ id: 100 }, { minID: 200, maxID: 210 }], ipam: { type: 'host-local', subnet: '10.3.0.5/16' } };

function entry(network: string, containerId: string, ifName: string, result: unknown, config: unknown = { name: network, cniVersion: '1.0.0', plugins: [{ type: 'bridge' }] }) {
  return { kind: 'cniCacheV1' as const, containerId, ifName, networkName: network, config: b64(config), result: result as Record<string, unknown> };
}

const bridgeResult = (bridge: string, veth: string, mac: string, ip: string) => ({
  cniVersion: '1.0.0',
  interfaces: [{ name: bridge, mac: '02:00:00:00:00:01' }, { name: veth, mac: '02:00:00:00:00:02' }, { name: 'eth0', mac, sandbox: '/var/run/netns/x' }],
  ips: [{ address: ip, gateway: '10.1.0.254', interface: 2 }],
});

describe('buildRegistry', () => {
  it('describes networks: kind, plugins, bridge, VLANs, CIDRs, gateways (host-local default .1), users and state', () => {
    const entries: CacheInput[] = [
      { source: 'cni-manager', file: '/c/results/neta-c1-eth0', entry: entry('neta', 'c1', 'eth0', bridgeResult('br-a', 'veth1234', '0a:58:0a:01:00:02', '10.1.0.2/24')) },
      { source: 'libcni', file: '/l/results/neta-c2-eth0', entry: entry('neta', 'c2', 'eth0', bridgeResult('br-a', 'veth5678', '0a:58:0a:01:00:03', '10.1.0.3/24')) },
      // Known only from a cache: described from its cached config.
      { source: 'libcni', file: '/l/results/gone-c3-net1', entry: entry('gone', 'c3', 'net1', { cniVersion: '0.2.0', ip4: { ip: '10.9.0.4/16' } }, { cniVersion: '0.2.0', name: 'gone', type: 'ptp', ipam: { type: 'host-local', subnet: '10.9.0.0/16' } }) },
    ];
    const reg = buildRegistry(
      [
        { file: '/etc/cni/net.d/10-a.conflist', bytes: JSON.stringify(netA) },
        { file: '/etc/cni/net.d/20-v.conflist', bytes: JSON.stringify(netVlan) },
        { file: '/etc/cni/net.d/30-t.conf', bytes: JSON.stringify(netTrunk) },
      ],
      entries,
    );
    expect(reg.warnings).toEqual([]);
    expect(reg.networks.map((n) => [n.name, n.state, n.attachments])).toEqual([
      ['gone', 'cache-only', 1], ['neta', 'in-use', 2], ['nett', 'no-users', 0], ['netv', 'no-users', 0],
    ]);
    const [gone, a, t, v] = reg.networks;
    expect(a).toEqual({
      name: 'neta', state: 'in-use', kind: 'bridge', plugins: ['bridge', 'portmap'], ipam: 'host-local', bridge: 'br-a', vlan: null,
      cidrs: ['10.1.0.0/24', 'fd00:1::/64'], gateways: ['10.1.0.254', 'fd00:1::1'], attachments: 2, confFile: '/etc/cni/net.d/10-a.conflist',
    });
    expect(v).toMatchObject({ kind: 'vlan', bridge: null, vlan: { id: 42, master: 'eth1' }, cidrs: ['192.168.5.0/24'], gateways: ['192.168.5.1'], ipam: 'static' });
    // A single-plugin .conf; host bits in the subnet are dropped; the bridge plugin's default name when unnamed.
    expect(t).toMatchObject({ kind: 'bridge', plugins: ['bridge'], bridge: 'cni0', vlan: { id: 7, trunk: ['100', '200-210'] }, cidrs: ['10.3.0.0/16'], gateways: ['10.3.0.1'] });
    expect(formatRegistry(reg)).toMatch(/\nnett +NO-USERS +bridge +bridge,ipam:host-local +cni0 +7\+trunk:100,200-210 +10\.3\.0\.0\/16 +10\.3\.0\.1 +0\n/);
    expect(gone).toMatchObject({ kind: 'ptp', confFile: null, cidrs: ['10.9.0.0/16'], gateways: ['10.9.0.1'] });

    expect(reg.attachments).toEqual([
      { network: 'gone', containerId: 'c3', ifname: 'net1', mac: null, hostDevice: null, hostDevices: [], ips: ['10.9.0.4/16'], cache: 'libcni', cacheFile: '/l/results/gone-c3-net1' },
      { network: 'neta', containerId: 'c1', ifname: 'eth0', mac: '0a:58:0a:01:00:02', hostDevice: 'veth1234', hostDevices: ['veth1234'], ips: ['10.1.0.2/24'], cache: 'cni-manager', cacheFile: '/c/results/neta-c1-eth0' },
      { network: 'neta', containerId: 'c2', ifname: 'eth0', mac: '0a:58:0a:01:00:03', hostDevice: 'veth5678', hostDevices: ['veth5678'], ips: ['10.1.0.3/24'], cache: 'libcni', cacheFile: '/l/results/neta-c2-eth0' },
    ]);
  });

  it('host device: not the bridge, not in the sandbox; a TAP result; the first of several (veth before ifb)', () => {
    const tapRes = { cniVersion: '1.0.0', interfaces: [{ name: 'tap0', mac: '02:11:22:33:44:55' }, { name: 'eth0', mac: '02:aa:bb:cc:dd:ee', sandbox: '/run/netns/vm' }], ips: [] };
    const bw = bridgeResult('br-a', 'vethab', '02:01:01:01:01:01', '10.1.0.9/24');
    bw.interfaces.push({ name: 'bwp1234', mac: '02:00:00:00:00:09' });
    const reg = buildRegistry([{ file: '/n/a.conflist', bytes: JSON.stringify(netA) }], [
      { source: 'shared', file: '/x/results/neta-vm1-eth0', entry: entry('neta', 'vm1', 'eth0', tapRes) },
      { source: 'shared', file: '/x/results/neta-c9-eth0', entry: entry('neta', 'c9', 'eth0', bw) },
    ]);
    expect(reg.attachments.map((a) => [a.containerId, a.mac, a.hostDevice, a.hostDevices])).toEqual([
      ['c9', '02:01:01:01:01:01', 'vethab', ['vethab', 'bwp1234']],
      ['vm1', '02:aa:bb:cc:dd:ee', 'tap0', ['tap0']],
    ]);
  });

  it('bad configurations and results are warnings, never a crash; the first file of a name wins', () => {
    const reg = buildRegistry(
      [
        { file: '/n/10-a.conflist', bytes: JSON.stringify(netA) },
        { file: '/n/20-dup.conflist', bytes: JSON.stringify({ ...netA, plugins: [{ type: 'macvlan' }] }) },
        { file: '/n/30-bad.conflist', bytes: '{"name": "x", "plugins": [' },
        { file: '/n/40-noname.conflist', bytes: JSON.stringify({ plugins: [{ type: 'bridge' }] }) },
      ],
      [
        { source: 'libcni', file: '/l/results/neta-c1-eth0', entry: entry('neta', 'c1', 'eth0', { interfaces: 'nope' }) },
        { source: 'libcni', file: '/l/results/junk-c2-eth0', entry: { ...entry('junk', 'c2', 'eth0', {}), config: b64('not a config') } },
      ],
    );
    expect(reg.networks.map((n) => [n.name, n.kind, n.state])).toEqual([['junk', '', 'cache-only'], ['neta', 'bridge', 'in-use']]);
    expect(reg.attachments.map((a) => [a.network, a.mac, a.ips])).toEqual([['junk', null, []], ['neta', null, []]]);
    expect(reg.warnings).toHaveLength(5);
    expect(reg.warnings.join('\n')).toMatch(/20-dup.conflist: skipped, network "neta" is already defined by \/n\/10-a.conflist/);
    expect(reg.warnings.join('\n')).toMatch(/30-bad.conflist: skipped, not a network configuration/);
    expect(reg.warnings.join('\n')).toMatch(/40-noname.conflist: skipped/);
    expect(reg.warnings.join('\n')).toMatch(/neta-c1-eth0: result not understood/);
    expect(reg.warnings.join('\n')).toMatch(/junk-c2-eth0: the cached network configuration does not parse/);
  });

  it('the table: aligned columns, "-" for nothing, NO-USERS and CACHE-ONLY markers', () => {
    const reg = buildRegistry([{ file: '/n/a.conflist', bytes: JSON.stringify(netA) }, { file: '/n/v.conflist', bytes: JSON.stringify(netVlan) }], [
      { source: 'libcni', file: '/l/results/neta-c1-eth0', entry: entry('neta', 'c1', 'eth0', bridgeResult('br-a', 'veth1', '02:00:00:00:00:aa', '10.1.0.2/24')) },
      { source: 'libcni', file: '/l/results/old-c2-eth0', entry: entry('old', 'c2', 'eth0', {}) },
    ]);
    const text = formatRegistry(reg);
    const [nets, atts] = text.trimEnd().split('\n\n').map((t) => t.split('\n'));
    expect(nets).toEqual([
      'NETWORK  STATE       KIND    PLUGINS                         BRIDGE  VLAN     CIDR                     GATEWAY               USERS',
      'neta     in-use      bridge  bridge,portmap,ipam:host-local  br-a    -        10.1.0.0/24,fd00:1::/64  10.1.0.254,fd00:1::1  1',
      'netv     NO-USERS    vlan    vlan,ipam:static                -       42@eth1  192.168.5.0/24           192.168.5.1           0',
      'old      CACHE-ONLY  bridge  bridge                          cni0    -        -                        -                     1',
    ]);
    expect(atts).toEqual([
      'NETWORK  CONTAINER  IFNAME  MAC                HOSTDEV  IPS          CACHE',
      'neta     c1         eth0    02:00:00:00:00:aa  veth1    10.1.0.2/24  libcni',
      'old      c2         eth0    -                  -        -            libcni',
    ]);
  });
});

describe('reading a cache directory', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'cnits-regview-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const good = entry('neta', 'c1', 'eth0', bridgeResult('br-a', 'veth1', '02:00:00:00:00:aa', '10.1.0.2/24'));

  it('reads root-owned 0600 entries; skips symlinks, group/other-writable, foreign-owned, FIFOs, garbage and temp files with a warning', () => {
    const res = join(dir, 'results');
    mkdirSync(res, { mode: 0o700 });
    writeFileSync(join(res, 'neta-c1-eth0'), JSON.stringify(good), { mode: 0o600 });
    writeFileSync(join(dir, 'secret'), JSON.stringify(entry('neta', 'planted', 'eth0', {})), { mode: 0o600 });
    symlinkSync(join(dir, 'secret'), join(res, 'neta-link-eth0'));
    writeFileSync(join(res, 'neta-gw-eth0'), JSON.stringify(entry('neta', 'gw', 'eth0', {})));
    chmodSync(join(res, 'neta-gw-eth0'), 0o620);
    writeFileSync(join(res, 'neta-nobody-eth0'), JSON.stringify(entry('neta', 'nobody', 'eth0', {})), { mode: 0o600 });
    execFileSync('chown', ['65534', join(res, 'neta-nobody-eth0')]);
    execFileSync('mkfifo', ['-m', '600', join(res, 'neta-fifo-eth0')]);
    writeFileSync(join(res, 'neta-bad-eth0'), '{"kind": "cniCacheV1"', { mode: 0o600 });
    writeFileSync(join(res, 'neta-other-eth0'), JSON.stringify({ kind: 'somethingElse' }), { mode: 0o600 });
    writeFileSync(join(res, 'neta-c2-eth0.tmp123'), 'half written', { mode: 0o600 });
    const r = readCacheDir(dir, 'libcni', { allowOwnUid: false });
    expect(r.entries.map((e) => e.entry.containerId)).toEqual(['c1']);
    expect(r.entries[0]).toMatchObject({ source: 'libcni', file: join(res, 'neta-c1-eth0') });
    const w = r.warnings.join('\n');
    expect(r.warnings).toHaveLength(6);
    expect(w).toContain('neta-link-eth0: skipped, a symbolic link');
    expect(w).toContain('neta-gw-eth0: skipped, writable by group or others (mode 620)');
    expect(w).toContain('neta-nobody-eth0: skipped, owned by uid 65534, not root');
    expect(w).toContain('neta-fifo-eth0: skipped, not a regular file');
    expect(w).toMatch(/neta-bad-eth0: skipped, not JSON/);
    expect(w).toMatch(/neta-other-eth0: skipped, not a cniCacheV1 entry/);
  });

  it('a results directory that is a symlink, group-writable or foreign-owned is skipped whole; a missing one is empty', () => {
    expect(readCacheDir(dir, 'libcni', { allowOwnUid: false })).toEqual({ entries: [], warnings: [] });
    mkdirSync(join(dir, 'elsewhere'), { mode: 0o700 });
    writeFileSync(join(dir, 'elsewhere', 'neta-c1-eth0'), JSON.stringify(good), { mode: 0o600 });
    symlinkSync(join(dir, 'elsewhere'), join(dir, 'results'));
    let r = readCacheDir(dir, 'libcni', { allowOwnUid: false });
    expect(r.entries).toEqual([]);
    expect(r.warnings).toEqual([`${join(dir, 'results')}: skipped, a symbolic link or not a directory`]);
    rmSync(join(dir, 'results'));
    mkdirSync(join(dir, 'results'));
    writeFileSync(join(dir, 'results', 'neta-c1-eth0'), JSON.stringify(good), { mode: 0o600 });
    chmodSync(join(dir, 'results'), 0o777);
    r = readCacheDir(dir, 'libcni', { allowOwnUid: false });
    expect(r.entries).toEqual([]);
    expect(r.warnings[0]).toMatch(/writable by group or others \(mode 777\)/);
    chmodSync(join(dir, 'results'), 0o700);
    execFileSync('chown', ['65534', join(dir, 'results')]);
    r = readCacheDir(dir, 'libcni', { allowOwnUid: false });
    expect(r.warnings[0]).toMatch(/owned by uid 65534/);
  });

  it('loadRegistry reads one directory once when both caches name it (source "shared")', () => {
    mkdirSync(join(dir, 'results'), { mode: 0o700 });
    writeFileSync(join(dir, 'results', 'neta-c1-eth0'), JSON.stringify(good), { mode: 0o600 });
    mkdirSync(join(dir, 'net.d'));
    writeFileSync(join(dir, 'net.d', '10-a.conflist'), JSON.stringify(netA));
    writeFileSync(join(dir, 'net.d', 'README'), 'not a config');
    const reg = loadRegistry({ confDir: join(dir, 'net.d'), cacheDir: dir, libcniCacheDir: `${dir}/` });
    expect(reg.warnings).toEqual([]);
    expect(reg.attachments.map((a) => [a.containerId, a.cache])).toEqual([['c1', 'shared']]);
    expect(reg.networks.map((n) => [n.name, n.state, n.attachments])).toEqual([['neta', 'in-use', 1]]);
  });
});
