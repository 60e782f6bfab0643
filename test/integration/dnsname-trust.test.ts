import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, lchownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, Sandbox } from '../helpers/sandbox.js';
import { resolve } from '../helpers/traffic.js';

/**
 * dnsname against another user on the machine (issue 13): a fake dnsmasq
 * carrying the network's --conf-file, an XDG_RUNTIME_DIR that user owns
 * with a planted lock symlink, symlinks inside our own tree, and input that
 * names Object.prototype's keys. The "other user" is uid 65534 (nobody).
 */
const BRIDGE = join(BIN, 'bridge');
const DNSNAME = join(BIN, 'dnsname');
const NOBODY = 65534;
let sb: Sandbox;
let xdg: string;
/** Things outside sb.dir this test made (the other user's dirs, /run entries), removed after each test. */
let extra: string[];
let fakes: ChildProcess[];
beforeEach(() => {
  sb = new Sandbox('dnst');
  xdg = join(sb.dir, 'xdg');
  extra = [];
  fakes = [];
});
afterEach(() => {
  for (const f of fakes) f.kill('SIGKILL');
  // A dnsmasq started for a network under /run has no sb.dir in its command line: found by its conf path.
  for (const dir of extra) {
    for (const pid of pidsMentioning(dir)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    rmSync(dir, { recursive: true, force: true });
  }
  sb.cleanup();
});

function pidsMentioning(text: string): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    try {
      if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(text)) out.push(pid);
    } catch {
      // gone
    }
  }
  return out;
}

/** The real dnsmasq processes for a config path: root's, running the dnsmasq binary. */
function realDnsmasq(confPath: string): number[] {
  return pidsMentioning(`--conf-file=${confPath}`).filter((pid) => {
    try {
      return readlinkSync(`/proc/${pid}/exe`) === '/usr/sbin/dnsmasq' && /^Uid:\s+0\s+0\b/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
    } catch {
      return false;
    }
  });
}

interface Net {
  name: string;
  bridge: string;
  subnet: string;
  domain: string;
}
const NET_A: Net = { name: 'neta', bridge: 'dnsa0', subnet: '10.72.1.0/24', domain: 'a.lan' };

const treeOf = (base: string) => join(base, 'containers/cni/dnsname');
const call = (command: string, id: string, path: string, name: string, xdgDir: string | undefined) => ({
  command, containerId: id, netns: path, args: `IgnoreUnknown=1;K8S_POD_NAME=${name}`, env: (xdgDir === undefined ? {} : { XDG_RUNTIME_DIR: xdgDir }) as Record<string, string>,
});
function dnsConf(net: Net, aliases: Record<string, string[]>, prevResult?: unknown) {
  return {
    cniVersion: '1.0.0', name: net.name, type: 'dnsname', domainName: net.domain,
    capabilities: { aliases: true }, runtimeConfig: { aliases }, ...(prevResult ? { prevResult } : {}),
  };
}

/** bridge, then dnsname; returns the dnsname run without asserting on it. */
function addInstance(net: Net, id: string, name: string, aliases: Record<string, string[]>, xdgDir: string | undefined = xdg) {
  const c = sb.container();
  const b = sb.plugin(BRIDGE, { command: 'ADD', containerId: id, netns: c.path }, {
    cniVersion: '1.0.0', name: net.name, type: 'bridge', bridge: net.bridge, isGateway: true,
    ipam: { type: 'host-local', subnet: net.subnet, dataDir: join(sb.dir, 'ipam') },
  });
  expect(b.code, b.stdout + b.stderr).toBe(0);
  const conf = dnsConf(net, aliases, b.json);
  const d = sb.plugin(DNSNAME, call('ADD', id, c.path, name, xdgDir), conf);
  return { ns: c.name, path: c.path, id, name, conf, d, ip: b.json.ips[0].address.split('/')[0] as string };
}
const run = (i: ReturnType<typeof addInstance>, command: string, xdgDir: string | undefined = xdg) => sb.plugin(DNSNAME, call(command, i.id, i.path, i.name, xdgDir), i.conf);

/** A directory of the other user (mode 0755 so that root's test can look in). */
function nobodyDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'cnits-nobody-'));
  extra.push(d);
  chownSync(d, NOBODY, NOBODY);
  return d;
}

/**
 * The other user's fake dnsmasq: bash with argv[0] "/usr/sbin/dnsmasq" and
 * the network's --conf-file on its command line, recording every SIGHUP and
 * SIGTERM it gets into <dir>/record.
 */
async function fakeDnsmasq(dir: string, confPath: string, uid = NOBODY): Promise<ChildProcess> {
  const script = 'trap \'echo HUP >> "$0/record"\' HUP; trap \'echo TERM >> "$0/record"\' TERM; : > "$0/ready"; while :; do sleep 1 & wait $!; done';
  const child = spawn('/bin/bash', ['-c', script, dir, `--conf-file=${confPath}`], { argv0: '/usr/sbin/dnsmasq', uid, gid: uid, stdio: 'ignore' });
  fakes.push(child);
  for (let i = 0; i < 200 && !existsSync(join(dir, 'ready')); i++) await new Promise((r) => setTimeout(r, 25));
  expect(existsSync(join(dir, 'ready'))).toBe(true);
  expect(readFileSync(`/proc/${child.pid}/cmdline`, 'utf8').split('\0')).toEqual(expect.arrayContaining(['/usr/sbin/dnsmasq', `--conf-file=${confPath}`]));
  return child;
}
const lchown = (p: string) => lchownSync(p, NOBODY, NOBODY);
const alive = (c: ChildProcess) => c.exitCode === null && c.signalCode === null && existsSync(`/proc/${c.pid}`);

describe('dnsname trusts only its own dnsmasq', () => {
  it('a fake "dnsmasq" of another user with the network\'s --conf-file is never signalled; a real one is started', async () => {
    const conf = join(treeOf(xdg), NET_A.name, 'dnsmasq.conf');
    const rec = nobodyDir();
    const fake = await fakeDnsmasq(rec, conf);
    const web = addInstance(NET_A, 'c-web', 'web', {});
    expect(web.d.code, web.d.stdout + web.d.stderr).toBe(0);
    expect(realDnsmasq(conf)).toHaveLength(1);
    expect(resolve(sb.dir, web.ns, '10.72.1.1', 'web.a.lan')).toBe(web.ip);
    // The pidfile now names the fake: still not signalled, the real one is reloaded.
    writeFileSync(join(treeOf(xdg), NET_A.name, 'pidfile'), `${fake.pid}\n`);
    const db = addInstance(NET_A, 'c-db', 'db', {});
    expect(db.d.code, db.d.stdout + db.d.stderr).toBe(0);
    expect(resolve(sb.dir, web.ns, '10.72.1.1', 'db.a.lan')).toBe(db.ip);
    expect(run(web, 'CHECK').code).toBe(0);
    expect(run(db, 'DEL').code).toBe(0);
    expect(run(web, 'DEL').code).toBe(0);
    expect(realDnsmasq(conf)).toEqual([]);
    expect(existsSync(join(rec, 'record'))).toBe(false);
    expect(alive(fake)).toBe(true);
  });

  it('a root process that is not the dnsmasq binary (argv[0] "dnsmasq") is not taken for it either', async () => {
    const conf = join(treeOf(xdg), NET_A.name, 'dnsmasq.conf');
    const rec = mkdtempSync(join(sb.dir, 'fake-'));
    const fake = await fakeDnsmasq(rec, conf, 0);
    const web = addInstance(NET_A, 'c-web', 'web', {});
    expect(web.d.code, web.d.stdout + web.d.stderr).toBe(0);
    expect(resolve(sb.dir, web.ns, '10.72.1.1', 'web.a.lan')).toBe(web.ip);
    expect(run(web, 'DEL').code).toBe(0);
    expect(existsSync(join(rec, 'record'))).toBe(false);
    expect(alive(fake)).toBe(true);
  });
});

describe('dnsname as root: XDG_RUNTIME_DIR and symlinks', () => {
  it('ignores an XDG_RUNTIME_DIR owned by another user (its planted lock symlinks are never followed)', () => {
    const theirs = nobodyDir();
    // A network name of its own: the ADD goes to /run/containers/cni/dnsname, shared with the machine.
    const net: Net = { ...NET_A, name: `cnits-trust-${process.pid}` };
    const runDir = join('/run/containers/cni/dnsname', net.name);
    expect(existsSync(runDir)).toBe(false);
    extra.push(runDir);
    const planted = join(treeOf(theirs), net.name);
    mkdirSync(planted, { recursive: true });
    for (const p of [join(theirs, 'containers'), join(theirs, 'containers/cni'), treeOf(theirs), planted]) chownSync(p, NOBODY, NOBODY);
    const targets = ['pwned-lock', 'pwned-netlock', 'pwned-state', 'pwned-conf'].map((t) => join(sb.dir, t));
    symlinkSync(targets[0], join(treeOf(theirs), 'lock'));
    symlinkSync(targets[1], join(planted, 'lock'));
    symlinkSync(targets[2], join(planted, 'state.json'));
    symlinkSync(targets[3], join(planted, 'dnsmasq.conf'));
    for (const p of [treeOf(theirs), planted]) for (const f of readdirSync(p)) if (lstatSync(join(p, f)).isSymbolicLink()) lchown(join(p, f));

    const web = addInstance(net, 'c-web', 'web', {}, theirs);
    expect(web.d.code, web.d.stdout + web.d.stderr).toBe(0);
    for (const t of targets) expect(existsSync(t), t).toBe(false);
    expect(readdirSync(planted).sort()).toEqual(['dnsmasq.conf', 'lock', 'state.json']); // nothing written into their dir
    expect(existsSync(join(runDir, 'state.json'))).toBe(true); // root's own tree was used instead
    expect(resolve(sb.dir, web.ns, '10.72.1.1', 'web.a.lan')).toBe(web.ip);
    expect(run(web, 'DEL', theirs).code).toBe(0);
    expect(existsSync(runDir)).toBe(false);
    expect(realDnsmasq(join(runDir, 'dnsmasq.conf'))).toEqual([]);
    for (const t of targets) expect(existsSync(t), t).toBe(false);
  });

  it('a symlinked lock, state.json or temp file inside root\'s own tree is not followed', () => {
    const tree = treeOf(xdg);
    mkdirSync(join(tree, NET_A.name), { recursive: true, mode: 0o700 });
    const target = join(sb.dir, 'target');
    writeFileSync(target, 'keep\n');

    // The lock: ADD refuses, the target is untouched.
    symlinkSync(join(sb.dir, 'pwned-lock'), join(tree, 'lock'));
    const r1 = addInstance(NET_A, 'c1', 'one', {});
    expect(r1.d.code).toBe(1);
    expect(r1.d.json).toMatchObject({ code: expect.any(Number), msg: expect.stringMatching(/lock/) });
    expect(existsSync(join(sb.dir, 'pwned-lock'))).toBe(false);
    rmSync(join(tree, 'lock'));

    // state.json: refused, the target keeps its content.
    symlinkSync(target, join(tree, NET_A.name, 'state.json'));
    const r2 = addInstance(NET_A, 'c2', 'two', {});
    expect(r2.d.code).toBe(1);
    expect(r2.d.json.msg).toMatch(/state\.json/);
    expect(readFileSync(target, 'utf8')).toBe('keep\n');
    rmSync(join(tree, NET_A.name, 'state.json'));

    // Temp files the writer uses: replaced, never written through.
    for (const f of ['.addnhosts.tmp', '.state.json.tmp', '.dnsmasq.conf.tmp']) symlinkSync(join(sb.dir, `pwned${f}`), join(tree, NET_A.name, f));
    const r3 = addInstance(NET_A, 'c3', 'three', {});
    expect(r3.d.code, r3.d.stdout + r3.d.stderr).toBe(0);
    for (const f of ['.addnhosts.tmp', '.state.json.tmp', '.dnsmasq.conf.tmp']) expect(existsSync(join(sb.dir, `pwned${f}`)), f).toBe(false);
    expect(resolve(sb.dir, r3.ns, '10.72.1.1', 'three.a.lan')).toBe(r3.ip);
    expect(run(r3, 'DEL').code).toBe(0);
  });

  it('refuses a network directory owned by another user, and a tree directory group/other may write', () => {
    const tree = treeOf(xdg);
    mkdirSync(join(tree, NET_A.name), { recursive: true, mode: 0o700 });
    chownSync(join(tree, NET_A.name), NOBODY, NOBODY);
    const r1 = addInstance(NET_A, 'c1', 'one', {});
    expect(r1.d.code).toBe(1);
    expect(r1.d.json.msg).toMatch(/owned by uid 65534/);
    expect(readdirSync(join(tree, NET_A.name))).toEqual([]);
    // The tree itself made writable by others.
    rmSync(join(tree, NET_A.name), { recursive: true });
    chmodSync(tree, 0o777);
    const r2 = addInstance(NET_A, 'c2', 'two', {});
    expect(r2.d.code).toBe(1);
    expect(r2.d.json.msg).toMatch(/writable by group or others/);
    expect(existsSync(join(tree, NET_A.name))).toBe(false);
  });

  it('writes its files 0600 in 0700 directories', () => {
    const web = addInstance(NET_A, 'c-web', 'web', { [NET_A.name]: ['www'] });
    expect(web.d.code, web.d.stdout + web.d.stderr).toBe(0);
    const dir = join(treeOf(xdg), NET_A.name);
    for (const d of [treeOf(xdg), dir]) expect((statSync(d).mode & 0o777).toString(8), d).toBe('700');
    for (const f of ['dnsmasq.conf', 'addnhosts', 'localservers.conf', 'ownservers.conf', 'state.json']) {
      expect((statSync(join(dir, f)).mode & 0o777).toString(8), f).toBe('600');
    }
    expect((statSync(join(treeOf(xdg), 'lock')).mode & 0o777).toString(8)).toBe('600');
    expect(resolve(sb.dir, web.ns, '10.72.1.1', 'www.a.lan')).toBe(web.ip); // dnsmasq still reads them
    expect(run(web, 'DEL').code).toBe(0);
  });
});

describe('dnsname: input that names Object.prototype keys', () => {
  for (const name of ['constructor', 'toString', 'hasOwnProperty']) {
    it(`a network named ${name}, with and without aliases for it`, () => {
      const net: Net = { ...NET_A, name };
      const a = addInstance(net, 'c-a', 'alpha', { [name]: ['www'], other: ['x'] });
      expect(a.d.code, a.d.stdout + a.d.stderr).toBe(0);
      const b = addInstance(net, 'c-b', 'beta', { other: ['y'] }); // no aliases for this network
      expect(b.d.code, b.d.stdout + b.d.stderr).toBe(0);
      expect(resolve(sb.dir, b.ns, '10.72.1.1', 'www.a.lan')).toBe(a.ip);
      expect(resolve(sb.dir, a.ns, '10.72.1.1', 'beta.a.lan')).toBe(b.ip);
      expect(run(a, 'CHECK').code).toBe(0);
      expect(run(b, 'CHECK').code).toBe(0);
      expect(run(a, 'DEL').code).toBe(0);
      expect(run(b, 'DEL').code).toBe(0);
      expect(existsSync(join(treeOf(xdg), name))).toBe(false);
    });
  }

  it('aliases named after Object.prototype keys', () => {
    const a = addInstance(NET_A, 'c-a', 'alpha', { [NET_A.name]: ['constructor', 'tostring'] });
    expect(a.d.code, a.d.stdout + a.d.stderr).toBe(0);
    expect(resolve(sb.dir, a.ns, '10.72.1.1', 'constructor.a.lan')).toBe(a.ip);
    expect(run(a, 'CHECK').code).toBe(0);
    expect(run(a, 'DEL').code).toBe(0);
  });
});
