import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ALL_FAILPOINTS, FP, isFailpoint, type Failpoint } from '../../lib/cni/failpoints.js';

/**
 * Failpoints are named constants (lib/cni/failpoints.ts, issue 15): trace()
 * takes only those, crash.test.ts imports them, and every one is passed.
 */
const root = join(__dirname, '../..');

function sources(dir: string): string[] {
  return readdirSync(join(root, dir)).flatMap((e) => {
    const rel = join(dir, e);
    if (statSync(join(root, rel)).isDirectory()) return sources(rel);
    return rel.endsWith('.ts') ? [rel] : [];
  });
}
const files = ['src', 'lib', 'plugins', 'manager'].flatMap(sources).filter((f) => f !== 'lib/cni/trace.ts' && f !== 'lib/cni/failpoints.ts');
/** Every trace(…) call of the suite: file and argument text. */
const calls = files.flatMap((f) => [...readFileSync(join(root, f), 'utf8').matchAll(/\btrace\(([^()]*)\)/g)].map((m) => ({ file: f, arg: m[1].trim() })));

describe('failpoints', () => {
  it('labels are unique, and each is `<group>: <what>` except the entry\'s', () => {
    expect(ALL_FAILPOINTS.length).toBeGreaterThan(40);
    expect(new Set(ALL_FAILPOINTS).size).toBe(ALL_FAILPOINTS.length);
    const entry = new Set<string>(Object.values(FP.entry));
    for (const l of ALL_FAILPOINTS) {
      if (!entry.has(l)) expect(l).toMatch(/^[a-z-]+: [a-z0-9 -]+$/);
      expect(isFailpoint(l)).toBe(true);
    }
    expect(isFailpoint('bridge: nothing like it')).toBe(false);
  });

  it('every trace() call passes a constant of FP, and every constant is passed somewhere', () => {
    expect(calls.length).toBeGreaterThanOrEqual(ALL_FAILPOINTS.length);
    expect(calls.filter((c) => !/^FP\.\w+\.\w+$/.test(c.arg))).toEqual([]);
    const used = new Set(calls.map((c) => c.arg));
    const declared = Object.entries(FP).flatMap(([g, labels]) => Object.keys(labels).map((k) => `FP.${g}.${k}`));
    expect(declared.filter((d) => !used.has(d))).toEqual([]);
    expect([...used].filter((u) => !declared.includes(u))).toEqual([]);
  });

  it('a string is no failpoint to the type checker', () => {
    // @ts-expect-error only FP's constants are failpoints (`npx tsc -p .` fails if a plain string is accepted)
    const plain: Failpoint = 'done';
    expect(plain).toBe(FP.entry.done);
  });
});
