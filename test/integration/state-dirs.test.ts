import { chownSync, existsSync, mkdirSync, readdirSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, must, Sandbox } from '../helpers/sandbox.js';

/**
 * host-local's store and tuning's saved originals are written as root. A
 * directory another user owns (or can write) lets that user swap a file
 * for a symlink under us, so root would write or lock through it: both
 * plugins refuse such a directory (code 5, nothing written) and never
 * follow a symlink planted in their place.
 */
const NOBODY = 65534;
let sb: Sandbox;
beforeEach(() => {
  sb = new Sandbox('sdir');
});
afterEach(() => sb.cleanup());

/** A directory owned by another user, with `name` in it a symlink to a target root must never create. */
function plantedDir(dir: string, name: string): string {
  const target = join(sb.dir, `pwned-${name}`);
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  symlinkSync(target, join(dir, name));
  chownSync(dir, NOBODY, NOBODY);
  return target;
}

describe('state directories only root controls', () => {
  it("host-local refuses a network directory another user owns, and never follows a planted lock", () => {
    const dataDir = join(sb.dir, 'ipam');
    const target = plantedDir(join(dataDir, 'sdnet'), 'lock');
    const conf = { cniVersion: '1.0.0', name: 'sdnet', type: 'host-local', ipam: { type: 'host-local', subnet: '10.78.0.0/24', dataDir } };
    const c = sb.container();
    const r = sb.plugin(join(BIN, 'host-local'), { command: 'ADD', containerId: 's1', netns: c.path }, conf);
    expect(r.code).toBe(1);
    expect(r.json.code).toBe(5);
    expect(existsSync(target)).toBe(false);
    expect(readdirSync(join(dataDir, 'sdnet'))).toEqual(['lock']); // no allocation written

    // The same symlink in a directory root owns: not followed either.
    const own = join(sb.dir, 'ipam2');
    mkdirSync(join(own, 'sdnet'), { recursive: true, mode: 0o755 });
    const target2 = join(sb.dir, 'pwned-lock2');
    symlinkSync(target2, join(own, 'sdnet', 'lock'));
    const r2 = sb.plugin(join(BIN, 'host-local'), { command: 'ADD', containerId: 's1', netns: c.path }, { ...conf, ipam: { ...conf.ipam, dataDir: own } });
    expect(r2.json.code).toBe(5);
    expect(existsSync(target2)).toBe(false);
  });

  it("tuning refuses a dataDir another user owns: nothing changed, nothing written through a planted file", () => {
    const c = sb.container();
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'add', 'vh-s1', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', c.name]);
    const dataDir = join(sb.dir, 'tuning');
    const target = plantedDir(dataDir, 's1_eth0.json');
    const prevResult = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', sandbox: c.path }], ips: [], dns: {} };
    const conf = { cniVersion: '1.0.0', name: 'sdtun', type: 'tuning', mtu: 1400, dataDir, prevResult };
    const r = sb.plugin(join(BIN, 'tuning'), { command: 'ADD', containerId: 's1', netns: c.path }, conf);
    expect(r.code).toBe(1);
    expect(r.json.code).toBe(5);
    expect(existsSync(target)).toBe(false);
    expect(readdirSync(dataDir)).toEqual(['s1_eth0.json']);
    // Refused before anything changed in the container.
    expect(JSON.parse(must(['ip', 'netns', 'exec', c.name, 'ip', '-j', 'link', 'show', 'eth0']))[0].mtu).toBe(1500);
  });
});
