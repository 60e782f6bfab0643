// Whole network lists through libcni (test/tools/cnitool), the reference
// plugins against ours in exec mode and in engine mode, interleaved in one
// run: ADD, CHECK and DEL medians of the whole list, and the largest
// resident set of any one process of the call (GNU time's %M over cnitool
// and the plugins it waits for; in engine mode the plugins are the small
// client, so that is cnitool's own).
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PLUGIN_NAMES } from '../scripts/registry.mjs';
import { modeEnv, MODES, order } from './host.mjs';

/**
 * The podman 4 default list (as `podman network create` writes it, plus
 * dnsname) and the Aos list, for network `who` ('ref', 'ours', or a load
 * network's tag) on subnets 10.<base+sub>.0.0/16.
 */
export function lists(who, tmp, sub = who === 'ref' ? 1 : 0, base = 180) {
  return {
    podman: {
      cniVersion: '1.0.0', name: `pod${who}`,
      plugins: [
        { type: 'bridge', bridge: `cpb-${who}`.slice(0, 15), isGateway: true, ipMasq: true, hairpinMode: true,
          ipam: { type: 'host-local', routes: [{ dst: '0.0.0.0/0' }], ranges: [[{ subnet: `10.${base + sub}.0.0/16`, gateway: `10.${base + sub}.0.1` }]], dataDir: join(tmp, `ipam-${who}`) } },
        { type: 'portmap', capabilities: { portMappings: true } },
        { type: 'firewall', backend: 'iptables' },
        { type: 'tuning' },
        { type: 'dnsname', domainName: 'dns.podman', capabilities: { aliases: true } },
      ],
    },
    aos: {
      cniVersion: '0.4.0', name: `aos${who}`,
      plugins: [
        { type: 'bridge', bridge: `cab-${who}`.slice(0, 15), hairpinMode: true, ipMasq: true, isGateway: true,
          ipam: { Name: '', type: 'host-local', dataDir: join(tmp, `ipam-${who}`), subnet: `10.${base + 2 + sub}.0.0/16`, routes: [{ dst: '0.0.0.0/0' }] } },
        { type: 'dnsname', capabilities: { aliases: true }, domainName: `aos${who}`, multiDomain: true },
        { type: 'aos-firewall', uuid: 'b8f745c9-9d8c-453e-8098-a29b0b4b9774', iptablesAdminChainName: 'INSTANCE_b8f745c9-9d8c-453e-8098-a29b0b4b9774', runtimeStatePath: join(tmp, `aos-${who}.conf`), inputAccess: [{ port: '8080', protocol: 'tcp' }] },
        { type: 'bandwidth', ingressRate: 1000000, ingressBurst: 12800, egressRate: 2000000, egressBurst: 12800 },
        { type: 'traffic-accounting' },
      ],
    },
  };
}

export const LABELS = {
  podman: 'podman-style list (bridge+host-local, portmap, firewall, tuning, dnsname)',
  aos: 'Aos list (bridge+host-local, dnsname, aos-firewall, bandwidth, traffic-accounting)',
};

/**
 * Runs both lists RUNS times in each mode (plus one untimed warm-up round),
 * adding rows through `row(name, set, note)`: set = { ref, exec, engine:
 * ms[], containers: [[container id, COMMAND]] of the engine calls }.
 */
export function runChains({ RUNS, tmp, H, OURS, REF, CNITOOL, row }) {
  // Plugin directories: ours, and the reference where a plugin exists there
  // (ours, executed directly, otherwise: aos-firewall and traffic-accounting).
  const dirs = { ours: OURS, ref: join(tmp, 'chain-ref-bin') };
  mkdirSync(dirs.ref, { recursive: true });
  const refHas = [];
  for (const p of PLUGIN_NAMES) {
    const have = spawnSync('test', ['-x', join(REF, p)]).status === 0;
    symlinkSync(have ? join(REF, p) : join(OURS, 'cni-ts'), join(dirs.ref, p));
    if (have) refHas.push(p);
  }
  // exec and engine share ours' networks (one container at a time, each removed before the next).
  const net = (who) => (who === 'ref' ? 'ref' : 'ours');
  const netd = { ours: join(tmp, 'netd-ours'), ref: join(tmp, 'netd-ref') };
  for (const who of ['ours', 'ref']) {
    mkdirSync(netd[who], { recursive: true });
    for (const [k, list] of Object.entries(lists(who, tmp))) writeFileSync(join(netd[who], `${k}.conflist`), JSON.stringify(list));
  }
  const rssFile = join(tmp, 'rss');
  const checkFailures = {};
  const call = (who, cmd, name, ns, id, i) => {
    const env = {
      PATH: process.env.PATH, ...modeEnv(who), NETCONFPATH: netd[net(who)], CNI_PATH: dirs[net(who)], CNI_CACHEDIR: join(tmp, `cache-${net(who)}`), CNI_CONTAINERID: id,
      CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAME=${id}`, XDG_RUNTIME_DIR: join(tmp, `xdg-${net(who)}`),
      CAP_ARGS: JSON.stringify({ portMappings: [{ hostPort: 40000 + i, containerPort: 80, protocol: 'tcp' }], aliases: { [name]: [`alias${i}`] } }),
    };
    const t0 = process.hrtime.bigint();
    const r = spawnSync('nsenter', [`--net=/var/run/netns/${H}`, '/usr/bin/time', '-f', '%M', '-o', rssFile, CNITOOL, cmd, name, `/var/run/netns/${ns}`], { env });
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    if (r.status !== 0) {
      // The reference portmap's CHECK fails on a container without IPv6 (it
      // demands its chain in ip6tables too): recorded, not fatal.
      if (cmd === 'check') {
        checkFailures[who] = `${r.stdout}${r.stderr}`.trim().slice(0, 120);
        return { ms: NaN, rssKb: 0 };
      }
      throw new Error(`cnitool ${cmd} ${name} (${who}) failed: ${r.stdout}${r.stderr}`);
    }
    return { ms, rssKb: Number(readFileSync(rssFile, 'utf8').trim().split('\n').pop()) };
  };
  for (const kind of ['podman', 'aos']) {
    const m = Object.fromEntries(MODES.map((w) => [w, { add: [], check: [], del: [], rss: [] }]));
    const engineCalls = { add: [], check: [], del: [] };
    for (let i = -1; i < RUNS; i++) {
      for (const who of order(i + 1)) {
        const name = lists(net(who), tmp)[kind].name;
        const ns = `${H}-ch-${kind}-${who}-${i}`;
        spawnSync('ip', ['netns', 'add', ns]);
        const id = `c${kind}${who}${i < 0 ? 'w' : i}`;
        for (const cmd of ['add', 'check', 'del']) {
          const r = call(who, cmd, name, ns, id, i < 0 ? RUNS : i);
          if (i < 0) continue; // warm-up
          m[who][cmd].push(r.ms);
          m[who].rss.push(r.rssKb);
          if (who === 'engine') engineCalls[cmd].push([id, cmd.toUpperCase()]);
        }
        spawnSync('ip', ['netns', 'del', ns]);
      }
    }
    const refNote = kind === 'podman' ? 'reference: all five from Debian' : 'reference: Debian bridge, host-local, dnsname, bandwidth; ours (exec) for aos-firewall and traffic-accounting (no reference)';
    const rss = (who) => (Math.max(...m[who].rss) / 1024).toFixed(0);
    for (const cmd of ['add', 'check', 'del']) {
      const failed = cmd === 'check' ? Object.entries(checkFailures).map(([w, e]) => `${w === 'ref' ? 'reference' : `ours (${w})`} CHECK fails: ${e}`).join('; ') : '';
      const note = cmd === 'add' ? `${refNote}; max RSS of one process: reference ${rss('ref')} MB, exec ${rss('exec')} MB, engine ${rss('engine')} MB (cnitool or a plugin)` : failed;
      row(`${LABELS[kind]}: ${cmd.toUpperCase()} via libcni`, { ref: m.ref[cmd], exec: m.exec[cmd], engine: m.engine[cmd], containers: engineCalls[cmd] }, note);
    }
    for (const k of Object.keys(checkFailures)) delete checkFailures[k];
  }
  rmSync(dirs.ref, { recursive: true, force: true });
  return { refHas };
}
