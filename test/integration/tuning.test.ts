import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, Sandbox, TEST_BIN, must } from '../helpers/sandbox.js';

const TUNING = join(BIN, 'tuning');
const REFERENCE = '/usr/lib/cni/tuning';
let sb: Sandbox;
beforeEach(() => {
  sb = new Sandbox('tun');
});
afterEach(() => sb.cleanup());

/** A container namespace whose eth0 is a veth (peer in the host namespace), and the prevResult an interface plugin gives. */
function attach(id = 'c1') {
  const c = sb.container();
  const hostIf = `vh-${id}`;
  must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'add', hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', c.name]);
  const orig = link(c.name);
  const prev = {
    cniVersion: '1.0.0',
    interfaces: [
      { name: hostIf, mac: '0a:00:00:00:00:01' },
      { name: 'eth0', mac: orig.address, sandbox: c.path },
    ],
    ips: [{ address: '10.77.0.2/24', gateway: '10.77.0.1', interface: 1 }],
    dns: {},
  };
  return { ns: c.name, path: c.path, id, prev, orig };
}
type Att = ReturnType<typeof attach>;

const link = (ns: string) => JSON.parse(must(['ip', 'netns', 'exec', ns, 'ip', '-d', '-j', 'link', 'show', 'eth0']))[0];
const sysctl = (ns: string, path: string) => must(['ip', 'netns', 'exec', ns, 'cat', `/proc/sys/${path}`]).trim();
const dataDir = () => join(sb.dir, 'tuning');
const saved = (a: Att) => join(dataDir(), `${a.id}_eth0.json`);
const conf = (a: Att, extra: Record<string, unknown>, withPrev = true) => ({
  cniVersion: '1.0.0', name: 'tun', type: 'tuning', dataDir: dataDir(), ...extra, ...(withPrev ? { prevResult: a.prev } : {}),
});
const run = (a: Att, command: string, extra: Record<string, unknown>, opts: { prev?: boolean; args?: string; env?: Record<string, string>; bin?: string } = {}) =>
  runTuning(a, command, extra, opts);
const runTuning = (a: Att, command: string, extra: Record<string, unknown>, opts: { prev?: boolean; args?: string; env?: Record<string, string>; bin?: string } = {}) =>
  sb.plugin(opts.bin ?? TUNING, { command, containerId: a.id, netns: a.path, args: opts.args, env: opts.env }, conf(a, extra, opts.prev ?? true));
/** What the tests read back of a link. */
const state = (l: any) => ({ mac: l.address, mtu: l.mtu, txqlen: l.txqlen, promisc: l.flags.includes('PROMISC'), allmulti: l.flags.includes('ALLMULTI') });

const ALL = {
  mac: '02:11:22:33:44:55',
  promisc: true,
  mtu: 1400,
  txQLen: 321,
  allmulti: true,
  sysctl: {
    'net.core.somaxconn': '512',
    'net.ipv4.conf.IFNAME.arp_ignore': '1',
    'net/ipv4/conf/IFNAME/arp_announce': '2', // the slash form
    'net.ipv4.ip_local_port_range': '32000 60000', // read back with a tab
  },
};
const SYSCTLS = ['net/core/somaxconn', 'net/ipv4/conf/eth0/arp_ignore', 'net/ipv4/conf/eth0/arp_announce', 'net/ipv4/ip_local_port_range'];

describe('tuning', () => {
  it('ADD applies every setting and returns prevResult with the new MAC; CHECK; DEL restores all and removes the file', () => {
    const a = attach();
    const before = SYSCTLS.map((p) => sysctl(a.ns, p));
    const r = run(a, 'ADD', ALL);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const expected = structuredClone(a.prev);
    expected.interfaces[1].mac = ALL.mac;
    expect(r.json).toEqual(expected);
    expect(state(link(a.ns))).toEqual({ mac: ALL.mac, mtu: 1400, txqlen: 321, promisc: true, allmulti: true });
    expect(SYSCTLS.map((p) => sysctl(a.ns, p))).toEqual(['512', '1', '2', '32000\t60000']);
    expect(JSON.parse(readFileSync(saved(a), 'utf8'))).toEqual({
      network: 'tun', containerID: a.id, ifname: 'eth0', mac: a.orig.address, promisc: false, mtu: 1500, allmulti: false, txQLen: a.orig.txqlen,
      sysctl: Object.fromEntries(SYSCTLS.map((p, i) => [p, before[i]])),
    });
    expect(run(a, 'CHECK', { ...ALL, prevResult: r.json }, { prev: false }).code).toBe(0);

    const d = run(a, 'DEL', ALL);
    expect(d.code, d.stdout).toBe(0);
    expect(d.stdout).toBe('');
    expect(state(link(a.ns))).toEqual(state(a.orig));
    expect(SYSCTLS.map((p) => sysctl(a.ns, p))).toEqual(before);
    expect(existsSync(saved(a))).toBe(false);
    expect(run(a, 'DEL', ALL).code).toBe(0); // no file: a no-op
  });

  it('CHECK fails (code 115) once a value is changed by hand', () => {
    const a = attach();
    const r = run(a, 'ADD', ALL);
    expect(r.code).toBe(0);
    const check = () => run(a, 'CHECK', { ...ALL, prevResult: r.json }, { prev: false });
    expect(check().code).toBe(0);
    must(['ip', 'netns', 'exec', a.ns, 'ip', 'link', 'set', 'eth0', 'mtu', '1300']);
    expect(check().json).toMatchObject({ code: 115, msg: 'eth0 has MTU 1300, configured 1400' });
    expect(check().code).toBe(1);
    must(['ip', 'netns', 'exec', a.ns, 'ip', 'link', 'set', 'eth0', 'mtu', '1400']);
    expect(check().code).toBe(0);
    must(['ip', 'netns', 'exec', a.ns, 'sysctl', '-qw', 'net.core.somaxconn=100']);
    expect(check().json).toMatchObject({ code: 115, msg: expect.stringContaining('/proc/sys/net/core/somaxconn is "100"') });
    must(['ip', 'netns', 'exec', a.ns, 'sysctl', '-qw', 'net.core.somaxconn=512']);
    must(['ip', 'netns', 'exec', a.ns, 'ip', 'link', 'set', 'eth0', 'allmulticast', 'off']);
    expect(check().json).toMatchObject({ code: 115, msg: expect.stringContaining('all-multicast') });
  });

  it('takes the MAC from CNI_ARGS and runtimeConfig (runtimeConfig wins); a second ADD keeps the first originals', () => {
    const a = attach();
    const r1 = run(a, 'ADD', { mac: '02:00:00:00:00:01' }, { args: 'IgnoreUnknown=1;MAC=02:00:00:00:00:02' });
    expect(r1.code, r1.stdout).toBe(0);
    expect(link(a.ns).address).toBe('02:00:00:00:00:02');
    expect(r1.json.interfaces[1].mac).toBe('02:00:00:00:00:02');
    expect(r1.json.interfaces[0].mac).toBe('0a:00:00:00:00:01'); // the host side keeps its own
    const r2 = run(a, 'ADD', { mac: '02:00:00:00:00:01', runtimeConfig: { mac: '02:00:00:00:00:03' }, mtu: 1450 }, { args: 'MAC=02:00:00:00:00:02' });
    expect(r2.code, r2.stdout).toBe(0);
    expect(state(link(a.ns))).toMatchObject({ mac: '02:00:00:00:00:03', mtu: 1450 });
    expect(run(a, 'DEL', {}).code).toBe(0);
    expect(state(link(a.ns))).toEqual(state(a.orig)); // not the MAC of the first ADD
  });

  it('DEL after the namespace is deleted, or the interface is gone, succeeds and removes the file', () => {
    const a = attach('c1');
    const b = attach('c2');
    expect(run(a, 'ADD', ALL).code).toBe(0);
    expect(run(b, 'ADD', ALL).code).toBe(0);
    sb.removeContainer(a.ns);
    const d = run(a, 'DEL', ALL, { prev: false });
    expect(d.code, d.stdout).toBe(0);
    expect(existsSync(saved(a))).toBe(false);
    must(['ip', 'netns', 'exec', b.ns, 'ip', 'link', 'del', 'eth0']);
    expect(run(b, 'DEL', ALL).code).toBe(0);
    expect(existsSync(saved(b))).toBe(false);
  });

  it('refuses non-net sysctls, unknown ones, bad values and a missing prevResult with a CNI error, changing nothing', () => {
    const a = attach();
    const somaxconn = sysctl(a.ns, 'net/core/somaxconn');
    const cases: [Record<string, unknown>, number, RegExp, { prev?: boolean }?][] = [
      [{ mtu: 1400, sysctl: { 'kernel.hostname': 'pwned' } }, 7, /^invalid net sysctl key: "kernel.hostname"$/],
      [{ sysctl: { 'net/../kernel/hostname': 'pwned' } }, 7, /^invalid net sysctl key/],
      [{ sysctl: { 'net.ipv4.no_such_thing': '1' } }, 7, /^no such sysctl/],
      [{ mac: 'not-a-mac' }, 7, /^invalid MAC address/],
      // The sysctl is written first, so the bad value stops ADD before the link changes.
      [{ mtu: 1400, sysctl: { 'net.core.somaxconn': '1', 'net.ipv4.conf.IFNAME.arp_ignore': 'bogus' } }, 112, /^failed to set sysctl/],
      // The MTU fails after sysctl, MAC and promisc were applied: all of it is undone.
      [{ ...ALL, mtu: 70000 }, 112, /^failed to set MTU to 70000 on eth0$/],
      [{ mtu: 1400 }, 7, /^Required prevResult missing$/, { prev: false }],
    ];
    for (const [extra, code, msg, opts] of cases) {
      const r = run(a, 'ADD', extra, opts);
      expect(r.code, JSON.stringify(extra)).toBe(1);
      expect(r.json, JSON.stringify(extra)).toMatchObject({ cniVersion: '1.0.0', code, msg: expect.stringMatching(msg) });
      expect(existsSync(saved(a)), JSON.stringify(extra)).toBe(false);
      expect(state(link(a.ns)), JSON.stringify(extra)).toEqual(state(a.orig));
      expect(sysctl(a.ns, 'net/core/somaxconn')).toBe(somaxconn);
      expect(sysctl(a.ns, 'net/ipv4/conf/eth0/arp_ignore')).toBe('0');
    }
    // Written twice in the JSON text (JSON.parse would keep the last one silently).
    const dup = JSON.stringify(conf(a, { sysctl: { 'net.core.somaxconn': '1' } })).replace('"net.core.somaxconn":"1"', '"net.core.somaxconn":"1","net.core.somaxconn":"2"');
    const r = sb.plugin(TUNING, { command: 'ADD', containerId: a.id, netns: a.path }, dup);
    expect(r.json).toMatchObject({ code: 7, msg: 'duplicated sysctl keys are not allowed' });
  });

  it('honours a sysctl allowlist (path from CNI_TS_TUNING_ALLOWLIST, a test hook: the test build) when one is present', () => {
    const a = attach();
    const list = join(sb.dir, 'allowlist.conf');
    writeFileSync(list, '^net\\.core\\.somaxconn$\n\n  ^net\\.ipv4\\.conf\\.IFNAME\\.[a-z_]+$  \n');
    const env = { CNI_TS_TUNING_ALLOWLIST: list };
    const run = (a: Att, command: string, extra: Record<string, unknown>, opts: { env?: Record<string, string> } = {}) => runTuning(a, command, extra, { ...opts, bin: join(TEST_BIN, 'tuning') });
    const denied = run(a, 'ADD', { sysctl: { 'net.ipv4.ip_forward': '1' } }, { env });
    expect(denied.json).toMatchObject({ code: 7, msg: expect.stringMatching(/^Sysctl net.ipv4.ip_forward is not allowed/) });
    expect(existsSync(saved(a))).toBe(false);
    const ok = run(a, 'ADD', { sysctl: { 'net.core.somaxconn': '600', 'net.ipv4.conf.IFNAME.arp_ignore': '1' } }, { env });
    expect(ok.code, ok.stdout).toBe(0);
    expect(sysctl(a.ns, 'net/core/somaxconn')).toBe('600');
    expect(run(a, 'ADD', { sysctl: { 'net.ipv4.ip_forward': '1' } }, { env: { CNI_TS_TUNING_ALLOWLIST: join(sb.dir, 'none') } }).code).toBe(0);
  });

  it('gives the reference result and link state for the same input; our DEL undoes a reference ADD', () => {
    const ours = attach('c1');
    const ref = attach('c2');
    // The reference here (1.1.1) has no txQLen.
    const { txQLen: _, ...common } = ALL;
    const r = run(ours, 'ADD', common);
    const q = run(ref, 'ADD', common, { bin: REFERENCE });
    expect(q.code, q.stdout).toBe(0);
    expect(r.json).toEqual(JSON.parse(JSON.stringify(q.json).replaceAll(ref.path, ours.path).replaceAll('vh-c2', 'vh-c1')));
    expect(state(link(ours.ns))).toEqual(state(link(ref.ns)));
    expect(sysctl(ours.ns, 'net/ipv4/ip_local_port_range')).toBe(sysctl(ref.ns, 'net/ipv4/ip_local_port_range'));
    // The reference keeps <id>_<ifname>.json; ours reads it on DEL.
    const refFile = join(dataDir(), `${ref.id}_eth0.json`);
    expect(existsSync(refFile)).toBe(true);
    expect(run(ref, 'DEL', common).code).toBe(0);
    expect(existsSync(refFile)).toBe(false);
    expect(state(link(ref.ns))).toEqual(state(ref.orig));
  });

  it('GC removes the saved settings (and stray temp files) of attachments that are not valid any more', () => {
    const a = attach('c1');
    const b = attach('c2');
    expect(run(a, 'ADD', { mtu: 1400 }).code).toBe(0);
    expect(run(b, 'ADD', { mtu: 1400 }).code).toBe(0);
    // What a writer SIGKILLed between write and rename leaves behind (GC takes only a dead writer's).
    const dead = spawnSync('true').pid;
    for (const id of ['c1', 'c2', 'c3']) writeFileSync(join(dataDir(), `${id}_eth0.json.${dead}.tmp`), '{');
    const gc = sb.plugin(TUNING, { command: 'GC' }, {
      cniVersion: '1.1.0', name: 'tun', type: 'tuning', dataDir: dataDir(), 'cni.dev/valid-attachments': [{ containerID: 'c2', ifname: 'eth0' }],
    });
    expect(gc.code, gc.stdout).toBe(0);
    expect(existsSync(saved(a))).toBe(false);
    expect(existsSync(saved(b))).toBe(true);
    expect(readdirSync(dataDir()).sort()).toEqual(['c2_eth0.json', `c2_eth0.json.${dead}.tmp`]);
    expect(run(b, 'DEL', {}).code).toBe(0); // DEL takes its own leftovers too
    expect(readdirSync(dataDir())).toEqual([]);
  });
});
