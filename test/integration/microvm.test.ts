import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, ROOT, Sandbox, must } from '../helpers/sandbox.js';

// bridge's host-TAP mode (docs/microvm.md): the sandbox's host namespace is
// "the host" the VMs run on; test/helpers/guest.py attached to the TAP is the VM.
const BRIDGE = join(BIN, 'bridge');
const GUEST = join(ROOT, 'test/helpers/guest.py');

let sb: Sandbox;
let guests: ChildProcessWithoutNullStreams[] = [];
beforeEach(() => {
  sb = new Sandbox('vm');
});
afterEach(() => {
  for (const g of guests) {
    g.stdin.end();
    if (g.exitCode === null && g.pid) {
      try {
        process.kill(g.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  }
  guests = [];
  sb.cleanup();
});

type Conf = Record<string, any>;

/** A list from conf.d/microvm as shipped; only the IPAM state directory moves into the sandbox. */
function loadList(file: string): { list: Conf; confs: Conf[] } {
  const list = JSON.parse(readFileSync(join(ROOT, 'conf.d/microvm', file), 'utf8'));
  const confs = list.plugins.map((p: Conf) => ({ ...p, cniVersion: list.cniVersion, name: list.name, ...(p.ipam ? { ipam: { ...p.ipam, dataDir: join(sb.dir, 'ipam') } } : {}) }));
  return { list, confs };
}
/** The NAT example's bridge configuration, with changes. */
const natConf = (over: Conf = {}): Conf => ({ ...loadList('nat.conflist').confs[0], ...over });

const hostNs = () => `/var/run/netns/${sb.host}`;
function call(command: string, conf: Conf, id: string, opts: { netns?: string | null; prevResult?: unknown; ifname?: string } = {}) {
  const netns = opts.netns === null ? undefined : (opts.netns ?? hostNs());
  return sb.plugin(BRIDGE, { command, containerId: id, netns, ifname: opts.ifname }, { ...conf, ...(opts.prevResult ? { prevResult: opts.prevResult } : {}) });
}
function add(conf: Conf, id: string, opts: { netns?: string } = {}) {
  const r = call('ADD', conf, id, opts);
  expect(r.code, r.stdout + r.stderr).toBe(0);
  return r.json;
}

const allocations = (net: string) => {
  const d = join(sb.dir, 'ipam', net);
  return existsSync(d) ? readdirSync(d).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)).sort() : [];
};
const linkDetail = (name: string) => sb.inHost(['ip', '-d', 'link', 'show', 'dev', name]);
const taps = () => sb.inHost(['ip', '-o', 'link', 'show', 'type', 'tun']).stdout.trim();
const natChains = () => sb.inHost(['iptables-save', '-t', 'nat']).stdout.split('\n').filter((l) => l.startsWith(':CNI-'));
// Without carrier flags: a bridge's carrier follows its ports' in the kernel's own time.
const hostState = () => sb.hostState().replace(/ tentative\b/g, '').replace(/,?\b(LOWER_UP|NO-CARRIER)\b/g, '').replace(/state \S+/g, '');

/** A guest (test/helpers/guest.py) on a TAP of the sandbox's host; its output so far, and a wait for a line. */
function guest(args: string[]) {
  // A caller's own --timeout comes later and wins.
  const p = spawn('ip', ['netns', 'exec', sb.host, 'python3', GUEST, '--timeout', '120', ...args]);
  guests.push(p);
  let out = '';
  p.stdout.on('data', (b) => (out += b));
  p.stderr.on('data', (b) => (out += b));
  const exited = new Promise<void>((res) => p.on('close', () => res()));
  return {
    get out() {
      return out;
    },
    async waitFor(re: RegExp, ms = 60_000): Promise<RegExpExecArray> {
      const end = Date.now() + ms;
      for (;;) {
        const m = re.exec(out);
        if (m) return m;
        if (p.exitCode !== null || Date.now() > end) throw new Error(`guest ${args.join(' ')}: no ${re} in: ${out}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async stop(): Promise<void> {
      p.stdin.end();
      await exited;
    },
  };
}
const vm = (r: Conf) => ({ tap: r.interfaces[1].name as string, mac: r.interfaces[2].mac as string, ip: (r.ips[0].address as string).split('/')[0], gw: r.ips[0].gateway as string });

/** A namespace "outside" the host, joined to it by a veth: `hostEnd` in the sandbox's host, eth0 in the peer. */
function outside(hostEnd: string, peerCidr: string, hostCidr?: string) {
  const peer = sb.container();
  must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'add', hostEnd, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', peer.name]);
  if (hostCidr) must(['ip', 'netns', 'exec', sb.host, 'ip', 'addr', 'add', hostCidr, 'dev', hostEnd]);
  must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'set', hostEnd, 'up']);
  must(['ip', 'netns', 'exec', peer.name, 'ip', 'addr', 'add', peerCidr, 'dev', 'eth0']);
  must(['ip', 'netns', 'exec', peer.name, 'ip', 'link', 'set', 'eth0', 'up']);
  return peer;
}
const pingCount = (m: RegExpExecArray) => ({ got: Number(m[1]), sent: Number(m[2]) });

describe('conf.d/microvm/nat.conflist: NAT mode', () => {
  it('the guest reaches an outside peer only through masquerading; the peer cannot reach the guest', async () => {
    const { confs } = loadList('nat.conflist');
    expect(confs).toHaveLength(1);
    const conf = confs[0];
    expect(conf.tap).toBeDefined();
    // The outside: a public-style subnet, and NO route back to the VMs' private subnet.
    const peer = outside('up0', '198.51.100.9/24', '198.51.100.1/24');
    const r = add(conf, 'vm1');
    const v = vm(r);
    expect(r.interfaces[0].name).toBe(conf.bridge);
    expect(r.interfaces[1].sandbox).toBeUndefined();
    expect(r.interfaces[2]).toEqual({ name: 'eth0', mac: v.mac, sandbox: hostNs() });
    expect(r.ips).toEqual([{ interface: 2, address: '172.30.0.2/24', gateway: '172.30.0.1' }]);
    expect(sb.inHost(['ip', '-o', 'addr', 'show', 'dev', conf.bridge]).stdout).toContain('inet 172.30.0.1/24');
    expect(sb.inHost(['sysctl', '-n', 'net.ipv4.ip_forward']).stdout.trim()).toBe('1');
    expect(natChains()).toHaveLength(1);
    expect(sb.inNs(peer.name, ['ip', 'route', 'get', '172.30.0.2']).code).not.toBe(0); // no route back

    const g = guest(['--tap', v.tap, '--ip', v.ip, '--mac', v.mac, '--ping', '198.51.100.9', '--via', v.gw, '--count', '4']);
    await g.waitFor(/^ready$/m);
    const ok = pingCount(await g.waitFor(/^ping (\d+)\/(\d+)$/m));
    expect(ok.sent).toBe(4);
    expect(ok.got, g.out).toBeGreaterThanOrEqual(3);
    // The peer saw the host's address, never the guest's.
    expect(sb.inNs(peer.name, ['ping', '-c', '1', '-W', '2', v.ip]).code).not.toBe(0);
    await g.stop();

    // Without the masquerade jump the same pings get nothing back: it was the NAT that made them work.
    const check = call('CHECK', conf, 'vm1', { prevResult: r });
    expect(check.code, check.stdout).toBe(0);
    must(['ip', 'netns', 'exec', sb.host, 'iptables', '-t', 'nat', '-F', 'POSTROUTING']);
    const g2 = guest(['--tap', v.tap, '--ip', v.ip, '--mac', v.mac, '--ping', '198.51.100.9', '--via', v.gw, '--count', '3']);
    expect(pingCount(await g2.waitFor(/^ping (\d+)\/(\d+)$/m)).got).toBe(0);
    await g2.stop();
    expect(call('CHECK', conf, 'vm1', { prevResult: r }).json?.code).toBe(115);

    expect(call('DEL', conf, 'vm1', { prevResult: r }).code).toBe(0);
    expect(taps()).toBe('');
    expect(natChains()).toEqual([]);
    expect(allocations(conf.name)).toEqual([]);
  });
});

describe('conf.d/microvm/bridged.conflist: bridged mode', () => {
  it("the VM is on the outer network: it and the outer router ping each other; the plugin leaves the operator's uplink alone", async () => {
    const { confs } = loadList('bridged.conflist');
    const conf = confs[0];
    expect(conf.isGateway).toBe(false);
    expect(conf.ipMasq).toBe(false);
    const range = conf.ipam.ranges[0][0];
    const prefix = range.subnet.split('/')[1];
    // The operator's part (like fc-bridge-setup.sh bridged): the bridge, the uplink enslaved to it.
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'add', conf.bridge, 'type', 'bridge']);
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'set', conf.bridge, 'up']);
    const router = outside('uplink0', `${range.gateway}/${prefix}`);
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'set', 'uplink0', 'master', conf.bridge]);
    const uplinkBefore = sb.inHost(['ip', '-o', 'link', 'show', 'dev', 'uplink0']).stdout.replace(/state \S+/, '');

    const r = add(conf, 'vm1');
    const v = vm(r);
    expect(v.ip).toBe(range.rangeStart);
    expect(v.gw).toBe(range.gateway);
    expect(sb.inHost(['ip', '-o', 'addr', 'show', 'dev', conf.bridge]).stdout).not.toContain('inet '); // not a gateway
    expect(natChains()).toEqual([]);
    expect(sb.inHost(['ip', '-o', 'link', 'show', 'dev', 'uplink0']).stdout.replace(/state \S+/, '')).toBe(uplinkBefore);

    const g = guest(['--tap', v.tap, '--ip', v.ip, '--mac', v.mac, '--ping', range.gateway, '--via', range.gateway, '--count', '3']);
    await g.waitFor(/^ready$/m);
    expect(pingCount(await g.waitFor(/^ping (\d+)\/(\d+)$/m)).got, g.out).toBeGreaterThanOrEqual(2);
    // The outer network reaches the VM directly, by its own address.
    const back = sb.inNs(router.name, ['ping', '-c', '3', '-W', '2', v.ip]);
    expect(back.code, back.stdout).toBe(0);
    expect(sb.inNs(router.name, ['ip', 'neigh', 'show', v.ip]).stdout).toContain(v.mac);
    await g.stop();

    expect(call('CHECK', conf, 'vm1', { prevResult: r }).code).toBe(0);
    expect(call('DEL', conf, 'vm1', { prevResult: r, netns: null }).code).toBe(0);
    expect(taps()).toBe('');
    expect(sb.inHost(['ip', '-o', 'link', 'show', 'master', conf.bridge]).stdout).toContain('uplink0');
    expect(allocations(conf.name)).toEqual([]);
  });
});

describe('host-TAP mode', () => {
  it('ADD, CHECK, DEL (without CNI_NETNS, twice), GC: names, marks and MACs; only our TAPs of this network are collected', () => {
    const conf = natConf();
    const a = add(conf, 'vm-a');
    const b = add(conf, 'vm-b', { netns: '/run/cnits-no-such-vm/vm-b' }); // CNI_NETNS is only reported, never opened
    expect(b.interfaces[2].sandbox).toBe('/run/cnits-no-such-vm/vm-b');
    for (const [r, id] of [[a, 'vm-a'], [b, 'vm-b']] as const) {
      const { tap, mac } = vm(r);
      expect(tap).toMatch(/^tap[0-9a-f]{11}$/);
      expect(parseInt(mac.slice(0, 2), 16) & 3).toBe(2); // locally administered, unicast
      const d = linkDetail(tap).stdout;
      expect(d).toMatch(/tun type tap/);
      expect(d).toContain(`master ${conf.bridge}`);
      expect(d).toContain(`alias cni-ts bridge-tap net=${conf.name} id=${id} if=eth0`);
      expect(d).toMatch(/<[^>]*\bUP\b/);
      expect(r.interfaces[1].mac).not.toBe(mac); // the TAP keeps the kernel's MAC; the guest's is reported
    }
    expect(vm(a).tap).not.toBe(vm(b).tap);
    expect(call('CHECK', conf, 'vm-a', { prevResult: a }).code).toBe(0);
    // CHECK sees what changed.
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'set', vm(a).tap, 'down']);
    expect(call('CHECK', conf, 'vm-a', { prevResult: a }).json?.msg).toMatch(/down/);
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'set', vm(a).tap, 'up']);
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'set', vm(a).tap, 'nomaster']);
    expect(call('CHECK', conf, 'vm-a', { prevResult: a }).json?.code).toBe(115);
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'set', vm(a).tap, 'master', conf.bridge]);
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'addr', 'del', '172.30.0.1/24', 'dev', conf.bridge]);
    expect(call('CHECK', conf, 'vm-a', { prevResult: a }).json?.msg).toMatch(/gateway address/);
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'addr', 'add', '172.30.0.1/24', 'dev', conf.bridge]);
    expect(call('CHECK', conf, 'vm-a', { prevResult: a }).code).toBe(0);

    // TAPs GC must leave: someone else's (no mark), and ours of another network.
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'tuntap', 'add', 'dev', 'foreign0', 'mode', 'tap']);
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'tuntap', 'add', 'dev', 'othernet0', 'mode', 'tap']);
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'set', 'othernet0', 'alias', 'cni-ts bridge-tap net=other-net id=vm-b if=eth0']);
    const gcConf = { ...conf, cniVersion: '1.1.0', 'cni.dev/valid-attachments': [{ containerID: 'vm-a', ifname: 'eth0' }] };
    const gc = sb.plugin(BRIDGE, { command: 'GC' }, gcConf);
    expect(gc.code, gc.stdout + gc.stderr).toBe(0);
    expect(linkDetail(vm(b).tap).code).not.toBe(0);
    expect(linkDetail(vm(a).tap).code).toBe(0);
    expect(linkDetail('foreign0').code).toBe(0);
    expect(linkDetail('othernet0').code).toBe(0);
    expect(allocations(conf.name)).toEqual(['172.30.0.2']); // host-local's GC freed vm-b's address
    expect(natChains()).toHaveLength(1); // and ipMasq's GC its chain

    // DEL needs no namespace, and is idempotent.
    for (let i = 0; i < 2; i++) expect(call('DEL', conf, 'vm-a', { prevResult: a, netns: null }).code).toBe(0);
    expect(linkDetail(vm(a).tap).code).not.toBe(0);
    expect(natChains()).toEqual([]);
    expect(allocations(conf.name)).toEqual([]);
    expect(call('DEL', conf, 'vm-b', { netns: null }).code).toBe(0); // already collected
    // Deterministic: a new ADD of the same attachment gets the same TAP name and guest MAC.
    const again = add(conf, 'vm-a');
    expect(vm(again).tap).toBe(vm(a).tap);
    expect(vm(again).mac).toBe(vm(a).mac);
    expect(call('DEL', conf, 'vm-a', { prevResult: again }).code).toBe(0);
    expect(taps().split('\n').map((l) => l.split(':')[1].trim().split('@')[0]).sort()).toEqual(['foreign0', 'othernet0']);
  });

  it('owner, group, multi-queue, a configured name and MAC: the owner uid attaches, another uid cannot', async () => {
    const conf = natConf({ tap: { name: 'vmtap-own', owner: 4242, group: 4300, multiQueue: true }, runtimeConfig: { mac: '02:AA:bb:cc:dd:01' } });
    const r = add(conf, 'vm-own');
    expect(r.interfaces[1].name).toBe('vmtap-own');
    expect(r.interfaces[2].mac).toBe('02:aa:bb:cc:dd:01');
    const d = linkDetail('vmtap-own').stdout;
    expect(d).toMatch(/user 4242\b/);
    expect(d).toMatch(/group 4300\b/);
    expect(d).toMatch(/multi_queue/);
    expect(call('CHECK', conf, 'vm-own', { prevResult: r }).code).toBe(0);
    // CHECK compares with the configuration.
    expect(call('CHECK', { ...conf, tap: { ...conf.tap, owner: 4243 } }, 'vm-own', { prevResult: r }).json?.msg).toMatch(/owner 4242/);
    expect(call('CHECK', { ...conf, tap: { ...conf.tap, multiQueue: false } }, 'vm-own', { prevResult: r }).json?.code).toBe(115);
    expect(call('CHECK', { ...conf, runtimeConfig: { mac: '02:aa:bb:cc:dd:02' } }, 'vm-own', { prevResult: r }).json?.code).toBe(115);

    // The kernel's rule: with both set, an unprivileged process needs the owner uid AND the group.
    const base = ['--tap', 'vmtap-own', '--ip', vm(r).ip, '--mac', vm(r).mac, '--multi-queue'];
    const owner = guest([...base, '--uid', '4242', '--gid', '4300']);
    await owner.waitFor(/^ready$/m);
    await owner.stop();
    for (const [uid, gid] of [['4243', '4300'], ['4242', '5000']]) {
      const stranger = guest([...base, '--uid', uid, '--gid', gid]);
      await stranger.waitFor(/^attach-failed EPERM$/m);
    }
    expect(call('DEL', conf, 'vm-own', { prevResult: r }).code).toBe(0);

    // Owner only: that uid attaches whatever its group, another uid cannot.
    const solo = natConf({ tap: { owner: 4242 } });
    const s = vm(add(solo, 'vm-solo'));
    expect(linkDetail(s.tap).stdout).not.toMatch(/multi_queue/);
    const ok = guest(['--tap', s.tap, '--ip', s.ip, '--mac', s.mac, '--uid', '4242', '--gid', '5000']);
    await ok.waitFor(/^ready$/m);
    await ok.stop();
    const no = guest(['--tap', s.tap, '--ip', s.ip, '--mac', s.mac, '--uid', '4243', '--gid', '5000']);
    await no.waitFor(/^attach-failed EPERM$/m);
    expect(call('DEL', solo, 'vm-solo').code).toBe(0);
    expect(taps()).toBe('');
  });

  it('two VMs on the same bridge reach each other', async () => {
    const conf = natConf();
    const v1 = vm(add(conf, 'vm1'));
    const v2 = vm(add(conf, 'vm2'));
    const g2 = guest(['--tap', v2.tap, '--ip', v2.ip, '--mac', v2.mac]);
    await g2.waitFor(/^ready$/m);
    const g1 = guest(['--tap', v1.tap, '--ip', v1.ip, '--mac', v1.mac, '--ping', v2.ip, '--via', v2.ip, '--count', '3']);
    expect(pingCount(await g1.waitFor(/^ping (\d+)\/(\d+)$/m)).got, g1.out).toBeGreaterThanOrEqual(2);
    await g1.stop();
    await g2.stop();
    expect(call('DEL', conf, 'vm1').code).toBe(0);
    expect(call('DEL', conf, 'vm2').code).toBe(0);
    expect(taps()).toBe('');
  });

  it('macspoofchk: only the guest MAC enters the bridge from the TAP; DEL removes the rules', async () => {
    const conf = natConf({ macspoofchk: true });
    const r = add(conf, 'vm-spoof');
    const v = vm(r);
    expect(sb.inHost(['nft', 'list', 'ruleset']).stdout).toContain(v.tap);
    expect(call('CHECK', conf, 'vm-spoof', { prevResult: r }).code).toBe(0);
    // A spoofed MAC does not even get its ARP answered: the guest gives up after its timeout with nothing sent.
    const ping = async (mac: string) => {
      const g = guest(['--tap', v.tap, '--ip', v.ip, '--mac', mac, '--ping', v.gw, '--via', v.gw, '--count', '3', '--timeout', '10']);
      const m = pingCount(await g.waitFor(/^ping (\d+)\/(\d+)$/m));
      await g.stop();
      return m.got;
    };
    expect(await ping('02:00:00:00:00:99')).toBe(0);
    expect(await ping(v.mac)).toBeGreaterThanOrEqual(2);
    expect(call('DEL', conf, 'vm-spoof', { netns: null }).code).toBe(0);
    expect(sb.inHost(['nft', 'list', 'ruleset']).stdout).not.toContain(v.tap);
    expect(taps()).toBe('');
  });

  it("a TAP name taken by a foreign link: ADD fails without touching it, DEL leaves it, nothing is left", () => {
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'add', 'vmtap0', 'type', 'bridge']);
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'tuntap', 'add', 'dev', 'vmtap1', 'mode', 'tap']);
    const before = hostState();
    for (const name of ['vmtap0', 'vmtap1']) {
      const conf = natConf({ tap: { name } });
      const r = call('ADD', conf, 'vm-x');
      expect(r.json?.code, r.stdout).toBe(4);
      expect(r.json.msg).toContain(`"${name}" already exists`);
      expect(call('DEL', conf, 'vm-x', { netns: null }).code).toBe(0);
    }
    expect(hostState()).toBe(before); // no bridge, no chain, the links as they were
    expect(allocations('microvm-nat')).toEqual([]);
  });

  it('bad input is refused before anything is made', () => {
    const before = hostState();
    const bad: [Conf, number][] = [
      [natConf({ tap: { name: 'a-name-too-long0' } }), 7],
      [natConf({ tap: { name: '' } }), 7],
      [natConf({ tap: { name: 'tap%d' } }), 7],
      [natConf({ tap: { owner: -1 } }), 7],
      [natConf({ tap: { group: 4294967295 } }), 7],
      [natConf({ tap: 'yes' }), 7],
      [natConf({ runtimeConfig: { mac: 'not-a-mac' } }), 7],
      [natConf({ runtimeConfig: { mac: '01:00:5e:00:00:01' } }), 7], // multicast
      [natConf({ hairpinMode: true, promiscMode: true }), 7],
      [natConf({ vlan: 5, vlanTrunk: [{ id: 6 }] }), 7],
    ];
    for (const [conf, code] of bad) {
      const r = call('ADD', conf, 'vm-bad');
      expect(r.json?.code, `${JSON.stringify(conf.tap)} ${r.stdout}`).toBe(code);
    }
    // IPAM failing after the TAP and the bridge exist: both go again.
    const r = call('ADD', natConf({ ipam: { type: 'no-such-ipam' } }), 'vm-bad');
    expect(r.json?.code, r.stdout).toBe(114);
    expect(hostState()).toBe(before);
    expect(allocations('microvm-nat')).toEqual([]);
    // Exhaustion: the second VM's TAP goes; the first one's bridge and TAP stay.
    const one = natConf({ ipam: { ...natConf().ipam, ranges: [[{ subnet: '172.30.0.0/24', rangeStart: '172.30.0.10', rangeEnd: '172.30.0.10', gateway: '172.30.0.1' }]] } });
    add(one, 'vm-1');
    const mid = hostState();
    expect(call('ADD', one, 'vm-2').json?.code).toBe(110);
    expect(hostState()).toBe(mid);
    expect(allocations('microvm-nat')).toEqual(['172.30.0.10']);
  });

  it('vlan: works where the kernel filters VLANs, otherwise an error naming the feature and nothing left', () => {
    const probe = sb.inHost(['ip', 'link', 'add', 'vlprobe', 'type', 'bridge', 'vlan_filtering', '1']);
    sb.inHost(['ip', 'link', 'del', 'vlprobe']);
    const confs = [natConf({ vlan: 10 }), natConf({ vlanTrunk: [{ minID: 20, maxID: 22 }] })];
    if (probe.code !== 0) {
      console.log(`kernel has no bridge vlan_filtering (${probe.stderr.trim()}): checking the error path only`);
      const before = hostState();
      for (const conf of confs) {
        const r = call('ADD', conf, 'vm-vlan');
        expect(r.json?.code, r.stdout).toBe(112);
        expect(r.json.msg).toMatch(/VLAN filtering/);
        expect(hostState()).toBe(before); // no TAP, no bridge
        expect(allocations('microvm-nat')).toEqual([]);
      }
      // A bridge the operator made (without filtering): the port's VLAN request fails; the TAP and the address go, the bridge stays.
      must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'add', confs[0].bridge, 'type', 'bridge']);
      const r = call('ADD', confs[0], 'vm-vlan');
      expect(r.json?.code, r.stdout).toBe(112);
      expect(r.json.msg).toMatch(/VLAN filtering/);
      expect(taps()).toBe('');
      expect(allocations('microvm-nat')).toEqual([]);
      expect(sb.inHost(['ip', 'link', 'show', 'dev', confs[0].bridge]).code).toBe(0);
      return;
    }
    const r = add(confs[0], 'vm-vlan');
    const tap = vm(r).tap;
    expect(sb.inHost(['bridge', 'vlan', 'show', 'dev', tap]).stdout).toMatch(/\b10 PVID.*Untagged/);
    expect(call('CHECK', confs[0], 'vm-vlan', { prevResult: r }).code).toBe(0);
    expect(call('DEL', confs[0], 'vm-vlan', { prevResult: r }).code).toBe(0);
    const t = add(confs[1], 'vm-trunk');
    const shown = sb.inHost(['bridge', 'vlan', 'show', 'dev', vm(t).tap]).stdout;
    for (const id of ['20', '21', '22']) expect(shown).toMatch(new RegExp(`\\b${id}\\b`));
    expect(call('DEL', confs[1], 'vm-trunk', { prevResult: t }).code).toBe(0);
    expect(taps()).toBe('');
  });
});
