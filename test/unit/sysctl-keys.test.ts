import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CniError } from '../../lib/cni/errors.js';
import { readEnv } from '../../lib/cni/env.js';
import { sysctlFile } from '../../lib/netlink/ns.js';
import { allowlistKey, checkAllowlist, sysctlPath } from '../../plugins/tuning/config.js';

const err = (fn: () => unknown) => {
  try {
    fn();
  } catch (e) {
    if (e instanceof CniError) return { code: e.code, msg: e.msg };
    throw e;
  }
  return undefined;
};

describe('the sysctl helper (lib/netlink/ns.ts)', () => {
  it('takes an interface name as one path segment, dots and all', () => {
    expect(sysctlFile(['net', 'ipv6', 'conf', 'eth0.1', 'accept_dad'])).toBe('/proc/sys/net/ipv6/conf/eth0.1/accept_dad');
    expect(sysctlFile(['net', 'ipv4', 'ip_forward'])).toBe('/proc/sys/net/ipv4/ip_forward');
  });
  it('refuses segments that would leave the place named', () => {
    for (const bad of [[], ['net', '..', 'kernel'], ['net', '.', 'x'], ['net', '', 'x'], ['net', 'a/b'], ['net', 'a\0b']]) {
      expect(err(() => sysctlFile(bad))?.code, JSON.stringify(bad)).toBe(7);
    }
  });
});

describe('tuning: the allowlist judges the key that is written', () => {
  it('refuses the normalisation attack before any allowlist is read', () => {
    // Passed ^net\.ipv4\.conf\..* as raw text, and normalised to net/ipv4/ip_forward.
    const key = 'net.ipv4.conf./../net/ipv4/ip_forward';
    expect(err(() => sysctlPath(key, 'eth0'))).toEqual({ code: 7, msg: `invalid net sysctl key: "${key}"` });
    expect(err(() => allowlistKey(key))?.code).toBe(7);
    const dir = mkdtempSync(join(tmpdir(), 'sysctl-keys-'));
    try {
      const file = join(dir, 'allowlist.conf');
      writeFileSync(file, '^net\\.ipv4\\.conf\\..*\n');
      expect(err(() => checkAllowlist([key], file))?.code).toBe(7);
      expect(err(() => checkAllowlist(['net/ipv4/conf/x/../../ip_forward'], file))?.code).toBe(7);
      // Both spellings of an allowed key pass, in their dotted form; ip_forward in either does not.
      expect(err(() => checkAllowlist(['net.ipv4.conf.IFNAME.rp_filter', 'net/ipv4/conf/eth0.100/rp_filter'], file))).toBeUndefined();
      expect(err(() => checkAllowlist(['net/ipv4/ip_forward'], file))?.msg).toMatch(/^Sysctl net\/ipv4\/ip_forward is not allowed/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
  it('substitutes IFNAME inside its segment', () => {
    expect(sysctlPath('net/ipv6/conf/IFNAME/accept_dad', 'eth0.1')).toBe('net/ipv6/conf/eth0.1/accept_dad');
    expect(allowlistKey('net/ipv4/conf/IFNAME/rp_filter')).toBe('net.ipv4.conf.IFNAME.rp_filter');
  });
});

describe('CNI_NETNS_OVERRIDE', () => {
  const base = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'abc', CNI_NETNS: '/var/run/netns/x', CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin' };
  it('is "1" or "true" in any case, as libcni; anything else is no override', () => {
    for (const v of ['1', 'true', 'TRUE', 'True']) expect(readEnv({ ...base, CNI_NETNS_OVERRIDE: v }).netnsOverride, v).toBe(true);
    for (const v of [undefined, '', '0', 'false', 'yes', ' 1']) expect(readEnv({ ...base, CNI_NETNS_OVERRIDE: v }).netnsOverride, String(v)).toBe(false);
  });
});

describe('readStdin', () => {
  it('keeps its bound', async () => {
    const { readStdin } = await import('../../lib/cni/stdin.js');
    const { openSync, closeSync } = await import('node:fs');
    const dir = mkdtempSync(join(tmpdir(), 'stdin-bound-'));
    try {
      writeFileSync(join(dir, 'in'), 'x'.repeat(100));
      const fd = openSync(join(dir, 'in'), 'r');
      try {
        expect(err(() => readStdin(fd, 64))).toEqual({ code: 5, msg: 'stdin too large' });
      } finally {
        closeSync(fd);
      }
      const fd2 = openSync(join(dir, 'in'), 'r');
      expect(readStdin(fd2, 100).length).toBe(100);
      closeSync(fd2);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
