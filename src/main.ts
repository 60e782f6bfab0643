import { writeSync } from 'node:fs';
import { basename } from 'node:path';
import { isMainThread, workerData } from 'node:worker_threads';
import { PLUGINS } from './plugins.js';
import { readStdin } from '../lib/cni/stdin.js';
import { sniffVersion, versionInfo } from '../lib/cni/version.js';
import { FP, trace } from '../lib/cni/trace.js';

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
  // argv is [node, script, ...args] from source and [exec, exec, ...args] in the binary.
  const sub = process.argv[2];
  if (sub && PLUGINS[sub]) return sub;
  return fromArgv;
}

/**
 * Build-time only: scripts/build.mjs runs the bundle with plain node and
 * sets this global before it does; nothing outside the process can set a
 * global in the shipped binary (its NODE_OPTIONS are ignored), so unlike an
 * environment variable it cannot be used to make a plugin skip its work.
 */
const warmUpAsked = () => (globalThis as Record<symbol, unknown>)[Symbol.for('cni-ts.build-warm-up')] === true;

/**
 * Build-time only (scripts/build.mjs): evaluate every module and the common
 * paths so the V8 code cache shipped in the binary holds compiled code for
 * them, not just for the top level.
 */
async function warmUp(): Promise<number> {
  // Pure functions only: nothing here may touch the build machine.
  const [skel, { readEnv }, { parseCniArgs }, { parseResult }] = await Promise.all([
    import('../lib/cni/skel.js'), import('../lib/cni/env.js'), import('../lib/cni/args.js'), import('../lib/cni/result.js'),
  ]);
  await Promise.all([import('../lib/cni/delegate.js'), import('../manager/cli.js')]);
  const prevResult = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', sandbox: '/run/netns/warm' }], ips: [{ address: '10.0.0.2/24', gateway: '10.0.0.1', interface: 0 }], routes: [{ dst: '0.0.0.0/0' }] };
  readEnv({ CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'warm', CNI_NETNS: '/run/netns/warm', CNI_IFNAME: 'eth0', CNI_PATH: '/nonexistent', CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAME=warm' });
  parseResult(prevResult);
  for (const [name, load] of Object.entries(PLUGINS)) {
    const plugin = await load();
    const stdin = Buffer.from(JSON.stringify({ cniVersion: '1.0.0', name: 'warm', type: name, prevResult }));
    try {
      parseCniArgs('IgnoreUnknown=1;K8S_POD_NAME=warm', plugin.knownArgs ?? []);
      skel.validateConfig(plugin.schema, skel.decodeConfig(stdin));
    } catch (err) {
      skel.errorOutput(err, stdin);
    }
  }
  return 0;
}

/** Where a plugin call's output goes: the process's own stdout and stderr, or (engine) buffers. */
export interface CallOutput {
  stdout(text: string): void;
  stderr(text: string): void;
}

const processOutput: CallOutput = {
  stdout: (text) => writeSync(1, text),
  stderr: (text) => process.stderr.write(text),
};

/**
 * One plugin call as the standalone binary makes it: the invoked name, the
 * caller's environment and stdin in; stdout, stderr and the exit status
 * out. The engine's workers (lib/engine/worker.ts) run exactly this.
 */
export async function runPlugin(name: string, vars: NodeJS.ProcessEnv, stdin: Buffer, out: CallOutput = processOutput): Promise<number> {
  const print = (obj: unknown) => out.stdout(`${JSON.stringify(obj)}\n`);
  const load = PLUGINS[name];
  const command = vars.CNI_COMMAND ?? '';
  if (!load) {
    out.stderr(`${SUITE}: invoked as "${name}"; link this binary as one of: ${Object.keys(PLUGINS).join(', ')}\n`);
    return 1;
  }
  if (command === '') {
    out.stderr(`CNI ${name} plugin (${SUITE})\nCNI protocol versions supported: ${versionInfo(undefined, name).supportedVersions.join(', ')}\n`);
    return 0;
  }
  try {
    if (command === 'VERSION') {
      print(versionInfo(sniffVersion(stdin), name));
      return 0;
    }
    const [{ invoke }, { registerInProcessPlugins }] = await Promise.all([import('../lib/cni/skel.js'), import('../lib/cni/delegate.js')]);
    registerInProcessPlugins((type) => PLUGINS[type]?.(), process.execPath);
    trace(FP.entry.contractLoaded);
    const plugin = await load();
    trace(FP.entry.pluginLoaded);
    const outcome = await invoke(plugin, vars, stdin);
    trace(FP.entry.done);
    if (outcome.output) print(outcome.output);
    return 0;
  } catch (err) {
    const { errorOutput } = await import('../lib/cni/version.js');
    const { CniError } = await import('../lib/cni/errors.js');
    if (!(err instanceof CniError)) out.stderr(`${name}: ${(err as Error)?.stack ?? err}\n`);
    print(errorOutput(err, stdin));
    return 1;
  }
}

async function main(): Promise<number> {
  trace(FP.entry.main);
  if (warmUpAsked()) return warmUp();
  // In the binary argv is [exec, exec, ...args].
  const userArgs = process.argv.slice(2);
  if (basename(process.argv0 || '') === 'cni-manager' || userArgs[0] === 'cni-manager') {
    const { managerMain } = await import('../manager/cli.js');
    return managerMain(userArgs[0] === 'cni-manager' ? userArgs.slice(1) : userArgs);
  }
  const name = pluginName();
  if (name === SUITE && userArgs[0] === 'engine') {
    const { engineMain } = await import('../lib/engine/server.js');
    return engineMain(userArgs.slice(1));
  }
  let stdin: Buffer = Buffer.alloc(0);
  if (PLUGINS[name] && (process.env.CNI_COMMAND ?? '') !== '') {
    try {
      stdin = readStdin();
    } catch (err) {
      const { errorOutput } = await import('../lib/cni/version.js');
      print(errorOutput(err, stdin));
      return 1;
    }
  }
  return runPlugin(name, process.env, stdin);
}

const engineWorker = (): boolean => !isMainThread && (workerData as { cniTsEngineWorker?: boolean } | undefined)?.cniTsEngineWorker === true;

if (engineWorker()) {
  // A worker of the engine (lib/engine/server.ts): it serves requests until told to stop.
  void import('../lib/engine/worker.js').then(({ workerMain }) => workerMain(runPlugin));
} else main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`${SUITE}: ${(err as Error)?.stack ?? err}\n`);
    process.exit(1);
  },
);
