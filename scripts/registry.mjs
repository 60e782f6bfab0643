// The plugin registry (plugins/registry.json): the one list of plugin names
// the loader (src/plugins.ts), the build (scripts/build.mjs), `make install`
// and the benchmarks read. Imported for PLUGIN_NAMES, or run:
//   node scripts/registry.mjs                 the names, one line, space-separated (the Makefile)
//   node scripts/registry.mjs --check-bin DIR DIR holds cni-ts, cni-ts-client, a link to the
//                                             client per registered plugin and cni-manager -> cni-ts;
//                                             exit 1 naming what is missing (make install, before
//                                             and after copying, so no plugin is skipped silently)
import { existsSync, lstatSync, readFileSync, readlinkSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const REGISTRY = join(root, 'plugins/registry.json');
/** Not plugin names: the files and links beside them. */
const RESERVED = new Set(['cni-ts', 'cni-ts-client', 'cni-manager']);

/** The registered plugin names, checked: unique, link-safe, not reserved, each with plugins/<name>/index.ts. */
export function readRegistry(file = REGISTRY) {
  const names = JSON.parse(readFileSync(file, 'utf8')).plugins;
  if (!Array.isArray(names) || names.length === 0) throw new Error(`${file}: "plugins" must be a non-empty array of names`);
  const seen = new Set();
  for (const n of names) {
    if (typeof n !== 'string' || !/^[a-z][a-z0-9-]*$/.test(n)) throw new Error(`${file}: ${JSON.stringify(n)} is not a plugin name (lower case, digits, '-')`);
    if (RESERVED.has(n)) throw new Error(`${file}: ${n} is not a plugin`);
    if (seen.has(n)) throw new Error(`${file}: ${n} is listed twice`);
    seen.add(n);
    if (!existsSync(join(root, 'plugins', n, 'index.ts'))) throw new Error(`${file}: ${n} has no plugins/${n}/index.ts`);
  }
  return Object.freeze([...names]);
}

export const PLUGIN_NAMES = readRegistry();

/** `names`, each checked to be a registered plugin (a benchmark's subset). */
export function registered(names) {
  const unknown = names.filter((n) => !PLUGIN_NAMES.includes(n));
  if (unknown.length) throw new Error(`not in ${REGISTRY}: ${unknown.join(', ')}`);
  return names;
}

/** What DIR lacks of an installation: [] when every registered plugin is linked to the client. */
export function missingIn(dir) {
  const problems = [];
  const want = [...PLUGIN_NAMES.map((p) => [p, 'cni-ts-client']), ['cni-manager', 'cni-ts']];
  for (const f of ['cni-ts', 'cni-ts-client']) {
    if (!existsSync(join(dir, f))) problems.push(`${join(dir, f)} is missing`);
  }
  for (const [name, to] of want) {
    const link = join(dir, name);
    let st;
    try {
      st = lstatSync(link);
    } catch {
      problems.push(`${link} is missing (registered in plugins/registry.json)`);
      continue;
    }
    if (!st.isSymbolicLink() || readlinkSync(link) !== to) problems.push(`${link} is not a link to ${to}`);
  }
  return problems;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const [cmd, dir] = process.argv.slice(2);
  if (cmd === undefined) {
    console.log(PLUGIN_NAMES.join(' '));
  } else if (cmd === '--check-bin' && dir) {
    const problems = missingIn(dir);
    for (const p of problems) console.error(`registry: ${p}`);
    process.exit(problems.length ? 1 : 0);
  } else {
    console.error('usage: node scripts/registry.mjs [--check-bin DIR]');
    process.exit(2);
  }
}
