import { CniError, ErrorCode } from './errors.js';

/**
 * CNI_ARGS: `K=V;K2=V2`. A key the plugin does not know is an error unless
 * `IgnoreUnknown` is 1 or true, as with the reference plugins; runtimes
 * always set it because they pass keys (K8S_POD_NAME, ...) no plugin knows.
 */
export function parseCniArgs(raw: string, known: readonly string[]): Map<string, string> {
  const out = new Map<string, string>();
  if (raw === '') return out;
  for (const pair of raw.split(';')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new CniError(ErrorCode.InvalidEnvironment, 'invalid CNI_ARGS pair', pair);
    out.set(pair.slice(0, eq), pair.slice(eq + 1));
  }
  const ignore = out.get('IgnoreUnknown');
  const ignoreUnknown = ignore !== undefined && /^(1|true)$/i.test(ignore);
  if (!ignoreUnknown) {
    const unknown = [...out.keys()].filter((k) => k !== 'IgnoreUnknown' && !known.includes(k));
    if (unknown.length) {
      throw new CniError(ErrorCode.InvalidEnvironment, 'unknown CNI_ARGS keys', unknown.join(', '));
    }
  }
  return out;
}
