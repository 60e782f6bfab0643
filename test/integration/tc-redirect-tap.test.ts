import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, ROOT, Sandbox, must } from '../helpers/sandbox.js';

/**
 * tc-redirect-tap chained after bridge (+ host-local), as a runtime runs the
 * list: the bridge's result is the plugin's prevResult. A "VM"
 * (test/helpers/guest.py) on the TAP, with the container interface's MAC and
 * address, answers the host on the container's address and reaches the
 * gateway; the container's own stack does not.
 */
const BRIDGE = join(BIN, 'bridge');
const TRT = join(BIN, 'tc-redirect-tap');
const GUEST = join(ROOT, 'test/helpers/guest.py');

let sb: Sandbox;
let guests: ChildProcessWithoutNullStreams[] = [];
beforeEach(() => {
  sb = new Sandbox('trt');
});
afterEach(() => {
  for (const g of guests) if (g.exitCode === null) g.kill('SIGKILL');
  guests = [];
  sb.cleanup();
});

interface Guest {
  proc: ChildProcessWithoutNullStreams;
  /** Resolves with the first stdout line matching `re`, rejects after `ms`. */
  line(re: RegExp, ms?: number): Promise<string>;
  stop(): Promise<void>;
}

function startGuest(ns: string, args: string[]): Guest {
  const proc = spawn('ip', ['netns', 'exec', ns, 'python3', GUEST, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  guests.push(proc);
  let out = '';
  proc.stdout.on('data', (b) => (out += b));
  proc.stderr.on('data', (b) => (out += b));
  const line = (re: RegExp, ms = 30_000) =>
    new Promise<string>((res, rej) => {
      const t0 = Date.now();
      const poll = () => {
        const m = out.split('\n').find((l) => re.test(l));
        if (m) return res(m);
        if (proc.exitCode !== null || Date.now() - t0 > ms) return rej(new Error(`guest: no line matching ${re} (exit ${proc.exitCode}); output: ${out}`));
        setTimeout(poll, 50);
      };
      poll();
    });
  const stop = () =>
    new Promise<void>((res) => {
      if (proc.exitCode !== null) return res();
      const t = setTimeout(() => proc.kill('SIGKILL'), 10_000);
      proc.on('exit', () => {
        clearTimeout(t);
        res();
      });
      proc.stdin.end();
    });
  return { proc, line, stop };
}

const tcJson = (ns: string, argv: string[]) => JSON.parse(must(['ip', 'netns', 'exec', ns, 'tc', '-j', ...argv]) || '[]');
const linkJson = (ns: string, dev: string) => JSON.parse(must(['ip', 'netns', 'exec', ns, 'ip', '-d', '-j', 'link', 'show', dev]))[0];
const hasLink = (ns: string, dev: string) => sb.inNs(ns, ['ip', 'link', 'show', dev]).code === 0;
const ingress = (ns: string, dev: string) => tcJson(ns, ['qdisc', 'show', 'dev', dev]).filter((q: any) => q.kind === 'ingress');
/** The redirect targets of the filters on `dev`'s ingress, as tc prints them. */
const redirects = (ns: string, dev: string): string[] =>
  tcJson(ns, ['filter', 'show', 'dev', dev, 'parent', 'ffff:'])
    .flatMap((f: any) => f.options?.actions ?? [])
    .filter((a: any) => a.kind === 'mirred' && a.mirred_action === 'redirect' && a.direction === 'egress')
    .map((a: any) => a.to_dev);

/** Pings from the sandbox's host namespace; a few tries for success (ARP, a guest just attached). */
function hostPing(ip: string, expectOk: boolean): boolean {
  for (let i = 0; i < (expectOk ? 5 : 1); i++) {
    if (sb.inHost(['ping', '-c', '1', '-W', '2', ip]).code === 0) return true;
  }
  return false;
}

const trtConf = (prev: unknown, extra: Record<string, unknown> = {}) => ({ cniVersion: '1.0.0', name: 'vmnet', type: 'tc-redirect-tap', ...extra, ...(prev ? { prevResult: prev } : {}) });

/** bridge ADD into a fresh container namespace; returns its result (the prevResult for tc-redirect-tap). */
function bridgeAdd(id: string) {
  const c = sb.container();
  const bconf = { cniVersion: '1.0.0', name: 'vmnet', type: 'bridge', bridge: 'vmbr0', isGateway: true, ipam: { type: 'host-local', subnet: '10.66.0.0/24', dataDir: join(sb.dir, 'ipam') } };
  const b = sb.plugin(BRIDGE, { command: 'ADD', containerId: id, netns: c.path }, bconf);
  expect(b.code, b.stdout + b.stderr).toBe(0);
  const [ip] = (b.json.ips[0].address as string).split('/');
  return { c, bconf, prev: b.json, ip, gw: b.json.ips[0].gateway as string };
}

describe('tc-redirect-tap', () => {
  it('hands the container address to a VM on the TAP; CHECK; DEL removes TAP and qdisc, idempotently', async () => {
    const { c, bconf, prev, ip, gw } = bridgeAdd('vm1');
    const call = (command: string, conf: unknown, env: Record<string, string> = {}) => sb.plugin(TRT, { command, containerId: 'vm1', netns: c.path, env }, conf);

    const add = call('ADD', trtConf(prev));
    expect(add.code, add.stdout + add.stderr).toBe(0);
    const eth0 = linkJson(c.name, 'eth0');
    const tap = linkJson(c.name, 'tap0');
    // The result: the bridge's, plus the TAP in the container namespace; the addresses stay on eth0.
    expect(add.json.interfaces).toEqual([...prev.interfaces, { name: 'tap0', mac: tap.address, sandbox: c.path }]);
    expect(add.json.ips).toEqual(prev.ips);
    expect(tap.linkinfo.info_kind).toBe('tun');
    expect(tap.linkinfo.info_data.type).toBe('tap');
    expect(tap.mtu).toBe(eth0.mtu);
    expect(tap.flags).toContain('UP');
    // What the kernel holds: an ingress qdisc on each, each redirecting to the other.
    expect(ingress(c.name, 'eth0')).toHaveLength(1);
    expect(ingress(c.name, 'tap0')).toHaveLength(1);
    expect(redirects(c.name, 'eth0')).toEqual(['tap0']);
    expect(redirects(c.name, 'tap0')).toEqual(['eth0']);
    expect(must(['ip', 'netns', 'exec', c.name, 'tc', 'filter', 'show', 'dev', 'eth0', 'parent', 'ffff:'])).toMatch(/match 00000000\/00000000 at 0[\s\S]*Egress Redirect to device tap0\) stolen/);

    // Nobody on the TAP: the container's own stack never sees eth0's traffic, so nothing answers.
    expect(hostPing(ip, false)).toBe(false);

    const guest = startGuest(c.name, ['--tap', 'tap0', '--ip', ip, '--mac', eth0.address, '--ping', gw, '--via', gw, '--count', '5', '--timeout', '120']);
    await guest.line(/^ready$/);
    // The guest reaches the gateway through eth0 and the bridge …
    const pinged = await guest.line(/^ping \d+\/\d+$/, 60_000);
    const [got, sent] = pinged.slice(5).split('/').map(Number);
    expect(sent).toBe(5);
    expect(got).toBeGreaterThanOrEqual(3);
    // … and answers the host on the container's address.
    expect(hostPing(ip, true)).toBe(true);
    // From inside the container namespace nothing works: replies to it are redirected to the VM.
    expect(sb.inNs(c.name, ['ping', '-c', '1', '-W', '1', gw]).code).not.toBe(0);
    // The replies were the guest's: without it, silence again.
    await guest.stop();
    expect(hostPing(ip, false)).toBe(false);

    const conf = trtConf(add.json);
    const ok = call('CHECK', conf);
    expect(ok.code, ok.stdout + ok.stderr).toBe(0);
    must(['ip', 'netns', 'exec', c.name, 'tc', 'filter', 'del', 'dev', 'tap0', 'parent', 'ffff:']);
    const bad = call('CHECK', conf);
    expect(bad.code).not.toBe(0);
    expect(bad.json).toMatchObject({ code: 115, msg: 'no redirect filter from tap0 to eth0', details: 'no filters on tap0 ingress' });

    const del = call('DEL', conf);
    expect(del.code, del.stdout + del.stderr).toBe(0);
    expect(hasLink(c.name, 'tap0')).toBe(false);
    expect(ingress(c.name, 'eth0')).toEqual([]);
    expect(hasLink(c.name, 'eth0')).toBe(true); // only ours went
    expect(call('DEL', conf).code).toBe(0);
    const bdel = sb.plugin(BRIDGE, { command: 'DEL', containerId: 'vm1', netns: c.path }, bconf);
    expect(bdel.code, bdel.stdout + bdel.stderr).toBe(0);
    sb.removeContainer(c.name);
    const gone = call('DEL', conf);
    expect(gone.code, gone.stdout + gone.stderr).toBe(0);
  });

  it('CHECK notices the container side too; DEL after the TAP went by hand still removes the qdisc', () => {
    const { c, prev } = bridgeAdd('vm2');
    const call = (command: string, conf: unknown) => sb.plugin(TRT, { command, containerId: 'vm2', netns: c.path }, conf);
    const add = call('ADD', trtConf(prev));
    expect(add.code, add.stdout + add.stderr).toBe(0);
    const conf = trtConf(add.json);
    must(['ip', 'netns', 'exec', c.name, 'tc', 'qdisc', 'del', 'dev', 'eth0', 'ingress']);
    expect(call('CHECK', conf).json).toMatchObject({ code: 115, msg: 'no ingress qdisc on eth0' });
    must(['ip', 'netns', 'exec', c.name, 'ip', 'link', 'set', 'tap0', 'mtu', '1400']);
    expect(call('CHECK', conf).json).toMatchObject({ code: 115, msg: "MTU of tap0 (1400) differs from eth0's (1500)" });

    // Put the container side back by hand, then remove the TAP: the filter is left pointing at nothing.
    must(['ip', 'netns', 'exec', c.name, 'tc', 'qdisc', 'add', 'dev', 'eth0', 'ingress']);
    must(['ip', 'netns', 'exec', c.name, 'tc', 'filter', 'add', 'dev', 'eth0', 'parent', 'ffff:', 'protocol', 'all', 'u32', 'match', 'u32', '0', '0', 'action', 'mirred', 'egress', 'redirect', 'dev', 'tap0']);
    must(['ip', 'netns', 'exec', c.name, 'ip', 'link', 'del', 'tap0']);
    expect(call('CHECK', conf).json).toMatchObject({ code: 115, msg: 'TAP "tap0" not found in ' + c.path });
    expect(call('DEL', conf).code).toBe(0);
    expect(ingress(c.name, 'eth0')).toEqual([]);
  });

  it('leaves an ingress qdisc that is not its own, a link of the TAP name that is no TAP, and foreign filters', () => {
    const { c, prev } = bridgeAdd('vm3');
    const call = (command: string, conf: unknown) => sb.plugin(TRT, { command, containerId: 'vm3', netns: c.path }, conf);
    // A foreign ingress qdisc with a foreign filter: ADD refuses and leaves both (and makes no TAP).
    must(['ip', 'netns', 'exec', c.name, 'tc', 'qdisc', 'add', 'dev', 'eth0', 'ingress']);
    must(['ip', 'netns', 'exec', c.name, 'tc', 'filter', 'add', 'dev', 'eth0', 'parent', 'ffff:', 'protocol', 'ip', 'prio', '5', 'u32', 'match', 'ip', 'dst', '10.9.9.9/32', 'action', 'mirred', 'egress', 'mirror', 'dev', 'lo']);
    const add = call('ADD', trtConf(prev));
    expect(add.json).toMatchObject({ code: 4, msg: '"eth0" already has an ingress qdisc' });
    expect(hasLink(c.name, 'tap0')).toBe(false);
    // DEL does not touch it either.
    expect(call('DEL', trtConf(prev)).code).toBe(0);
    expect(ingress(c.name, 'eth0')).toHaveLength(1);
    must(['ip', 'netns', 'exec', c.name, 'tc', 'qdisc', 'del', 'dev', 'eth0', 'ingress']);

    // A TUN (not a TAP) named tap0: ADD fails, DEL leaves it.
    must(['ip', 'netns', 'exec', c.name, 'ip', 'tuntap', 'add', 'dev', 'tap0', 'mode', 'tun']);
    const taken = call('ADD', trtConf(prev));
    expect(taken.json).toMatchObject({ code: 4, msg: 'a link named "tap0" already exists' });
    expect(ingress(c.name, 'eth0')).toEqual([]);
    expect(call('DEL', trtConf(prev)).code).toBe(0);
    expect(linkJson(c.name, 'tap0').linkinfo.info_data.type).toBe('tun');
    must(['ip', 'netns', 'exec', c.name, 'ip', 'link', 'del', 'tap0']);

    // A foreign filter added to our qdisc after ADD: DEL removes only our filter, the qdisc stays for it.
    const ok = call('ADD', trtConf(prev));
    expect(ok.code, ok.stdout + ok.stderr).toBe(0);
    must(['ip', 'netns', 'exec', c.name, 'tc', 'filter', 'add', 'dev', 'eth0', 'parent', 'ffff:', 'protocol', 'ip', 'prio', '5', 'u32', 'match', 'ip', 'dst', '10.9.9.9/32', 'action', 'mirred', 'egress', 'mirror', 'dev', 'lo']);
    expect(call('DEL', trtConf(ok.json)).code).toBe(0);
    expect(hasLink(c.name, 'tap0')).toBe(false);
    expect(ingress(c.name, 'eth0')).toHaveLength(1);
    expect(redirects(c.name, 'eth0')).toEqual([]);
    expect(must(['ip', 'netns', 'exec', c.name, 'tc', 'filter', 'show', 'dev', 'eth0', 'parent', 'ffff:'])).toContain('Egress Mirror to device lo');
  });

  it('takes name, owner and group from CNI_ARGS (as AWS) over the configuration; multiQueue', async () => {
    const { c, prev, ip } = bridgeAdd('vm4');
    const env = { CNI_ARGS: 'IgnoreUnknown=1;TC_REDIRECT_TAP_NAME=vmtap7;TC_REDIRECT_TAP_UID=4242;TC_REDIRECT_TAP_GID=4343' };
    const conf = trtConf(prev, { tapName: 'ignored0', tapOwner: 1, tapGroup: 1, multiQueue: true });
    const add = sb.plugin(TRT, { command: 'ADD', containerId: 'vm4', netns: c.path, env }, conf);
    expect(add.code, add.stdout + add.stderr).toBe(0);
    expect(add.json.interfaces.at(-1)).toMatchObject({ name: 'vmtap7', sandbox: c.path });
    expect(hasLink(c.name, 'ignored0')).toBe(false);
    const info = linkJson(c.name, 'vmtap7').linkinfo.info_data;
    expect(info).toMatchObject({ type: 'tap', multi_queue: true, user: 4242, group: 4343 });
    // The owner may attach without CAP_NET_ADMIN; another uid may not.
    const mac = linkJson(c.name, 'eth0').address;
    const other = startGuest(c.name, ['--tap', 'vmtap7', '--ip', ip, '--mac', mac, '--uid', '4241', '--gid', '4341', '--multi-queue']);
    await other.line(/^attach-failed EPERM$/);
    const owner = startGuest(c.name, ['--tap', 'vmtap7', '--ip', ip, '--mac', mac, '--uid', '4242', '--gid', '4343', '--multi-queue']);
    await owner.line(/^ready$/);
    expect(hostPing(ip, true)).toBe(true);
    await owner.stop();
    const check = sb.plugin(TRT, { command: 'CHECK', containerId: 'vm4', netns: c.path, env }, trtConf(add.json, { multiQueue: true }));
    expect(check.code, check.stdout + check.stderr).toBe(0);
    const del = sb.plugin(TRT, { command: 'DEL', containerId: 'vm4', netns: c.path, env }, trtConf(add.json));
    expect(del.code, del.stdout + del.stderr).toBe(0);
    expect(hasLink(c.name, 'vmtap7')).toBe(false);
    expect(ingress(c.name, 'eth0')).toEqual([]);
  });

  it('refuses bad input with a CNI error and leaves nothing behind', () => {
    // A bare veth end as the "container interface" (no bridge needed to fail).
    const c = sb.container();
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'add', 'vh-x', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', c.name]);
    must(['ip', 'netns', 'exec', c.name, 'ip', 'link', 'set', 'eth0', 'up']);
    const mac = linkJson(c.name, 'eth0').address;
    const prev = (ifname = 'eth0') => ({
      cniVersion: '1.0.0',
      interfaces: [{ name: 'vh-x', mac: '0a:00:00:00:00:01' }, { name: ifname, mac, sandbox: c.path }],
      ips: [{ address: '10.66.1.2/24', gateway: '10.66.1.1', interface: 1 }],
      dns: {},
    });
    const run = (conf: unknown, opts: { ifname?: string; args?: string } = {}) =>
      sb.plugin(TRT, { command: 'ADD', containerId: 'bad', netns: c.path, ifname: opts.ifname, ...(opts.args ? { args: opts.args } : {}) }, conf);
    const nothing = () => {
      expect(must(['ip', 'netns', 'exec', c.name, 'ip', '-o', 'link', 'show', 'type', 'tun'])).toBe('');
      expect(ingress(c.name, 'eth0')).toEqual([]);
    };
    const cases: [string, unknown, { ifname?: string; args?: string }, number, RegExp][] = [
      ['no prevResult', trtConf(undefined), {}, 7, /missing prevResult/],
      ['prevResult without CNI_IFNAME', trtConf(prev()), { ifname: 'eth9' }, 7, /prevResult has no interface "eth9"/],
      ['no such interface', trtConf(prev('eth9')), { ifname: 'eth9' }, 4, /no interface "eth9"/],
      ['bad tapName', trtConf(prev(), { tapName: 'a/b' }), {}, 7, /invalid network config/],
      ['tapName too long', trtConf(prev(), { tapName: 'a'.repeat(16) }), {}, 7, /invalid network config/],
      ['tapName = CNI_IFNAME', trtConf(prev(), { tapName: 'eth0' }), {}, 7, /container interface's name/],
      ['negative tapOwner', trtConf(prev(), { tapOwner: -1 }), {}, 7, /invalid network config/],
      ['multiQueue not boolean', trtConf(prev(), { multiQueue: 'yes' }), {}, 7, /invalid network config/],
      ['bad TC_REDIRECT_TAP_UID', trtConf(prev()), { args: 'TC_REDIRECT_TAP_UID=abc' }, 7, /TC_REDIRECT_TAP_UID/],
      ['bad TC_REDIRECT_TAP_NAME', trtConf(prev()), { args: 'TC_REDIRECT_TAP_NAME=x:y' }, 7, /TC_REDIRECT_TAP_NAME/],
      ['unknown CNI_ARGS key', trtConf(prev()), { args: 'FOO=1' }, 4, /unknown CNI_ARGS keys/],
      ['cniVersion 0.2.0', { ...trtConf(prev()), cniVersion: '0.2.0' }, {}, 1, /./],
    ];
    for (const [what, conf, opts, code, msg] of cases) {
      const r = run(conf, opts);
      expect(r.code, what).not.toBe(0);
      expect(r.json?.code, `${what}: ${r.stdout}${r.stderr}`).toBe(code);
      expect(`${r.json.msg} ${r.json.details ?? ''}`, what).toMatch(msg);
      nothing();
    }
    // Half way: the TAP is made, then its MTU is refused (a TAP's maximum is below a veth's).
    must(['ip', 'netns', 'exec', c.name, 'ip', 'link', 'set', 'eth0', 'mtu', '65535']);
    const half = run(trtConf(prev()));
    expect(half.json, half.stdout + half.stderr).toMatchObject({ code: 112, msg: 'failed to set the MTU of tap0 to 65535' });
    nothing();
  });
});
