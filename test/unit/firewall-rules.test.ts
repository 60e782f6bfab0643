import { describe, expect, it } from 'vitest';
import { ownerComment } from '../../lib/pf/forward/nftables.js';
import { openingComment, openingRule } from '../../lib/pf/coexist.js';
import { rule, portCount, addr } from '../../lib/iptables/rule.js';
import { chainName } from '../../lib/iptables/names.js';
import { TablePlan, parseSave } from '../../lib/iptables/index.js';
import { maskToBase64, maskToPrefix } from '../../plugins/aos-firewall/state.js';
import { instanceRules } from '../../lib/pf/aos/rules.js';

describe('rules in iptables-save normal form', () => {
  it('normalises addresses and orders options as save prints them', () => {
    expect(addr('10.1.2.3')).toBe('10.1.2.3/32');
    expect(addr('172.17.0.1/16')).toBe('172.17.0.0/16');
    expect(addr('fd00::0001')).toBe('fd00::1/128');
    expect(rule('C', { jump: 'ACCEPT', ctstate: 'NEW', dst: '10.0.0.2', in: 'eth0', src: '1.2.3.4' }).spec.join(' ')).toBe('-s 1.2.3.4/32 -d 10.0.0.2/32 -i eth0 -m conntrack --ctstate NEW -j ACCEPT');
    expect(rule('C', { proto: 'tcp', dport: '80', jump: 'RETURN' }).spec.join(' ')).toBe('-p tcp -m tcp --dport 80 -j RETURN');
    expect(rule('C', { proto: 'udp', dport: '80,443', jump: 'RETURN' }).spec.join(' ')).toBe('-p udp -m multiport --dports 80,443 -j RETURN');
    expect(rule('C', { proto: 'tcp', dport: '8000:8080', jump: 'RETURN' }).spec.join(' ')).toBe('-p tcp -m multiport --dports 8000:8080 -j RETURN');
    expect(rule('C', { in: 'br0', out: 'br0', notOut: true, comment: 'a b', jump: 'X' }).spec).toEqual(['-i', 'br0', '!', '-o', 'br0', '-m', 'comment', '--comment', 'a b', '-j', 'X']);
    expect(() => rule('C', { dport: '80', jump: 'X' })).toThrow();
  });

  it('validates ports and counts them as multiport does (a range is two)', () => {
    expect(portCount('80')).toBe(1);
    expect(portCount('80,443,8000:8080')).toBe(4);
    for (const bad of ['', '80;reboot', '$(x)', '0', '70000', '90:80', '80,', ' 80', '1e3']) expect(() => portCount(bad), bad).toThrow();
  });
});

describe('Aos names and state', () => {
  it('derives the instance chain like the original (test vector from the Aos notes)', () => {
    const uuid = 'b8f745c9-9d8c-453e-8098-a29b0b4b9774';
    expect(chainName(`INSTANCE_${uuid}`, uuid)).toBe('CNI-5c638f42c573e81d1375a6fa');
  });
  it("converts prefixes to Go's base64 masks and back", () => {
    expect(maskToBase64(16)).toBe('//8AAA==');
    expect(maskToBase64(24)).toBe('////AA==');
    expect(maskToPrefix('//8AAA==')).toBe(16);
    expect(maskToPrefix(maskToBase64(0))).toBe(0);
    expect(maskToPrefix(maskToBase64(32))).toBe(32);
  });
  it('follows the intent where the original does not: any-source RETURNs, reply-only WAN rule, stateful replies', () => {
    const r = instanceRules({
      name: 'CNI-x', containerID: 'u', address: { IP: '10.0.0.2', Mask: maskToBase64(24) }, gateway: '10.0.0.1', gatewayPrefixLen: '24',
      publicInterface: 'wan0', outRules: [{ dstIp: '10.9.0.5', dstPort: '8080', proto: 'tcp', srcIp: '' }], inputPortsTCP: ['22'], inputPortsUDP: null, hasInternetConnection: true,
    });
    const text = [...r.shared, ...r.chain].map((x) => `${x.chain} ${x.spec.join(' ')}`);
    expect(text).toContain('CNI-x -p tcp -m tcp --dport 22 -j RETURN');
    expect(text.some((t) => / -s 0\.0\.0\.0\//.test(` ${t}`))).toBe(false);
    expect(text).toContain('AOS-FORWARD -d 10.0.0.2/32 -i wan0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT');
    expect(text).toContain('AOS-FORWARD -s 10.0.0.2/32 -d 10.9.0.5/32 -p tcp -m tcp --dport 8080 -j ACCEPT'); // empty srcIp = the instance
    expect(text).toContain('AOS-FORWARD -s 10.9.0.5/32 -d 10.0.0.2/32 -p tcp -m tcp --sport 8080 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT');
    expect(r.chain.map((x) => x.spec.at(-1))).toEqual(['ACCEPT', 'ACCEPT', 'RETURN', 'DROP', 'DROP']);
  });
});

describe('TablePlan', () => {
  const state = parseSave('*filter\n:FORWARD ACCEPT [0:0]\n:A - [0:0]\n-A FORWARD -j A\n-A A -s 10.0.0.2/32 -j ACCEPT\n-A A -s 10.0.0.2/32 -j ACCEPT\nCOMMIT\n').get('filter')!;
  it('adds only what is missing and deletes every copy of what is there', () => {
    const p = new TablePlan('filter', state);
    p.ensureChain('A').ensureChain('B');
    p.insertUnique({ chain: 'FORWARD', spec: ['-j', 'A'] });
    p.appendUnique({ chain: 'B', spec: ['-j', 'RETURN'] });
    p.appendUnique({ chain: 'B', spec: ['-j', 'RETURN'] });
    p.delete({ chain: 'A', spec: ['-s', '10.0.0.2/32', '-j', 'ACCEPT'] });
    p.delete({ chain: 'A', spec: ['-s', '10.0.0.9/32', '-j', 'ACCEPT'] });
    expect(p.batch.text()).toBe('*filter\n-N B\n-A B -j RETURN\n-D A -s 10.0.0.2/32 -j ACCEPT\n-D A -s 10.0.0.2/32 -j ACCEPT\nCOMMIT\n');
  });
  it('removes a chain with its jumps', () => {
    const p = new TablePlan('filter', state);
    p.removeChain('A');
    p.removeChain('Z');
    expect(p.batch.text()).toBe('*filter\n-D FORWARD -j A\n-F A\n-X A\nCOMMIT\n');
  });
});

describe('firewall: nftables owner comments and the iptables-side opening (lib/pf/forward, lib/pf/coexist)', () => {
  it('comments an element with network, container id and ifname, within 128 bytes however long they are', () => {
    expect(ownerComment({ network: 'podman', containerId: '3f2a9c01', ifname: 'eth0' })).toBe('podman 3f2a9c01 eth0');
    const long = ownerComment({ network: 'n'.repeat(255), containerId: 'c'.repeat(200), ifname: 'eth0' });
    expect(Buffer.byteLength(long)).toBeLessThanOrEqual(128);
    expect(long).toMatch(/^~[0-9a-f]{24} ~[0-9a-f]{24} eth0$/);
    // Two long names stay apart.
    expect(ownerComment({ network: `${'n'.repeat(60)}a`, containerId: 'x', ifname: 'eth0' })).not.toBe(ownerComment({ network: `${'n'.repeat(60)}b`, containerId: 'x', ifname: 'eth0' }));
  });
  it('opens a network with one rule per subnet in iptables-save normal form, its comment within iptables\' 256 bytes', () => {
    expect(openingRule('net1', '10.62.1.7/24')).toEqual({ chain: 'FORWARD', spec: ['-m', 'conntrack', '--ctorigsrc', '10.62.1.0/24', '-m', 'comment', '--comment', 'cni-ts nftables network net1', '-j', 'ACCEPT'] });
    expect(openingRule('net1', 'fd00:0::5/64').spec[3]).toBe('fd00::/64');
    expect(Buffer.byteLength(openingComment('n'.repeat(255)))).toBeLessThanOrEqual(256);
  });
});
