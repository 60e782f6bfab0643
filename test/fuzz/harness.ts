import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { BIN, must, Sandbox } from '../helpers/sandbox.js';
import { modeEnv } from '../helpers/mode.js';
import { BASE_NET, BRIDGE, CANARY, GATEWAY, GATEWAY6, PH, SUBNET, SUBNET6, baseCase, materialise, Rng, type FuzzCase } from './generate.js';

/**
 * The world the fuzz cases run in: a Sandbox host namespace holding the fuzz
 * bridge with one base attachment per slot (a container namespace with eth0
 * on the bridge, what chained plugins get as prevResult), an empty container
 * namespace per slot for cases that make their own interface, and the
 * sandbox files a case may point at (a regular file, a FIFO, a symlink loop).
 * Each slot runs one case at a time, so concurrent cases never share an
 * attachment.
 */
export interface Slot {
  index: number;
  netns: { name: string; path: string };
  base: { name: string; path: string; veth: string; ip: string };
}

export interface RunOutcome {
  code: number | null;
  signal: string | null;
  stdout: Buffer;
  stderr: string;
  ms: number;
  timedOut: boolean;
}

/** Files the world itself makes: not part of the state a case may change. */
const OWN_FILES = new Set(['regular-file', 'fifo', 'emptydir', 'symlink-loop', 'resolv.conf', 'readonly-dir', 'baseipam', 'mgr-lists']);

export class FuzzWorld {
  readonly sb: Sandbox;
  readonly slots: Slot[] = [];
  /** Our own plugin processes in flight (their pids are not "strays"). */
  private live = new Set<number>();

  constructor(nslots: number, tag = 'fuzz') {
    this.sb = new Sandbox(tag);
    try {
      this.setupFiles();
      for (let i = 0; i < nslots; i++) this.slots.push(this.makeSlot(i));
    } catch (err) {
      this.sb.cleanup();
      throw err;
    }
  }

  private setupFiles(): void {
    const d = this.sb.dir;
    writeFileSync(join(d, 'regular-file'), 'not a namespace\n');
    must(['mkfifo', join(d, 'fifo')]);
    mkdirSync(join(d, 'emptydir'));
    mkdirSync(join(d, 'readonly-dir'), { mode: 0o500 });
    symlinkSync(join(d, 'symlink-loop'), join(d, 'symlink-loop'));
    writeFileSync(join(d, 'resolv.conf'), 'nameserver 192.0.2.53\nsearch fuzz.lan\noptions ndots:2\n');
  }

  private makeSlot(i: number): Slot {
    const netns = this.sb.container();
    const baseNs = this.sb.container();
    // lo up and down once, as loopback's ADD+DEL leaves it: down, but with
    // 127.0.0.1/8 and its local routes (the kernel keeps IPv4 addresses on down).
    for (const ns of [netns.name, baseNs.name]) {
      must(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
      must(['ip', '-n', ns, 'link', 'set', 'lo', 'down']);
    }
    const ip = `10.99.0.${10 + i}`;
    const r = this.sb.plugin(join(BIN, 'bridge'), { command: 'ADD', containerId: `fzbase${i}`, netns: baseNs.path, args: `IP=${ip}` }, {
      cniVersion: '1.0.0', name: BASE_NET, type: 'bridge', bridge: BRIDGE, isGateway: true,
      ipam: { type: 'host-local', ranges: [[{ subnet: SUBNET, gateway: GATEWAY }], [{ subnet: SUBNET6, gateway: GATEWAY6 }]], dataDir: join(this.sb.dir, 'baseipam') },
    });
    if (r.code !== 0) throw new Error(`base attachment ${i}: ${r.stdout}${r.stderr}`);
    return { index: i, netns, base: { name: baseNs.name, path: baseNs.path, veth: r.json.interfaces[1].name, ip } };
  }

  vars(slot: Slot): Record<string, string> {
    return { [PH.SB]: this.sb.dir, [PH.NETNS]: slot.netns.path, [PH.BASENS]: slot.base.path, [PH.VETH]: slot.base.veth, [PH.IP]: slot.base.ip, [PH.BIN]: BIN };
  }

  /**
   * ADD then DEL of each plugin's base config (a few variants), so the
   * shared things a successful ADD leaves by design (the bridge's addresses,
   * the firewall's and portmap's shared chains, lock files) are in the
   * baseline. Returns the problems, if a base config does not work.
   */
  async warmUp(plugins: string[]): Promise<string[]> {
    const problems: string[] = [];
    for (const plugin of plugins) {
      for (let v = 0; v < 6; v++) {
        const r = new Rng(1000 + v);
        const id = `fzwarm${v}`;
        const base = baseCase(plugin, r, id, 'ADD');
        const c = { env: base.env, stdin: Buffer.from(JSON.stringify(base.config)) };
        const add = await this.run(plugin, c, this.slots[0]);
        // vlan on a kernel without 8021q: every ADD fails (code 112, naming the module); the fuzz
        // then checks that each of its cases fails cleanly and leaves nothing.
        if (add.code !== 0 && plugin === 'vlan' && /no 802\.1Q VLAN support/.test(add.stdout.toString())) continue;
        if (add.code !== 0) {
          problems.push(`${plugin} base ADD (variant ${v}) failed: ${add.stdout.toString()}${add.stderr}`);
          continue;
        }
        const del = await this.run(plugin, { ...c, env: { ...c.env, CNI_COMMAND: 'DEL' } }, this.slots[0]);
        if (del.code !== 0) problems.push(`${plugin} base DEL (variant ${v}) failed: ${del.stdout.toString()}${del.stderr}`);
      }
    }
    return problems;
  }

  /** Runs one case (a template) in a slot: the real binary, inside the host namespace, killed at the deadline. */
  run(plugin: string, c: Pick<FuzzCase, 'env' | 'stdin'>, slot: Slot, timeoutMs = 10_000): Promise<RunOutcome> {
    const { env: cniEnv, stdin } = materialise(c, this.vars(slot));
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, ...modeEnv(), XDG_RUNTIME_DIR: join(this.sb.dir, 'xdg') };
    for (const [k, v] of Object.entries(cniEnv)) if (v !== null) env[k] = v;
    return this.spawnIn(this.sb.pluginArgv(join(BIN, plugin)), env, stdin, timeoutMs);
  }

  /** Runs `cni-manager <argv>` (a template) in the host namespace, with the slot's placeholders. */
  runManager(argv: string[], slot: Slot, timeoutMs = 10_000): Promise<RunOutcome> {
    const vars = this.vars(slot);
    const real = argv.map((a) => Object.entries(vars).reduce((s, [ph, v]) => s.split(ph).join(v), a));
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, ...modeEnv(), XDG_RUNTIME_DIR: join(this.sb.dir, 'xdg') };
    return this.spawnIn(this.sb.pluginArgv(join(BIN, 'cni-manager'), ...real), env, Buffer.alloc(0), timeoutMs);
  }

  /** The network lists the manager cases read. */
  writeManagerLists(lists: Record<string, string | Buffer>): void {
    mkdirSync(join(this.sb.dir, 'mgr-lists'), { recursive: true });
    for (const [name, content] of Object.entries(lists)) writeFileSync(join(this.sb.dir, 'mgr-lists', name), content);
  }

  spawnIn(argv: string[], env: NodeJS.ProcessEnv, stdin: Buffer, timeoutMs: number): Promise<RunOutcome> {
    const t0 = performance.now();
    return new Promise((resolve) => {
      let child: ReturnType<typeof spawn>;
      try {
        // Own process group: a timeout kills the plugin and its helpers.
        child = spawn(argv[0], argv.slice(1), { env, cwd: this.sb.dir, detached: true, stdio: ['pipe', 'pipe', 'pipe'] });
      } catch (err) {
        resolve({ code: null, signal: null, stdout: Buffer.alloc(0), stderr: `spawn failed: ${err}`, ms: 0, timedOut: false });
        return;
      }
      const pid = child.pid;
      if (pid) this.live.add(pid);
      const out: Buffer[] = [];
      let err = '';
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        try {
          if (pid) process.kill(-pid, 'SIGKILL');
        } catch {
          // gone
        }
      }, timeoutMs);
      child.stdout!.on('data', (b: Buffer) => out.push(b));
      child.stderr!.on('data', (b: Buffer) => {
        if (err.length < 64 * 1024) err += b.toString();
      });
      child.stdin!.on('error', () => undefined); // EPIPE: the plugin need not read everything
      child.on('error', (e) => (err += `\nspawn error: ${e.message}`));
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        if (pid) this.live.delete(pid);
        resolve({ code, signal, stdout: Buffer.concat(out), stderr: err, ms: performance.now() - t0, timedOut });
      });
      child.stdin!.end(stdin);
    });
  }

  /**
   * The state a case must leave as it found it, one normalised line per
   * fact: the host namespace's links, addresses, routes, iptables and
   * ip6tables (every table, counters and '#' lines stripped), qdiscs and a few
   * sysctls; the slots' namespaces; the sandbox's file tree (contents hashed);
   * processes whose command line mentions the sandbox (dnsmasq); the canary.
   */
  snapshot(): string[] {
    const lines: string[] = [];
    const script = [
      'echo "##links"; ip -j -d link show',
      'echo "##addrs"; ip -j addr show',
      'echo "##routes"; ip -j -4 route show table all; ip -j -6 route show table all',
      'echo "##ipt4"; iptables-save',
      'echo "##ipt6"; ip6tables-save',
      'echo "##tc"; tc qdisc show',
      'echo "##nft"; nft -j list ruleset bridge 2>/dev/null',
      // Our nftables tables and the reference's (lib/pf: family inet).
      'echo "##nft"; nft -j list ruleset inet 2>/dev/null',
      // …and the ip/ip6 tables that are ours (portmap's cni_hostport, the reference's layout), not
      // iptables-nft's own (filter, nat, mangle, raw, security: read through iptables-save above).
      'for f in ip ip6; do for t in $(nft list tables $f 2>/dev/null | cut -d" " -f3); do case $t in filter|nat|mangle|raw|security) ;; *) echo "##nft"; nft -j list table $f "$t" 2>&1;; esac; done; done',
      'echo "##sysctl"; grep -H . /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv6/conf/all/forwarding /proc/sys/net/ipv4/conf/*/route_localnet 2>/dev/null',
    ].join('\n');
    // One process tree for the whole snapshot: the slots' namespaces through `ip -n`.
    const nsScript = this.slots.flatMap((s) =>
      [[s.netns.name, `slot${s.index}`], [s.base.name, `base${s.index}`]].map(([ns, tag]) => [
        `echo "##ns ${tag}"`,
        `echo "##links"; ip -n ${ns} -j -d link show`,
        `echo "##addrs"; ip -n ${ns} -j addr show`,
        `echo "##routes"; ip -n ${ns} -j -4 route show table all; ip -n ${ns} -j -6 route show table all`,
        // tuning writes sysctls in the container (the base one): read a few back.
        tag.startsWith('base') ? `echo "##sysctl"; ip netns exec ${ns} sh -c 'grep -H . /proc/sys/net/core/somaxconn /proc/sys/net/ipv4/conf/*/arp_filter /proc/sys/net/ipv4/conf/*/forwarding 2>/dev/null'` : '',
      ].join('\n')),
    );
    const r = spawnSync('ip', ['netns', 'exec', this.sb.host, 'sh', '-c', [script, ...nsScript].join('\n')], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
    const parts = r.stdout.split(/^##ns (\w+)\n/m);
    parseSections(parts[0], 'host', lines);
    for (let i = 1; i < parts.length; i += 2) parseSections(parts[i + 1], parts[i], lines);
    walk(this.sb.dir, this.sb.dir, lines);
    for (const p of this.processes()) lines.push(`proc ${p}`);
    if (existsSync(CANARY.replace(PH.SB, this.sb.dir))) lines.push('CANARY: a shell payload was executed');
    return multiset(lines);
  }

  /** Command lines (not our plugin runs) that mention the sandbox: dnsmasq and anything else left running. */
  processes(): string[] {
    const out: string[] = [];
    for (const name of readdirSync('/proc')) {
      const pid = Number(name);
      if (!Number.isInteger(pid) || pid === process.pid || this.live.has(pid)) continue;
      try {
        const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
        if (cmd.includes(this.sb.dir)) out.push(cmd.replace(/\0/g, ' ').trim().split(this.sb.dir).join('<SB>'));
      } catch {
        // gone
      }
    }
    return out;
  }

  /**
   * Undoes what successful ADDs keep by design and would change later cases'
   * world: bridges other than the fuzz bridge (without ports), and the fuzz
   * bridge's addresses and promisc flag. True when something was done.
   */
  repair(): boolean {
    let changed = false;
    const links = JSON.parse(this.sb.inHost(['ip', '-j', '-d', 'link', 'show']).stdout || '[]') as { ifname: string; master?: string; promiscuity?: number; linkinfo?: { info_kind?: string } }[];
    for (const l of links) {
      if (l.linkinfo?.info_kind !== 'bridge') continue;
      if (l.ifname !== BRIDGE && !links.some((p) => p.master === l.ifname)) {
        this.sb.inHost(['ip', 'link', 'del', l.ifname]);
        changed = true;
      }
      if (l.ifname === BRIDGE && l.promiscuity) {
        this.sb.inHost(['ip', 'link', 'set', BRIDGE, 'promisc', 'off']);
        changed = true;
      }
    }
    const addrs = this.sb.inHost(['ip', '-o', 'addr', 'show', 'dev', BRIDGE]).stdout;
    for (const want of [`${GATEWAY}/24`, `${GATEWAY6}/64`]) {
      if (!addrs.includes(` ${want} `)) {
        this.sb.inHost(['ip', 'addr', 'add', want, 'dev', BRIDGE, ...(want.includes(':') ? ['nodad'] : [])]);
        changed = true;
      }
    }
    for (const line of addrs.split('\n')) {
      const m = /inet6? (\S+) /.exec(line);
      if (m && m[1] !== `${GATEWAY}/24` && m[1] !== `${GATEWAY6}/64` && !m[1].startsWith('fe80:')) {
        this.sb.inHost(['ip', 'addr', 'del', m[1], 'dev', BRIDGE]);
        changed = true;
      }
    }
    return changed;
  }

  cleanup(): void {
    this.sb.cleanup();
  }
}

/** Lines of `a` not in `b` (both multisets as produced by `multiset`). */
export function minus(a: string[], b: string[]): string[] {
  const set = new Set(b);
  return a.filter((l) => !set.has(l));
}

function multiset(lines: string[]): string[] {
  const seen = new Map<string, number>();
  return lines.map((l) => {
    const n = (seen.get(l) ?? 0) + 1;
    seen.set(l, n);
    return n > 1 ? `${l} (#${n})` : l;
  });
}

const VOLATILE_FLAGS = new Set(['LOWER_UP', 'NO-CARRIER', 'M-DOWN']);

function parseSections(text: string, tag: string, out: string[]): void {
  const sections = text.split(/^##(\w+)\n/m);
  for (let i = 1; i < sections.length; i += 2) {
    const name = sections[i];
    const body = sections[i + 1];
    switch (name) {
      case 'links':
        for (const l of jsonArrays(body)) {
          const kind = l.linkinfo?.info_kind ?? l.link_type;
          const flags = (l.flags ?? []).filter((f: string) => !VOLATILE_FLAGS.has(f)).sort().join(',');
          const mac = kind === 'bridge' ? '' : ` mac=${l.address}`;
          out.push(`${tag} link ${l.ifname} kind=${kind} master=${l.master ?? '-'} mtu=${l.mtu} flags=${flags} promisc=${l.promiscuity} allmulti=${l.allmulti ?? '-'} txqlen=${l.txqlen ?? '-'}${mac}`);
        }
        break;
      case 'addrs':
        for (const l of jsonArrays(body)) {
          for (const a of l.addr_info ?? []) {
            if (a.family === 'inet6' && a.scope === 'link') continue;
            out.push(`${tag} addr ${l.ifname} ${a.local}/${a.prefixlen}`);
          }
        }
        break;
      case 'routes':
        for (const r of jsonArrays(body)) {
          const dst = String(r.dst ?? '');
          if (dst.startsWith('fe80') || dst.startsWith('ff00') || dst === 'multicast') continue;
          out.push(`${tag} route ${r.type ?? ''} ${dst} via=${r.gateway ?? '-'} dev=${r.dev ?? '-'} table=${r.table ?? 'main'} proto=${r.protocol ?? '-'} scope=${r.scope ?? '-'} metric=${r.metric ?? '-'}`);
        }
        break;
      case 'ipt4':
      case 'ipt6': {
        let table = '';
        for (const raw of body.split('\n')) {
          const line = raw.trim();
          if (!line || line.startsWith('#') || line === 'COMMIT') continue;
          if (line.startsWith('*')) {
            table = line.slice(1);
            continue;
          }
          out.push(`${tag} ${name} ${table} ${line.replace(/\s*\[\d+:\d+\]$/, '')}`);
        }
        break;
      }
      case 'tc':
        for (const raw of body.split('\n')) if (raw.trim()) out.push(`${tag} tc ${raw.trim().replace(/ refcnt \d+/, '')}`);
        break;
      case 'sysctl':
        for (const raw of body.split('\n')) if (raw.trim()) out.push(`${tag} sysctl ${raw.trim()}`);
        break;
      case 'nft': {
        // bridge's macspoofchk (the bridge family), lib/pf's tables (inet) and portmap's (ip, ip6 cni_hostport).
        // eslint-disable-next-line @typescript-eslint/no-explicit-any
        let items: any[] = [];
        try {
          items = body.trim() ? JSON.parse(body).nftables : [];
        } catch {
          out.push(`${tag} nft unreadable`);
        }
        for (const it of items) {
          if (it.table) out.push(`${tag} nft table ${it.table.family} ${it.table.name}`);
          else if (it.chain) out.push(`${tag} nft chain ${it.chain.family} ${it.chain.table} ${it.chain.name} hook=${it.chain.hook ?? '-'} prio=${it.chain.prio ?? '-'}`);
          // An anonymous counter's packets and bytes move with traffic: left out.
          else if (it.rule) out.push(`${tag} nft rule ${it.rule.family} ${it.rule.table} ${it.rule.chain} ${JSON.stringify(it.rule.expr).replace(/\{"counter":\{"packets":\d+,"bytes":\d+\}\}/g, '{"counter":{}}')} comment=${it.rule.comment ?? '-'}`);
          else if (it.set) out.push(`${tag} nft set ${it.set.family} ${it.set.table} ${it.set.name} ${JSON.stringify(it.set.elem ?? [])}`);
          else if (it.map) out.push(`${tag} nft map ${it.map.family} ${it.map.table} ${it.map.name} ${JSON.stringify(it.map.elem ?? [])}`);
          else if (it.counter) out.push(`${tag} nft counter ${it.counter.family} ${it.counter.table} ${it.counter.name}`);
        }
        break;
      }
    }
  }
}

/** `ip -j` prints one JSON array per command; a section may hold several. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
function jsonArrays(body: string): any[] {
  const out: unknown[] = [];
  for (const line of body.split('\n')) {
    const t = line.trim();
    if (!t.startsWith('[')) continue;
    try {
      out.push(...(JSON.parse(t) as unknown[]));
    } catch {
      out.push({ ifname: `unparsable: ${t.slice(0, 80)}` });
    }
  }
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  return out as any[];
}

/** Store bookkeeping the reference leaves too: content changes on every ADD, never an error to keep. */
export const BOOKKEEPING = /(^|\/)(lock|last_reserved_ip\.\d+)$/;

function walk(root: string, dir: string, out: string[], depth = 0): void {
  let names: string[];
  try {
    names = readdirSync(dir).sort();
  } catch (err) {
    out.push(`file ${relative(root, dir)} unreadable ${(err as Error).message}`);
    return;
  }
  for (const name of names) {
    const full = join(dir, name);
    const rel = relative(root, full);
    if (dir === root && OWN_FILES.has(name)) {
      if (name !== 'baseipam') continue; // the base attachments' store must stay as it is: walk it
    }
    let st;
    try {
      st = lstatSync(full);
    } catch {
      continue;
    }
    if (st.isDirectory()) {
      // Very deep trees (a dataDir of 2000 levels): only their files are listed.
      if (depth < 40) out.push(`file ${rel}/ dir`);
      walk(root, full, out, depth + 1);
    } else if (st.isFile()) {
      if (BOOKKEEPING.test(rel)) {
        out.push(`file ${rel} bookkeeping`);
        continue;
      }
      let content = st.size <= 4 * 1024 * 1024 ? readFileSync(full) : Buffer.from(`size ${st.size}`);
      // The aos-firewall state file is rewritten with the same meaning: compare the meaning.
      if (/aos_chains\.conf$/.test(name)) {
        try {
          content = Buffer.from(JSON.stringify(JSON.parse(content.toString() || '{}')));
        } catch {
          // keep the bytes
        }
      }
      // A state file holding nothing ({}): what aos-firewall leaves when its last instance goes, as the original does.
      const empty = st.size <= 16 && /^\s*\{\s*\}\s*$/.test(content.toString());
      out.push(`file ${rel} ${st.size === 0 ? 'empty' : empty ? 'emptyjson' : createHash('sha1').update(content).digest('hex').slice(0, 12)}`);
    } else {
      out.push(`file ${rel} ${st.isSymbolicLink() ? 'symlink' : st.isFIFO() ? 'fifo' : st.isSocket() ? 'socket' : 'special'}`);
    }
  }
}

/** What a case must print: problems with its exit and stdout (empty = fine). */
export function judge(command: string | null, o: RunOutcome, timeoutMs: number): string[] {
  const problems: string[] = [];
  if (o.timedOut) problems.push(`hang: killed after ${timeoutMs} ms`);
  else if (o.signal) problems.push(`killed by ${o.signal}`);
  else if (o.code !== 0 && o.code !== 1) problems.push(`exit code ${o.code}`);
  const text = o.stdout.toString('utf8');
  if (looksLikeStack(text)) problems.push('stack trace or raw error on stdout');
  if (o.code === 0) {
    if (text.trim() !== '') {
      let json: unknown;
      try {
        json = JSON.parse(text);
      } catch {
        problems.push('exit 0 with stdout that is not JSON');
      }
      if (json !== undefined && (json === null || typeof json !== 'object' || Array.isArray(json))) problems.push('exit 0 with stdout that is not a JSON object');
      else if (json && command === 'ADD' && typeof (json as { cniVersion?: unknown }).cniVersion !== 'string') problems.push('ADD result without cniVersion');
      else if (json && command === 'VERSION' && !Array.isArray((json as { supportedVersions?: unknown }).supportedVersions)) problems.push('VERSION without supportedVersions');
      else if (json && command !== 'ADD' && command !== 'VERSION') problems.push(`${command} printed a result`);
    } else if (command === 'ADD' || command === 'VERSION') {
      problems.push(`${command} exit 0 with empty stdout`);
    }
  } else if (o.code === 1) {
    let e: { code?: unknown; msg?: unknown; details?: unknown } | undefined;
    try {
      e = JSON.parse(text) as typeof e;
    } catch {
      problems.push(`exit 1 without an error JSON on stdout${text.trim() ? '' : ' (stdout empty)'}`);
    }
    if (e !== undefined) {
      if (e === null || typeof e !== 'object' || Array.isArray(e)) problems.push('error output is not a JSON object');
      else {
        if (typeof e.code !== 'number') problems.push('error JSON without a numeric code');
        if (typeof e.msg !== 'string') problems.push('error JSON without a string msg');
        if (e.details !== undefined && typeof e.details !== 'string') problems.push('error JSON details is not a string');
        // msg and details may quote an error ("Error: EINVAL ..."), never its stack.
        for (const s of [e.msg, e.details]) if (typeof s === 'string' && looksLikeStack(s, false)) problems.push('stack trace inside the error JSON');
      }
    }
  }
  return problems;
}

/**
 * A Node stack trace ("    at fn (file:1:2)") or an uncaught error's first
 * line ("TypeError: ...") anywhere in the output. Line by line with bounded
 * slices: a regex over megabytes of hostile output can take hours.
 */
export function looksLikeStack(text: string, rawErrors = true): boolean {
  for (const line of text.split('\n')) {
    const head = line.slice(0, 300);
    const trimmed = head.trimStart();
    if (trimmed !== head && trimmed.startsWith('at ') && /^at \S.*(\(.*:\d+:\d+\)|:\d+:\d+)/.test(trimmed)) return true;
    if (rawErrors && /^(\w{0,40}Error|Uncaught|node:internal)\b[:\s[]/.test(trimmed)) return true;
  }
  return false;
}

/**
 * What cni-manager must do with any argv: exit 0, or exit 1 with its error
 * on a line "cni-manager: <message>" on stderr (the usage text may follow);
 * never a stack trace, never a hang.
 */
export function judgeManager(o: RunOutcome, timeoutMs: number): string[] {
  const problems: string[] = [];
  if (o.timedOut) problems.push(`hang: killed after ${timeoutMs} ms`);
  else if (o.signal) problems.push(`killed by ${o.signal}`);
  else if (o.code !== 0 && o.code !== 1) problems.push(`exit code ${o.code}`);
  if (looksLikeStack(o.stdout.toString('utf8'))) problems.push('stack trace on stdout');
  if (looksLikeStack(o.stderr)) problems.push('stack trace on stderr');
  if (o.code === 1) {
    const lines = o.stderr.split('\n');
    const errors = lines.filter((l) => l.startsWith('cni-manager: '));
    if (errors.length !== 1 || errors[0].length <= 'cni-manager: '.length) problems.push('exit 1 without exactly one "cni-manager: <error>" line on stderr');
  }
  return problems;
}

/** The effective CNI command of an environment (what the plugin saw). */
export function commandOf(env: Record<string, string | null>): string | null {
  return env.CNI_COMMAND ?? null;
}

