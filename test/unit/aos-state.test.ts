import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { StateFile, type AccessChain } from '../../plugins/aos-firewall/state.js';

// aos-firewall's state file is rewritten in place (it is its own lock). A
// plugin killed between the truncation and the write used to leave it empty,
// which reads as "no instances": every other instance's entry was lost
// (found by test/integration/crash.test.ts, a timed kill beside a neighbour).
// The whole new content is journaled first; the next update completes it.
let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'aos-state-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const entry = (id: string) => ({ name: `CNI-${id}`, containerID: id }) as unknown as AccessChain;

describe('aos-firewall state file', () => {
  it('writes leave no journal behind', async () => {
    const f = new StateFile(join(dir, 'aos_chains.conf'));
    await f.update((m) => {
      m.set('a', entry('a'));
    });
    expect(JSON.parse(readFileSync(f.path, 'utf8'))).toEqual({ a: entry('a') });
    expect(existsSync(`${f.path}.journal`)).toBe(false);
  });

  it('a writer killed after journaling, with the file truncated: readers see the journal, the next update completes it', async () => {
    const f = new StateFile(join(dir, 'aos_chains.conf'));
    await f.update((m) => {
      m.set('neighbour', entry('neighbour'));
    });
    // What a process killed inside write() leaves: the journal whole, the file cut.
    writeFileSync(`${f.path}.journal`, JSON.stringify({ neighbour: entry('neighbour'), k: entry('k') }));
    writeFileSync(f.path, '');
    expect(f.read().keys()).toEqual(['neighbour', 'k']);
    await f.update((m) => {
      m.delete('k');
    });
    expect(JSON.parse(readFileSync(f.path, 'utf8'))).toEqual({ neighbour: entry('neighbour') });
    expect(existsSync(`${f.path}.journal`)).toBe(false);
  });

  it('a writer killed while writing the journal aside: the file stands, the scrap goes', async () => {
    const f = new StateFile(join(dir, 'aos_chains.conf'));
    await f.update((m) => {
      m.set('neighbour', entry('neighbour'));
    });
    writeFileSync(`${f.path}.journal.tmp`, '{"neighb');
    await f.update(() => undefined);
    expect(f.read().keys()).toEqual(['neighbour']);
    expect(existsSync(`${f.path}.journal.tmp`)).toBe(false);
  });
});
