import { closeSync, openSync } from 'node:fs';
import { sys } from '../netlink/ns.js';

/**
 * Runs fn holding an exclusive flock(2) on `path` (created if missing) — the
 * kind of lock the reference plugins take, released by the kernel when a
 * holder dies, so a SIGKILLed plugin never leaves a stale one.
 *
 * Other processes are waited for in the kernel (native flockWait): a waiter
 * wakes the moment the holder lets go. (Polling with backoff, used before,
 * let newcomers overtake waiters that had backed off: 12.8 s p99 wait at 16
 * in flight.) That wait blocks the event loop, so callers in this process
 * queue in front of it first: one flock attempt per path at a time, else a
 * second caller would block the thread the first needs to finish.
 * Throws timeoutError() after timeoutMs of waiting for other processes.
 */
const queues = new Map<string, Promise<unknown>>();

export async function withFileLock<T>(
  path: string,
  opts: {
    mode?: number;
    /** Lock a file that cannot be opened for writing (a namespace's nsfs file); it is not created. */
    readOnly?: boolean;
    /** The in-process queue's key, when the path alone does not name the lock (/proc/thread-self/…). */
    queueKey?: string;
    timeoutMs: number;
    timeoutError: () => Error;
  },
  fn: (fd: number) => Promise<T> | T,
): Promise<T> {
  const key = opts.queueKey ?? path;
  const before = queues.get(key) ?? Promise.resolve();
  let release!: () => void;
  const mine = new Promise<void>((r) => (release = r));
  const tail = before.then(() => mine);
  queues.set(key, tail);
  try {
    await before;
    const fd = opts.readOnly ? openSync(path, 'r') : openSync(path, 'a', opts.mode ?? 0o600);
    try {
      if (!sys().flockWait(fd, true, opts.timeoutMs)) throw opts.timeoutError();
      return await fn(fd);
    } finally {
      closeSync(fd); // closing drops the flock
    }
  } finally {
    release();
    if (queues.get(key) === tail) queues.delete(key);
  }
}
