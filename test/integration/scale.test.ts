import { spawn, spawnSync } from 'node:child_process';
import { appendFileSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, ROOT, Sandbox } from '../helpers/sandbox.js';
import { modeEnv, startEngine, stopEngines } from '../helpers/mode.js';
import { resolve, Traffic } from '../helpers/traffic.js';
import { FULL, sized } from '../helpers/sample.js';
import { LONG_SUITE_BACKENDS, type TestBackend } from '../helpers/backends.js';

// Scale (issue 8, item 3): 200 containers ADDed to one bridge through libcni
// (test/tools/cnitool), 16 in flight, then DELed the same way, for the
// podman-style list and the Aos list. Every ADD succeeds, addresses are
// distinct, every container reaches its gateway, dnsname answers, and
// afterwards nothing of any container is left. The time of every ADD/DEL is
// recorded by start order: it must stay flat as the count grows.
//
// Debugging (not for normal runs): CNI_TS_SCALE_LOG=<file> logs every plugin
// call's time (<file>), the plugins' CNI_TS_TRACE output (<file>.trace) and
// the tables after the ADDs (<file>.filter, <file>.nat);
// CNI_TS_SCALE_COUNT / CNI_TS_SCALE_IN_FLIGHT change the load.
//
// `make test` runs 48 containers per list (still 16 in flight, so the locks
// are contended as much); `make test-full` (CNI_TS_FULL=1) runs 200 and
// also checks that the per-call time stays flat as the count grows (a
// scaling check that needs the full count; it is the one timing in here).
const CNITOOL = join(ROOT, 'test/tools/cnitool/cnitool');
const COUNT_OF: Record<TestBackend, number> = {
  iptables: Number(process.env.CNI_TS_SCALE_COUNT) || sized(48, 200),
  // The nftables lists repeat the iptables ones with every plugin on nftables; sampled smaller in `make test`.
  nftables: Number(process.env.CNI_TS_SCALE_COUNT) || sized(24, 200),
};
let COUNT = COUNT_OF.iptables;
/** Per list, for a machine 4× slower than this one with a CPU-bound process beside it. */
const TIMEOUT = sized(900_000, 3_600_000);
const IN_FLIGHT = Number(process.env.CNI_TS_SCALE_IN_FLIGHT) || 16;
const TUNING = existsSync(join(BIN, 'tuning'));

let sb: Sandbox;
beforeEach(() => {
  sb = new Sandbox('scale');
});
afterEach(() => sb.cleanup());

interface Timed {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

function run(argv: string[], env: NodeJS.ProcessEnv): Promise<Timed> {
  return new Promise((res) => {
    const t0 = performance.now();
    const child = spawn(argv[0], argv.slice(1), { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (b) => (out += b));
    child.stderr.on('data', (b) => (err += b));
    child.on('error', (e) => res({ code: 127, stdout: '', stderr: String(e), ms: performance.now() - t0 }));
    child.on('close', (code) => res({ code: code ?? 1, stdout: out, stderr: err, ms: performance.now() - t0 }));
  });
}

/** Runs fn over items with at most `limit` in flight, started in index order. */
async function pool<T, R>(items: T[], limit: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const r0 = (x: number) => Math.round(x);

interface Container {
  ns: { name: string; path: string };
  id: string;
  pod: string;
  confDir: string;
  cap?: Record<string, unknown>;
  ip?: string;
  gateway?: string;
}

interface Scenario {
  net: string;
  /** The list for container i (written once per container when perContainer). */
  list: (i: number) => Record<string, unknown>;
  perContainer: boolean;
  cap?: (i: number) => Record<string, unknown>;
  domain: string;
  /** Chains every container shares, kept (as by the reference) after the last DEL; they must hold no container's rules. */
  shared: string[];
  /** Tokens that name one container in iptables (uuid, instance id, hostPort …), besides its id and address. */
  tokens: (c: Container, i: number) => string[];
  /** More checks once all are added. */
  verify?: (containers: Container[]) => void | Promise<void>;
}

function cnitool(c: Container, command: string, net: string): Promise<Timed> {
  return run(sb.pluginArgv(CNITOOL, command, net, c.ns.path), {
    PATH: process.env.PATH,
    ...modeEnv(),
    NETCONFPATH: c.confDir,
    CNI_PATH: join(sb.dir, 'bin'),
    CNI_CACHEDIR: join(sb.dir, 'cache'),
    CNI_CONTAINERID: c.id,
    CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAME=${c.pod}`,
    ...(c.cap ? { CAP_ARGS: JSON.stringify(c.cap) } : {}),
    XDG_RUNTIME_DIR: join(sb.dir, 'xdg'),
    ...(process.env.CNI_TS_SCALE_LOG ? { CNI_TS_TRACE: '1' } : {}),
  }).then((r) => {
    if (process.env.CNI_TS_SCALE_LOG) appendFileSync(`${process.env.CNI_TS_SCALE_LOG}.trace`, `=== ${command} ${c.id}\n${r.stderr}`);
    return r;
  });
}

function summary(label: string, runs: Timed[], totalMs: number): { first: number; last: number } {
  const ms = runs.map((r) => r.ms);
  const w = Math.min(50, Math.floor(ms.length / 2)); // 50, or half of a sampled run
  const first = median(ms.slice(0, w));
  const last = median(ms.slice(-w));
  const blocks: string[] = [];
  for (let i = 0; i < ms.length; i += 25) blocks.push(`${i + 1}-${Math.min(i + 25, ms.length)}: ${r0(median(ms.slice(i, i + 25)))}`);
  console.log(
    `${label}: ${runs.length} in ${(totalMs / 1000).toFixed(1)} s (${IN_FLIGHT} in flight, ${r0(totalMs / runs.length)} ms/container throughput); ` +
      `per call median first ${w} ${r0(first)} ms, last ${w} ${r0(last)} ms, max ${r0(Math.max(...ms))} ms; medians by start order [${blocks.join(', ')}]`,
  );
  return { first, last };
}

function iptablesSave(table: string, tool = 'iptables-save'): string[] {
  return sb.inHost([tool, '-t', table]).stdout.split('\n').filter((l) => l && !l.startsWith('#'));
}

/** Lines of `nft list ruleset` in the host namespace that belong to our nftables tables or the reference's. */
function nftOurs(only?: string): string[] {
  const out: string[] = [];
  let mine = false;
  for (const l of sb.inHost(['nft', 'list', 'ruleset']).stdout.split('\n')) {
    const t = /^table (\S+) (\S+) \{/.exec(l);
    if (t) mine = only ? t[2] === only : /^(cni_ts_|cni_plugins_|cni_hostport$)/.test(t[2]);
    if (mine && l.trim()) out.push(l.trim());
  }
  return out;
}

function leftovers(s: Scenario, containers: Container[]) {
  const tables = {
    filter: iptablesSave('filter'), nat: iptablesSave('nat'),
    'ip6 filter': iptablesSave('filter', 'ip6tables-save'), 'ip6 nat': iptablesSave('nat', 'ip6tables-save'),
  };
  const ours = (chain: string) => /^(CNI|AOS)[-_]/.test(chain);
  const chains: string[] = [];
  const sharedRules: string[] = [];
  const naming: string[] = [];
  const tokens = containers.flatMap((c, i) => [c.id, ...(c.ip ? [`${c.ip}/32`, ` ${c.ip} `, `${c.ip}:`] : []), ...s.tokens(c, i)]);
  for (const [table, lines] of Object.entries(tables)) {
    for (const l of lines) {
      const chain = /^:(\S+)/.exec(l)?.[1];
      if (chain && ours(chain) && !s.shared.includes(chain)) chains.push(`${table} ${chain}`);
      const a = /^-A (\S+) /.exec(l);
      if (!a) continue;
      // A jump to a per-container chain, or a rule naming a container, wherever it is.
      if (/-j (CNI-[0-9a-f]{24}|CNI-DN-[0-9a-f]+|AOS_[0-9a-f]+_(IN|OUT))\b/.test(l) || tokens.some((t) => (l + ' ').includes(t))) naming.push(`${table} ${l}`);
      if (s.shared.includes(a[1])) sharedRules.push(`${table} ${l}`);
    }
  }
  // nftables: our tables and the reference's (never iptables-nft's own ip/ip6 filter and nat, read above).
  const nftLines = nftOurs();
  const nftNaming = nftLines.filter((l) => tokens.some((t) => (l + ' ').includes(t)));
  naming.push(...nftNaming.map((l) => `nft ${l}`));
  const dnsDir = join(sb.dir, 'xdg/containers/cni/dnsname', s.net);
  const ipamDir = join(sb.dir, 'ipam', s.net);
  const list = (d: string) => (existsSync(d) ? readdirSync(d) : []);
  const aosState = join(sb.dir, 'aos_chains.conf');
  return {
    leftovers: {
      veths: sb.inHost(['ip', '-o', 'link', 'show', 'type', 'veth']).stdout.trim(),
      ifbs: sb.inHost(['ip', '-o', 'link', 'show', 'type', 'ifb']).stdout.trim(),
      qdiscs: sb.inHost(['tc', 'qdisc', 'show']).stdout.split('\n').filter((l) => l && !/^qdisc noqueue 0: dev /.test(l)),
      chains,
      naming,
      // nftables: the opening is one rule over a set of bridges (lib/pf/dns), kept; the network's element must go.
      port53: [...tables.filter, ...tables['ip6 filter']].filter((l) => l.includes('--dport 53 ')).concat(
        nftLines.filter((l) => / dport 53 /.test(l) && !l.includes('@')),
        nftOurs('cni_ts_dns').filter((l) => l.includes(`comment "${s.net}"`)),
      ),
      hosts: existsSync(join(dnsDir, 'addnhosts')) ? readFileSync(join(dnsDir, 'addnhosts'), 'utf8').trim() : '',
      dnsnameDir: existsSync(dnsDir),
      daemons: sb.strays(),
      allocations: list(ipamDir).filter((f) => f !== 'lock' && !f.startsWith('last_reserved_ip.')),
      cache: list(join(sb.dir, 'cache', 'results')),
      aosState: existsSync(aosState) && readFileSync(aosState, 'utf8').trim() ? Object.keys(JSON.parse(readFileSync(aosState, 'utf8'))) : [],
      tuning: list(join(sb.dir, 'tuning')),
    },
    sharedRules,
  };
}
const clean = { veths: '', ifbs: '', qdiscs: [], chains: [], naming: [], port53: [], hosts: '', dnsnameDir: false, daemons: [], allocations: [], cache: [], aosState: [], tuning: [] };

/** Copies bin/ into the temp dir, again while a concurrent build has it half written. */
async function privateBin(): Promise<void> {
  const dir = join(sb.dir, 'bin');
  // Engine mode: the engine must be the copy's. One of bin/ (the sandbox starts it) would take the
  // copy's calls too (same build), and a plugin it runs that delegates through CNI_PATH (bridge →
  // host-local) would execute the copy's client, whose call then waits in that engine's queue behind
  // the very call that made it (same container and interface) until the client's timeout.
  stopEngines(sb.host);
  for (let tries = 0; ; tries++) {
    rmSync(dir, { recursive: true, force: true });
    cpSync(BIN, dir, { recursive: true, verbatimSymlinks: true });
    // In the sandbox's namespace: in engine mode the copy's engine is the one the run then uses (and cleanup stops).
    const argv = sb.pluginArgv(join(dir, 'bridge'));
    const v = spawnSync(argv[0], argv.slice(1), { input: '{"cniVersion":"1.0.0"}', env: { PATH: process.env.PATH, ...modeEnv(), CNI_COMMAND: 'VERSION' }, encoding: 'utf8' });
    if (v.status === 0 && v.stdout.includes('supportedVersions')) {
      startEngine(sb.host, dir); // engine mode: up before the first ADD (the probe has started it)
      return;
    }
    if (tries >= 60) throw new Error(`bin/ stays unusable: ${v.stdout}${v.stderr}`);
    await new Promise((r) => setTimeout(r, 2000));
  }
}

/**
 * Debugging aid (CNI_TS_SCALE_LOG=<file>): each plugin in the private bin/
 * becomes a script that appends "<plugin> <command> <container> <start ns> <end ns> <rc>"
 * to the file, for a per-plugin breakdown of where the time goes.
 */
function wrapPlugins(log: string): void {
  const dir = join(sb.dir, 'bin');
  for (const name of readdirSync(dir)) {
    if (name === 'cni-ts' || name === 'cni-ts-client' || name.startsWith('.')) continue;
    // What the name links to: the engine-mode client where there is one (it executes cni-ts itself in exec mode).
    const target = existsSync(join(dir, 'cni-ts-client')) && name !== 'cni-manager' ? join(dir, 'cni-ts-client') : join(dir, 'cni-ts');
    rmSync(join(dir, name));
    writeFileSync(
      join(dir, name),
      `#!/bin/bash\ns=$(date +%s%N)\n(exec -a ${name} ${target})\nrc=$?\necho "${name} $CNI_COMMAND $CNI_CONTAINERID $s $(date +%s%N) $rc" >> ${log}\nexit $rc\n`,
      { mode: 0o755 },
    );
  }
}

async function scale(s: Scenario, backend: TestBackend): Promise<void> {
  // A private copy of bin/: a rebuild of the tree during the run must not
  // pull the executable from under 200 containers' worth of calls.
  await privateBin();
  if (process.env.CNI_TS_SCALE_LOG) wrapPlugins(process.env.CNI_TS_SCALE_LOG);
  const containers: Container[] = [];
  const suffix = `${process.pid}`;
  for (let i = 0; i < COUNT; i++) {
    const confDir = s.perContainer ? join(sb.dir, 'net.d', String(i)) : join(sb.dir, 'net.d', 'shared');
    if (s.perContainer || i === 0) {
      mkdirSync(confDir, { recursive: true });
      writeFileSync(join(confDir, `${s.net}.conflist`), JSON.stringify(s.list(i)));
    }
    containers.push({ ns: sb.container(), id: `scale${s.net}${suffix}x${i}`, pod: `c${i}`, confDir, cap: s.cap?.(i) });
  }

  // ADD, 16 in flight.
  let t0 = performance.now();
  const adds = await pool(containers, IN_FLIGHT, (c) => cnitool(c, 'add', s.net));
  const addTotal = performance.now() - t0;
  const failedAdds = adds.map((r, i) => ({ i, r })).filter(({ r }) => r.code !== 0);
  expect(failedAdds.slice(0, 5).map(({ i, r }) => `#${i} (${r0(r.ms)} ms): ${r.stderr.trim()}`), `${failedAdds.length} ADDs failed`).toEqual([]);
  containers.forEach((c, i) => {
    const result = JSON.parse(adds[i].stdout);
    c.ip = result.ips[0].address.split('/')[0];
    c.gateway = result.ips[0].gateway;
  });
  const addTimes = summary(`${s.net} ADD`, adds, addTotal);
  if (process.env.CNI_TS_SCALE_LOG) for (const t of ['filter', 'nat']) writeFileSync(`${process.env.CNI_TS_SCALE_LOG}.${t}`, sb.inHost(['iptables-save', '-t', t]).stdout);

  // One dnsmasq serves the network (not one per racing first ADD).
  const daemons = sb.strays().map((pid) => readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')[0]);
  expect(daemons.map((d) => d.split('/').pop())).toEqual(['dnsmasq']);
  expect(new Set(containers.map((c) => c.ip)).size).toBe(COUNT);
  expect(new Set(containers.map((c) => c.gateway)).size).toBe(1);
  const gw = containers[0].gateway!;

  t0 = performance.now();
  const pings = await pool(containers, IN_FLIGHT, (c) => run(['ip', 'netns', 'exec', c.ns.name, 'ping', '-c', '2', '-i', '0.2', '-W', '2', gw], { PATH: process.env.PATH }));
  const unreachable = containers.filter((_, i) => pings[i].code !== 0).map((c) => `${c.pod} ${c.ip}`);
  expect(unreachable, 'containers that cannot ping the gateway').toEqual([]);
  console.log(`${s.net}: ${COUNT} containers pinged ${gw} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

  await s.verify?.(containers);

  // dnsname: 10 random containers' names, asked from another container.
  const asker = containers[COUNT - 1];
  for (let k = 0; k < 10; k++) {
    const c = containers[Math.floor(Math.random() * (COUNT - 1))];
    expect(resolve(sb.dir, asker.ns.name, gw, `${c.pod}.${s.domain}`), `${c.pod}.${s.domain}`).toBe(c.ip);
  }

  // DEL, 16 in flight.
  t0 = performance.now();
  const dels = await pool(containers, IN_FLIGHT, (c) => cnitool(c, 'del', s.net));
  const delTotal = performance.now() - t0;
  const failedDels = dels.map((r, i) => ({ i, r })).filter(({ r }) => r.code !== 0);
  expect(failedDels.slice(0, 5).map(({ i, r }) => `#${i} (${r0(r.ms)} ms): ${r.stderr.trim()}`), `${failedDels.length} DELs failed`).toEqual([]);
  const delTimes = summary(`${s.net} DEL`, dels, delTotal);

  const after = leftovers(s, containers);
  expect(after.leftovers).toEqual(clean);
  console.log(`${s.net}: shared chains after the last DEL (no container's rules):\n  ${after.sharedRules.join('\n  ')}`);

  // Flat: a per-call scan of all containers (beyond the one iptables-save of
  // a table that grows with them) would make the calls at 200 containers
  // several times slower than those at a few. With 16 in flight a call's
  // time is mostly its wait for the iptables lock, whose holders each read
  // the whole table, so that save's growth shows up amplified: DEL (whose
  // first 50 run with ~200 containers present) gets more room than ADD
  // (whose first 50 also pay for 16 cold starts at once). Generous for this
  // noisy 2-core machine; a scan costing some 10 ms per container and call
  // under a lock still fails it.
  // The nftables run is held to the issue's own bound (median of the last 50 within 1.3x of the first 50).
  if (FULL && COUNT >= 150 && backend === 'nftables') {
    expect(addTimes.last, 'nftables ADD time grows with the number of containers').toBeLessThan(1.3 * addTimes.first);
    expect(delTimes.first, 'nftables DEL time grows with the number of containers').toBeLessThan(1.3 * delTimes.last);
  } else if (FULL && COUNT >= 150) {
    expect(addTimes.last, 'ADD time grows with the number of containers').toBeLessThan(2 * addTimes.first + 500);
    expect(delTimes.first, 'DEL time grows with the number of containers').toBeLessThan(2.5 * delTimes.last + 500);
  }
}

describe.each([...LONG_SUITE_BACKENDS])(`scale (%s): containers ${IN_FLIGHT} at a time, through libcni`, (backend) => {
  const nft = backend === 'nftables';
  beforeEach(() => {
    COUNT = COUNT_OF[backend];
  });
  it(`podman-style list, ${COUNT_OF[backend]} containers: bridge, portmap, firewall, ${TUNING ? 'tuning, ' : ''}dnsname`, { timeout: TIMEOUT }, async () => {
    if (!TUNING) console.log('bin/tuning does not exist yet: the podman-style list runs without tuning');
    const ipamDir = join(sb.dir, 'ipam');
    await scale({
      net: 'podscale',
      perContainer: false,
      domain: 'dns.podman',
      list: () => ({
        cniVersion: '1.0.0',
        name: 'podscale',
        plugins: [
          {
            type: 'bridge', bridge: 'cni-scale0', isGateway: true, ipMasq: true, hairpinMode: true, ipMasqBackend: backend,
            ipam: { type: 'host-local', dataDir: ipamDir, routes: [{ dst: '0.0.0.0/0' }], ranges: [[{ subnet: '10.120.0.0/22', gateway: '10.120.0.1' }]] },
          },
          { type: 'portmap', capabilities: { portMappings: true }, snat: true, backend },
          { type: 'firewall', backend, ingressPolicy: 'same-bridge' },
          ...(TUNING ? [{ type: 'tuning', sysctl: { 'net.ipv4.conf.IFNAME.arp_notify': '1' }, dataDir: join(sb.dir, 'tuning') }] : []),
          { type: 'dnsname', domainName: 'dns.podman', capabilities: { aliases: true }, backend },
        ],
      }),
      cap: (i) => ({ portMappings: [{ hostPort: 20000 + i, containerPort: 80, protocol: 'tcp' }] }),
      shared: ['CNI-HOSTPORT-DNAT', 'CNI-HOSTPORT-MASQ', 'CNI-HOSTPORT-SETMARK', 'CNI-FORWARD', 'CNI-ADMIN', 'CNI-ISOLATION-STAGE-1', 'CNI-ISOLATION-STAGE-2'],
      tokens: (_c, i) => [`--dport ${20000 + i} `, `--dports ${20000 + i} `, ` dport ${20000 + i} `],
      verify: async (containers) => {
        const nat = iptablesSave('nat');
        if (nft) {
          // Nothing of these containers on the iptables side; every one in the nftables tables.
          expect(nat.filter((l) => /^:CNI-DN-|^:CNI-[0-9a-f]{24} /.test(l)), 'iptables chains in nftables mode').toEqual([]);
          const ruleset = nftOurs().join('\n');
          const missing = containers.filter((c) => !ruleset.includes(`saddr ${c.ip} `)).map((c) => c.ip);
          expect(missing, 'containers without masquerade rules in nftables').toEqual([]);
        } else {
          expect(nat.filter((l) => /^:CNI-DN-/.test(l)).length, 'portmap chains').toBe(COUNT);
          expect(nat.filter((l) => /^:CNI-[0-9a-f]{24} /.test(l)).length, 'ipMasq chains').toBe(COUNT);
        }
        // A published port works for the first and the last container: host → bridge address:hostPort → container:80.
        const traffic = new Traffic(sb.dir);
        try {
          for (const i of [0, COUNT - 1]) {
            await traffic.serve(containers[i].ns.name, [80]);
            expect(traffic.reach(sb.host, containers[i].gateway!, 20000 + i), `hostPort ${20000 + i}`).toBe(true);
          }
        } finally {
          traffic.stop();
        }
        if (!TUNING) return;
        for (const i of [0, Math.floor(COUNT / 2), COUNT - 1]) {
          expect(sb.inNs(containers[i].ns.name, ['cat', '/proc/sys/net/ipv4/conf/eth0/arp_notify']).stdout.trim(), `arp_notify in #${i}`).toBe('1');
        }
      },
    }, backend);
  });

  it(`Aos list, ${COUNT_OF[backend]} containers: bridge, dnsname, aos-firewall, bandwidth, traffic-accounting (one list per instance, as the Aos service manager writes)`, { timeout: TIMEOUT }, async () => {
    const ipamDir = join(sb.dir, 'ipam');
    const uuid = (i: number) => `5ca1e000-0000-4000-8000-${String(i).padStart(12, '0')}`;
    await scale({
      net: 'aosscale',
      perContainer: true,
      domain: 'aosscale',
      list: (i) => ({
        cniVersion: '0.4.0',
        name: 'aosscale',
        plugins: [
          {
            type: 'bridge', bridge: 'br-aosscale', hairpinMode: true, ipMasq: true, isGateway: true, ipMasqBackend: backend,
            ipam: { Name: '', type: 'host-local', dataDir: ipamDir, subnet: '10.124.0.0/22', routes: [{ dst: '0.0.0.0/0' }] },
          },
          { type: 'dnsname', capabilities: { aliases: true }, domainName: 'aosscale', multiDomain: true, remoteServers: ['192.0.2.53'], backend },
          {
            type: 'aos-firewall', backend, uuid: uuid(i), iptablesAdminChainName: `INSTANCE_${uuid(i)}`, runtimeStatePath: join(sb.dir, 'aos_chains.conf'),
            allowPublicConnections: false,
            inputAccess: [{ port: '8080', protocol: 'tcp' }, { port: '9090', protocol: 'udp' }],
            outputAccess: [{ dstIp: '198.51.100.5', dstPort: '8080', proto: 'tcp' }],
          },
          { type: 'bandwidth', ingressRate: 1_000_000, ingressBurst: 12800, egressRate: 2_000_000, egressBurst: 12800 },
          { type: 'traffic-accounting', instanceId: uuid(i), backend },
        ],
      }),
      shared: ['AOS-FORWARD', 'AOS-FORWARD-PORT', 'AOS-OUTPUT'],
      tokens: (_c, i) => [uuid(i)],
      verify: () => {
        // Every instance got its shaping, its firewall chain and its accounting chains.
        expect(sb.inHost(['ip', '-o', 'link', 'show', 'type', 'ifb']).stdout.trim().split('\n').length, 'ifbs').toBe(COUNT);
        expect(sb.inHost(['tc', 'qdisc', 'show']).stdout.split('\n').filter((l) => l.startsWith('qdisc tbf ')).length, 'tbf qdiscs').toBe(2 * COUNT);
        const filter = iptablesSave('filter');
        if (nft) {
          expect(filter.filter((l) => /^:CNI-[0-9a-f]{24} |^:AOS_[0-9a-f]+_(IN|OUT) /.test(l)), 'iptables chains in nftables mode').toEqual([]);
          const ruleset = nftOurs().join('\n');
          const missing = [...Array(COUNT).keys()].filter((i) => !ruleset.includes(uuid(i))).map(uuid);
          expect(missing, 'instances absent from the nftables tables').toEqual([]);
        } else {
          expect(filter.filter((l) => /^:CNI-[0-9a-f]{24} /.test(l)).length, 'aos-firewall instance chains').toBe(COUNT);
          expect(filter.filter((l) => /^:AOS_[0-9a-f]+_(IN|OUT) /.test(l)).length, 'accounting chains').toBe(2 * COUNT);
        }
        const state = JSON.parse(readFileSync(join(sb.dir, 'aos_chains.conf'), 'utf8'));
        expect(Object.keys(state).length, 'aos-firewall state entries').toBe(COUNT);
      },
    }, backend);
  });
});
