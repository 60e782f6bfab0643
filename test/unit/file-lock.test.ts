import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { withFileLock } from '../../lib/exec/lock.js';
import { start } from '../../lib/exec/index.js';

// withFileLock: other processes are waited for in the kernel (flockWait with
// a SIGALRM timer aimed at this thread), callers in this process queue in
// front of it. A holder here is `flock(1)` from util-linux in a child.
let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'cnits-lock-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const timeoutError = () => new Error('timed out');

/** A child holding the lock on path for ms; resolves once it holds it (a non-blocking probe then fails). */
async function holder(path: string, ms: number): Promise<ReturnType<typeof spawn>> {
  const child = spawn('flock', ['-x', path, 'sleep', String(ms / 1000)], { stdio: 'ignore' });
  while (spawnSync('flock', ['-n', path, 'true']).status === 0) await new Promise((r) => setTimeout(r, 5));
  return child;
}

describe('withFileLock', () => {
  it('waits for another process and takes the lock as soon as it lets go', async () => {
    const path = join(dir, 'lock');
    // Measured from before the holder starts: its 400 ms sleep begins only after it
    // holds the lock, so a taker that waited for it cannot be in sooner, however slow
    // the machine (timing from after the probe saw the lock was flaky under load).
    const t0 = Date.now();
    const child = await holder(path, 400);
    const got = await withFileLock(path, { timeoutMs: 10_000, timeoutError }, () => 'mine');
    expect(got).toBe('mine');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(400); // it did wait for the holder
    child.kill();
  });

  it('gives up after the timeout with the caller\'s error, and SIGALRM is left as it was', async () => {
    const path = join(dir, 'lock');
    const child = await holder(path, 5000);
    const t0 = Date.now();
    await expect(withFileLock(path, { timeoutMs: 300, timeoutError }, () => 'never')).rejects.toThrow('timed out');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(290);
    child.kill();
    // The default disposition of SIGALRM (terminate) is back: a child that sends itself one dies of it.
    expect(spawnSync(process.execPath, ['-e', "process.kill(process.pid, 'SIGALRM'); setTimeout(() => {}, 1000)"]).signal).toBe('SIGALRM');
    expect(process.listenerCount('SIGALRM')).toBe(0);
  });

  it('callers in one process take turns instead of blocking each other', async () => {
    const path = join(dir, 'lock');
    const order: string[] = [];
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
    await Promise.all([
      withFileLock(path, { timeoutMs: 2000, timeoutError }, async () => { order.push('a+'); await sleep(50); order.push('a-'); }),
      withFileLock(path, { timeoutMs: 2000, timeoutError }, async () => { order.push('b+'); await sleep(10); order.push('b-'); }),
      withFileLock(path, { timeoutMs: 2000, timeoutError }, () => { order.push('c'); }),
    ]);
    expect(order).toEqual(['a+', 'a-', 'b+', 'b-', 'c']);
    // A failing holder passes the lock on too.
    await expect(withFileLock(path, { timeoutMs: 100, timeoutError }, () => { throw new Error('boom'); })).rejects.toThrow('boom');
    expect(await withFileLock(path, { timeoutMs: 100, timeoutError }, () => 1)).toBe(1);
  });

  it('a child handed the lock fd keeps the lock after the holder let go (an iptables-restore outliving its plugin)', async () => {
    const path = join(dir, 'lock');
    const probe = () => spawnSync('flock', ['-n', path, 'true']).status;
    let child: ReturnType<typeof start> | undefined;
    await withFileLock(path, { timeoutMs: 1000, timeoutError }, (fd) => {
      child = start('sleep', ['0.6'], { inheritFds: [fd] });
    });
    expect(probe()).toBe(1); // we closed our fd; the child's copy still holds it
    expect((await child!.finish('')).code).toBe(0);
    expect(probe()).toBe(0);
  });
});
