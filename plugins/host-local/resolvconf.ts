import { closeSync, constants, fstatSync, openSync, readFileSync } from 'node:fs';
import { CniError, ErrorCode } from '../../lib/cni/errors.js';
import type { DNS } from '../../lib/cni/result.js';

/** A resolv.conf is a few lines; anything bigger is not one. */
const MAX_BYTES = 1024 * 1024;

/**
 * Reads nameserver, domain, search and options from a resolv.conf-style
 * file. Only a regular file: a FIFO would block the read forever and a
 * character device (/dev/zero) never ends.
 */
export function parseResolvConf(path: string): DNS {
  let text: string;
  let fd: number | undefined;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
    const st = fstatSync(fd);
    if (!st.isFile()) throw new Error('not a regular file');
    if (st.size > MAX_BYTES) throw new Error(`larger than ${MAX_BYTES} bytes`);
    text = readFileSync(fd, 'utf8');
  } catch (err) {
    throw new CniError(ErrorCode.IOFailure, `failed to read resolvConf ${path}`, (err as Error).message ?? String(err));
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  const dns: Required<DNS> = { nameservers: [], domain: '', search: [], options: [] };
  for (const raw of text.split('\n')) {
    const line = raw.replace(/[#;].*$/, '').trim();
    const [key, ...vals] = line.split(/\s+/);
    if (key === 'nameserver' && vals[0]) dns.nameservers.push(vals[0]);
    else if (key === 'domain' && vals[0]) dns.domain = vals[0];
    else if (key === 'search') dns.search.push(...vals);
    else if (key === 'options') dns.options.push(...vals);
  }
  const out: DNS = {};
  if (dns.nameservers.length) out.nameservers = dns.nameservers;
  if (dns.domain) out.domain = dns.domain;
  if (dns.search.length) out.search = dns.search;
  if (dns.options.length) out.options = dns.options;
  return out;
}
