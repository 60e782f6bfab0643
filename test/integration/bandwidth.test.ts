import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, Sandbox, sh } from '../helpers/sandbox.js';
import { pingRtt, throughput } from '../helpers/traffic.js';

const BRIDGE = join(BIN, 'bridge');
const BW = join(BIN, 'bandwidth');
let sb: Sandbox;
beforeEach(() => {
  sb = new Sandbox('bw');
});
afterEach(() => sb.cleanup());

/** This kernel's netem support, probed once (some kernels, like this CI machine's, lack sch_netem). */
function netemSupported(): { ok: boolean; why: string } {
  const ns = `cnits-netem-probe-${process.pid}`;
  sh(['ip', 'netns', 'add', ns]);
  const r = sh(['ip', 'netns', 'exec', ns, 'tc', 'qdisc', 'add', 'dev', 'lo', 'root', 'netem', 'delay', '1ms']);
  sh(['ip', 'netns', 'del', ns]);
  return { ok: r.code === 0, why: r.stderr.trim() };
}

function attach(id = 'c1') {
  const c = sb.container();
  const b = sb.plugin(BRIDGE, { command: 'ADD', containerId: id, netns: c.path }, {
    cniVersion: '1.0.0', name: 'bwnet', type: 'bridge', bridge: 'bwbr0', isGateway: true,
    ipam: { type: 'host-local', subnet: '10.82.0.0/24', dataDir: join(sb.dir, 'ipam') },
  });
  expect(b.code, b.stdout).toBe(0);
  return { ns: c.name, path: c.path, id, prev: b.json, veth: b.json.interfaces[1].name as string, ip: b.json.ips[0].address.split('/')[0] as string };
}
const bw = (a: ReturnType<typeof attach>, command: string, extra: Record<string, unknown>, withPrev = true) =>
  sb.plugin(BW, { command, containerId: a.id, netns: a.path }, { cniVersion: '1.0.0', name: 'bwnet', type: 'bandwidth', ...extra, ...(withPrev ? { prevResult: a.prev } : {}) });
const qdiscs = () => sb.inHost(['tc', 'qdisc', 'show']).stdout.split('\n').filter((l) => l && !l.includes('noqueue'));
const ifbs = () => sb.inHost(['ip', '-o', 'link', 'show', 'type', 'ifb']).stdout.trim();

describe('bandwidth', () => {
  it('installs tbf and the ifb redirect the kernel reports back; CHECK, DEL, DEL again', () => {
    const a = attach();
    const conf = { ingressRate: 8_000_000, ingressBurst: 200_000, egressRate: 4_000_000, egressBurst: 100_000 };
    const r = bw(a, 'ADD', conf);
    expect(r.code, r.stdout).toBe(0);
    const ifb = r.json.interfaces.at(-1).name;
    expect(ifb).toMatch(/^bwp[0-9a-f]{12}$/);
    const q = qdiscs().join('\n');
    expect(q).toContain(`qdisc tbf 1: dev ${a.veth} root refcnt 3 rate 8Mbit burst 25000b lat 25ms`);
    expect(q).toContain(`qdisc ingress ffff: dev ${a.veth} parent ffff:fff1`);
    expect(q).toContain(`qdisc tbf 1: dev ${ifb} root refcnt 2 rate 4Mbit burst 12500b lat 25ms`);
    expect(sb.inHost(['tc', 'filter', 'show', 'dev', a.veth, 'ingress']).stdout).toContain(`mirred (Egress Redirect to device ${ifb})`);
    expect(bw(a, 'CHECK', { ...conf, prevResult: r.json }, false).code).toBe(0);
    sb.inHost(['tc', 'qdisc', 'del', 'dev', a.veth, 'root']);
    const c = bw(a, 'CHECK', { ...conf, prevResult: r.json }, false);
    expect(c.json).toMatchObject({ code: 115, msg: 'tbf qdisc missing' });
    expect(bw(a, 'DEL', conf).code).toBe(0);
    expect(bw(a, 'DEL', conf).code).toBe(0);
    expect(qdiscs()).toEqual([]);
    expect(ifbs()).toBe('');
  });

  it('a parameter changed by hand makes CHECK fail (every parameter is compared)', () => {
    const a = attach();
    const conf = { egressRate: 4_000_000, egressBurst: 100_000 };
    const r = bw(a, 'ADD', conf);
    const ifb = r.json.interfaces.at(-1).name;
    sb.inHost(['tc', 'qdisc', 'change', 'dev', ifb, 'root', 'tbf', 'rate', '5mbit', 'burst', '12500', 'latency', '25ms']);
    expect(bw(a, 'CHECK', { ...conf, prevResult: r.json }, false).json.code).toBe(115);
    sb.inHost(['tc', 'filter', 'del', 'dev', a.veth, 'ingress']);
    sb.inHost(['tc', 'qdisc', 'change', 'dev', ifb, 'root', 'tbf', 'rate', '4mbit', 'burst', '12500', 'latency', '25ms']);
    expect(bw(a, 'CHECK', { ...conf, prevResult: r.json }, false).json).toMatchObject({ code: 115, msg: expect.stringMatching(/no redirect/) });
  });

  it('a real transfer runs at the configured rate (±15%) in each direction; an unshaped one does not', async () => {
    const a = attach();
    const rate = 16_000_000;
    const free = await throughput(sb.dir, a.ns, sb.host, '10.82.0.1', 5001, 2);
    expect(free).toBeGreaterThan(rate * 3);
    // Bursts of ~100 ms of traffic keep a TCP stream's sawtooth from starving the bucket.
    expect(bw(a, 'ADD', { ingressRate: rate, ingressBurst: rate / 10, egressRate: rate / 2, egressBurst: rate / 20 }).code).toBe(0);
    const toContainer = await throughput(sb.dir, sb.host, a.ns, a.ip, 5002, 4);
    const fromContainer = await throughput(sb.dir, a.ns, sb.host, '10.82.0.1', 5003, 4);
    console.log(`unshaped ${(free / 1e6).toFixed(1)} Mbit/s; shaped to container ${(toContainer / 1e6).toFixed(2)} Mbit/s (want 16), from it ${(fromContainer / 1e6).toFixed(2)} Mbit/s (want 8)`);
    // tbf counts whole Ethernet frames; the sink counts TCP payload (1448 of every 1514 bytes).
    const payload = 1448 / 1514;
    expect(Math.abs(toContainer - rate * payload) / (rate * payload)).toBeLessThan(0.15);
    expect(Math.abs(fromContainer - (rate / 2) * payload) / ((rate / 2) * payload)).toBeLessThan(0.15);
  });

  it('zero everywhere passes prevResult through and installs nothing; runtimeConfig applies unless static config is set', () => {
    const a = attach();
    const z = bw(a, 'ADD', { ingressRate: 0, ingressBurst: 0, egressRate: 0, egressBurst: 0 });
    expect(z.json).toEqual(a.prev);
    expect(qdiscs()).toEqual([]);
    expect(bw(a, 'ADD', { runtimeConfig: { bandwidth: { ingressRate: 2_000_000, ingressBurst: 50_000 } } }).code).toBe(0);
    expect(qdiscs().join('\n')).toContain('rate 2Mbit');
    expect(bw(a, 'DEL', {}).code).toBe(0);
    expect(bw(a, 'ADD', { ingressRate: 3_000_000, ingressBurst: 50_000, runtimeConfig: { bandwidth: { ingressRate: 2_000_000, ingressBurst: 50_000 } } }).code).toBe(0);
    expect(qdiscs().join('\n')).toContain('rate 3Mbit');
  });

  it('DEL after the namespace is gone removes the ifb; GC removes ifbs of invalid containers', () => {
    const a = attach('c1');
    const b = attach('c2');
    expect(bw(a, 'ADD', { egressRate: 1_000_000, egressBurst: 10_000 }).code).toBe(0);
    expect(bw(b, 'ADD', { egressRate: 1_000_000, egressBurst: 10_000 }).code).toBe(0);
    sb.removeContainer(a.ns);
    expect(bw(a, 'DEL', {}, false).code).toBe(0);
    expect(ifbs().split('\n').filter(Boolean)).toHaveLength(1);
    const gc = sb.plugin(BW, { command: 'GC' }, { cniVersion: '1.1.0', name: 'bwnet', type: 'bandwidth', 'cni.dev/valid-attachments': [] });
    expect(gc.code).toBe(0);
    expect(ifbs()).toBe('');
  });

  it('link impairment: delay grows the round trip, loss 100 stops traffic (or a clean error without netem)', () => {
    const probe = netemSupported();
    const a = attach();
    if (!probe.ok) {
      console.log(`kernel has no netem (${probe.why}): checking the error path only`);
      const r = bw(a, 'ADD', { ingressDelay: 50, egressRate: 1_000_000, egressBurst: 10_000 });
      expect(r.json.code).toBe(112);
      expect(qdiscs()).toEqual([]);
      expect(ifbs()).toBe('');
      return;
    }
    const base = pingRtt(a.ns, '10.82.0.1');
    expect(bw(a, 'ADD', { egressDelay: 50, ingressRate: 8_000_000, ingressBurst: 100_000 }).code).toBe(0);
    const delayed = pingRtt(a.ns, '10.82.0.1');
    expect(delayed - base).toBeGreaterThan(40);
    expect(delayed - base).toBeLessThan(80);
    expect(bw(a, 'DEL', {}).code).toBe(0);
    expect(bw(a, 'ADD', { egressLoss: 100 }).code).toBe(0);
    expect(Number.isNaN(pingRtt(a.ns, '10.82.0.1', 3))).toBe(true);
  });
});

describe('bandwidth: bad input installs nothing', () => {
  const cases: [string, Record<string, unknown>][] = [
    ['a negative rate', { ingressRate: -1, ingressBurst: 1000 }],
    ['a non-numeric rate', { ingressRate: '10mbit', ingressBurst: 1000 }],
    ['a burst over the limit', { egressRate: 1000, egressBurst: 2 ** 35 }],
    ['a rate without a burst', { egressRate: 1_000_000 }],
    ['loss over 100', { egressLoss: 101 }],
    ['jitter without delay', { ingressJitter: 5 }],
  ];
  for (const [name, extra] of cases) {
    it(name, () => {
      const a = attach();
      const r = bw(a, 'ADD', extra);
      expect(r.code).toBe(1);
      expect(r.json.code).toBe(7);
      expect(qdiscs()).toEqual([]);
      expect(ifbs()).toBe('');
    });
  }
});
