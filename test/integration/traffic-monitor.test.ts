import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { DatabaseSync } from 'node:sqlite';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, must, Sandbox, sh } from '../helpers/sandbox.js';
import { modeEnvArgs } from '../helpers/mode.js';
import { parseMetrics } from '../helpers/prometheus.js';
import { BACKENDS, type TestBackend } from '../helpers/backends.js';
import { stdHashHex } from '../../lib/pf/accounting/stdhash.js';

// The traffic monitor of cni-manager (`traffic`, `serve`) against real
// accounting chains in a throwaway namespace. Failures are real ones: the
// xtables lock held (so iptables-restore gives up), SQLite's write lock held
// by another connection, the metrics port taken by another process.
//
// The legacy iptables backend is selected by PATH (iptables-save/-restore
// named for xtables-legacy-multi): legacy iptables-restore takes the xtables
// lock and `XTABLES_LOCKFILE` moves that lock into the sandbox's own dir, so
// holding it fails this test's restores and nobody else's; iptables-save
// takes no lock, so a collection reads its counters and fails only at apply.
let sb: Sandbox;
let children: ChildProcess[] = [];
let releases: (() => void)[] = [];
beforeEach(() => {
  sb = new Sandbox('tmon');
  children = [];
  releases = [];
});
afterEach(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const r of releases) r();
  sb.cleanup(); // also kills anything whose command line names the sandbox dir (serve, flock)
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const LOCK = () => join(sb.dir, 'xtables.lock');
const SUBNET_IP = '10.85.0.2';

/** PATH with a directory of the legacy tools under the usual names first (made once per sandbox). */
function legacyPath(): string {
  const dir = join(sb.dir, 'legacy-bin');
  if (!existsSync(dir)) {
    mkdirSync(dir);
    for (const n of ['iptables', 'iptables-save', 'iptables-restore']) symlinkSync('/usr/sbin/xtables-legacy-multi', join(dir, n));
  }
  return `${dir}:${process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'}`;
}

function managerArgv(args: string[]): string[] {
  return sb.pluginArgv('env', ...modeEnvArgs(), `PATH=${legacyPath()}`, `XTABLES_LOCKFILE=${LOCK()}`, `XDG_RUNTIME_DIR=${join(sb.dir, 'xdg')}`,
    join(BIN, 'cni-manager'), ...args, '--cni-path', BIN, '--cache-dir', join(sb.dir, 'cache'));
}
const manager = (args: string[]) => sh(managerArgv(args));

/** A list with bridge + traffic-accounting (in `backend` when given); the file's path. */
function writeList(name: string, instanceId: string, backend?: TestBackend): string {
  const list = join(sb.dir, name);
  writeFileSync(list, JSON.stringify({
    cniVersion: '0.4.0', name: 'tmon',
    plugins: [
      { type: 'bridge', bridge: 'br-tmon', isGateway: true,
        ipam: { type: 'host-local', dataDir: join(sb.dir, 'ipam'), subnet: '10.85.0.0/24', routes: [{ dst: '0.0.0.0/0' }] } },
      { type: 'traffic-accounting', instanceId, ...(backend ? { backend } : {}) },
    ],
  }));
  return list;
}

/** A list with bridge + traffic-accounting; a peer outside the local ranges; one instance added. */
function setup(instanceId = 'inst-1', backend?: TestBackend): { list: string; c: { name: string; path: string } } {
  sb.outsidePeer();
  const list = writeList('list.conflist', instanceId, backend);
  const c = sb.container();
  const add = manager(['add', list, 'inst-1', '--netns', c.path]);
  expect(add.code, add.stderr).toBe(0);
  expect(JSON.parse(add.stdout).ips[0].address).toBe(`${SUBNET_IP}/24`);
  return { list, c };
}

/** Real traffic out of the instance (ICMP to the peer, which answers). */
function ping(ns: string, count: number, size = 1000): void {
  must(['ip', 'netns', 'exec', ns, 'ping', '-q', '-c', String(count), '-i', '0.01', '-s', String(size), '-W', '2', '203.0.113.9']);
}
/** Whether one ping from the instance to `dst` is answered. */
const answered = (ns: string, dst: string) => sh(['ip', 'netns', 'exec', ns, 'ping', '-q', '-c', '1', '-W', '1', dst]).code === 0;

/** The named counters of the nftables accounting table: name → bytes. */
function nftCounters(): Map<string, number> {
  const r = sb.inHost(['nft', '-j', 'list', 'counters', 'table', 'inet', 'cni_ts_accounting']);
  const out = new Map<string, number>();
  if (r.code !== 0) return out;
  for (const item of JSON.parse(r.stdout).nftables) if (item.counter) out.set(item.counter.name, item.counter.bytes);
  return out;
}
/** The instance's upload counter in `backend` (iptables: read through the legacy tools this file's monitor uses). */
const uploadIn = (backend: TestBackend) => (backend === 'iptables' ? uploadCounter() : nftCounters().get(`AOS_${stdHashHex('inst-1')}_OUT`) ?? NaN);

/** Byte counter of the instance's upload counting rule (`-s <ip>/32`, no target), read by the legacy backend. */
function uploadCounter(): number {
  const text = sb.inHost(['iptables-legacy-save', '-c', '-t', 'filter']).stdout;
  const line = text.split('\n').find((l) => /-A AOS_[0-9a-f]+_OUT -s 10\.85\.0\.2\/32$/.test(l));
  const m = line ? /^\[(\d+):(\d+)\]/.exec(line) : null;
  return m ? Number(m[2]) : NaN;
}
const legacyFilter = () => sb.inHost(['iptables-legacy-save', '-t', 'filter']).stdout;

/** Holds the sandbox's xtables lock with flock(1) until released; resolves once it is held. */
async function holdXtablesLock(): Promise<() => void> {
  writeFileSync(LOCK(), '');
  // Its own process group: the lock is held by flock and by the sleep it runs, and both must go to release it.
  const holder = spawn('flock', [LOCK(), 'sleep', '600'], { stdio: 'ignore', detached: true });
  const release = () => {
    try {
      process.kill(-holder.pid!, 'SIGKILL');
    } catch {
      // gone
    }
  };
  releases.push(release);
  for (let i = 0; i < 200 && sh(['flock', '-n', LOCK(), 'true']).code === 0; i++) await sleep(50);
  expect(sh(['flock', '-n', LOCK(), 'true']).code).not.toBe(0);
  return release;
}

function usageOf(stdout: string, id = 'inst-1'): { download: number; upload: number; state: string } {
  const row = stdout.split('\n').find((l) => l.startsWith(`${id} `))!.split(/\s+/);
  return { download: Number(row[1]), upload: Number(row[2]), state: row[4] };
}

const FETCH = `fetch('http://127.0.0.1:' + process.argv[1] + '/metrics').then((r) => r.text()).then((t) => process.stdout.write(t), (e) => { process.stderr.write(String(e && e.cause || e)); process.exit(2); });`;
/** GET /metrics from inside the sandbox's host namespace; undefined when nothing answers. */
function scrape(port: number): string | undefined {
  const r = sh(['ip', 'netns', 'exec', sb.host, process.execPath, '-e', FETCH, String(port)]);
  return r.code === 0 ? r.stdout : undefined;
}
const sample = (text: string | undefined, name: string, instance?: string) =>
  parseMetrics(text ?? '').find((s) => s.name === name && (instance === undefined || s.labels.instance === instance))?.value;

/** Starts `serve`; stderr is collected into the returned object. */
function serve(args: string[]): { child: ChildProcess; stderr: () => string } {
  const argv = managerArgv(['serve', ...args]);
  const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  children.push(child);
  let err = '';
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  return { child, stderr: () => err };
}

/** Polls until `cond` holds (generous: the machine is shared; what is checked is the outcome, not the time). */
async function until<T>(what: string, get: () => T, cond: (v: T) => boolean, ms = 90_000): Promise<T> {
  const end = Date.now() + ms;
  let v = get();
  while (!cond(v)) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(v)}`);
    await sleep(250);
    v = get();
  }
  return v;
}

const exited = (child: ChildProcess) => new Promise<number | null>((r) => (child.exitCode !== null ? r(child.exitCode) : child.once('exit', (code) => r(code))));

describe('traffic monitor', () => {
  it('a collection whose iptables-restore fails changes no total; the next one counts exactly what went through', async () => {
    const { list, c } = setup();
    const db = join(sb.dir, 'traffic.db');
    ping(c.name, 5);
    const c1 = uploadCounter();
    expect(c1).toBeGreaterThan(5 * 1000);
    const first = manager(['traffic', list, '--db', db]);
    expect(first.code, first.stderr).toBe(0);
    expect(usageOf(first.stdout).upload).toBe(c1);

    // A limit already exceeded: the collection must swap the counting rule for DROP, and its restore fails.
    const release = await holdXtablesLock();
    const failed = manager(['traffic', list, '--db', db, '--limits', JSON.stringify({ 'inst-1': { upload: 1000 } })]);
    release();
    expect(sh(['flock', '-n', LOCK(), 'true']).code).toBe(0); // released
    expect(failed.code).toBe(1);
    expect(failed.stderr).toMatch(/iptables-restore failed.*xtables lock/s);
    expect(failed.stderr).not.toMatch(/^\s+at /m);
    expect(legacyFilter()).toMatch(/-A AOS_[0-9a-f]+_OUT -s 10\.85\.0\.2\/32$/m); // the counting rule is still there
    expect(legacyFilter()).not.toContain('-j DROP');

    // More real traffic; the counting rule has counted everything since it was made.
    ping(c.name, 7);
    const c2 = uploadCounter();
    expect(c2).toBeGreaterThan(c1);
    const next = manager(['traffic', list, '--db', db]);
    expect(next.code, next.stderr).toBe(0);
    expect(usageOf(next.stdout)).toMatchObject({ upload: c2, state: 'ok' }); // committing before the apply gave c1 + c2

    // With the lock free the same limit blocks, and the total stays exact.
    const blocked = manager(['traffic', list, '--db', db, '--limits', JSON.stringify({ 'inst-1': { upload: 1000 } })]);
    expect(blocked.code, blocked.stderr).toBe(0);
    expect(usageOf(blocked.stdout)).toMatchObject({ upload: c2, state: 'BLOCKED' });
    expect(legacyFilter()).toMatch(/-A AOS_[0-9a-f]+_OUT -s 10\.85\.0\.2\/32 -j DROP/);
  }, 240_000);

  it('serve survives SQLite busy and a failed iptables-restore, keeps answering metrics, and recovers', async () => {
    const { list, c } = setup();
    const db = join(sb.dir, 'traffic.db');
    const port = 9464;
    const s = serve([list, '--db', db, '--interval', '1', '--metrics-port', String(port), '--limits', JSON.stringify({ 'inst-1': { upload: 20_000 } })]);
    await until('first metrics', () => scrape(port), (t) => sample(t, 'cni_instance_upload_bytes', 'inst-1') === '0');

    // Another connection holds SQLite's write lock: collections fail, serve logs and backs off, metrics answer.
    const other = new DatabaseSync(db);
    try {
      other.exec('PRAGMA busy_timeout = 10000');
      other.exec('BEGIN IMMEDIATE');
      await until('a logged failure', s.stderr, (e) => /collection failed.*database is locked/.test(e));
      const during = scrape(port);
      expect(during).toBeDefined();
      expect(Number(sample(during, 'cni_traffic_collect_failures_total'))).toBeGreaterThanOrEqual(1);
      expect(sample(during, 'cni_instance_upload_bytes', 'inst-1')).toBe('0');
    } finally {
      other.exec('ROLLBACK');
      other.close();
    }
    await until('recovery', s.stderr, (e) => /collection recovered/.test(e));

    // The xtables lock held while traffic crosses the limit: the blocking restore fails, the total is not committed.
    const release = await holdXtablesLock();
    const before = s.stderr().length;
    ping(c.name, 30, 1200);
    const sent = uploadCounter();
    expect(sent).toBeGreaterThan(20_000);
    await until('a failed restore logged', () => s.stderr().slice(before), (e) => /collection failed.*iptables-restore failed/.test(e));
    const during = scrape(port);
    expect(sample(during, 'cni_instance_blocked', 'inst-1')).toBe('0');
    expect(legacyFilter()).not.toContain('-j DROP');
    release();
    const after = await until('the block after recovery', () => scrape(port), (t) => sample(t, 'cni_instance_blocked', 'inst-1') === '1');
    expect(Number(sample(after, 'cni_instance_upload_bytes', 'inst-1'))).toBe(sent); // counted once
    expect(legacyFilter()).toMatch(/-A AOS_[0-9a-f]+_OUT -s 10\.85\.0\.2\/32 -j DROP/);

    // The monitor's system chains removed behind its back (one atomic restore): the next collection makes them again.
    must(['ip', 'netns', 'exec', sb.host, 'env', `XTABLES_LOCKFILE=${LOCK()}`, 'iptables-legacy-restore', '--noflush', '-w', '10'],
      ['*filter', '-D INPUT -j AOS_SYSTEM_IN', '-D OUTPUT -j AOS_SYSTEM_OUT', '-F AOS_SYSTEM_IN', '-X AOS_SYSTEM_IN', '-F AOS_SYSTEM_OUT', '-X AOS_SYSTEM_OUT', 'COMMIT', ''].join('\n'));
    expect(legacyFilter()).not.toContain('AOS_SYSTEM');
    await until('the system chains again', legacyFilter, (t) => t.includes('-A INPUT -j AOS_SYSTEM_IN') && t.includes('-A OUTPUT -j AOS_SYSTEM_OUT'));
    expect(sample(scrape(port), 'cni_instance_upload_bytes', 'inst-1')).toBe(String(sent));
    expect(s.child.exitCode).toBeNull();
    expect(s.stderr()).not.toMatch(/^\s+at /m);

    // While it runs, the database and its -wal and -shm are the owner's alone.
    for (const f of [db, `${db}-wal`, `${db}-shm`]) expect((statSync(f).mode & 0o777).toString(8), f).toBe('600');
    s.child.kill('SIGTERM');
    expect(await exited(s.child)).toBe(0);
  }, 400_000);

  it('a second serve on a taken metrics port exits with a clear error, and the first keeps serving', async () => {
    const { list } = setup();
    const port = 9465;
    const first = serve([list, '--db', join(sb.dir, 'a.db'), '--interval', '60', '--metrics-port', String(port)]);
    // serve answers (HELP lines only) before its first collection: wait for the instance's series.
    await until('first metrics', () => scrape(port), (t) => t !== undefined && t.includes('cni_instance_upload_bytes{instance="inst-1"}'));
    const second = manager(['serve', list, '--db', join(sb.dir, 'b.db'), '--interval', '60', '--metrics-port', String(port)]);
    expect(second.code).toBe(1);
    expect(second.stderr.trim()).toBe(`cni-manager: metrics port ${port} on 127.0.0.1 is already in use`);
    expect(scrape(port)).toContain('cni_instance_upload_bytes{instance="inst-1"}');
    expect(first.child.exitCode).toBeNull();
  }, 240_000);

  it('an instance id with a quote and a newline is one correctly escaped series', async () => {
    // Unescaped, this id ended its series with value 1 and wrote a second one for "forged".
    const evil = 'evil"} 1\ncni_instance_download_bytes{instance="forged';
    const { list } = setup(evil);
    const port = 9466;
    serve([list, '--db', join(sb.dir, 'traffic.db'), '--interval', '60', '--metrics-port', String(port)]);
    const text = await until('metrics', () => scrape(port), (t) => t !== undefined && t.includes('cni_instance_blocked{instance="evil'));
    const samples = parseMetrics(text!);
    for (const name of ['cni_instance_download_bytes', 'cni_instance_upload_bytes', 'cni_instance_blocked']) {
      expect(samples.filter((x) => x.name === name).map((x) => x.labels.instance).sort()).toEqual(['(system)', evil].sort());
    }
    expect(samples.some((x) => x.labels.instance === 'forged')).toBe(false);
    expect(text).toContain('{instance="evil\\"} 1\\ncni_instance_download_bytes{instance=\\"forged"}');
  }, 240_000);

  it('traffic.db, its -wal and -shm: existing ones made 0600, new ones created 0600', () => {
    const list = join(sb.dir, 'empty.conflist');
    writeFileSync(list, JSON.stringify({ cniVersion: '0.4.0', name: 'tmon', plugins: [{ type: 'traffic-accounting' }] }));
    const mode = (f: string) => (statSync(f).mode & 0o777).toString(8);

    // A database from before, world-readable, kept open by another connection so its -wal and -shm exist.
    const old = join(sb.dir, 'old.db');
    const other = new DatabaseSync(old);
    try {
      other.exec('PRAGMA journal_mode=WAL; CREATE TABLE x (y); INSERT INTO x VALUES (1);');
      for (const f of [old, `${old}-wal`, `${old}-shm`]) chmodSync(f, 0o644);
      const r = manager(['traffic', list, '--db', old]);
      expect(r.code, r.stderr).toBe(0);
      for (const f of [old, `${old}-wal`, `${old}-shm`]) expect(mode(f), f).toBe('600');
    } finally {
      other.close();
    }

    const fresh = join(sb.dir, 'traffic.db');
    const r2 = manager(['traffic', list, '--db', fresh]);
    expect(r2.code, r2.stderr).toBe(0);
    expect(mode(fresh)).toBe('600'); // (its -wal and -shm, gone after the run, are checked while serve runs above)

    const deeper = join(sb.dir, 'new-dir', 'traffic.db'); // the directory is made too, 0700
    const r3 = manager(['traffic', list, '--db', deeper]);
    expect(r3.code, r3.stderr).toBe(0);
    expect(mode(deeper)).toBe('600');
    expect(mode(join(sb.dir, 'new-dir'))).toBe('700');
  });
});

describe.each(BACKENDS)('traffic monitor on %s', (backend) => {
  it('one collection reads the counters exactly, a crossed limit drops the traffic, a raised one lets it through and counts on', () => {
    const { list, c } = setup('inst-1', backend);
    const db = join(sb.dir, 'traffic.db');
    const other: TestBackend = backend === 'iptables' ? 'nftables' : 'iptables';
    ping(c.name, 5);
    const c1 = uploadIn(backend);
    expect(c1).toBeGreaterThan(5 * 1000);
    // The list's backend changed since the instance was added: its counters are still read where the plugin put them.
    const switched = writeList('switched.conflist', 'inst-1', other);
    const first = manager(['traffic', switched, '--db', db, '--backend', backend]);
    expect(first.code, first.stderr).toBe(0);
    expect(usageOf(first.stdout)).toMatchObject({ upload: c1, state: 'ok' });
    expect(first.stdout).toMatch(/^\(system\) /m); // the system counters, in --backend
    if (backend === 'nftables') {
      expect([...nftCounters().keys()]).toEqual(expect.arrayContaining(['AOS_SYSTEM_IN', 'AOS_SYSTEM_OUT']));
      expect(legacyFilter()).not.toContain('AOS_');
    } else {
      expect(legacyFilter()).toContain('-A INPUT -j AOS_SYSTEM_IN');
      expect(nftCounters().size).toBe(0);
    }

    // Over the limit: blocked, the peer unreachable, the local ranges still reachable (the gateway).
    const blocked = manager(['traffic', list, '--db', db, '--limits', JSON.stringify({ 'inst-1': { upload: 1000 } })]);
    expect(blocked.code, blocked.stderr).toBe(0);
    expect(usageOf(blocked.stdout)).toMatchObject({ upload: c1, state: 'BLOCKED' });
    expect(answered(c.name, '203.0.113.9')).toBe(false);
    expect(answered(c.name, '10.85.0.1')).toBe(true);
    const again = manager(['traffic', list, '--db', db, '--limits', JSON.stringify({ 'inst-1': { upload: 1000 } })]);
    expect(usageOf(again.stdout)).toMatchObject({ upload: c1, state: 'BLOCKED' }); // nothing counted while blocked

    // A raised limit: counting again from a fresh counter, the total continues exactly.
    const raised = JSON.stringify({ 'inst-1': { upload: 1e12 } });
    const open = manager(['traffic', list, '--db', db, '--limits', raised]);
    expect(usageOf(open.stdout)).toMatchObject({ upload: c1, state: 'ok' });
    expect(uploadIn(backend)).toBe(0);
    ping(c.name, 3);
    const c2 = uploadIn(backend);
    expect(c2).toBeGreaterThan(3 * 1000);
    const last = manager(['traffic', list, '--db', db, '--limits', raised]);
    expect(usageOf(last.stdout)).toMatchObject({ upload: c1 + c2, state: 'ok' });

    // traffic-off removes the system counters (in every backend), the instance's stay with the plugin.
    expect(manager(['traffic-off']).code).toBe(0);
    expect(legacyFilter()).not.toContain('AOS_SYSTEM');
    expect([...nftCounters().keys()].filter((k) => k.startsWith('AOS_SYSTEM'))).toEqual([]);
    expect(uploadIn(backend)).toBe(c2);
  }, 240_000);
});
