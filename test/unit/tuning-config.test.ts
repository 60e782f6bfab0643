import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CniError } from '../../lib/cni/errors.js';
import { validateConfig } from '../../lib/cni/skel.js';
import { checkAllowlist, duplicateSysctlKeys, normalizeMac, resolveSettings, sysctlPath, tuningConfig } from '../../plugins/tuning/config.js';

const err = (fn: () => unknown) => {
  try {
    fn();
  } catch (e) {
    if (e instanceof CniError) return { code: e.code, msg: e.msg };
    throw e;
  }
  return undefined;
};
const parse = (extra: Record<string, unknown>) => validateConfig(tuningConfig, { cniVersion: '1.0.0', name: 'n', type: 'tuning', ...extra });

describe('tuning sysctl keys', () => {
  it('maps dotted and slashed keys below /proc/sys/net, substituting IFNAME after the conversion', () => {
    expect(sysctlPath('net.ipv4.conf.IFNAME.arp_ignore', 'eth0')).toBe('net/ipv4/conf/eth0/arp_ignore');
    expect(sysctlPath('net.ipv4.conf.IFNAME.arp_ignore', 'eth0.100')).toBe('net/ipv4/conf/eth0.100/arp_ignore');
    expect(sysctlPath('net/ipv4/conf/eth0.100/forwarding', 'x')).toBe('net/ipv4/conf/eth0.100/forwarding');
  });
  it('refuses anything outside net/, and empty, "." and ".." segments (nothing is normalised away)', () => {
    for (const key of ['kernel.hostname', 'net', 'net.', 'net/../kernel/hostname', 'network.x', '/net/../../etc/passwd', 'vm.swappiness',
      'net//core/./somaxconn', 'net.ipv4.conf./../net/ipv4/ip_forward', 'net.ipv4..ip_forward', 'net/ipv4/', 'net/./ipv4/ip_forward', '']) {
      expect(err(() => sysctlPath(key, 'eth0')), key).toEqual({ code: 7, msg: `invalid net sysctl key: "${key}"` });
    }
  });
  it('finds keys written twice in the top-level sysctl object only', () => {
    expect(duplicateSysctlKeys('{"sysctl":{"a":"1","b":"2","a":"3"},"x":{"a":1,"a":2}}')).toEqual(['a']);
    expect(duplicateSysctlKeys('{"args":{"cni":{"sysctl":{"a":"1","a":"1"}}},"sysctl":{"a":"\\"}","b":["a","a"]}}')).toEqual([]);
    expect(duplicateSysctlKeys('{ "SysCtl" : { "k\\u0041" : "1" , "kA" : "2" } }')).toEqual(['kA']);
    expect(duplicateSysctlKeys('{"sysctl":null,"mtu":1400}')).toEqual([]);
  });
});

describe('tuning settings', () => {
  it('takes the MAC from config < CNI_ARGS < runtimeConfig < args.cni, normalised', () => {
    const args = new Map([['MAC', '02-00-00-00-00-02']]);
    expect(resolveSettings(parse({ mac: '02:00:00:00:00:01' }), 'eth0', new Map()).mac).toBe('02:00:00:00:00:01');
    expect(resolveSettings(parse({ mac: '02:00:00:00:00:01' }), 'eth0', args).mac).toBe('02:00:00:00:00:02');
    expect(resolveSettings(parse({ mac: '02:00:00:00:00:01', runtimeConfig: { mac: '02:00:00:00:00:0A' } }), 'eth0', args).mac).toBe('02:00:00:00:00:0a');
    expect(resolveSettings(parse({ runtimeConfig: { mac: '02:00:00:00:00:0a' }, args: { cni: { mac: '02:00:00:00:00:0b' } } }), 'eth0', args).mac).toBe('02:00:00:00:00:0b');
    expect(resolveSettings(parse({ runtimeConfig: { mac: '' } }), 'eth0', new Map()).mac).toBeUndefined();
  });
  it('lets args.cni override and extend the rest; mtu 0 is unset, txQLen 0 is a value', () => {
    const s = resolveSettings(
      parse({ mtu: 1400, promisc: true, sysctl: { 'net.core.somaxconn': 512 }, args: { cni: { mtu: 0, promisc: false, txQLen: 0, sysctl: { 'net.ipv4.ip_forward': '1' } } } }),
      'eth0',
      new Map(),
    );
    expect(s).toMatchObject({ mtu: undefined, promisc: false, txQLen: 0, allmulti: undefined, dataDir: '/run/cni/tuning' });
    expect(s.sysctls).toEqual([
      { key: 'net.core.somaxconn', path: 'net/core/somaxconn', value: '512' },
      { key: 'net.ipv4.ip_forward', path: 'net/ipv4/ip_forward', value: '1' },
    ]);
  });
  it('refuses two spellings of one sysctl, bad MACs and bad numbers', () => {
    expect(err(() => resolveSettings(parse({ sysctl: { 'net.core.somaxconn': '1', 'net/core/somaxconn': '2' } }), 'eth0', new Map()))?.msg).toBe('duplicated sysctl keys are not allowed');
    for (const mac of ['02:00:00:00:00', 'zz:00:00:00:00:00', '0200.0000.0001']) expect(err(() => normalizeMac(mac))?.code).toBe(7);
    expect(err(() => parse({ mtu: -1 }))?.code).toBe(7);
    expect(err(() => parse({ txQLen: 1.5 }))?.code).toBe(7);
    expect(err(() => parse({ promisc: 'yes' }))?.code).toBe(7);
  });
});

describe('tuning allowlist', () => {
  it('is no restriction when absent, and unanchored regular expressions, one a line, when present', () => {
    const dir = mkdtempSync(join(tmpdir(), 'tuning-allow-'));
    try {
      expect(err(() => checkAllowlist(['kernel.anything'], join(dir, 'missing')))).toBeUndefined();
      const file = join(dir, 'allowlist.conf');
      writeFileSync(file, 'net\\.core\\.somaxconn\n\n^net\\.ipv4\\.conf\\.IFNAME\\.arp_.*$\n');
      expect(err(() => checkAllowlist(['net.core.somaxconn', 'net.ipv4.conf.IFNAME.arp_ignore', 'net.x.net.core.somaxconn.y'], file))).toBeUndefined();
      expect(err(() => checkAllowlist(['net.ipv4.conf.eth0.arp_ignore'], file))).toMatchObject({ code: 7, msg: expect.stringMatching(/^Sysctl net.ipv4.conf.eth0.arp_ignore is not allowed/) });
      writeFileSync(file, '(unclosed\n');
      expect(err(() => checkAllowlist(['net.core.somaxconn'], file))?.msg).toMatch(/invalid regular expression/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
