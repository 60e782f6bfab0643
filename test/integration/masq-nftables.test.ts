import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BACKENDS } from '../helpers/backends.js';
import { BIN, Sandbox } from '../helpers/sandbox.js';

/**
 * bridge's ipMasq on both backends (lib/pf/masq): real traffic to a peer
 * outside, the reference's nftables layout rule for rule (our DEL and GC
 * remove what the reference's ADD writes, and the other way round), and a
 * network switched from one backend to the other.
 */
const BRIDGE = join(BIN, 'bridge');
let sb: Sandbox;
let servers: ChildProcess[] = [];
beforeEach(() => {
  sb = new Sandbox('masq');
});
afterEach(() => {
  for (const s of servers) s.kill('SIGKILL');
  servers = [];
  sb.cleanup();
});

function netconf(over: Record<string, unknown> = {}, ipam: Record<string, unknown> = {}) {
  return {
    cniVersion: '1.1.0',
    name: 'testnet',
    type: 'bridge',
    bridge: 'cnimasq0',
    isGateway: true,
    ipMasq: true,
    ipam: { type: 'host-local', subnet: '10.77.0.0/24', routes: [{ dst: '0.0.0.0/0' }], dataDir: join(sb.dir, 'ipam'), ...ipam },
    ...over,
  };
}

const natSave = () => sb.inHost(['iptables-save', '-t', 'nat']).stdout;
const iptablesMasq = () => natSave().split('\n').filter((l) => /CNI-[0-9a-f]{24}/.test(l));
const nftTable = () => sb.inHost(['nft', 'list', 'table', 'inet', 'cni_plugins_masquerade']).stdout;
interface NftJsonRule { chain: string; handle: number; comment?: string; expr: unknown[] }
function nftRules(): NftJsonRule[] {
  const r = sb.inHost(['nft', '-j', 'list', 'table', 'inet', 'cni_plugins_masquerade']);
  if (r.code !== 0) return [];
  return (JSON.parse(r.stdout).nftables as Record<string, NftJsonRule>[]).filter((i) => i.rule).map((i) => i.rule);
}
const masqChecks = () => nftRules().filter((r) => r.chain === 'masq_checks');

/**
 * The reference's algorithm, written here from its description (not from
 * our library): the first 16 hex digits of sha512.
 */
const h16 = (s: string) => createHash('sha512').update(s).digest('hex').slice(0, 16);
const refComment = (net: string, ifname: string, id: string) => `${h16(net)}-${h16(`${ifname}:${id}`)}, net: ${net}, if: ${ifname}, id: ${id}`;

/**
 * What the reference's ADD hands `nft -f` (knftables writes one line per
 * operation: table and chains with their comments, the base chain's
 * priority as a number, postrouting flushed and refilled, one rule per
 * address), for one container.
 */
function referenceAdd(net: string, ifname: string, id: string, addrs: [string, string][]): string {
  const t = 'inet cni_plugins_masquerade';
  return [
    `add table ${t} { comment "Masquerading for plugins from github.com/containernetworking/plugins" ; }`,
    `add chain ${t} masq_checks { comment "Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet" ; }`,
    `add chain ${t} postrouting { type nat hook postrouting priority 100 ; }`,
    `flush chain ${t} postrouting`,
    `add rule ${t} postrouting ip daddr == 224.0.0.0/4  return`,
    `add rule ${t} postrouting ip6 daddr == ff00::/8  return`,
    `add rule ${t} postrouting goto masq_checks`,
    ...addrs.map(([ip, net4]) => {
      const p = ip.includes(':') ? 'ip6' : 'ip';
      return `add rule ${t} masq_checks ${p} saddr == ${ip} ${p} daddr != ${net4} masquerade comment "${refComment(net, ifname, id)}"`;
    }),
    '',
  ].join('\n');
}

/** A TCP server in `ns` that answers each connection with the address it came from. */
function serveSource(ns: string, port: number): Promise<void> {
  const file = join(sb.dir, 'source-server.cjs');
  writeFileSync(file, `require('net').createServer((c) => c.end(c.remoteAddress)).listen(${port}, '0.0.0.0', () => process.stdout.write('ready\\n'));`);
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, file], { stdio: ['ignore', 'pipe', 'inherit'] });
  servers.push(child);
  return new Promise((resolve, reject) => {
    child.stdout!.on('data', (b: Buffer) => b.toString().includes('ready') && resolve());
    child.on('exit', (code) => reject(new Error(`source server exited (${code})`)));
  });
}
/** The source address the peer saw for a connection from `ns` (empty when none got through). */
function sourceSeen(ns: string, host: string, port: number): string {
  const file = join(sb.dir, 'source-probe.cjs');
  writeFileSync(file, `const c = require('net').connect(${port}, ${JSON.stringify(host)}); let d = ''; c.on('data', (b) => (d += b)); c.on('end', () => { process.stdout.write(d); process.exit(0); }); c.on('error', () => process.exit(0)); setTimeout(() => process.exit(0), 2000);`);
  return spawnSync('ip', ['netns', 'exec', ns, process.execPath, file], { encoding: 'utf8' }).stdout.replace(/^::ffff:/, '');
}

describe.each(BACKENDS)('ipMasq on %s', (backend) => {
  it('a container reaches a peer outside with the host\'s address; CHECK; DEL leaves nothing in either backend', async () => {
    const peer = sb.outsidePeer();
    await serveSource(peer.name, 8081);
    const c = sb.container();
    const conf = netconf({ ipMasqBackend: backend });
    const add = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'm1', netns: c.path }, conf);
    expect(add.code, add.stdout + add.stderr).toBe(0);
    expect(sourceSeen(c.name, '203.0.113.9', 8081)).toBe('203.0.113.1');
    // The rules are in the chosen backend only.
    if (backend === 'iptables') {
      expect(iptablesMasq().join('\n')).toMatch(/-A POSTROUTING -s 10\.77\.0\.2\/32 -m comment --comment "name: \\"testnet\\" id: \\"m1\\"" -j CNI-/);
      expect(masqChecks()).toEqual([]);
    } else {
      expect(iptablesMasq()).toEqual([]);
      expect(nftTable()).toContain(`ip saddr 10.77.0.2 ip daddr != 10.77.0.0/24 masquerade comment "${refComment('testnet', 'eth0', 'm1')}"`);
    }
    const withPrev = { ...conf, prevResult: add.json };
    const call = { containerId: 'm1', netns: c.path };
    expect(sb.plugin(BRIDGE, { command: 'CHECK', ...call }, withPrev).code).toBe(0);

    // Without the rules the peer sees the container's own address (the check above can fail), and CHECK says so.
    if (backend === 'iptables') {
      const chain = /:(CNI-[0-9a-f]{24})/.exec(natSave())![1];
      expect(sb.inHost(['iptables', '-t', 'nat', '-F', chain]).code).toBe(0);
    } else {
      expect(sb.inHost(['nft', 'flush', 'chain', 'inet', 'cni_plugins_masquerade', 'masq_checks']).code).toBe(0);
    }
    expect(sourceSeen(c.name, '203.0.113.9', 8081)).toBe('10.77.0.2');
    const check = sb.plugin(BRIDGE, { command: 'CHECK', ...call }, withPrev);
    expect(check.json?.code, check.stdout).toBe(115);
    expect(check.json.details).toContain(backend === 'iptables' ? '-A CNI-' : 'masq_checks');

    // DEL, ADD again: back; then an ADD of the same attachment from another namespace without a DEL between
    // (host-local hands out the same address: the rules are written a second time); DEL removes everything, twice.
    expect(sb.plugin(BRIDGE, { command: 'DEL', ...call }, withPrev).code).toBe(0);
    const again = sb.plugin(BRIDGE, { command: 'ADD', ...call }, conf);
    expect(again.code, again.stdout).toBe(0);
    expect(sb.plugin(BRIDGE, { command: 'CHECK', ...call }, { ...conf, prevResult: again.json }).code).toBe(0);
    expect(sourceSeen(c.name, '203.0.113.9', 8081)).toBe('203.0.113.1');
    const twice = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'm1', netns: sb.container().path }, conf);
    expect(twice.code, twice.stdout).toBe(0);
    expect(twice.json.ips).toEqual(again.json.ips);
    for (let i = 0; i < 2; i++) expect(sb.plugin(BRIDGE, { command: 'DEL', ...call }, conf).code).toBe(0);
    expect(iptablesMasq()).toEqual([]);
    expect(masqChecks()).toEqual([]);
  });
});

describe('ipMasq on nftables is the reference\'s layout', () => {
  it('our ADD writes what the reference\'s ADD writes (listing compared), with comments its findRules matches', () => {
    const dual = { subnet: undefined, ranges: [[{ subnet: '10.77.0.0/24' }], [{ subnet: 'fd00:77::/64' }]] };
    const c = sb.container();
    const add = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'ours1', netns: c.path }, netconf({ ipMasqBackend: 'nftables' }, dual));
    expect(add.code, add.stdout + add.stderr).toBe(0);
    const rules = nftRules();
    const mine = rules.filter((r) => r.chain === 'masq_checks');
    // The reference's DEL looks for comments starting with hashForInstance; its GC with hashForNetwork.
    const prefix = `${h16('testnet')}-${h16('eth0:ours1')}`;
    expect(mine).toHaveLength(2);
    for (const r of mine) {
      expect(r.comment!.startsWith(prefix)).toBe(true);
      expect(r.comment).toBe(refComment('testnet', 'eth0', 'ours1'));
    }
    expect(mine.map((r) => r.expr)).toEqual([
      [
        { match: { op: '==', left: { payload: { protocol: 'ip', field: 'saddr' } }, right: '10.77.0.2' } },
        { match: { op: '!=', left: { payload: { protocol: 'ip', field: 'daddr' } }, right: { prefix: { addr: '10.77.0.0', len: 24 } } } },
        { masquerade: null },
      ],
      [
        { match: { op: '==', left: { payload: { protocol: 'ip6', field: 'saddr' } }, right: 'fd00:77::2' } },
        { match: { op: '!=', left: { payload: { protocol: 'ip6', field: 'daddr' } }, right: { prefix: { addr: 'fd00:77::', len: 64 } } } },
        { masquerade: null },
      ],
    ]);
    const chains = (JSON.parse(sb.inHost(['nft', '-j', 'list', 'table', 'inet', 'cni_plugins_masquerade']).stdout).nftables as Record<string, Record<string, unknown>>[]).filter((i) => i.chain).map((i) => i.chain);
    expect(chains.find((ch) => ch.name === 'postrouting')).toMatchObject({ type: 'nat', hook: 'postrouting', prio: 100 });

    // The same container written by the reference's transaction, in a second host: the same listing.
    const ourListing = nftTable().replace(/ # handle \d+/g, '');
    const ref = new Sandbox('masqref');
    try {
      const script = referenceAdd('testnet', 'eth0', 'ours1', [['10.77.0.2', '10.77.0.0/24'], ['fd00:77::2', 'fd00:77::/64']]);
      const r = ref.inHost(['nft', '-f', writeScript(ref.dir, script)]);
      expect(r.code, r.stderr).toBe(0);
      expect(ref.inHost(['nft', 'list', 'table', 'inet', 'cni_plugins_masquerade']).stdout).toBe(ourListing);
    } finally {
      ref.cleanup();
    }
  });

  it('our DEL (ipMasqBackend nftables, and unset) and GC remove what the reference\'s ADD wrote, and only that', () => {
    const script = [
      referenceAdd('testnet', 'eth0', 'refA', [['10.77.0.5', '10.77.0.0/24']]),
      referenceAdd('testnet', 'eth0', 'refB', [['10.77.0.6', '10.77.0.0/24'], ['fd00:77::6', 'fd00:77::/64']]),
      referenceAdd('testnet', 'eth0', 'refC', [['10.77.0.7', '10.77.0.0/24']]),
      referenceAdd('testnet', 'eth0', 'refD', [['10.77.0.8', '10.77.0.0/24']]),
      referenceAdd('othernet', 'eth0', 'refA', [['10.78.0.5', '10.78.0.0/24']]),
    ].join('');
    expect(sb.inHost(['nft', '-f', writeScript(sb.dir, script)]).code).toBe(0);
    const owners = () => masqChecks().map((r) => r.comment!.split(', id: ')[1] + (r.comment!.includes('othernet') ? '@other' : ''));
    expect(owners()).toEqual(['refA', 'refB', 'refB', 'refC', 'refD', 'refA@other']);

    // DEL after the namespace is gone: no netns, no prevResult, only the attachment's identity.
    const del = sb.plugin(BRIDGE, { command: 'DEL', containerId: 'refA' }, netconf({ ipMasqBackend: 'nftables' }));
    expect(del.code, del.stdout).toBe(0);
    expect(owners()).toEqual(['refB', 'refB', 'refC', 'refD', 'refA@other']);
    const del2 = sb.plugin(BRIDGE, { command: 'DEL', containerId: 'refB' }, netconf());
    expect(del2.code, del2.stdout).toBe(0);
    expect(owners()).toEqual(['refC', 'refD', 'refA@other']);

    // GC keeps the valid attachment (container and interface) and the other network.
    const gc = sb.plugin(BRIDGE, { command: 'GC' }, { ...netconf({ ipMasqBackend: 'nftables' }), 'cni.dev/valid-attachments': [{ containerID: 'refD', ifname: 'eth0' }, { containerID: 'refC', ifname: 'eth1' }] });
    expect(gc.code, gc.stdout).toBe(0);
    expect(owners()).toEqual(['refD', 'refA@other']);
    expect(nftTable()).toContain('goto masq_checks'); // the table and base chain stay, as with the reference
  });
});

describe('a network whose ipMasqBackend changed', () => {
  it('DEL under the new backend removes the rules of the old one, both ways; CHECK looks in the configured one', () => {
    for (const [from, to] of [['iptables', 'nftables'], ['nftables', 'iptables']] as const) {
      const c = sb.container();
      const id = `sw-${from}`;
      const add = sb.plugin(BRIDGE, { command: 'ADD', containerId: id, netns: c.path }, netconf({ ipMasqBackend: from }));
      expect(add.code, add.stdout + add.stderr).toBe(0);
      expect(from === 'iptables' ? iptablesMasq().length : masqChecks().length).toBeGreaterThan(0);
      // CHECK with the new backend configured: its rules are not there.
      expect(sb.plugin(BRIDGE, { command: 'CHECK', containerId: id, netns: c.path }, { ...netconf({ ipMasqBackend: to }), prevResult: add.json }).json?.code).toBe(115);
      const del = sb.plugin(BRIDGE, { command: 'DEL', containerId: id, netns: c.path }, { ...netconf({ ipMasqBackend: to }), prevResult: add.json });
      expect(del.code, del.stdout).toBe(0);
      expect(iptablesMasq()).toEqual([]);
      expect(masqChecks()).toEqual([]);
    }
  });
});

function writeScript(dir: string, script: string): string {
  const f = join(dir, `ref-${Math.random().toString(36).slice(2)}.nft`);
  writeFileSync(f, script);
  return f;
}
