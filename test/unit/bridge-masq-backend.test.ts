import { beforeEach, describe, expect, it, vi } from 'vitest';

/**
 * bridge's ipMasqBackend when a backend's tools are missing: STATUS fails
 * naming the tool (and the other choice), ADD fails the same way before it
 * makes anything. The tools' lookup (lib/exec's `which`) is replaced here
 * so that "nft" or the iptables tools are absent.
 */
const missing = new Set<string>();
vi.mock('../../lib/exec/index.js', async (orig) => {
  const real = await orig<typeof import('../../lib/exec/index.js')>();
  return { ...real, which: (tool: string) => (missing.has(tool) ? undefined : real.which(tool)) };
});
const { invoke } = await import('../../lib/cni/skel.js');
const bridge = (await import('../../plugins/bridge/index.js')).default;

const conf = (over: Record<string, unknown> = {}) => Buffer.from(JSON.stringify({ cniVersion: '1.1.0', name: 'n', type: 'bridge', ipMasq: true, ...over }));
const env = (command: string, extra: Record<string, string> = {}) => ({ CNI_COMMAND: command, CNI_PATH: '/nonexistent', CNI_IFNAME: 'eth0', ...extra });
async function outcome(command: string, c: Buffer, extra: Record<string, string> = {}) {
  try {
    await invoke(bridge, env(command, extra), c);
    return { code: 0, msg: '', details: '' };
  } catch (err) {
    const e = err as { code: number; msg: string; details?: string };
    return { code: e.code, msg: e.msg, details: e.details ?? '' };
  }
}

describe('bridge ipMasqBackend, tools missing', () => {
  beforeEach(() => missing.clear());

  it('STATUS fails with code 50 naming nft when nftables is configured and nft is missing', async () => {
    missing.add('nft');
    const r = await outcome('STATUS', conf({ ipMasqBackend: 'nftables' }));
    expect(r.code).toBe(50);
    expect(r.msg).toBe('bridge ipMasqBackend "nftables" cannot work on this host: nft not found');
    expect(r.details).toContain('"iptables"');
  });

  it('STATUS passes with ipMasq off, or unset with one backend left; fails when neither is there', async () => {
    missing.add('nft');
    expect((await outcome('STATUS', conf({ ipMasq: false, ipMasqBackend: 'nftables' }))).code).toBe(0);
    missing.add('iptables-restore');
    expect((await outcome('STATUS', conf({ ipMasq: false }))).code).toBe(0);
    const neither = await outcome('STATUS', conf());
    expect(neither.code).toBe(50);
    expect(neither.msg).toMatch(/no packet filter tool found/);
    missing.delete('nft');
    expect((await outcome('STATUS', conf())).code).toBe(0); // unset: iptables missing, nftables taken
  });

  it('ADD with an unusable configured backend fails before it touches anything (the netns is not even opened)', async () => {
    missing.add('iptables-save');
    const r = await outcome('ADD', conf({ ipMasqBackend: 'iptables', ipam: { type: 'host-local' } }), { CNI_CONTAINERID: 'x', CNI_NETNS: '/proc/self/ns/net-does-not-exist' });
    expect(r.code).toBe(50);
    expect(r.msg).toContain('iptables-save not found');
  });

  it('an unknown ipMasqBackend is a config error', async () => {
    const r = await outcome('STATUS', conf({ ipMasqBackend: 'pf' }));
    expect(r.code).toBe(7);
  });
});
