import { chmodSync, copyFileSync, closeSync, openSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, Sandbox, sh } from '../helpers/sandbox.js';
import { modeEnvArgs } from '../helpers/mode.js';
import { execPlugin, PluginError } from '../../manager/exec.js';
import { CniManager } from '../../manager/network.js';

let sb: Sandbox;
beforeEach(() => {
  sb = new Sandbox('mlib');
});
afterEach(() => sb.cleanup());

describe('service manager library', () => {
  it('retries an exec that fails with "text file busy" and reports plugin errors as typed errors', async () => {
    const bin = join(sb.dir, 'bin');
    sh(['mkdir', '-p', bin]);
    copyFileSync(join(BIN, 'cni-ts'), join(bin, 'bridge'));
    chmodSync(join(bin, 'bridge'), 0o755);
    const fd = openSync(join(bin, 'bridge'), 'r+'); // open for writing: exec gets ETXTBSY
    setTimeout(() => closeSync(fd), 250);
    const t0 = Date.now();
    const v = (await execPlugin({ type: 'bridge', command: 'VERSION', stdin: '{"cniVersion":"1.0.0"}' }, { cniPath: [bin], timeoutMs: 10_000, busyRetryMs: 200 })) as { supportedVersions: string[] };
    expect(v.supportedVersions).toContain('1.0.0');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(200);
    const err = await execPlugin({ type: 'bridge', command: 'ADD', containerId: 'x', netns: '/nonexistent', ifname: 'eth0', stdin: '{"cniVersion":"9.9.9","name":"n","type":"bridge"}' }, { cniPath: [bin], timeoutMs: 10_000 }).catch((e) => e);
    expect(err).toBeInstanceOf(PluginError);
    expect(err).toMatchObject({ plugin: 'bridge', code: 1, msg: 'incompatible CNI versions' });
    const missing = await execPlugin({ type: 'nope', command: 'VERSION', stdin: '{}' }, { cniPath: [bin], timeoutMs: 1000 }).catch((e) => e);
    expect(missing).toMatchObject({ code: 114 });
  });

  it('validateNetworkList checks binaries and versions; reconcile DELs attachments whose namespace is gone', async () => {
    // This library runs in the test process, in the machine's own network namespace, where an engine
    // would be shared with podman's and containerd's tests (which take hostNetLock; this one does not):
    // plugins run by exec here in both modes (manager/exec.ts passes CNI_TS_ENGINE on from process.env).
    const saved = process.env.CNI_TS_ENGINE;
    process.env.CNI_TS_ENGINE = 'off';
    try {
      await validateAndReconcile();
    } finally {
      if (saved === undefined) delete process.env.CNI_TS_ENGINE;
      else process.env.CNI_TS_ENGINE = saved;
    }
  });

  async function validateAndReconcile(): Promise<void> {
    const mgr = new CniManager({ cniPath: [BIN, '/usr/lib/cni'], cacheDir: join(sb.dir, 'cache') });
    await expect(mgr.validateNetworkList({ cniVersion: '1.1.0', name: 'n', plugins: [{ type: 'bridge' }, { type: 'firewall' }] })).resolves.toBeUndefined();
    await expect(mgr.validateNetworkList({ cniVersion: '1.1.0', name: 'n', plugins: [{ type: 'missing-plugin' }] })).rejects.toMatchObject({ code: 114 });
    // The Debian reference portmap speaks at most 1.0.0.
    const ref = new CniManager({ cniPath: ['/usr/lib/cni'], cacheDir: join(sb.dir, 'cache') });
    await expect(ref.validateNetworkList({ cniVersion: '1.1.0', name: 'n', plugins: [{ type: 'portmap' }] })).rejects.toMatchObject({ code: 1 });

    // A cached attachment whose namespace no longer exists is DELed and dropped from the cache.
    const list = { cniVersion: '1.0.0', name: 'recon', plugins: [{ type: 'bridge', bridge: 'rcbr', ipam: { type: 'host-local', subnet: '10.87.0.0/24', dataDir: join(sb.dir, 'ipam') } }] };
    mgr.cache.write({ kind: 'cniCacheV1', containerId: 'gone', config: Buffer.from(JSON.stringify(list)).toString('base64'), ifName: 'eth0', networkName: 'recon', result: { cniVersion: '1.0.0' } });
    mgr.cache.write({ kind: 'cniCacheV1', containerId: 'alive', config: Buffer.from(JSON.stringify(list)).toString('base64'), ifName: 'eth0', networkName: 'recon', result: { cniVersion: '1.0.0' } });
    sh(['mkdir', '-p', join(sb.dir, 'netns')]);
    writeFileSync(join(sb.dir, 'netns', 'alive'), '');
    const gone = await mgr.reconcile(list as never, (id) => join(sb.dir, 'netns', id));
    expect(gone.map((e) => e.containerId)).toEqual(['gone']);
    expect(mgr.cache.list('recon').map((e) => e.containerId)).toEqual(['alive']);
  }

  it('cni-manager serve exposes Prometheus metrics on loopback', async () => {
    const list = { cniVersion: '1.0.0', name: 'srv', plugins: [{ type: 'bridge', bridge: 'srvbr', isGateway: true, ipam: { type: 'host-local', subnet: '10.86.0.0/24', dataDir: join(sb.dir, 'ipam') } }, { type: 'traffic-accounting', instanceId: 'srv-1' }] };
    writeFileSync(join(sb.dir, 'l.conflist'), JSON.stringify(list));
    const c = sb.container();
    const base = sb.pluginArgv('env', ...modeEnvArgs(), join(BIN, 'cni-manager'));
    const opts = ['--cni-path', BIN, '--cache-dir', join(sb.dir, 'cache')];
    expect(sh([...base, 'add', join(sb.dir, 'l.conflist'), 'srv-1', '--netns', c.path, ...opts]).code).toBe(0);
    const { spawn } = await import('node:child_process');
    const server = spawn(base[0], [...base.slice(1), 'serve', join(sb.dir, 'l.conflist'), '--interval', '1', '--metrics-port', '19191', '--db', join(sb.dir, 't.db'), ...opts], { stdio: 'ignore' });
    try {
      let text = '';
      // serve answers (HELP lines only) before its first collection is done: wait for the instance's
      // series, for up to a minute (a slow, busy machine).
      const want = 'cni_instance_download_bytes{instance="srv-1"}';
      for (const deadline = Date.now() + 60_000; !text.includes(want) && Date.now() < deadline; ) {
        await new Promise((r) => setTimeout(r, 200));
        text = sh(['ip', 'netns', 'exec', sb.host, process.execPath, '-e', "fetch('http://127.0.0.1:19191/metrics').then(r=>r.text()).then(t=>process.stdout.write(t),()=>{})"]).stdout;
      }
      expect(text).toContain(want);
      expect(text).toMatch(/cni_traffic_collect_seconds \d/);
    } finally {
      server.kill('SIGKILL');
    }
    expect(existsSync(join(sb.dir, 't.db'))).toBe(true);
    expect(sh([...base, 'del', join(sb.dir, 'l.conflist'), 'srv-1', '--netns', c.path, ...opts]).code).toBe(0);
  });
});
