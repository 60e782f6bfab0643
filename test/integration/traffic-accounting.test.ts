import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, Sandbox } from '../helpers/sandbox.js';
import { throughput } from '../helpers/traffic.js';

const BRIDGE = join(BIN, 'bridge');
const TA = join(BIN, 'traffic-accounting');
let sb: Sandbox;
beforeEach(() => {
  sb = new Sandbox('ta');
});
afterEach(() => sb.cleanup());

const filter = () => sb.inHost(['iptables-save', '-c', '-t', 'filter']).stdout;
/** The byte counter of the counting rule (the one without a target) in a chain. */
function counted(chain: string): number {
  const line = filter().split('\n').find((l) => l.includes(`-A ${chain} `) && !l.includes(' -j '));
  const m = line ? /^\[(\d+):(\d+)\]/.exec(line) : null;
  return m ? Number(m[2]) : NaN;
}

describe('traffic-accounting', () => {
  it('creates the Aos chains, counts real traffic both ways, CHECK, DEL without prevResult, GC', async () => {
    // The peer is "outside": an address beyond the local ranges, routed through the test host.
    const peer = sb.outsidePeer();
    const c = sb.container();
    const b = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'inst-1', netns: c.path }, {
      cniVersion: '0.4.0', name: 'tanet', type: 'bridge', bridge: 'tabr0', isGateway: true,
      ipam: { type: 'host-local', subnet: '10.83.0.0/24', routes: [{ dst: '0.0.0.0/0' }], dataDir: join(sb.dir, 'ipam') },
    });
    expect(b.code).toBe(0);
    const conf = { cniVersion: '0.4.0', name: 'tanet', type: 'traffic-accounting', instanceId: 'test-instance', prevResult: b.json };
    const call = { command: 'ADD', containerId: 'inst-1', netns: c.path };
    const r = sb.plugin(TA, call, conf);
    expect(r.code, r.stdout).toBe(0);
    expect(r.json).toEqual(b.json);
    const f = filter();
    // The jumps carry the owner record GC goes by (network, container, interface).
    expect(f).toMatch(/-A FORWARD -m comment --comment "cni-ts traffic-accounting net=tanet id=inst-1 if=eth0" -j AOS_596c510788af873a_(IN|OUT)/);
    expect(f).toContain('-A AOS_596c510788af873a_IN -s 10.0.0.0/8 -j RETURN');
    expect(f).toContain('-A AOS_596c510788af873a_OUT -s 10.83.0.2/32');
    expect(f.split('\n').filter((l) => l.includes('-A FORWARD'))[0]).toContain('AOS_596c510788af873a');

    const sent = await throughput(sb.dir, c.name, peer.name, '203.0.113.9', 5100, 1);
    expect(sent).toBeGreaterThan(0);
    const up = counted('AOS_596c510788af873a_OUT');
    const down = counted('AOS_596c510788af873a_IN');
    expect(up).toBeGreaterThan(100_000); // the upload: at least what was sent
    expect(down).toBeGreaterThan(0); // ACKs coming back
    expect(down).toBeLessThan(up);

    expect(sb.plugin(TA, { ...call, command: 'CHECK' }, conf).code).toBe(0);
    expect(sb.plugin(TA, { ...call, command: 'DEL' }, { ...conf, prevResult: undefined }).code).toBe(0);
    expect(filter()).not.toContain('AOS_');
    expect(sb.plugin(TA, { ...call, command: 'CHECK' }, conf).json.code).toBe(115);
    expect(sb.plugin(TA, { ...call, command: 'DEL' }, { ...conf, prevResult: undefined }).code).toBe(0);

    // GC keeps the valid container's chains only.
    const plain = { ...conf, instanceId: undefined };
    expect(sb.plugin(TA, { ...call, containerId: 'keep-me' }, plain).code).toBe(0);
    expect(sb.plugin(TA, { ...call, containerId: 'drop-me' }, plain).code).toBe(0);
    const gc = sb.plugin(TA, { command: 'GC' }, { ...plain, cniVersion: '1.1.0', prevResult: undefined, 'cni.dev/valid-attachments': [{ containerID: 'keep-me', ifname: 'eth0' }] });
    expect(gc.code, gc.stdout).toBe(0);
    const chains = filter().split('\n').filter((l) => l.startsWith(':AOS_'));
    expect(chains).toHaveLength(2);
  });
});
