import { describe, expect, it } from 'vitest';
import { backendSpecificOptions, conditionsBackend, portmapConfig, requireOptionsOf, wrongBackendOptions } from '../../plugins/portmap/config.js';
import { nftContainerRules, nftOwnerTag, parseNftOwnerTag } from '../../lib/pf/portmap/rules.js';
import { CniError } from '../../lib/cni/errors.js';

const base = { cniVersion: '1.0.0', name: 'net', type: 'portmap' };
const parse = (extra: Record<string, unknown>) => portmapConfig.safeParse({ ...base, ...extra });
const issues = (extra: Record<string, unknown>) => {
  const r = parse(extra);
  return r.success ? [] : r.error.issues.map((i) => i.message);
};

describe('portmap config: backend-specific options (the reference\'s ensureBackend)', () => {
  it('tells a condition list\'s backend by its first word, as the reference does', () => {
    expect(conditionsBackend(undefined)).toBeUndefined();
    expect(conditionsBackend(null)).toBeUndefined();
    expect(conditionsBackend([])).toBeUndefined();
    expect(conditionsBackend(['', 'x'])).toBeUndefined();
    expect(conditionsBackend(['-d', '1.2.3.4'])).toBe('iptables');
    expect(conditionsBackend(['!', '-s', '1.2.3.4'])).toBe('iptables');
    expect(conditionsBackend(['ip', 'daddr', '1.2.3.4'])).toBe('nftables');
    expect(conditionsBackend(['meta mark 0x10'])).toBe('nftables');
  });

  it('lists the options of each backend', () => {
    expect(backendSpecificOptions({ externalSetMarkChain: 'X', conditionsV4: ['-d', '1.1.1.1'], conditionsV6: ['ip6', 'daddr', '::1'] })).toEqual(new Map([['iptables', ['externalSetMarkChain', 'conditionsV4']], ['nftables', ['conditionsV6']]]));
    expect(backendSpecificOptions({})).toEqual(new Map());
  });

  it('refuses, with the reference\'s message, options of the other backend when one is configured', () => {
    expect(issues({ backend: 'nftables', externalSetMarkChain: 'MARK-CHAIN' })).toEqual(['nftables backend was requested but configuration contains iptables-specific options [externalSetMarkChain]']);
    expect(issues({ backend: 'nftables', conditionsV4: ['-d', '1.2.3.4'], conditionsV6: ['!', '-d', '::1'] })).toEqual(['nftables backend was requested but configuration contains iptables-specific options [conditionsV4 conditionsV6]']);
    expect(issues({ backend: 'iptables', conditionsV6: ['ip6', 'daddr', '::1'] })).toEqual(['iptables backend was requested but configuration contains nftables-specific options [conditionsV6]']);
    // Each backend's own options are fine with it, and with no backend configured the schema lets the host decide.
    expect(issues({ backend: 'iptables', externalSetMarkChain: 'MARK-CHAIN', conditionsV4: ['-d', '1.2.3.4'] })).toEqual([]);
    expect(issues({ backend: 'nftables', conditionsV4: ['ip', 'daddr', '1.2.3.4'], markMasqBit: 5 })).toEqual([]);
    expect(issues({ conditionsV4: ['ip', 'daddr', '1.2.3.4'] })).toEqual([]);
    expect(issues({ backend: 'pf' })).toHaveLength(1);
  });

  it('refuses with the backend chosen on the host (none configured): code 7', () => {
    const c = parse({ conditionsV4: ['ip', 'daddr', '1.2.3.4'] });
    expect(c.success).toBe(true);
    if (!c.success) return;
    expect(() => requireOptionsOf(c.data, 'nftables')).not.toThrow();
    let err: unknown;
    try {
      requireOptionsOf(c.data, 'iptables');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CniError);
    expect(err).toMatchObject({ code: 7, msg: 'iptables backend was requested but configuration contains nftables-specific options [conditionsV4]' });
    expect(wrongBackendOptions({}, 'iptables')).toBeUndefined();
  });

  it('keeps nft conditions on their own line: no ";" or "#", no control characters', () => {
    expect(issues({ backend: 'nftables', conditionsV4: ['ip', 'daddr', '1.2.3.4', ';', 'flush', 'ruleset'] })).toEqual(['nftables conditions must not contain ";" or "#"']);
    expect(issues({ backend: 'nftables', conditionsV4: ['ip daddr 1.2.3.4 # swallow the jump'] })).toEqual(['nftables conditions must not contain ";" or "#"']);
    expect(issues({ backend: 'nftables', conditionsV4: ['ip daddr 1.2.3.4\nflush ruleset'] })).toHaveLength(1);
    expect(issues({ backend: 'iptables', conditionsV4: ['-m', 'comment', '--comment', 'a;b#c'] })).toEqual([]); // argv words: no script to escape
  });
});

describe('portmap nftables layout', () => {
  const mappings = [
    { hostPort: 8080, containerPort: 80, protocol: 'tcp' as const },
    { hostPort: 8083, containerPort: 83, protocol: 'udp' as const, hostIP: '192.168.0.2' },
    { hostPort: 8084, containerPort: 84, protocol: 'tcp' as const, hostIP: '0.0.0.0' },
    { hostPort: 8085, containerPort: 85, protocol: 'sctp' as const, hostIP: '2001:db8:a::1' },
  ];
  const p = { network: 'n', containerId: 'c', mappings, snat: true, masqAll: false };

  it('one rule per mapping of the family, as nft prints it back; hairpin and localhost masquerade', () => {
    expect(nftContainerRules({ ...p, family: 4, container: '10.0.0.2/24' })).toEqual([
      { chain: 'hostports', rule: 'tcp dport 8080 dnat to 10.0.0.2:80' },
      { chain: 'hostports', rule: 'ip daddr 192.168.0.2 udp dport 8083 dnat to 10.0.0.2:83' },
      { chain: 'hostports', rule: 'tcp dport 8084 dnat to 10.0.0.2:84' },
      { chain: 'masquerading', rule: 'ip saddr 10.0.0.0/24 ip daddr 10.0.0.2 ct status dnat masquerade' },
      { chain: 'masquerading', rule: 'ip saddr 127.0.0.1 ip daddr 10.0.0.2 ct status dnat masquerade' },
    ]);
    expect(nftContainerRules({ ...p, family: 6, container: '2001:db8::0002/64', snat: false })).toEqual([
      { chain: 'hostports', rule: 'tcp dport 8080 dnat to [2001:db8::2]:80' },
      { chain: 'hostports', rule: 'ip6 daddr 2001:db8:a::1 sctp dport 8085 dnat to [2001:db8::2]:85' },
    ]);
    expect(nftContainerRules({ ...p, family: 4, container: '10.0.0.2/32', masqAll: true }).filter((r) => r.chain === 'masquerading')).toEqual([{ chain: 'masquerading', rule: 'ip daddr 10.0.0.2 ct status dnat masquerade' }]);
    expect(nftContainerRules({ ...p, family: 4, container: '10.0.0.2/32' }).filter((r) => r.chain === 'masquerading')[0].rule).toBe('ip saddr 10.0.0.2 ip daddr 10.0.0.2 ct status dnat masquerade');
  });

  it('owner records fit nft\'s 128-byte comments and parse back', () => {
    const long = nftOwnerTag('n'.repeat(200), 'x'.repeat(300));
    expect(Buffer.byteLength(long)).toBeLessThanOrEqual(128);
    expect(parseNftOwnerTag(long)).toMatchObject({ network: expect.stringMatching(/^#[0-9a-f]{32}$/), id: expect.stringMatching(/^#[0-9a-f]{32}$/) });
    expect(parseNftOwnerTag(nftOwnerTag('podman', 'abc123'))).toEqual({ network: 'podman', id: 'abc123' });
    expect(Buffer.byteLength(nftOwnerTag('n'.repeat(40), 'f'.repeat(64)))).toBeLessThanOrEqual(128);
    expect(parseNftOwnerTag('something else')).toBeUndefined();
  });
});
