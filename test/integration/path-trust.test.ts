import { chmodSync, chownSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, Sandbox } from '../helpers/sandbox.js';

/**
 * Tools (iptables-restore, dnsmasq, nft …) are found through the caller's
 * PATH, then the system directories. As root beside other users, a PATH
 * entry another user controls must not stand in for a system tool: the
 * attack puts a fake iptables-restore/-save that leaves a marker into a
 * directory owned by another user (and into a world-writable one) ahead
 * of the real ones; the plugin must run the real tools.
 */
const NOBODY = 65534;
let sb: Sandbox;
beforeEach(() => {
  sb = new Sandbox('path');
});
afterEach(() => sb.cleanup());

function fakeTools(dir: string, marker: string): void {
  mkdirSync(dir, { recursive: true });
  for (const tool of ['iptables-restore', 'iptables-save']) {
    // The fake records that it ran, then behaves like the real tool so a
    // plugin that ran it would still succeed (the marker is the only trace).
    writeFileSync(join(dir, tool), `#!/bin/sh\necho ran >> ${marker}\nexec /usr/sbin/${tool} "$@"\n`, { mode: 0o755 });
    chmodSync(join(dir, tool), 0o755);
  }
}

function masqAdd(path: string) {
  const c = sb.container();
  const conf = { cniVersion: '1.0.0', name: 'pathnet', type: 'bridge', bridge: 'ptr0', isGateway: true, ipMasq: true, ipam: { type: 'host-local', subnet: '10.77.3.0/24', dataDir: join(sb.dir, 'ipam') } };
  const r = sb.plugin(join(BIN, 'bridge'), { command: 'ADD', containerId: 'p1', netns: c.path, env: { PATH: `${path}:/usr/sbin:/usr/bin:/sbin:/bin` } }, conf);
  expect(r.code, r.stdout + r.stderr).toBe(0);
  // The masquerade really happened, through the real iptables.
  expect(sb.inHost(['iptables-save', '-t', 'nat']).stdout).toMatch(/-A POSTROUTING -s 10\.77\.3\.2\/32 .*pathnet.*p1.* -j CNI-/);
}

describe('tools are never taken from a directory another user controls', () => {
  it('skips a PATH directory owned by another user', () => {
    const dir = join(sb.dir, 'evil');
    const marker = join(sb.dir, 'evil-ran');
    fakeTools(dir, marker);
    chownSync(dir, NOBODY, NOBODY);
    for (const t of ['iptables-restore', 'iptables-save']) chownSync(join(dir, t), NOBODY, NOBODY);
    masqAdd(dir);
    expect(existsSync(marker)).toBe(false);
  });

  it('skips a world-writable PATH directory, even one root owns', () => {
    const dir = join(sb.dir, 'open');
    const marker = join(sb.dir, 'open-ran');
    fakeTools(dir, marker);
    chmodSync(dir, 0o777);
    masqAdd(dir);
    expect(existsSync(marker)).toBe(false);
  });

  it('still honours a PATH directory only root controls (the control case)', () => {
    const dir = join(sb.dir, 'admin');
    const marker = join(sb.dir, 'admin-ran');
    fakeTools(dir, marker);
    masqAdd(dir);
    expect(existsSync(marker)).toBe(true);
  });
});
