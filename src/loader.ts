import { readFileSync, writeSync } from 'node:fs';
import { basename } from 'node:path';
import { getAsset } from 'node:sea';
import { Script } from 'node:vm';
import { readStdin } from '../lib/cni/stdin.js';
import { errorOutput, sniffVersion, versionInfo } from '../lib/cni/version.js';
import { loadAddon } from '../lib/netlink/native.js';

/**
 * The standalone binary's main script (scripts/build.mjs). VERSION — which
 * runtimes ask of every plugin before ADD and DEL, podman ten times per
 * container — is answered here, from a few small modules; everything else
 * loads the suite's bundle (src/main.ts) from an SEA asset together with the
 * warm V8 code cache made for it at build time.
 */
declare const __PLUGIN_NAMES__: string[];

/**
 * Variables the runtime under the suite reads on its own: Node's (NODE_V8_COVERAGE
 * makes every exit write a coverage file where the caller says, NODE_DEBUG
 * prints internals, NODE_REDIRECT_WARNINGS writes warnings to a file, …) and
 * libuv's (UV_THREADPOOL_SIZE, UV_USE_IO_URING). They must not change what a
 * plugin does, and Node offers no way to ignore them; so, first thing, when
 * any is set the binary executes itself again without them (same argv, argv0
 * included: it names the plugin; same stdin, not read yet) through a raw
 * execve(2) (native/sys.c): Node's own process.execve would run the exit
 * hooks first — the coverage file would still be written. What Node does
 * with them during its bootstrap, before this runs, stays: NODE_COMPILE_CACHE
 * creates its (empty) directory, NODE_DEBUG_NATIVE prints the bootstrap's
 * debug lines (OPENSSL_CONF, read even earlier, is overridden by the SEA's
 * --openssl-config, scripts/build.mjs). The child processes plugins start
 * (iptables, dnsmasq, IPAM plugins) get the environment without them.
 * Tested in test/integration/binary.test.ts.
 */
const RUNTIME_VARIABLE = /^(NODE_|UV_)/;

function reexecWithoutRuntimeVariables(): void {
  if (!Object.keys(process.env).some((k) => RUNTIME_VARIABLE.test(k))) return; // the common case: two reads of /proc spared
  let environ: Buffer[];
  let argv: Buffer[];
  try {
    // Raw bytes, as the kernel handed them over: process.env and process.argv are decoded (lossy for non-UTF-8 values).
    const split = (b: Buffer) => {
      const out: Buffer[] = [];
      let start = 0;
      for (let i = b.indexOf(0); i !== -1; start = i + 1, i = b.indexOf(0, start)) out.push(b.subarray(start, i));
      if (start < b.length) out.push(b.subarray(start));
      return out;
    };
    environ = split(readFileSync('/proc/self/environ'));
    argv = split(readFileSync('/proc/self/cmdline'));
  } catch {
    // No /proc (a plugin could not do its work without it anyway): the decoded copies. In the binary argv is [exec, exec, ...args].
    environ = Object.entries(process.env).map(([k, v]) => Buffer.from(`${k}=${v}`));
    argv = [process.argv0, ...process.argv.slice(2)].map((a) => Buffer.from(a));
  }
  const keep = environ.filter((e) => !RUNTIME_VARIABLE.test(e.toString('latin1')));
  if (keep.length === environ.length) return;
  try {
    const { execve } = loadAddon<{ execve(path: string, argv: Buffer[], envp: Buffer[]): never }>('sys');
    execve('/proc/self/exe', argv.length ? argv : [Buffer.from(process.argv0 ?? '')], keep);
  } catch (err) {
    // Fail closed: running on would let the variables act. The error goes out as a CNI error (stdin
    // unread: the latest version), and the process ends without Node's exit hooks, which would do
    // what the variables ask (write the coverage file): a runtime reads the error from stdout.
    writeSync(1, `${JSON.stringify(errorOutput(new Error(`cannot re-execute without the NODE_*/UV_* variables: ${(err as Error)?.message ?? err}`), Buffer.alloc(0)))}\n`);
    process.kill(process.pid, 'SIGKILL');
  }
}

reexecWithoutRuntimeVariables();

function answerVersion(): void {
  let stdin: Buffer = Buffer.alloc(0);
  let output: unknown;
  try {
    stdin = readStdin();
    // The versions are the invoked plugin's (some declare fewer, as their reference binaries do).
    output = versionInfo(sniffVersion(stdin), basename(process.argv0 || ''));
  } catch (err) {
    output = errorOutput(err, stdin);
    process.exitCode = 1;
  }
  writeSync(1, `${JSON.stringify(output)}\n`);
}

if (process.env.CNI_COMMAND === 'VERSION' && __PLUGIN_NAMES__.includes(basename(process.argv0 || ''))) {
  answerVersion();
} else {
  const script = new Script(getAsset('bundle.js', 'utf8'), { filename: 'cni-ts.js', cachedData: new Uint8Array(getAsset('bundle.cache')) });
  if (script.cachedDataRejected && process.env.CNI_TS_TRACE) process.stderr.write('[trace] code cache rejected\n');
  const mod = { exports: {} };
  // The bundle is CommonJS wrapped as a function; SEA's require gives it the built-in modules it needs.
  script.runInThisContext()(mod.exports, require, mod, process.execPath, '/');
}
