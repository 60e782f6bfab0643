// make bench, the microVM plugins (docs/microvm.md, docs/tap.md,
// docs/tc-redirect-tap.md): a VM's port on a bridge (bridge's host-TAP mode,
// beside its veth mode and the reference's veth bridge), the tap plugin, and
// tc-redirect-tap chained after bridge; ours in engine and exec mode, the
// reference (Debian's) where it has the operation, interleaved round by round.
// Run by bench.mjs (BENCH_MICROVM_OURS = its private copy of bin/) or
// standalone as root: `node bench/microvm.mjs`.
// Prints a markdown table, then one line `RESULT {...}`.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { columnTimer, copyBin, engineId, fmt, median, ratio, stopEngine } from './host.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const RUNS = Number(process.env.BENCH_RUNS ?? 15);
const REF = '/usr/lib/cni';
const H = `cnits-mv-${process.pid}`;
const tmp = mkdtempSync(join(tmpdir(), 'cnits-mv-'));
const OURS = process.env.BENCH_MICROVM_OURS ?? join(tmp, 'bin');
const EXES = [join(OURS, 'cni-ts')];

/** Columns: who runs (ref or ours), in which mode. */
const COLS = [
  { key: 'ref', label: 'reference', ref: true, env: {} },
  { key: 'eng', label: 'ours (engine)', env: {} },
  { key: 'exec', label: 'ours (exec)', env: { CNI_TS_ENGINE: 'off' } },
];
const OUR_COLS = COLS.filter((c) => !c.ref);
/** Interleaving: the i-th round starts at another entry of `list`. */
const order = (i, list = COLS) => list.map((_, k) => list[(((i % list.length) + list.length) + k) % list.length]);
const dirOf = (c) => (c.ref ? REF : OURS);
const ip = (...a) => spawnSync('ip', a, { stdio: 'ignore' });
const inH = (argv) => ['nsenter', `--net=/var/run/netns/${H}`, ...argv];
const { series, timed, measure, last } = columnTimer(COLS);
const rows = [];
/** A fresh container namespace, for one call. */
const freshNs = (tag) => {
  const ns = `${H}-${tag}`;
  if (ip('netns', 'add', ns).status !== 0) throw new Error(`ip netns add ${ns} failed`);
  return ns;
};

try {
  if (!process.env.BENCH_MICROVM_OURS) copyBin(join(root, 'bin'), OURS);
  if (ip('netns', 'add', H).status !== 0) throw new Error(`ip netns add ${H} failed`);
  ip('netns', 'exec', H, 'ip', 'link', 'set', 'lo', 'up');

  // ---- 1. a VM's port on a bridge (isGateway, ipMasq, host-local): ours in host-TAP mode (the TAP in H,
  // CNI_NETNS only reported) and in veth mode, the reference in veth mode (it has no TAP mode). ----
  {
    const sets = { tap: { add: series(), del: series() }, veth: { add: series(), del: series() } };
    // One entry per measured thing: the reference's veth call is timed once a round, shown in both rows.
    const runs = [{ c: COLS[0], mode: 'veth' }, ...OUR_COLS.flatMap((c) => [{ c, mode: 'tap' }, { c, mode: 'veth' }])];
    for (let i = -1; i < RUNS; i++) {
      for (const [n, { c, mode }] of order(i + 1, runs).map((r) => [runs.indexOf(r), r])) {
        const tag = `b${c.key}${mode[0]}${i + 1}`;
        const conf = {
          cniVersion: '1.0.0', name: `mv${c.key}${mode}`, type: 'bridge', bridge: `mv-${c.key}-${mode}`.slice(0, 15), isGateway: true, ipMasq: true,
          ...(mode === 'tap' ? { tap: {} } : {}),
          ipam: { type: 'host-local', subnet: `10.${150 + n}.0.0/16`, dataDir: join(tmp, `ipam-${c.key}-${mode}`) },
        };
        // Host-TAP mode never enters CNI_NETNS: a per-VM path that does not exist, as a VM manager without a namespace passes.
        const ns = mode === 'veth' ? freshNs(tag) : undefined;
        const env = { CNI_CONTAINERID: tag, CNI_NETNS: ns ? `/var/run/netns/${ns}` : join(tmp, `vm-${tag}`), CNI_IFNAME: 'eth0', CNI_PATH: dirOf(c) };
        const set = sets[mode];
        measure(set.add, c, i, inH([join(dirOf(c), 'bridge')]), { ...env, CNI_COMMAND: 'ADD' }, JSON.stringify(conf));
        measure(set.del, c, i, inH([join(dirOf(c), 'bridge')]), { ...env, CNI_COMMAND: 'DEL' }, JSON.stringify({ ...conf, prevResult: JSON.parse(last()) }));
        if (ns) ip('netns', 'del', ns);
      }
    }
    // The reference has no TAP mode: its veth numbers are the closest operation, in both rows.
    for (const k of ['add', 'del']) sets.tap[k].ref = sets.veth[k].ref;
    rows.push(
      ['bridge host-TAP mode (VM port in the host) ADD ¹', sets.tap.add], ['bridge host-TAP mode DEL ¹', sets.tap.del],
      ['bridge veth mode (container) ADD', sets.veth.add], ['bridge veth mode DEL', sets.veth.del],
    );
  }

  // ---- 2. the tap plugin: a TAP named CNI_IFNAME in a container namespace, with host-local (no reference). ----
  {
    const add = series();
    const del = series();
    for (let i = -1; i < RUNS; i++) {
      for (const c of order(i + 1, OUR_COLS)) {
        const tag = `t${c.key}${i + 1}`;
        const ns = freshNs(tag);
        const conf = {
          cniVersion: '1.0.0', name: `mvtap${c.key}`, type: 'tap',
          ipam: { type: 'host-local', subnet: `10.${160 + OUR_COLS.indexOf(c)}.0.0/16`, dataDir: join(tmp, `ipam-tap-${c.key}`) },
        };
        const env = { CNI_CONTAINERID: tag, CNI_NETNS: `/var/run/netns/${ns}`, CNI_IFNAME: 'tap0', CNI_PATH: OURS };
        measure(add, c, i, inH([join(OURS, 'tap')]), { ...env, CNI_COMMAND: 'ADD' }, JSON.stringify(conf));
        measure(del, c, i, inH([join(OURS, 'tap')]), { ...env, CNI_COMMAND: 'DEL' }, JSON.stringify({ ...conf, prevResult: JSON.parse(last()) }));
        ip('netns', 'del', ns);
      }
    }
    rows.push(['tap + host-local ADD (no reference) ²', add], ['tap + host-local DEL (no reference) ²', del]);
  }

  // ---- 3. bridge → tc-redirect-tap: bridge's ADD (untimed) gives the prevResult, tc-redirect-tap's ADD and DEL timed. ----
  {
    const add = series();
    const del = series();
    for (let i = -1; i < RUNS; i++) {
      for (const c of order(i + 1, OUR_COLS)) {
        const tag = `r${c.key}${i + 1}`;
        const ns = freshNs(tag);
        const name = `mvtc${c.key}`;
        const bridge = {
          cniVersion: '1.0.0', name, type: 'bridge', bridge: `mv-tc-${c.key}`, isGateway: true, ipMasq: true,
          ipam: { type: 'host-local', subnet: `10.${170 + OUR_COLS.indexOf(c)}.0.0/16`, dataDir: join(tmp, `ipam-tc-${c.key}`) },
        };
        const tc = { cniVersion: '1.0.0', name, type: 'tc-redirect-tap', tapName: 'tap0' };
        const env = { CNI_CONTAINERID: tag, CNI_NETNS: `/var/run/netns/${ns}`, CNI_IFNAME: 'eth0', CNI_PATH: OURS };
        timed(c, inH([join(OURS, 'bridge')]), { ...env, CNI_COMMAND: 'ADD' }, JSON.stringify(bridge));
        const bridgeResult = JSON.parse(last());
        measure(add, c, i, inH([join(OURS, 'tc-redirect-tap')]), { ...env, CNI_COMMAND: 'ADD' }, JSON.stringify({ ...tc, prevResult: bridgeResult }));
        // As libcni does: DEL runs in reverse order, every plugin given the list's final (cached) result.
        const final = JSON.parse(last());
        measure(del, c, i, inH([join(OURS, 'tc-redirect-tap')]), { ...env, CNI_COMMAND: 'DEL' }, JSON.stringify({ ...tc, prevResult: final }));
        timed(c, inH([join(OURS, 'bridge')]), { ...env, CNI_COMMAND: 'DEL' }, JSON.stringify({ ...bridge, prevResult: final }));
        ip('netns', 'del', ns);
      }
    }
    rows.push(['tc-redirect-tap ADD after bridge (no reference) ³', add], ['tc-redirect-tap DEL (no reference) ³', del]);
  }

  // ---- the table ----
  const head = `| ${['call (median ms)', ...COLS.map((c) => c.label), 'engine/ref', 'exec/ref'].join(' | ')} |`;
  const lines = [head, `|${' --- |'.repeat(COLS.length + 3)}`];
  const result = {};
  for (const [name, set] of rows) {
    const m = Object.fromEntries(COLS.map((c) => [c.key, set[c.key].length ? median(set[c.key]) : NaN]));
    result[name.replace(/ [¹²³]$/, '')] = m;
    lines.push(`| ${name} | ${COLS.map((c) => fmt(m[c.key])).join(' | ')} | ${ratio(m.eng, m.ref)} | ${ratio(m.exec, m.ref)} |`);
  }
  console.log(lines.join('\n'));
  console.log(`\n${RUNS} rounds, columns interleaved round by round (one untimed warm-up round); plugin calls through \`nsenter --net\` into a throwaway host namespace; bridge with isGateway, ipMasq and host-local. Reference: Debian's containernetworking-plugins.`
    + ` ¹ The reference bridge has no TAP mode: its column is its veth mode (a fresh container namespace per call, the same measurements as in the veth rows), the closest operation; ours makes a TAP in the host namespace instead of a veth pair into a container.`
    + ` ² Debian's 1.1.1 has no tap plugin; a fresh container namespace per call, the TAP named CNI_IFNAME, host-local addresses on it.`
    + ` ³ The tc-redirect-tap call alone is timed (TAP, ingress qdiscs and redirect filters in the container namespace), given bridge's result as prevResult (DEL: the chain's final result, as libcni passes it); bridge's own ADD/DEL around it is untimed.`);
  console.log(`RESULT ${JSON.stringify(result)}`);
} finally {
  stopEngine(engineId(`/var/run/netns/${H}`), EXES);
  // Bridges, TAPs and masquerade rules live in H and die with it; container namespaces are removed by name.
  const left = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout.split('\n').map((l) => l.split(' ')[0]).filter((n) => n.startsWith(H));
  if (left.length) spawnSync('ip', ['-batch', '-'], { input: left.map((n) => `netns del ${n}\n`).join('') });
  rmSync(tmp, { recursive: true, force: true });
}
