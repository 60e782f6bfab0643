import { describe, expect, it } from 'vitest';
import { stdHashHex } from '../../lib/pf/accounting/stdhash.js';
import { chainsFor, accountingRules } from '../../lib/pf/accounting/layout.js';

// The vectors and how they were derived (a C++ program printing
// std::hash<std::string> with g++/libstdc++): docs/accounting.md.
describe("libstdc++ std::hash<std::string> (the Aos chain names)", () => {
  it('matches libstdc++ for the documented vectors', () => {
    expect(stdHashHex('test-instance')).toBe('596c510788af873a');
    expect(stdHashHex('b8f745c9-9d8c-453e-8098-a29b0b4b9774')).toBe('1ed93ce8b58c0ea5');
    // Tails of 1, 7, 0 (one whole 8-byte block) and 1 after a block, multi-byte UTF-8, the empty string.
    expect(['x', 'xxxxxxx', 'xxxxxxxx', 'xxxxxxxxx', 'é-ü', ''].map(stdHashHex)).toEqual([
      'b83113fab581d78f', 'dc7e15fe5760b753', '2a1474aa0c9ce5f8', '423ac7dea27aa282', 'e6af31fb30eb2846', '553e93901e462a6e',
    ]);
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
