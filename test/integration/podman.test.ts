import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { get } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clientsStartEngines, MODE, modeEnv, stopEngines } from '../helpers/mode.js';
import {
  type IptablesState, type Owned, type PodmanNetwork, ClientEngine, Podman, REFERENCE, iptablesAdded, iptablesRestore, iptablesState, libpodCgroups,
  HOST_NET_LOCK_WAIT, hostNetLock, markEngineLogs, mountsBelow, nsInode, otherBuildClient, run, treeHash, usesClient,
} from '../helpers/podman.js';
import { BIN } from '../helpers/sandbox.js';

// Debian's podman 4.3 (CNI backend, runc) runs real containers from a busybox
// rootfs on the network `podman network create` writes, with the plugins of
// each set below. Podman works in the machine's own network namespace, so the
// network has a subnet of its own (10.231.x.0/24) and everything it leaves is
// checked and then removed; /etc/containers and /etc/cni are hashed before and
// after. Of the machine's links and iptables only what is the test's own is
// compared and removed (its bridge and veths; rules naming its network,
// bridge, containers or subnet, its containers' chains, and the shared chains
// its plugins created while nobody else uses them: see Owned): other
// processes may change the rest meanwhile. CNITS_PODMAN_PLUGIN_DIRS="label=dir,…" picks the sets (default: the
// reference in /usr/lib/cni, then ours in bin/; a plugin missing from a set
// is taken from the reference and named in the log).
const SETS = (process.env.CNITS_PODMAN_PLUGIN_DIRS ?? `reference=${REFERENCE},ours=${BIN}`)
  .split(',').map((s) => {
    const [label, dir] = s.split('=');
    return { label, dir };
  });

// Engine mode (CNI_TS_MODE=engine, our plugins): podman's plugin calls start
// the engine themselves, as on a real host — the test starts none — for the
// namespaces podman runs them in: the machine's (podman's own, the test
// process's). podman (and conmon, for its cleanup process) hands them
// CNI_TS_ENGINE_IDLE, so that engine idles out soon enough for the suite to
// see it; the suite also swaps in a client of another build between two
// container runs (an upgrade).
const IDLE = 10;

const PORT = 18080;
const ETC = ['/etc/containers', '/etc/cni'];
const IPAM = '/var/lib/cni/networks';
const CACHE = '/var/lib/cni/results';
const DNSNAME = '/run/containers/cni/dnsname';

/** The machine's own address: the source of its route to the outside. */
function hostAddress(): string {
  const r = JSON.parse(run(['ip', '-j', '-4', 'route', 'get', '1.0.0.1']).stdout || '[]');
  return r[0]?.prefsrc ?? '';
}

/** Those of `names` that exist as links in the machine's namespace. */
function linksPresent(names: string[]): string[] {
  const all = new Set((JSON.parse(run(['ip', '-j', 'link', 'show']).stdout) as { ifname: string }[]).map((l) => l.ifname));
  return names.filter((n) => n && all.has(n));
}

function httpGet(host: string, port: number, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = get({ host, port, path: '/', timeout: timeoutMs }, (res) => {
      let body = '';
      res.on('data', (b) => (body += b));
      res.on('end', () => resolve(body));
    });
    req.on('timeout', () => req.destroy(new Error(`GET http://${host}:${port}/ timed out`)));
    req.on('error', reject);
  });
}

function dnsmasqOf(network: string): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (readFileSync(`/proc/${name}/cmdline`, 'utf8').includes(`/dnsname/${network}/`)) out.push(Number(name));
    } catch {
      // gone
    }
  }
  return out;
}

// Shared state the plugins leave by design once the last container is gone
// (both implementations): firewall's CNI-FORWARD/CNI-ADMIN and FORWARD's jump,
// portmap's CNI-HOSTPORT-* chains and their jumps. `podman network rm` removes
// the bridge only.
const SHARED_CHAINS = ['CNI-FORWARD', 'CNI-ADMIN', 'CNI-HOSTPORT-DNAT', 'CNI-HOSTPORT-MASQ', 'CNI-HOSTPORT-SETMARK'];
const sharedRule = (r: string) => /^-A (FORWARD|PREROUTING|OUTPUT|POSTROUTING|CNI-FORWARD|CNI-HOSTPORT-MASQ|CNI-HOSTPORT-SETMARK) /.test(r)
  && !/ -[sd] \d/.test(r) && !/ id: /.test(r);
// The reference dnsname (1.3.1) never removes its INPUT accept rule for the
// bridge's port 53 (ours removes it with the network's last container).
const referenceLeak = (r: string, bridge: string) => r === `-A INPUT -i ${bridge} -p udp -m udp --dport 53 -j ACCEPT`;

interface Ctr {
  name: string;
  id: string;
  ip: string;
  mac: string;
  veth: string;
}

describe.each(SETS)('podman 4.3 with the $label plugins ($dir)', ({ label, dir }) => {
  let pm: Podman;
  let net: PodmanNetwork;
  let etcBefore: string;
  let iptBefore: IptablesState;
  let forwardBefore: string;
  let cgroupsBefore: string[];
  let unlock: (() => void) | undefined;
  const host = hostAddress();
  const names = { a: `cnits-a-${process.pid}`, b: `cnits-b-${process.pid}`, c: `cnits-c-${process.pid}` };
  /** Engine mode: the containers run before and after the upgrade. */
  const upgrade = { old: `cnits-o-${process.pid}`, new: `cnits-n-${process.pid}` };
  /** Engine mode applies: our client is in front of this set's plugins, and starts engines in podman's namespaces (the test's). */
  const engine = MODE === 'engine' && usesClient(dir) && clientsStartEngines();
  let eng: ClientEngine;
  let engineBefore: number | undefined;
  const ctr: Record<string, Ctr> = {};
  /** A container an earlier step started, or a plain error saying it did not. */
  /** What of the machine's state is this test's (see Owned). */
  const owned = (): Owned => ({
    network: net.name, bridges: [net.bridge], prefixes: [net.subnet.replace(/0\/24$/, '')], containerIds: [...pm.containers, ...Object.values(ctr).map((c) => c.id)],
  });
  const ownLinks = () => linksPresent([net.bridge, ...Object.values(ctr).map((c) => c.veth)]);
  const need = (key: 'a' | 'b'): Ctr => {
    if (!ctr[key]) throw new Error(`${names[key]} did not start (see the first failure)`);
    return ctr[key];
  };

  beforeAll(async () => {
    unlock = await hostNetLock();
    // Engine mode: podman's calls are to meet no engine but the one their client starts. One of the
    // machine's namespaces that someone else left (a killed run, the benchmark: all use them under
    // this lock only) is stopped first.
    if (engine) stopEngines(undefined, { dirs: [tmpdir()] });
    const logs = engine ? markEngineLogs(dir) : undefined;
    etcBefore = treeHash(ETC);
    iptBefore = iptablesState();
    forwardBefore = readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8');
    cgroupsBefore = libpodCgroups();
    // modeEnv(): in exec mode CNI_TS_ENGINE=off reaches conmon's cleanup calls too (they would start an engine).
    pm = new Podman(`podman-${label}`, dir, engine ? { ...modeEnv(), CNI_TS_ENGINE_IDLE: String(IDLE) } : { ...modeEnv() });
    if (logs) {
      eng = new ClientEngine(pm.plugins, dir, nsInode('self', 'net')!, nsInode('self', 'mnt')!, logs);
      engineBefore = eng.pid();
    }
    if (pm.borrowed.length) console.log(`podman/${label}: taken from ${REFERENCE}: ${pm.borrowed.join(', ')}`);
    for (const n of Object.values(names)) {
      mkdirSync(join(pm.rootfs, 'www', n), { recursive: true });
      writeFileSync(join(pm.rootfs, 'www', n, 'index.html'), `hello from ${n}\n`);
    }
  }, HOST_NET_LOCK_WAIT + 120_000);

  afterAll(() => {
    pm?.cleanup();
    if (iptBefore && net) iptablesRestore(iptBefore, owned());
    if (forwardBefore && readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8') !== forwardBefore) writeFileSync('/proc/sys/net/ipv4/ip_forward', forwardBefore);
    unlock?.();
  });

  const exec = (name: string, argv: string[]) => pm.podman(['exec', name, ...argv], 30_000);

  /** Starts busybox httpd serving /www/<name> as container `name`; returns what podman and the container say about it. */
  function start(name: string, extra: string[] = [], argv = ['/bin/httpd', '-f', '-p', '80', '-h', `/www/${name}`]): Ctr {
    pm.must(['run', '-d', '--name', name, '--network', net.name, ...extra, '--rootfs', pm.rootfs, ...argv]);
    const id = pm.track(name);
    const info = JSON.parse(pm.must(['inspect', name]))[0];
    const n = info.NetworkSettings.Networks[net.name];
    expect(n.Gateway).toBe(net.gateway);
    expect(n.IPPrefixLen).toBe(24);
    const iflink = exec(name, ['/bin/cat', '/sys/class/net/eth0/iflink']);
    expect(iflink.code, iflink.stderr).toBe(0);
    const hostEnd = (JSON.parse(run(['ip', '-j', 'link', 'show']).stdout) as { ifindex: number; ifname: string; master?: string }[])
      .find((l) => l.ifindex === Number(iflink.stdout.trim()));
    expect(hostEnd?.master, 'host end of eth0 is a port of the bridge').toBe(net.bridge);
    return { name, id, ip: n.IPAddress, mac: n.MacAddress, veth: hostEnd?.ifname ?? '' };
  }

  function expectPresent(c: Ctr) {
    expect(readFileSync(join(IPAM, net.name, c.ip), 'utf8')).toContain(c.id);
    expect(existsSync(join(CACHE, `${net.name}-${c.id}-eth0`)), 'libcni cache entry').toBe(true);
    const ipt = Object.values(iptablesState()).join('\n');
    expect(ipt, 'bridge ipMasq chain').toContain(`id: \\"${c.id}\\"`);
    expect(ipt, 'firewall rules').toContain(`-A CNI-FORWARD -d ${c.ip}/32`);
    expect(readFileSync(join(DNSNAME, net.name, 'addnhosts'), 'utf8')).toMatch(new RegExp(`^${c.ip.replace(/\./g, '\\.')}\\t${c.name}\\b`, 'm'));
  }

  /** Nothing of the container is left: veth (and so its qdiscs), rules naming its id or address, hosts line, IPAM allocation, libcni cache entry. */
  function expectGone(c: Ctr) {
    expect(existsSync(`/sys/class/net/${c.veth}`), `veth ${c.veth}`).toBe(false);
    expect(run(['tc', 'qdisc', 'show']).stdout).not.toContain(`dev ${c.veth} `);
    const ipt = Object.values(iptablesState()).join('\n');
    expect(ipt).not.toContain(c.id);
    expect(ipt).not.toContain(` ${c.ip}/32 `);
    expect(ipt).not.toMatch(new RegExp(`--to-destination ${c.ip.replace(/\./g, '\\.')}:`));
    expect(existsSync(join(IPAM, net.name, c.ip)), 'IPAM allocation').toBe(false);
    expect(existsSync(join(CACHE, `${net.name}-${c.id}-eth0`)), 'libcni cache entry').toBe(false);
    const hosts = join(DNSNAME, net.name, 'addnhosts');
    if (existsSync(hosts)) expect(readFileSync(hosts, 'utf8')).not.toMatch(new RegExp(`\\t${c.name}\\b`));
  }

  it('podman network create writes its list: bridge with host-local, portmap, firewall, tuning, dnsname', () => {
    net = pm.createNetwork(`cnits-${label}-${process.pid}`, 231, 20 + (process.pid % 100) * 2 + (label === 'reference' ? 0 : 1));
    expect(net.conflist.plugins.map((p: { type: string }) => p.type)).toEqual(['bridge', 'portmap', 'firewall', 'tuning', 'dnsname']);
    expect(net.conflist.plugins[0]).toMatchObject({ bridge: net.bridge, isGateway: true, ipMasq: true, hairpinMode: true, ipam: { type: 'host-local' } });
    expect(net.conflist.plugins[0].ipam.ranges[0][0].subnet).toBe(net.subnet);
    const inspect = JSON.parse(pm.must(['network', 'inspect', net.name]))[0];
    expect(inspect).toMatchObject({ name: net.name, driver: 'bridge', dns_enabled: true, subnets: [{ subnet: net.subnet, gateway: net.gateway }] });
  });

  it('two containers start; podman inspect, the container and the host agree on address, MAC and bridge port', () => {
    for (const [key, extra] of [['a', []], ['b', ['-p', `${PORT}:80`]]] as const) {
      const c = start(names[key], [...extra]);
      ctr[key] = c;
      expect(c.ip.startsWith(net.subnet.replace(/0\/24$/, ''))).toBe(true);
      const addr = exec(c.name, ['/bin/ip', '-4', '-o', 'addr', 'show', 'dev', 'eth0']);
      expect(addr.stdout).toContain(`inet ${c.ip}/24`);
      expect(exec(c.name, ['/bin/cat', '/sys/class/net/eth0/address']).stdout.trim()).toBe(c.mac);
      const resolv = exec(c.name, ['/bin/cat', '/etc/resolv.conf']).stdout;
      expect(resolv).toMatch(new RegExp(`^nameserver ${net.gateway.replace(/\./g, '\\.')}$`, 'm'));
      expect(resolv).toMatch(/^search .*dns\.podman/m);
      expectPresent(c);
    }
    expect(need('a').ip).not.toBe(need('b').ip);
    expect(pm.must(['port', names.b]).trim()).toBe(`80/tcp -> 0.0.0.0:${PORT}`);
  });

  it.runIf(engine)("engine mode: podman's first plugin call started the engine of the machine's namespaces from the plugin dir's cni-ts, with podman's CNI_TS_ENGINE_IDLE; it served the second container's calls", () => {
    const b = need('b');
    expect(engineBefore, 'an engine of the pair before podman ran a container').toBeUndefined();
    const pid = eng.pid();
    expect(pid, eng.describe()).toBeDefined();
    expect(ClientEngine.exeOf(pid!)).toBe(eng.exe);
    const log = eng.log();
    // The pair's first engine since the suite began was started by a client with podman's
    // environment: the idle period it got is podman's.
    const first = /^\S+ engine (\d+) started: build \S+, \d+ workers, idle (\d+) s, socket (\S+)$/m.exec(log);
    expect(first, log).not.toBeNull();
    expect(first![2], 'idle period of the first engine').toBe(String(IDLE));
    expect(first![3]).toBe(`${eng.base}.sock`);
    expect(log).toContain(` engine ${pid} started`);
    for (const p of ['bridge', 'portmap', 'firewall', 'tuning', 'dnsname']) {
      expect(log, `${p} ADD of ${names.b} in the engine`).toMatch(new RegExp(`^\\S+ ${p} ADD pid=\\d+ container=${b.id} if=eth0 [\\d.]+ms exit=0 code=-$`, 'm'));
    }
  });

  it("the bridge's MAC is pinned (addr_assign_type 3), so it does not change when a port leaves", () => {
    // An unpinned bridge takes the lowest MAC of its ports: when that port's
    // container goes, the gateway's MAC changes under the other containers'
    // ARP entries and they lose the gateway (and DNS) for several seconds.
    // The reference sets the bridge's MAC to itself when it adds the gateway address.
    expect(readFileSync(`/sys/class/net/${net.bridge}/addr_assign_type`, 'utf8').trim()).toBe('3');
  });

  it('the containers reach each other by address and by name, and the bridge address', () => {
    const [a, b] = [need('a'), need('b')];
    for (const [from, to] of [[a, b], [b, a]]) {
      const byIp = exec(from.name, ['/bin/ping', '-c', '1', '-W', '3', to.ip]);
      expect(byIp.code, byIp.stdout + byIp.stderr).toBe(0);
      const byName = exec(from.name, ['/bin/ping', '-c', '1', '-W', '3', to.name]);
      expect(byName.code, byName.stdout + byName.stderr).toBe(0);
      expect(byName.stdout).toContain(`(${to.ip})`);
      const ns = exec(from.name, ['/bin/nslookup', `${to.name}.dns.podman`, net.gateway]);
      expect(ns.stdout).toContain(`Address: ${to.ip}`);
      const http = exec(from.name, ['/bin/timeout', '10', '/bin/wget', '-q', '-O', '-', `http://${to.name}/`]);
      expect(http.stdout, http.stderr).toBe(`hello from ${to.name}\n`);
      const gw = exec(from.name, ['/bin/ping', '-c', '1', '-W', '3', net.gateway]);
      expect(gw.code, gw.stdout + gw.stderr).toBe(0);
    }
  });

  it(`-p ${PORT}:80 answers from the host on 127.0.0.1 and its own address, and from the other container through the host address`, async () => {
    need('a');
    need('b');
    expect(await httpGet('127.0.0.1', PORT)).toBe(`hello from ${names.b}\n`);
    expect(host).not.toBe('');
    expect(await httpGet(host, PORT)).toBe(`hello from ${names.b}\n`);
    const hairpin = exec(names.a, ['/bin/timeout', '10', '/bin/wget', '-q', '-O', '-', `http://${host}:${PORT}/`]);
    expect(hairpin.stdout, hairpin.stderr).toBe(`hello from ${names.b}\n`);
  });

  it('podman rm -f of one container removes all of it; the other keeps its name and address', () => {
    const [a, b] = [need('a'), need('b')];
    const mac = readFileSync(`/sys/class/net/${net.bridge}/address`, 'utf8').trim();
    pm.must(['rm', '--force', '--time', '0', names.a]);
    expectGone(a);
    expect(readFileSync(`/sys/class/net/${net.bridge}/address`, 'utf8').trim(), 'bridge MAC after the removal').toBe(mac);
    expect(pm.podman(['inspect', names.a]).code).not.toBe(0);
    const ns = exec(names.b, ['/bin/nslookup', `${names.b}.dns.podman`, net.gateway]);
    expect(ns.stdout).toContain(`Address: ${b.ip}`);
    expect(exec(names.b, ['/bin/nslookup', `${names.a}.dns.podman`, net.gateway]).stdout).not.toContain(`Address: ${a.ip}`);
    expectPresent(b);
  });

  it.runIf(engine)('engine mode: upgrade — beside the old engine, a client of another build runs the next container itself (exec path); the old engine drains and exits', async () => {
    need('b');
    const other = otherBuildClient(pm.plugins, dir);
    // The old engine must be up when the new client comes (it may have idled out since the last
    // call): a container of the old build first, then that engine once it listens.
    ctr.old = start(upgrade.old, [], ['/bin/sleep', '600']);
    await expect.poll(() => eng.listening(), { timeout: 15_000, interval: 100 }).toBeDefined();
    const old = eng.listening()!;
    expect(eng.running()).toContain(old);
    other.install();
    try {
      ctr.new = start(upgrade.new, [], ['/bin/sleep', '600']);
      expectPresent(ctr.new);
      await expect.poll(() => eng.running().includes(old), { timeout: 30_000, interval: 200 }).toBe(false);
      const log = eng.log();
      expect(log).toContain(` engine ${old} draining: a client of build ${other.id}`);
      expect(log).toContain(` engine ${old} exits`);
      // No engine ran a call of the new container: each went back to its client.
      expect(log).not.toContain(`container=${ctr.new.id} `);
      // Its removal under the new client too.
      pm.must(['rm', '--force', '--time', '0', upgrade.old, upgrade.new]);
      expectGone(ctr.old);
      expectGone(ctr.new);
    } finally {
      other.restore();
    }
  });

  it("a container that exits by itself is torn down by podman's cleanup process (conmon's exit command)", async () => {
    // It exits when told (a file in its /www), not after a fixed time: on a slow, busy machine a
    // `sleep 2` was over before podman had been asked about it.
    const c = start(names.c, [], ['/bin/sh', '-c', `while [ ! -e /www/${names.c}/exit ]; do sleep 0.1; done`]);
    ctr.c = c;
    expectPresent(c);
    writeFileSync(join(pm.rootfs, 'www', names.c, 'exit'), '');
    const deadline = Date.now() + 90_000;
    while (Date.now() < deadline && (existsSync(join(IPAM, net.name, c.ip)) || existsSync(`/sys/class/net/${c.veth}`))) {
      await new Promise((r) => setTimeout(r, 200));
    }
    const status = pm.must(['inspect', '--format', '{{.State.Status}}', names.c]).trim();
    // On failure, say why: the events podman logged and what a cleanup by hand reports.
    const why = status === 'exited' ? '' : `${readFileSync(join(pm.dir, 'tmp/events/events.log'), 'utf8').split('\n').slice(-6).join('\n')}\n`
      + `still running: ${run(['ps', '-eo', 'pid,etimes,args']).stdout.split('\n').filter((l) => l.includes(pm.dir) && !l.includes(' ps ')).join('\n')}\n`
      + `podman container cleanup: ${pm.podman(['container', 'cleanup', names.c]).stderr}`;
    expect(status, why).toBe('exited');
    expectGone(c);
    pm.must(['rm', names.c]);
  });

  it("podman rm -f of the last container leaves nothing of it; dnsname's dnsmasq and files are gone", async () => {
    const b = need('b');
    pm.must(['rm', '--force', '--time', '0', names.b]);
    expectGone(b);
    await expect.poll(() => dnsmasqOf(net.name).length, { timeout: 5000 }).toBe(0);
    expect(existsSync(join(DNSNAME, net.name)), `${DNSNAME}/${net.name}`).toBe(false);
    for (const s of pm.sandboxes) expect(existsSync(s), s).toBe(false);
    expect(mountsBelow(pm.dir)).toEqual([]);
    const ipam = existsSync(join(IPAM, net.name)) ? readdirSync(join(IPAM, net.name)) : [];
    expect(ipam.filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f))).toEqual([]);
    expect(readdirSync(CACHE).filter((f) => f.startsWith(`${net.name}-`))).toEqual([]);
  });

  it.runIf(engine)(`engine mode: with no container left the engine exits by itself after CNI_TS_ENGINE_IDLE (${IDLE} s); its socket and pid file go with it`, async () => {
    const live = eng.pid();
    await expect.poll(() => eng.gone(), { timeout: (IDLE + 20) * 1000, interval: 250 }).toBe(true);
    const drain = eng.lastDrain();
    expect(drain?.why, eng.log()).toBe(`idle for ${IDLE} s`);
    // Its last activity (last answer, or its start: counted from just before its log says so) was
    // the idle period before (checked once a second).
    expect(drain!.afterMs).toBeGreaterThan(IDLE * 1000 - 500);
    expect(drain!.afterMs).toBeLessThan((IDLE + 5) * 1000);
    if (live !== undefined) expect(drain!.pid, 'the engine serving when the last container went').toBe(live);
    expect(eng.log()).toContain(` engine ${drain!.pid} exits`);
  });

  it("podman network rm removes the bridge; the plugins' shared chains are all that is left in iptables", () => {
    pm.must(['network', 'rm', net.name]);
    expect(existsSync(`/sys/class/net/${net.bridge}`)).toBe(false);
    expect(ownLinks()).toEqual([]);
    const added = iptablesAdded(iptBefore, owned());
    expect(added.chains.map(([, , c]) => c).filter((c) => !SHARED_CHAINS.includes(c))).toEqual([]);
    const unexpected = added.rules.map(([, , r]) => r).filter((r) => !sharedRule(r) && !(label === 'reference' && referenceLeak(r, net.bridge)));
    expect(unexpected).toEqual([]);
  });

  it('cleanup leaves the machine as it was: its links and iptables, cgroups, /etc/containers and /etc/cni, no temp dir, no mounts', () => {
    const { dir } = pm;
    pm.cleanup();
    iptablesRestore(iptBefore, owned());
    writeFileSync('/proc/sys/net/ipv4/ip_forward', forwardBefore);
    expect(iptablesAdded(iptBefore, owned())).toEqual({ rules: [], chains: [] });
    expect(ownLinks()).toEqual([]);
    expect(treeHash(ETC)).toBe(etcBefore);
    expect(existsSync(dir)).toBe(false);
    expect(mountsBelow(dir)).toEqual([]);
    expect(existsSync(join(IPAM, net.name))).toBe(false);
    expect(libpodCgroups()).toEqual(cgroupsBefore);
  });
});
