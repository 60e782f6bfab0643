import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, Sandbox } from '../helpers/sandbox.js';

/**
 * Names that come from outside — the name the binary is invoked by, a
 * delegated plugin's `type` in a config — are looked up in the plugin
 * table; a name that is a member of every JavaScript object (`constructor`,
 * `toString`, `__proto__`) must be no plugin, not a crash (code 999 and a
 * stack trace before).
 */
let sb: Sandbox;
beforeEach(() => {
  sb = new Sandbox('keys');
});
afterEach(() => sb.cleanup());

describe('names from input are not object members', () => {
  for (const name of ['constructor', 'toString', '__proto__']) {
    it(`the binary invoked as "${name}" is no plugin`, () => {
      const r = spawnSync(join(BIN, 'cni-ts'), [], { argv0: name, input: '{"cniVersion":"1.0.0","name":"n","type":"x"}', env: { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'k1', CNI_NETNS: '/nonexistent', CNI_IFNAME: 'eth0', CNI_PATH: BIN }, encoding: 'utf8' });
      expect(r.status).toBe(1);
      expect(r.stdout).toBe('');
      expect(r.stderr).toContain(`invoked as "${name}"`);
      expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
    });

    it(`an ipam type "${name}" is a delegated plugin that is not found, not a crash`, () => {
      const c = sb.container();
      const conf = { cniVersion: '1.0.0', name: 'keysnet', type: 'bridge', bridge: 'keys0', ipam: { type: name } };
      const r = sb.plugin(join(BIN, 'bridge'), { command: 'ADD', containerId: 'k1', netns: c.path }, conf);
      expect(r.code).toBe(1);
      expect(r.json.code).not.toBe(999);
      expect(r.stderr).not.toMatch(/\n\s+at /);
      expect(sb.inNs(c.name, ['ip', '-o', 'link', 'show']).stdout).not.toContain('eth0');
    });
  }
});
