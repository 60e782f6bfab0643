import { z } from 'zod';
import { CniError, ErrorCode } from '../cni/errors.js';
import { which } from '../exec/index.js';

/**
 * The packet-filter backends every rule-writing plugin can use, and how a
 * plugin picks one. Each concern (masquerade, port forwarding, forward
 * filtering, the Aos instance firewall, accounting, DNS ports) is one
 * interface under lib/pf/<concern>/ with one file per backend; a plugin asks
 * for the concern's implementation of the chosen backend and never speaks
 * iptables or nft itself.
 *
 * Choice, as the reference plugins make it and one step further:
 *  - configured (`backend`, `ipMasqBackend`): that one, or an error naming
 *    the missing tool when it cannot work here;
 *  - not configured: the plugin's default when usable, else the other one
 *    (a host without iptables gets nftables, and the other way round);
 *  - neither usable: an error naming both tools.
 * DEL and GC clean up in every usable backend, the chosen one first, so a
 * network whose backend was switched still removes what the old one made.
 */
export const backendName = z.enum(['iptables', 'nftables']);
export type Backend = z.infer<typeof backendName>;

const TOOLS: Record<Backend, string[]> = {
  iptables: ['iptables-restore', 'iptables-save'],
  nftables: ['nft'],
};

/** The backend's tools are installed where we trust them (lib/exec's lookup, PATH and the system directories). */
export function usable(backend: Backend): boolean {
  return TOOLS[backend].every((t) => which(t) !== undefined);
}

export const otherBackend = (b: Backend): Backend => (b === 'iptables' ? 'nftables' : 'iptables');

function missing(backend: Backend): string {
  return TOOLS[backend].filter((t) => which(t) === undefined).join(', ');
}

/**
 * The backend for this call. `what` names the plugin and option for
 * messages (`portmap backend`, `bridge ipMasqBackend`).
 */
export function chooseBackend(configured: Backend | '' | undefined, preferred: Backend, what: string): Backend {
  if (configured) {
    if (usable(configured)) return configured;
    throw new CniError(ErrorCode.NotAvailable, `${what} "${configured}" cannot work on this host: ${missing(configured)} not found`, `install ${configured === 'nftables' ? 'the nftables package' : 'the iptables package'}, or choose "${otherBackend(configured)}"`);
  }
  if (usable(preferred)) return preferred;
  const other = otherBackend(preferred);
  if (usable(other)) return other;
  throw new CniError(ErrorCode.NotAvailable, `${what}: no packet filter tool found (neither ${TOOLS.iptables.join(' / ')} nor nft)`, 'install the iptables or the nftables package');
}

/** For STATUS: fails as ADD would, naming what is missing. */
export function assertUsable(configured: Backend | '' | undefined, preferred: Backend, what: string): Backend {
  return chooseBackend(configured, preferred, what);
}

/** The backends DEL and GC clean up in: the chosen one first, then the other when its tools are there. */
export function cleanupBackends(chosen: Backend | undefined): Backend[] {
  const order: Backend[] = chosen ? [chosen, otherBackend(chosen)] : ['iptables', 'nftables'];
  return order.filter(usable);
}

/**
 * Runs `fn` for each backend DEL or GC must clean, the chosen one first.
 * A failure in the chosen backend fails the call; one in the other backend
 * too (it held this container's rules, they must not leak), unless its
 * table simply is not there — each implementation treats "nothing of ours
 * exists" as success itself.
 */
export async function inCleanupBackends(chosen: Backend | undefined, fn: (b: Backend) => Promise<void>): Promise<void> {
  const errors: Error[] = [];
  for (const b of cleanupBackends(chosen)) {
    try {
      await fn(b);
    } catch (err) {
      errors.push(err as Error);
    }
  }
  if (errors.length === 1) throw errors[0];
  if (errors.length > 1) {
    const first = errors[0];
    const code = first instanceof CniError ? first.code : ErrorCode.Internal;
    throw new CniError(code, errors.map((e) => (e instanceof CniError ? e.msg : e.message)).join('; '), errors.map((e) => (e instanceof CniError ? e.details : '')).filter(Boolean).join('\n'));
  }
}
