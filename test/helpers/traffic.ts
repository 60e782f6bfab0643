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

const SINK = `
const net = require('net');
const [port, secs] = [Number(process.argv[2]), Number(process.argv[3])];
net.createServer((c) => {
  let bytes = 0, t0 = 0, counting = false;
  // Half a second of warm-up (the bucket's burst), then every byte from there on counts.
  c.on('data', (b) => { const now = Date.now(); if (!t0) t0 = now; if (!counting && now - t0 >= 500) { counting = true; bytes = 0; t0 = now; } if (counting) bytes += b.length; });
  c.on('end', () => { const s = (Date.now() - t0) / 1000; process.stdout.write(String(Math.round((bytes * 8) / s))); process.exit(0); });
  c.on('error', () => {});
}).listen(port, '0.0.0.0', () => process.stderr.write('ready\\n'));
setTimeout(() => process.exit(1), (secs + 10) * 1000);
`;
const SOURCE = `
const net = require('net');
const [host, port, secs] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const chunk = Buffer.alloc(65536, 120);
const c = net.connect({ host, port }, () => {
  const end = Date.now() + secs * 1000;
  const pump = () => { while (Date.now() < end) { if (!c.write(chunk)) { c.once('drain', pump); return; } } c.end(); };
  pump();
});
c.on('error', () => process.exit(1));
`;

/** Bits per second a TCP stream from `fromNs` to `toNs` (listening at host:port) achieves, measured after a 0.5 s warm-up. */
export async function throughput(dir: string, fromNs: string, toNs: string, host: string, port: number, secs = 3): Promise<number> {
  writeFileSync(join(dir, 'sink.cjs'), SINK);
  writeFileSync(join(dir, 'source.cjs'), SOURCE);
  const sink = spawn('ip', ['netns', 'exec', toNs, process.execPath, join(dir, 'sink.cjs'), String(port), String(secs)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  sink.stdout!.on('data', (b: Buffer) => (out += b));
  await new Promise<void>((res) => sink.stderr!.on('data', (b: Buffer) => b.toString().includes('ready') && res()));
  spawnSync('ip', ['netns', 'exec', fromNs, process.execPath, join(dir, 'source.cjs'), host, String(port), String(secs)]);
  await new Promise((res) => sink.on('exit', res));
  return Number(out);
}

/** Average ping round trip in ms from `ns` to host (NaN when nothing came back). */
export function pingRtt(ns: string, host: string, count = 5): number {
  const r = spawnSync('ip', ['netns', 'exec', ns, 'ping', '-c', String(count), '-i', '0.2', '-W', '2', host], { encoding: 'utf8' });
  const m = /= [\d.]+\/([\d.]+)\//.exec(r.stdout);
  return m ? Number(m[1]) : NaN;
}
