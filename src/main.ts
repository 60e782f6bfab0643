import { writeSync } from 'node:fs';
import { basename } from 'node:path';
import { PLUGINS } from './plugins.js';
import { readStdin } from '../lib/cni/stdin.js';
import { sniffVersion, versionInfo } from '../lib/cni/version.js';
import { trace } from '../lib/cni/trace.js';

/**
 * The multicall entry: the name this executable was invoked by picks the
 * plugin (`/opt/cni/bin/bridge` → bridge). VERSION is answered before any
 * plugin code or zod is loaded.
 */
const SUITE = 'cni-ts';

function print(obj: unknown): void {
  const text = `${JSON.stringify(obj)}\n`;
  writeSync(1, text);
}

function pluginName(): string {
  const fromArgv = basename(process.argv0 || process.argv[1] || '');
  if (PLUGINS[fromArgv]) return fromArgv;
  // `cni-ts <plugin>` also works, for people poking at the binary by hand.
  const sub = process.argv[process.argv[1] && !PLUGINS[basename(process.argv[1])] && process.argv[1].endsWith('.cjs') ? 2 : 1];
  if (sub && PLUGINS[sub]) return sub;
  return fromArgv;
}

async function main(): Promise<number> {
  trace('main');
  // In the binary argv is [exec, exec, ...args].
  const userArgs = process.argv.slice(2);
  if (basename(process.argv0 || '') === 'cni-manager' || userArgs[0] === 'cni-manager') {
    const { managerMain } = await import('../lib/manager/cli.js');
    return managerMain(userArgs[0] === 'cni-manager' ? userArgs.slice(1) : userArgs);
  }
  const name = pluginName();
  const load = PLUGINS[name];
  const command = process.env.CNI_COMMAND ?? '';
  if (!load) {
    process.stderr.write(`${SUITE}: invoked as "${name}"; link this binary as one of: ${Object.keys(PLUGINS).join(', ')}\n`);
    return 1;
  }
  if (command === '') {
    process.stderr.write(`CNI ${name} plugin (${SUITE})\nCNI protocol versions supported: ${versionInfo(undefined).supportedVersions.join(', ')}\n`);
    return 0;
  }
  let stdin: Buffer = Buffer.alloc(0);
  try {
    stdin = readStdin();
    if (command === 'VERSION') {
      print(versionInfo(sniffVersion(stdin)));
      return 0;
    }
    const [{ invoke }, { registerInProcessPlugins }] = await Promise.all([import('../lib/cni/skel.js'), import('../lib/cni/delegate.js')]);
    registerInProcessPlugins((type) => PLUGINS[type]?.(), process.execPath);
    trace('contract loaded');
    const plugin = await load();
    trace('plugin loaded');
    const outcome = await invoke(plugin, process.env, stdin);
    trace('done');
    if (outcome.output) print(outcome.output);
    return 0;
  } catch (err) {
    const { errorOutput } = await import('../lib/cni/skel.js');
    const { CniError } = await import('../lib/cni/errors.js');
    if (!(err instanceof CniError)) process.stderr.write(`${name}: ${(err as Error)?.stack ?? err}\n`);
    print(errorOutput(err, stdin));
    return 1;
  }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`${SUITE}: ${(err as Error)?.stack ?? err}\n`);
    process.exit(1);
  },
);
