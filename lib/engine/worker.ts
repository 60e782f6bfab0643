import { closeSync, fstatSync, openSync, statSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { aliasNetns } from '../netlink/ns.js';
import { resetTrace } from '../cni/trace.js';

/**
 * An engine worker (docs/engine.md): one request at a time, run exactly as
 * the standalone binary would run it (`runPlugin`, src/main.ts) with the
 * caller's environment as process.env (a worker's process.env is its own
 * copy: the children it starts get it too), stderr captured, and CNI_NETNS
 * resolved to the descriptor the caller passed. Network namespace switches
 * are per thread and only ever synchronous (lib/netlink/ns.ts), so between
 * requests this thread is home; that is proven by inode after each one,
 * and a worker that is not (or cannot tell) retires instead of serving on.
 */
export interface Job {
  id: number;
  name: string;
  env: Record<string, string>;
  stdin: Uint8Array;
  /** The caller's CNI_NETNS, reopened by the engine: /proc/self/fd/<n>. */
  netnsVia?: string;
}

export interface JobDone {
  id: number;
  exit: number;
  stdout: Uint8Array;
  stderr: Uint8Array;
  /** The worker must not serve again (not home, or grown): the engine replaces it. */
  retire: string | undefined;
}

type RunPlugin = (name: string, vars: NodeJS.ProcessEnv, stdin: Buffer, out: { stdout(t: string): void; stderr(t: string): void }) => Promise<number>;

const HEAP_LIMIT = 96 * 1024 * 1024;

export function workerMain(runPlugin: RunPlugin): void {
  const port = parentPort;
  if (!port) return;
  const home = (() => {
    const fd = openSync('/proc/thread-self/ns/net', 'r');
    try {
      return fstatSync(fd).ino;
    } finally {
      closeSync(fd);
    }
  })();
  const realWrite = process.stderr.write.bind(process.stderr);
  port.on('message', (job: Job | { stop: true }) => {
    // Told to stop (lib/engine/server.ts endWorker): no more requests; the thread ends when its loop is empty.
    if ('stop' in job) port.close();
    else void serve(job);
  });

  async function serve(job: Job): Promise<void> {
    const out: string[] = [];
    const err: string[] = [];
    for (const k of Object.keys(process.env)) delete process.env[k];
    Object.assign(process.env, job.env);
    resetTrace();
    aliasNetns(job.netnsVia ? job.env.CNI_NETNS : undefined, job.netnsVia);
    process.stderr.write = ((chunk: string | Uint8Array) => {
      err.push(typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8'));
      return true;
    }) as typeof process.stderr.write;
    let exit: number;
    try {
      exit = await runPlugin(job.name, process.env, Buffer.from(job.stdin), { stdout: (t) => out.push(t), stderr: (t) => err.push(t) });
    } catch (e) {
      err.push(`cni-ts engine: ${(e as Error)?.stack ?? e}\n`);
      exit = 1;
    } finally {
      process.stderr.write = realWrite;
      aliasNetns();
    }
    let retire: string | undefined;
    try {
      if (statSync('/proc/thread-self/ns/net').ino !== home) retire = 'not in the engine network namespace after a request';
    } catch (e) {
      retire = `cannot tell its network namespace: ${(e as Error).message}`;
    }
    if (!retire && process.memoryUsage().heapUsed > HEAP_LIMIT) retire = 'heap over its limit';
    const done: JobDone = { id: job.id, exit, stdout: Buffer.from(out.join(''), 'utf8'), stderr: Buffer.from(err.join(''), 'utf8'), retire };
    port!.postMessage(done);
    if (retire) port!.close(); // serves no more; the engine ends it (endWorker)
  }
}
