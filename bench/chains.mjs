// Whole network lists through libcni (test/tools/cnitool), ours against the
// reference plugins, interleaved in one run: ADD, CHECK and DEL medians of
// the whole list, and the largest resident set of any one plugin process of
// the call (GNU time's %M over cnitool and the plugins it waits for).
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const median = (xs) => {
  const s = xs.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  if (!s.length) return NaN;
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** The podman 4 default list (as `podman network create` writes it, plus dnsname) and the Aos list. */
export function lists(who, tmp) {
  const sub = who === 'ours' ? 0 : 1;
  return {
    podman: {
      cniVersion: '1.0.0', name: `pod${who}`,
      plugins: [
        { type: 'bridge', bridge: `cpb-${who}`, isGateway: true, ipMasq: true, hairpinMode: true,
          ipam: { type: 'host-local', routes: [{ dst: '0.0.0.0/0' }], ranges: [[{ subnet: `10.${180 + sub}.0.0/16`, gateway: `10.${180 + sub}.0.1` }]], dataDir: join(tmp, `ipam-${who}`) } },
        { type: 'portmap', capabilities: { portMappings: true } },
        { type: 'firewall', backend: 'iptables' },
        { type: 'tuning' },
        { type: 'dnsname', domainName: 'dns.podman', capabilities: { aliases: true } },
      ],
    },
    aos: {
      cniVersion: '0.4.0', name: `aos${who}`,
      plugins: [
        { type: 'bridge', bridge: `cab-${who}`, hairpinMode: true, ipMasq: true, isGateway: true,
          ipam: { Name: '', type: 'host-local', dataDir: join(tmp, `ipam-${who}`), subnet: `10.${182 + sub}.0.0/16`, routes: [{ dst: '0.0.0.0/0' }] } },
        { type: 'dnsname', capabilities: { aliases: true }, domainName: `aos${who}`, multiDomain: true },
        { type: 'aos-firewall', uuid: 'b8f745c9-9d8c-453e-8098-a29b0b4b9774', iptablesAdminChainName: 'INSTANCE_b8f745c9-9d8c-453e-8098-a29b0b4b9774', runtimeStatePath: join(tmp, `aos-${who}.conf`), inputAccess: [{ port: '8080', protocol: 'tcp' }] },
        { type: 'bandwidth', ingressRate: 1000000, ingressBurst: 12800, egressRate: 2000000, egressBurst: 12800 },
        { type: 'traffic-accounting' },
      ],
    },
  };
}

export function runChains({ RUNS, tmp, H, OURS, REF, CNITOOL, row }) {
  // Plugin directories: ours, and the reference where a plugin exists there (ours otherwise).
  const dirs = { ours: OURS, ref: join(tmp, 'chain-ref-bin') };
  mkdirSync(dirs.ref, { recursive: true });
  const refHas = [];
  for (const p of ['bridge', 'host-local', 'portmap', 'firewall', 'tuning', 'dnsname', 'aos-firewall', 'bandwidth', 'traffic-accounting', 'loopback']) {
    const have = spawnSync('test', ['-x', join(REF, p)]).status === 0;
    symlinkSync(have ? join(REF, p) : join(OURS, 'cni-ts'), join(dirs.ref, p));
    if (have) refHas.push(p);
  }
  const netd = { ours: join(tmp, 'netd-ours'), ref: join(tmp, 'netd-ref') };
  for (const who of ['ours', 'ref']) {
    mkdirSync(netd[who], { recursive: true });
    const l = lists(who, tmp);
    for (const [k, list] of Object.entries(l)) writeFileSync(join(netd[who], `${k}.conflist`), JSON.stringify(list));
  }
  const rssFile = join(tmp, 'rss');
  const checkFailures = {};
  const call = (who, cmd, net, ns, id, i) => {
    const env = {
      PATH: process.env.PATH, NETCONFPATH: netd[who], CNI_PATH: dirs[who], CNI_CACHEDIR: join(tmp, `cache-${who}`), CNI_CONTAINERID: id,
      CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAME=${id}`, XDG_RUNTIME_DIR: join(tmp, `xdg-${who}`),
      CAP_ARGS: JSON.stringify({ portMappings: [{ hostPort: 40000 + i, containerPort: 80, protocol: 'tcp' }], aliases: { [net]: [`alias${i}`] } }),
    };
    const t0 = process.hrtime.bigint();
    const r = spawnSync('nsenter', [`--net=/var/run/netns/${H}`, '/usr/bin/time', '-f', '%M', '-o', rssFile, CNITOOL, cmd, net, `/var/run/netns/${ns}`], { env });
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    if (r.status !== 0) {
      // The reference portmap's CHECK fails on a container without IPv6 (it
      // demands its chain in ip6tables too): recorded, not fatal.
      if (cmd === 'check') {
        checkFailures[who] = `${r.stdout}${r.stderr}`.trim().slice(0, 120);
        return { ms: NaN, rssKb: 0 };
      }
      throw new Error(`cnitool ${cmd} ${net} (${who}) failed: ${r.stdout}${r.stderr}`);
    }
    return { ms, rssKb: Number(readFileSync(rssFile, 'utf8').trim().split('\n').pop()) };
  };
  const out = {};
  for (const kind of ['podman', 'aos']) {
    const m = { ours: { add: [], check: [], del: [], rss: [] }, ref: { add: [], check: [], del: [], rss: [] } };
    for (let i = 0; i < RUNS; i++) {
      for (const who of i % 2 ? ['ref', 'ours'] : ['ours', 'ref']) {
        const net = lists(who, tmp)[kind].name;
        const ns = `${H}-ch-${kind}-${who}-${i}`;
        spawnSync('ip', ['netns', 'add', ns]);
        const id = `c${kind}${who}${i}`;
        for (const cmd of ['add', 'check', 'del']) {
          const r = call(who, cmd, net, ns, id, i);
          m[who][cmd].push(r.ms);
          m[who].rss.push(r.rssKb);
        }
        spawnSync('ip', ['netns', 'del', ns]);
      }
    }
    const label = kind === 'podman' ? 'podman-style list (bridge+host-local, portmap, firewall, tuning, dnsname)' : 'Aos list (bridge+host-local, dnsname, aos-firewall, bandwidth, traffic-accounting)';
    const refNote = kind === 'podman' ? 'reference: all five from Debian' : 'reference: Debian bridge, host-local, dnsname, bandwidth; ours for aos-firewall and traffic-accounting (no reference)';
    const rss = (who) => (Math.max(...m[who].rss) / 1024).toFixed(0);
    for (const cmd of ['add', 'check', 'del']) {
      const failed = cmd === 'check' ? Object.entries(checkFailures).map(([w, e]) => `${w === 'ref' ? 'reference' : 'ours'} CHECK fails: ${e}`).join('; ') : '';
      row(`${label}: ${cmd.toUpperCase()} via libcni`, median(m.ours[cmd]), median(m.ref[cmd]), cmd === 'add' ? `${refNote}; max RSS of one process: ours ${rss('ours')} MB, reference ${rss('ref')} MB` : failed);
    }
    out[kind] = m;
    for (const k of Object.keys(checkFailures)) delete checkFailures[k];
  }
  rmSync(dirs.ref, { recursive: true, force: true });
  return { refHas, out };
}
