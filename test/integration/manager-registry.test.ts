import { chmodSync, existsSync, mkdirSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, ROOT, Sandbox, sh } from '../helpers/sandbox.js';
import { modeEnv, modeEnvArgs } from '../helpers/mode.js';
import type { Registry } from '../../manager/registry.js';

// `cni-manager networks` against real attachments: two networks ADDed by
// cni-manager itself (its cache), one network ADDed through real libcni
// (Debian's, by the cnitool driver test/tools/cnitool, into its own cache dir)
// twice — once for a network of the conf dir, once for one that is only in
// libcni's cache — and every field of the view compared with the kernel.
const CNITOOL = join(ROOT, 'test/tools/cnitool/cnitool');
let sb: Sandbox;
beforeEach(() => {
  sb = new Sandbox('reg');
});
afterEach(() => sb.cleanup());

const netDir = () => join(sb.dir, 'net.d');
const cacheDir = () => join(sb.dir, 'cache');
const libcniDir = () => join(sb.dir, 'libcni');

function list(name: string, bridge: string, ipam: Record<string, unknown>) {
  return { cniVersion: '1.0.0', name, plugins: [{ type: 'bridge', bridge, isGateway: true, ipam: { type: 'host-local', dataDir: join(sb.dir, 'ipam'), ...ipam } }] };
}

function manager(args: string[]) {
  return sh(sb.pluginArgv('env', ...modeEnvArgs(), join(BIN, 'cni-manager'), ...args, '--cni-path', BIN, '--cache-dir', cacheDir()));
}

function networks(json: boolean) {
  const r = manager(['networks', ...(json ? ['--json'] : []), '--conf-dir', netDir(), '--libcni-cache-dir', libcniDir()]);
  expect(r.code, r.stderr).toBe(0);
  return r;
}

function cnitool(args: string[], env: Record<string, string>) {
  const argv = sb.pluginArgv(CNITOOL, ...args);
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', env: { PATH: process.env.PATH, ...modeEnv(), CNI_PATH: BIN, CNI_CACHEDIR: libcniDir(), ...env } });
  return { code: r.status ?? 1, stdout: r.stdout, stderr: r.stderr };
}

/** What the kernel says about a container's interface and its host veth peer. */
function kernelView(ns: string, ifname: string) {
  const link = JSON.parse(sb.inNs(ns, ['ip', '-j', 'link', 'show', ifname]).stdout)[0];
  const addrs = JSON.parse(sb.inNs(ns, ['ip', '-j', 'addr', 'show', ifname]).stdout)[0].addr_info.filter((a: { family: string; scope: string }) => a.family === 'inet' && a.scope === 'global');
  // The veth's peer in the host namespace: the link whose ifindex the container's end names.
  const hostLinks = JSON.parse(sb.inHost(['ip', '-j', 'link', 'show']).stdout) as { ifindex: number; ifname: string; master?: string }[];
  const peer = hostLinks.find((l) => l.ifindex === link.link_index)!;
  return { mac: link.address as string, ips: addrs.map((a: { local: string; prefixlen: number }) => `${a.local}/${a.prefixlen}`), hostDevice: peer.ifname, master: peer.master };
}

const bridgeAddr = (bridge: string) => {
  const a = JSON.parse(sb.inHost(['ip', '-j', 'addr', 'show', bridge]).stdout)[0].addr_info.find((x: { family: string }) => x.family === 'inet');
  return a.local as string;
};

/** The table's rows, split on runs of two or more spaces (no cell holds one). */
function rows(text: string) {
  const [nets, atts] = text.trimEnd().split('\n\n').map((t) => t.split('\n').map((l) => l.split(/ {2,}/)));
  return { nets, atts };
}

describe('cni-manager networks', () => {
  it('shows cni-manager and libcni attachments as the kernel has them; DEL leaves a network with no users', () => {
    mkdirSync(netDir());
    writeFileSync(join(netDir(), '10-rega.conflist'), JSON.stringify(list('rega', 'br-rega', { ranges: [[{ subnet: '10.93.1.0/24', gateway: '10.93.1.1' }]] })));
    writeFileSync(join(netDir(), '20-regb.conflist'), JSON.stringify(list('regb', 'br-regb', { subnet: '10.93.2.0/24' })));
    writeFileSync(join(netDir(), '30-regidle.conflist'), JSON.stringify(list('regidle', 'br-regidle', { subnet: '10.93.4.0/24' })));
    writeFileSync(join(netDir(), '50-broken.conflist'), '{"cniVersion": "1.0.0", "name": ');
    // libcni's own network, in a conf dir the registry is not shown: known to it only from libcni's cache.
    mkdirSync(join(sb.dir, 'other.d'));
    writeFileSync(join(sb.dir, 'other.d', '10-regc.conflist'), JSON.stringify(list('regc', 'br-regc', { subnet: '10.93.3.0/24' })));

    const c1 = sb.container();
    const c2 = sb.container();
    const c3 = sb.container();
    const c4 = sb.container();
    let r = manager(['add', join(netDir(), '10-rega.conflist'), 'inst-a', '--netns', c1.path]);
    expect(r.code, r.stderr).toBe(0);
    r = manager(['add', join(netDir(), '20-regb.conflist'), 'inst-b', '--netns', c2.path, '--ifname', 'net1']);
    expect(r.code, r.stderr).toBe(0);
    r = cnitool(['add', 'rega', c3.path], { NETCONFPATH: netDir(), CNI_CONTAINERID: 'pod-a3' });
    expect(r.code, r.stderr).toBe(0);
    r = cnitool(['add', 'regc', c4.path], { NETCONFPATH: join(sb.dir, 'other.d'), CNI_CONTAINERID: 'pod-c4' });
    expect(r.code, r.stderr).toBe(0);
    expect(readdirSync(join(libcniDir(), 'results')).sort()).toEqual(['rega-pod-a3-eth0', 'regc-pod-c4-eth0']);

    // Things a cache must never make the view follow or trust: a symlink out of the cache, a group-writable file.
    symlinkSync('/etc/hostname', join(cacheDir(), 'results', 'regb-evil-eth0'));
    writeFileSync(join(libcniDir(), 'results', 'rega-planted-eth0'), '{}');
    chmodSync(join(libcniDir(), 'results', 'rega-planted-eth0'), 0o666);

    const out = networks(true);
    const warnings = out.stderr.trim().split('\n');
    expect(warnings).toHaveLength(3);
    expect(out.stderr).toContain(`cni-manager: warning: ${join(netDir(), '50-broken.conflist')}: skipped, not a network configuration`);
    expect(out.stderr).toContain(`cni-manager: warning: ${join(cacheDir(), 'results', 'regb-evil-eth0')}: skipped, a symbolic link`);
    expect(out.stderr).toContain(`cni-manager: warning: ${join(libcniDir(), 'results', 'rega-planted-eth0')}: skipped, writable by group or others (mode 666)`);
    const reg = JSON.parse(out.stdout) as Registry;
    expect(reg.version).toBe(1);
    expect(reg.warnings).toHaveLength(3);

    // Networks: what the configs say, and the gateways the bridges really carry.
    expect(reg.networks).toEqual([
      { name: 'rega', state: 'in-use', kind: 'bridge', plugins: ['bridge'], ipam: 'host-local', bridge: 'br-rega', vlan: null, cidrs: ['10.93.1.0/24'], gateways: ['10.93.1.1'], attachments: 2, confFile: join(netDir(), '10-rega.conflist') },
      { name: 'regb', state: 'in-use', kind: 'bridge', plugins: ['bridge'], ipam: 'host-local', bridge: 'br-regb', vlan: null, cidrs: ['10.93.2.0/24'], gateways: ['10.93.2.1'], attachments: 1, confFile: join(netDir(), '20-regb.conflist') },
      { name: 'regc', state: 'cache-only', kind: 'bridge', plugins: ['bridge'], ipam: 'host-local', bridge: 'br-regc', vlan: null, cidrs: ['10.93.3.0/24'], gateways: ['10.93.3.1'], attachments: 1, confFile: null },
      { name: 'regidle', state: 'no-users', kind: 'bridge', plugins: ['bridge'], ipam: 'host-local', bridge: 'br-regidle', vlan: null, cidrs: ['10.93.4.0/24'], gateways: ['10.93.4.1'], attachments: 0, confFile: join(netDir(), '30-regidle.conflist') },
    ]);
    expect(bridgeAddr('br-rega')).toBe('10.93.1.1');
    expect(bridgeAddr('br-regb')).toBe('10.93.2.1');
    expect(bridgeAddr('br-regc')).toBe('10.93.3.1');

    // Attachments: MAC, IPs and host veth as the kernel has them; the veth is a port of the network's bridge.
    const expected = [
      { network: 'rega', containerId: 'inst-a', ifname: 'eth0', ns: c1.name, bridge: 'br-rega', cache: 'cni-manager', file: join(cacheDir(), 'results', 'rega-inst-a-eth0') },
      { network: 'rega', containerId: 'pod-a3', ifname: 'eth0', ns: c3.name, bridge: 'br-rega', cache: 'libcni', file: join(libcniDir(), 'results', 'rega-pod-a3-eth0') },
      { network: 'regb', containerId: 'inst-b', ifname: 'net1', ns: c2.name, bridge: 'br-regb', cache: 'cni-manager', file: join(cacheDir(), 'results', 'regb-inst-b-net1') },
      { network: 'regc', containerId: 'pod-c4', ifname: 'eth0', ns: c4.name, bridge: 'br-regc', cache: 'libcni', file: join(libcniDir(), 'results', 'regc-pod-c4-eth0') },
    ];
    expect(reg.attachments).toHaveLength(expected.length);
    expected.forEach((x, i) => {
      const k = kernelView(x.ns, x.ifname);
      expect(k.master).toBe(x.bridge);
      expect(k.ips).toHaveLength(1);
      expect(reg.attachments[i]).toEqual({
        network: x.network, containerId: x.containerId, ifname: x.ifname, mac: k.mac, hostDevice: k.hostDevice, hostDevices: [k.hostDevice], ips: k.ips, cache: x.cache, cacheFile: x.file,
      });
    });

    // The table says the same, one line each.
    const table = networks(false);
    const t = rows(table.stdout);
    expect(t.nets).toEqual([
      ['NETWORK', 'STATE', 'KIND', 'PLUGINS', 'BRIDGE', 'VLAN', 'CIDR', 'GATEWAY', 'USERS'],
      ['rega', 'in-use', 'bridge', 'bridge,ipam:host-local', 'br-rega', '-', '10.93.1.0/24', '10.93.1.1', '2'],
      ['regb', 'in-use', 'bridge', 'bridge,ipam:host-local', 'br-regb', '-', '10.93.2.0/24', '10.93.2.1', '1'],
      ['regc', 'CACHE-ONLY', 'bridge', 'bridge,ipam:host-local', 'br-regc', '-', '10.93.3.0/24', '10.93.3.1', '1'],
      ['regidle', 'NO-USERS', 'bridge', 'bridge,ipam:host-local', 'br-regidle', '-', '10.93.4.0/24', '10.93.4.1', '0'],
    ]);
    expect(t.atts[0]).toEqual(['NETWORK', 'CONTAINER', 'IFNAME', 'MAC', 'HOSTDEV', 'IPS', 'CACHE']);
    expect(t.atts.slice(1)).toEqual(reg.attachments.map((a) => [a.network, a.containerId, a.ifname, a.mac, a.hostDevice, a.ips.join(','), a.cache]));
    // Aligned: every row's columns start where the header's do.
    const lines = table.stdout.split('\n\n')[0].split('\n');
    const starts = (l: string) => [...l.matchAll(/(?:^|  )(\S)/g)].map((m) => m.index! + (m.index === 0 ? 0 : 2));
    for (const l of lines) expect(starts(l)).toEqual(starts(lines[0]));

    // DEL regb's only user: the network stays configured, with no users.
    r = manager(['del', join(netDir(), '20-regb.conflist'), 'inst-b', '--netns', c2.path, '--ifname', 'net1']);
    expect(r.code, r.stderr).toBe(0);
    const after = JSON.parse(networks(true).stdout) as Registry;
    expect(after.networks.find((n) => n.name === 'regb')).toMatchObject({ state: 'no-users', attachments: 0 });
    expect(after.attachments.map((a) => a.containerId)).toEqual(['inst-a', 'pod-a3', 'pod-c4']);
    expect(rows(networks(false).stdout).nets.find((n) => n[0] === 'regb')).toEqual(['regb', 'NO-USERS', 'bridge', 'bridge,ipam:host-local', 'br-regb', '-', '10.93.2.0/24', '10.93.2.1', '0']);

    // The rest DELed: rega has no users, regc (never configured here) is gone from the view.
    expect(manager(['del', join(netDir(), '10-rega.conflist'), 'inst-a', '--netns', c1.path]).code).toBe(0);
    expect(cnitool(['del', 'rega', c3.path], { NETCONFPATH: netDir(), CNI_CONTAINERID: 'pod-a3' }).code).toBe(0);
    expect(cnitool(['del', 'regc', c4.path], { NETCONFPATH: join(sb.dir, 'other.d'), CNI_CONTAINERID: 'pod-c4' }).code).toBe(0);
    const end = JSON.parse(networks(true).stdout) as Registry;
    expect(end.attachments).toEqual([]);
    expect(end.networks.map((n) => [n.name, n.state, n.attachments])).toEqual([['rega', 'no-users', 0], ['regb', 'no-users', 0], ['regidle', 'no-users', 0]]);
    expect(sb.inHost(['ip', '-o', 'link', 'show', 'type', 'veth']).stdout.trim()).toBe('');
    expect(existsSync(join(cacheDir(), 'results', 'rega-inst-a-eth0'))).toBe(false);
  }, 180_000);

  it('the default: both caches in one directory are read once, entries marked "shared"; no conf dir is no error', () => {
    mkdirSync(netDir());
    writeFileSync(join(netDir(), '10-rega.conflist'), JSON.stringify(list('rega', 'br-rega', { ranges: [[{ subnet: '10.93.1.0/24' }]] })));
    const c1 = sb.container();
    const c3 = sb.container();
    expect(manager(['add', join(netDir(), '10-rega.conflist'), 'inst-a', '--netns', c1.path]).code).toBe(0);
    // libcni writing into cni-manager's cache directory, as both do by default in /var/lib/cni.
    const r = cnitool(['add', 'rega', c3.path], { NETCONFPATH: netDir(), CNI_CONTAINERID: 'pod-a3', CNI_CACHEDIR: cacheDir() });
    expect(r.code, r.stderr).toBe(0);
    const out = manager(['networks', '--json', '--conf-dir', netDir(), '--libcni-cache-dir', cacheDir()]);
    expect(out.code, out.stderr).toBe(0);
    expect(out.stderr).toBe('');
    const reg = JSON.parse(out.stdout) as Registry;
    expect(reg.attachments.map((a) => [a.containerId, a.cache, a.mac])).toEqual([
      ['inst-a', 'shared', kernelView(c1.name, 'eth0').mac],
      ['pod-a3', 'shared', kernelView(c3.name, 'eth0').mac],
    ]);
    expect(reg.networks).toMatchObject([{ name: 'rega', state: 'in-use', attachments: 2, gateways: ['10.93.1.1'] }]);
    const none = manager(['networks', '--conf-dir', join(sb.dir, 'absent'), '--libcni-cache-dir', join(sb.dir, 'absent')]);
    expect(none.code, none.stderr).toBe(0);
    expect(rows(none.stdout).nets.map((n) => n.slice(0, 2))).toEqual([['NETWORK', 'STATE'], ['rega', 'CACHE-ONLY']]);
    expect(manager(['del', join(netDir(), '10-rega.conflist'), 'inst-a', '--netns', c1.path]).code).toBe(0);
    expect(cnitool(['del', 'rega', c3.path], { NETCONFPATH: netDir(), CNI_CONTAINERID: 'pod-a3', CNI_CACHEDIR: cacheDir() }).code).toBe(0);
  }, 120_000);
});
