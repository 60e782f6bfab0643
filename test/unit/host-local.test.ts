import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import hostLocal from '../../plugins/host-local/index.js';
import { invoke } from '../../lib/cni/skel.js';
import { CniError } from '../../lib/cni/errors.js';

// host-local needs no namespace: these run the real plugin against a temp dataDir.
let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'cnits-hl-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const conf = (ipam: Record<string, unknown>, extra: Record<string, unknown> = {}) => ({
  cniVersion: '1.1.0',
  name: 'net1',
  type: 'bridge',
  ipam: { type: 'host-local', dataDir: dir, ...ipam },
  ...extra,
});
const env = (command: string, id: string, ifname = 'eth0', args = '') => ({
  CNI_COMMAND: command, CNI_CONTAINERID: id, CNI_NETNS: '/var/run/netns/x', CNI_IFNAME: ifname, CNI_PATH: '/x', CNI_ARGS: args,
});
async function run(command: string, id: string, c: unknown, ifname = 'eth0', args = '') {
  return invoke(hostLocal as never, env(command, id, ifname, args), Buffer.from(JSON.stringify(c)));
}
async function add(id: string, c: unknown, ifname = 'eth0', args = ''): Promise<string[]> {
  const out = await run('ADD', id, c, ifname, args);
  return out.result!.ips.map((i) => i.address);
}
const codeOf = (p: Promise<unknown>) => p.then(() => 0, (e: CniError) => e.code);

describe('host-local allocation', () => {
  it('hands out addresses in order, skipping the gateway, with the reference file format', async () => {
    const c = conf({ subnet: '10.1.2.0/24', routes: [{ dst: '0.0.0.0/0' }] });
    const out = await run('ADD', 'c1', c);
    expect(out.output).toEqual({ cniVersion: '1.1.0', ips: [{ address: '10.1.2.2/24', gateway: '10.1.2.1' }], routes: [{ dst: '0.0.0.0/0' }], dns: {} });
    expect(await add('c2', c)).toEqual(['10.1.2.3/24']);
    expect(readFileSync(join(dir, 'net1', '10.1.2.2'), 'utf8')).toBe('c1\r\neth0');
    expect(readFileSync(join(dir, 'net1', 'last_reserved_ip.0'), 'utf8')).toBe('10.1.2.3');
  });

  it('goes round-robin after the last reserved address', async () => {
    const c = conf({ subnet: '10.1.2.0/29' }); // .2 .. .6
    expect(await add('a', c)).toEqual(['10.1.2.2/29']);
    expect(await add('b', c)).toEqual(['10.1.2.3/29']);
    await run('DEL', 'a', c);
    expect(await add('c', c)).toEqual(['10.1.2.4/29']); // not .2 again
  });

  it('returns the same address on a re-ADD of the same container and ifname', async () => {
    const c = conf({ subnet: '10.1.2.0/24' });
    const first = await add('c1', c);
    expect(await add('c1', c)).toEqual(first);
    expect(await add('c1', c, 'eth1')).not.toEqual(first);
  });

  it('reports exhaustion with code 110 and leaves nothing behind', async () => {
    const c = conf({ subnet: '10.1.2.0/24', rangeStart: '10.1.2.10', rangeEnd: '10.1.2.11' });
    await add('a', c);
    await add('b', c);
    const before = readdirSync(join(dir, 'net1')).sort();
    expect(await codeOf(add('c', c))).toBe(110);
    expect(readdirSync(join(dir, 'net1')).sort()).toEqual(before);
  });

  it('allocates one address per range set: dual stack', async () => {
    const c = conf({ ranges: [[{ subnet: '10.5.0.0/16' }], [{ subnet: 'fd00:5::/64', rangeStart: 'fd00:5::10' }]] });
    expect(await add('c1', c)).toEqual(['10.5.0.2/16', 'fd00:5::10/64']);
    expect(readdirSync(join(dir, 'net1'))).toContain('fd00:5::10');
  });

  it('honours requested addresses from CNI_ARGS, args.cni.ips and runtimeConfig.ips', async () => {
    expect(await add('a', conf({ subnet: '10.1.2.0/24' }), 'eth0', 'IP=10.1.2.77')).toEqual(['10.1.2.77/24']);
    expect(await add('b', conf({ subnet: '10.1.2.0/24' }, { args: { cni: { ips: ['10.1.2.78'] } } }))).toEqual(['10.1.2.78/24']);
    expect(await add('c', conf({ subnet: '10.1.2.0/24' }, { runtimeConfig: { ips: ['10.1.2.79/24'] } }))).toEqual(['10.1.2.79/24']);
    expect(await codeOf(add('d', conf({ subnet: '10.1.2.0/24' }), 'eth0', 'IP=10.1.2.77'))).toBe(111);
    expect(await codeOf(add('e', conf({ subnet: '10.1.2.0/24' }), 'eth0', 'IP=10.9.9.9'))).toBe(111);
    expect(await codeOf(add('f', conf({ subnet: '10.1.2.0/24' }), 'eth0', 'FOO=1'))).toBe(4);
  });

  it('rejects bad ranges with code 7', async () => {
    expect(await codeOf(add('a', conf({ subnet: '10.1.2.0/31' })))).toBe(7);
    expect(await codeOf(add('a', conf({ subnet: '10.1.2.0/24', rangeStart: '10.1.3.5' })))).toBe(7);
    expect(await codeOf(add('a', conf({ ranges: [[{ subnet: '10.1.0.0/16' }], [{ subnet: '10.1.2.0/24' }]] })))).toBe(7);
    expect(await codeOf(add('a', conf({})))).toBe(7);
    expect(await codeOf(add('a', conf({ subnet: 'banana' })))).toBe(7);
  });

  it('never hands out one address twice under concurrent ADDs', async () => {
    const c = conf({ subnet: '10.1.0.0/24' });
    const all = await Promise.all(Array.from({ length: 40 }, (_, i) => add(`c${i}`, c)));
    expect(new Set(all.flat()).size).toBe(40);
  });

  it('DEL is idempotent and GC keeps exactly the valid attachments', async () => {
    const c = conf({ subnet: '10.1.2.0/24' });
    for (const id of ['a', 'b', 'c']) await add(id, c);
    await run('DEL', 'a', c);
    await run('DEL', 'a', c);
    await run('GC', 'x', { ...c, 'cni.dev/valid-attachments': [{ containerID: 'b', ifname: 'eth0' }] });
    const files = readdirSync(join(dir, 'net1')).filter((f) => f.startsWith('10.'));
    expect(files).toEqual(['10.1.2.3']);
  });

  it('STATUS says whether addresses are left', async () => {
    const c = conf({ subnet: '10.1.2.0/24', rangeStart: '10.1.2.10', rangeEnd: '10.1.2.10' });
    expect(await codeOf(run('STATUS', '', c))).toBe(0);
    await add('a', c);
    expect(await codeOf(run('STATUS', '', c))).toBe(50);
  });

  it('CHECK fails when the allocation file is gone', async () => {
    const c = conf({ subnet: '10.1.2.0/24' });
    const out = await run('ADD', 'a', c);
    const withPrev = { ...c, prevResult: out.output };
    expect(await codeOf(run('CHECK', 'a', withPrev))).toBe(0);
    rmSync(join(dir, 'net1', '10.1.2.2'));
    expect(await codeOf(run('CHECK', 'a', withPrev))).toBe(115);
  });

  it('reads DNS from resolvConf', async () => {
    writeFileSync(join(dir, 'resolv.conf'), 'nameserver 1.2.3.4\nsearch a.example b.example\noptions ndots:2\n');
    const out = await run('ADD', 'a', conf({ subnet: '10.1.2.0/24', resolvConf: join(dir, 'resolv.conf') }));
    expect(out.result!.dns).toEqual({ nameservers: ['1.2.3.4'], search: ['a.example', 'b.example'], options: ['ndots:2'] });
  });
});
