import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, chmodSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MODE } from '../helpers/mode.js';
import { BIN, ROOT, Sandbox, TEST_BIN, must } from '../helpers/sandbox.js';
import { FP } from '../../lib/cni/failpoints.js';

/**
 * Engine mode (docs/engine.md), against the real client, engine and kernel:
 * lifecycle (start on first use, idle exit, upgrade), the failure semantics
 * (engine killed or hung mid-request, client killed by its runtime), and
 * what a local user or a broken client can do to the socket (peer check,
 * oversized and malformed requests, a flood of connections). Every call
 * runs inside the sandbox's host namespace through nsenter (the caller's
 * mount namespace stays the test's: `ip netns exec` would make a new one
 * per call, and each would get its own engine).
 */
let sb: Sandbox;
/** An earlier namespace with the same inode may have left its engine's log and lock. */
const removeEngineFiles = () => {
  for (const bin of [BIN, TEST_BIN]) for (const ext of ['log', 'log.1', 'lock']) rmSync(engineFile(bin, ext), { force: true });
};
beforeEach(() => {
  sb = new Sandbox('eng', { engine: false }); // these tests start (and kill) their engines themselves
  removeEngineFiles();
});
afterEach(async () => {
  for (const bin of [BIN, TEST_BIN]) {
    const pid = enginePid(bin);
    stopEngine(bin);
    if (pid !== undefined) await until('the engine gone', () => alive(pid), (a) => !a, 10_000);
  }
  removeEngineFiles();
  sb.cleanup();
});

const dirOf = (bin: string) => (bin === TEST_BIN ? '/run/cni-ts/test' : '/run/cni-ts');
const engineFile = (bin: string, ext: string) =>
  join(dirOf(bin), `engine-${statSync(`/run/netns/${sb.host}`).ino}-${statSync('/proc/self/ns/mnt').ino}.${ext}`);
function enginePid(bin: string): number | undefined {
  try {
    const pid = Number(readFileSync(engineFile(bin, 'pid'), 'utf8'));
    process.kill(pid, 0);
    return pid;
  } catch {
    return undefined;
  }
}
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return !readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.startsWith('Z');
  } catch {
    return false;
  }
};
function stopEngine(bin: string): void {
  const pid = enginePid(bin);
  if (pid === undefined) return;
  try {
    if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('engine')) process.kill(pid, 'SIGKILL');
  } catch {
    // gone
  }
}
const logText = (bin: string) => {
  try {
    return readFileSync(engineFile(bin, 'log'), 'utf8');
  } catch {
    return '';
  }
};
async function until<T>(what: string, get: () => T, ok: (v: T) => boolean, ms = 60_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = get();
    if (ok(v)) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(v)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  pid: number;
}

/** A plugin through its client, inside the host namespace, as a runtime calls it (`onStart` gets the client's pid: nsenter execs it). */
function call(bin: string, plugin: string, env: Record<string, string>, conf: unknown, opts: { onStart?: (pid: number) => void } = {}): Promise<Run> {
  return new Promise((res) => {
    const child = spawn('nsenter', [`--net=/run/netns/${sb.host}`, '--', join(bin, plugin)], {
      env: { PATH: process.env.PATH, CNI_PATH: bin, CNI_IFNAME: 'eth0', ...env },
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (b) => (out += b));
    child.stderr.on('data', (b) => (err += b));
    opts.onStart?.(child.pid!);
    child.on('close', (code, signal) => res({ code, signal, stdout: out, stderr: err, pid: child.pid! }));
    child.stdin.on('error', () => undefined);
    child.stdin.end(typeof conf === 'string' ? conf : JSON.stringify(conf));
  });
}

/** Calls until an engine serves (the first call starts it); returns its pid. */
async function warm(bin: string, extra: Record<string, string> = {}): Promise<number> {
  const before = logText(bin).split('\n').length;
  const end = Date.now() + 60_000;
  for (;;) {
    const r = await call(bin, 'loopback', { CNI_COMMAND: 'VERSION', ...extra }, { cniVersion: '1.0.0' });
    expect(r.code, r.stderr).toBe(0);
    const served = logText(bin).split('\n').slice(before - 1).some((l) => / loopback VERSION /.test(l));
    const pid = enginePid(bin);
    if (served && pid !== undefined) return pid;
    if (Date.now() > end) throw new Error(`no engine served; log:\n${logText(bin)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const ipamConf = (extra: Record<string, unknown> = {}) => ({
  cniVersion: '1.0.0', name: 'engnet', type: 'bridge', bridge: 'engbr0', isGateway: true,
  ipam: { type: 'host-local', subnet: '10.219.0.0/24', dataDir: join(sb.dir, 'ipam') }, ...extra,
});
const allocations = () => {
  const d = join(sb.dir, 'ipam', 'engnet');
  return existsSync(d) ? readdirSync(d).filter((f) => /^10\./.test(f)).sort() : [];
};
const hostLinks = (): string[] => JSON.parse(must(['ip', 'netns', 'exec', sb.host, 'ip', '-j', 'link', 'show']) || '[]').map((l: any) => l.ifname as string).sort();

/** Holds host-local's lock on the network's store (flock, as host-local takes it) until released. */
function holdIpamLock(): { release(): void } {
  const dir = join(sb.dir, 'ipam', 'engnet');
  must(['mkdir', '-p', dir]);
  const holder = spawn('flock', ['--no-fork', '-x', join(dir, 'lock'), 'sleep', '600'], { stdio: 'ignore' });
  return { release: () => holder.kill('SIGKILL') };
}
const lockHeld = () => spawnSync('flock', ['-n', '-x', join(sb.dir, 'ipam', 'engnet', 'lock'), 'true']).status !== 0;

/** Speaks the wire protocol directly (as another program on the machine could), through `argvPrefix` (e.g. setpriv). */
function rawClient(socket: string, frameHex: string, argvPrefix: string[] = [], hold = 0): { stdout: string; stderr: string; code: number | null } {
  const js = `
const net = require('node:net');
const s = net.connect(process.argv[1]);
const chunks = [];
s.on('connect', () => { s.write(Buffer.from(process.argv[2], 'hex')); });
s.on('data', (b) => chunks.push(b));
s.on('error', (e) => { process.stdout.write('error ' + e.code); process.exit(0); });
s.on('close', () => { process.stdout.write('closed ' + Buffer.concat(chunks).toString('hex')); process.exit(0); });
setTimeout(() => { process.stdout.write('open'); process.exit(0); }, ${hold || 20000});
`;
  // From inside the host namespace, as a plugin's caller (the engine tells callers elsewhere to exec).
  const argv = ['nsenter', `--net=/run/netns/${sb.host}`, '--', ...argvPrefix, process.execPath, '-e', js, socket, frameHex];
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', timeout: 60_000 });
  return { stdout: r.stdout ?? '', stderr: r.stderr ?? '', code: r.status };
}
function field(tag: number, value: Buffer): Buffer {
  const h = Buffer.alloc(5);
  h.writeUInt8(tag, 0);
  h.writeUInt32LE(value.length, 1);
  return Buffer.concat([h, value]);
}
function frame(body: Buffer, claimed = body.length, magic = 'CNTS'): string {
  const h = Buffer.alloc(8);
  h.write(magic, 0, 'latin1');
  h.writeUInt32LE(claimed, 4);
  return Buffer.concat([h, body]).toString('hex');
}
const buildOf = (bin: string) => readFileSync(join(ROOT, '.build', bin === TEST_BIN ? 'test' : 'prod', 'build-id'), 'utf8').trim();
const loopbackAdd = (bin: string, netns: string, build = buildOf(bin)) => Buffer.concat([
  field(1, Buffer.from(build)), field(2, Buffer.from('loopback')),
  field(3, Buffer.from('CNI_COMMAND=ADD')), field(3, Buffer.from('CNI_CONTAINERID=raw')), field(3, Buffer.from(`CNI_NETNS=${netns}`)),
  field(3, Buffer.from('CNI_IFNAME=lo')), field(3, Buffer.from('CNI_PATH=/nonexistent')),
  field(4, Buffer.from(JSON.stringify({ cniVersion: '1.0.0', name: 'raw', type: 'loopback' }))),
]);
const loUp = (ns: string) => must(['ip', 'netns', 'exec', ns, 'ip', '-j', 'link', 'show', 'lo']).includes('"UP"') || must(['ip', 'netns', 'exec', ns, 'ip', 'link', 'show', 'lo']).includes(',UP');

// Engine-specific: run once, in the engine-mode pass of `make test`.
describe.runIf(MODE === 'engine')('engine mode', () => {
  it('the first call runs in its own process and starts the engine; later calls are served by it, byte for byte as in exec mode', async () => {
    expect(enginePid(BIN)).toBeUndefined();
    const c = sb.container();
    const bad = '{"cniVersion":"1.0.0","name":"x","type":"bridge","ipam":{"type":"host-local","subnet":"10.1.2.3/24"}}';
    const cases: [string, Record<string, string>, unknown][] = [
      ['loopback', { CNI_COMMAND: 'VERSION' }, { cniVersion: '0.4.0' }],
      ['bridge', { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'p1', CNI_NETNS: c.path }, bad],
      ['bridge', { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'p1', CNI_NETNS: c.path }, '{not json'],
      ['tuning', { CNI_COMMAND: 'CHECK', CNI_CONTAINERID: 'p1', CNI_NETNS: '/nonexistent' }, { cniVersion: '1.0.0', name: 'x', type: 'tuning' }],
      ['firewall', { CNI_COMMAND: 'ADD' }, { cniVersion: '1.0.0', name: 'x', type: 'firewall' }],
    ];
    const off = [];
    for (const [p, env, conf] of cases) off.push(await call(BIN, p, { ...env, CNI_TS_ENGINE: 'off' }, conf));
    expect(enginePid(BIN), 'CNI_TS_ENGINE=off starts nothing').toBeUndefined();
    const pid = await warm(BIN);
    for (const [i, [p, env, conf]] of cases.entries()) {
      const r = await call(BIN, p, env, conf);
      expect({ code: r.code, stdout: r.stdout, stderr: r.stderr }, `${p} ${env.CNI_COMMAND}`).toEqual({ code: off[i].code, stdout: off[i].stdout, stderr: off[i].stderr });
    }
    expect(logText(BIN)).toMatch(/ bridge ADD pid=\d+ container=p1 if=eth0 [\d.]+ms exit=1 code=\d+/);
    // A real ADD and DEL through the engine: the container is wired, then nothing is left.
    const add = await call(BIN, 'bridge', { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'p2', CNI_NETNS: c.path }, ipamConf());
    expect(add.code, add.stdout + add.stderr).toBe(0);
    expect(JSON.parse(add.stdout).ips[0].address).toMatch(/^10\.219\.0\.\d+\/24$/);
    expect(must(['ip', 'netns', 'exec', c.name, 'ip', '-o', 'addr', 'show', 'eth0'])).toContain('10.219.0.');
    const del = await call(BIN, 'bridge', { CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'p2', CNI_NETNS: c.path }, ipamConf());
    expect(del.code, del.stdout + del.stderr).toBe(0);
    expect(allocations()).toEqual([]);
    expect(logText(BIN)).toMatch(/ bridge DEL pid=\d+ container=p2 if=eth0 [\d.]+ms exit=0/);
    expect(enginePid(BIN)).toBe(pid);
    // Its environment is fixed and clean, whatever the caller that started it had.
    expect(readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0').filter(Boolean)).toEqual(['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'MALLOC_ARENA_MAX=2']);
    // Detached: its own session, stdio on /dev/null.
    expect(readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')[3]).toBe(String(pid));
    for (const fd of ['0', '1', '2']) expect(readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8')).toBeTruthy();
  }, 240_000);

  it('a call from a mount namespace made for it alone (ip netns exec) starts no engine', async () => {
    const c = sb.container();
    const hostNs = statSync(`/run/netns/${sb.host}`).ino;
    const enginesHere = () => readdirSync('/proc').filter((p) => /^\d+$/.test(p)).filter((p) => {
      try {
        return statSync(`/proc/${p}/ns/net`).ino === hostNs && readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('engine');
      } catch {
        return false;
      }
    });
    for (const cmd of ['ADD', 'DEL']) {
      const r = spawnSync('ip', ['netns', 'exec', sb.host, join(BIN, 'loopback')], {
        input: JSON.stringify({ cniVersion: '1.0.0', name: 'p', type: 'loopback' }), encoding: 'utf8',
        env: { PATH: process.env.PATH, CNI_COMMAND: cmd, CNI_CONTAINERID: 'p1', CNI_NETNS: c.path, CNI_IFNAME: 'lo', CNI_PATH: BIN },
      });
      expect(r.status, r.stdout + r.stderr).toBe(0);
    }
    await new Promise((res) => setTimeout(res, 2000)); // an engine started in the background would be up by now
    expect(enginesHere()).toEqual([]);
    // The same calls from the caller's own mount namespace do start one.
    await warm(BIN);
    expect(enginesHere().length).toBe(1);
  }, 240_000);

  it('exits after its idle period, removing its socket and pid file', async () => {
    const pid = await warm(BIN, { CNI_TS_ENGINE_IDLE: '2' });
    expect(existsSync(engineFile(BIN, 'sock'))).toBe(true);
    await until('the idle engine to exit', () => alive(pid), (a) => !a, 30_000);
    expect(existsSync(engineFile(BIN, 'sock'))).toBe(false);
    expect(existsSync(engineFile(BIN, 'pid'))).toBe(false);
    expect(logText(BIN)).toContain('draining: idle for 2 s');
  }, 120_000);

  it('a client of another build: answered by the exec path, and the old engine drains and exits', async () => {
    const pid = await warm(BIN);
    const dir = mkdtempSync(join(tmpdir(), 'cnits-upgrade-'));
    try {
      const r0 = spawnSync('gcc', ['-O2', '-static', '-DCNI_TS_BUILD_ID="00000000deadbeef"', join(ROOT, 'native/client.c'), '-o', join(dir, 'cni-ts-client')], { encoding: 'utf8' });
      expect(r0.status, r0.stderr).toBe(0);
      symlinkSync(join(BIN, 'cni-ts'), join(dir, 'cni-ts'));
      symlinkSync('cni-ts-client', join(dir, 'loopback'));
      const c = sb.container();
      const r = await call(dir, 'loopback', { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'u1', CNI_NETNS: c.path, CNI_IFNAME: 'lo' }, { cniVersion: '1.0.0', name: 'u', type: 'loopback' });
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(JSON.parse(r.stdout).interfaces[0].name).toBe('lo');
      expect(loUp(c.name)).toBe(true);
      await until('the old engine to exit', () => alive(pid), (a) => !a, 30_000);
      expect(logText(BIN)).toContain('draining: a client of build 00000000deadbeef');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 240_000);

  it('engine killed mid-ADD: the client answers code 11 (not redone); mid-DEL: the client runs DEL itself', async () => {
    const c = sb.container();
    await warm(BIN);
    // ADD waits in the engine for host-local's lock; the engine dies meanwhile.
    let lock = holdIpamLock();
    const add = call(BIN, 'bridge', { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'k1', CNI_NETNS: c.path }, ipamConf({ cniVersion: '0.4.0' }));
    await until('ADD in the engine', () => logText(BIN), () => readdirSync(join(sb.dir, 'ipam', 'engnet')).length > 0 && hostLinks().some((l) => l.startsWith('veth')), 60_000);
    process.kill(enginePid(BIN)!, 'SIGKILL');
    const r = await add;
    lock.release();
    expect(r.code).toBe(1);
    const err = JSON.parse(r.stdout);
    expect(err).toMatchObject({ cniVersion: '0.4.0', code: 11, msg: 'try again later' });
    expect(err.details).toMatch(/closed the connection before answering ADD/);
    expect(allocations(), 'never redone behind the engine').toEqual([]);
    // DEL: the engine dies while DEL waits for the lock; the client runs DEL itself, which completes once the lock is free.
    await warm(BIN);
    lock = holdIpamLock();
    const del = call(BIN, 'bridge', { CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'k1', CNI_NETNS: c.path }, ipamConf({ cniVersion: '0.4.0' }));
    await until('DEL in the engine', () => logText(BIN), () => lockHeld(), 60_000);
    await new Promise((res) => setTimeout(res, 500));
    process.kill(enginePid(BIN)!, 'SIGKILL');
    await new Promise((res) => setTimeout(res, 500));
    lock.release();
    const d = await del;
    expect(d.code, d.stdout + d.stderr).toBe(0);
    expect(hostLinks().filter((l) => l.startsWith('veth'))).toEqual([]);
    expect(must(['ip', 'netns', 'exec', c.name, 'ip', '-o', 'link', 'show'])).not.toContain('eth0');
  }, 240_000);

  it('engine hung: the client gives up after CNI_TS_ENGINE_TIMEOUT, kills it, answers ADD with code 11 and runs DEL itself; the next call starts a fresh engine', async () => {
    const c = sb.container();
    const pid = await warm(BIN);
    process.kill(pid, 'SIGSTOP');
    try {
      const r = await call(BIN, 'loopback', { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'h1', CNI_NETNS: c.path, CNI_IFNAME: 'lo', CNI_TS_ENGINE_TIMEOUT: '2' }, { cniVersion: '1.0.0', name: 'h', type: 'loopback' });
      expect(r.code).toBe(1);
      expect(JSON.parse(r.stdout)).toMatchObject({ cniVersion: '1.0.0', code: 11, msg: 'try again later' });
      expect(JSON.parse(r.stdout).details).toMatch(/did not answer ADD within 2 s/);
      await until('the hung engine killed', () => alive(pid), (a) => !a, 10_000);
    } finally {
      try {
        process.kill(pid, 'SIGCONT');
      } catch {
        // killed
      }
    }
    const fresh = await warm(BIN);
    expect(fresh).not.toBe(pid);
    process.kill(fresh, 'SIGSTOP');
    try {
      const d = await call(BIN, 'loopback', { CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'h1', CNI_NETNS: c.path, CNI_IFNAME: 'lo', CNI_TS_ENGINE_TIMEOUT: '2' }, { cniVersion: '1.0.0', name: 'h', type: 'loopback' });
      expect(d.code, d.stdout + d.stderr).toBe(0);
      expect(loUp(c.name)).toBe(false);
    } finally {
      try {
        process.kill(fresh, 'SIGCONT');
      } catch {
        // killed
      }
    }
  }, 240_000);

  it('the runtime kills the client mid-ADD: the engine completes it, and the DEL that follows waits for it', async () => {
    const c = sb.container();
    await warm(BIN);
    const lock = holdIpamLock();
    let client = 0;
    const add = call(BIN, 'bridge', { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'r1', CNI_NETNS: c.path }, ipamConf(), { onStart: (pid) => (client = pid) });
    await until('ADD in the engine', () => hostLinks(), (l) => l.some((x) => x.startsWith('veth')), 60_000);
    // As a runtime's timeout would (the client is nsenter's exec: same pid).
    process.kill(client, 'SIGKILL');
    const killed = await add;
    expect(killed.signal).toBe('SIGKILL');
    const del = call(BIN, 'bridge', { CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'r1', CNI_NETNS: c.path }, ipamConf());
    await new Promise((res) => setTimeout(res, 1000));
    expect(allocations(), 'the ADD is still waiting for the lock').toEqual([]);
    lock.release();
    const d = await del;
    expect(d.code, d.stdout + d.stderr).toBe(0);
    const log = logText(BIN);
    const addAt = log.indexOf(' bridge ADD pid=');
    const delAt = log.indexOf(' bridge DEL pid=');
    expect(addAt, log).toBeGreaterThan(0);
    expect(delAt, 'DEL ran after the ADD completed').toBeGreaterThan(addAt);
    expect(log.slice(addAt, log.indexOf('\n', addAt))).toMatch(/exit=0/);
    expect(allocations()).toEqual([]);
    expect(hostLinks().filter((l) => l.startsWith('veth'))).toEqual([]);
  }, 240_000);

  it('another user cannot use the engine: its connection is closed unanswered even when it can reach the socket', async () => {
    const c = sb.container();
    await warm(BIN);
    const sock = engineFile(BIN, 'sock');
    const dirMode = statSync(dirOf(BIN)).mode & 0o777;
    chmodSync(dirOf(BIN), 0o711);
    chmodSync(sock, 0o666);
    try {
      const r = rawClient(sock, frame(loopbackAdd(BIN, c.path)), ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--']);
      expect(r.stdout, r.stderr).toMatch(/^(closed $|error (ECONNRESET|EPIPE))/);
    } finally {
      chmodSync(dirOf(BIN), dirMode);
      chmodSync(sock, 0o600);
    }
    expect(loUp(c.name)).toBe(false);
    expect(logText(BIN)).toMatch(/refused pid \d+: uid 65534 is not the engine's \(0\)/);
    // The same request from root (the engine's uid) is served.
    const ok = rawClient(sock, frame(loopbackAdd(BIN, c.path)));
    expect(ok.stdout).toMatch(/^closed 434e5453/);
    expect(loUp(c.name)).toBe(true);
  }, 240_000);

  it('oversized, malformed and foreign-namespace requests are refused; the engine serves on', async () => {
    const c = sb.container();
    const pid = await warm(BIN);
    const sock = engineFile(BIN, 'sock');
    const good = loopbackAdd(BIN, c.path);
    expect(rawClient(sock, frame(Buffer.alloc(16), 5 * 1024 * 1024)).stdout).toMatch(/^(closed $|error)/);
    expect(rawClient(sock, frame(good, good.length, 'XXXX')).stdout).toMatch(/^(closed $|error)/);
    expect(rawClient(sock, frame(Buffer.concat([good, field(99, Buffer.from('x'))]))).stdout).toMatch(/^(closed $|error)/);
    expect(rawClient(sock, frame(Buffer.concat([field(3, Buffer.from('NOEQUALS')), good]))).stdout).toMatch(/^(closed $|error)/);
    expect(rawClient(sock, frame(good.subarray(0, 20), good.length), [], 15_000).stdout, 'a request that never completes is dropped').toMatch(/^closed $/);
    const log = logText(BIN);
    for (const why of ['over the limit', 'bad magic', 'unknown request field 99', 'not KEY=VALUE', 'no whole request within']) expect(log).toContain(why);
    expect(loUp(c.name)).toBe(false);
    // From another mount namespace: told to run the plugin itself (exec reply, status 1).
    const foreign = rawClient(sock, frame(good), ['unshare', '-m', '--']);
    expect(foreign.stdout).toMatch(/^closed 434e5453/);
    expect(Buffer.from(foreign.stdout.slice(7), 'hex').toString('latin1')).toContain('another mnt namespace');
    expect(loUp(c.name)).toBe(false);
    expect(rawClient(sock, frame(good)).stdout).toMatch(/^closed 434e5453/);
    expect(loUp(c.name)).toBe(true);
    expect(enginePid(BIN)).toBe(pid);
  }, 240_000);

  it('a flood of idle connections: calls are still answered (by the exec path), and the engine serves again once they are gone', async () => {
    const c = sb.container();
    const pid = await warm(BIN);
    const sock = engineFile(BIN, 'sock');
    const js = `
const net = require('node:net');
const all = [];
for (let i = 0; i < 300; i++) { const s = net.connect(process.argv[1]); s.on('error', () => {}); all.push(s); }
setTimeout(() => process.exit(0), 60000);
process.stdin.on('data', () => process.exit(0));
`;
    const flood = spawn(process.execPath, ['-e', js, sock], { stdio: ['pipe', 'ignore', 'ignore'] });
    try {
      await until('the flood', () => logText(BIN), (t) => t.includes('connections open'), 30_000).catch(() => undefined);
      const before = logText(BIN).split('\n').length;
      const r = await call(BIN, 'loopback', { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'f1', CNI_NETNS: c.path, CNI_IFNAME: 'lo' }, { cniVersion: '1.0.0', name: 'f', type: 'loopback' });
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(loUp(c.name)).toBe(true);
      expect(logText(BIN).split('\n').slice(before - 1).join('\n'), 'answered by the exec path').not.toMatch(/ loopback ADD pid=/);
    } finally {
      flood.kill('SIGKILL');
    }
    await until('the flood gone', () => undefined, () => true);
    const d = await until('the engine serving again', () => logText(BIN), (t) => t.includes('no whole request within'), 30_000).then(() =>
      call(BIN, 'loopback', { CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'f1', CNI_NETNS: c.path, CNI_IFNAME: 'lo' }, { cniVersion: '1.0.0', name: 'f', type: 'loopback' }));
    expect(d.code, d.stdout + d.stderr).toBe(0);
    expect(logText(BIN)).toMatch(/ loopback DEL pid=\d+ container=f1 if=lo [\d.]+ms exit=0/);
    expect(enginePid(BIN)).toBe(pid);
  }, 240_000);

  it('a plugin in the engine that delegates to a client of another install (same build) is not queued behind itself', async () => {
    const c = sb.container();
    await warm(BIN);
    // Another directory with this build's client: the engine does not take it for itself, so
    // bridge runs it, and it connects to this engine for the same container and interface.
    const other = join(sb.dir, 'other-bin');
    must(['mkdir', other]);
    must(['cp', join(BIN, 'cni-ts-client'), join(other, 'cni-ts-client')]);
    symlinkSync(join(BIN, 'cni-ts'), join(other, 'cni-ts'));
    symlinkSync('cni-ts-client', join(other, 'host-local'));
    const env = { CNI_CONTAINERID: 'd1', CNI_NETNS: c.path, CNI_PATH: other, CNI_TS_ENGINE_TIMEOUT: '30' };
    const add = await call(BIN, 'bridge', { ...env, CNI_COMMAND: 'ADD' }, ipamConf());
    expect(add.code, add.stdout + add.stderr).toBe(0);
    expect(JSON.parse(add.stdout).ips[0].address).toMatch(/^10\.219\.0\.\d+\/24$/);
    expect(logText(BIN)).toContain(' bridge ADD pid=');
    const del = await call(BIN, 'bridge', { ...env, CNI_COMMAND: 'DEL' }, ipamConf());
    expect(del.code, del.stdout + del.stderr).toBe(0);
    expect(allocations()).toEqual([]);
  }, 240_000);

  it('cni-manager talks to the engine itself: no client process', async () => {
    const c = sb.container();
    await warm(BIN);
    const list = join(sb.dir, 'mgr.conflist');
    writeFileSync(list, JSON.stringify({ cniVersion: '1.0.0', name: 'engnet', plugins: [ipamConf(), { type: 'tuning', mtu: 1400, dataDir: join(sb.dir, 'tuning') }] }));
    const run = (cmd: string) => new Promise<Run>((res) => {
      const child = spawn('nsenter', [`--net=/run/netns/${sb.host}`, '--', join(BIN, 'cni-manager'), cmd, list, 'm1', '--netns', c.path, '--cni-path', BIN, '--cache-dir', join(sb.dir, 'cache')], { env: { PATH: process.env.PATH } });
      let out = '';
      let err = '';
      child.stdout.on('data', (b) => (out += b));
      child.stderr.on('data', (b) => (err += b));
      child.on('close', (code, signal) => res({ code, signal, stdout: out, stderr: err, pid: child.pid! }));
    });
    const add = await run('add');
    expect(add.code, add.stdout + add.stderr).toBe(0);
    const del = await run('del');
    expect(del.code, del.stdout + del.stderr).toBe(0);
    const log = logText(BIN);
    // Each plugin call of the list came from the manager's own process (nsenter execs it: same pid).
    for (const [pid, cmd] of [[add.pid, 'ADD'], [del.pid, 'DEL']] as const) {
      expect(log).toContain(` bridge ${cmd} pid=${pid} container=m1 if=eth0 `);
      expect(log).toContain(` tuning ${cmd} pid=${pid} container=m1 if=eth0 `);
    }
    expect(allocations()).toEqual([]);
  }, 240_000);

  it('socket activation (as a systemd socket unit starts it): serves from engine.sock, which it leaves to its owner when it exits', async () => {
    // What systemd does, without systemd: bind and listen on <dir>/engine.sock, then execute the
    // engine with that socket as fd 3, LISTEN_FDS=1 and LISTEN_PID=<its pid>.
    const dir = dirOf(TEST_BIN);
    const sock = join(dir, 'engine.sock');
    const activator = `
import os, socket, sys
path, exe, d = sys.argv[1:4]
try: os.unlink(path)
except FileNotFoundError: pass
s = socket.socket(socket.AF_UNIX); s.bind(path); os.chmod(path, 0o600); s.listen(64)
if s.fileno() != 3: os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
os.execve(exe, ['cni-ts', 'engine', '--dir', d, '--idle', '3'], {'PATH': '/usr/sbin:/usr/bin:/sbin:/bin', 'LISTEN_FDS': '1', 'LISTEN_PID': str(os.getpid())})
`;
    const logFile = join(dir, 'engine-activated.log');
    rmSync(logFile, { force: true });
    const engine = spawn('nsenter', [`--net=/run/netns/${sb.host}`, '--', 'python3', '-c', activator, sock, join(TEST_BIN, 'cni-ts'), dir], { stdio: 'ignore', detached: true });
    try {
      await until('the activated engine', () => (existsSync(logFile) ? readFileSync(logFile, 'utf8') : ''), (t) => t.includes('(socket activated)'), 30_000);
      const c = sb.container();
      const r = await call(TEST_BIN, 'loopback', { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'sa1', CNI_NETNS: c.path, CNI_IFNAME: 'lo' }, { cniVersion: '1.0.0', name: 'sa', type: 'loopback' });
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(loUp(c.name)).toBe(true);
      expect(readFileSync(logFile, 'utf8')).toMatch(/ loopback ADD pid=\d+ container=sa1 if=lo [\d.]+ms exit=0/);
      expect(enginePid(TEST_BIN), 'no engine of its own was started').toBeUndefined();
      // Its exit (stopped as systemd would; not its idle exit: other test files' clients of this
      // build may connect to engine.sock meanwhile and keep it busy): the socket is systemd's and
      // stays, for the next connection to start the engine again.
      process.kill(engine.pid!, 'SIGTERM');
      await until('the engine to exit', () => alive(engine.pid!), (a) => !a, 30_000);
      expect(readFileSync(logFile, 'utf8')).toMatch(/draining: SIGTERM/);
      expect(existsSync(sock)).toBe(true);
      const d = await call(TEST_BIN, 'loopback', { CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'sa1', CNI_NETNS: c.path, CNI_IFNAME: 'lo' }, { cniVersion: '1.0.0', name: 'sa', type: 'loopback' });
      expect(d.code, d.stdout + d.stderr).toBe(0);
      expect(loUp(c.name)).toBe(false);
    } finally {
      try {
        process.kill(engine.pid!, 'SIGKILL');
      } catch {
        // exited
      }
      rmSync(sock, { force: true });
      for (const f of ['engine-activated.log', 'engine-activated.log.1', 'engine-activated.pid']) rmSync(join(dir, f), { force: true });
    }
  }, 240_000);

  it('workers that come and go (one request each) load the native addons the engine holds: either addon first, never the other one', async () => {
    // Node closes a worker's descriptors when it ends; a worker that opened its own addon
    // descriptor would leave its number free, and glibc knows a loaded library by the name
    // /proc/self/fd/<n>: the next worker's other addon at that number came back as the first.
    const c = sb.container();
    const engine = spawn('nsenter', [`--net=/run/netns/${sb.host}`, '--', join(TEST_BIN, 'cni-ts'), 'engine', '--dir', dirOf(TEST_BIN), '--workers', '1', '--worker-requests', '1', '--idle', '60'], { stdio: 'ignore', detached: true });
    try {
      await until('the engine', () => logText(TEST_BIN), (t) => / started: build \w+, 1 workers/.test(t), 30_000);
      const env = (cmd: string, netns: string, ifname = 'eth0') => ({ CNI_COMMAND: cmd, CNI_CONTAINERID: 'wr1', CNI_NETNS: netns, CNI_IFNAME: ifname });
      const lo = { cniVersion: '1.0.0', name: 'wr', type: 'loopback' };
      const steps: [string, Record<string, string>, unknown][] = [
        ['bridge', env('DEL', ''), ipamConf()], // the netlink addon only (host side)
        ['loopback', env('ADD', c.path, 'lo'), lo], // sys first (into the container), then netlink
        ['bridge', env('ADD', c.path), ipamConf()],
        ['bridge', env('DEL', c.path), ipamConf()],
        ['bridge', env('DEL', ''), ipamConf()],
        ['loopback', env('DEL', c.path, 'lo'), lo],
      ];
      for (const [plugin, e, conf] of steps) {
        const r = await call(TEST_BIN, plugin, e, conf);
        expect(r.code, `${plugin} ${e.CNI_COMMAND}: ${r.stdout}${r.stderr}`).toBe(0);
      }
      const served = logText(TEST_BIN).split('\n').filter((l) => / container=wr1 .* exit=0 /.test(l));
      expect(served, 'every step served by the engine').toHaveLength(steps.length);
      expect(alive(engine.pid!), 'the engine is still up').toBe(true);
      expect(loUp(c.name)).toBe(false);
      expect(hostLinks().filter((l) => l.startsWith('veth'))).toEqual([]);
    } finally {
      try {
        process.kill(engine.pid!, 'SIGKILL');
      } catch {
        // exited
      }
    }
  }, 120_000);

  it('SIGKILLed at a failpoint (test build): ADD answers code 11, the runtime\'s DEL then leaves the host as before', async () => {
    const c = sb.container();
    await warm(TEST_BIN);
    const before = hostLinks();
    const r = await call(TEST_BIN, 'bridge', { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'x1', CNI_NETNS: c.path, CNI_TS_KILL_AT: FP.entry.done }, ipamConf());
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout)).toMatchObject({ code: 11 });
    expect(allocations().length, 'the work was done up to the failpoint').toBe(1);
    const d = await call(TEST_BIN, 'bridge', { CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'x1', CNI_NETNS: c.path }, ipamConf());
    expect(d.code, d.stdout + d.stderr).toBe(0);
    expect(allocations()).toEqual([]);
    expect(hostLinks()).toEqual(before.includes('engbr0') ? before : [...before, 'engbr0'].sort());
  }, 240_000);
});
