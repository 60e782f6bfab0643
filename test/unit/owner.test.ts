import { describe, expect, it } from 'vitest';
import { ownerTag, parseOwnerTag, staleOwned, validKeys } from '../../lib/cni/owner.js';

describe('owner records', () => {
  const o = { network: 'net-a', containerID: 'ctr1', ifname: 'eth0' };

  it('parses back what it wrote; another plugin\'s record or free text is no record', () => {
    expect(ownerTag('bandwidth', o)).toBe('cni-ts bandwidth net=net-a id=ctr1 if=eth0');
    expect(parseOwnerTag('bandwidth', ownerTag('bandwidth', o))).toEqual({ network: 'net-a', key: 'ctr1\neth0' });
    expect(parseOwnerTag('tuning', ownerTag('bandwidth', o))).toBeUndefined();
    expect(parseOwnerTag('bandwidth', 'my uplink')).toBeUndefined();
    expect(parseOwnerTag('bandwidth', undefined)).toBeUndefined();
  });

  it('GC: only its own network\'s records of attachments not valid', () => {
    const tag = ownerTag('bandwidth', o);
    expect(staleOwned('bandwidth', tag, 'net-a', validKeys([]))).toBe(true);
    expect(staleOwned('bandwidth', tag, 'net-a', validKeys([{ containerID: 'ctr1', ifname: 'eth0' }]))).toBe(false);
    expect(staleOwned('bandwidth', tag, 'net-a', validKeys([{ containerID: 'ctr1', ifname: 'eth1' }]))).toBe(true);
    expect(staleOwned('bandwidth', tag, 'net-b', validKeys([]))).toBe(false);
    expect(staleOwned('bandwidth', tag, 'net', validKeys([]))).toBe(false);
    expect(staleOwned('bandwidth', undefined, 'net-a', validKeys([]))).toBe(false);
  });

  it('long names and ids fit the kernel\'s 255 bytes and still match', () => {
    const long = { network: 'n'.repeat(255), containerID: 'c'.repeat(5000), ifname: 'ethé12345678901' };
    const tag = ownerTag('traffic-accounting', long);
    expect(Buffer.byteLength(tag)).toBeLessThanOrEqual(255);
    expect(staleOwned('traffic-accounting', tag, long.network, validKeys([]))).toBe(true);
    expect(staleOwned('traffic-accounting', tag, long.network, validKeys([{ containerID: long.containerID, ifname: long.ifname }]))).toBe(false);
    expect(staleOwned('traffic-accounting', tag, 'n'.repeat(254), validKeys([]))).toBe(false);
  });
});
