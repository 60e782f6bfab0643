import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ResultCache } from '../../manager/cache.js';
import { CniManager, parseNetworkList } from '../../manager/network.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'cnits-cache-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const list = { cniVersion: '0.4.0', name: 'sp1', plugins: [{ type: 'bridge', bridge: 'br0' }] };

describe('result cache (libcni cniCacheV1)', () => {
  it('round-trips an entry under <dir>/results/<network>-<container>-<ifname>, mode 0600, no temp file left', () => {
    const cache = new ResultCache(dir);
    const entry = {
      kind: 'cniCacheV1' as const, containerId: 'inst-1', ifName: 'eth0', networkName: 'sp1',
      config: Buffer.from(JSON.stringify(list)).toString('base64'),
      cniArgs: [['IgnoreUnknown', '1'], ['K8S_POD_NAME', 'inst-1']] as [string, string][],
      capabilityArgs: { aliases: { sp1: ['web'] } },
      result: { cniVersion: '0.4.0', ips: [{ version: '4', address: '10.0.0.2/24' }] },
    };
    cache.write(entry);
    expect(readdirSync(join(dir, 'results'))).toEqual(['sp1-inst-1-eth0']);
    expect(statSync(join(dir, 'results', 'sp1-inst-1-eth0')).mode & 0o777).toBe(0o600);
    expect(cache.read('sp1', 'inst-1', 'eth0')).toEqual(entry);
    expect(JSON.parse(readFileSync(join(dir, 'results', 'sp1-inst-1-eth0'), 'utf8'))).toEqual(entry);
    expect(cache.list('sp1')).toEqual([entry]);
    expect(cache.list('sp')).toEqual([]); // a prefix of the name is another network
    cache.remove('sp1', 'inst-1', 'eth0');
    cache.remove('sp1', 'inst-1', 'eth0'); // idempotent
    expect(cache.read('sp1', 'inst-1', 'eth0')).toBeUndefined();
  });

  it('ignores files that are not cniCacheV1 entries', () => {
    const cache = new ResultCache(dir);
    cache.write({ kind: 'cniCacheV1', containerId: 'a', ifName: 'eth0', networkName: 'n', config: '' });
    writeFileSync(join(dir, 'results', 'n-b-eth0'), '{"kind":"other"}');
    writeFileSync(join(dir, 'results', 'n-c-eth0'), 'not json');
    expect(cache.list('n').map((e) => e.containerId)).toEqual(['a']);
    expect(cache.read('n', 'b', 'eth0')).toBeUndefined();
  });

  it('getNetworkListCachedConfig gives back the list bytes and the runtime arguments ADD had', () => {
    const mgr = new CniManager({ cacheDir: dir });
    mgr.cache.write({ kind: 'cniCacheV1', containerId: 'i', ifName: 'eth0', networkName: 'sp1', config: Buffer.from(JSON.stringify(list)).toString('base64'), cniArgs: [['K', 'V']], capabilityArgs: { x: 1 } });
    const got = mgr.getNetworkListCachedConfig(parseNetworkList(JSON.stringify(list)), { containerId: 'i', ifname: 'eth0' });
    expect(JSON.parse(got!.config.toString())).toEqual(list);
    expect(got!.rt).toMatchObject({ args: [['K', 'V']], capabilityArgs: { x: 1 } });
  });
});

describe('network lists', () => {
  it('keeps plugin keys it does not know, refuses a list without plugins, a bad name or a bad type', () => {
    expect(parseNetworkList(JSON.stringify({ ...list, plugins: [{ type: 'bridge', Name: '', ipam: { type: 'host-local' } }] })).plugins[0]).toMatchObject({ Name: '', ipam: { type: 'host-local' } });
    expect(() => parseNetworkList('{"cniVersion":"0.4.0","name":"x","plugins":[]}')).toThrow(/at least one plugin/);
    expect(() => parseNetworkList('{"cniVersion":"0.4.0","name":"a b","plugins":[{"type":"bridge"}]}')).toThrow(/network name/);
    expect(() => parseNetworkList('{"cniVersion":"0.4.0","name":"x","plugins":[{"type":"../bin/sh"}]}')).toThrow(/plugin type/);
    expect(() => parseNetworkList('{"name":"x","plugins":[{"type":"bridge"}]}')).toThrow(/cniVersion/);
  });
});

describe('network list execution order (fake plugins that log their calls)', () => {
  // A fake plugin: a Node script that appends "<COMMAND> <type> <CNI_ARGS> <prevResult's mark>" to a log and fails where told.
  const fake = (bin: string, type: string) => {
    const file = join(bin, type);
    writeFileSync(file, `#!${process.execPath}
const fs = require('fs');
const conf = JSON.parse(fs.readFileSync(0, 'utf8'));
const cmd = process.env.CNI_COMMAND;
fs.appendFileSync(${JSON.stringify(join(bin, 'log'))}, [cmd, conf.type, process.env.CNI_ARGS, (conf.prevResult && conf.prevResult.mark) || '-'].join(' ') + '\\n');
if ((conf.failOn || []).includes(cmd)) { process.stdout.write(JSON.stringify({ cniVersion: conf.cniVersion, code: 7, msg: conf.type + ' refuses', details: 'd' })); process.exit(1); }
if (cmd === 'ADD') process.stdout.write(JSON.stringify({ cniVersion: conf.cniVersion, mark: ((conf.prevResult && conf.prevResult.mark) || '') + conf.type }));
`, { mode: 0o755 });
  };
  const log = (bin: string) => readFileSync(join(bin, 'log'), 'utf8').trim().split('\n');

  it('ADD threads prevResult; a failure DELs the plugins already run, last first; DEL runs in reverse past errors', async () => {
    const bin = join(dir, 'bin');
    const { mkdirSync } = await import('node:fs');
    mkdirSync(bin);
    for (const t of ['a', 'b', 'c']) fake(bin, t);
    const mgr = new CniManager({ cniPath: [bin], cacheDir: join(dir, 'cache') });
    const rt = { containerId: 'i1', netns: '/nonexistent', ifname: 'eth0', args: [['IgnoreUnknown', '1'], ['K8S_POD_NAME', 'i1']] as [string, string][] };
    const good = parseNetworkList(JSON.stringify({ cniVersion: '1.0.0', name: 'n', plugins: [{ type: 'a' }, { type: 'b' }, { type: 'c' }] }));
    expect(await mgr.addNetworkList(good, rt)).toMatchObject({ mark: 'abc' });
    const args = 'IgnoreUnknown=1;K8S_POD_NAME=i1';
    expect(log(bin)).toEqual([`ADD a ${args} -`, `ADD b ${args} a`, `ADD c ${args} ab`]);
    rmSync(join(bin, 'log'));

    const failing = parseNetworkList(JSON.stringify({ cniVersion: '1.0.0', name: 'n', plugins: [{ type: 'a' }, { type: 'b', failOn: ['DEL'] }, { type: 'c' }] }));
    const err = await mgr.deleteNetworkList(failing, rt).catch((e) => e);
    expect(err.message).toMatch(/plugin b failed: b refuses/);
    expect(log(bin)).toEqual([`DEL c ${args} abc`, `DEL b ${args} abc`, `DEL a ${args} abc`]); // past b's error, cached result as prevResult
    rmSync(join(bin, 'log'));

    const midway = parseNetworkList(JSON.stringify({ cniVersion: '1.0.0', name: 'n', plugins: [{ type: 'a' }, { type: 'b', failOn: ['ADD'] }, { type: 'c' }] }));
    const e2 = await mgr.addNetworkList(midway, { ...rt, containerId: 'i2' }).catch((e) => e);
    expect(e2).toMatchObject({ plugin: 'b', code: 7, msg: 'b refuses', details: 'd' });
    expect(log(bin).map((l) => l.split(' ').slice(0, 2).join(' '))).toEqual(['ADD a', 'ADD b', 'DEL b', 'DEL a']);
    expect(mgr.cache.read('n', 'i2', 'eth0')).toBeUndefined();
  });
});

describe('runtimeConfig from capabilities', () => {
  it('takes only the caller capability arguments the plugin declares, by own name (constructor, __proto__)', () => {
    // Written as JSON text: an object literal's __proto__ would set the prototype instead of a key.
    const list = parseNetworkList('{"cniVersion":"1.0.0","name":"caps","plugins":[{"type":"portmap","capabilities":{"portMappings":true,"constructor":true,"toString":true,"__proto__":true}}]}');
    const mgr = new CniManager({ cacheDir: '/nonexistent' });
    const rt = (caps: string) => ({ containerId: 'c', ifname: 'eth0', capabilityArgs: JSON.parse(caps) as Record<string, unknown> });
    const conf = (caps: string) => JSON.parse(mgr.pluginConfig(list, list.plugins[0], rt(caps)));
    // Nothing the caller did not pass: no inherited constructor/toString slips in.
    expect(conf('{"portMappings":[]}').runtimeConfig).toEqual({ portMappings: [] });
    expect(conf('{}').runtimeConfig).toBeUndefined();
    // __proto__ is no capability: the list's schema drops it, and nothing reaches runtimeConfig.
    expect(conf('{"__proto__":{"x":1}}').runtimeConfig).toBeUndefined();
  });
});
