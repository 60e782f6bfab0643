import { writeSync } from 'node:fs';
import { readRegularFile } from '../lib/exec/files.js';
import { CniManager, ListError, parseNetworkList, type RuntimeConf } from './network.js';
import { PluginError } from './exec.js';

/**
 * cni-manager: run a network list like the Aos service manager.
 *   cni-manager add|del|check|status|gc <conflist> <instance-id> [options]
 */
const USAGE = `usage: cni-manager <command> <conflist> [<instance-id>] [options]

commands:
  add <conflist> <instance-id>     ADD the list to the instance; prints the result
  del <conflist> <instance-id>     DEL it (reverse order, cached result as prevResult)
  check <conflist> <instance-id>   CHECK it against the cached result
  status <conflist>                STATUS of every plugin (cniVersion 1.1.0 lists)
  gc <conflist> [<instance-id>...] GC: keep only the given instances' attachments
  traffic <conflist>               collect the instances' traffic once and print a table
  serve <conflist>                 collect every --interval seconds; Prometheus metrics on --metrics-port;
                                   a failed collection is logged and retried with backoff; stops on SIGTERM
  traffic-off                      remove the monitor's system chains (AOS_SYSTEM_IN/OUT and their jumps);
                                   instance chains stay with traffic-accounting until their DEL
  networks                         the network registry: every network of --conf-dir and of the caches, its
                                   attachments (container, ifname, MAC, host device, IPs); networks nobody
                                   uses are marked NO-USERS, ones known only from caches CACHE-ONLY
                                   (docs/registry.md); unreadable or untrusted cache files: a warning on stderr

options:
  --netns PATH       the instance's network namespace (default /run/netns/<instance-id>)
  --ifname NAME      interface in the instance (default eth0)
  --args K=V;K2=V2   CNI_ARGS (default IgnoreUnknown=1;K8S_POD_NAME=<instance-id>)
  --cap JSON         capability arguments, e.g. '{"aliases":{"net":["web"]}}'
  --cni-path DIRS    plugin directories, colon separated (default $CNI_PATH or /opt/cni/bin)
  --cache-dir DIR    result cache directory (default /var/lib/cni)
  --timeout MS       per-plugin timeout (default 60000)
  --db PATH          traffic database (SQLite; default <cache-dir>/traffic.db)
  --period P         accounting period: minute, hour, day (default), month, year
  --limits JSON      per-instance limits in bytes, e.g. '{"inst-1":{"download":1000000}}'
  --backend B        traffic/serve: iptables or nftables for the system counters (default: the list's
                     traffic-accounting backend); instances are read where they were added
  --interval SEC     serve: seconds between collections (default 60)
  --metrics-port N   serve: Prometheus text metrics on 127.0.0.1:N (a port in use: exit 1 at once)
  --json             networks: print JSON (docs/registry.md) instead of the tables
  --conf-dir DIR     networks: network configurations (default /etc/cni/net.d)
  --libcni-cache-dir DIR  networks: libcni's cache, containerd's and podman's (default /var/lib/cni)
  --help             this text

exit status: 0 success, 1 failure (the reason on stderr)
`;

function fail(msg: string): number {
  process.stderr.write(`cni-manager: ${msg}\n`);
  return 1;
}

export async function managerMain(argv: string[]): Promise<number> {
  const opts: Record<string, string> = {};
  const pos: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--help' || a === '-h') {
      process.stdout.write(USAGE);
      return 0;
    }
    if (a === '--json') {
      opts.json = 'true'; // the one flag without a value
      continue;
    }
    if (a.startsWith('--')) {
      const v = argv[++i];
      // "--db --period day": the next option is no value (it would become a file named --period).
      if (v === undefined || (v.startsWith('--') && v.length > 2)) return fail(`${a} needs a value\n\n${USAGE}`);
      opts[a.slice(2)] = v;
    } else pos.push(a);
  }
  const [command, conflist, ...ids] = pos;
  if (command === 'traffic-off') {
    if (conflist) return fail(`traffic-off takes no arguments\n\n${USAGE}`);
    try {
      const { removeSystemChains } = await import('./traffic.js');
      await removeSystemChains();
      return 0;
    } catch (err) {
      return fail((err as Error).message);
    }
  }
  if (command === 'networks') {
    if (conflist) return fail(`networks takes no arguments\n\n${USAGE}`);
    try {
      const { formatRegistry, loadRegistry } = await import('./registry.js');
      const reg = loadRegistry({
        confDir: opts['conf-dir'] ?? '/etc/cni/net.d',
        cacheDir: opts['cache-dir'] ?? '/var/lib/cni',
        libcniCacheDir: opts['libcni-cache-dir'] ?? '/var/lib/cni',
      });
      for (const w of reg.warnings) process.stderr.write(`cni-manager: warning: ${w}\n`);
      writeSync(1, opts.json ? `${JSON.stringify(reg, null, 2)}\n` : formatRegistry(reg));
      return 0;
    } catch (err) {
      return fail((err as Error).message);
    }
  }
  if (!command || !conflist) return fail(`missing command or conflist\n\n${USAGE}`);
  let list;
  try {
    list = parseNetworkList(readRegularFile(conflist, 64 * 1024 * 1024)); // a FIFO or /dev/zero as the list must not hang us
  } catch (err) {
    return fail(`cannot read network list ${conflist}: ${(err as Error).message}`);
  }
  const mgr = new CniManager({
    cniPath: (opts['cni-path'] ?? process.env.CNI_PATH ?? '/opt/cni/bin').split(':').filter(Boolean),
    cacheDir: opts['cache-dir'] ?? '/var/lib/cni',
    timeoutMs: opts.timeout ? Number(opts.timeout) : undefined,
  });
  const rtFor = (id: string): RuntimeConf => {
    let capabilityArgs: Record<string, unknown> | undefined;
    if (opts.cap) capabilityArgs = JSON.parse(opts.cap) as Record<string, unknown>;
    const args = (opts.args ?? `IgnoreUnknown=1;K8S_POD_NAME=${id}`).split(';').filter(Boolean).map((kv): [string, string] => {
      const i = kv.indexOf('=');
      return [kv.slice(0, i), kv.slice(i + 1)] as [string, string];
    });
    return { containerId: id, netns: opts.netns ?? `/run/netns/${id}`, ifname: opts.ifname ?? 'eth0', args, capabilityArgs };
  };
  try {
    switch (command) {
      case 'add': {
        if (!ids[0]) return fail('add needs an instance id');
        const result = await mgr.addNetworkList(list, rtFor(ids[0]));
        writeSync(1, `${JSON.stringify(result, null, 2)}\n`);
        return 0;
      }
      case 'del':
        if (!ids[0]) return fail('del needs an instance id');
        await mgr.deleteNetworkList(list, rtFor(ids[0]));
        return 0;
      case 'check':
        if (!ids[0]) return fail('check needs an instance id');
        await mgr.checkNetworkList(list, rtFor(ids[0]));
        return 0;
      case 'status':
        await mgr.statusNetworkList(list);
        return 0;
      case 'gc':
        await mgr.gcNetworkList(list, ids.map((id) => ({ containerID: id, ifname: opts.ifname ?? 'eth0' })));
        return 0;
      case 'traffic':
      case 'serve': {
        const { trafficCommand } = await import('./traffic-cli.js');
        return await trafficCommand(command, list, mgr, opts);
      }
      default:
        return fail(`unknown command "${command}"\n\n${USAGE}`);
    }
  } catch (err) {
    if (err instanceof ListError) return fail(err.message);
    if (err instanceof PluginError) {
      if (err.stderr.trim()) process.stderr.write(err.stderr);
      return fail(`${err.message} [code ${err.code}]`);
    }
    return fail((err as Error).message);
  }
}
