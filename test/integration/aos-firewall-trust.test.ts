import { chmodSync, chownSync, existsSync, rmSync, mkdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, Sandbox } from '../helpers/sandbox.js';

/**
 * aos-firewall with uuids that name Object.prototype keys, and its state
 * file against symlinks and other users' directories (issue 13).
 */
const BRIDGE = join(BIN, 'bridge');
const FW = join(BIN, 'aos-firewall');
let sb: Sandbox;
let statePath: string;
beforeEach(() => {
  sb = new Sandbox('aost');
  statePath = join(sb.dir, 'state', 'aos_chains.conf');
});
afterEach(() => sb.cleanup());

const fwConf = (uuid: string, extra: Record<string, unknown> = {}) => ({
  cniVersion: '0.4.0', name: 'aosnet', type: 'aos-firewall', uuid, iptablesAdminChainName: `INSTANCE_${uuid}`, runtimeStatePath: statePath,
  inputAccess: [{ port: '8080', protocol: 'tcp' }], ...extra,
});

/** A container on the bridge; its CNI_CONTAINERID is derived (the runtime's id rules refuse "__proto__"), the uuid is the firewall's key. */
let seq = 0;
function bridged(_uuid: string) {
  const id = `ctr-${++seq}`;
  const c = sb.container();
  const br = sb.plugin(BRIDGE, { command: 'ADD', containerId: id, netns: c.path }, {
    cniVersion: '0.4.0', name: 'aosnet', type: 'bridge', bridge: 'br-aos', isGateway: true,
    ipam: { type: 'host-local', subnet: '10.62.1.0/24', dataDir: join(sb.dir, 'ipam') },
  });
  expect(br.code, br.stdout + br.stderr).toBe(0);
  return { path: c.path, prev: br.json, ip: br.json.ips[0].address.split('/')[0] as string };
}
const fw = (command: string, uuid: string, path: string, prev: unknown, extra: Record<string, unknown> = {}) =>
  sb.plugin(FW, { command, containerId: `c-${Buffer.from(uuid).toString('hex')}`, netns: path }, { ...fwConf(uuid, extra), ...(prev ? { prevResult: prev } : {}) });
const filter = () => sb.inHost(['iptables-save', '-t', 'filter']).stdout.replace(/^#.*\n/gm, '');
/** The state file's own keys (JSON.parse makes "__proto__" an own key). */
const stateKeys = () => Object.keys(JSON.parse(readFileSync(statePath, 'utf8')));

describe('aos-firewall: uuids named after Object.prototype keys', () => {
  it('ADD, CHECK and DEL work for constructor, __proto__ and toString beside a normal uuid', () => {
    const uuids = ['constructor', '__proto__', 'toString', 'aaaaaaaa-0000-4000-8000-000000000001'];
    const made = uuids.map((u) => ({ uuid: u, ...bridged(u) }));
    for (const m of made) {
      const r = fw('ADD', m.uuid, m.path, m.prev);
      expect(r.code, `${m.uuid}: ${r.stdout}${r.stderr}`).toBe(0);
    }
    expect(stateKeys().sort()).toEqual([...uuids].sort());
    for (const m of made) expect(filter()).toContain(`-A AOS-FORWARD-PORT -d ${m.ip}/32`);
    for (const m of made) {
      const r = fw('CHECK', m.uuid, m.path, m.prev);
      expect(r.code, `${m.uuid}: ${r.stdout}`).toBe(0);
    }
    // A re-ADD of each keeps one entry each.
    for (const m of made) expect(fw('ADD', m.uuid, m.path, m.prev).code).toBe(0);
    expect(stateKeys().sort()).toEqual([...uuids].sort());
    for (const m of made.slice(0, 3)) {
      const r = fw('DEL', m.uuid, m.path, undefined);
      expect(r.code, `${m.uuid}: ${r.stdout}`).toBe(0);
      expect(filter()).not.toContain(`${m.ip}/32`);
      expect(fw('CHECK', m.uuid, m.path, m.prev).json.code).toBe(115);
    }
    expect(stateKeys()).toEqual([uuids[3]]);
    expect(fw('CHECK', made[3].uuid, made[3].path, made[3].prev).code).toBe(0);
    // DEL of a uuid never added, named after a prototype key: nothing to do, success.
    expect(fw('DEL', 'hasOwnProperty', made[3].path, undefined).code).toBe(0);
    expect(stateKeys()).toEqual([uuids[3]]);
  });

  it('a state file the Aos original wrote (nulls, unknown fields kept) is read; a malformed entry fails only its own uuid', () => {
    const m = bridged('u1');
    mkdirSync(join(sb.dir, 'state'), { mode: 0o700 });
    const foreign = {
      name: 'CNI-00000000000000000000000', containerID: 'other', address: { IP: '10.62.1.200', Mask: '////AA==' }, gateway: '10.62.1.1', gatewayPrefixLen: '24',
      publicInterface: '', outRules: null, inputPortsUDP: null, inputPortsTCP: null, hasInternetConnection: false, futureField: 7,
    };
    writeFileSync(statePath, JSON.stringify({ other: foreign }, null, ' '), { mode: 0o600 });
    expect(fw('ADD', 'u1', m.path, m.prev).code).toBe(0);
    const state = JSON.parse(readFileSync(statePath, 'utf8'));
    expect(state.other).toEqual(foreign);
    writeFileSync(statePath, JSON.stringify({ ...state, bad: { name: 7 } }));
    const r = fw('DEL', 'bad', m.path, undefined);
    expect(r.code).toBe(1);
    expect(r.json).toMatchObject({ code: 6, msg: 'state entry "bad" is malformed' });
    expect(fw('DEL', 'u1', m.path, undefined).code).toBe(0);
    expect(JSON.parse(readFileSync(statePath, 'utf8'))).toEqual({ other: foreign, bad: { name: 7 } }); // kept as they were
  });
});

describe('aos-firewall: the state file is root\'s', () => {
  it('is written 0600', () => {
    const m = bridged('u1');
    expect(fw('ADD', 'u1', m.path, m.prev).code).toBe(0);
    expect((statSync(statePath).mode & 0o777).toString(8)).toBe('600');
    expect(fw('DEL', 'u1', m.path, undefined).code).toBe(0);
    expect((statSync(statePath).mode & 0o777).toString(8)).toBe('600');
  });

  it('a symlink at the state path or its journal is not followed', () => {
    const m = bridged('u1');
    mkdirSync(join(sb.dir, 'state'), { mode: 0o700 });
    const target = join(sb.dir, 'target');
    symlinkSync(target, statePath);
    const r = fw('ADD', 'u1', m.path, m.prev);
    expect(r.code).toBe(1);
    expect(r.json.msg).toMatch(/aos_chains\.conf/);
    expect(existsSync(target)).toBe(false);
    expect(filter()).not.toContain(`${m.ip}/32`);
    // The journal's temp file (a new file each write): replaced, not written through.
    rmSync(statePath);
    symlinkSync(target, `${statePath}.journal.tmp`);
    expect(fw('ADD', 'u1', m.path, m.prev).code).toBe(0);
    expect(existsSync(target)).toBe(false);
    expect(fw('DEL', 'u1', m.path, undefined).code).toBe(0);
  });

  it('refuses a state directory owned by another user or writable by others', () => {
    const m = bridged('u1');
    mkdirSync(join(sb.dir, 'state'), { mode: 0o700 });
    chownSync(join(sb.dir, 'state'), 65534, 65534);
    const r = fw('ADD', 'u1', m.path, m.prev);
    expect(r.code).toBe(1);
    expect(r.json.msg).toMatch(/owned by uid 65534/);
    expect(existsSync(statePath)).toBe(false);
    chownSync(join(sb.dir, 'state'), 0, 0);
    chmodSync(join(sb.dir, 'state'), 0o777);
    const r2 = fw('ADD', 'u1', m.path, m.prev);
    expect(r2.code).toBe(1);
    expect(r2.json.msg).toMatch(/writable by group or others/);
    expect(existsSync(statePath)).toBe(false);
  });
});
