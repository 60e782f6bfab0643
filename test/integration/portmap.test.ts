import { spawn, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, must, Sandbox } from '../helpers/sandbox.js';
import { Traffic } from '../helpers/traffic.js';
import { BACKENDS, type TestBackend } from '../helpers/backends.js';

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
/** The reference's nftables table of a family as `nft list` prints it ('' when absent). */
const nftTable = (fam: 'ip' | 'ip6' = 'ip', s = sb) => s.inHost(['nft', 'list', 'table', fam, 'cni_hostport']).stdout;
/** What portmap wrote in a backend, as text: the nat table, or both cni_hostport tables. */
const written = (backend: TestBackend, s = sb) => (backend === 'iptables' ? nat(s) + nat(s, 'ip6tables-save') : nftTable('ip', s) + nftTable('ip6', s));
/** The rules of a container in `nft list` form (by their comment, the container id). */
const nftRulesOf = (id: string, fam: 'ip' | 'ip6' = 'ip') => nftTable(fam).split('\n').map((l) => l.trim()).filter((l) => l.endsWith(`comment "${id}"`));

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

const pmConfOf = (prevResult: unknown, extra: Record<string, unknown> = {}, mappings: unknown[] = MAPPINGS) => ({
  cniVersion: '1.0.0', name: 'pmnet', type: 'portmap', capabilities: { portMappings: true }, runtimeConfig: { portMappings: mappings }, prevResult, ...extra,
});

/** A TCP connection from `ns` to [host]:port (v6) gets an answer; tried a few times while the address may still be tentative. */
function reach6(ns: string, host: string, port: number, tries = 3): boolean {
  const file = join(sb.dir, 'probe6.cjs');
  writeFileSync(file, `
const c = require('net').connect({ host: '${host}', port: ${port} });
const done = (ok) => { process.stdout.write(ok ? 'open' : 'closed'); process.exit(0); };
setTimeout(() => done(false), 1500);
c.on('data', () => done(true));
c.on('error', () => done(false));
`);
  for (let i = 0; i < tries; i++) if (spawnSync('ip', ['netns', 'exec', ns, process.execPath, file], { encoding: 'utf8' }).stdout === 'open') return true;
  return false;
}

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

describe.each(BACKENDS)('portmap (%s)', (backend) => {
  const pmConf = (prevResult: unknown, extra: Record<string, unknown> = {}, mappings: unknown[] = MAPPINGS) => pmConfOf(prevResult, { backend, ...extra }, mappings);

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
    if (backend === 'iptables') {
      const dnat = nat().split('\n').find((l) => /^-A CNI-DN-\S+ -p tcp -m tcp --dport 18080 -j DNAT/.test(l))!;
      must(['ip', 'netns', 'exec', sb.host, 'iptables', '-t', 'nat', ...dnat.replace('-A ', '-D ').split(' ')]);
    } else {
      const line = sb.inHost(['nft', '-a', 'list', 'chain', 'ip', 'cni_hostport', 'hostports']).stdout.split('\n').find((l) => l.includes('tcp dport 18080 dnat'))!;
      must(['ip', 'netns', 'exec', sb.host, 'nft', 'delete', 'rule', 'ip', 'cni_hostport', 'hostports', 'handle', /# handle (\d+)/.exec(line)![1]]);
    }
    const bad = sb.plugin(PORTMAP, { command: 'CHECK', containerId: 'ctr-a', netns: a.path }, pmConf(a.result));
    expect(bad.code).toBe(1);
    expect(bad.json).toMatchObject({ code: 115 });
    expect(bad.json.details).toContain(backend === 'iptables' ? '--dport 18080 -j DNAT --to-destination' : `tcp dport 18080 dnat to ${a.ip}:80 comment "ctr-a"`);
    // Re-ADD repairs it, without a second copy of anything.
    const before = written(backend).split('\n').length;
    expect(sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-a', netns: a.path }, pmConf(a.result)).code).toBe(0);
    expect(sb.plugin(PORTMAP, { command: 'CHECK', containerId: 'ctr-a', netns: a.path }, pmConf(a.result)).code).toBe(0);
    expect(written(backend).split('\n').filter((l) => (backend === 'iptables' ? l.includes('--dport 18080 -j DNAT') : l.includes('tcp dport 18080 dnat')))).toHaveLength(1);
    expect(sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-a', netns: a.path }, pmConf(a.result)).code).toBe(0);
    expect(written(backend).split('\n').length).toBe(before + 1);
    // Nothing in the other backend.
    expect(written(backend === 'iptables' ? 'nftables' : 'iptables')).not.toMatch(/"ctr-a"|CNI-DN-|CNI-HOSTPORT/);

    // DEL as a runtime does after the container died: no prevResult, no namespace.
    const conf = pmConf(undefined);
    delete (conf as Record<string, unknown>).prevResult;
    for (let i = 0; i < 2; i++) {
      const del = sb.plugin(PORTMAP, { command: 'DEL', containerId: 'ctr-a' }, conf);
      expect(del.code, del.stdout).toBe(0);
    }
    if (backend === 'iptables') {
      expect(nat()).not.toMatch(/CNI-DN-/);
      expect(nat()).toContain(':CNI-HOSTPORT-DNAT'); // the shared chains stay, as the reference's do
    } else {
      expect(nftTable()).not.toContain('ctr-a');
      expect(nftTable()).toContain('chain hostports {'); // the table stays, as the reference's does
    }
    expect(net.reach(peer, WAN, 18080)).toBe(false);
    expect(net.reach(sb.host, '127.0.0.1', 18080)).toBe(false);
  });

  it('no mappings: result passed through, no rules, no error; bad mappings: an error and nothing written', () => {
    const a = bridgeAdd('ctr-a');
    const before = written(backend);
    const none = sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-a', netns: a.path }, pmConf(a.result, {}, []));
    expect(none.code).toBe(0);
    expect(none.json).toEqual(a.result);
    expect(written(backend)).toBe(before);
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
    expect(written(backend)).toBe(before);
  });

  it('GC removes the chains of containers no longer valid on this network, and no other network\'s', () => {
    const a = bridgeAdd('ctr-a');
    const b = bridgeAdd('ctr-b');
    expect(sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-a', netns: a.path }, pmConf(a.result)).code).toBe(0);
    expect(sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-b', netns: b.path }, pmConf(b.result, {}, [{ hostPort: 19000, containerPort: 80, protocol: 'tcp' }])).code).toBe(0);
    // ctr-b on a second network too (an address of its own there: here another bridge ADD's).
    const b2 = bridgeAdd('ctr-b2');
    expect(sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-b', netns: b.path }, { ...pmConf(b2.result, {}, [{ hostPort: 19001, containerPort: 80, protocol: 'tcp' }]), name: 'othernet' }).code).toBe(0);
    const gc = sb.plugin(PORTMAP, { command: 'GC' }, { cniVersion: '1.1.0', name: 'pmnet', type: 'portmap', backend, 'cni.dev/valid-attachments': [{ containerID: 'ctr-b', ifname: 'eth0' }] });
    expect(gc.code, gc.stdout).toBe(0);
    if (backend === 'iptables') {
      const t = nat();
      expect(t).not.toContain('dnat name: \\"pmnet\\" id: \\"ctr-a\\"');
      expect(t).toContain('dnat name: \\"pmnet\\" id: \\"ctr-b\\"');
      expect(t).toContain('dnat name: \\"othernet\\" id: \\"ctr-b\\"');
      expect(t.match(/^:CNI-DN-/gm)).toHaveLength(2);
    } else {
      expect(nftRulesOf('ctr-a')).toEqual([]);
      expect(nftTable()).not.toContain('net=pmnet id=ctr-a');
      // ctr-b's rules of both networks (19000 on pmnet, 19001 on othernet) and their owner records stay.
      expect(nftRulesOf('ctr-b').filter((l) => / dport 1900[01] dnat/.test(l))).toHaveLength(2);
      expect(nftTable()).toContain('net=pmnet id=ctr-b');
      expect(nftTable()).toContain('net=othernet id=ctr-b');
      // A GC with no valid attachment on othernet takes othernet's record, and leaves ctr-b's rules (pmnet still has it).
      expect(sb.plugin(PORTMAP, { command: 'GC' }, { cniVersion: '1.1.0', name: 'othernet', type: 'portmap', backend, 'cni.dev/valid-attachments': [] }).code).toBe(0);
      expect(nftTable()).not.toContain('net=othernet id=ctr-b');
      expect(nftTable()).toContain('net=pmnet id=ctr-b');
    }
  });

  it('IPv6: a dual-stack container gets its v6 rules, reachable from the host; CHECK covers both families, DEL removes both', async () => {
    const c = sb.container();
    const conf = { cniVersion: '1.0.0', name: 'pm6', type: 'bridge', bridge: 'pm6br', isGateway: true, ipam: { type: 'host-local', ranges: [[{ subnet: '10.71.0.0/24' }], [{ subnet: 'fd71::/64' }]], dataDir: join(sb.dir, 'ipam') } };
    const b = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'c6', netns: c.path }, conf);
    expect(b.code, b.stdout).toBe(0);
    const pm = { ...pmConf(b.json), name: 'pm6' };
    expect(sb.plugin(PORTMAP, { command: 'ADD', containerId: 'c6', netns: c.path }, pm).code).toBe(0);
    const ip6 = (b.json.ips as { address: string }[]).find((i) => i.address.includes(':'))!.address.split('/')[0];
    if (backend === 'iptables') {
      const v6 = nat(sb, 'ip6tables-save');
      expect(v6).toContain(`-j DNAT --to-destination [${ip6}]:80`);
      expect(v6).toContain('-s fd71::/64 -p tcp -m tcp --dport 18080 -j CNI-HOSTPORT-SETMARK');
      expect(v6).not.toContain('127.0.0.1');
      expect(v6).not.toContain('--dport 18082'); // the v4 hostIP mapping is not published on v6
    } else {
      const v6 = nftRulesOf('c6', 'ip6');
      expect(v6).toContain(`tcp dport 18080 dnat to [${ip6}]:80 comment "c6"`);
      expect(v6).toContain(`ip6 saddr fd71::/64 ip6 daddr ${ip6} ct status dnat masquerade comment "c6"`);
      expect(v6.join('\n')).not.toContain('127.0.0.1');
      expect(v6.join('\n')).not.toContain('dport 18082'); // the v4 hostIP mapping is not published on v6
    }
    // Real v6 traffic: the host to its own bridge address's published port reaches the container's [::]:80.
    const server6 = join(sb.dir, 'server6.cjs');
    writeFileSync(server6, "require('net').createServer((c) => { c.end('ok'); c.on('error', () => {}); }).listen(80, '::', () => process.stdout.write('ready'));");
    must(['ip', 'netns', 'exec', c.name, 'ip', 'link', 'set', 'lo', 'up']);
    const srv = spawn('ip', ['netns', 'exec', c.name, process.execPath, server6], { stdio: ['ignore', 'pipe', 'ignore'] });
    try {
      await new Promise<void>((res, rej) => { srv.stdout!.on('data', () => res()); srv.on('exit', () => rej(new Error('v6 server exited'))); });
      const gw6 = 'fd71::1';
      // The v6 address may still be tentative (DAD) right after bridge ADD; the probe retries inside its own timeout.
      expect(reach6(sb.host, gw6, 18080)).toBe(true);
      expect(sb.plugin(PORTMAP, { command: 'CHECK', containerId: 'c6', netns: c.path }, pm).code).toBe(0);
      expect(sb.plugin(PORTMAP, { command: 'DEL', containerId: 'c6', netns: c.path }, pm).code).toBe(0);
      expect(reach6(sb.host, gw6, 18080, 1)).toBe(false);
    } finally {
      srv.kill('SIGKILL');
    }
    expect(written(backend)).not.toMatch(/CNI-DN-|"c6"/);
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

describe('portmap (iptables layout)', () => {
  const pmConf = pmConfOf;
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
});

/** The reference portmap's nftables ADD for one container, as its code (knftables) writes the transaction for `nft -f`. */
function referenceNftAdd(fam: 'ip' | 'ip6', id: string, ip: string, mappings: { hostPort: number; containerPort: number; protocol: string; hostIP?: string }[], opts: { snat?: boolean; conditions?: string[]; hostipChain?: boolean } = {}): string {
  const t = `${fam} cni_hostport`;
  const to = (port: number) => (fam === 'ip6' ? `[${ip}]:${port}` : `${ip}:${port}`);
  const cond = opts.conditions?.length ? `${opts.conditions.join(' ')} ` : '';
  const lines = [
    `add table ${t} { comment "CNI portmap plugin" ; }`,
    `add chain ${t} hostports`,
    `add chain ${t} hostip_hostports`,
    `add chain ${t} hostports_all`,
    `flush chain ${t} hostports_all`,
    `add rule ${t} hostports_all jump hostip_hostports`,
    `add rule ${t} hostports_all jump hostports`,
    `add chain ${t} prerouting { type nat hook prerouting priority -100 ; }`,
    `flush chain ${t} prerouting`,
    `add rule ${t} prerouting ${cond}fib daddr type local jump hostports_all`,
    `add chain ${t} output { type nat hook output priority -100 ; }`,
    `flush chain ${t} output`,
    `add rule ${t} output ${cond}fib daddr type local jump hostports_all`,
  ];
  if (opts.snat !== false) lines.push(`add chain ${t} masquerading { type nat hook postrouting priority 100 ; }`);
  for (const m of mappings) {
    // Releases before the hostports-only layout put hostIP rules in hostip_hostports; DEL still looks there.
    const chain = m.hostIP && opts.hostipChain ? 'hostip_hostports' : 'hostports';
    lines.push(`add rule ${t} ${chain} ${m.hostIP ? `${fam} daddr ${m.hostIP} ` : ''}${m.protocol} dport ${m.hostPort} dnat to ${to(m.containerPort)} comment "${id}"`);
  }
  if (opts.snat !== false) {
    lines.push(`add rule ${t} masquerading ${fam} saddr ${ip} ${fam} daddr ${ip} masquerade comment "${id}"`);
    if (fam === 'ip') lines.push(`add rule ${t} masquerading ip saddr 127.0.0.1 ip daddr ${ip} masquerade comment "${id}"`);
  }
  return `${lines.join('\n')}\n`;
}

describe('portmap (nftables layout)', () => {
  const pmConf = (prevResult: unknown, extra: Record<string, unknown> = {}, mappings: unknown[] = MAPPINGS) => pmConfOf(prevResult, { backend: 'nftables', ...extra }, mappings);

  it('writes the reference\'s tables ip/ip6 cni_hostport: chains, hooks, one rule per mapping commented with the container id', () => {
    const a = bridgeAdd('ctr-a');
    const mappings = [...MAPPINGS, { hostPort: 18090, containerPort: 90, protocol: 'sctp' }];
    expect(sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-a', netns: a.path }, pmConf(a.result, {}, mappings)).code).toBe(0);
    expect(nftTable()).toBe(`table ip cni_hostport {
	comment "CNI portmap plugin"
	chain hostports {
		tcp dport 18080 dnat to ${a.ip}:80 comment "ctr-a"
		udp dport 18081 dnat to ${a.ip}:81 comment "ctr-a"
		ip daddr ${WAN} tcp dport 18082 dnat to ${a.ip}:80 comment "ctr-a"
		sctp dport 18090 dnat to ${a.ip}:90 comment "ctr-a"
	}

	chain hostip_hostports {
	}

	chain hostports_all {
		jump hostip_hostports
		jump hostports
	}

	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		fib daddr type local jump hostports_all
	}

	chain output {
		type nat hook output priority -100; policy accept;
		fib daddr type local jump hostports_all
	}

	chain masquerading {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 10.70.0.0/24 ip daddr ${a.ip} ct status dnat masquerade comment "ctr-a"
		ip saddr 127.0.0.1 ip daddr ${a.ip} ct status dnat masquerade comment "ctr-a"
	}

	chain cni_ts_owners {
		return comment "net=pmnet id=ctr-a"
	}
}
`);
    expect(nftTable('ip6')).toBe(''); // an IPv4-only container: no ip6 table
    expect(nat()).not.toMatch(/CNI-DN-|CNI-HOSTPORT/); // and nothing on the iptables side
    // snat:false: no masquerading; masqAll: every source of published traffic.
    expect(sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-a', netns: a.path }, pmConf(a.result, { snat: false })).code).toBe(0);
    expect(nftRulesOf('ctr-a').filter((l) => l.includes('masquerade'))).toEqual([]);
    expect(sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-a', netns: a.path }, pmConf(a.result, { masqAll: true })).code).toBe(0);
    expect(nftRulesOf('ctr-a').filter((l) => l.includes('masquerade'))).toEqual([`ip daddr ${a.ip} ct status dnat masquerade comment "ctr-a"`]);
    expect(sb.plugin(PORTMAP, { command: 'CHECK', containerId: 'ctr-a', netns: a.path }, pmConf(a.result, { masqAll: true })).code).toBe(0);
    expect(sb.plugin(PORTMAP, { command: 'CHECK', containerId: 'ctr-a', netns: a.path }, pmConf(a.result)).json).toMatchObject({ code: 115 });
  });

  it('conditionsV4 in nft syntax restrict the entry rules (real traffic); options of the other backend are refused with the reference\'s message', async () => {
    const peer = wanPeer();
    const a = bridgeAdd('ctr-a');
    await net.serve(a.ns, [80]);
    const cfg = { conditionsV4: ['ip', 'saddr', '!=', PEER] };
    const add = sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-a', netns: a.path }, pmConf(a.result, cfg));
    expect(add.code, add.stdout).toBe(0);
    expect(nftTable()).toContain(`ip saddr != ${PEER} fib daddr type local jump hostports_all`);
    expect(net.reach(sb.host, WAN, 18080)).toBe(true);
    expect(net.reach(peer, WAN, 18080)).toBe(false); // excluded by the condition
    expect(sb.plugin(PORTMAP, { command: 'CHECK', containerId: 'ctr-a', netns: a.path }, pmConf(a.result, cfg)).code).toBe(0);
    const before = written('nftables') + written('iptables');
    const refused = (extra: Record<string, unknown>) => sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-b', netns: a.path }, { ...pmConf(a.result), ...extra }).json;
    expect(refused({ externalSetMarkChain: 'MY-MARK' })).toMatchObject({ code: 7, details: expect.stringContaining('nftables backend was requested but configuration contains iptables-specific options [externalSetMarkChain]') });
    expect(refused({ conditionsV4: ['-s', '1.2.3.4'], conditionsV6: ['!', '-s', '::1'] })).toMatchObject({ code: 7, details: expect.stringContaining('iptables-specific options [conditionsV4 conditionsV6]') });
    // No backend configured: iptables (the default here, both tools present), and nft-syntax conditions are the other backend's.
    expect(refused({ backend: undefined, conditionsV6: ['ip6', 'saddr', '::1'] })).toMatchObject({ code: 7, msg: 'iptables backend was requested but configuration contains nftables-specific options [conditionsV6]' });
    expect(refused({ conditionsV4: ['ip saddr 1.2.3.4 accept ; flush ruleset'] })).toMatchObject({ code: 7, details: expect.stringContaining('must not contain ";" or "#"') });
    expect(written('nftables') + written('iptables')).toBe(before);
    expect(sb.plugin(PORTMAP, { command: 'STATUS' }, { ...pmConf(undefined), cniVersion: '1.1.0' }).code).toBe(0);
  });

  it('DEL removes what the reference portmap\'s nftables ADD wrote for the container (both families, its hostip_hostports too), and only that', async () => {
    const peer = wanPeer();
    const x = bridgeAdd('ref-x');
    await net.serve(x.ns, [80]);
    const maps = [{ hostPort: 18080, containerPort: 80, protocol: 'tcp' }, { hostPort: 18082, containerPort: 80, protocol: 'tcp', hostIP: WAN }];
    must(['ip', 'netns', 'exec', sb.host, 'nft', '-f', '-'], referenceNftAdd('ip', 'ref-x', x.ip, maps, { hostipChain: true }));
    must(['ip', 'netns', 'exec', sb.host, 'nft', '-f', '-'], referenceNftAdd('ip', 'ref-y', '10.70.0.200', [{ hostPort: 18085, containerPort: 80, protocol: 'udp' }]));
    must(['ip', 'netns', 'exec', sb.host, 'nft', '-f', '-'], referenceNftAdd('ip6', 'ref-x', 'fd70::2', [{ hostPort: 18080, containerPort: 80, protocol: 'tcp' }]));
    must(['ip', 'netns', 'exec', sb.host, 'nft', '-f', '-'], referenceNftAdd('ip6', 'ref-y', 'fd70::3', [{ hostPort: 18085, containerPort: 80, protocol: 'udp' }]));
    // The reference's rules work (our understanding of its layout is right) ...
    expect(net.reach(peer, WAN, 18080)).toBe(true);
    expect(net.reach(peer, WAN, 18082)).toBe(true);
    expect(nftRulesOf('ref-x').length).toBe(4);
    expect(nftRulesOf('ref-x', 'ip6').length).toBe(2);
    // ... and our DEL, as a runtime sends it (no prevResult, no namespace, the default config: no backend), removes them.
    const conf = pmConfOf(undefined);
    delete (conf as Record<string, unknown>).prevResult;
    const del = sb.plugin(PORTMAP, { command: 'DEL', containerId: 'ref-x' }, conf);
    expect(del.code, del.stdout).toBe(0);
    expect(nftRulesOf('ref-x')).toEqual([]);
    expect(nftRulesOf('ref-x', 'ip6')).toEqual([]);
    expect(net.reach(peer, WAN, 18080)).toBe(false);
    // The other container's stay, untouched.
    expect(nftRulesOf('ref-y')).toEqual(['udp dport 18085 dnat to 10.70.0.200:80 comment "ref-y"', 'ip saddr 10.70.0.200 ip daddr 10.70.0.200 masquerade comment "ref-y"', 'ip saddr 127.0.0.1 ip daddr 10.70.0.200 masquerade comment "ref-y"']);
    expect(nftRulesOf('ref-y', 'ip6')).toEqual(['udp dport 18085 dnat to [fd70::3]:80 comment "ref-y"', 'ip6 saddr fd70::3 ip6 daddr fd70::3 masquerade comment "ref-y"']);
    // Our ADD over the reference's table keeps its structure and its other container.
    expect(sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ref-x', netns: x.path }, pmConf(x.result)).code).toBe(0);
    expect(net.reach(peer, WAN, 18080)).toBe(true);
    expect(nftRulesOf('ref-y').length).toBe(3);
    expect(sb.plugin(PORTMAP, { command: 'DEL', containerId: 'ref-x' }, conf).code).toBe(0);
    expect(nftRulesOf('ref-x')).toEqual([]);
  });

  it('a network that switched backend: DEL under the new one removes what ADD made under the old one, both ways', async () => {
    const peer = wanPeer();
    const a = bridgeAdd('ctr-a');
    await net.serve(a.ns, [80]);
    const conf = (backend: TestBackend) => {
      const c = pmConfOf(undefined, { backend });
      delete (c as Record<string, unknown>).prevResult;
      return c;
    };
    for (const [from, to] of [['iptables', 'nftables'], ['nftables', 'iptables']] as const) {
      expect(sb.plugin(PORTMAP, { command: 'ADD', containerId: 'ctr-a', netns: a.path }, pmConfOf(a.result, { backend: from })).code).toBe(0);
      expect(net.reach(peer, WAN, 18080)).toBe(true);
      expect(written(from)).toMatch(from === 'iptables' ? /CNI-DN-/ : /"ctr-a"/);
      const del = sb.plugin(PORTMAP, { command: 'DEL', containerId: 'ctr-a' }, conf(to));
      expect(del.code, del.stdout).toBe(0);
      expect(written(from)).not.toMatch(/CNI-DN-|"ctr-a"|id=ctr-a/);
      expect(net.reach(peer, WAN, 18080)).toBe(false);
    }
  });
});
