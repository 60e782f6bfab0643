import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, ROOT, Sandbox } from '../helpers/sandbox.js';
import { modeEnv } from '../helpers/mode.js';
import { spawnSync } from 'node:child_process';

// End to end through libcni (Debian's golang-github-appc-cni-dev) with our
// cnitool-compatible driver: the runtime library builds each plugin's stdin,
// injects runtimeConfig from capabilities, caches and feeds back prevResult.
const CNITOOL = join(ROOT, 'test/tools/cnitool/cnitool');
let sb: Sandbox;
beforeEach(() => {
  sb = new Sandbox('libcni');
});
afterEach(() => sb.cleanup());

function cnitool(args: string[], env: Record<string, string>) {
  const argv = sb.pluginArgv(CNITOOL, ...args);
  const r = spawnSync(argv[0], argv.slice(1), {
    encoding: 'utf8',
    env: { PATH: process.env.PATH, ...modeEnv(), NETCONFPATH: join(sb.dir, 'net.d'), CNI_PATH: BIN, CNI_CACHEDIR: join(sb.dir, 'cache'), ...env },
  });
  return { code: r.status ?? 1, stdout: r.stdout, stderr: r.stderr };
}

describe('a conflist through libcni', () => {
  it('add, check, del with capabilities (ips, mac) and CNI_ARGS; nothing left', async () => {
    mkdirSync(join(sb.dir, 'net.d'));
    writeFileSync(join(sb.dir, 'net.d', '10-libcni.conflist'), JSON.stringify({
      cniVersion: '1.0.0',
      name: 'libcninet',
      plugins: [{
        type: 'bridge', bridge: 'cnilib0', isGateway: true, isDefaultGateway: true, ipMasq: true,
        capabilities: { ips: true, mac: true },
        ipam: { type: 'host-local', ranges: [[{ subnet: '10.91.0.0/24' }]], dataDir: join(sb.dir, 'ipam') },
      }],
    }));
    const c = sb.container();
    const env = { CAP_ARGS: JSON.stringify({ ips: ['10.91.0.50/24'], mac: '02:aa:bb:cc:dd:ee' }), CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAME=web' };
    const add = cnitool(['add', 'libcninet', c.path], env);
    expect(add.code, add.stderr).toBe(0);
    const result = JSON.parse(add.stdout);
    expect(result.ips[0].address).toBe('10.91.0.50/24');
    expect(result.interfaces[2]).toMatchObject({ name: 'eth0', mac: '02:aa:bb:cc:dd:ee' });
    expect(sb.inNs(c.name, ['ip', '-o', 'link', 'show', 'eth0']).stdout).toContain('02:aa:bb:cc:dd:ee');
    expect(sb.inNs(c.name, ['ping', '-c', '1', '-W', '2', '10.91.0.1']).code).toBe(0);
    expect(readdirSync(join(sb.dir, 'cache', 'results')).length).toBe(1);

    expect(cnitool(['check', 'libcninet', c.path], env).code).toBe(0);
    sb.inNs(c.name, ['ip', 'addr', 'flush', 'dev', 'eth0']);
    const bad = cnitool(['check', 'libcninet', c.path], env);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/10\.91\.0\.50/);

    // The cache libcni wrote is one our service manager library reads.
    const { ResultCache } = await import('../../manager/cache.js');
    const cached = new ResultCache(join(sb.dir, 'cache')).list('libcninet');
    expect(cached).toHaveLength(1);
    expect(cached[0]).toMatchObject({ kind: 'cniCacheV1', networkName: 'libcninet', ifName: 'eth0', capabilityArgs: { ips: ['10.91.0.50/24'] } });
    expect((cached[0].result as { ips: { address: string }[] }).ips[0].address).toBe('10.91.0.50/24');
    expect(JSON.parse(Buffer.from(cached[0].config, 'base64').toString()).name).toBe('libcninet');

    const del = cnitool(['del', 'libcninet', c.path], env);
    expect(del.code, del.stderr).toBe(0);
    expect(readdirSync(join(sb.dir, 'ipam', 'libcninet')).filter((f) => f.startsWith('10.'))).toEqual([]);
    expect(sb.inHost(['iptables-save', '-t', 'nat']).stdout).not.toContain(':CNI-');
    expect(sb.inHost(['ip', '-o', 'link', 'show', 'type', 'veth']).stdout.trim()).toBe('');
    expect(existsSync(join(sb.dir, 'cache', 'results')) ? readdirSync(join(sb.dir, 'cache', 'results')) : []).toEqual([]);
  });

  for (const file of ['10-bridge.conflist', '30-podman-style.conflist']) {
    it(`the example conf.d/${file} works through libcni`, () => {
      mkdirSync(join(sb.dir, 'net.d'));
      const list = JSON.parse(readFileSync(join(ROOT, 'conf.d', file), 'utf8'));
      list.plugins[0].ipam.dataDir = join(sb.dir, 'ipam');
      writeFileSync(join(sb.dir, 'net.d', file), JSON.stringify(list));
      const c = sb.container();
      // As podman calls it: the container's name in CNI_ARGS, a published port; dnsname's files in the temp dir.
      const env = { CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAME=web', XDG_RUNTIME_DIR: join(sb.dir, 'xdg'), CAP_ARGS: JSON.stringify({ portMappings: [{ hostPort: 18080, containerPort: 80, protocol: 'tcp' }] }) };
      const add = cnitool(['add', list.name, c.path], env);
      expect(add.code, add.stderr).toBe(0);
      const gw = JSON.parse(add.stdout).ips[0].gateway;
      expect(sb.inNs(c.name, ['ping', '-c', '1', '-W', '2', gw]).code).toBe(0);
      expect(cnitool(['check', list.name, c.path], env).code).toBe(0);
      expect(cnitool(['del', list.name, c.path], env).code).toBe(0);
      expect(cnitool(['del', list.name, c.path], env).code).toBe(0);
      expect(sb.inHost(['iptables-save', '-t', 'nat']).stdout).not.toContain('CNI-DN-');
      expect(sb.inHost(['iptables-save']).stdout).not.toMatch(/-[sd] 10\.88\./);
    });
  }
});
