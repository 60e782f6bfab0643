import { describe, expect, it } from 'vitest';
import { AOS_LOCAL_RANGES, nftOwnerComment, nftStaleOwned, skipRangesV4 } from '../../lib/pf/accounting/layout.js';
import { groupLines, groupOf } from '../../lib/pf/accounting/nftables.js';
import { ownerTag } from '../../lib/cni/owner.js';

describe('accounting on nftables: names and owner records', () => {
  it('the owner record fits nft comments (128 bytes) and GC matches it in either form', () => {
    const short = { network: 'net1', containerID: 'abc', ifname: 'eth0' };
    expect(nftOwnerComment(short)).toBe(ownerTag('traffic-accounting', short));
    const long = { network: 'n'.repeat(64), containerID: 'c'.repeat(128), ifname: 'e'.repeat(15) };
    const c = nftOwnerComment(long);
    expect(Buffer.byteLength(c)).toBeLessThanOrEqual(128);
    expect(c).toMatch(/^cni-ts traffic-accounting net=#[0-9a-f]{32} id=#[0-9a-f]{32} if=e{15}$/);
    for (const [o, comment] of [[short, nftOwnerComment(short)], [long, c]] as const) {
      expect(nftStaleOwned(comment, o.network, [])).toBe(true);
      expect(nftStaleOwned(comment, o.network, [{ containerID: o.containerID, ifname: o.ifname }])).toBe(false);
      expect(nftStaleOwned(comment, o.network, [{ containerID: o.containerID, ifname: 'other' }])).toBe(true);
      expect(nftStaleOwned(comment, 'another-net', [])).toBe(false);
    }
    expect(nftStaleOwned(undefined, 'net1', [])).toBe(false);
    expect(nftStaleOwned('cni-ts bandwidth net=net1 id=abc if=eth0', 'net1', [])).toBe(false);
  });

  it('groups instances by their skip ranges; the Aos ranges are group "aos" in any order or spelling', () => {
    expect(groupOf(AOS_LOCAL_RANGES)).toBe('aos');
    expect(groupOf([...AOS_LOCAL_RANGES].reverse().concat('10.1.2.3/8'))).toBe('aos');
    expect(groupOf(['10.0.0.0/8'])).toMatch(/^[0-9a-f]{8}$/);
    expect(groupOf(['10.0.0.0/8', 'fd00::/8'])).toBe(groupOf(['10.0.0.0/8'])); // IPv6 ranges play no part in IPv4 accounting
    expect(skipRangesV4(['10.1.2.3/8', 'fd00::/8'])).toEqual(['10.0.0.0/8']);
  });

  it("a group's chain: blocked addresses dropped before the counting rules; no ranges, no match", () => {
    const lines = groupLines(['10.0.0.0/8']);
    const g = groupOf(['10.0.0.0/8']);
    expect(lines.filter((l) => l.startsWith('add rule'))).toEqual([
      `add rule inet cni_ts_accounting acct_${g} ip daddr @blocked_in_${g} ip saddr != { 10.0.0.0/8 } drop comment "blocked download"`,
      `add rule inet cni_ts_accounting acct_${g} ip saddr @blocked_out_${g} ip daddr != { 10.0.0.0/8 } drop comment "blocked upload"`,
      `add rule inet cni_ts_accounting acct_${g} ip saddr != { 10.0.0.0/8 } counter name ip daddr map @in_${g} comment "download"`,
      `add rule inet cni_ts_accounting acct_${g} ip daddr != { 10.0.0.0/8 } counter name ip saddr map @out_${g} comment "upload"`,
    ]);
    expect(groupLines([]).filter((l) => l.includes('counter name'))[0]).toMatch(/acct_[0-9a-f]{8} counter name ip daddr map/);
  });
});
