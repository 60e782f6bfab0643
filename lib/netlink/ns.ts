import { closeSync, constants, openSync, readFileSync, writeFileSync } from 'node:fs';
import { CniError, ErrorCode } from '../cni/errors.js';
import { loadAddon } from './native.js';

interface SysAddon {
  setns(fd: number): void;
  flockWait(fd: number, exclusive: boolean, timeoutMs: number): boolean;
}
export const sys = (): SysAddon => loadAddon<SysAddon>('sys');

let hostFd: number | undefined;
/** The namespace this process started in (for a plugin: the runtime's host). */
function hostNetnsFd(): number {
  hostFd ??= openSync('/proc/thread-self/ns/net', 'r');
  return hostFd;
}

/**
 * A network namespace held open by file descriptor. `run` executes a
 * synchronous function with the main thread inside it; netlink sockets
 * opened there stay bound to it. Only synchronous work belongs inside:
 * libuv's worker threads never change namespace.
 */
export class Netns {
  private constructor(
    readonly path: string,
    readonly fd: number,
  ) {}

  /** Opens CNI_NETNS; a namespace that no longer exists gives `undefined`. */
  static tryOpen(path: string): Netns | undefined {
    let fd: number;
    try {
      // O_NONBLOCK: a FIFO (or a pipe under /proc/*/fd) given as CNI_NETNS
      // would otherwise block the open forever; setns() below refuses it.
      fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return undefined;
      throw new CniError(ErrorCode.InvalidEnvironment, `failed to open netns "${path}"`, String(err));
    }
    const ns = new Netns(path, fd);
    try {
      ns.run(() => undefined); // proves it is a network namespace (setns says EINVAL otherwise)
    } catch (err) {
      closeSync(fd);
      throw new CniError(ErrorCode.InvalidEnvironment, `"${path}" is not a network namespace`, String(err));
    }
    return ns;
  }

  static open(path: string): Netns {
    const ns = Netns.tryOpen(path);
    if (!ns) throw new CniError(ErrorCode.InvalidEnvironment, `failed to open netns "${path}"`, 'no such file or directory');
    return ns;
  }

  run<T>(fn: () => T): T {
    const host = hostNetnsFd();
    sys().setns(this.fd);
    try {
      return fn();
    } finally {
      sys().setns(host);
    }
  }

  close(): void {
    closeSync(this.fd);
  }
}

/** sysctl in the calling thread's namespace (call inside `Netns.run` for a container). */
export function writeSysctl(key: string, value: string): void {
  writeFileSync(`/proc/sys/${key.replace(/\./g, '/')}`, value);
}

export function readSysctl(key: string): string {
  return readFileSync(`/proc/sys/${key.replace(/\./g, '/')}`, 'utf8').trim();
}
