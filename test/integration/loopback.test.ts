import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, Sandbox, must } from '../helpers/sandbox.js';

const LOOPBACK = join(BIN, 'loopback');
const REFERENCE = '/usr/lib/cni/loopback';
let sb: Sandbox;
beforeEach(() => {
  sb = new Sandbox('lo');
});
afterEach(() => sb.cleanup());

const conf = (cniVersion: string, extra: Record<string, unknown> = {}) => ({ cniVersion, name: 'lo', type: 'loopback', ...extra });
const run = (bin: string, command: string, netns: string | undefined, config: unknown) =>
  sb.plugin(bin, { command, containerId: 'c1', netns, ifname: 'eth0' }, config);
const loFlags = (ns: string): string[] => JSON.parse(must(['ip', 'netns', 'exec', ns, 'ip', '-j', 'link', 'show', 'lo']))[0].flags;

/**
 * The reference (1.1.1) prints a 1.0.0-shaped result under any older
 * version, without the `version` the 0.3.x/0.4.0 specs require in ips; we
 * print the spec's shape. Everything else must match.
 */
const withoutIpVersion = (r: any) => ({ ...r, ips: r.ips?.map(({ version: _, ...ip }: any) => ip) });

describe('loopback', () => {
  it('ADD brings lo up and gives the reference result in every version', () => {
    for (const v of ['0.3.0', '0.3.1', '0.4.0', '1.0.0']) {
      const ours = sb.container();
      const ref = sb.container();
      const r = run(LOOPBACK, 'ADD', ours.path, conf(v));
      const q = run(REFERENCE, 'ADD', ref.path, conf(v));
      expect(r.code, r.stdout).toBe(0);
      expect(q.code, q.stdout).toBe(0);
      expect(withoutIpVersion(r.json)).toEqual(JSON.parse(JSON.stringify(q.json).replaceAll(ref.path, ours.path)));
      expect(r.json.ips).toEqual(
        v === '1.0.0'
          ? [{ interface: 0, address: '127.0.0.1/8' }, { interface: 0, address: '::1/128' }]
          : [{ version: '4', interface: 0, address: '127.0.0.1/8' }, { version: '6', interface: 0, address: '::1/128' }],
      );
      expect(loFlags(ours.name)).toContain('UP');
    }
  });

  it('lo carries traffic after ADD; CHECK fails once it is down; DEL and a second DEL succeed', () => {
    const c = sb.container();
    expect(run(LOOPBACK, 'ADD', c.path, conf('1.1.0')).json).toEqual({
      cniVersion: '1.1.0',
      interfaces: [{ name: 'lo', mac: '00:00:00:00:00:00', sandbox: c.path }],
      ips: [{ interface: 0, address: '127.0.0.1/8' }, { interface: 0, address: '::1/128' }],
      dns: {},
    });
    must(['ip', 'netns', 'exec', c.name, 'ping', '-c1', '-W2', '127.0.0.1']);
    expect(run(LOOPBACK, 'CHECK', c.path, conf('1.0.0')).code).toBe(0);
    const d = run(LOOPBACK, 'DEL', c.path, conf('1.0.0'));
    expect(d.code).toBe(0);
    expect(d.stdout).toBe('');
    expect(loFlags(c.name)).not.toContain('UP');
    expect(run(LOOPBACK, 'CHECK', c.path, conf('1.0.0')).json).toMatchObject({ code: 115, msg: 'loopback interface is down' });
    expect(run(LOOPBACK, 'DEL', c.path, conf('1.0.0')).code).toBe(0);
  });

  it('passes prevResult through when chained, as the reference', () => {
    const ours = sb.container();
    const ref = sb.container();
    const prevResult = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', sandbox: '/x' }], ips: [{ address: '10.9.0.2/24', interface: 0 }], dns: {} };
    const r = run(LOOPBACK, 'ADD', ours.path, conf('1.0.0', { prevResult }));
    const q = run(REFERENCE, 'ADD', ref.path, conf('1.0.0', { prevResult }));
    expect(r.json).toEqual(prevResult);
    expect(r.json).toEqual(q.json);
    expect(loFlags(ours.name)).toContain('UP');
  });

  it('DEL succeeds when the namespace is gone or not given; ADD on a missing namespace is a CNI error', () => {
    const c = sb.container();
    expect(run(LOOPBACK, 'ADD', c.path, conf('1.0.0')).code).toBe(0);
    sb.removeContainer(c.name);
    const d = run(LOOPBACK, 'DEL', c.path, conf('1.0.0'));
    expect(d.code, d.stdout).toBe(0);
    expect(run(LOOPBACK, 'DEL', undefined, conf('1.0.0')).code).toBe(0);
    const a = run(LOOPBACK, 'ADD', c.path, conf('1.0.0'));
    expect(a.code).toBe(1);
    expect(a.json).toMatchObject({ cniVersion: '1.0.0', code: 4, msg: expect.stringContaining('failed to open netns') });
  });
});
