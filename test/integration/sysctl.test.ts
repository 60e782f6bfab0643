import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, Sandbox, TEST_BIN, must } from '../helpers/sandbox.js';

/**
 * Sysctls are paths of segments (issue 13):
 *  - §5: a container interface name with a dot (`eth0.1`) is one segment of
 *    /proc/sys/net/ipv6/conf/<ifname>/…; turned into a dotted key it became
 *    eth0/1 and bridge's IPv6 ADD failed;
 *  - §2: tuning's allowlist judged the raw key, then the key was normalised:
 *    `net.ipv4.conf./../net/ipv4/ip_forward` passed `^net\.ipv4\.conf\..*`
 *    and set ip_forward. The allowlist's path is a test hook
 *    (CNI_TS_TUNING_ALLOWLIST), honoured by the test build only.
 */
const BRIDGE = join(BIN, 'bridge');
let sb: Sandbox;
beforeEach(() => {
  sb = new Sandbox('sys');
});
afterEach(() => sb.cleanup());

const sysctl = (ns: string, path: string) => must(['ip', 'netns', 'exec', ns, 'cat', `/proc/sys/${path}`]).trim();

describe('sysctls of a dotted interface name', () => {
  it('bridge ADD with CNI_IFNAME=eth0.1 and an IPv6 range sets the IPv6 sysctls on that interface', () => {
    const c = sb.container();
    // New interfaces in the container start with IPv6 off and DAD on: the plugin must change both on eth0.1.
    must(['ip', 'netns', 'exec', c.name, 'sysctl', '-qw', 'net.ipv6.conf.default.disable_ipv6=1']);
    must(['ip', 'netns', 'exec', c.name, 'sysctl', '-qw', 'net.ipv6.conf.default.accept_dad=1']);
    const conf = {
      cniVersion: '1.0.0', name: 'sysnet', type: 'bridge', bridge: 'sysbr0', isGateway: true,
      ipam: { type: 'host-local', ranges: [[{ subnet: 'fd00:213::/64' }]], dataDir: join(sb.dir, 'ipam') },
    };
    const call = (command: string) => sb.plugin(BRIDGE, { command, containerId: 'sys1', netns: c.path, ifname: 'eth0.1' }, conf);
    const r = call('ADD');
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.json.interfaces[2]).toMatchObject({ name: 'eth0.1', sandbox: c.path });
    expect(sysctl(c.name, 'net/ipv6/conf/eth0.1/disable_ipv6')).toBe('0');
    expect(sysctl(c.name, 'net/ipv6/conf/eth0.1/accept_dad')).toBe('0');
    expect(sb.inNs(c.name, ['ip', '-6', '-o', 'addr', 'show', 'dev', 'eth0.1']).stdout).toContain('fd00:213::2/64');
    expect(call('DEL').code).toBe(0);
    expect(sb.inNs(c.name, ['ip', 'link', 'show', 'eth0.1']).code).not.toBe(0);
  });
});

describe('tuning sysctl allowlist', () => {
  it('judges the key that is written: dot-dot segments never pass an allowlist', () => {
    // The allowlist's path is a test hook: the test build (`make test-build`) is the one that reads it.
    expect(existsSync(join(TEST_BIN, 'tuning')), `${TEST_BIN} missing: make test-build`).toBe(true);
    const c = sb.container();
    must(['ip', 'netns', 'exec', sb.host, 'ip', 'link', 'add', 'vh-sys', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', c.name]);
    must(['ip', 'netns', 'exec', c.name, 'sysctl', '-qw', 'net.ipv4.ip_forward=0']);
    const list = join(sb.dir, 'allowlist.conf');
    writeFileSync(list, '^net\\.ipv4\\.conf\\..*\n');
    const prevResult = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', sandbox: c.path }], ips: [], dns: {} };
    const run = (sysctls: Record<string, string>) =>
      sb.plugin(join(TEST_BIN, 'tuning'), { command: 'ADD', containerId: 'sys1', netns: c.path, env: { CNI_TS_TUNING_ALLOWLIST: list } }, {
        cniVersion: '1.0.0', name: 'sysnet', type: 'tuning', dataDir: join(sb.dir, 'tuning'), sysctl: sysctls, prevResult,
      });
    for (const key of ['net.ipv4.conf./../net/ipv4/ip_forward', 'net/ipv4/conf/../ip_forward', 'net/ipv4/conf/all/../../ip_forward', 'net.ipv4.conf..ip_forward']) {
      const r = run({ [key]: '1' });
      expect(r.code, `${key}: ${r.stdout}`).toBe(1);
      expect(r.json, key).toMatchObject({ code: 7, msg: `invalid net sysctl key: "${key}"` });
      expect(sysctl(c.name, 'net/ipv4/ip_forward'), key).toBe('0');
    }
    expect(existsSync(join(sb.dir, 'tuning', 'sys1_eth0.json'))).toBe(false);
    // What the allowlist names is still allowed, in either spelling; what it does not name is not.
    const ok = run({ 'net/ipv4/conf/eth0/arp_ignore': '1', 'net.ipv4.conf.all.arp_announce': '1' });
    expect(ok.code, ok.stdout).toBe(0);
    expect(sysctl(c.name, 'net/ipv4/conf/eth0/arp_ignore')).toBe('1');
    expect(run({ 'net/ipv4/ip_forward': '1' }).json).toMatchObject({ code: 7, msg: expect.stringMatching(/^Sysctl net\/ipv4\/ip_forward is not allowed/) });
    expect(sysctl(c.name, 'net/ipv4/ip_forward')).toBe('0');
  });
});
