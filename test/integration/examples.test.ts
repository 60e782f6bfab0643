import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, ROOT, Sandbox } from '../helpers/sandbox.js';
import { modeEnv, stopEngines } from '../helpers/mode.js';

// Every example in conf.d/, run as a runtime runs a list: each plugin gets its
// own object plus cniVersion, name and the previous result; DEL in reverse.
let sb: Sandbox;
beforeEach(() => {
  sb = new Sandbox('ex');
});
afterEach(() => sb.cleanup());

const examples = readdirSync(join(ROOT, 'conf.d')).filter((f) => f.endsWith('.conflist'));

function netemAvailable(): boolean {
  const ns = `cnits-netem-${process.pid}`;
  spawnSync('ip', ['netns', 'add', ns]);
  const r = spawnSync('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'add', 'dev', 'lo', 'root', 'netem', 'delay', '1ms']);
  spawnSync('ip', ['netns', 'del', ns]);
  return r.status === 0;
}

describe('conf.d examples', () => {
  for (const file of examples) {
    it(`${file}: ADD, CHECK, DEL; the container reaches its gateway; nothing left`, () => {
      const list = JSON.parse(readFileSync(join(ROOT, 'conf.d', file), 'utf8'));
      const impaired = list.plugins.some((p: Record<string, unknown>) => Object.keys(p).some((k) => /^(ingress|egress)(Delay|Loss|Duplicate|Reorder)$/.test(k)));
      if (impaired && !netemAvailable()) {
        console.log(`${file}: this kernel has no netem; the impairment example is not run here (bandwidth.test.ts checks the error path)`);
        return;
      }
      const c = sb.container();
      const call = (command: string, plugin: Record<string, unknown>, prevResult?: unknown) => {
        const conf: Record<string, unknown> = { ...plugin, cniVersion: list.cniVersion, name: list.name, ...(prevResult ? { prevResult } : {}) };
        // State goes into the test's temp dir, never the machine's.
        if (conf.ipam) conf.ipam = { ...(conf.ipam as object), dataDir: join(sb.dir, 'ipam') };
        if (conf.type === 'aos-firewall') conf.runtimeStatePath = join(sb.dir, 'aos_chains.conf');
        // As the Aos service manager and podman call them: the name in CNI_ARGS, runtime files in a temp dir.
        const env = { XDG_RUNTIME_DIR: join(sb.dir, 'xdg') };
        return sb.plugin(join(BIN, plugin.type as string), { command, containerId: 'example', netns: c.path, args: 'IgnoreUnknown=1;K8S_POD_NAME=example', env }, conf);
      };
      let result: any;
      for (const p of list.plugins) {
        const r = call('ADD', p, result);
        expect(r.code, r.stdout + r.stderr).toBe(0);
        result = r.json;
      }
      for (const ip of result.ips) {
        const v6 = ip.address.includes(':');
        expect(sb.inNs(c.name, ['ping', ...(v6 ? ['-6'] : []), '-c', '1', '-W', '3', ip.gateway]).code, ip.gateway).toBe(0);
      }
      for (const p of list.plugins) expect(call('CHECK', p, result).code).toBe(0);
      for (const p of [...list.plugins].reverse()) expect(call('DEL', p, result).code).toBe(0);
      // portmap's shared chains (CNI-HOSTPORT-*) stay, as the reference's do; nothing of the container may.
      expect(sb.inHost(['iptables-save', '-t', 'nat']).stdout).not.toMatch(/^:CNI-(?!HOSTPORT-)/m);
      const filter = sb.inHost(['iptables-save', '-t', 'filter']).stdout;
      for (const ip of result.ips) expect(filter).not.toContain(`${ip.address.split('/')[0]}/`);
      expect(filter).not.toContain('--dport 53');
      expect(sb.strays()).toEqual([]); // no dnsmasq left running
      expect(sb.inHost(['ip', '-o', 'link', 'show', 'type', 'ifb']).stdout.trim()).toBe('');
      expect(sb.inHost(['ip', '-o', 'link', 'show', 'type', 'veth']).stdout.trim()).toBe('');
    });
  }
});

describe('make install', () => {
  it('puts the executable and one link per plugin into DESTDIR', () => {
    const dest = mkdtempSync(join(tmpdir(), 'cnits-install-'));
    try {
      const r = spawnSync('make', ['-s', '-C', ROOT, 'install', `DESTDIR=${dest}`], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      for (const p of ['bridge', 'host-local']) {
        expect(existsSync(join(dest, p))).toBe(true);
        // In the sandbox's namespace: in engine mode the installed client starts an engine from DESTDIR.
        const argv = sb.pluginArgv(join(dest, p));
        const v = spawnSync(argv[0], argv.slice(1), { input: '{"cniVersion":"1.0.0"}', env: { PATH: process.env.PATH, ...modeEnv(), CNI_COMMAND: 'VERSION' }, encoding: 'utf8' });
        expect(JSON.parse(v.stdout).supportedVersions).toContain('1.1.0');
      }
    } finally {
      stopEngines(sb.host, { anyMount: true, dirs: [dest] }); // before its binary goes
      rmSync(dest, { recursive: true, force: true });
    }
  });
});
