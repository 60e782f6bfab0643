// make demo: ADD the example network (conf.d/10-bridge.conflist) to a fresh
// container namespace with the built binaries, show the result and a ping,
// DEL, and clean up. It all happens inside a throwaway "host" namespace, so
// this machine's own links and iptables are left alone.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const list = JSON.parse(readFileSync(join(root, 'conf.d/10-bridge.conflist'), 'utf8'));
const H = `cni-ts-demo-host-${process.pid}`;
const C = `cni-ts-demo-ctr-${process.pid}`;
const tmp = mkdtempSync(join(tmpdir(), 'cni-ts-demo-'));

function run(argv, opts = {}) {
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', ...opts });
  if (r.status !== 0) throw new Error(`${argv.join(' ')} failed: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

// Runs the list the way libcni does: each plugin gets its own object plus
// cniVersion, name and the previous plugin's result.
function runList(command, prevResult) {
  const plugins = command === 'DEL' ? [...list.plugins].reverse() : list.plugins;
  let result = prevResult;
  for (const p of plugins) {
    const conf = { ...p, cniVersion: list.cniVersion, name: list.name, ...(result ? { prevResult: result } : {}) };
    if (conf.ipam) conf.ipam = { ...conf.ipam, dataDir: join(tmp, 'ipam') };
    const env = { PATH: process.env.PATH, CNI_COMMAND: command, CNI_CONTAINERID: 'demo', CNI_NETNS: `/var/run/netns/${C}`, CNI_IFNAME: 'eth0', CNI_PATH: join(root, 'bin') };
    const out = run(['ip', 'netns', 'exec', H, join(root, 'bin', p.type)], { env, input: JSON.stringify(conf) });
    if (command === 'ADD') result = JSON.parse(out);
  }
  return result;
}

try {
  run(['ip', 'netns', 'add', H]);
  run(['ip', 'netns', 'add', C]);
  console.log(`$ ADD ${list.name} (${list.plugins.map((p) => p.type).join(' → ')}) into ${C}`);
  const result = runList('ADD');
  console.log(JSON.stringify(result, null, 2));
  const gw = result.ips[0].gateway;
  console.log(`\n$ ip -br addr (container)\n${run(['ip', 'netns', 'exec', C, 'ip', '-br', 'addr'])}`);
  console.log(`$ ping -c 2 ${gw} (container → bridge gateway)\n${run(['ip', 'netns', 'exec', C, 'ping', '-c', '2', '-W', '2', gw])}`);
  runList('DEL', result);
  const left = run(['ip', 'netns', 'exec', H, 'iptables-save', '-t', 'nat']).includes(':CNI-') ? 'NAT chain left!' : 'no NAT chain left';
  console.log(`$ DEL done: ${left}; eth0 in container: ${spawnSync('ip', ['netns', 'exec', C, 'ip', 'link', 'show', 'eth0']).status === 0 ? 'still there!' : 'gone'}`);
} finally {
  spawnSync('ip', ['netns', 'del', C]);
  spawnSync('ip', ['netns', 'del', H]);
  rmSync(tmp, { recursive: true, force: true });
}
