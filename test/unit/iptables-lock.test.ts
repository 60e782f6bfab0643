import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { withIptablesLock } from '../../lib/iptables/index.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// The iptables lock (a flock per network namespace) is re-entrant within one
// async call chain, so a plugin can take it before a lock of its own and run
// its transactions inside (aos-firewall: iptables lock, then the state
// file's); calls that are not nested still exclude each other.
describe('withIptablesLock', () => {
  it('a nested call runs without locking again; independent calls in one process still take turns', async () => {
    const order: string[] = [];
    const inner = await withIptablesLock(async () => {
      order.push('outer');
      return withIptablesLock(async () => {
        await sleep(1);
        order.push('inner');
        return 42;
      });
    });
    expect(inner).toBe(42);
    const a = withIptablesLock(async () => {
      order.push('a+');
      await sleep(40);
      order.push('a-');
    });
    const b = withIptablesLock(async () => {
      order.push('b+');
      order.push('b-');
    });
    await Promise.all([a, b]);
    expect(order).toEqual(['outer', 'inner', 'a+', 'a-', 'b+', 'b-']);
  });

  it('is a flock on the network namespace itself (its nsfs file): other processes in it wait', async () => {
    // flock(1) probing without waiting: 1 = held elsewhere.
    const probe = () => spawnSync('flock', ['-n', '/proc/self/ns/net', 'true']).status;
    expect(probe()).toBe(0);
    const inside = await withIptablesLock(async () => probe());
    expect(inside).toBe(1);
    expect(probe()).toBe(0);
  });
});
