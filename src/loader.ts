import { writeSync } from 'node:fs';
import { basename } from 'node:path';
import { getAsset } from 'node:sea';
import { Script } from 'node:vm';
import { readStdin } from '../lib/cni/stdin.js';
import { errorOutput, sniffVersion, versionInfo } from '../lib/cni/version.js';

/**
 * The standalone binary's main script (scripts/build.mjs). VERSION — which
 * runtimes ask of every plugin before ADD and DEL, podman ten times per
 * container — is answered here, from a few small modules; everything else
 * loads the suite's bundle (src/main.ts) from an SEA asset together with the
 * warm V8 code cache made for it at build time.
 */
declare const __PLUGIN_NAMES__: string[];

function answerVersion(): void {
  let stdin: Buffer = Buffer.alloc(0);
  let output: unknown;
  try {
    stdin = readStdin();
    output = versionInfo(sniffVersion(stdin));
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
