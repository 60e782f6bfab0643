import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Real TCP/UDP traffic between namespaces with small Node programs: a server
 * that answers on given ports, and a probe that says whether a connection
 * (or a UDP round trip) got through within a timeout.
 */
const SERVER = `
const net = require('net'), dgram = require('dgram');
const [tcp, udp] = [process.argv[2], process.argv[3]].map((s) => (s ? s.split(',').filter(Boolean).map(Number) : []));
let pending = tcp.length + udp.length;
const ready = () => { if (--pending === 0) process.stdout.write('ready\\n'); };
for (const p of tcp) net.createServer((c) => { c.end('ok'); c.on('error', () => {}); }).listen(p, '0.0.0.0', ready);
for (const p of udp) { const s = dgram.createSocket('udp4'); s.on('message', (m, r) => s.send('ok', r.port, r.address)); s.bind(p, '0.0.0.0', ready); }
if (pending === 0) process.stdout.write('ready\\n');
`;
const PROBE = `
const net = require('net'), dgram = require('dgram');
const [host, port, proto] = [process.argv[2], Number(process.argv[3]), process.argv[4]];
const done = (ok) => { process.stdout.write(ok ? 'open' : 'closed'); process.exit(0); };
setTimeout(() => done(false), Number(process.argv[5] || 1500));
if (proto === 'udp') {
  const s = dgram.createSocket('udp4');
  s.on('message', () => done(true));
  s.on('error', () => done(false));
  s.send('hi', port, host);
} else {
  const c = net.connect({ host, port }, () => {});
  c.on('data', () => done(true));
  c.on('error', () => done(false));
}
`;

export class Traffic {
  private servers: ChildProcess[] = [];
  private serverFile: string;
  private probeFile: string;

  constructor(dir: string) {
    this.serverFile = join(dir, 'server.cjs');
    this.probeFile = join(dir, 'probe.cjs');
    writeFileSync(this.serverFile, SERVER);
    writeFileSync(this.probeFile, PROBE);
  }

  /** Starts a server in `ns` answering on the given TCP and UDP ports; resolves once listening. */
  serve(ns: string, tcp: number[], udp: number[] = []): Promise<void> {
    const child = spawn('ip', ['netns', 'exec', ns, process.execPath, this.serverFile, tcp.join(','), udp.join(',')], { stdio: ['ignore', 'pipe', 'inherit'] });
    this.servers.push(child);
    return new Promise((resolve, reject) => {
      child.stdout!.on('data', (b: Buffer) => b.toString().includes('ready') && resolve());
      child.on('exit', (code) => reject(new Error(`server in ${ns} exited (${code})`)));
    });
  }

  /** true when a TCP connection (or a UDP answer) from `ns` to host:port gets through. */
  reach(ns: string, host: string, port: number, proto: 'tcp' | 'udp' = 'tcp'): boolean {
    const r = spawnSync('ip', ['netns', 'exec', ns, process.execPath, this.probeFile, host, String(port), proto], { encoding: 'utf8' });
    return r.stdout === 'open';
  }

  ping(ns: string, host: string): boolean {
    return spawnSync('ip', ['netns', 'exec', ns, 'ping', '-c', '1', '-W', '1', host]).status === 0;
  }

  stop(): void {
    for (const s of this.servers) s.kill('SIGKILL');
    this.servers = [];
  }
}

const RESOLVE = `
const { Resolver } = require('dns').promises;
const r = new Resolver({ timeout: 1000, tries: 2 });
r.setServers([process.argv[2]]);
r.resolve4(process.argv[3]).then((a) => process.stdout.write(a.sort().join(',')), (e) => process.stdout.write(e.code || 'ERROR'));
`;

/** Resolves `name` (A records) against `server` from inside `ns`: the addresses, or the error code (ENOTFOUND = NXDOMAIN). */
export function resolve(dir: string, ns: string, server: string, name: string): string {
  const file = join(dir, 'resolve.cjs');
  writeFileSync(file, RESOLVE);
  const r = spawnSync('ip', ['netns', 'exec', ns, process.execPath, file, server, name], { encoding: 'utf8' });
  return r.stdout;
}
