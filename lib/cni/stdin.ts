import { closeSync, constants, openSync, readlinkSync, readSync } from 'node:fs';
import { CniError, ErrorCode } from './errors.js';

/** Configs are small; GC's attachment list is the largest thing seen. */
export const MAX_STDIN_BYTES = 16 * 1024 * 1024;

/**
 * Reads all of stdin synchronously (a plugin has nothing else to do
 * meanwhile). Used by the loader's VERSION path too, so it stays small and
 * needs no native code.
 *
 * A runtime may hand us a non-blocking descriptor (O_NONBLOCK is a property
 * of the open file it shares with us): reads then fail with EAGAIN until
 * data arrives, and retrying at once spins a CPU for as long as the runtime
 * takes to write (3.5 CPU-seconds for 4 idle seconds, measured). Node has
 * no poll() for a synchronous read, so the wait is made a blocking read
 * instead where possible — an anonymous pipe reopened through
 * /proc/self/fd/<fd> is a new, blocking open file on the same pipe (opening
 * an anonymous pipe never waits for a partner) — and otherwise (a socket, a
 * named FIFO, a terminal) a short sleep between attempts, growing to 20 ms.
 */
export function readStdin(fd = 0, limit = MAX_STDIN_BYTES): Buffer {
  const chunks: Buffer[] = [];
  let total = 0;
  const buf = Buffer.allocUnsafe(65536);
  let src = fd;
  let reopened = false;
  let idle = 0;
  try {
    for (;;) {
      let n: number;
      try {
        n = readSync(src, buf, 0, buf.length, null);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'EAGAIN') {
          if (!reopened) {
            reopened = true;
            const blocking = blockingReopen(fd);
            if (blocking !== undefined) {
              src = blocking;
              continue;
            }
          }
          sleep(Math.min(20, 1 << Math.min(idle++, 5)));
          continue;
        }
        if (code === 'EOF' || code === 'EBADF' || code === 'ENXIO') break;
        throw new CniError(ErrorCode.IOFailure, 'error reading stdin', String(err));
      }
      if (n === 0) break;
      idle = 0;
      total += n;
      if (total > limit) {
        throw new CniError(ErrorCode.IOFailure, 'stdin too large', `more than ${limit} bytes`);
      }
      chunks.push(Buffer.from(buf.subarray(0, n)));
    }
  } finally {
    if (src !== fd) closeSync(src);
  }
  return Buffer.concat(chunks, total);
}

/** A blocking descriptor for the anonymous pipe behind `fd`, or undefined for anything else. */
function blockingReopen(fd: number): number | undefined {
  try {
    // Only "pipe:[…]": a named FIFO's open would wait for a writer if the runtime closed its end meanwhile.
    if (!readlinkSync(`/proc/self/fd/${fd}`).startsWith('pipe:[')) return undefined;
    return openSync(`/proc/self/fd/${fd}`, constants.O_RDONLY);
  } catch {
    return undefined;
  }
}

const sleeper = new Int32Array(new SharedArrayBuffer(4));
function sleep(ms: number): void {
  Atomics.wait(sleeper, 0, 0, ms);
}
