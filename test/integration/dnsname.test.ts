import { spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, Sandbox } from '../helpers/sandbox.js';
import { resolve } from '../helpers/traffic.js';
import { BACKENDS, type TestBackend } from '../helpers/backends.js';

const BRIDGE = join(BIN, 'bridge');
const DNSNAME = join(BIN, 'dnsname');
let sb: Sandbox;
let xdg: string;
beforeEach(() => {
  sb = new Sandbox('dns');
  xdg = join(sb.dir, 'xdg');
});
afterEach(() => sb.cleanup());
/** The packet-filter backend of the port-53 opening (unset: the plugin's default). */
let backend: TestBackend | undefined;

interface Net {
  name: string;
  bridge: string;
  subnet: string;
  domain: string;
  multiDomain?: boolean;
}
const NET_A: Net = { name: 'neta', bridge: 'dnsa0', subnet: '10.71.1.0/24', domain: 'a.lan' };
const NET_B: Net = { name: 'netb', bridge: 'dnsb0', subnet: '10.71.2.0/24', domain: 'b.lan' };

const netDir = (net: Net) => join(xdg, 'containers/cni/dnsname', net.name);
const ourDnsmasq = () => sb.strays().filter((pid) => readFileSync(`/proc/${pid}/cmdline`, 'utf8').startsWith('/usr/sbin/dnsmasq'));

function dnsConf(net: Net, aliases: string[], prevResult?: unknown, extra: Record<string, unknown> = {}) {
  return {
    cniVersion: '1.0.0', name: net.name, type: 'dnsname', domainName: net.domain, multiDomain: net.multiDomain ?? false,
    capabilities: { aliases: true }, runtimeConfig: { aliases: { [net.name]: aliases } }, ...(prevResult ? { prevResult } : {}), ...(backend ? { backend } : {}), ...extra,
  };
}
const call = (command: string, id: string, path: string, name: string) => ({ command, containerId: id, netns: path, args: `IgnoreUnknown=1;K8S_POD_NAME=${name}`, env: { XDG_RUNTIME_DIR: xdg } });

/** bridge then dnsname, as a runtime chains them. */
function addInstance(net: Net, id: string, name: string, aliases: string[] = []) {
  const c = sb.container();
  const b = sb.plugin(BRIDGE, { command: 'ADD', containerId: id, netns: c.path }, {
    cniVersion: '1.0.0', name: net.name, type: 'bridge', bridge: net.bridge, isGateway: true,
    ipam: { type: 'host-local', subnet: net.subnet, routes: [{ dst: '0.0.0.0/0' }], dataDir: join(sb.dir, 'ipam') },
  });
  expect(b.code, b.stdout + b.stderr).toBe(0);
  const conf = dnsConf(net, aliases, b.json);
  const d = sb.plugin(DNSNAME, call('ADD', id, c.path, name), conf);
  expect(d.code, d.stdout + d.stderr).toBe(0);
  return { ns: c.name, path: c.path, id, name, conf, result: d.json, ip: b.json.ips[0].address.split('/')[0] as string };
}
const run = (i: ReturnType<typeof addInstance>, command: string, conf: unknown = i.conf) => sb.plugin(DNSNAME, call(command, i.id, i.path, i.name), conf);

const filterText = () => sb.inHost(['iptables-save', '-t', 'filter']).stdout;
const nftText = () => sb.inHost(['nft', 'list', 'table', 'inet', 'cni_ts_dns']).stdout;
/** Whether `net`'s port-53 opening exists in backend `b`. */
function opened(net: Net, b: TestBackend = backend ?? 'iptables'): boolean {
  if (b === 'iptables') return filterText().includes(`-A INPUT -i ${net.bridge} -p udp -m udp --dport 53 -m comment --comment "cni-ts dnsname: ${net.name}" -j ACCEPT`);
  return nftText().includes(`"${net.bridge}" comment "cni-ts dnsname: ${net.name}"`);
}
/** Packets the nftables opening's rule has accepted. */
const nftAccepted = () => Number(/counter packets (\d+)/.exec(nftText())?.[1] ?? -1);

describe.each(BACKENDS)('dnsname with real queries (port 53 opened on %s)', (b) => {
  beforeEach(() => {
    backend = b;
  });
  afterEach(() => {
    backend = undefined;
  });

  it('the opening carries the queries: with the host\'s INPUT dropping everything else (iptables), or counted by our rule (nftables)', () => {
    if (b === 'iptables') {
      // Only loopback and our rules let anything in.
      expect(sb.inHost(['iptables', '-A', 'INPUT', '-i', 'lo', '-j', 'ACCEPT']).code).toBe(0);
      expect(sb.inHost(['iptables', '-P', 'INPUT', 'DROP']).code).toBe(0);
    }
    const web = addInstance(NET_A, 'c-web', 'web');
    const db = addInstance(NET_A, 'c-db', 'db');
    const before = b === 'nftables' ? nftAccepted() : 0;
    expect(resolve(sb.dir, db.ns, '10.71.1.1', 'web.a.lan')).toBe(web.ip);
    expect(resolve(sb.dir, web.ns, '10.71.1.1', 'db.a.lan')).toBe(db.ip);
    if (b === 'nftables') expect(nftAccepted()).toBeGreaterThan(before);
    expect(run(web, 'DEL').code).toBe(0);
    expect(resolve(sb.dir, db.ns, '10.71.1.1', 'db.a.lan')).toBe(db.ip); // db's network keeps its opening
    expect(run(db, 'DEL').code).toBe(0);
    expect(opened(NET_A)).toBe(false);
  });

  // Issue 15 item 4: an accept in our table does not override iptables' INPUT policy of DROP; the network is opened there.
  if (b === 'nftables') {
    it('behind an iptables INPUT policy of DROP: port 53 from the bridge is opened there too (one pair per network, refreshed by ADD, gone with the last DEL); "refuse" fails naming the policy', () => {
      const inputOpenings = () => filterText().split('\n').filter((l) => l.includes('cni-ts nftables dnsname network')).sort();
      const pair = (net: Net) => ['tcp', 'udp'].map((p) => `-A INPUT -i ${net.bridge} -p ${p} -m ${p} --dport 53 -m comment --comment "cni-ts nftables dnsname network ${net.name}" -j ACCEPT`);
      expect(sb.inHost(['iptables', '-A', 'INPUT', '-i', 'lo', '-j', 'ACCEPT']).code).toBe(0); // (ADD asks dnsmasq from the host)
      expect(sb.inHost(['iptables', '-P', 'INPUT', 'DROP']).code).toBe(0);
      const web = addInstance(NET_A, 'c-web', 'web');
      const db = addInstance(NET_A, 'c-db', 'db');
      expect(resolve(sb.dir, db.ns, '10.71.1.1', 'web.a.lan')).toBe(web.ip);
      expect(inputOpenings()).toEqual(pair(NET_A));
      // The hole: without the iptables side our table's accept alone lets no query in (counted, then dropped).
      for (const p of ['tcp', 'udp']) {
        expect(sb.inHost(['iptables', '-D', 'INPUT', '-i', NET_A.bridge, '-p', p, '-m', p, '--dport', '53', '-m', 'comment', '--comment', `cni-ts nftables dnsname network ${NET_A.name}`, '-j', 'ACCEPT']).code).toBe(0);
      }
      expect(inputOpenings()).toEqual([]);
      const counted = nftAccepted();
      expect(resolve(sb.dir, db.ns, '10.71.1.1', 'web.a.lan')).not.toBe(web.ip);
      expect(nftAccepted()).toBeGreaterThan(counted);
      // The network's next ADD puts it back.
      const api = addInstance(NET_A, 'c-api', 'api');
      expect(inputOpenings()).toEqual(pair(NET_A));
      expect(resolve(sb.dir, db.ns, '10.71.1.1', 'api.a.lan')).toBe(api.ip);
      // "refuse" (another network): fails naming the policy, leaves nothing of that network.
      const c = sb.container();
      const br = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'c-x', netns: c.path }, {
        cniVersion: '1.0.0', name: NET_B.name, type: 'bridge', bridge: NET_B.bridge, isGateway: true, ipam: { type: 'host-local', subnet: NET_B.subnet, dataDir: join(sb.dir, 'ipam') },
      });
      expect(br.code, br.stdout + br.stderr).toBe(0);
      const dnsmasqs = ourDnsmasq().length;
      const conf = dnsConf(NET_B, [], br.json, { iptablesInputDrop: 'refuse' });
      const r = sb.plugin(DNSNAME, call('ADD', 'c-x', c.path, 'x'), conf);
      expect(r.code).toBe(1);
      expect(r.json).toMatchObject({ code: 50, msg: 'iptables INPUT policy is DROP: nftables rules alone cannot let network "netb" reach its DNS server (port 53)' });
      expect(r.json.details).toContain('iptablesInputDrop is "refuse"');
      expect(opened(NET_B)).toBe(false);
      expect(existsSync(join(netDir(NET_B), 'state.json'))).toBe(false);
      expect(ourDnsmasq()).toHaveLength(dnsmasqs);
      expect(inputOpenings()).toEqual(pair(NET_A));
      expect(sb.plugin(DNSNAME, call('DEL', 'c-x', c.path, 'x'), conf).code).toBe(0);
      // The network's last DEL takes its pair away; not before.
      expect(run(web, 'DEL').code).toBe(0);
      expect(run(api, 'DEL').code).toBe(0);
      expect(inputOpenings()).toEqual(pair(NET_A));
      expect(resolve(sb.dir, db.ns, '10.71.1.1', 'db.a.lan')).toBe(db.ip);
      expect(run(db, 'DEL').code).toBe(0);
      expect(inputOpenings()).toEqual([]);
      expect(opened(NET_A)).toBe(false);
    });
  }

  it('an opening made under the other backend is closed by this backend\'s last DEL (a switched network)', () => {
    const other: TestBackend = b === 'iptables' ? 'nftables' : 'iptables';
    backend = other;
    const web = addInstance(NET_A, 'c-web', 'web');
    expect(opened(NET_A, other)).toBe(true);
    expect(opened(NET_A, b)).toBe(false);
    backend = b;
    expect(run(web, 'DEL', { ...web.conf, backend: b }).code).toBe(0);
    expect(opened(NET_A, other)).toBe(false);
    expect(opened(NET_A, b)).toBe(false);
  });

  it('CHECK fails once the opening is removed by hand', () => {
    const web = addInstance(NET_A, 'c-web', 'web');
    expect(run(web, 'CHECK').code).toBe(0);
    if (b === 'iptables') sb.inHost(['iptables', '-D', 'INPUT', '-i', NET_A.bridge, '-p', 'tcp', '-m', 'tcp', '--dport', '53', '-m', 'comment', '--comment', `cni-ts dnsname: ${NET_A.name}`, '-j', 'ACCEPT']);
    else sb.inHost(['nft', 'delete', 'element', 'inet', 'cni_ts_dns', 'bridges', `{ "${NET_A.bridge}" }`]);
    const r = run(web, 'CHECK');
    expect(r.json).toMatchObject({ code: 115, details: expect.stringContaining(NET_A.bridge) });
    expect(run(web, 'DEL').code).toBe(0);
  });

  it('names and aliases resolve through the nameserver in the result; DEL makes them NXDOMAIN', () => {
    const web = addInstance(NET_A, 'c-web', 'web', ['www']);
    const db = addInstance(NET_A, 'c-db', 'db');
    const ns = db.result.dns.nameservers[0];
    expect(ns).toBe('10.71.1.1');
    expect(db.result.dns.search).toContain('a.lan');
    expect(web.result.ips).toEqual((web.conf.prevResult as { ips: unknown[] }).ips); // the rest of prevResult passes through
    expect(resolve(sb.dir, db.ns, ns, 'web')).toBe(web.ip);
    expect(resolve(sb.dir, db.ns, ns, 'www')).toBe(web.ip);
    expect(resolve(sb.dir, db.ns, ns, 'web.a.lan')).toBe(web.ip);
    expect(resolve(sb.dir, web.ns, ns, 'db.a.lan')).toBe(db.ip);
    expect(readFileSync(join(netDir(NET_A), 'addnhosts'), 'utf8')).toBe(`${web.ip}\tweb\twww\n${db.ip}\tdb\n`);
    expect(opened(NET_A)).toBe(true);

    expect(run(web, 'DEL').code).toBe(0);
    expect(resolve(sb.dir, db.ns, ns, 'web.a.lan')).toBe('ENOTFOUND');
    expect(resolve(sb.dir, db.ns, ns, 'www.a.lan')).toBe('ENOTFOUND');
    expect(resolve(sb.dir, db.ns, ns, 'db.a.lan')).toBe(db.ip);
    expect(opened(NET_A)).toBe(true); // db still needs it

    expect(run(db, 'DEL').code).toBe(0);
    expect(ourDnsmasq()).toEqual([]);
    expect(existsSync(netDir(NET_A))).toBe(false);
    expect(opened(NET_A)).toBe(false);
    expect(run(db, 'DEL').code).toBe(0); // again: fine
  });

  it('multiDomain: an instance on one network resolves a name on another', () => {
    const a = addInstance({ ...NET_A, multiDomain: true }, 'c-x', 'x');
    const b = addInstance({ ...NET_B, multiDomain: true }, 'c-y', 'y');
    expect(resolve(sb.dir, a.ns, a.result.dns.nameservers[0], 'y.b.lan')).toBe(b.ip);
    expect(resolve(sb.dir, b.ns, b.result.dns.nameservers[0], 'x.a.lan')).toBe(a.ip);
    expect(readFileSync(join(netDir(NET_A), 'localservers.conf'), 'utf8')).toBe('server=/b.lan/10.71.2.1\n');
    expect(run(b, 'DEL').code).toBe(0);
    expect(readFileSync(join(netDir(NET_A), 'localservers.conf'), 'utf8')).toBe(''); // kept in step
  });

  it('DEL succeeds after /run was wiped, and stops the dnsmasq it can no longer find by pidfile', () => {
    const web = addInstance(NET_A, 'c-web', 'web');
    expect(ourDnsmasq()).toHaveLength(1);
    rmSync(join(xdg, 'containers'), { recursive: true, force: true });
    expect(run(web, 'DEL').code).toBe(0);
    expect(ourDnsmasq()).toEqual([]);
    expect(opened(NET_A)).toBe(false);
  });

  it('remoteServers become the upstream servers', async () => {
    // A "remote" DNS server in a namespace of its own, reached through the test host.
    const remote = sb.container();
    const { must } = await import('../helpers/sandbox.js');
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'add', 'up0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', remote.name]);
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'addr', 'add', '198.51.100.1/24', 'dev', 'up0']);
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'set', 'up0', 'up']);
    must(['ip', 'netns', 'exec', remote.name, 'ip', 'addr', 'add', '198.51.100.53/24', 'dev', 'eth0']);
    must(['ip', 'netns', 'exec', remote.name, 'ip', 'link', 'set', 'eth0', 'up']);
    must(['ip', 'netns', 'exec', remote.name, 'ip', 'link', 'set', 'lo', 'up']);
    const upstream = spawn('ip', ['netns', 'exec', remote.name, '/usr/sbin/dnsmasq', '--no-daemon', '--no-resolv', '--no-hosts', `--pid-file=${join(sb.dir, 'remote.pid')}`,
      '--listen-address=198.51.100.53', '--bind-interfaces', '--address=/far.example/192.0.2.77'], { stdio: 'ignore' });
    try {
      await new Promise((r) => setTimeout(r, 300));
      const net = { ...NET_A };
      const c = sb.container();
      const b = sb.plugin(BRIDGE, { command: 'ADD', containerId: 'r1', netns: c.path }, {
        cniVersion: '1.0.0', name: net.name, type: 'bridge', bridge: net.bridge, isGateway: true,
        ipam: { type: 'host-local', subnet: net.subnet, routes: [{ dst: '0.0.0.0/0' }], dataDir: join(sb.dir, 'ipam') },
      });
      const d = sb.plugin(DNSNAME, call('ADD', 'r1', c.path, 'r1'), dnsConf(net, [], b.json, { remoteServers: ['198.51.100.53'] }));
      expect(d.code, d.stdout).toBe(0);
      expect(readFileSync(join(netDir(net), 'localservers.conf'), 'utf8')).toBe('server=198.51.100.53\n');
      expect(resolve(sb.dir, c.name, '10.71.1.1', 'host.far.example')).toBe('192.0.2.77');
      expect(resolve(sb.dir, c.name, '10.71.1.1', 'r1.a.lan')).toBe(b.json.ips[0].address.split('/')[0]);
    } finally {
      upstream.kill('SIGKILL');
    }
  });

});

describe('dnsname (the default backend: nothing here depends on the packet filter)', () => {
  it('CHECK passes, fails once the hosts line is removed or dnsmasq is killed; the next ADD restarts it', () => {
    const web = addInstance(NET_A, 'c-web', 'web');
    expect(run(web, 'CHECK').code).toBe(0);
    const hosts = join(netDir(NET_A), 'addnhosts');
    const saved = readFileSync(hosts, 'utf8');
    writeFileSync(hosts, '');
    expect(run(web, 'CHECK').json.code).toBe(115);
    writeFileSync(hosts, saved);
    expect(run(web, 'CHECK').code).toBe(0);
    for (const pid of ourDnsmasq()) process.kill(pid, 'SIGKILL');
    const dead = run(web, 'CHECK');
    expect(dead.json).toMatchObject({ code: 115, msg: expect.stringMatching(/not running/) });
    expect(run(web, 'ADD').code).toBe(0); // re-ADD: restarts dnsmasq, replaces the lines
    expect(ourDnsmasq()).toHaveLength(1);
    expect(readFileSync(hosts, 'utf8').split('\n').filter(Boolean)).toHaveLength(1);
    expect(run(web, 'CHECK').code).toBe(0);
    expect(resolve(sb.dir, web.ns, '10.71.1.1', 'web')).toBe(web.ip);
  });

  it('a name or alias already taken is an error and leaves nothing', () => {
    addInstance(NET_A, 'c-web', 'web', ['www']);
    const before = readFileSync(join(netDir(NET_A), 'state.json'), 'utf8');
    const c = sb.container();
    const prev = { cniVersion: '1.0.0', interfaces: [{ name: 'dnsa0' }], ips: [{ address: '10.71.1.50/24', gateway: '10.71.1.1' }] };
    const r1 = sb.plugin(DNSNAME, call('ADD', 'c-other', c.path, 'www'), dnsConf(NET_A, [], prev));
    expect(r1.json).toMatchObject({ code: 116, msg: 'name "www" is already taken on network neta' });
    const r2 = sb.plugin(DNSNAME, call('ADD', 'c-other', c.path, 'other'), dnsConf(NET_A, ['web'], prev));
    expect(r2.json.code).toBe(116);
    expect(readFileSync(join(netDir(NET_A), 'state.json'), 'utf8')).toBe(before);
  });

  it('never signals a foreign process named in the pidfile', async () => {
    const web = addInstance(NET_A, 'c-web', 'web');
    const db = addInstance(NET_A, 'c-db', 'db');
    const foreign = spawn('sleep', ['30']);
    await new Promise((r) => setTimeout(r, 100));
    writeFileSync(join(netDir(NET_A), 'pidfile'), `${foreign.pid}\n`);
    expect(run(db, 'DEL').code).toBe(0);
    expect(run(web, 'DEL').code).toBe(0);
    expect(foreign.exitCode).toBe(null);
    expect(foreign.signalCode).toBe(null);
    foreign.kill('SIGKILL');
    expect(ourDnsmasq()).toEqual([]);
  });

  it('concurrent ADDs on one network lose and duplicate no line; GC keeps exactly the valid ones', async () => {
    const n = 8;
    const cs = Array.from({ length: n }, () => sb.container());
    const bridges = cs.map((c, i) => sb.plugin(BRIDGE, { command: 'ADD', containerId: `k${i}`, netns: c.path }, {
      cniVersion: '1.0.0', name: NET_A.name, type: 'bridge', bridge: NET_A.bridge, isGateway: true,
      ipam: { type: 'host-local', subnet: NET_A.subnet, dataDir: join(sb.dir, 'ipam') },
    }));
    const runs = await Promise.all(cs.map((c, i) => sb.pluginAsync(DNSNAME, call('ADD', `k${i}`, c.path, `host${i}`), dnsConf(NET_A, [], bridges[i].json))));
    for (const r of runs) expect(r.code, r.stdout + r.stderr).toBe(0);
    const lines = readFileSync(join(netDir(NET_A), 'addnhosts'), 'utf8').split('\n').filter(Boolean);
    expect(lines).toHaveLength(n);
    for (let i = 0; i < n; i++) expect(resolve(sb.dir, cs[0].name, '10.71.1.1', `host${i}.a.lan`)).toBe(bridges[i].json.ips[0].address.split('/')[0]);
    const gc = sb.plugin(DNSNAME, call('GC', '', '', 'x'), { ...dnsConf(NET_A, []), cniVersion: '1.1.0', 'cni.dev/valid-attachments': [{ containerID: 'k3', ifname: 'eth0' }] });
    expect(gc.code, gc.stdout).toBe(0);
    expect(readFileSync(join(netDir(NET_A), 'addnhosts'), 'utf8')).toBe(`${bridges[3].json.ips[0].address.split('/')[0]}\thost3\n`);
    const gc2 = sb.plugin(DNSNAME, call('GC', '', '', 'x'), { ...dnsConf(NET_A, []), cniVersion: '1.1.0', 'cni.dev/valid-attachments': [] });
    expect(gc2.code).toBe(0);
    expect(ourDnsmasq()).toEqual([]);
    expect(existsSync(netDir(NET_A))).toBe(false);
  });

  it('STATUS says dnsmasq and the backend\'s tools are available', () => {
    expect(sb.plugin(DNSNAME, call('STATUS', '', '', 'x'), { ...dnsConf(NET_A, []), cniVersion: '1.1.0' }).code).toBe(0);
  });
});

describe('dnsname: bad input writes nothing', () => {
  const prev = { cniVersion: '1.0.0', interfaces: [{ name: 'dnsa0' }], ips: [{ address: '10.71.1.9/24', gateway: '10.71.1.1' }] };
  const cases: [string, Record<string, unknown>, string, number][] = [
    ['a domain with a space', { domainName: 'a lan' }, 'web', 7],
    ['a domain with a newline', { domainName: 'a.lan\naddn-hosts=/etc/passwd' }, 'web', 7],
    ['a domain with a slash', { domainName: 'a/lan' }, 'web', 7],
    ['an alias with a newline', { runtimeConfig: { aliases: { neta: ['ok', 'x\nconf-file=/tmp/evil'] } } }, 'web', 7],
    ['a name meant to inject a dnsmasq option', {}, 'web%0Aconf-file=/tmp/evil', 4],
    ['a missing prevResult', { prevResult: undefined }, 'web', 7],
    ['a remote server that is not an address', { remoteServers: ['1.2.3.4#53'] }, 'web', 7],
    ['a bridge in prevResult that does not exist', { prevResult: { ...prev, interfaces: [{ name: 'nosuchbr0' }] } }, 'web', 7],
    ['an unknown packet-filter backend', { backend: 'firewalld' }, 'web', 7],
  ];
  for (const [name, patch, podName, code] of cases) {
    it(name, () => {
      const c = sb.container();
      const conf = { ...dnsConf(NET_A, [], prev), ...patch };
      const r = sb.plugin(DNSNAME, call('ADD', 'c1', c.path, podName.replace('%0A', '\n')), conf);
      expect(r.code).toBe(1);
      expect(r.json.code).toBe(code);
      expect(existsSync(netDir(NET_A))).toBe(false);
      expect(ourDnsmasq()).toEqual([]);
    });
  }
});

describe('dnsname: a failed ADD undoes itself', () => {
  it('dnsmasq cannot serve the bridge (no gateway address on it): error, and no file, rule or dnsmasq left', () => {
    // The bridge exists but lacks the gateway address dnsmasq is to answer on.
    expect(sb.inHost(['ip', 'link', 'add', 'dnsa0', 'type', 'bridge']).code).toBe(0);
    expect(sb.inHost(['ip', 'link', 'set', 'dnsa0', 'up']).code).toBe(0);
    const before = sb.inHost(['iptables-save', '-t', 'filter']).stdout;
    const c = sb.container();
    const prev = { cniVersion: '1.0.0', interfaces: [{ name: 'dnsa0' }], ips: [{ address: '10.71.1.9/24', gateway: '10.71.1.1' }] };
    const r = sb.plugin(DNSNAME, call('ADD', 'c1', c.path, 'web'), dnsConf(NET_A, [], prev));
    expect(r.code, r.stdout + r.stderr).toBe(1);
    expect(r.json.code).toBeGreaterThan(0);
    expect(existsSync(netDir(NET_A))).toBe(false);
    expect(ourDnsmasq()).toEqual([]);
    expect(sb.inHost(['iptables-save', '-t', 'filter']).stdout.replace(/^#.*\n/gm, '')).toBe(before.replace(/^#.*\n/gm, ''));
  });
});
