import { mkdirSync, readdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, ROOT, Sandbox } from '../helpers/sandbox.js';
import { modeEnv } from '../helpers/mode.js';
import { Traffic } from '../helpers/traffic.js';

// containerd's CRI plugin runs two lists for every pod through libcni: its
// default network (bridge + host-local + portmap, conf.d/50-containerd.conflist)
// and a built-in loopback list. Here both run through libcni (test/tools/cnitool)
// against our binaries, the way containerd would call them.
const CNITOOL = join(ROOT, 'test/tools/cnitool/cnitool');
let sb: Sandbox;
let net: Traffic;
beforeEach(() => {
  sb = new Sandbox('ctrd');
  net = new Traffic(sb.dir);
});
afterEach(() => {
  net.stop();
  sb.cleanup();
});

function cnitool(args: string[], env: Record<string, string> = {}) {
  const argv = sb.pluginArgv(CNITOOL, ...args);
  const r = spawnSync(argv[0], argv.slice(1), {
    encoding: 'utf8',
    env: { PATH: process.env.PATH, ...modeEnv(), NETCONFPATH: join(sb.dir, 'net.d'), CNI_PATH: BIN, CNI_CACHEDIR: join(sb.dir, 'cache'), CNI_CONTAINERID: 'pod-1', ...env },
  });
  return { code: r.status ?? 1, stdout: r.stdout, stderr: r.stderr };
}

describe("containerd's default network lists through libcni", () => {
  it('loopback + bridge/host-local/portmap: lo up, addresses, gateway, a published port; CHECK; DEL leaves nothing', async () => {
    mkdirSync(join(sb.dir, 'net.d'));
    const list = JSON.parse(readFileSync(join(ROOT, 'conf.d/50-containerd.conflist'), 'utf8'));
    list.plugins[0].ipam.dataDir = join(sb.dir, 'ipam');
    writeFileSync(join(sb.dir, 'net.d', '10-containerd-net.conflist'), JSON.stringify(list));
    writeFileSync(join(sb.dir, 'net.d', '99-loopback.conflist'), JSON.stringify({ cniVersion: '1.0.0', name: 'cni-loopback', plugins: [{ type: 'loopback' }] }));
    const c = sb.container();
    const env = { CAP_ARGS: JSON.stringify({ portMappings: [{ hostPort: 18080, containerPort: 80, protocol: 'tcp' }] }), CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web' };

    const lo = cnitool(['add', 'cni-loopback', c.path], { CNI_IFNAME: 'lo' });
    expect(lo.code, lo.stderr).toBe(0);
    expect(sb.inNs(c.name, ['ip', '-o', 'link', 'show', 'lo']).stdout).toMatch(/<LOOPBACK,UP,LOWER_UP>/);
    const add = cnitool(['add', 'containerd-net', c.path], env);
    expect(add.code, add.stderr).toBe(0);
    const result = JSON.parse(add.stdout);
    const v4 = result.ips.find((i: { address: string }) => !i.address.includes(':')).address.split('/')[0];
    expect(v4).toMatch(/^10\.89\./);
    expect(result.ips.some((i: { address: string }) => i.address.startsWith('fd00:10:89::'))).toBe(true);
    expect(sb.inNs(c.name, ['ping', '-c', '1', '-W', '2', '10.89.0.1']).code).toBe(0);
    expect(sb.inHost(['ip', '-o', 'link', 'show', 'cni0']).stdout).toContain('PROMISC');

    await net.serve(c.name, [80]);
    expect(net.reach(sb.host, '127.0.0.1', 18080)).toBe(true);
    expect(net.reach(sb.host, '10.89.0.1', 18080)).toBe(true);
    expect(net.reach(c.name, '127.0.0.1', 80)).toBe(true); // the pod's own loopback works

    expect(cnitool(['check', 'containerd-net', c.path], env).code).toBe(0);
    expect(cnitool(['check', 'cni-loopback', c.path], { CNI_IFNAME: 'lo' }).code).toBe(0);

    // containerd DELs after the sandbox is gone too: stop what runs in it and remove the namespace first.
    net.stop();
    sb.removeContainer(c.name);
    const del = cnitool(['del', 'containerd-net', c.path], env);
    expect(del.code, del.stderr).toBe(0);
    expect(cnitool(['del', 'cni-loopback', c.path], { CNI_IFNAME: 'lo' }).code).toBe(0);
    expect(sb.inHost(['iptables-save', '-t', 'nat']).stdout).not.toMatch(/CNI-DN-|:CNI-[0-9a-f]/);
    // The kernel removes the host end of the veth with the namespace, asynchronously.
    for (let i = 0; i < 50 && sb.inHost(['ip', '-o', 'link', 'show', 'type', 'veth']).stdout.trim() !== ''; i++) await new Promise((r) => setTimeout(r, 100));
    expect(sb.inHost(['ip', '-o', 'link', 'show', 'type', 'veth']).stdout.trim()).toBe('');
    expect(readdirSync(join(sb.dir, 'ipam', 'containerd-net')).filter((f) => /^\d|:/.test(f))).toEqual([]);
    expect(existsSync(join(sb.dir, 'cache', 'results')) ? readdirSync(join(sb.dir, 'cache', 'results')) : []).toEqual([]);
    expect(net.reach(sb.host, '127.0.0.1', 18080)).toBe(false);
  });
});
