import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, Sandbox, sh } from '../helpers/sandbox.js';
import { throughput } from '../helpers/traffic.js';
import { BACKENDS, type TestBackend } from '../helpers/backends.js';
import { chainsFor } from '../../lib/pf/accounting/layout.js';
import { addScript, delScript } from '../../lib/pf/accounting/nftables.js';

const BRIDGE = join(BIN, 'bridge');
const TA = join(BIN, 'traffic-accounting');
const H = '596c510788af873a'; // std::hash of "test-instance" (docs/accounting.md)
let sb: Sandbox;
beforeEach(() => {
  sb = new Sandbox('ta');
});
afterEach(() => sb.cleanup());

const filter = () => sb.inHost(['iptables-save', '-c', '-t', 'filter']).stdout;
/** `nft list table inet cni_ts_accounting`, '' when it does not exist. */
const nftTable = () => {
  const r = sb.inHost(['nft', 'list', 'table', 'inet', 'cni_ts_accounting']);
  return r.code === 0 ? r.stdout : '';
};
/** The named counters of our table: name → bytes (and comment). */
function nftCounters(): Map<string, { bytes: number; comment?: string }> {
  const r = sb.inHost(['nft', '-j', 'list', 'counters', 'table', 'inet', 'cni_ts_accounting']);
  const out = new Map<string, { bytes: number; comment?: string }>();
  if (r.code !== 0) return out;
  for (const item of JSON.parse(r.stdout).nftables) if (item.counter) out.set(item.counter.name, { bytes: item.counter.bytes, comment: item.counter.comment });
  return out;
}

/** The byte counter of a direction: iptables' counting rule (the one without a target), nftables' named counter. */
function counted(backend: TestBackend, chain: string): number {
  if (backend === 'nftables') return nftCounters().get(chain)?.bytes ?? NaN;
  const line = filter().split('\n').find((l) => l.includes(`-A ${chain} `) && !l.includes(' -j '));
  const m = line ? /^\[(\d+):(\d+)\]/.exec(line) : null;
  return m ? Number(m[2]) : NaN;
}

/** A bridge ADD for `id` (10.83.0.0/24, default route via the bridge); the peer is "outside", beyond the local ranges. */
function bridgeAdd(id: string) {
  const c = sb.container();
  const b = sb.plugin(BRIDGE, { command: 'ADD', containerId: id, netns: c.path }, {
    cniVersion: '0.4.0', name: 'tanet', type: 'bridge', bridge: 'tabr0', isGateway: true,
    ipam: { type: 'host-local', subnet: '10.83.0.0/24', routes: [{ dst: '0.0.0.0/0' }], dataDir: join(sb.dir, 'ipam') },
  });
  expect(b.code, b.stdout).toBe(0);
  return { c, prev: b.json };
}

describe.each(BACKENDS)('traffic-accounting (%s)', (backend) => {
  it('makes the Aos counters, counts real traffic both ways, re-ADD restarts them, CHECK, DEL without prevResult, GC', async () => {
    const peer = sb.outsidePeer();
    const { c, prev } = bridgeAdd('inst-1');
    const conf = { cniVersion: '0.4.0', name: 'tanet', type: 'traffic-accounting', instanceId: 'test-instance', backend, prevResult: prev };
    const call = { command: 'ADD', containerId: 'inst-1', netns: c.path };
    const r = sb.plugin(TA, call, conf);
    expect(r.code, r.stdout).toBe(0);
    expect(r.json).toEqual(prev);
    const owner = 'cni-ts traffic-accounting net=tanet id=inst-1 if=eth0';
    if (backend === 'iptables') {
      const f = filter();
      // The jumps carry the owner record GC goes by (network, container, interface).
      expect(f).toMatch(new RegExp(`-A FORWARD -m comment --comment "${owner}" -j AOS_${H}_(IN|OUT)`));
      expect(f).toContain(`-A AOS_${H}_IN -s 10.0.0.0/8 -j RETURN`);
      expect(f).toContain(`-A AOS_${H}_OUT -s 10.83.0.2/32`);
      expect(f.split('\n').filter((l) => l.includes('-A FORWARD'))[0]).toContain(`AOS_${H}`);
      expect(nftTable()).toBe(''); // one container's rules never in both backends
    } else {
      const t = nftTable();
      expect(nftCounters().get(`AOS_${H}_IN`)?.comment).toBe(owner);
      expect(t).toContain(`10.83.0.2 : "AOS_${H}_IN"`);
      expect(t).toContain(`10.83.0.2 : "AOS_${H}_OUT"`);
      expect(t).toMatch(/chain acct_aos \{\s+type filter hook forward priority filter - 1; policy accept;/);
      expect(filter()).not.toContain('AOS_');
    }

    const sent = await throughput(sb.dir, c.name, peer.name, '203.0.113.9', 5100, 1);
    expect(sent).toBeGreaterThan(0);
    const up = counted(backend, `AOS_${H}_OUT`);
    const down = counted(backend, `AOS_${H}_IN`);
    expect(up).toBeGreaterThan(100_000); // the upload: at least what was sent
    expect(down).toBeGreaterThan(0); // ACKs coming back
    expect(down).toBeLessThan(up);
    // Traffic with the local ranges is not counted: the gateway (10.83.0.1) is local.
    sb.inNs(c.name, ['ping', '-q', '-c', '3', '-i', '0.01', '-s', '1000', '-W', '2', '10.83.0.1']);
    expect(counted(backend, `AOS_${H}_OUT`)).toBe(up);

    expect(sb.plugin(TA, { ...call, command: 'CHECK' }, conf).code).toBe(0);
    // A re-ADD starts the counters from zero (like the Aos monitor's chains re-made), nothing doubled.
    expect(sb.plugin(TA, call, conf).code).toBe(0);
    expect(counted(backend, `AOS_${H}_OUT`)).toBe(0);
    expect(sb.plugin(TA, { ...call, command: 'CHECK' }, conf).code).toBe(0);

    expect(sb.plugin(TA, { ...call, command: 'DEL' }, { ...conf, prevResult: undefined }).code).toBe(0);
    expect(filter()).not.toContain('AOS_');
    expect(nftTable()).not.toContain('AOS_');
    const missing = sb.plugin(TA, { ...call, command: 'CHECK' }, conf);
    expect(missing.json.code).toBe(115);
    expect(sb.plugin(TA, { ...call, command: 'DEL' }, { ...conf, prevResult: undefined }).code).toBe(0);
    expect(sb.plugin(TA, { ...call, command: 'DEL' }, conf).code).toBe(0); // with prevResult too

    // GC keeps the valid container's counters only (two addresses of the bridge's subnet, as two runtimes' containers).
    const plain = { ...conf, instanceId: undefined };
    const prevFor = (ip: string) => ({ ...prev, ips: [{ ...prev.ips[0], address: `${ip}/24` }] });
    expect(sb.plugin(TA, { ...call, containerId: 'keep-me' }, { ...plain, prevResult: prevFor('10.83.0.50') }).code).toBe(0);
    expect(sb.plugin(TA, { ...call, containerId: 'drop-me' }, { ...plain, prevResult: prevFor('10.83.0.51') }).code).toBe(0);
    const gc = sb.plugin(TA, { command: 'GC' }, { ...plain, cniVersion: '1.1.0', prevResult: undefined, 'cni.dev/valid-attachments': [{ containerID: 'keep-me', ifname: 'eth0' }] });
    expect(gc.code, gc.stdout).toBe(0);
    if (backend === 'iptables') {
      expect(filter().split('\n').filter((l) => l.startsWith(':AOS_'))).toHaveLength(2);
    } else {
      const keep = chainsFor('keep-me');
      expect([...nftCounters().keys()].sort()).toEqual([keep.in, keep.out].sort());
      const t = nftTable();
      expect(t).toContain(`10.83.0.50 : "${keep.in}"`);
      expect(t).not.toContain('10.83.0.51');
    }
  });
});

describe('traffic-accounting: backends', () => {
  it('an instance added under one backend is removed by a DEL configured for the other; nothing lands in both', () => {
    const { c, prev } = bridgeAdd('inst-2');
    const call = { command: 'ADD', containerId: 'inst-2', netns: c.path };
    for (const [from, to] of [['iptables', 'nftables'], ['nftables', 'iptables']] as const) {
      const conf = { cniVersion: '0.4.0', name: 'tanet', type: 'traffic-accounting', backend: from, prevResult: prev };
      expect(sb.plugin(TA, call, conf).code).toBe(0);
      expect(from === 'iptables' ? filter() : nftTable()).toContain('AOS_');
      expect(from === 'iptables' ? nftTable() : filter()).not.toContain('AOS_');
      const del = sb.plugin(TA, { ...call, command: 'DEL' }, { ...conf, backend: to, prevResult: undefined });
      expect(del.code, del.stdout).toBe(0);
      expect(filter()).not.toContain('AOS_');
      expect(nftTable()).not.toContain('AOS_');
    }
  });

  it("nftables: ADD's and DEL's one-call scripts apply as written (the plugin falls back to read-and-replace only when they fail)", () => {
    const inst = { instanceId: 'one-call', ips: ['10.83.0.77'], skip: ['10.0.0.0/8', '127.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16'], owner: { network: 'tanet', containerID: 'one-call', ifname: 'eth0' } };
    const c = chainsFor('one-call');
    const nft = (script: string) => sh(['ip', 'netns', 'exec', sb.host, 'nft', '-f', '-'], script).code === 0;
    expect(nft(delScript(inst))).toBe(false); // no table: DEL's script fails (DEL then reads and finds nothing), it makes no table
    expect(nftTable()).toBe('');
    expect(nft(addScript(inst))).toBe(true);
    expect(nftCounters().get(c.in)?.comment).toBe('cni-ts traffic-accounting net=tanet id=one-call if=eth0');
    expect(nftTable()).toContain(`10.83.0.77 : "${c.out}"`);
    expect(nft(addScript(inst))).toBe(false); // a re-ADD is caught by the guard (the plugin then replaces, counters from zero)
    expect(nft(addScript({ ...inst, instanceId: 'other' }))).toBe(false); // so is an address still mapped to another instance
    expect(nft(delScript(inst))).toBe(true);
    expect(nftTable()).not.toContain('AOS_');
    expect(nft(delScript(inst))).toBe(true); // idempotent once the table exists
  });

  it('bad input: an unknown backend is a config error and leaves nothing', () => {
    const { c, prev } = bridgeAdd('inst-3');
    const r = sb.plugin(TA, { command: 'ADD', containerId: 'inst-3', netns: c.path }, { cniVersion: '0.4.0', name: 'tanet', type: 'traffic-accounting', backend: 'ebtables', prevResult: prev });
    expect(r.code).toBe(1);
    expect(r.json.code).toBe(7);
    expect(filter()).not.toContain('AOS_');
    expect(nftTable()).toBe('');
  });
});
