import { CniError, ErrorCode } from '../cni/errors.js';
import { loadAddon } from './native.js';
import type { Netns } from './ns.js';

/**
 * TAP devices. The kernel makes one only through /dev/net/tun (rtnetlink
 * answers "not supported" for kind `tun`), so creation is an ioctl sequence
 * in our native addon (native/sys.c `tapCreate`): TUNSETIFF with IFF_TAP,
 * IFF_NO_PI and IFF_TUN_EXCL (a device of that name is never taken over),
 * then TUNSETOWNER / TUNSETGROUP when asked, then TUNSETPERSIST so the
 * device outlives the call. Everything after creation — up, MTU, MAC,
 * master, VLANs, reading it back (LinkInfo.tun), deleting — is rtnetlink's
 * (lib/netlink/rtnl.ts), like any other link.
 */
export interface TapSpec {
  name: string;
  multiQueue?: boolean;
  /**
   * uid allowed to attach (open) the TAP. The kernel checks only what is set:
   * with neither owner nor group anyone who can open /dev/net/tun may attach;
   * with both, both must match; CAP_NET_ADMIN always may.
   */
  owner?: number;
  /** gid allowed to attach the TAP (see owner). */
  group?: number;
}

interface TapAddon {
  tapCreate(name: string, multiQueue: boolean, owner: number, group: number): string;
}

/** Creates the TAP in the calling thread's namespace, or in `ns`; returns its name as the kernel gave it. */
export function createTap(spec: TapSpec, ns?: Netns): string {
  const make = () => loadAddon<TapAddon>('sys').tapCreate(spec.name, spec.multiQueue ?? false, spec.owner ?? -1, spec.group ?? -1);
  try {
    return ns ? ns.run(make) : make();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EBUSY' || code === 'EINVAL' || code === 'EEXIST') {
      throw new CniError(ErrorCode.InvalidEnvironment, `a link named "${spec.name}" already exists`, `TUNSETIFF: ${(err as Error).message}`);
    }
    if (code === 'ENOENT' || code === 'ENODEV') {
      throw new CniError(ErrorCode.InvalidEnvironment, 'no TUN/TAP device (/dev/net/tun) on this host', (err as Error).message);
    }
    throw new CniError(ErrorCode.KernelRefused, `failed to create TAP "${spec.name}"`, `${code ?? ''} ${(err as Error).message}`.trim());
  }
}
