import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, Sandbox, sh } from '../helpers/sandbox.js';
import { modeEnvArgs } from '../helpers/mode.js';
import { resolve } from '../helpers/traffic.js';

// The full Aos network list, run by cni-manager (the service manager library)
// inside the test's host namespace, into a real instance namespace.
let sb: Sandbox;
beforeEach(() => {
  sb = new Sandbox('mgr');
});
afterEach(() => sb.cleanup());

function aosList(extra: Record<string, unknown>[] = []) {
  return {
    cniVersion: '0.4.0', name: 'spmgr',
    plugins: [
      { type: 'bridge', bridge: 'br-mgr', hairpinMode: true, ipMasq: true, isGateway: true,
        ipam: { Name: '', type: 'host-local', dataDir: join(sb.dir, 'ipam'), subnet: '10.84.0.0/24', routes: [{ dst: '0.0.0.0/0' }] } },
      { type: 'dnsname', capabilities: { aliases: true }, domainName: 'spmgr', multiDomain: true },
      { type: 'aos-firewall', uuid: 'inst-1', iptablesAdminChainName: 'INSTANCE_inst-1', runtimeStatePath: join(sb.dir, 'aos_chains.conf'),
        allowPublicConnections: false, inputAccess: [{ port: '8080', protocol: 'tcp' }] },
      { type: 'bandwidth', ingressRate: 1_000_000, ingressBurst: 12800, egressRate: 2_000_000, egressBurst: 12800 },
      ...extra,
      { type: 'traffic-accounting', instanceId: 'inst-1' },
    ],
  };
}

function manager(args: string[]) {
  return sh(sb.pluginArgv('env', ...modeEnvArgs(), `XDG_RUNTIME_DIR=${join(sb.dir, 'xdg')}`, join(BIN, 'cni-manager'), ...args, '--cni-path', BIN, '--cache-dir', join(sb.dir, 'cache')));
}

function leftovers() {
  return {
    veths: sb.inHost(['ip', '-o', 'link', 'show', 'type', 'veth']).stdout.trim(),
    ifbs: sb.inHost(['ip', '-o', 'link', 'show', 'type', 'ifb']).stdout.trim(),
    chains: sb.inHost(['iptables-save', '-t', 'filter']).stdout.split('\n').filter((l) => /^:(CNI-|AOS_)/.test(l)),
    nat: sb.inHost(['iptables-save', '-t', 'nat']).stdout.split('\n').filter((l) => l.startsWith(':CNI-')),
    qdiscs: sb.inHost(['tc', 'qdisc', 'show']).stdout.split('\n').filter((l) => l && !l.includes('noqueue')),
    hosts: existsSync(join(sb.dir, 'xdg/containers/cni/dnsname/spmgr')),
    allocations: existsSync(join(sb.dir, 'ipam/spmgr')) ? readdirSync(join(sb.dir, 'ipam/spmgr')).filter((f) => f.startsWith('10.')) : [],
    cache: existsSync(join(sb.dir, 'cache/results')) ? readdirSync(join(sb.dir, 'cache/results')) : [],
    daemons: sb.strays(),
  };
}
const clean = { veths: '', ifbs: '', chains: [], nat: [], qdiscs: [], hosts: false, allocations: [], cache: [], daemons: [] };

describe('cni-manager runs the Aos list', () => {
  it('add, check, the cache in libcni format, del leaves nothing', () => {
    const c = sb.container();
    writeFileSync(join(sb.dir, 'list.conflist'), JSON.stringify(aosList()));
    const add = manager(['add', join(sb.dir, 'list.conflist'), 'inst-1', '--netns', c.path, '--cap', JSON.stringify({ aliases: { spmgr: ['web'] } })]);
    expect(add.code, add.stderr).toBe(0);
    const result = JSON.parse(add.stdout);
    expect(result.ips[0].address).toBe('10.84.0.2/24');
    expect(result.dns.nameservers[0]).toBe('10.84.0.1');
    expect(result.interfaces.map((i: { name: string }) => i.name)).toContain('bwp' + result.interfaces.at(-1).name.slice(3));
    expect(resolve(sb.dir, c.name, '10.84.0.1', 'web.spmgr')).toBe('10.84.0.2');
    const file = join(sb.dir, 'cache/results/spmgr-inst-1-eth0');
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const cached = JSON.parse(readFileSync(file, 'utf8'));
    expect(cached).toMatchObject({ kind: 'cniCacheV1', containerId: 'inst-1', ifName: 'eth0', networkName: 'spmgr', cniArgs: [['IgnoreUnknown', '1'], ['K8S_POD_NAME', 'inst-1']], result });
    expect(JSON.parse(Buffer.from(cached.config, 'base64').toString()).name).toBe('spmgr');
    expect(manager(['check', join(sb.dir, 'list.conflist'), 'inst-1', '--netns', c.path]).code).toBe(0);
    const del = manager(['del', join(sb.dir, 'list.conflist'), 'inst-1', '--netns', c.path]);
    expect(del.code, del.stderr).toBe(0);
    expect(leftovers()).toEqual(clean);
  });

  it('a plugin that fails mid-chain leaves nothing behind', () => {
    const c = sb.container();
    writeFileSync(join(sb.dir, 'bad.conflist'), JSON.stringify(aosList([{ type: 'aos-firewall', iptablesAdminChainName: 'X', uuid: 'u', inputAccess: [{ port: '80;reboot' }] }])));
    const add = manager(['add', join(sb.dir, 'bad.conflist'), 'inst-1', '--netns', c.path]);
    expect(add.code).toBe(1);
    expect(add.stderr).toMatch(/plugin aos-firewall failed: inputAccess/);
    expect(leftovers()).toEqual(clean);
    expect(sb.inNs(c.name, ['ip', '-o', 'link', 'show']).stdout.trim().split('\n')).toHaveLength(1);
  });

  it('traffic: totals grow with real traffic, survive a restart of the monitor, and a crossed limit drops traffic', async () => {
    const { throughput } = await import('../helpers/traffic.js');
    // A peer outside the local ranges, through the test host.
    const peer = sb.outsidePeer();
    const list = aosList();
    list.plugins = list.plugins.filter((p) => p.type !== 'bandwidth' && p.type !== 'aos-firewall');
    (list.plugins[0] as Record<string, unknown>).ipMasq = false;
    writeFileSync(join(sb.dir, 'list.conflist'), JSON.stringify(list));
    const c = sb.container();
    expect(manager(['add', join(sb.dir, 'list.conflist'), 'inst-1', '--netns', c.path]).code).toBe(0);
    const db = join(sb.dir, 'traffic.db');
    const traffic = (extra: string[] = []) => {
      const r = manager(['traffic', join(sb.dir, 'list.conflist'), '--db', db, ...extra]);
      expect(r.code, r.stderr).toBe(0);
      const row = r.stdout.split('\n').find((l) => l.startsWith('inst-1'))!.split(/\s+/);
      return { download: Number(row[1]), upload: Number(row[2]), state: row[4] };
    };
    expect(traffic()).toMatchObject({ download: 0, upload: 0, state: 'ok' });
    const rate = await throughput(sb.dir, c.name, peer.name, '203.0.113.9', 5200, 1);
    // A lower bound of what was sent: the sink counts from 0.5 s after the first byte to the end of
    // the 1 s stream (at least ~0.4 s at `rate`, the fastest part, after TCP's slow start).
    const sent = (rate / 8) * 0.4;
    const t1 = traffic();
    expect(t1.upload).toBeGreaterThan(sent * 0.9);
    expect(t1.download).toBeGreaterThan(0);
    const t2 = traffic(); // a new process: totals kept
    expect(t2.upload).toBeGreaterThanOrEqual(t1.upload);
    expect(existsSync(db)).toBe(true);
    // A limit below what was sent: blocked, and traffic to the peer dropped.
    const t3 = traffic(['--limits', JSON.stringify({ 'inst-1': { upload: 1000 } })]);
    expect(t3.state).toBe('BLOCKED');
    expect(sb.inHost(['iptables-save', '-t', 'filter']).stdout).toMatch(/-A AOS_[0-9a-f]+_OUT -s 10\.84\.0\.2\/32 -j DROP/);
    expect(sh(['ip', 'netns', 'exec', c.name, 'ping', '-c', '1', '-W', '1', '203.0.113.9']).code).not.toBe(0);
    const f = sb.inHost(['iptables-save', '-t', 'filter']).stdout;
    expect(f).toContain('-A INPUT -j AOS_SYSTEM_IN');
    expect(f).toContain('-A AOS_SYSTEM_OUT -d 10.0.0.0/8 -j RETURN');
    expect(f).toMatch(/^-A AOS_SYSTEM_IN$/m);
    expect(manager(['del', join(sb.dir, 'list.conflist'), 'inst-1', '--netns', c.path]).code).toBe(0);
    expect(sb.inHost(['iptables-save', '-t', 'filter']).stdout).not.toMatch(/AOS_[0-9a-f]/);
    // The monitor's own chains go with traffic-off (twice: nothing left is fine).
    for (let i = 0; i < 2; i++) expect(manager(['traffic-off']).code).toBe(0);
    expect(sb.inHost(['iptables-save', '-t', 'filter']).stdout).not.toContain('AOS_SYSTEM');
    expect(manager(['traffic-off', 'extra']).code).toBe(1);
  });

  it('answers --help and refuses a bad list clearly', () => {
    expect(manager(['--help']).stdout).toContain('usage: cni-manager');
    writeFileSync(join(sb.dir, 'empty.conflist'), '{"name":"x","plugins":[]}');
    const r = manager(['add', join(sb.dir, 'empty.conflist'), 'i']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('not a network list');
  });
});
