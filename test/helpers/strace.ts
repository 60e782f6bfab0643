import { existsSync } from 'node:fs';

/**
 * Netlink requests as a process really sent them, read back from strace.
 * `strace -xx` alone prints netlink buffers decoded (strace knows the
 * protocol); `-e write=all` adds a hex dump of every byte each sendmsg iov
 * and sendto buffer carried, which is what is parsed here.
 */
export const STRACE = '/usr/bin/strace';
export const haveStrace = () => existsSync(STRACE);

/** argv running `argv` under strace, recording every process's sendmsg/sendto into `file`. */
export function straceArgv(file: string, argv: string[]): string[] {
  return [STRACE, '-f', '-e', 'trace=sendmsg,sendto', '-e', 'write=all', '-xx', '-s', '65536', '-o', file, ...argv];
}

export interface NlMessage {
  type: number;
  flags: number;
  /** The whole message, header included. */
  bytes: Buffer;
}

/**
 * Every netlink message in the sends of a strace log (with straceArgv's
 * options). A send is a `sendmsg(`/`sendto(` line (or its `resumed` half)
 * followed by dump lines ` | 00000  xx xx …  ascii |`; a sendmsg with several
 * iovs dumps each after a `* N bytes in buffer I` line, and the message is
 * their concatenation. One send may hold several messages (nlmsg_len each).
 * Sends that are not netlink (node writes to pipes with write(2), not
 * these) would not parse as messages and are skipped.
 */
export function parseStrace(text: string): NlMessage[] {
  const sends: Buffer[][] = [];
  let current: number[] | undefined;
  for (const line of text.split('\n')) {
    if (/^\d+\s+(?:sendmsg|sendto)\(|^\d+\s+<\.\.\. (?:sendmsg|sendto) resumed>/.test(line)) {
      if (/\)\s+=\s+\d+/.test(line)) {
        current = [];
        sends.push([]);
      } else current = undefined; // unfinished, or failed: its dump (if any) follows the resumed line
      continue;
    }
    const dump = /^ \| [0-9a-f]{5}  /.exec(line);
    if (dump && current) {
      // Offset, two spaces, then 16 bytes as "xx " ×8, a space, "xx " ×8 (49 columns); the ASCII column follows.
      const hex = line.slice(10, 59).match(/[0-9a-f]{2}/g) ?? [];
      const bytes = hex.map((h) => parseInt(h, 16));
      sends[sends.length - 1].push(Buffer.from(bytes));
      continue;
    }
    if (/^ \* \d+ bytes in buffer \d+/.test(line)) continue;
    if (!/^\d+\s+/.test(line)) continue;
    current = undefined; // another process's line ends this send's dump
  }
  const out: NlMessage[] = [];
  for (const parts of sends) {
    const buf = Buffer.concat(parts);
    let off = 0;
    while (off + 16 <= buf.length) {
      const len = buf.readUInt32LE(off);
      if (len < 16 || off + len > buf.length) break;
      out.push({ type: buf.readUInt16LE(off + 4), flags: buf.readUInt16LE(off + 6), bytes: Buffer.from(buf.subarray(off, off + len)) });
      off += (len + 3) & ~3;
    }
  }
  return out;
}

/** Top-level attributes after a fixed-size header of `hdr` bytes: [type (flags masked), payload offset, payload length]. */
export function attrsOf(buf: Buffer, start: number, end = buf.length): { type: number; rawType: number; off: number; len: number }[] {
  const out: { type: number; rawType: number; off: number; len: number }[] = [];
  let off = start;
  while (off + 4 <= end) {
    const len = buf.readUInt16LE(off);
    const rawType = buf.readUInt16LE(off + 2);
    if (len < 4 || off + len > end) break;
    out.push({ type: rawType & 0x3fff, rawType, off: off + 4, len: len - 4 });
    off += (len + 3) & ~3;
  }
  return out;
}

export const hex = (b: Buffer) => (b.toString('hex').match(/.{1,8}/g) ?? []).join(' ');
