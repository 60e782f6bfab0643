import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { BIN } from '../helpers/sandbox.js';

/**
 * The standalone binary answers VERSION in its small loader (src/loader.ts)
 * without loading the suite; every other command runs the bundle with its
 * warm code cache. Both VERSION paths must give the same answer: the bundle's
 * is reached through `cni-ts <plugin>` (argv0 is not a plugin name then).
 */
const run = (argv0: string, args: string[], input: Buffer | string, env: Record<string, string> = {}) => {
  const r = spawnSync(join(BIN, 'cni-ts'), args, { argv0, input, env: { PATH: process.env.PATH ?? '', ...env }, encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
};

const inputs: Array<Buffer | string> = [
  '{"cniVersion":"0.4.0"}',
  '{"cniVersion":"1.1.0","name":"n","plugins":[{"cniVersion":"0.3.0"}]}',
  '{"cniVersion":"0.2.0"}',
  '{"cniVersion":9}',
  '{"cniVersion":"1.0\\u002e0"}',
  '{"cniVersion":"0.3.1","cniVersion":"1.0.0"}',
  '{"nested":{"cniVersion":"0.3.0"}}',
  '{"cniVersion":"0.4.0"',
  '',
  '[]',
  'null',
  Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]),
  'x'.repeat(200_000),
];

describe('the binary', () => {
  it('answers VERSION in the loader exactly as the bundle does', () => {
    for (const input of inputs) {
      const fast = run(join(BIN, 'bridge'), [], input, { CNI_COMMAND: 'VERSION' });
      const full = run('cni-ts', ['bridge'], input, { CNI_COMMAND: 'VERSION' });
      expect(fast, String(input).slice(0, 60)).toEqual(full);
      expect(fast.status).toBe(0);
      expect(JSON.parse(fast.stdout).supportedVersions).toEqual(['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0']);
    }
    expect(JSON.parse(run('loopback', [], '{"cniVersion":"1.0\\u002e0"}', { CNI_COMMAND: 'VERSION' }).stdout).cniVersion).toBe('1.0.0');
    expect(JSON.parse(run('loopback', [], '{"cniVersion":"0.3.1","cniVersion":"0.4.0"}', { CNI_COMMAND: 'VERSION' }).stdout).cniVersion).toBe('0.4.0');
    expect(JSON.parse(run('loopback', [], '{"cniVersion":"0.2.0"}', { CNI_COMMAND: 'VERSION' }).stdout).cniVersion).toBe('1.1.0');
  });

  it('gives the same error for stdin over the limit on both paths', () => {
    const big = Buffer.alloc(17 * 1024 * 1024, 0x20);
    const fast = run('bridge', [], big, { CNI_COMMAND: 'VERSION' });
    const full = run('cni-ts', ['bridge'], big, { CNI_COMMAND: 'VERSION' });
    expect(fast.status).toBe(1);
    expect(JSON.parse(fast.stdout)).toMatchObject({ code: 5, msg: 'stdin too large' });
    expect(fast.stdout).toBe(full.stdout);
  });

  it('leaves unknown names and other commands to the bundle', () => {
    const unknown = run('nosuchplugin', [], '{}', { CNI_COMMAND: 'VERSION' });
    expect(unknown.status).toBe(1);
    expect(unknown.stderr).toMatch(/link this binary as one of/);
    const noCommand = run('tuning', [], '');
    expect(noCommand.status).toBe(0);
    expect(noCommand.stderr).toMatch(/CNI tuning plugin/);
    const add = run('loopback', [], '{"cniVersion":"1.0.0","name":"n","type":"loopback"}', { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c', CNI_IFNAME: 'lo', CNI_PATH: BIN });
    expect(add.status).toBe(1);
    expect(JSON.parse(add.stdout)).toMatchObject({ code: 4 });
  });

  it('runs its bundle with the code cache V8 accepted', () => {
    const r = run('loopback', [], '{"cniVersion":"1.0.0","name":"n","type":"loopback"}', { CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'c', CNI_IFNAME: 'lo', CNI_PATH: BIN, CNI_TS_TRACE: '1' });
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/\[trace\] .* done/);
    expect(r.stderr).not.toMatch(/code cache rejected/);
  });
});
