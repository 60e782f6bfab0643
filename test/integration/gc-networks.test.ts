import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, must, Sandbox } from '../helpers/sandbox.js';
import { stdHashHex } from '../../lib/pf/accounting/stdhash.js';

/**
 * GC is given the valid attachments of ONE network (CNI spec): it must
 * remove that network's stale resources and nothing else — not another
 * network's ifbs, accounting chains or saved tuning settings, and never a
 * resource without an owner record (the reference plugins', or this
 * suite's binaries' up to fb6743a), which only its DEL removes. Checked by
 * kernel state: the other network's qdiscs and ifb are there, its chains
 * still count real packets, its tuning file is there and restored by DEL.
 */
const BRIDGE = join(BIN, 'bridge');
const BW = join(BIN, 'bandwidth');
const TA = join(BIN, 'traffic-accounting');
const TUNING = join(BIN, 'tuning');
const PORTMAP = join(BIN, 'portmap');
const REF_BW = '/usr/lib/cni/bandwidth';
const REF_TUNING = '/usr/lib/cni/tuning';
const PEER_IP = '203.0.113.9';

let sb: Sandbox;
beforeEach(() => {
  sb = new Sandbox('gcn');
});
afterEach(() => sb.cleanup());

interface Net {
  name: string;
  bridge: string;
  subnet: string;
}
const NET_A: Net = { name: 'gcnet-a', bridge: 'gcbra', subnet: '10.91.0.0/24' };
const NET_B: Net = { name: 'gcnet-b', bridge: 'gcbrb', subnet: '10.92.0.0/24' };

const tuningDir = () => join(sb.dir, 'tuning');
const bridgeConf = (n: Net) => ({
  cniVersion: '1.1.0', name: n.name, type: 'bridge', bridge: n.bridge, isGateway: true, ipMasq: true,
  ipam: { type: 'host-local', subnet: n.subnet, routes: [{ dst: '0.0.0.0/0' }], dataDir: join(sb.dir, 'ipam') },
});
const BW_CONF = { ingressRate: 8_000_000, ingressBurst: 200_000, egressRate: 8_000_000, egressBurst: 200_000 };

/** An "outside" host beyond the local ranges, so the accounting chains count traffic to it. */
function outside(): string {
  const peer = sb.container();
  must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'add', 'out0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', peer.name]);
  must(['ip', 'netns', 'exec', sb.host, 'ip', 'addr', 'add', '203.0.113.1/24', 'dev', 'out0']);
  must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'set', 'out0', 'up']);
  must(['ip', 'netns', 'exec', peer.name, 'ip', 'addr', 'add', `${PEER_IP}/24`, 'dev', 'eth0']);
  must(['ip', 'netns', 'exec', peer.name, 'ip', 'link', 'set', 'eth0', 'up']);
  must(['ip', 'netns', 'exec', peer.name, 'ip', 'route', 'add', 'default', 'via', '203.0.113.1']);
  return peer.name;
}

interface Att {
  net: Net;
  id: string;
  ns: string;
  path: string;
  prev: any;
  veth: string;
  ip: string;
  instanceId?: string;
}

function attach(net: Net, id: string): Att {
  const c = sb.container();
  const b = sb.plugin(BRIDGE, { command: 'ADD', containerId: id, netns: c.path }, bridgeConf(net));
  expect(b.code, b.stdout).toBe(0);
  return { net, id, ns: c.name, path: c.path, prev: b.json, veth: b.json.interfaces[1].name, ip: b.json.ips[0].address.split('/')[0] };
}

const call = (a: Att, command: string) => ({ command, containerId: a.id, netns: a.path });
const taConf = (a: Att) => ({ cniVersion: '1.1.0', name: a.net.name, type: 'traffic-accounting', ...(a.instanceId ? { instanceId: a.instanceId } : {}) });
const tuningConf = (a: Att) => ({ cniVersion: '1.1.0', name: a.net.name, type: 'tuning', dataDir: tuningDir(), mtu: 1400 });
const portmapConf = (a: Att, port: number) => ({
  cniVersion: '1.1.0', name: a.net.name, type: 'portmap', capabilities: { portMappings: true },
  runtimeConfig: { portMappings: [{ hostPort: port, containerPort: 80, protocol: 'tcp' }] },
});

/** Our whole chain after bridge: bandwidth (ingress + egress), traffic-accounting, tuning, portmap. */
function chain(a: Att, port: number): void {
  const bw = sb.plugin(BW, call(a, 'ADD'), { cniVersion: '1.1.0', name: a.net.name, type: 'bandwidth', ...BW_CONF, prevResult: a.prev });
  expect(bw.code, bw.stdout).toBe(0);
  for (const [bin, conf] of [[TA, taConf(a)], [TUNING, tuningConf(a)], [PORTMAP, portmapConf(a, port)]] as const) {
    const r = sb.plugin(bin, call(a, 'ADD'), { ...conf, prevResult: bw.json });
    expect(r.code, `${bin}: ${r.stdout}`).toBe(0);
  }
}

function gc(net: Net, valid: Att[]): void {
  const attachments = valid.map((a) => ({ containerID: a.id, ifname: 'eth0' }));
  const confs: [string, Record<string, unknown>][] = [
    [BW, { type: 'bandwidth', ...BW_CONF }],
    [TA, { type: 'traffic-accounting' }],
    [TUNING, { type: 'tuning', dataDir: tuningDir(), mtu: 1400 }],
    [PORTMAP, { type: 'portmap' }],
    [BRIDGE, bridgeConf(net)],
  ];
  for (const [bin, conf] of confs) {
    const r = sb.plugin(bin, { command: 'GC' }, { ...conf, cniVersion: '1.1.0', name: net.name, 'cni.dev/valid-attachments': attachments });
    expect(r.code, `GC ${bin}: ${r.stdout}${r.stderr}`).toBe(0);
  }
}

const ifbName = (network: string, id: string) => `bwp${createHash('sha512').update(network + id).digest('hex').slice(0, 12)}`;
const legacyIfbName = (id: string) => `bwp${createHash('sha512').update(id).digest('hex').slice(0, 12)}`;
const hasLink = (name: string) => sb.inHost(['ip', 'link', 'show', 'dev', name]).code === 0;
const qdiscsOf = (dev: string) => sb.inHost(['tc', 'qdisc', 'show', 'dev', dev]).stdout;
const chainsOf = (instance: string) => ({ in: `AOS_${stdHashHex(instance)}_IN`, out: `AOS_${stdHashHex(instance)}_OUT` });
const filterSave = () => sb.inHost(['iptables-save', '-c', '-t', 'filter']).stdout;
const natSave = () => sb.inHost(['iptables-save', '-t', 'nat']).stdout;
const hasChain = (table: string, chain: string) => table.split('\n').some((l) => l.startsWith(`:${chain} `));
/** Bytes counted by a chain's counting rule (the one without a target). */
function counted(chain: string): number {
  const line = filterSave().split('\n').find((l) => l.includes(`-A ${chain} `) && !l.includes(' -j '));
  const m = line ? /^\[(\d+):(\d+)\]/.exec(line) : null;
  return m ? Number(m[2]) : NaN;
}
function ping(a: Att): void {
  const r = sb.inNs(a.ns, ['ping', '-c', '3', '-i', '0.2', '-W', '2', PEER_IP]);
  expect(r.code, r.stdout + r.stderr).toBe(0);
}
/** Both chains of the attachment count a real round trip to the outside. */
function expectCounting(a: Att): void {
  const c = chainsOf(a.instanceId ?? a.id);
  const before = [counted(c.in), counted(c.out)];
  expect(before.every(Number.isFinite), `${c.in}/${c.out} have counting rules`).toBe(true);
  ping(a);
  expect(counted(c.in)).toBeGreaterThan(before[0]);
  expect(counted(c.out)).toBeGreaterThan(before[1]);
}
/** ingress tbf + ingress qdisc on the veth, the ifb (with its tbf) it redirects to. */
function expectShaped(a: Att, ifb = ifbName(a.net.name, a.id)): void {
  expect(qdiscsOf(a.veth)).toMatch(/qdisc tbf 1: root .*rate 8Mbit/);
  expect(qdiscsOf(a.veth)).toContain('qdisc ingress ffff:');
  expect(hasLink(ifb), ifb).toBe(true);
  expect(qdiscsOf(ifb)).toMatch(/qdisc tbf 1: root .*rate 8Mbit/);
  expect(sb.inHost(['tc', 'filter', 'show', 'dev', a.veth, 'ingress']).stdout).toContain(`Redirect to device ${ifb}`);
}
const tuningFile = (a: { id: string }) => join(tuningDir(), `${a.id}_eth0.json`);
const mtuOf = (a: Att) => Number(sb.inNs(a.ns, ['cat', '/sys/class/net/eth0/mtu']).stdout.trim());
const dnatComment = (a: Att) => `dnat name: \\"${a.net.name}\\" id: \\"${a.id}\\"`;
const masqComment = (a: Att) => `name: \\"${a.net.name}\\" id: \\"${a.id}\\"`;

/** Everything `chain` made for the attachment is there (and counting). */
function expectIntact(a: Att): void {
  expectShaped(a);
  expectCounting(a);
  expect(existsSync(tuningFile(a))).toBe(true);
  expect(mtuOf(a)).toBe(1400);
  expect(natSave()).toContain(dnatComment(a));
  expect(natSave()).toContain(masqComment(a));
}
/** Nothing of the attachment's host-side resources is left. */
function expectGone(a: Att): void {
  expect(hasLink(ifbName(a.net.name, a.id))).toBe(false);
  const c = chainsOf(a.instanceId ?? a.id);
  expect(hasChain(filterSave(), c.in)).toBe(false);
  expect(hasChain(filterSave(), c.out)).toBe(false);
  expect(existsSync(tuningFile(a))).toBe(false);
  expect(natSave()).not.toContain(dnatComment(a));
  expect(natSave()).not.toContain(masqComment(a));
}

describe('GC stays in its own network', () => {
  it('removes exactly its own network\'s stale resources; a valid one (instanceId ≠ container id) and the other network\'s stay, still working', () => {
    outside();
    const a1 = { ...attach(NET_A, 'ctr-a1'), instanceId: 'inst-a1' };
    const a2 = { ...attach(NET_A, 'ctr-a2'), instanceId: 'inst-a2' };
    const b1 = attach(NET_B, 'ctr-b1');
    const b2 = attach(NET_B, 'ctr-b2');
    [a1, a2, b1, b2].forEach((a, i) => chain(a, 18100 + i));
    // The owner records: the ifb's alias and the jumps' comment.
    expect(sb.inHost(['ip', '-d', 'link', 'show', 'dev', ifbName(NET_A.name, a1.id)]).stdout).toContain(`alias cni-ts bandwidth net=${NET_A.name} id=${a1.id} if=eth0`);
    expect(filterSave()).toContain(`-A FORWARD -m comment --comment "cni-ts traffic-accounting net=${NET_A.name} id=${a1.id} if=eth0" -j ${chainsOf('inst-a1').in}`);
    for (const a of [a1, b1]) expectIntact(a);

    // Network A: a2 is gone (its namespace with it), a1 is valid.
    sb.removeContainer(a2.ns);
    gc(NET_A, [a1]);
    expectGone(a2);
    expectIntact(a1); // its chains are named after its instance id, not its container id
    for (const b of [b1, b2]) {
      expect(hasLink(ifbName(NET_B.name, b.id)), `${b.id}'s ifb`).toBe(true);
      expect(existsSync(tuningFile(b))).toBe(true);
    }
    expectIntact(b1);

    // Temp files of saved settings: a live writer's (an ADD in progress) and another network's stay; B's dead writer's goes.
    const dead = spawnSync('true').pid!;
    const temp = (id: string, pid: number, network: string) => {
      const f = join(tuningDir(), `${id}_eth0.json.${pid}.tmp`);
      writeFileSync(f, JSON.stringify({ network, containerID: id, ifname: 'eth0', mtu: 1500 }));
      return f;
    };
    const live = temp('ctr-x1', process.pid, NET_B.name);
    const foreign = temp('ctr-x2', dead, NET_A.name);
    const own = temp('ctr-x3', dead, NET_B.name);

    // Network B, nothing valid: all of B goes, A is untouched.
    sb.removeContainer(b2.ns);
    gc(NET_B, []);
    expect([existsSync(live), existsSync(foreign), existsSync(own)]).toEqual([true, true, false]);
    expectGone(b1);
    expectGone(b2);
    expectIntact(a1);

    // A's DELs still undo everything of A (tuning puts the MTU back).
    for (const [bin, conf] of [[PORTMAP, portmapConf(a1, 18100)], [TUNING, tuningConf(a1)], [TA, taConf(a1)]] as const) {
      expect(sb.plugin(bin, call(a1, 'DEL'), conf).code).toBe(0);
    }
    expect(sb.plugin(BW, call(a1, 'DEL'), { cniVersion: '1.1.0', name: NET_A.name, type: 'bandwidth', ...BW_CONF }).code).toBe(0);
    expect(mtuOf(a1)).toBe(1500);
    expect(qdiscsOf(a1.veth)).not.toMatch(/tbf|ingress/);
    expect(sb.plugin(BRIDGE, call(a1, 'DEL'), bridgeConf(NET_A)).code).toBe(0);
    expectGone(a1);
  });

  it('leaves resources without an owner record (reference plugins, binaries up to fb6743a) to DEL, which removes them', () => {
    outside();
    const r1 = { ...attach(NET_A, 'ctr-r1'), instanceId: 'legacy-inst' };
    // bandwidth and tuning by the reference binaries (Debian's 1.1.1).
    const ref = (bin: string, conf: Record<string, unknown>) => sb.plugin(bin, { ...call(r1, 'ADD'), path: '/usr/lib/cni' }, { cniVersion: '1.0.0', name: NET_A.name, ...conf, prevResult: { ...r1.prev, cniVersion: '1.0.0' } });
    const rb = ref(REF_BW, { type: 'bandwidth', ...BW_CONF });
    expect(rb.code, rb.stdout).toBe(0);
    expect(ref(REF_TUNING, { type: 'tuning', dataDir: tuningDir(), mtu: 1400 }).code).toBe(0);
    expectShaped(r1); // the reference names the ifb as we do now
    expect(existsSync(tuningFile(r1))).toBe(true);
    // traffic-accounting chains exactly as fb6743a wrote them (jumps without comment).
    const c = chainsOf('legacy-inst');
    const skip = ['127.0.0.0/8', '10.0.0.0/8', '192.168.0.0/16', '172.16.0.0/12'];
    const restore = [
      '*filter',
      `:${c.in} - [0:0]`,
      `:${c.out} - [0:0]`,
      ...skip.map((s) => `-A ${c.in} -s ${s} -j RETURN`),
      `-A ${c.in} -d ${r1.ip}/32`,
      ...skip.map((s) => `-A ${c.out} -d ${s} -j RETURN`),
      `-A ${c.out} -s ${r1.ip}/32`,
      `-I FORWARD 1 -j ${c.out}`,
      `-I FORWARD 1 -j ${c.in}`,
      'COMMIT',
      '',
    ].join('\n');
    must(['ip', 'netns', 'exec', sb.host, 'iptables-restore', '--noflush', '-w'], restore);
    expectCounting(r1);
    // Our CHECK accepts the old jumps.
    expect(sb.plugin(TA, call(r1, 'CHECK'), { ...taConf(r1), prevResult: r1.prev }).code).toBe(0);
    // A tuning file as fb6743a wrote it (ids, no network) and an ifb under its name (container id alone).
    mkdirSync(tuningDir(), { recursive: true });
    writeFileSync(join(tuningDir(), 'ctr-old_eth0.json'), `${JSON.stringify({ containerID: 'ctr-old', ifname: 'eth0', mtu: 1500 }, null, 1)}\n`);
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'add', legacyIfbName('ctr-old'), 'type', 'ifb']);

    gc(NET_A, []);
    expectShaped(r1);
    expect(existsSync(tuningFile(r1))).toBe(true);
    expectCounting(r1);
    expect(existsSync(join(tuningDir(), 'ctr-old_eth0.json'))).toBe(true);
    expect(hasLink(legacyIfbName('ctr-old'))).toBe(true);

    // Our DELs remove (and restore) them.
    expect(sb.plugin(BW, call(r1, 'DEL'), { cniVersion: '1.1.0', name: NET_A.name, type: 'bandwidth', ...BW_CONF }).code).toBe(0);
    expect(hasLink(ifbName(NET_A.name, r1.id))).toBe(false);
    expect(qdiscsOf(r1.veth)).not.toMatch(/tbf|ingress/);
    expect(sb.plugin(TUNING, call(r1, 'DEL'), tuningConf(r1)).code).toBe(0);
    expect(existsSync(tuningFile(r1))).toBe(false);
    expect(mtuOf(r1)).toBe(1500);
    expect(sb.plugin(TA, call(r1, 'DEL'), taConf(r1)).code).toBe(0);
    expect(hasChain(filterSave(), c.in) || hasChain(filterSave(), c.out)).toBe(false);
    expect(filterSave()).not.toContain('AOS_');
    const old = { command: 'DEL', containerId: 'ctr-old' };
    expect(sb.plugin(TUNING, old, { cniVersion: '1.1.0', name: NET_A.name, type: 'tuning', dataDir: tuningDir() }).code).toBe(0);
    expect(existsSync(join(tuningDir(), 'ctr-old_eth0.json'))).toBe(false);
    expect(sb.plugin(BW, old, { cniVersion: '1.1.0', name: NET_A.name, type: 'bandwidth' }).code).toBe(0);
    expect(hasLink(legacyIfbName('ctr-old'))).toBe(false);
  });

  it('an old binary\'s accounting chains re-ADDed by ours are adopted: one jump each, with the record', () => {
    const a = { ...attach(NET_A, 'ctr-up'), instanceId: 'up-inst' };
    const c = chainsOf('up-inst');
    must(['ip', 'netns', 'exec', sb.host, 'iptables-restore', '--noflush', '-w'], `*filter\n:${c.in} - [0:0]\n:${c.out} - [0:0]\n-A ${c.in} -d ${a.ip}/32\n-A ${c.out} -s ${a.ip}/32\n-I FORWARD 1 -j ${c.out}\n-I FORWARD 1 -j ${c.in}\nCOMMIT\n`);
    expect(sb.plugin(TA, call(a, 'ADD'), { ...taConf(a), prevResult: a.prev }).code).toBe(0);
    const jumps = filterSave().split('\n').map((l) => l.replace(/^\[\d+:\d+\] /, '')).filter((l) => l.startsWith('-A FORWARD ') && l.includes(' -j AOS_'));
    expect(jumps).toHaveLength(2); // two jumps to one chain would count every packet twice
    expect(jumps.every((l) => l.includes(`net=${NET_A.name} id=${a.id} if=eth0`))).toBe(true);
    gc(NET_A, []);
    expect(filterSave()).not.toContain('AOS_');
  });
});
