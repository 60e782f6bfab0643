import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MODE, modeEnv } from '../helpers/mode.js';
import { BIN, must, Sandbox, sh } from '../helpers/sandbox.js';
import { resolve, Traffic } from '../helpers/traffic.js';

/**
 * Issue 15 item 4, last sentence: nftables mode does not lean on the
 * iptables tools. The plugins run in a private mount namespace (held by a
 * helper process this file starts: `unshare --mount --propagation slave`, so
 * the sandbox's network namespaces made later still appear in it and nothing
 * mounted in it reaches the machine) where /dev/null is bind-mounted over
 * xtables-nft-multi and xtables-legacy-multi: every iptables*, ip6tables*
 * (and /etc/alternatives) name resolves to them, so lib/exec's lookup (PATH
 * and the system directories alike) finds no iptables tool and running one
 * fails. Hiding them from PATH alone would not do: `which` searches the
 * system directories whatever PATH says.
 *
 * bridge (ipMasq with ipMasqBackend nftables), firewall (no backend
 * configured: nftables is chosen because iptables is missing) and portmap
 * (backend nftables) are chained as a runtime does; so are bridge, dnsname,
 * aos-firewall and traffic-accounting (each with backend nftables) as the
 * Aos service manager does. ADD, CHECK and DEL succeed, with real traffic
 * through the masquerade, the forward accepts, the port forward, the Aos
 * instance firewall (allowed and dropped) and the accounting counters, and
 * names resolving through dnsmasq; iptables-nft's tables never appear in the
 * namespace.
 *
 * Both modes: in engine mode the client starts the engine of the (host
 * network, private mount) namespace pair inside that mount namespace, where
 * the tools are hidden from the engine as well; the sandbox's cleanup stops
 * engines of its namespace in every mount namespace.
 */
const HIDDEN = ['/usr/sbin/xtables-nft-multi', '/usr/sbin/xtables-legacy-multi'];
let holder: ChildProcess;
let sb: Sandbox;
let net: Traffic;

beforeAll(async () => {
  sb = new Sandbox('nft', { engine: false });
  net = new Traffic(sb.dir);
  const script = `
    const { spawnSync } = require('node:child_process');
    for (const f of ${JSON.stringify(HIDDEN)}) {
      const r = spawnSync('mount', ['--bind', '/dev/null', f], { stdio: 'inherit' });
      if (r.status !== 0) process.exit(99);
    }
    process.stdout.write('ready\\n');
    process.stdin.resume();
    process.stdin.on('end', () => process.exit(0));
  `;
  holder = spawn('unshare', ['--mount', '--propagation', 'slave', '--', process.execPath, '-e', script], { stdio: ['pipe', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    holder.stdout!.on('data', (b: Buffer) => b.toString().includes('ready') && resolve());
    holder.on('exit', (code) => reject(new Error(`mount namespace holder exited (${code})`)));
  });
});

afterAll(() => {
  net?.stop();
  holder?.stdin?.end();
  if (holder?.exitCode === null) holder.kill('SIGKILL');
  sb?.cleanup();
});

/** argv run inside the private mount namespace. */
const inMnt = (argv: string[]) => ['nsenter', `--mount=/proc/${holder.pid}/ns/mnt`, '--', ...argv];

function plugin(name: string, command: string, id: string, netns: string, conf: unknown, extraEnv: Record<string, string> = {}) {
  // Its parent in the mount namespace too (`timeout` forks and waits), as a runtime's would be: a
  // client whose parent is elsewhere takes its namespace for a per-call one and starts no engine.
  const argv = inMnt(['timeout', '600', ...sb.pluginArgv(join(BIN, name))]);
  const env = { PATH: process.env.PATH, ...modeEnv(), CNI_COMMAND: command, CNI_PATH: BIN, CNI_CONTAINERID: id, CNI_NETNS: netns, CNI_IFNAME: 'eth0', ...extraEnv };
  const r = spawnSync(argv[0], argv.slice(1), { input: JSON.stringify(conf), encoding: 'utf8', env });
  let json: any;
  try {
    json = JSON.parse(r.stdout);
  } catch {
    json = undefined;
  }
  return { code: r.status ?? 1, stdout: r.stdout, stderr: r.stderr, json };
}

/** Engine mode: pids of engines serving the sandbox's host namespace from the private mount namespace. */
function enginesInMnt(): number[] {
  const ino = (p: string) => {
    try {
      return statSync(p).ino;
    } catch {
      return undefined;
    }
  };
  const [net, mnt] = [ino(`/run/netns/${sb.host}`), ino(`/proc/${holder.pid}/ns/mnt`)];
  return readdirSync('/proc').map(Number).filter((pid) => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')[1] === 'engine' && ino(`/proc/${pid}/ns/net`) === net && ino(`/proc/${pid}/ns/mnt`) === mnt;
    } catch {
      return false;
    }
  });
}

const tables = () => must(['ip', 'netns', 'exec', sb.host, 'nft', 'list', 'tables']);

describe('nftables mode with the iptables tools absent', () => {
  it('the iptables tools really are absent in the plugins\' mount namespace (running one fails), and present outside it', () => {
    for (const tool of ['iptables-save', 'iptables-restore', 'ip6tables-save', 'iptables-nft-save', 'iptables-legacy-save', '/usr/sbin/iptables']) {
      expect(sh(inMnt(['ip', 'netns', 'exec', sb.host, tool])).code, tool).not.toBe(0);
    }
    expect(sh(['ip', 'netns', 'exec', sb.host, 'iptables-save']).code).toBe(0);
    expect(sh(inMnt(['ip', 'netns', 'exec', sb.host, 'nft', 'list', 'tables'])).code).toBe(0);
  });

  it('bridge (ipMasq, nftables) + firewall (backend chosen: nftables) + portmap (nftables): ADD, CHECK, DEL with real traffic; no iptables table ever appears', async () => {
    const c = sb.container();
    const peer = sb.outsidePeer();
    // The peer has no route back to the containers' subnet: only masquerade gets replies home.
    must(['ip', 'netns', 'exec', peer.name, 'ip', 'route', 'del', 'default']);
    const base = { cniVersion: '1.0.0', name: 'nftonly' };
    const bconf = { ...base, type: 'bridge', bridge: 'nft0', isGateway: true, isDefaultGateway: true, ipMasq: true, ipMasqBackend: 'nftables', ipam: { type: 'host-local', subnet: '10.66.0.0/24', dataDir: join(sb.dir, 'ipam') } };
    const fconf = { ...base, type: 'firewall' };
    const pconf = { ...base, type: 'portmap', backend: 'nftables', capabilities: { portMappings: true }, runtimeConfig: { portMappings: [{ hostPort: 8080, containerPort: 7000, protocol: 'tcp' }] } };
    const b = plugin('bridge', 'ADD', 'n1', c.path, bconf);
    expect(b.code, b.stdout + b.stderr).toBe(0);
    const f = plugin('firewall', 'ADD', 'n1', c.path, { ...fconf, prevResult: b.json });
    expect(f.code, f.stdout + f.stderr).toBe(0);
    const p = plugin('portmap', 'ADD', 'n1', c.path, { ...pconf, prevResult: f.json });
    expect(p.code, p.stdout + p.stderr).toBe(0);
    const ip = b.json.ips[0].address.split('/')[0];

    await net.serve(peer.name, [7100]);
    await net.serve(c.name, [7000]);
    expect(net.reach(c.name, '203.0.113.9', 7100)).toBe(true); // masquerade + forward
    expect(net.reach(peer.name, '203.0.113.1', 8080)).toBe(true); // the port forward
    const t = tables();
    expect(t).toContain('table inet cni_ts_firewall');
    expect(must(['ip', 'netns', 'exec', sb.host, 'nft', 'list', 'table', 'inet', 'cni_ts_firewall'])).toContain(`${ip} comment "nftonly n1 eth0"`);
    expect(t).not.toMatch(/table ip6? (filter|nat|mangle)\b/);
    // Engine mode: the calls went to an engine living in the mount namespace without the tools.
    if (MODE === 'engine') expect(enginesInMnt().length).toBeGreaterThan(0);

    expect(plugin('bridge', 'CHECK', 'n1', c.path, { ...bconf, prevResult: p.json }).code).toBe(0);
    expect(plugin('firewall', 'CHECK', 'n1', c.path, { ...fconf, prevResult: p.json }).code).toBe(0);
    expect(plugin('portmap', 'CHECK', 'n1', c.path, { ...pconf, prevResult: p.json }).code).toBe(0);
    for (const [name, conf] of [['bridge', bconf], ['firewall', fconf], ['portmap', pconf]] as const) {
      const s = plugin(name, 'STATUS', '', '', { ...conf, cniVersion: '1.1.0' });
      expect(s.code, `${name}: ${s.stdout}`).toBe(0);
    }

    for (const [name, conf] of [['portmap', pconf], ['firewall', fconf], ['bridge', bconf]] as const) {
      const d = plugin(name, 'DEL', 'n1', c.path, { ...conf, prevResult: p.json });
      expect(d.code, `${name}: ${d.stdout}${d.stderr}`).toBe(0);
    }
    expect(net.reach(peer.name, '203.0.113.1', 8080)).toBe(false);
    expect(must(['ip', 'netns', 'exec', sb.host, 'nft', 'list', 'ruleset'])).not.toContain(ip);
    expect(tables()).not.toMatch(/table ip6? (filter|nat|mangle)\b/);
  });

  it('bridge + dnsname + aos-firewall + traffic-accounting (all nftables), as Aos chains them: ADD, CHECK, DEL with real traffic and names; no iptables table ever appears', async () => {
    // An outside world for the public instance: the host's default route leads to it, it routes the subnet back.
    const wan = sb.container();
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'add', 'wan1', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', wan.name]);
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'addr', 'add', '198.51.100.1/24', 'dev', 'wan1']);
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'set', 'wan1', 'up']);
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'route', 'replace', 'default', 'via', '198.51.100.9']);
    must(['ip', 'netns', 'exec', wan.name, 'ip', 'addr', 'add', '198.51.100.9/24', 'dev', 'eth0']);
    must(['ip', 'netns', 'exec', wan.name, 'ip', 'link', 'set', 'eth0', 'up']);
    must(['ip', 'netns', 'exec', wan.name, 'ip', 'route', 'add', '10.66.3.0/24', 'via', '198.51.100.1']);
    const base = { cniVersion: '0.4.0', name: 'aosnft' };
    const xdg = { XDG_RUNTIME_DIR: join(sb.dir, 'xdg') };
    const bconf = { ...base, type: 'bridge', bridge: 'aos0', isGateway: true, ipMasq: false, ipam: { type: 'host-local', subnet: '10.66.3.0/24', routes: [{ dst: '0.0.0.0/0' }], dataDir: join(sb.dir, 'ipam') } };
    const dconf = { ...base, type: 'dnsname', domainName: 'aos.lan', backend: 'nftables' };
    const aconf = (uuid: string, pub: boolean) => ({ ...base, type: 'aos-firewall', uuid, iptablesAdminChainName: `INSTANCE_${uuid}`, allowPublicConnections: pub, inputAccess: [{ port: '7000' }], runtimeStatePath: join(sb.dir, 'aos_chains.conf'), backend: 'nftables' });
    const tconf = (uuid: string) => ({ ...base, type: 'traffic-accounting', instanceId: uuid, backend: 'nftables' });
    const chain = (uuid: string, pub: boolean) => [['bridge', bconf], ['dnsname', dconf], ['aos-firewall', aconf(uuid, pub)], ['traffic-accounting', tconf(uuid)]] as const;
    const env = (uuid: string) => ({ ...xdg, CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAME=${uuid}` });
    const inst: Record<string, { ns: string; path: string; ip: string; result: any }> = {};
    for (const [uuid, pub] of [['one', true], ['two', false]] as const) {
      const c = sb.container();
      let prev: unknown;
      for (const [name, conf] of chain(uuid, pub)) {
        const r = plugin(name, 'ADD', uuid, c.path, { ...conf, ...(prev ? { prevResult: prev } : {}) }, env(uuid));
        expect(r.code, `${name}: ${r.stdout}${r.stderr}`).toBe(0);
        prev = r.json;
      }
      inst[uuid] = { ns: c.name, path: c.path, ip: (prev as any).ips[0].address.split('/')[0], result: prev };
    }
    const t = tables();
    for (const table of ['cni_ts_aos', 'cni_ts_dns', 'cni_ts_accounting']) expect(t).toContain(`table inet ${table}`);
    expect(t).not.toMatch(/table ip6? (filter|nat|mangle)\b/);
    if (MODE === 'engine') expect(enginesInMnt().length).toBeGreaterThan(0);

    // Names: the nameserver in the result answers for both instances.
    expect(inst.two.result.dns.nameservers).toEqual(['10.66.3.1']);
    expect(resolve(sb.dir, inst.two.ns, '10.66.3.1', 'one.aos.lan')).toBe(inst.one.ip);
    expect(resolve(sb.dir, inst.one.ns, '10.66.3.1', 'two.aos.lan')).toBe(inst.two.ip);
    // The Aos firewall: the public instance reaches the WAN, the private one does not; inputAccess in, other ports not.
    await net.serve(wan.name, [7200]);
    await net.serve(inst.one.ns, [7000, 7001]);
    const counters = () => {
      const j = JSON.parse(must(['ip', 'netns', 'exec', sb.host, 'nft', '-j', 'list', 'counters', 'table', 'inet', 'cni_ts_accounting'])).nftables as { counter?: { name: string; bytes: number } }[];
      return j.filter((i) => i.counter).reduce((n, i) => n + i.counter!.bytes, 0);
    };
    const before = counters();
    expect(net.reach(inst.one.ns, '198.51.100.9', 7200)).toBe(true);
    expect(net.reach(inst.two.ns, '198.51.100.9', 7200)).toBe(false);
    expect(net.reach(wan.name, inst.one.ip, 7000)).toBe(true);
    expect(net.reach(wan.name, inst.one.ip, 7001)).toBe(false);
    expect(counters()).toBeGreaterThan(before); // the accounting counters counted it

    for (const [uuid, pub] of [['one', true], ['two', false]] as const) {
      for (const [name, conf] of chain(uuid, pub)) {
        const r = plugin(name, 'CHECK', uuid, inst[uuid].path, { ...conf, prevResult: inst[uuid].result }, env(uuid));
        expect(r.code, `${name} CHECK: ${r.stdout}${r.stderr}`).toBe(0);
      }
    }
    for (const [name, conf] of chain('one', true)) {
      const s = plugin(name, 'STATUS', '', '', { ...conf, cniVersion: '1.1.0' }, xdg);
      expect(s.code, `${name}: ${s.stdout}`).toBe(0);
    }
    for (const [uuid, pub] of [['one', true], ['two', false]] as const) {
      for (const [name, conf] of [...chain(uuid, pub)].reverse()) {
        const d = plugin(name, 'DEL', uuid, inst[uuid].path, { ...conf, prevResult: inst[uuid].result }, env(uuid));
        expect(d.code, `${name} DEL: ${d.stdout}${d.stderr}`).toBe(0);
      }
    }
    const rules = must(['ip', 'netns', 'exec', sb.host, 'nft', 'list', 'ruleset']);
    for (const i of Object.values(inst)) expect(rules).not.toContain(i.ip);
    expect(rules).not.toContain('"aos0"');
    expect(tables()).not.toMatch(/table ip6? (filter|nat|mangle)\b/);
  });

  it('iptables asked for where it is missing: a clear error naming the tool (ADD and STATUS), nothing made', () => {
    const c = sb.container();
    const conf = { cniVersion: '1.0.0', name: 'nftonly2', type: 'firewall', backend: 'iptables', prevResult: { cniVersion: '1.0.0', ips: [{ address: '10.66.1.2/24' }] } };
    const before = tables();
    for (const cmd of ['ADD', 'STATUS']) {
      const r = plugin('firewall', cmd, 'x1', c.path, { ...conf, cniVersion: cmd === 'STATUS' ? '1.1.0' : conf.cniVersion });
      expect(r.code).toBe(1);
      expect(r.json).toMatchObject({ code: 50, msg: 'firewall backend "iptables" cannot work on this host: iptables-restore, iptables-save not found' });
    }
    expect(plugin('firewall', 'DEL', 'x1', c.path, conf).code).toBe(0);
    expect(tables()).toBe(before);
  });

  it('an iptables FORWARD (INPUT) policy of DROP (iptables-nft\'s table, read with nft) without the tools to open it: firewall, aos-firewall (dnsname) ADD refuses naming the policy', () => {
    const c = sb.container();
    // Set outside the mount namespace, with the real tool: iptables-nft makes `table ip filter`.
    must(['ip', 'netns', 'exec', sb.host, 'iptables', '-P', 'FORWARD', 'DROP']);
    try {
      const conf = { cniVersion: '1.0.0', name: 'nftonly3', type: 'firewall', prevResult: { cniVersion: '1.0.0', ips: [{ address: '10.66.2.2/24' }] } };
      const r = plugin('firewall', 'ADD', 'y1', c.path, conf);
      expect(r.code).toBe(1);
      expect(r.json).toMatchObject({ code: 50, msg: 'iptables FORWARD policy is DROP: nftables rules alone cannot let network "nftonly3" through', details: expect.stringContaining('not installed') });
      expect(must(['ip', 'netns', 'exec', sb.host, 'nft', 'list', 'ruleset'])).not.toContain('10.66.2.2');
      // The same for aos-firewall (FORWARD) and dnsname (INPUT), on the Aos test's bridge (aos0, 10.66.3.1/24).
      const prev = { cniVersion: '0.4.0', interfaces: [{ name: 'aos0' }], ips: [{ version: '4', address: '10.66.3.6/24', gateway: '10.66.3.1', interface: 0 }] };
      const aos = { cniVersion: '0.4.0', name: 'nftonly4', type: 'aos-firewall', uuid: 'z1', iptablesAdminChainName: 'INSTANCE_z1', runtimeStatePath: join(sb.dir, 'aos_chains.conf'), backend: 'nftables', prevResult: prev };
      const a = plugin('aos-firewall', 'ADD', 'z1', c.path, aos);
      expect(a.json, a.stdout + a.stderr).toMatchObject({ code: 50, msg: 'iptables FORWARD policy is DROP: nftables rules alone cannot let network "nftonly4" through', details: expect.stringContaining('not installed') });
      must(['ip', 'netns', 'exec', sb.host, 'iptables', '-P', 'INPUT', 'DROP']);
      const env = { XDG_RUNTIME_DIR: join(sb.dir, 'xdg'), CNI_ARGS: 'K8S_POD_NAME=z1' };
      const dns = { cniVersion: '0.4.0', name: 'nftonly4', type: 'dnsname', backend: 'nftables', prevResult: prev };
      const d = plugin('dnsname', 'ADD', 'z1', c.path, dns, env);
      expect(d.json, d.stdout + d.stderr).toMatchObject({ code: 50, msg: 'iptables INPUT policy is DROP: nftables rules alone cannot let network "nftonly4" reach its DNS server (port 53)', details: expect.stringContaining('not installed') });
      expect(must(['ip', 'netns', 'exec', sb.host, 'nft', 'list', 'ruleset'])).not.toContain('10.66.3.6');
      expect(plugin('aos-firewall', 'DEL', 'z1', c.path, aos).code).toBe(0);
      expect(plugin('dnsname', 'DEL', 'z1', c.path, dns, env).code).toBe(0);
    } finally {
      must(['ip', 'netns', 'exec', sb.host, 'iptables', '-P', 'FORWARD', 'ACCEPT']);
      must(['ip', 'netns', 'exec', sb.host, 'iptables', '-P', 'INPUT', 'ACCEPT']);
    }
  });
});
