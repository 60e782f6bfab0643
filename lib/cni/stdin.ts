import { readSync } from 'node:fs';
import { CniError, ErrorCode } from './errors.js';

/** Configs are small; GC's attachment list is the largest thing seen. */
export const MAX_STDIN_BYTES = 16 * 1024 * 1024;

/** Reads all of stdin synchronously (a plugin has nothing else to do meanwhile). */
export function readStdin(fd = 0, limit = MAX_STDIN_BYTES): Buffer {
  const chunks: Buffer[] = [];
  let total = 0;
  const buf = Buffer.allocUnsafe(65536);
  for (;;) {
    let n: number;
    try {
      n = readSync(fd, buf, 0, buf.length, null);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN') continue;
      if (code === 'EOF' || code === 'EBADF' || code === 'ENXIO') break;
      throw new CniError(ErrorCode.IOFailure, 'error reading stdin', String(err));
    }
    if (n === 0) break;
    total += n;
    if (total > limit) {
      throw new CniError(ErrorCode.IOFailure, 'stdin too large', `more than ${limit} bytes`);
    }
    chunks.push(Buffer.from(buf.subarray(0, n)));
  }
  return Buffer.concat(chunks, total);
}
