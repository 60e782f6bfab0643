// make bench, packet-filter backends (issue 15, item 7): each rule-writing
// plugin's ADD/DEL and both network lists, ours on iptables and on nftables
// (engine mode, and exec mode on nftables), beside the reference plugins
// (Debian's, iptables: the only backend Debian's 1.1.1 has) in one run,
// interleaved round by round. Run by bench.mjs (BENCH_BACKENDS_OURS = its
// private copy of bin/) or standalone as root: `node bench/backends.mjs`.
// Prints a markdown table, then one line `RESULT {...}`.
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { columnTimer, copyBin, engineId, fmt, median, nsIno, ratio, stopEngine } from './host.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const RUNS = Number(process.env.BENCH_RUNS ?? 15);
const REF = '/usr/lib/cni';
const CNITOOL = join(root, 'test/tools/cnitool/cnitool');
const H = `cnits-bk-${process.pid}`;
const tmp = mkdtempSync(join(tmpdir(), 'cnits-bk-'));
const OURS = process.env.BENCH_BACKENDS_OURS ?? join(tmp, 'bin');
const EXES = [join(OURS, 'cni-ts')];

/** Columns: who runs (ref or ours), on which backend, in which mode. */
const COLS = [
  { key: 'ref', label: 'reference (iptables)', ref: true, backend: 'iptables', env: {} },
  { key: 'ipt', label: 'ours iptables (engine)', backend: 'iptables', env: {} },
  { key: 'nft', label: 'ours nftables (engine)', backend: 'nftables', env: {} },
  { key: 'iptx', label: 'ours iptables (exec)', backend: 'iptables', env: { CNI_TS_ENGINE: 'off' } },
  { key: 'nftx', label: 'ours nftables (exec)', backend: 'nftables', env: { CNI_TS_ENGINE: 'off' } },
];
const order = (i) => COLS.map((_, k) => COLS[(i + k) % COLS.length]);
const dirOf = (c) => (c.ref ? REF : OURS);
const ip = (...a) => spawnSync('ip', a, { stdio: 'ignore' });
const inH = (argv) => ['nsenter', `--net=/var/run/netns/${H}`, ...argv];
const { series, timed, measure, last } = columnTimer(COLS);
const rows = [];

/** Per-backend config keys, as users write them. */
const fw = (c) => ({ backend: c.backend });
const masq = (c) => ({ ipMasqBackend: c.backend });

try {
  if (!process.env.BENCH_BACKENDS_OURS) copyBin(join(root, 'bin'), OURS);
  ip('netns', 'add', H);
  ip('netns', 'exec', H, 'ip', 'link', 'set', 'lo', 'up');
  ip('netns', 'add', `${H}-ctr`);
  const CTR = `/var/run/netns/${H}-ctr`;
  const hostEnv = (cid) => ({ CNI_CONTAINERID: cid, CNI_NETNS: CTR, CNI_IFNAME: 'eth0' });
  const subnetOf = (c) => COLS.indexOf(c);

  // ---- bridge + host-local with ipMasq: a fresh container namespace per call. ----
  {
    const add = series();
    const del = series();
    for (let i = -1; i < RUNS; i++) {
      for (const c of order(i + 1)) {
        const ns = `${H}-b${c.key}${i}`;
        ip('netns', 'add', ns);
        const conf = JSON.stringify({
          cniVersion: '1.0.0', name: `bm${c.key}`, type: 'bridge', bridge: `bk-${c.key}`, isGateway: true, ipMasq: true, ...(c.ref ? {} : masq(c)),
          ipam: { type: 'host-local', subnet: `10.${150 + subnetOf(c)}.0.0/16`, dataDir: join(tmp, `ipam-${c.key}`) },
        });
        const env = { CNI_CONTAINERID: `b${c.key}${i}`, CNI_NETNS: `/var/run/netns/${ns}`, CNI_IFNAME: 'eth0', CNI_PATH: dirOf(c) };
        measure(add, c, i, inH([join(dirOf(c), 'bridge')]), { ...env, CNI_COMMAND: 'ADD' }, conf);
        measure(del, c, i, inH([join(dirOf(c), 'bridge')]), { ...env, CNI_COMMAND: 'DEL' }, JSON.stringify({ ...JSON.parse(conf), prevResult: JSON.parse(last()) }));
        ip('netns', 'del', ns);
      }
    }
    rows.push(['bridge + host-local ADD (ipMasq)', add], ['bridge + host-local DEL (ipMasq)', del]);
  }

  // ---- firewall, portmap: host-side plugins over a prevResult. ----
  ip('netns', 'exec', H, 'ip', 'link', 'add', 'bk-pm', 'type', 'bridge');
  ip('netns', 'exec', H, 'ip', 'addr', 'add', '10.160.0.1/16', 'dev', 'bk-pm');
  ip('netns', 'exec', H, 'ip', 'link', 'set', 'bk-pm', 'up');
  const prevOf = (c, i) => ({
    cniVersion: '1.0.0', interfaces: [{ name: 'bk-pm' }, { name: 'eth0', sandbox: CTR }],
    ips: [{ address: `10.160.${10 + subnetOf(c)}.${(i + 2) & 255}/16`, interface: 1, gateway: '10.160.0.1' }],
  });
  const hostPlugin = (plugin, label, confOf, refToo = true) => {
    const add = series();
    const del = series();
    for (let i = -1; i < RUNS; i++) {
      for (const c of order(i + 1)) {
        if (c.ref && !refToo) continue;
        const k = i < 0 ? 250 : i;
        const conf = JSON.stringify({ cniVersion: '1.0.0', name: `${plugin}bk`, type: plugin, ...confOf(c, k), prevResult: prevOf(c, k) });
        const env = { ...hostEnv(`${plugin}${c.key}${k}`), CNI_PATH: dirOf(c) };
        measure(add, c, i, inH([join(c.ref ? REF : OURS, plugin)]), { ...env, CNI_COMMAND: 'ADD' }, conf);
        measure(del, c, i, inH([join(c.ref ? REF : OURS, plugin)]), { ...env, CNI_COMMAND: 'DEL' }, conf);
      }
    }
    rows.push([`${label} ADD`, add], [`${label} DEL`, del]);
  };
  hostPlugin('firewall', 'firewall', (c) => (c.ref ? { backend: 'iptables' } : fw(c)));
  hostPlugin('portmap', 'portmap (3 mappings)', (c, k) => ({
    ...(c.ref ? {} : fw(c)), capabilities: { portMappings: true },
    runtimeConfig: { portMappings: [{ hostPort: 30000 + k, containerPort: 80, protocol: 'tcp' }, { hostPort: 31000 + k, containerPort: 53, protocol: 'udp' }, { hostPort: 32000 + k, containerPort: 80, protocol: 'tcp', hostIP: '10.160.0.1' }] },
  }));
  hostPlugin('aos-firewall', 'aos-firewall (no reference)', (c, k) => {
    const uuid = `0b0b0000-0000-4000-8000-${String(subnetOf(c) * 1000 + k).padStart(12, '0')}`;
    return { ...fw(c), uuid, iptablesAdminChainName: `INSTANCE_${uuid}`, runtimeStatePath: join(tmp, `aos-${c.key}.conf`), inputAccess: [{ port: '8080' }] };
  }, false);
  hostPlugin('traffic-accounting', 'traffic-accounting (no reference)', (c, k) => ({ ...fw(c), instanceId: `bk-${c.key}-${k}` }), false);

  // ---- dnsname: a second container's ADD/DEL on a network whose dnsmasq runs. ----
  {
    const add = series();
    const del = series();
    const setup = {};
    for (const c of COLS) {
      const n = subnetOf(c);
      const br = `bkd-${c.key}`;
      ip('netns', 'exec', H, 'ip', 'link', 'add', br, 'type', 'bridge');
      ip('netns', 'exec', H, 'ip', 'addr', 'add', `10.170.${n}.1/24`, 'dev', br);
      ip('netns', 'exec', H, 'ip', 'link', 'set', br, 'up');
      setup[c.key] = {
        conf: (i) => JSON.stringify({
          cniVersion: '0.4.0', name: `bkdns${c.key}${process.pid}`, type: 'dnsname', domainName: 'bk.lan', ...(c.ref ? {} : fw(c)),
          prevResult: { cniVersion: '0.4.0', interfaces: [{ name: br }], ips: [{ version: '4', address: `10.170.${n}.${i + 10}/24`, gateway: `10.170.${n}.1` }] },
        }),
      };
    }
    const env = (c, cid) => ({ ...hostEnv(cid), CNI_PATH: dirOf(c), CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAME=${cid}`, XDG_RUNTIME_DIR: join(tmp, 'xdg') });
    for (const c of COLS) timed(c, inH([join(dirOf(c), 'dnsname')]), { ...env(c, `keep${c.key}`), CNI_COMMAND: 'ADD' }, setup[c.key].conf(0));
    for (let i = -1; i < RUNS; i++) {
      for (const c of order(i + 1)) {
        const k = i < 0 ? RUNS + 1 : i + 1;
        measure(add, c, i, inH([join(dirOf(c), 'dnsname')]), { ...env(c, `d${c.key}${k}`), CNI_COMMAND: 'ADD' }, setup[c.key].conf(k));
        measure(del, c, i, inH([join(dirOf(c), 'dnsname')]), { ...env(c, `d${c.key}${k}`), CNI_COMMAND: 'DEL' }, setup[c.key].conf(k));
      }
    }
    for (const c of COLS) timed(c, inH([join(dirOf(c), 'dnsname')]), { ...env(c, `keep${c.key}`), CNI_COMMAND: 'DEL' }, setup[c.key].conf(0));
    rows.push(['dnsname ADD (dnsmasq running)', add], ['dnsname DEL', del]);
  }

  // ---- both lists through libcni (test/tools/cnitool), per backend. ----
  {
    const refDir = join(tmp, 'ref-bin');
    mkdirSync(refDir);
    // The reference has no aos-firewall or traffic-accounting: ours (iptables, exec) stand in.
    for (const p of ['bridge', 'host-local', 'portmap', 'firewall', 'tuning', 'dnsname', 'bandwidth', 'loopback']) symlinkSync(join(REF, p), join(refDir, p));
    for (const p of ['aos-firewall', 'traffic-accounting']) symlinkSync(join(OURS, 'cni-ts'), join(refDir, p));
    const lists = (c) => {
      const n = subnetOf(c);
      const b = c.ref ? {} : { backend: c.backend };
      return {
        podman: {
          cniVersion: '1.0.0', name: `bkp${c.key}`,
          plugins: [
            { type: 'bridge', bridge: `bkp-${c.key}`, isGateway: true, ipMasq: true, hairpinMode: true, ...(c.ref ? {} : masq(c)),
              ipam: { type: 'host-local', routes: [{ dst: '0.0.0.0/0' }], ranges: [[{ subnet: `10.${180 + n}.0.0/16` }]], dataDir: join(tmp, `lipam-${c.key}`) } },
            { type: 'portmap', capabilities: { portMappings: true }, ...b },
            { type: 'firewall', backend: c.ref ? 'iptables' : c.backend },
            { type: 'tuning' },
            { type: 'dnsname', domainName: 'dns.podman', capabilities: { aliases: true }, ...b },
          ],
        },
        aos: {
          cniVersion: '0.4.0', name: `bka${c.key}`,
          plugins: [
            { type: 'bridge', bridge: `bka-${c.key}`, hairpinMode: true, ipMasq: true, isGateway: true, ...(c.ref ? {} : masq(c)),
              ipam: { Name: '', type: 'host-local', dataDir: join(tmp, `lipam-${c.key}`), subnet: `10.${190 + n}.0.0/16`, routes: [{ dst: '0.0.0.0/0' }] } },
            { type: 'dnsname', capabilities: { aliases: true }, domainName: `bka${c.key}`, multiDomain: true, ...b },
            { type: 'aos-firewall', ...(c.ref ? {} : b), uuid: 'b8f745c9-9d8c-453e-8098-a29b0b4b9774', iptablesAdminChainName: 'INSTANCE_b8f745c9-9d8c-453e-8098-a29b0b4b9774', runtimeStatePath: join(tmp, `laos-${c.key}.conf`), inputAccess: [{ port: '8080', protocol: 'tcp' }] },
            { type: 'bandwidth', ingressRate: 1000000, ingressBurst: 12800, egressRate: 2000000, egressBurst: 12800 },
            { type: 'traffic-accounting', ...(c.ref ? {} : b) },
          ],
        },
      };
    };
    for (const kind of ['podman', 'aos']) {
      const add = series();
      const del = series();
      for (const c of COLS) {
        const d = join(tmp, `netd-${c.key}`);
        mkdirSync(d, { recursive: true });
        writeFileSync(join(d, `${kind}.conflist`), JSON.stringify(lists(c)[kind]));
      }
      for (let i = -1; i < RUNS; i++) {
        for (const c of order(i + 1)) {
          const ns = `${H}-l${kind[0]}${c.key}${i}`;
          ip('netns', 'add', ns);
          const id = `l${kind}${c.key}${i < 0 ? 'w' : i}`;
          const env = {
            NETCONFPATH: join(tmp, `netd-${c.key}`), CNI_PATH: c.ref ? refDir : OURS, CNI_CACHEDIR: join(tmp, `cache-${c.key}`), CNI_CONTAINERID: id,
            CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAME=${id}`, XDG_RUNTIME_DIR: join(tmp, `xdg-${c.key}`),
            CAP_ARGS: JSON.stringify({ portMappings: [{ hostPort: 40000 + (i < 0 ? RUNS : i), containerPort: 80, protocol: 'tcp' }] }),
          };
          const name = lists(c)[kind].name;
          measure(add, c, i, inH([CNITOOL, 'add', name, `/var/run/netns/${ns}`]), env);
          measure(del, c, i, inH([CNITOOL, 'del', name, `/var/run/netns/${ns}`]), env);
          ip('netns', 'del', ns);
        }
      }
      const label = kind === 'podman' ? 'podman-style list (bridge, portmap, firewall, tuning, dnsname)' : 'Aos list (bridge, dnsname, aos-firewall, bandwidth, traffic-accounting)';
      rows.push([`${label}: ADD via libcni`, add], [`${label}: DEL via libcni`, del]);
    }
  }

  // ---- the table ----
  const head = `| ${['call (median ms)', ...COLS.map((c) => c.label), 'nft/ipt (engine)', 'nft/ref (engine)', 'nft/ipt (exec)'].join(' | ')} |`;
  const lines = [head, `|${' --- |'.repeat(COLS.length + 4)}`];
  const result = {};
  for (const [name, set] of rows) {
    const m = Object.fromEntries(COLS.map((c) => [c.key, set[c.key].length ? median(set[c.key]) : NaN]));
    result[name] = m;
    lines.push(`| ${name} | ${COLS.map((c) => fmt(m[c.key])).join(' | ')} | ${ratio(m.nft, m.ipt)} | ${ratio(m.nft, m.ref)} | ${ratio(m.nftx, m.iptx)} |`);
  }
  console.log(lines.join('\n'));
  console.log(`\n${RUNS} rounds, columns interleaved round by round (one untimed warm-up round). Reference: Debian's containernetworking-plugins (iptables only); where it has no plugin (aos-firewall, traffic-accounting) its column is empty, and in the Aos list ours (iptables, exec) stand in for those two.`);
  console.log(`RESULT ${JSON.stringify(result)}`);
} finally {
  stopEngine(engineId(`/var/run/netns/${H}`), EXES);
  // What a failed run left running in the bench's host namespace (dnsmasq): found by namespace, not by command line.
  const hIno = nsIno(`/var/run/netns/${H}`);
  if (hIno) {
    for (const p of readdirSync('/proc')) {
      if (!/^\d+$/.test(p) || Number(p) === process.pid) continue;
      if (nsIno(`/proc/${p}/ns/net`) === hIno) try { process.kill(Number(p), 'SIGKILL'); } catch { /* gone */ }
    }
  }
  const left = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout.split('\n').map((l) => l.split(' ')[0]).filter((n) => n.startsWith(H));
  if (left.length) spawnSync('ip', ['-batch', '-'], { input: left.map((n) => `netns del ${n}\n`).join('') });
  rmSync(tmp, { recursive: true, force: true });
}
