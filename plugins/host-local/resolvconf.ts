import { readFileSync } from 'node:fs';
import { CniError, ErrorCode } from '../../lib/cni/errors.js';
import type { DNS } from '../../lib/cni/result.js';

/** Reads nameserver, domain, search and options from a resolv.conf-style file. */
export function parseResolvConf(path: string): DNS {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new CniError(ErrorCode.IOFailure, `failed to read resolvConf ${path}`, String(err));
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
