/**
 * A strict reader of the Prometheus text exposition format, for tests: one
 * entry per sample line, label values unescaped (\\, \" and \n are the only
 * escapes the format has); anything malformed throws.
 */
export function parseMetrics(text: string): { name: string; labels: Record<string, string>; value: string }[] {
  const out: { name: string; labels: Record<string, string>; value: string }[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const name = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line)?.[0];
    if (!name) throw new Error(`not a sample line: ${JSON.stringify(line)}`);
    let i = name.length;
    const labels: Record<string, string> = {};
    if (line[i] === '{') {
      i++;
      while (line[i] !== '}') {
        const key = /^[a-zA-Z_][a-zA-Z0-9_]*/.exec(line.slice(i))?.[0];
        if (!key || line[i + key.length] !== '=' || line[i + key.length + 1] !== '"') throw new Error(`bad label in ${JSON.stringify(line)}`);
        i += key.length + 2;
        let v = '';
        for (;;) {
          const ch = line[i++];
          if (ch === undefined) throw new Error(`unterminated label value in ${JSON.stringify(line)}`);
          if (ch === '"') break;
          if (ch === '\\') {
            const e = line[i++];
            if (e === 'n') v += '\n';
            else if (e === '\\' || e === '"') v += e;
            else throw new Error(`bad escape \\${e} in ${JSON.stringify(line)}`);
          } else v += ch;
        }
        labels[key] = v;
        if (line[i] === ',') i++;
      }
      i++;
    }
    const rest = line.slice(i);
    if (!/^ \S+$/.test(rest)) throw new Error(`bad value in ${JSON.stringify(line)}`);
    out.push({ name, labels, value: rest.slice(1) });
  }
  return out;
}

