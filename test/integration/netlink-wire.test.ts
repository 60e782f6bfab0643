import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MODE } from '../helpers/mode.js';
import { Sandbox, TEST_BIN, must } from '../helpers/sandbox.js';
import { attrsOf, haveStrace, hex, parseStrace, straceArgv, type NlMessage } from '../helpers/strace.js';

/**
 * Wire proof (docs/wire-proof.md): for the kernel features this suite uses
 * that a kernel may lack (802.1Q links, bridge VLAN filtering, port VLANs,
 * netem), the netlink request a real plugin ADD sends is compared byte for
 * byte with the one iproute2 sends for the same operation. Both run under
 * strace (sendmsg/sendto with a hex dump of every byte); a kernel without
 * the feature refuses both requests, but the bytes were sent.
 *
 * Ours is the test build (.build/test-bin) run with CNI_TS_ENGINE=off, so the
 * plugin works in the straced process itself: exec mode only (in engine mode
 * the requests would come from the engine, outside strace).
 *
 * Normalised before comparing (and nothing else):
 *  - nlmsg_seq and nlmsg_pid: iproute2 numbers requests from the clock and
 *    leaves the port 0; the netlink package counts from 1 and fills in the
 *    socket's port. Neither changes what the kernel does.
 *  - interface indexes: ifi_index, tcm_ifindex, IFLA_LINK, IFLA_MASTER. Each
 *    side runs in a namespace of its own, so the same name has another index.
 *  - IFLA_NET_NS_FD's value: a descriptor number, local to the sending process.
 * Attribute order: every message is compared in wire order. No attribute
 * set is compared as a sorted set: ours was made to send iproute2's order
 * (top level and inside IFLA_LINKINFO / IFLA_INFO_DATA / IFLA_AF_SPEC /
 * TCA_OPTIONS), so no exception is needed.
 *
 * Differences found, and how each was resolved (all in our encoders:
 * lib/netlink/rtnl.ts createVlan/createBridge/bridgeVlanAdd, lib/netlink/tc.ts
 * encodeNetem):
 *  - IFLA_INFO_KIND: iproute2 sends the kind without a NUL (len 4+n); ours had
 *    one. The kernel copies it with nla_strscpy either way → ours drops it.
 *  - NLA_F_NESTED: iproute2 sets it on none of IFLA_LINKINFO, IFLA_INFO_DATA,
 *    IFLA_AF_SPEC; ours set it on IFLA_INFO_DATA and IFLA_AF_SPEC. These are
 *    parsed without requiring the flag → ours drops it.
 *  - Top-level order of a new link: iproute2 writes [IFLA_MTU], [IFLA_NET_NS_FD],
 *    IFLA_LINK, IFLA_IFNAME, IFLA_LINKINFO; the package wrote IFLA_IFNAME first
 *    and IFLA_NET_NS_FD last → ours is now encoded by hand in iproute2's order.
 *  - IFLA_MTU: the vlan plugin sends it only when `mtu` is configured; the
 *    vlan case runs once without and once with `mtu 1400` given to `ip` too.
 *  - The vlan plugin creates the link straight in the container namespace
 *    (IFLA_NET_NS_FD) under its final name: `ip link add … netns NS` asks the same.
 *  - netem: `tc` sends tc_netem_qopt alone (delay and jitter in 64 ns ticks,
 *    no TCA_NETEM_LATENCY64/JITTER64, no distribution table: there is none
 *    without `distribution`); ours also sent the 64-bit attributes. For a
 *    whole number of 64 ns the kernel reads the same delay from the ticks →
 *    ours sends the 64-bit ones only when the ticks cannot carry the value.
 *    `tc` gets `limit 10000` (the plugin's; tc's default is 1000) and `root
 *    handle 1:` (the plugin's parent and handle); both send CREATE|EXCL.
 */
const RTM_NEWLINK = 16;
const RTM_SETLINK = 19;
const RTM_NEWQDISC = 36;
const IFLA_LINK = 5;
const IFLA_MASTER = 10;
const IFLA_LINKINFO = 18;
const IFLA_AF_SPEC = 26;
const IFLA_NET_NS_FD = 28;
const IFLA_INFO_KIND = 1;
const IFLA_INFO_DATA = 2;
const IFLA_BR_VLAN_FILTERING = 7;
const IFLA_BRIDGE_VLAN_INFO = 2;
const TCA_KIND = 1;
const AF_BRIDGE = 7;
const HDR = 16; // nlmsghdr
const BODY = 16; // ifinfomsg
const TCMSG = 20; // tcmsg

const cstr = (b: Buffer) => b.toString('utf8').replace(/\0+$/, '');

/** The link kind and its IFLA_INFO_DATA of an RTM_NEWLINK. */
function linkKind(m: NlMessage): { kind?: string; data?: Buffer } {
  const li = attrsOf(m.bytes, HDR + BODY).find((a) => a.type === IFLA_LINKINFO);
  if (!li) return {};
  const inner = attrsOf(m.bytes, li.off, li.off + li.len);
  const k = inner.find((a) => a.type === IFLA_INFO_KIND);
  const d = inner.find((a) => a.type === IFLA_INFO_DATA);
  return { kind: k && cstr(m.bytes.subarray(k.off, k.off + k.len)), data: d && m.bytes.subarray(d.off, d.off + d.len) };
}

/** {flags, vid} of the IFLA_BRIDGE_VLAN_INFO in an AF_BRIDGE RTM_SETLINK. */
function portVlan(m: NlMessage): { flags: number; vid: number } | undefined {
  if (m.type !== RTM_SETLINK || m.bytes[HDR] !== AF_BRIDGE) return undefined;
  const spec = attrsOf(m.bytes, HDR + BODY).find((a) => a.type === IFLA_AF_SPEC);
  const info = spec && attrsOf(m.bytes, spec.off, spec.off + spec.len).find((a) => a.type === IFLA_BRIDGE_VLAN_INFO);
  return info && { flags: m.bytes.readUInt16LE(info.off), vid: m.bytes.readUInt16LE(info.off + 2) };
}

const qdiscKind = (m: NlMessage) => {
  const k = attrsOf(m.bytes, HDR + TCMSG).find((a) => a.type === TCA_KIND);
  return k && cstr(m.bytes.subarray(k.off, k.off + k.len));
};

/** The message with the normalisations listed at the top applied (a copy). */
function normalise(m: NlMessage): Buffer {
  const b = Buffer.from(m.bytes);
  b.writeUInt32LE(0, 8); // nlmsg_seq
  b.writeUInt32LE(0, 12); // nlmsg_pid
  b.writeInt32LE(0, HDR + 4); // ifi_index / tcm_ifindex
  if (m.type === RTM_NEWLINK || m.type === RTM_SETLINK) {
    for (const a of attrsOf(b, HDR + BODY)) if ([IFLA_LINK, IFLA_MASTER, IFLA_NET_NS_FD].includes(a.type) && a.len === 4) b.writeUInt32LE(0, a.off);
  }
  return b;
}

/** The one message of `msgs` that `pick` accepts (exactly one: a second would make the choice ambiguous). */
function one(msgs: NlMessage[], pick: (m: NlMessage) => boolean, what: string): NlMessage {
  const found = msgs.filter(pick);
  expect(found.length, `${what}: requests found (of ${msgs.length} sent)`).toBe(1);
  return found[0];
}

/** Asserts that the two requests are the same bytes after normalising, with both shown in hex on failure. */
function same(ours: NlMessage, ref: NlMessage, what: string): void {
  expect(hex(normalise(ours)), `${what}: ours vs iproute2 (normalised)`).toBe(hex(normalise(ref)));
}

describe.runIf(MODE === 'exec')('netlink requests byte for byte with iproute2 (exec mode: the plugin runs in the straced process)', () => {
  let sb: Sandbox;
  let n = 0;
  beforeEach(() => {
    expect(haveStrace(), 'strace (/usr/bin/strace) is needed for the wire proof').toBe(true);
    expect(existsSync(join(TEST_BIN, 'cni-ts')), 'the test build (make test-build)').toBe(true);
    sb = new Sandbox('wire');
  });
  afterEach(() => sb.cleanup());

  /** Runs a tool (ip, bridge, tc) under strace in namespace `ns`; its requests. The kernel may refuse: only the bytes matter. */
  function traceTool(ns: string, argv: string[]): NlMessage[] {
    const file = join(sb.dir, `ref-${++n}.strace`);
    const r = spawnSync('ip', ['netns', 'exec', ns, ...straceArgv(file, argv)], { encoding: 'utf8' });
    expect(existsSync(file), `strace of ${argv.join(' ')} ran: ${r.stderr}`).toBe(true);
    return parseStrace(readFileSync(file, 'utf8'));
  }

  /** A real plugin command of the test build under strace in the sandbox's host namespace; its result and requests. */
  function tracePlugin(plugin: string, env: Record<string, string>, config: unknown): { code: number; stdout: string; msgs: NlMessage[] } {
    const file = join(sb.dir, `ours-${++n}.strace`);
    const r = spawnSync('ip', ['netns', 'exec', sb.host, ...straceArgv(file, [join(TEST_BIN, plugin)])], {
      input: JSON.stringify(config),
      encoding: 'utf8',
      env: { PATH: process.env.PATH, CNI_TS_ENGINE: 'off', CNI_COMMAND: 'ADD', CNI_IFNAME: 'eth0', CNI_PATH: TEST_BIN, ...env },
    });
    expect(existsSync(file), `strace of ${plugin} ran: ${r.stderr}`).toBe(true);
    return { code: r.status ?? 1, stdout: r.stdout, msgs: parseStrace(readFileSync(file, 'utf8')) };
  }

  const inNs = (ns: string, argv: string[]) => must(['ip', 'netns', 'exec', ns, ...argv]);

  // (a) `ip link add link m0 name eth0 [mtu N] netns NS type vlan id 10` vs the vlan plugin's ADD
  // (master m0, vlanId 10, [mtu N]): the link made straight in the container namespace.
  it.each([{ mtu: 0 }, { mtu: 1400 }])('(a) 802.1Q link: vlan plugin ADD = ip link add … type vlan id 10 (mtu $mtu)', ({ mtu }) => {
    const ref = sb.container(); // iproute2's side: its own namespace, so a kernel with 8021q makes no clash with ours
    const refTarget = sb.container();
    inNs(ref.name, ['ip', 'link', 'add', 'm0', 'type', 'veth', 'peer', 'name', 'm0p']);
    const refMsgs = traceTool(ref.name, ['ip', 'link', 'add', 'link', 'm0', 'name', 'eth0', ...(mtu ? ['mtu', String(mtu)] : []), 'netns', refTarget.name, 'type', 'vlan', 'id', '10']);

    inNs(sb.host, ['ip', 'link', 'add', 'm0', 'type', 'veth', 'peer', 'name', 'm0p']);
    const c = sb.container();
    const config = { cniVersion: '1.0.0', name: 'wire', type: 'vlan', master: 'm0', vlanId: 10, ...(mtu ? { mtu } : {}), ipam: { type: 'host-local', subnet: '10.91.0.0/24', dataDir: join(sb.dir, 'ipam') } };
    const ours = tracePlugin('vlan', { CNI_CONTAINERID: 'wire-a', CNI_NETNS: c.path }, config);

    const isVlan = (m: NlMessage) => m.type === RTM_NEWLINK && linkKind(m).kind === 'vlan';
    const r = one(refMsgs, isVlan, 'iproute2 vlan link');
    const o = one(ours.msgs, isVlan, `our vlan link (ADD said ${ours.stdout.trim()})`);
    // Not a trivially equal pair: both carry the namespace descriptor and the VLAN id.
    expect(attrsOf(o.bytes, HDR + BODY).some((a) => a.type === IFLA_NET_NS_FD)).toBe(true);
    expect(linkKind(o).data?.readUInt16LE(4)).toBe(10);
    same(o, r, 'vlan link');
  });

  // (b) `ip link add cni0 type bridge vlan_filtering 1` vs the bridge plugin's bridge creation for `vlan: 10`;
  // (c) `bridge vlan add dev <port> vid 10 pvid untagged` vs its port VLAN request. On a kernel without VLAN
  // filtering the ADD would stop at (b): the test build's CNI_TS_WIRE_CAPTURE=1 (lib/cni/hooks.ts) counts the
  // kernel's EOPNOTSUPP as done (a plain bridge is made instead) so the same ADD goes on and sends (c).
  it('(b) bridge with VLAN filtering and (c) port VLAN 10 pvid untagged: bridge plugin ADD = ip link add / bridge vlan add', () => {
    const ref = sb.container();
    const refBridge = traceTool(ref.name, ['ip', 'link', 'add', 'cni0', 'type', 'bridge', 'vlan_filtering', '1']);
    if (!inNs(ref.name, ['ip', '-o', 'link', 'show']).includes('cni0:')) inNs(ref.name, ['ip', 'link', 'add', 'cni0', 'type', 'bridge']);
    inNs(ref.name, ['ip', 'link', 'add', 'p0', 'type', 'veth', 'peer', 'name', 'p1']);
    inNs(ref.name, ['ip', 'link', 'set', 'p0', 'master', 'cni0']);
    const refPort = traceTool(ref.name, ['bridge', 'vlan', 'add', 'dev', 'p0', 'vid', '10', 'pvid', 'untagged']);

    const c = sb.container();
    const ours = tracePlugin('bridge', { CNI_CONTAINERID: 'wire-b', CNI_NETNS: c.path, CNI_TS_WIRE_CAPTURE: '1' }, { cniVersion: '1.0.0', name: 'wire', type: 'bridge', bridge: 'cni0', vlan: 10 });

    const isFilteringBridge = (m: NlMessage) => {
      const { kind, data } = linkKind(m);
      return m.type === RTM_NEWLINK && kind === 'bridge' && data !== undefined && attrsOf(data, 0).some((a) => a.type === IFLA_BR_VLAN_FILTERING);
    };
    same(one(ours.msgs, isFilteringBridge, `our bridge creation (ADD said ${ours.stdout.trim()})`), one(refBridge, isFilteringBridge, 'iproute2 bridge creation'), 'bridge vlan_filtering 1');

    const isVid10 = (m: NlMessage) => portVlan(m)?.vid === 10;
    const o = one(ours.msgs, isVid10, `our port VLAN 10 (ADD said ${ours.stdout.trim()})`);
    expect(portVlan(o)?.flags).toBe(2 | 4); // PVID | UNTAGGED
    same(o, one(refPort, isVid10, 'iproute2 port VLAN 10'), 'port VLAN 10 pvid untagged');
  });

  // (c, trunk) `bridge vlan add dev <port> vid 20` vs the bridge plugin's request for `vlanTrunk: [{id: 20}]`.
  it('(c) trunk port VLAN 20: bridge plugin ADD with vlanTrunk = bridge vlan add dev <port> vid 20', () => {
    const ref = sb.container();
    inNs(ref.name, ['ip', 'link', 'add', 'cni0', 'type', 'bridge']);
    inNs(ref.name, ['ip', 'link', 'add', 'p0', 'type', 'veth', 'peer', 'name', 'p1']);
    inNs(ref.name, ['ip', 'link', 'set', 'p0', 'master', 'cni0']);
    const refPort = traceTool(ref.name, ['bridge', 'vlan', 'add', 'dev', 'p0', 'vid', '20']);

    const c = sb.container();
    const ours = tracePlugin('bridge', { CNI_CONTAINERID: 'wire-c', CNI_NETNS: c.path, CNI_TS_WIRE_CAPTURE: '1' }, { cniVersion: '1.0.0', name: 'wire', type: 'bridge', bridge: 'cni0', vlanTrunk: [{ id: 20 }] });

    const isVid20 = (m: NlMessage) => portVlan(m)?.vid === 20;
    const o = one(ours.msgs, isVid20, `our port VLAN 20 (ADD said ${ours.stdout.trim()})`);
    expect(portVlan(o)?.flags).toBe(0);
    same(o, one(refPort, isVid20, 'iproute2 port VLAN 20'), 'trunk port VLAN 20');
  });

  // (d) `tc qdisc add dev <veth> root handle 1: netem limit 10000 delay 50ms 10ms loss 1%` vs the bandwidth
  // plugin's ADD with ingressDelay 50, ingressJitter 10, ingressLoss 1 (its netem at the root of the host veth).
  it('(d) netem: bandwidth plugin ADD = tc qdisc add … netem limit 10000 delay 50ms 10ms loss 1%', () => {
    const ref = sb.container();
    inNs(ref.name, ['ip', 'link', 'add', 'p0', 'type', 'veth', 'peer', 'name', 'p1']);
    const refMsgs = traceTool(ref.name, ['tc', 'qdisc', 'add', 'dev', 'p0', 'root', 'handle', '1:', 'netem', 'limit', '10000', 'delay', '50ms', '10ms', 'loss', '1%']);

    const c = sb.container();
    inNs(sb.host, ['ip', 'link', 'add', 'vh0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', c.name]);
    const prevResult = { cniVersion: '1.0.0', interfaces: [{ name: 'vh0' }, { name: 'eth0', sandbox: c.path }], ips: [{ address: '10.92.0.2/24', interface: 1 }] };
    const config = { cniVersion: '1.0.0', name: 'wire', type: 'bandwidth', ingressDelay: 50, ingressJitter: 10, ingressLoss: 1, prevResult };
    const ours = tracePlugin('bandwidth', { CNI_CONTAINERID: 'wire-d', CNI_NETNS: c.path }, config);

    const isNetem = (m: NlMessage) => m.type === RTM_NEWQDISC && qdiscKind(m) === 'netem';
    same(one(ours.msgs, isNetem, `our netem (ADD said ${ours.stdout.trim()})`), one(refMsgs, isNetem, 'tc netem'), 'netem');
  });
});
