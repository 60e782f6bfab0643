import { closeSync, constants, fstatSync, openSync, readFileSync, statSync, writeFileSync, type Stats } from 'node:fs';
import { CniError, ErrorCode } from '../cni/errors.js';
import { loadAddon } from './native.js';

interface SysAddon {
  setns(fd: number): void;
  flockWait(fd: number, exclusive: boolean, timeoutMs: number): boolean;
}
export const sys = (): SysAddon => loadAddon<SysAddon>('sys');

let hostFd: number | undefined;
let hostId: Stats | undefined;
/**
 * The namespace this process started in (for a plugin: the runtime's host).
 * Opened on first use, which is always on the main thread before it ever
 * joins another namespace (`run` takes it before its setns; the contract
 * layer takes it before a plugin runs).
 */
function hostNetnsFd(): number {
  if (hostFd === undefined) {
    hostFd = openSync('/proc/thread-self/ns/net', 'r');
    hostId = fstatSync(hostFd);
  }
  return hostFd;
}

/**
 * CNI_NETNS naming the namespace the runtime called us from is a mistake (or
 * an attack): every plugin would then treat the host as the container —
 * bridge moving "the container interface" into the host and deleting a host
 * interface by CNI_IFNAME on DEL, loopback taking the host's lo down. Only
 * the contract layer turns this off, for a runtime that explicitly asks
 * (CNI_NETNS_OVERRIDE, as libcni) or a plugin mode whose job is a host-side
 * device (`Plugin.allowsHostNetns`).
 */
let callerNetnsAllowed = false;
export function allowCallerNetns(allowed: boolean): void {
  callerNetnsAllowed = allowed;
}

/**
 * Engine mode (lib/engine/worker.ts): CNI_NETNS as the caller sees it — the
 * descriptor the client opened and passed, reopened through /proc — used
 * wherever the path would be opened, so a path that means something else
 * in the engine (or was swapped since) cannot matter.
 */
let netnsAlias: { path: string; via: string } | undefined;
export function aliasNetns(path?: string, via?: string): void {
  netnsAlias = path !== undefined && via !== undefined ? { path, via } : undefined;
}
const resolveNetns = (path: string): string => (netnsAlias !== undefined && netnsAlias.path === path ? netnsAlias.via : path);

/** Same namespace = same nsfs inode on the same device. */
const sameNs = (a: Stats, b: Stats) => a.dev === b.dev && a.ino === b.ino;

export function callerNetnsError(path: string): CniError {
  return new CniError(
    ErrorCode.InvalidNetNS,
    "CNI_NETNS is the plugin's own network namespace, not a container's",
    `"${path}" is the namespace the runtime called the plugin from; refused so that the host is never configured as a container (set CNI_NETNS_OVERRIDE=1 if that is really meant)`,
  );
}

/**
 * Whether `path` names the namespace this process was called from. A path
 * that cannot be stat()ed is not (the plugin reports it as it always did);
 * stat() never blocks, even on a FIFO.
 */
export function isCallerNetns(path: string): boolean {
  hostNetnsFd();
  let st: Stats;
  try {
    st = statSync(resolveNetns(path));
  } catch {
    return false;
  }
  return sameNs(st, hostId!);
}

/** Throws unless the caller's own namespace is allowed (see `allowCallerNetns`). */
export function refuseCallerNetns(path: string): void {
  if (!callerNetnsAllowed && isCallerNetns(path)) throw callerNetnsError(path);
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
      fd = openSync(resolveNetns(path), constants.O_RDONLY | constants.O_NONBLOCK);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return undefined;
      throw new CniError(ErrorCode.InvalidEnvironment, `failed to open netns "${path}"`, String(err));
    }
    // Checked again on the descriptor itself: the path may have been swapped
    // since the contract layer looked at it, and what is used is this fd.
    hostNetnsFd();
    if (!callerNetnsAllowed && sameNs(fstatSync(fd), hostId!)) {
      closeSync(fd);
      throw callerNetnsError(path);
    }
    const ns = new Netns(path, fd);
    try {
      ns.run(() => undefined); // proves it is a network namespace (setns says EINVAL otherwise)
    } catch (err) {
      closeSync(fd);
      if (err instanceof CniError) throw err; // the addon could not be loaded: not the namespace's fault
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

/**
 * A sysctl below /proc/sys, given as path segments: `['net', 'ipv6', 'conf',
 * ifname, 'accept_dad']`. An interface name is one segment whatever it
 * contains — a dotted key would turn `eth0.1` into `eth0/1` — and no segment
 * may be empty, `.`, `..` or contain `/` or NUL, so the path cannot leave the
 * place it names. Acts in the calling thread's namespace (call inside
 * `Netns.run` for a container's sysctls).
 */
export type SysctlPath = readonly string[];

export function sysctlFile(path: SysctlPath): string {
  if (path.length === 0) throw new CniError(ErrorCode.InvalidNetworkConfig, 'empty sysctl path');
  for (const seg of path) {
    if (seg === '' || seg === '.' || seg === '..' || seg.includes('/') || seg.includes('\0')) {
      throw new CniError(ErrorCode.InvalidNetworkConfig, `invalid sysctl path segment "${seg}"`, path.join('/'));
    }
  }
  return `/proc/sys/${path.join('/')}`;
}

export function writeSysctl(path: SysctlPath, value: string): void {
  writeFileSync(sysctlFile(path), value);
}

/** The value without its trailing newline. */
export function readSysctl(path: SysctlPath): string {
  return readFileSync(sysctlFile(path), 'utf8').replace(/\n$/, '');
}
