import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MODE, modeEnv } from '../helpers/mode.js';
import { BIN, must, Sandbox, sh } from '../helpers/sandbox.js';
import { Traffic } from '../helpers/traffic.js';

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
 * (backend nftables) are chained as a runtime does; ADD, CHECK and DEL
 * succeed, with real traffic through the masquerade, the forward accepts and
 * the port forward; iptables-nft's tables never appear in the namespace.
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

function plugin(name: string, command: string, id: string, netns: string, conf: unknown) {
  // Its parent in the mount namespace too (`timeout` forks and waits), as a runtime's would be: a
  // client whose parent is elsewhere takes its namespace for a per-call one and starts no engine.
  const argv = inMnt(['timeout', '600', ...sb.pluginArgv(join(BIN, name))]);
  const env = { PATH: process.env.PATH, ...modeEnv(), CNI_COMMAND: command, CNI_PATH: BIN, CNI_CONTAINERID: id, CNI_NETNS: netns, CNI_IFNAME: 'eth0' };
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

  it('an iptables FORWARD policy of DROP (iptables-nft\'s table, read with nft) without the tools to open it: ADD refuses naming the policy', () => {
    const c = sb.container();
    // Set outside the mount namespace, with the real tool: iptables-nft makes `table ip filter`.
    must(['ip', 'netns', 'exec', sb.host, 'iptables', '-P', 'FORWARD', 'DROP']);
    try {
      const conf = { cniVersion: '1.0.0', name: 'nftonly3', type: 'firewall', prevResult: { cniVersion: '1.0.0', ips: [{ address: '10.66.2.2/24' }] } };
      const r = plugin('firewall', 'ADD', 'y1', c.path, conf);
      expect(r.code).toBe(1);
      expect(r.json).toMatchObject({ code: 50, msg: 'iptables FORWARD policy is DROP: nftables rules alone cannot let network "nftonly3" through', details: expect.stringContaining('not installed') });
      expect(must(['ip', 'netns', 'exec', sb.host, 'nft', 'list', 'ruleset'])).not.toContain('10.66.2.2');
    } finally {
      must(['ip', 'netns', 'exec', sb.host, 'iptables', '-P', 'FORWARD', 'ACCEPT']);
    }
  });
});
