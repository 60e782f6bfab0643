import { describe, expect, it } from 'vitest';
import { stdHashHex } from '../../lib/iptables/stdhash.js';
import { chainsFor, accountingRules } from '../../plugins/traffic-accounting/index.js';

describe("libstdc++ std::hash<std::string> (the Aos chain names)", () => {
  it('matches the vectors from the Aos notes', () => {
    expect(stdHashHex('test-instance')).toBe('596c510788af873a');
    expect(stdHashHex('b8f745c9-9d8c-453e-8098-a29b0b4b9774')).toBe('1ed93ce8b58c0ea5');
  });
  it('handles every tail length and the empty string deterministically', () => {
    const seen = new Set<string>();
    for (let n = 0; n <= 17; n++) seen.add(stdHashHex('x'.repeat(n)));
    expect(seen.size).toBe(18);
    expect(chainsFor('test-instance')).toEqual({ in: 'AOS_596c510788af873a_IN', out: 'AOS_596c510788af873a_OUT' });
  });
  it('puts the local-range RETURNs before the counting rule', () => {
    const { rules } = accountingRules('i', ['10.1.0.2'], ['10.0.0.0/8']);
    expect(rules.map((r) => `${r.chain} ${r.spec.join(' ')}`)).toEqual([
      'AOS_' + stdHashHex('i') + '_IN -s 10.0.0.0/8 -j RETURN',
      'AOS_' + stdHashHex('i') + '_IN -d 10.1.0.2/32',
      'AOS_' + stdHashHex('i') + '_OUT -d 10.0.0.0/8 -j RETURN',
      'AOS_' + stdHashHex('i') + '_OUT -s 10.1.0.2/32',
    ]);
  });
});
