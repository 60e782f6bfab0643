import { readRegularFile } from '../../lib/exec/files.js';
import { CniError, ErrorCode } from '../../lib/cni/errors.js';
import type { DNS } from '../../lib/cni/result.js';

/** A resolv.conf is a few lines; anything bigger is not one. */
const MAX_BYTES = 1024 * 1024;

/** Reads nameserver, domain, search and options from a resolv.conf-style file (a regular file only). */
export function parseResolvConf(path: string): DNS {
  let text: string;
  try {
    text = readRegularFile(path, MAX_BYTES).toString('utf8');
  } catch (err) {
    throw new CniError(ErrorCode.IOFailure, `failed to read resolvConf ${path}`, (err as Error).message ?? String(err));
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
