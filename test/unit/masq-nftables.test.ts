import { describe, expect, it } from 'vitest';
import { addScript, commentForInstance, hash16, hashForInstance, hashForNetwork } from '../../lib/pf/masq/nftables.js';

/**
 * The reference's nftables masquerade names its rules by a hash of the
 * attachment: MustFormatHashWithPrefix(16, "", s) is sha512(s) in lower-case
 * hex, cut to 16 digits; the network's hash, "-", the hash of
 * "<ifname>:<containerID>". The vectors below were computed with Go's
 * crypto/sha512 and fmt.Sprintf("%x") (a six-line program, go1.19, offline):
 *   func h(s string) string { return fmt.Sprintf("%x", sha512.Sum512([]byte(s)))[:16] }
 * so they hold for the reference's code, not just for ours.
 */
describe('masquerade on nftables: the reference\'s hashes and comments', () => {
  it('hash16 is the first 16 hex digits of sha512 (vectors from Go)', () => {
    expect(hash16('unit-test')).toBe('6fd94d501e58f0aa');
    expect(hash16('eth0:one')).toBe('287fc69eff0574a2');
    expect(hash16('testnet')).toBe('c5964c6794a1152e');
    expect(hash16('eth0:ctr1')).toBe('7883a6f9ce71eedb');
    expect(hash16('podman')).toBe('1d8721804f16f412');
    expect(hash16('net1:three')).toBe('acb19d111858e348');
    expect(hash16('')).toBe('cf83e1357eefb8bd');
  });

  it('hashForInstance is network hash - hash of "ifname:containerID"', () => {
    expect(hashForNetwork('unit-test')).toBe('6fd94d501e58f0aa');
    expect(hashForInstance('unit-test', 'eth0', 'one')).toBe('6fd94d501e58f0aa-287fc69eff0574a2');
    expect(hashForInstance('testnet', 'eth0', 'ctr1')).toBe('c5964c6794a1152e-7883a6f9ce71eedb');
    expect(hashForInstance('unit-test', 'eth0', 'two')).toBe('6fd94d501e58f0aa-d750b2c8f0f25d5f');
  });

  it('the comment starts with the hash and is cut at 128 bytes, as Go slices it', () => {
    expect(commentForInstance('unit-test', 'eth0', 'one')).toBe('6fd94d501e58f0aa-287fc69eff0574a2, net: unit-test, if: eth0, id: one');
    const id = '0123456789abcdef'.repeat(4);
    const long = commentForInstance('a-rather-long-network-name', 'eth0', id);
    expect(long).toBe('60391f2bbb4ec689-848025970da6a998, net: a-rather-long-network-name, if: eth0, id: 0123456789abcdef0123456789abcdef0123456789abcd');
    expect(Buffer.byteLength(long)).toBe(128);
    expect(commentForInstance('n"x', 'eth0', 'i"d')).toBe(`${hashForInstance('n"x', 'eth0', 'i"d')}, net: nx, if: eth0, id: id`);
  });

  it('ADD\'s script: table, chains, postrouting refilled, stale rules deleted, one rule per address', () => {
    const s = addScript({ network: 'unit-test', ifname: 'eth0', containerId: 'two' }, ['192.168.1.2/24', '2001:db8:0::2/64', '192.168.1.2/24'], [{ chain: 'masq_checks', handle: 42 }]);
    const c = '"6fd94d501e58f0aa-d750b2c8f0f25d5f, net: unit-test, if: eth0, id: two"';
    expect(s.trim().split('\n')).toEqual([
      'add table inet cni_plugins_masquerade { comment "Masquerading for plugins from github.com/containernetworking/plugins" ; }',
      'add chain inet cni_plugins_masquerade masq_checks { comment "Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet" ; }',
      'add chain inet cni_plugins_masquerade postrouting { type nat hook postrouting priority 100 ; }',
      'flush chain inet cni_plugins_masquerade postrouting',
      'add rule inet cni_plugins_masquerade postrouting ip daddr == 224.0.0.0/4  return',
      'add rule inet cni_plugins_masquerade postrouting ip6 daddr == ff00::/8  return',
      'add rule inet cni_plugins_masquerade postrouting goto masq_checks',
      'delete rule inet cni_plugins_masquerade masq_checks handle 42',
      `add rule inet cni_plugins_masquerade masq_checks ip saddr == 192.168.1.2 ip daddr != 192.168.1.0/24 masquerade comment ${c}`,
      `add rule inet cni_plugins_masquerade masq_checks ip6 saddr == 2001:db8::2 ip6 daddr != 2001:db8::/64 masquerade comment ${c}`,
    ]);
  });
});
