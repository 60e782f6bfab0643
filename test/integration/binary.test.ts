import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BIN as SHIPPED, Sandbox, TEST_BIN } from '../helpers/sandbox.js';
import { MODE, modeEnv } from '../helpers/mode.js';
import { FP } from '../../lib/cni/failpoints.js';

/** The shipped build (bin/), or another one to check (CNI_TS_SHIPPED_BIN: e.g. an older build, to see these tests fail on it). */
const BIN = process.env.CNI_TS_SHIPPED_BIN ?? SHIPPED;

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
    // Each plugin declares the versions its reference binary does (plus 1.1.0): bandwidth from 0.3.0, firewall from 0.4.0.
    const all = ['0.1.0', '0.2.0', '0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'];
    for (const [plugin, versions] of [['bridge', all], ['firewall', all.slice(4)], ['bandwidth', all.slice(2)]] as const) {
      for (const input of inputs) {
        const fast = run(join(BIN, plugin), [], input, { CNI_COMMAND: 'VERSION' });
        const full = run('cni-ts', [plugin], input, { CNI_COMMAND: 'VERSION' });
        expect(fast, `${plugin} ${String(input).slice(0, 60)}`).toEqual(full);
        expect(fast.status).toBe(0);
        expect(JSON.parse(fast.stdout).supportedVersions).toEqual(versions);
      }
    }
    expect(JSON.parse(run('firewall', [], '{"cniVersion":"0.3.1"}', { CNI_COMMAND: 'VERSION' }).stdout).cniVersion).toBe('1.1.0');
    expect(JSON.parse(run('loopback', [], '{"cniVersion":"1.0\\u002e0"}', { CNI_COMMAND: 'VERSION' }).stdout).cniVersion).toBe('1.0.0');
    expect(JSON.parse(run('loopback', [], '{"cniVersion":"0.3.1","cniVersion":"0.4.0"}', { CNI_COMMAND: 'VERSION' }).stdout).cniVersion).toBe('0.4.0');
    expect(JSON.parse(run('loopback', [], '{"cniVersion":"0.2.0"}', { CNI_COMMAND: 'VERSION' }).stdout).cniVersion).toBe('0.2.0');
    expect(JSON.parse(run('loopback', [], '{"cniVersion":"0.0.9"}', { CNI_COMMAND: 'VERSION' }).stdout).cniVersion).toBe('1.1.0');
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

/**
 * Test hooks (lib/cni/hooks.ts) are compiled out of the shipped binary: each
 * is set to a value that would change what the plugin does, and the shipped
 * binary must do its normal work; the test build (the same source with the
 * hooks armed) shows that each value does change it.
 */
describe('test hooks', () => {
  const sb = new Sandbox('hooks');
  afterAll(() => sb.cleanup());
  /** Runs a plugin of `dir` in the sandbox's host namespace; `signal` is set when it was killed. */
  const plugin = (dir: string, type: string, env: Record<string, string>, conf: unknown) => {
    const argv = sb.pluginArgv(join(dir, type));
    const r = spawnSync(argv[0], argv.slice(1), {
      input: JSON.stringify(conf), encoding: 'utf8', env: { PATH: process.env.PATH, ...modeEnv(), CNI_PATH: dir, CNI_IFNAME: 'eth0', ...env },
    });
    return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
  };
  const loopback = { cniVersion: '1.0.0', name: 'hooks', type: 'loopback' };

  it('CNI_TS_KILL_AT: the shipped binary completes an ADD that reaches the label; the test build dies there', () => {
    for (const [dir, dies] of [[BIN, false], [TEST_BIN, true]] as const) {
      const c = sb.container();
      const env = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'k', CNI_NETNS: c.path, CNI_IFNAME: 'lo', CNI_TS_KILL_AT: FP.entry.done };
      const r = plugin(dir, 'loopback', env, loopback);
      if (dies && MODE === 'engine' && r.signal === null) {
        // The engine ran it and died at the failpoint (the whole engine, as the plugin's process would):
        // the client answers an ADD it cannot know the outcome of with code 11.
        expect(r.status, `${dir}: ${r.stdout}${r.stderr}`).toBe(1);
        expect(JSON.parse(r.stdout), dir).toMatchObject({ code: 11, msg: 'try again later' });
      } else if (dies) {
        expect(r.signal, `${dir}: ${r.stdout}${r.stderr}`).toBe('SIGKILL');
      } else {
        expect(r.status, `${dir}: ${r.stdout}${r.stderr}`).toBe(0);
        expect(JSON.parse(r.stdout).interfaces).toMatchObject([{ name: 'lo', sandbox: c.path }]);
      }
      sb.removeContainer(c.name);
    }
  });

  it('CNI_TS_IPTABLES: the shipped binary uses the system\'s iptables, the test build the named backend', () => {
    const system = sb.inHost(['iptables', '-V']).stdout.includes('nf_tables') ? 'nft' : 'legacy';
    const other = system === 'nft' ? 'legacy' : 'nft';
    const conf = { cniVersion: '1.0.0', name: 'hooks', type: 'firewall', prevResult: { cniVersion: '1.0.0', ips: [{ address: '10.61.9.2/24' }] } };
    for (const [dir, backend] of [[BIN, system], [TEST_BIN, other]] as const) {
      const c = sb.container();
      const env = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'i', CNI_NETNS: c.path, CNI_TS_IPTABLES: other };
      const r = plugin(dir, 'firewall', env, conf);
      expect(r.status, `${dir}: ${r.stdout}${r.stderr}`).toBe(0);
      expect(sb.inHost([`iptables-${backend}-save`, '-t', 'filter']).stdout, `${dir} wrote to iptables-${backend}`).toContain('-A CNI-FORWARD -s 10.61.9.2/32 -j ACCEPT');
      expect(plugin(dir, 'firewall', { ...env, CNI_COMMAND: 'DEL' }, conf).status).toBe(0);
      for (const b of ['nft', 'legacy']) expect(sb.inHost([`iptables-${b}-save`, '-t', 'filter']).stdout).not.toContain('10.61.9.2');
      sb.removeContainer(c.name);
    }
  });

  it('CNI_TS_TUNING_ALLOWLIST: the shipped binary reads only /etc/cni/tuning/allowlist.conf, the test build the named file', () => {
    const list = join(sb.dir, 'allowlist.conf');
    writeFileSync(list, '^net\\.ipv4\\.conf\\.lo\\.arp_notify$\n');
    for (const [dir, refused] of [[BIN, existsSync('/etc/cni/tuning/allowlist.conf')], [TEST_BIN, true]] as const) {
      const c = sb.container();
      const conf = {
        cniVersion: '1.0.0', name: 'hooks', type: 'tuning', dataDir: join(sb.dir, 'tuning'), sysctl: { 'net.core.somaxconn': '700' },
        prevResult: { cniVersion: '1.0.0', interfaces: [{ name: 'lo', sandbox: c.path }], ips: [] },
      };
      const env = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 't', CNI_NETNS: c.path, CNI_IFNAME: 'lo', CNI_TS_TUNING_ALLOWLIST: list };
      const r = plugin(dir, 'tuning', env, conf);
      if (refused) {
        expect(JSON.parse(r.stdout), dir).toMatchObject({ code: 7, msg: expect.stringMatching(/net.core.somaxconn is not allowed/) });
      } else {
        expect(r.status, `${dir}: ${r.stdout}${r.stderr}`).toBe(0);
        expect(sb.inNs(c.name, ['cat', '/proc/sys/net/core/somaxconn']).stdout.trim()).toBe('700');
        expect(plugin(dir, 'tuning', { ...env, CNI_COMMAND: 'DEL' }, conf).status).toBe(0);
      }
      sb.removeContainer(c.name);
    }
  });

  it('CNI_TS_NATIVE_DIR: the shipped binary never puts its native addons there, the test build does', () => {
    for (const [dir, used] of [[BIN, false], [TEST_BIN, true]] as const) {
      const native = mkdtempSync(join(sb.dir, 'native-'));
      const c = sb.container();
      // The process's own install (CNI_TS_ENGINE=off in both passes): an engine installs its addons
      // once, in its main thread, for all its workers (lib/netlink/native.ts), whoever calls.
      const env = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'n', CNI_NETNS: c.path, CNI_IFNAME: 'lo', CNI_TS_NATIVE_DIR: native, CNI_TS_ENGINE: 'off' };
      const r = plugin(dir, 'loopback', env, loopback);
      expect(r.status, `${dir}: ${r.stdout}${r.stderr}`).toBe(0);
      expect(readdirSync(native).some((f) => f.endsWith('.node')), `${dir}: ${readdirSync(native).join(', ')}`).toBe(used);
      sb.removeContainer(c.name);
    }
  });

  it('CNI_TS_WARMUP (the build\'s warm-up, asked for by a global now) does nothing in either build', () => {
    for (const dir of [BIN, TEST_BIN]) {
      const c = sb.container();
      const r = plugin(dir, 'loopback', { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'w', CNI_NETNS: c.path, CNI_IFNAME: 'lo', CNI_TS_WARMUP: 'build' }, loopback);
      expect(r.status, `${dir}: ${r.stdout}${r.stderr}`).toBe(0);
      expect(JSON.parse(r.stdout).interfaces).toMatchObject([{ name: 'lo', sandbox: c.path }]);
      sb.removeContainer(c.name);
    }
  });
});

/**
 * Variables that Node, OpenSSL and libuv read by themselves must not change
 * what the binary does (src/loader.ts re-executes it without NODE_* and UV_*
 * ones; the SEA's --openssl-config wins over OPENSSL_CONF). Each run with them
 * must print and exit exactly as the run without them, and create nothing
 * where they point. Two things happen during Node's bootstrap, before any
 * code of ours runs, and stay: NODE_COMPILE_CACHE's directory is created
 * (empty), and NODE_DEBUG_NATIVE prints the bootstrap's debug lines on
 * stderr (nothing after them: the re-executed binary runs without it).
 */
describe('NODE_* and other runtime variables', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cnits-nodevars-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const files = (root: string): string[] => readdirSync(root, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? [`${relative(dir, join(root, e.name))}/`, ...files(join(root, e.name))] : [relative(dir, join(root, e.name))]));
  const vars = () => ({
    NODE_V8_COVERAGE: join(dir, 'coverage'),
    NODE_DEBUG: 'module,fs,net,child_process,timer,esm,http',
    NODE_REDIRECT_WARNINGS: join(dir, 'warnings'),
    NODE_PENDING_DEPRECATION: '1',
    NODE_COMPILE_CACHE: join(dir, 'compile-cache'),
    NODE_EXTRA_CA_CERTS: join(dir, 'no-such-ca.pem'),
    NODE_ICU_DATA: join(dir, 'icu'),
    NODE_PRESERVE_SYMLINKS: '1',
    NODE_TLS_REJECT_UNAUTHORIZED: '0',
    UV_THREADPOOL_SIZE: '1',
    UV_USE_IO_URING: '0',
    OPENSSL_CONF: join(dir, 'openssl.cnf'),
  });
  writeFileSync(join(dir, 'openssl.cnf'), '[[[ a broken file: plain node exits 100 on it\n');
  const cases: [string, string, Record<string, string>, string][] = [
    ['VERSION (the loader)', 'bridge', { CNI_COMMAND: 'VERSION' }, '{"cniVersion":"0.4.0"}'],
    ['VERSION, a large stdin (the loader)', 'bridge', { CNI_COMMAND: 'VERSION' }, `{"cniVersion":"0.3.1","pad":"${'x'.repeat(300_000)}"}`],
    ['ADD, an error (the bundle)', 'loopback', { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c', CNI_IFNAME: 'lo', CNI_PATH: BIN }, '{"cniVersion":"0.4.0","name":"n","type":"loopback"}'],
    ['a wrong name (the bundle)', 'nosuchplugin', {}, ''],
    ['CNI_COMMAND unset (the bundle)', 'tuning', {}, ''],
  ];
  for (const [what, argv0, env, input] of cases) {
    it(`leave ${what} as it is: same output and exit, nothing created`, () => {
      const plain = run(argv0, [], input, env);
      const withVars = run(argv0, [], input, { ...env, ...vars() });
      expect(withVars).toEqual(plain);
      expect(files(dir).filter((f) => f !== 'openssl.cnf' && !f.startsWith('compile-cache/'))).toEqual([]);
      // Node's bootstrap makes the compile cache's directory; nothing goes into it.
      expect(files(dir).filter((f) => f.startsWith('compile-cache/') && !f.endsWith('/'))).toEqual([]);
    });
  }

  it('NODE_DEBUG_NATIVE: only the bootstrap\'s debug lines before the same stderr; same stdout and exit', () => {
    const env = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c', CNI_IFNAME: 'lo', CNI_PATH: BIN };
    const input = '{"cniVersion":"0.4.0","name":"n","type":"loopback"}';
    const plain = run('loopback', [], input, env);
    const withVar = run('loopback', [], input, { ...env, NODE_V8_COVERAGE: join(dir, 'coverage2'), NODE_DEBUG_NATIVE: 'SEA,fs,ksr,mksnapshot,inspector_profiler,compile_cache,diagnostics,module' });
    expect({ status: withVar.status, stdout: withVar.stdout }).toEqual({ status: plain.status, stdout: plain.stdout });
    expect(withVar.stderr.endsWith(plain.stderr), withVar.stderr.slice(-2000)).toBe(true);
    expect(withVar.stderr.slice(0, withVar.stderr.length - plain.stderr.length)).not.toMatch(/Received coverage profile message[\s\S]*Writing coverage|coverage-\d+/);
    expect(files(dir).filter((f) => f !== 'openssl.cnf' && !f.startsWith('compile-cache/'))).toEqual([]);
  });

  it('keep argv (argv0 names the plugin) and stdin through the re-execution', () => {
    const r = run('cni-ts', ['bridge'], '{"cniVersion":"0.4.0"}', { CNI_COMMAND: 'VERSION', NODE_DEBUG: 'fs' });
    expect(r).toEqual(run('cni-ts', ['bridge'], '{"cniVersion":"0.4.0"}', { CNI_COMMAND: 'VERSION' }));
    expect(JSON.parse(r.stdout).cniVersion).toBe('0.4.0');
  });
});
