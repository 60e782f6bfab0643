import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { PLUGIN_NAMES, PLUGINS, registryMismatch } from '../../src/plugins.js';
import { PLUGIN_NAMES as FUZZED } from '../fuzz/generate.js';

/**
 * One registry of plugin names (plugins/registry.json, issue 15): the loader,
 * the build, the Makefile (make install) and the benchmarks all read it, and
 * nothing that reads it can disagree with another reader.
 */
const root = join(__dirname, '../..');
const registry: string[] = JSON.parse(readFileSync(join(root, 'plugins/registry.json'), 'utf8')).plugins;
const tmp = mkdtempSync(join(tmpdir(), 'cnits-registry-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const run = (argv: string[]) => spawnSync(argv[0], argv.slice(1), { cwd: root, encoding: 'utf8', env: { PATH: process.env.PATH } });

describe('the plugin registry', () => {
  it('the loader (src/plugins.ts) has exactly the registered plugins, in the registry\'s order, each a function', () => {
    expect(registry.length).toBeGreaterThan(0);
    expect(PLUGIN_NAMES).toEqual(registry);
    expect(Object.keys(PLUGINS)).toEqual(registry);
    for (const n of registry) expect(typeof PLUGINS[n]).toBe('function');
    expect(Object.getPrototypeOf(PLUGINS)).toBeNull();
  });

  it('a loader table that differs from the registry is caught both ways (src/plugins.ts refuses to load, so the build fails)', () => {
    const loaders = Object.fromEntries(registry.map((n) => [n, () => undefined]));
    expect(registryMismatch(registry, loaders)).toEqual({ unloadable: [], unregistered: [] });
    const { [registry[1]]: _dropped, ...fewer } = loaders;
    expect(registryMismatch(registry, fewer)).toEqual({ unloadable: [registry[1]], unregistered: [] });
    expect(registryMismatch(registry, { ...loaders, macvlan: () => undefined })).toEqual({ unloadable: [], unregistered: ['macvlan'] });
    expect(registryMismatch([...registry, 'constructor'], loaders).unloadable).toEqual(['constructor']);
  });

  it('scripts/registry.mjs (the build, make install, the benchmarks) and the Makefile read the same names', () => {
    const cli = run(['node', 'scripts/registry.mjs']);
    expect(cli.stderr).toBe('');
    expect(cli.stdout.trim().split(' ')).toEqual(registry);
    const make = run(['make', '-s', '--no-print-directory', '--eval', 'print-plugins: ; @echo $(PLUGINS)', 'print-plugins']);
    expect(make.stdout.trim().split(' ')).toEqual(registry);
  });

  it('make install\'s check fails on a directory missing a registered plugin\'s link, names it, and passes a complete one', () => {
    const dir = join(tmp, 'bin');
    mkdirSync(dir);
    for (const f of ['cni-ts', 'cni-ts-client']) writeFileSync(join(dir, f), '');
    for (const p of registry.slice(1)) symlinkSync('cni-ts-client', join(dir, p));
    symlinkSync('cni-ts', join(dir, 'cni-manager'));
    const missing = run(['node', 'scripts/registry.mjs', '--check-bin', dir]);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toContain(`${join(dir, registry[0])} is missing`);
    symlinkSync('cni-ts', join(dir, registry[0])); // a link to the wrong file
    expect(run(['node', 'scripts/registry.mjs', '--check-bin', dir]).stderr).toContain(`${join(dir, registry[0])} is not a link to cni-ts-client`);
    rmSync(join(dir, registry[0]));
    symlinkSync('cni-ts-client', join(dir, registry[0]));
    const complete = run(['node', 'scripts/registry.mjs', '--check-bin', dir]);
    expect(complete.stderr).toBe('');
    expect(complete.status).toBe(0);
  });

  it('the registry refuses a name without plugins/<name>/index.ts, a duplicate, a reserved name', () => {
    for (const [plugins, why] of [
      [[...registry, 'macvlan'], 'macvlan has no plugins/macvlan/index.ts'],
      [[...registry, registry[0]], `${registry[0]} is listed twice`],
      [['cni-manager'], 'cni-manager is not a plugin'],
      [['../bridge'], '"../bridge" is not a plugin name'],
    ] as const) {
      const file = join(tmp, 'registry.json');
      writeFileSync(file, JSON.stringify({ plugins }));
      const r = run(['node', '--input-type=module', '-e', `import { readRegistry } from './scripts/registry.mjs'; readRegistry(${JSON.stringify(file)});`]);
      expect(r.status, r.stderr).toBe(1);
      expect(r.stderr).toContain(why);
    }
  });

  it('the fuzzer has a generator for every registered plugin (test/integration/fuzz.test.ts fuzzes only those)', () => {
    expect(registry.filter((p) => !(FUZZED as readonly string[]).includes(p))).toEqual([]);
  });
});
