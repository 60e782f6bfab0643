import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, Sandbox, must } from '../helpers/sandbox.js';
import { modeEnv } from '../helpers/mode.js';

/**
 * §2 of issue 13: the native addons are code that runs inside the plugin, as
 * root. These tests plant a real `.node` (compiled here with gcc; its
 * constructor writes a marker file the moment it is dlopen()ed) where the
 * shipped binary looks for its addons, and check it is never loaded:
 *  - another user (uid 65534) plants it in `$TMPDIR/cni-ts-native-0/` while
 *    /run/cni-ts is unusable (read-only): root must fail with a clear error,
 *    not fall back to the shared temp dir;
 *  - a mismatching file in root's own /run/cni-ts/native (planted, or left
 *    damaged) is replaced by the embedded addon, not loaded;
 *  - a native directory owned by another user is refused.
 * /run/cni-ts is swapped only inside a private mount namespace (`unshare
 * --mount --propagation private`), so the machine's own stays untouched.
 */
const NOBODY = 65534;
const LOOPBACK = join(BIN, 'loopback');
let sb: Sandbox;
beforeEach(() => {
  sb = new Sandbox('nat');
});
afterEach(() => sb.cleanup());

/** The content-addressed names the binary gives its addons (scripts/build.mjs, __NATIVE_HASHES__). */
function addonNames(): { sys: string; netlink: string } {
  const m = /\bsys:\s*"([0-9a-f]{16})",\s*netlink:\s*"([0-9a-f]{16})"/.exec(readFileSync(join(BIN, 'cni-ts')).toString('latin1'));
  if (!m) throw new Error('addon hashes not found in bin/cni-ts');
  return { sys: `sys-${m[1]}.node`, netlink: `netlink-${m[2]}.node` };
}

/** A real N-API-less shared object: loading it runs its constructor, which creates `marker`. */
function evilAddon(dir: string, marker: string): string {
  const src = join(dir, 'evil.c');
  const out = join(dir, 'evil.node');
  writeFileSync(src, `#include <fcntl.h>\n#include <unistd.h>\n__attribute__((constructor)) static void planted(void) {\n  int fd = open(${JSON.stringify(marker)}, O_WRONLY | O_CREAT, 0644);\n  if (fd >= 0) close(fd);\n}\n`);
  must(['gcc', '-shared', '-fPIC', '-o', out, src]);
  chmodSync(out, 0o755);
  return out;
}

/** Runs argv as uid/gid 65534 (another user of the machine). */
const asNobody = (argv: string[]) => must(['setpriv', `--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', '--', ...argv]);

/**
 * Runs loopback ADD (which loads both addons) in the sandbox as root, in a
 * private mount namespace where `mounts` (argv lists for mount(8)) have been
 * applied first; returns the plugin's exit code and output.
 */
function runWithMounts(mounts: string[][], env: Record<string, string>): { code: number; stdout: string; stderr: string } {
  const c = sb.container();
  // The mount point: what every root run of a plugin creates anyway.
  mkdirSync('/run/cni-ts', { recursive: true, mode: 0o700 });
  const script = `
    const { spawnSync } = require('node:child_process');
    const [mounts, argv, env, input] = JSON.parse(process.argv[1]);
    for (const m of mounts) {
      const r = spawnSync('mount', m, { stdio: 'inherit' });
      if (r.status !== 0) { console.error('mount failed: ' + m.join(' ')); process.exit(99); }
    }
    const r = spawnSync(argv[0], argv.slice(1), { env, input, encoding: 'utf8' });
    process.stdout.write(JSON.stringify({ code: r.status, stdout: r.stdout, stderr: r.stderr }));
  `;
  const input = JSON.stringify({ cniVersion: '1.0.0', name: 'nat', type: 'loopback' });
  const cniEnv = { PATH: process.env.PATH ?? '', ...modeEnv(), CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'nat1', CNI_NETNS: c.path, CNI_IFNAME: 'eth0', CNI_PATH: BIN, ...env };
  // In engine mode through nsenter: the private mount namespace (with its /run/cni-ts) stays the plugin's.
  const arg = JSON.stringify([mounts, sb.pluginArgv(LOOPBACK), cniEnv, input]);
  const r = spawnSync('unshare', ['--mount', '--propagation', 'private', '--', process.execPath, '-e', script, arg], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`unshare failed (${r.status}): ${r.stderr}`);
  return JSON.parse(r.stdout);
}

describe('native addons are loaded only when they are the embedded ones', () => {
  it('root never loads an addon another user planted in $TMPDIR/cni-ts-native-0 while /run/cni-ts is unusable', () => {
    const names = addonNames();
    const marker = join(sb.dir, 'planted-addon-ran');
    const evil = evilAddon(sb.dir, marker);
    // A shared temp dir, as /tmp: everyone may create entries.
    const shared = join(sb.dir, 'tmp');
    mkdirSync(shared);
    chmodSync(sb.dir, 0o755);
    chmodSync(shared, 0o1777);
    asNobody(['mkdir', '-m', '0755', join(shared, 'cni-ts-native-0')]);
    for (const name of [names.sys, names.netlink]) asNobody(['cp', evil, join(shared, 'cni-ts-native-0', name)]);
    // /run/cni-ts unusable: an empty read-only file system over it (inside the private mount namespace only).
    const r = runWithMounts([['-t', 'tmpfs', '-o', 'ro,mode=0755', 'tmpfs', '/run/cni-ts']], { TMPDIR: shared });
    expect(existsSync(marker), 'the planted addon ran inside the plugin').toBe(false);
    expect(r.code, r.stdout + r.stderr).toBe(1);
    expect(JSON.parse(r.stdout)).toMatchObject({
      code: 5,
      msg: 'cannot install the native addon sys',
      details: expect.stringMatching(/\/run\/cni-ts\/native: .*never put in a shared temp directory/),
    });
  });

  it('a mismatching file in root\'s own directory is replaced by the embedded addon, not loaded', () => {
    const names = addonNames();
    const marker = join(sb.dir, 'planted-addon-ran');
    const evil = evilAddon(sb.dir, marker);
    const run = join(sb.dir, 'run-cni-ts');
    mkdirSync(join(run, 'native'), { recursive: true, mode: 0o700 });
    chmodSync(join(run, 'native'), 0o700);
    // One damaged/planted file of root's, one of another user's, both with the addons' names.
    copyFileSync(evil, join(run, 'native', names.sys));
    chmodSync(join(run, 'native', names.sys), 0o700);
    copyFileSync(evil, join(run, 'native', names.netlink));
    chownSync(join(run, 'native', names.netlink), NOBODY, NOBODY);
    const r = runWithMounts([['--bind', run, '/run/cni-ts']], {});
    expect(existsSync(marker), 'the planted addon ran inside the plugin').toBe(false);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toContain('127.0.0.1/8');
    for (const name of [names.sys, names.netlink]) {
      const file = join(run, 'native', name);
      expect(readFileSync(file).equals(readFileSync(evil)), name).toBe(false);
      expect(readFileSync(file).length).toBeGreaterThan(1000);
    }
  });

  it('a native directory that is not root\'s is refused, whatever it holds', () => {
    const names = addonNames();
    const marker = join(sb.dir, 'planted-addon-ran');
    const evil = evilAddon(sb.dir, marker);
    const run = join(sb.dir, 'run-cni-ts');
    mkdirSync(join(run, 'native'), { recursive: true });
    copyFileSync(evil, join(run, 'native', names.sys));
    chownSync(join(run, 'native'), NOBODY, NOBODY);
    chownSync(join(run, 'native', names.sys), NOBODY, NOBODY);
    const r = runWithMounts([['--bind', run, '/run/cni-ts']], {});
    expect(existsSync(marker), 'the planted addon ran inside the plugin').toBe(false);
    expect(r.code, r.stdout + r.stderr).toBe(1);
    expect(JSON.parse(r.stdout)).toMatchObject({ code: 5, details: expect.stringMatching(/owned by uid 65534, not 0/) });
  });
});
