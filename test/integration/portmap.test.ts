import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, must, Sandbox } from '../helpers/sandbox.js';
import { Traffic } from '../helpers/traffic.js';

const BRIDGE = join(BIN, 'bridge');
const PORTMAP = join(BIN, 'portmap');
const REF_PORTMAP = '/usr/lib/cni/portmap';
const WAN = '203.0.113.1';
const PEER = '203.0.113.9';

let sb: Sandbox;
let net: Traffic;
beforeEach(() => {
  sb = new Sandbox('pm');
  net = new Traffic(sb.dir);
});
afterEach(() => {
  net.stop();
  sb.cleanup();
});

const nat = (s = sb, bin = 'iptables-save') => s.inHost([bin, '-t', 'nat']).stdout.replace(/^#.*\n/gm, '');

/** A peer outside the host (the "WAN"), reaching it through wan0. */
function wanPeer(): string {
  const peer = sb.container();
  must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'add', 'wan0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', peer.name]);
  must(['ip', 'netns', 'exec', sb.host, 'ip', 'addr', 'add', `${WAN}/24`, 'dev', 'wan0']);
  must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'set', 'wan0', 'up']);
  must(['ip', 'netns', 'exec', peer.name, 'ip', 'addr', 'add', `${PEER}/24`, 'dev', 'eth0']);
  must(['ip', 'netns', 'exec', peer.name, 'ip', 'link', 'set', 'eth0', 'up']);
  must(['ip', 'netns', 'exec', peer.name, 'ip', 'link', 'set', 'lo', 'up']);
  return peer.name;
}

const MAPPINGS = [
  { hostPort: 18080, containerPort: 80, protocol: 'tcp' },
  { hostPort: 18081, containerPort: 81, protocol: 'udp' },
  { hostPort: 18082, containerPort: 80, protocol: 'tcp', hostIP: WAN },
];

function bridgeAdd(id: string, s = sb) {
  const c = s.container();
  const conf = { cniVersion: '1.0.0', name: 'pmnet', type: 'bridge', bridge: 'pmbr0', isGateway: true, isDefaultGateway: true, ipMasq: true, hairpinMode: true, ipam: { type: 'host-local', subnet: '10.70.0.0/24', dataDir: join(s.dir, 'ipam') } };
  const b = s.plugin(BRIDGE, { command: 'ADD', containerId: id, netns: c.path }, conf);
  expect(b.code, b.stdout + b.stderr).toBe(0);
  return { ns: c.name, path: c.path, ip: b.json.ips[0].address.split('/')[0] as string, result: b.json };
}

const pmConf = (prevResult: unknown, extra: Record<string, unknown> = {}, mappings: unknown[] = MAPPINGS) => ({
  cniVersion: '1.0.0', name: 'pmnet', type: 'portmap', capabilities: { portMappings: true }, runtimeConfig: { portMappings: mappings }, prevResult, ...extra,
});

/** One UDP round trip from `ns`, sent from a fixed source port (so a second call is the same conntrack flow). */
function udpFrom(ns: string, srcPort: number, host: string, port: number): boolean {
  const file = join(sb.dir, 'udp-from.cjs');
  writeFileSync(file, `
const s = require('dgram').createSocket('udp4');
const done = (ok) => { process.stdout.write(ok ? 'answered' : 'silent'); process.exit(0); };
setTimeout(() => done(false), 1000);
s.on('message', () => done(true));
s.on('error', () => done(false));
s.bind(${srcPort}, () => s.send('hi', ${port}, '${host}'));
`);
  return spawnSync('ip', ['netns', 'exec', ns, process.execPath, file], { encoding: 'utf8' }).stdout === 'answered';
}

describe('portmap', () => {
  it('publishes ports to the WAN, to localhost, to the host address, and hairpin; CHECK; DEL without prevResult or netns closes them', async () => {
    const peer = wanPeer();
    const a = bridgeAdd('ctr-a');
    const b = bridgeAdd('ctr-b');
    await net.serve(a.ns, [80], [81]);
    const add = sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-a', netns: a.path }, pmConf(a.result));
    expect(add.code, add.stdout + add.stderr).toBe(0);
    expect(add.json).toEqual(a.result);

    expect(net.reach(peer, WAN, 18080)).toBe(true); // WAN → host port (PREROUTING)
    expect(net.reach(peer, WAN, 18081, 'udp')).toBe(true);
    expect(net.reach(peer, WAN, 18082)).toBe(true); // bound to the WAN address
    expect(net.reach(sb.host, '127.0.0.1', 18080)).toBe(true); // localhost (OUTPUT, route_localnet, masquerade)
    expect(net.reach(sb.host, WAN, 18080)).toBe(true); // the host's own address
    expect(net.reach(a.ns, WAN, 18080)).toBe(true); // hairpin: the container through its own published port
    expect(net.reach(b.ns, WAN, 18080)).toBe(true); // a neighbour on the bridge
    expect(net.reach(b.ns, '10.70.0.1', 18082)).toBe(false); // 18082 is published on the WAN address only
    expect(net.reach(peer, WAN, 18083)).toBe(false);
    expect(sb.inHost(['cat', '/proc/sys/net/ipv4/conf/pmbr0/route_localnet']).stdout.trim()).toBe('1');

    const check = sb.plugin(PORTMAP, { command: 'CHECK', containerId: 'ctr-a', netns: a.path }, pmConf(a.result));
    expect(check.code, check.stdout).toBe(0);
    // A rule removed by hand: CHECK says which.
    const dnat = nat().split('\n').find((l) => /^-A CNI-DN-\S+ -p tcp -m tcp --dport 18080 -j DNAT/.test(l))!;
    must(['ip', 'netns', 'exec', sb.host, 'iptables', '-t', 'nat', ...dnat.replace('-A ', '-D ').split(' ')]);
    const bad = sb.plugin(PORTMAP, { command: 'CHECK', containerId: 'ctr-a', netns: a.path }, pmConf(a.result));
    expect(bad.code).toBe(1);
    expect(bad.json).toMatchObject({ code: 115 });
    expect(bad.json.details).toContain('--dport 18080 -j DNAT --to-destination');
    // Re-ADD repairs it.
    expect(sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-a', netns: a.path }, pmConf(a.result)).code).toBe(0);
    expect(sb.plugin(PORTMAP, { command: 'CHECK', containerId: 'ctr-a', netns: a.path }, pmConf(a.result)).code).toBe(0);
    expect(nat().split('\n').filter((l) => l.includes('--dport 18080 -j DNAT'))).toHaveLength(1);

    // DEL as a runtime does after the container died: no prevResult, no namespace.
    const conf = pmConf(undefined);
    delete (conf as Record<string, unknown>).prevResult;
    for (let i = 0; i < 2; i++) {
      const del = sb.plugin(PORTMAP, { command: 'DEL', containerId: 'ctr-a' }, conf);
      expect(del.code, del.stdout).toBe(0);
    }
    expect(nat()).not.toMatch(/CNI-DN-/);
    expect(nat()).toContain(':CNI-HOSTPORT-DNAT'); // the shared chains stay, as the reference's do
    expect(net.reach(peer, WAN, 18080)).toBe(false);
    expect(net.reach(sb.host, '127.0.0.1', 18080)).toBe(false);
  });

  it('writes the nat table exactly as the reference portmap does for the same input', () => {
    const ref = new Sandbox('pmref');
    try {
      const ours = bridgeAdd('ctr-1');
      const theirs = bridgeAdd('ctr-1', ref);
      const cfg = { conditionsV4: ['-d', '1.2.3.4'] };
      const mappings = [...MAPPINGS, { hostPort: 18090, containerPort: 90, protocol: 'sctp' }, ...Array.from({ length: 16 }, (_, i) => ({ hostPort: 20000 + i, containerPort: 1000 + i, protocol: 'tcp' }))];
      expect(sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-1', netns: ours.path }, pmConf(ours.result, cfg, mappings)).code).toBe(0);
      const r = ref.plugin(REF_PORTMAP, { command: 'ADD', containerId: 'ctr-1', netns: theirs.path, path: '/usr/lib/cni' }, pmConf(theirs.result, cfg, mappings));
      expect(r.code, r.stdout).toBe(0);
      const lines = (s: Sandbox) => nat(s).split('\n').filter((l) => /CNI-(DN|HOSTPORT)/.test(l)).sort();
      expect(lines(sb)).toEqual(lines(ref));
      // 18 tcp ports: two entry rules (multiport takes 15 at most).
      expect(lines(sb).filter((l) => l.startsWith('-A CNI-HOSTPORT-DNAT') && l.includes('-p tcp')).length).toBe(2);
      expect(sb.plugin(PORTMAP, { command: 'CHECK', containerId: 'ctr-1', netns: ours.path }, pmConf(ours.result, cfg, mappings)).code).toBe(0);
    } finally {
      ref.cleanup();
    }
  });

  it('snat:false, masqAll, markMasqBit and externalSetMarkChain shape the mark rules', () => {
    const a = bridgeAdd('ctr-a');
    expect(sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-a', netns: a.path }, pmConf(a.result, { snat: false })).code).toBe(0);
    expect(nat()).not.toContain('CNI-HOSTPORT-SETMARK');
    expect(nat()).toMatch(/-A CNI-DN-\S+ -p tcp -m tcp --dport 18080 -j DNAT --to-destination 10\.70\.0\.\d+:80/);
    expect(sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-a', netns: a.path }, pmConf(a.result, { masqAll: true, markMasqBit: 5 })).code).toBe(0);
    const t = nat();
    expect(t).toContain('-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x20/0x20');
    expect(t).toContain('-A CNI-HOSTPORT-MASQ -m mark --mark 0x20/0x20 -j MASQUERADE');
    expect(t).toMatch(/-A CNI-DN-\S+ -p tcp -m tcp --dport 18080 -j CNI-HOSTPORT-SETMARK/); // every source
    expect(t).not.toContain('-s 127.0.0.1/32');
    must(['ip', 'netns', 'exec', sb.host, 'iptables', '-t', 'nat', '-N', 'MY-MARK']);
    expect(sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-a', netns: a.path }, pmConf(a.result, { externalSetMarkChain: 'MY-MARK' })).code).toBe(0);
    expect(nat()).toMatch(/-A CNI-DN-\S+ -s 10\.70\.0\.0\/24 -p tcp -m tcp --dport 18080 -j MY-MARK/);
  });

  it('no mappings: result passed through, no rules, no error; bad mappings: an error and nothing written', () => {
    const a = bridgeAdd('ctr-a');
    const before = nat();
    const none = sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-a', netns: a.path }, pmConf(a.result, {}, []));
    expect(none.code).toBe(0);
    expect(none.json).toEqual(a.result);
    expect(nat()).toBe(before);
    const noCap = sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-a', netns: a.path }, { cniVersion: '1.0.0', name: 'pmnet', type: 'portmap', prevResult: a.result });
    expect(noCap.code).toBe(0);
    for (const [bad, why] of [
      [{ hostPort: 70000, containerPort: 80, protocol: 'tcp' }, /port must be 1-65535/],
      [{ hostPort: 80, containerPort: 0, protocol: 'tcp' }, /port must be 1-65535/],
      [{ hostPort: 80, containerPort: 80, protocol: 'icmp' }, /protocol must be tcp, udp or sctp/],
      [{ hostPort: 80, containerPort: 80, protocol: 'tcp', hostIP: '10.0.0.0/33' }, /hostIP must be an IP address/],
      [{ hostPort: '80; reboot', containerPort: 80 }, /hostPort/],
    ] as const) {
      const r = sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-a', netns: a.path }, pmConf(a.result, {}, [bad]));
      expect(r.code).toBe(1);
      expect(r.json).toMatchObject({ code: 7 });
      expect(r.json.details).toMatch(why);
    }
    const both = sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-a', netns: a.path }, pmConf(a.result, { externalSetMarkChain: 'X', markMasqBit: 3 }));
    expect(both.json).toMatchObject({ code: 7 });
    const missing = sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-a', netns: a.path }, { ...pmConf(undefined), prevResult: undefined });
    expect(missing.json).toMatchObject({ code: 7, msg: expect.stringContaining('prevResult') });
    expect(nat()).toBe(before);
  });

  it('GC removes the chains of containers no longer valid on this network, and no other network\'s', () => {
    const a = bridgeAdd('ctr-a');
    const b = bridgeAdd('ctr-b');
    expect(sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-a', netns: a.path }, pmConf(a.result)).code).toBe(0);
    expect(sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-b', netns: b.path }, pmConf(b.result, {}, [{ hostPort: 19000, containerPort: 80, protocol: 'tcp' }])).code).toBe(0);
    expect(sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-b', netns: b.path }, { ...pmConf(b.result, {}, [{ hostPort: 19001, containerPort: 80, protocol: 'tcp' }]), name: 'othernet' }).code).toBe(0);
    const gc = sb.plugin(PORTMAP, { command: 'GC' }, { cniVersion: '1.1.0', name: 'pmnet', type: 'portmap', 'cni.dev/valid-attachments': [{ containerID: 'ctr-b', ifname: 'eth0' }] });
    expect(gc.code, gc.stdout).toBe(0);
    const t = nat();
    expect(t).not.toContain('dnat name: \\"pmnet\\" id: \\"ctr-a\\"');
    expect(t).toContain('dnat name: \\"pmnet\\" id: \\"ctr-b\\"');
    expect(t).toContain('dnat name: \\"othernet\\" id: \\"ctr-b\\"');
    expect(t.match(/^:CNI-DN-/gm)).toHaveLength(2);
  });

  it('IPv6: a dual-stack container gets its v6 rules in ip6tables, CHECK covers both, DEL removes both', () => {
    const c = sb.container();
    const conf = { cniVersion: '1.0.0', name: 'pm6', type: 'bridge', bridge: 'pm6br', isGateway: true, ipam: { type: 'host-local', ranges: [[{ subnet: '10.71.0.0/24' }], [{ subnet: 'fd71::/64' }]], dataDir: join(sb.dir, 'ipam') } };
    const b = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'c6', netns: c.path }, conf);
    expect(b.code, b.stdout).toBe(0);
    const pm = { ...pmConf(b.json), name: 'pm6' };
    expect(sb.plugin(PORTMAP, { command: 'ADD', containerId: 'c6', netns: c.path }, pm).code).toBe(0);
    const v6 = nat(sb, 'ip6tables-save');
    const ip6 = (b.json.ips as { address: string }[]).find((i) => i.address.includes(':'))!.address.split('/')[0];
    expect(v6).toContain(`-j DNAT --to-destination [${ip6}]:80`);
    expect(v6).toContain('-s fd71::/64 -p tcp -m tcp --dport 18080 -j CNI-HOSTPORT-SETMARK');
    expect(v6).not.toContain('127.0.0.1');
    expect(v6).not.toContain('--dport 18082'); // the v4 hostIP mapping is not published on v6
    expect(sb.plugin(PORTMAP, { command: 'CHECK', containerId: 'c6', netns: c.path }, pm).code).toBe(0);
    expect(sb.plugin(PORTMAP, { command: 'DEL', containerId: 'c6', netns: c.path }, pm).code).toBe(0);
    expect(nat(sb, 'ip6tables-save')).not.toContain('CNI-DN-');
    expect(nat()).not.toContain('CNI-DN-');
  });

  it('deletes the stale UDP conntrack entries of its published ports on ADD, as the reference does', async () => {
    const peer = wanPeer();
    // Connection tracking runs in the host namespace once a nat rule exists there.
    const other = bridgeAdd('ctr-o');
    expect(sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-o', netns: other.path }, pmConf(other.result, {}, [{ hostPort: 18090, containerPort: 80, protocol: 'tcp' }])).code).toBe(0);
    const c = bridgeAdd('ctr-u');
    await net.serve(c.ns, [], [81]);
    // A client that kept sending while nothing was published: its flow has a conntrack entry without DNAT.
    expect(udpFrom(peer, 40053, WAN, 18091)).toBe(false);
    const add = sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-u', netns: c.path }, pmConf(c.result, {}, [{ hostPort: 18091, containerPort: 81, protocol: 'udp' }]));
    expect(add.code, add.stdout + add.stderr).toBe(0);
    expect(add.stderr).not.toContain('could not delete');
    // The same flow (same source port) now reaches the container: the old entry is gone.
    expect(udpFrom(peer, 40053, WAN, 18091)).toBe(true);
  });
});
