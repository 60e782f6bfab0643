import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { inNetns, MODE, modeEnv, startEngine, stopEngines } from './mode.js';

/**
 * A throwaway "host" network namespace with container namespaces beside it,
 * and a temp dir for the plugins' state. Plugins run inside the host
 * namespace (`inNetns`: `ip netns exec`, or nsenter in engine mode), so the
 * machine's own links and iptables are never touched. `cleanup` removes
 * everything, also after a failure: first the namespace's engines
 * (test/helpers/mode.ts).
 */
export const ROOT = resolve(__dirname, '../..');
/** The shipped binary and its plugin links (scripts/build.mjs). */
export const BIN = join(ROOT, 'bin');
/**
 * The test build of the same source (`node scripts/build.mjs --test`): the
 * only one that honours test hooks (lib/cni/hooks.ts: CNI_TS_KILL_AT,
 * CNI_TS_IPTABLES, CNI_TS_TUNING_ALLOWLIST, CNI_TS_NATIVE_DIR). Tests that
 * set a hook run it; everything else runs the shipped binary.
 */
export const TEST_BIN = join(ROOT, '.build/test-bin');

let counter = 0;
const unique = (tag: string) => `cnits-${tag}-${process.pid}-${++counter}`;

/**
 * A test process killed from outside (a timeout, ^C) never reaches its
 * cleanup: the first sandbox of each process removes the namespaces such a
 * process left, recognised by the test pid in their name (`unique`) when
 * that pid is no longer alive.
 */
let swept = false;
function sweepOrphans(): void {
  if (swept) return;
  swept = true;
  for (const line of sh(['ip', 'netns', 'list']).stdout.split('\n')) {
    const m = /^(cnits-[a-z0-9]+-(\d+)-\d+)\b/.exec(line);
    if (!m) continue;
    try {
      process.kill(Number(m[2]), 0);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') continue;
      // Its engines too (engine mode), also ones running a copy in its temp dir.
      stopEngines(m[1], { anyMount: true, dirs: [tmpdir()] });
      sh(['ip', 'netns', 'del', m[1]]);
    }
  }
}

export function sh(argv: string[], input?: string): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(argv[0], argv.slice(1), { input, encoding: 'utf8' });
  return { code: r.status ?? 1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

export function must(argv: string[], input?: string): string {
  const r = sh(argv, input);
  if (r.code !== 0) throw new Error(`${argv.join(' ')} failed (${r.code}): ${r.stderr}`);
  return r.stdout;
}

export interface PluginRun {
  code: number;
  stdout: string;
  stderr: string;
  json: any;
}

export interface CniCall {
  command: string;
  containerId?: string;
  netns?: string;
  ifname?: string;
  args?: string;
  path?: string;
  /** Extra variables; one set to undefined is left out. */
  env?: Record<string, string | undefined>;
}

export class Sandbox {
  readonly host: string;
  readonly dir: string;
  private containers: string[] = [];

  /**
   * `opts.engine` (engine mode): the plugin directory whose engine is started
   * for the host namespace right away (default bin/; false: none, the first
   * call starts one).
   */
  constructor(tag: string, opts: { engine?: string | false } = {}) {
    sweepOrphans();
    this.host = unique(tag);
    this.dir = mkdtempSync(join(tmpdir(), `${this.host}-`));
    must(['ip', 'netns', 'add', this.host]);
    must(['ip', 'netns', 'exec', this.host, 'ip', 'link', 'set', 'lo', 'up']);
    // Engine mode: the shipped build's engine is up before the test's first call, so that every call
    // reaches it (the client would take the exec path for the first one while starting it).
    const engine = opts.engine ?? BIN;
    if (MODE === 'engine' && engine && !startEngine(this.host, engine)) process.stderr.write(`sandbox ${this.host}: the engine did not start; calls take the exec path until it does\n`);
  }

  /** A new container namespace; returns its path for CNI_NETNS. */
  container(): { name: string; path: string } {
    const name = unique('c');
    must(['ip', 'netns', 'add', name]);
    this.containers.push(name);
    return { name, path: `/var/run/netns/${name}` };
  }

  /**
   * A peer "outside" the local ranges: a namespace with 203.0.113.9 behind
   * the host's out0 (203.0.113.1), its default route through the host.
   */
  outsidePeer(): { name: string; path: string } {
    const peer = this.container();
    must(['ip', 'netns', 'exec', this.host, 'ip', 'link', 'add', 'out0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', peer.name]);
    must(['ip', 'netns', 'exec', this.host, 'ip', 'addr', 'add', '203.0.113.1/24', 'dev', 'out0']);
    must(['ip', 'netns', 'exec', this.host, 'ip', 'link', 'set', 'out0', 'up']);
    must(['ip', 'netns', 'exec', peer.name, 'ip', 'addr', 'add', '203.0.113.9/24', 'dev', 'eth0']);
    must(['ip', 'netns', 'exec', peer.name, 'ip', 'link', 'set', 'eth0', 'up']);
    must(['ip', 'netns', 'exec', peer.name, 'ip', 'route', 'add', 'default', 'via', '203.0.113.1']);
    return peer;
  }

  removeContainer(name: string): void {
    sh(['ip', 'netns', 'del', name]);
    this.containers = this.containers.filter((c) => c !== name);
  }

  /** Runs argv inside the host namespace (tools: ip, iptables …; plugins go through plugin()/pluginArgv()). */
  inHost(argv: string[]): { code: number; stdout: string; stderr: string } {
    return sh(['ip', 'netns', 'exec', this.host, ...argv]);
  }

  inNs(ns: string, argv: string[]): { code: number; stdout: string; stderr: string } {
    return sh(['ip', 'netns', 'exec', ns, ...argv]);
  }

  /** The argv that runs `binary` (a plugin, cnitool, cni-manager) inside the host namespace, per the test mode. */
  pluginArgv(binary: string, ...args: string[]): string[] {
    return [...inNetns(this.host), binary, ...args];
  }

  private argv(binary: string): string[] {
    return this.pluginArgv(binary);
  }

  private env(call: CniCall): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, ...modeEnv(), CNI_COMMAND: call.command, CNI_PATH: call.path ?? BIN, ...call.env };
    if (call.containerId !== undefined) env.CNI_CONTAINERID = call.containerId;
    if (call.netns !== undefined) env.CNI_NETNS = call.netns;
    env.CNI_IFNAME = call.ifname ?? 'eth0';
    if (call.args !== undefined) env.CNI_ARGS = call.args;
    return env;
  }

  /** Runs a plugin binary synchronously inside the host namespace. */
  plugin(binary: string, call: CniCall, config: unknown): PluginRun {
    const argv = this.argv(binary);
    const input = typeof config === 'string' ? config : JSON.stringify(config);
    const r = spawnSync(argv[0], argv.slice(1), { input, encoding: 'utf8', env: this.env(call) });
    return finish(r.status ?? 1, r.stdout ?? '', r.stderr ?? '');
  }

  /** The same, without blocking (for concurrency tests). */
  pluginAsync(binary: string, call: CniCall, config: unknown): Promise<PluginRun> {
    const argv = this.argv(binary);
    return new Promise((res) => {
      const child = spawn(argv[0], argv.slice(1), { env: this.env(call) });
      let out = '';
      let err = '';
      child.stdout.on('data', (b) => (out += b));
      child.stderr.on('data', (b) => (err += b));
      child.on('close', (code) => res(finish(code ?? 1, out, err)));
      child.stdin.end(typeof config === 'string' ? config : JSON.stringify(config));
    });
  }

  /** Links, addresses, routes and nat rules of the host namespace, for before/after comparisons. */
  hostState(): string {
    return [
      this.inHost(['ip', '-o', 'link', 'show']).stdout.replace(/ link\/ether [0-9a-f:]+ brd [0-9a-f:]+/g, ''),
      this.inHost(['ip', '-o', 'addr', 'show']).stdout,
      this.inHost(['iptables-save', '-t', 'nat']).stdout.replace(/^#.*$/gm, ''),
    ].join('\n');
  }

  /** Processes whose command line mentions this sandbox's temp dir (daemons a plugin started). */
  strays(): number[] {
    const out: number[] = [];
    for (const name of readdirSync('/proc')) {
      const pid = Number(name);
      if (!Number.isInteger(pid) || pid === process.pid) continue;
      try {
        if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(this.dir)) out.push(pid);
      } catch {
        // gone
      }
    }
    return out;
  }

  cleanup(): void {
    // The host namespace's engines first (any mount namespace: the namespace is this sandbox's alone),
    // while the namespace and the sandbox's copies of the binary still exist.
    stopEngines(this.host, { anyMount: true, dirs: [this.dir] });
    for (const pid of this.strays()) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    for (const c of this.containers) sh(['ip', 'netns', 'del', c]);
    this.containers = [];
    sh(['ip', 'netns', 'del', this.host]);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

function finish(code: number, stdout: string, stderr: string): PluginRun {
  let json: any;
  try {
    json = stdout.trim() ? JSON.parse(stdout) : undefined;
  } catch {
    json = undefined;
  }
  return { code, stdout, stderr, json };
}
