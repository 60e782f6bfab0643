// Real podman (Debian's 4.3, CNI backend, runc): median wall time of
// `podman run --rm --network <net> --rootfs <busybox> /bin/true` with our
// plugins against the reference ones in /usr/lib/cni, on one network that
// `podman network create` wrote, interleaved so machine noise hits both, plus
// `--network none` (podman + runc alone) as the floor. Standalone:
//   node bench/podman.mjs            (BENCH_RUNS=15 by default)
//   BENCH_PODMAN_BORROW=firewall node bench/podman.mjs   (take these from the reference)
// Everything podman writes goes to a temp dir (see test/helpers/podman.ts for
// why each setting is needed); what the plugins leave on the host for this
// network (bridge, iptables chains, IPAM/cache/dnsname dirs) is removed at the end.
import { spawnSync } from 'node:child_process';
import {
  chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmdirSync, rmSync,
  symlinkSync, writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const RUNS = Number(process.env.BENCH_RUNS ?? 15);
const REF = '/usr/lib/cni';
const OURS = process.env.BENCH_PODMAN_OURS ?? join(root, 'bin');
const BORROW = (process.env.BENCH_PODMAN_BORROW ?? '').split(',').filter(Boolean);
const PLUGINS = ['bridge', 'host-local', 'portmap', 'firewall', 'tuning', 'dnsname', 'loopback'];
const NET = `cnits-bench-${process.pid}`;
// Short: podman refuses a --runroot (which conmon's exit command passes) over 50 characters.
const dir = mkdtempSync(join(tmpdir(), 'cnits-pmb-'));

const sh = (argv, opts = {}) => {
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', timeout: 120_000, ...opts });
  return { code: r.status ?? 1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
};
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const sleep = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
const iptSave = () => ['iptables-save', 'ip6tables-save'].map((c) => sh([c]).stdout.split('\n').filter((l) => !l.startsWith('#')));
const cgroups = () => readdirSync('/sys/fs/cgroup').flatMap((c) => {
  const p = join('/sys/fs/cgroup', c, 'libpod_parent');
  return existsSync(p) ? [...readdirSync(p, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => join(p, e.name)), p] : [];
});

// Plugin directories: ours (a copy of the binary, so a rebuild of bin/ cannot
// race the benchmark) with the reference for what bin/ lacks or BORROW names.
function pluginDir(name, source) {
  const target = join(dir, name);
  mkdirSync(join(target, '.bin'), { recursive: true });
  const copies = new Map();
  const borrowed = [];
  for (const p of PLUGINS) {
    const own = join(source, p);
    if (source === REF || !existsSync(own) || BORROW.includes(p)) {
      if (source !== REF) borrowed.push(p);
      symlinkSync(join(REF, p), join(target, p));
      continue;
    }
    const real = realpathSync(own);
    if (!copies.has(real)) {
      const dest = join(target, '.bin', basename(real));
      copyFileSync(real, dest);
      chmodSync(dest, 0o755);
      copies.set(real, dest);
    }
    symlinkSync(copies.get(real), join(target, p));
    const v = sh([join(target, p)], { env: { PATH: process.env.PATH, CNI_COMMAND: 'VERSION' }, input: '{"cniVersion":"1.0.0"}' });
    if (!v.stdout.includes('supportedVersions')) throw new Error(`${own} does not answer VERSION (being rebuilt?): ${v.stderr}`);
  }
  return { target, borrowed };
}

function limits() {
  const text = readFileSync('/proc/self/limits', 'utf8');
  const hard = (label, fb) => {
    const m = text.match(new RegExp(`^${label}\\s+\\S+\\s+(\\S+)`, 'm'));
    return m && m[1] !== 'unlimited' ? Number(m[1]) : fb;
  };
  const pidMax = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8').trim()) || 4194304;
  return { nofile: hard('Max open files', 1048576), nproc: Math.min(hard('Max processes', 4194304), pidMax) };
}

function containersConf(name, pluginsDir) {
  const q = JSON.stringify;
  const { nofile, nproc } = limits();
  const file = join(dir, `${name}.conf`);
  writeFileSync(file, [
    '[containers]', `default_ulimits = [${q(`nofile=${nofile}:${nofile}`)}, ${q(`nproc=${nproc}:${nproc}`)}]`,
    '[network]', 'network_backend = "cni"', `cni_plugin_dirs = [${q(pluginsDir)}]`, `network_config_dir = ${q(join(dir, 'net'))}`,
    '[engine]', 'runtime = "runc"', 'cgroup_manager = "cgroupfs"', 'events_logger = "file"', 'lock_type = "file"',
    `tmp_dir = ${q(join(dir, 'tmp'))}`, `volume_path = ${q(join(dir, 'volumes'))}`, `image_copy_tmp_dir = ${q(join(dir, 'tmp'))}`,
    '[engine.runtimes]', `runc = [${q(join(dir, 'runc-wrapper'))}]`, '',
  ].join('\n'));
  return { PATH: process.env.PATH, HOME: join(dir, 'home'), CONTAINERS_CONF: file, CONTAINERS_STORAGE_CONF: join(dir, 'storage.conf') };
}

for (const d of ['net', 'tmp', 'volumes', 'root', 'runroot', 'runc', 'home', 'rootfs/bin', 'rootfs/etc', 'rootfs/proc', 'rootfs/sys', 'rootfs/dev']) {
  mkdirSync(join(dir, d), { recursive: true });
}
copyFileSync('/bin/busybox', join(dir, 'rootfs/bin/busybox'));
chmodSync(join(dir, 'rootfs/bin/busybox'), 0o755);
symlinkSync('busybox', join(dir, 'rootfs/bin/true'));
writeFileSync(join(dir, 'runc-wrapper'), `#!/bin/sh\nexec /usr/bin/runc --root ${JSON.stringify(join(dir, 'runc'))} "$@"\n`, { mode: 0o755 });
writeFileSync(join(dir, 'storage.conf'), `[storage]\ndriver = "vfs"\ngraphroot = ${JSON.stringify(join(dir, 'root'))}\nrunroot = ${JSON.stringify(join(dir, 'runroot'))}\n`);

const iptBefore = iptSave();
const cgBefore = new Set(cgroups());
const forwardBefore = readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8');
const ours = pluginDir('plugins-ours', OURS);
const ref = pluginDir('plugins-ref', REF);
const env = { ours: containersConf('ours', ours.target), ref: containersConf('ref', ref.target) };
const podman = (which, args) => sh(['podman', ...args], { env: env[which] });
let bridge = '';

function cleanup() {
  podman('ref', ['rm', '--all', '--force', '--time', '0']);
  podman('ref', ['network', 'rm', '--force', NET]);
  if (bridge && existsSync(`/sys/class/net/${bridge}`)) sh(['ip', 'link', 'del', bridge]);
  rmSync(join('/var/lib/cni/networks', NET), { recursive: true, force: true });
  rmSync(join('/run/containers/cni/dnsname', NET), { recursive: true, force: true });
  for (const f of existsSync('/var/lib/cni/results') ? readdirSync('/var/lib/cni/results') : []) {
    if (f.startsWith(`${NET}-`)) rmSync(join('/var/lib/cni/results', f), { force: true });
  }
  // iptables: new CNI-* chains and new rules in or jumping to them, or naming the bridge.
  iptSave().forEach((now, i) => {
    const chainsOf = (lines) => {
      let t = '';
      return new Set(lines.flatMap((l) => (l.startsWith('*') ? ((t = l.slice(1)), []) : l.startsWith(':') ? [`${t} ${l.slice(1).split(' ')[0]}`] : [])));
    };
    const before = new Set(iptBefore[i]);
    const fresh = [...chainsOf(now)].filter((c) => !chainsOf(iptBefore[i]).has(c) && c.split(' ')[1].startsWith('CNI-')).map((c) => c.split(' '));
    const del = new Map();
    const add = (t, l) => del.set(t, [...(del.get(t) ?? []), l]);
    let table = '';
    for (const l of now) {
      if (l.startsWith('*')) table = l.slice(1);
      if (!l.startsWith('-A ') || before.has(l)) continue;
      const chain = l.split(' ')[1];
      if (fresh.some(([t, c]) => t === table && c === chain)) continue;
      if (chain.startsWith('CNI-') || / -j CNI-/.test(l) || (bridge && l.includes(` ${bridge} `))) add(table, `-D ${l.slice(3)}`);
    }
    for (const [t, c] of fresh) add(t, `-F ${c}`);
    for (const [t, c] of fresh) add(t, `-X ${c}`);
    if (del.size) sh([i ? 'ip6tables-restore' : 'iptables-restore', '--noflush', '-w'], { input: [...del].map(([t, ls]) => `*${t}\n${ls.join('\n')}\nCOMMIT\n`).join('') });
  });
  writeFileSync('/proc/sys/net/ipv4/ip_forward', forwardBefore);
  for (let i = 0; i < 30; i++) {
    let busy = false;
    for (const cg of cgroups()) {
      if (cgBefore.has(cg)) continue;
      try {
        rmdirSync(cg);
      } catch (e) {
        if (e.code !== 'ENOENT') busy = true;
      }
    }
    if (!busy) break;
    sleep(100);
  }
  for (const m of readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]).filter((m) => m?.startsWith(`${dir}/`))) {
    sh(['umount', '-l', m]);
  }
  rmSync(dir, { recursive: true, force: true });
}

function time(which, network) {
  const t0 = process.hrtime.bigint();
  const r = podman(which, ['run', '--rm', '--network', network, '--rootfs', join(dir, 'rootfs'), '/bin/true']);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.code !== 0) throw new Error(`podman run (${which}, ${network}) failed: ${r.stderr}`);
  return ms;
}

try {
  for (let third = 200 + (process.pid % 40), i = 0; ; i++, third++) {
    const r = podman('ref', ['network', 'create', '--subnet', `10.231.${third}.0/24`, NET]);
    if (r.code === 0) break;
    if (i > 10 || !/already (used|in use)/.test(r.stderr)) throw new Error(`podman network create: ${r.stderr}`);
  }
  bridge = JSON.parse(podman('ref', ['network', 'inspect', NET]).stdout)[0].network_interface;
  const plugins = JSON.parse(readFileSync(join(dir, 'net', `${NET}.conflist`), 'utf8')).plugins.map((p) => p.type);
  for (const w of ['ref', 'ours', 'ref', 'ours']) time(w, NET); // warm-up (page cache, first bridge setup)
  time('ref', 'none');
  const t = { ref: [], ours: [], none: [] };
  for (let i = 0; i < RUNS; i++) {
    t.ref.push(time('ref', NET));
    t.ours.push(time('ours', NET));
    t.none.push(time('ref', 'none'));
  }
  const m = { ref: median(t.ref), ours: median(t.ours), none: median(t.none) };
  const f = (x) => x.toFixed(1);
  console.log(`podman run --rm --rootfs <busybox> /bin/true — ${RUNS} runs each, interleaved, medians (list: ${plugins.join(', ')})`);
  if (ours.borrowed.length) console.log(`"ours" took from ${REF}: ${ours.borrowed.join(', ')}`);
  console.log('| network | cni-ts (ms) | reference (ms) | ratio ours/ref |');
  console.log('|---|---:|---:|---:|');
  console.log(`| ${NET.replace(/-\d+$/, '')} (podman's list) | ${f(m.ours)} | ${f(m.ref)} | ${(m.ours / m.ref).toFixed(2)} |`);
  console.log(`| none (podman + runc alone) | ${f(m.none)} | ${f(m.none)} | — |`);
  console.log(`| CNI share (list − none) | ${f(m.ours - m.none)} | ${f(m.ref - m.none)} | ${((m.ours - m.none) / (m.ref - m.none)).toFixed(2)} |`);
} catch (e) {
  console.error(e instanceof Error ? e.message : e);
  process.exitCode = 1;
} finally {
  cleanup();
}
