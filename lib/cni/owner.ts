import { createHash } from 'node:crypto';

/**
 * Who made a host-side resource: written on it (an ifb's alias, an
 * iptables comment, a field in a saved file) so that GC, which the spec
 * gives the valid attachments of ONE network, removes only its own
 * network's stale resources. Without such a record a GC for network B
 * cannot tell network A's ifb or chain from a stale one of its own.
 *
 * Text form: `cni-ts <plugin> net=<network> id=<containerID> if=<ifname>`.
 * Network names and container ids never hold whitespace and never start
 * with `#` (both match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$), interface names hold
 * no whitespace: the form parses back unambiguously. Kernel limits (an
 * ifalias and an iptables comment keep at most 255 bytes) are met by
 * putting a long network name or id as `#<32 hex of its sha256>`; GC
 * compares in the same form, so it still matches.
 */
export interface Owner {
  network: string;
  containerID: string;
  ifname: string;
}

const NET_MAX = 64;
const ID_MAX = 128;

function fit(value: string, max: number): string {
  return Buffer.byteLength(value) <= max ? value : `#${createHash('sha256').update(value).digest('hex').slice(0, 32)}`;
}

/** The network as it is recorded. */
export const recordedNetwork = (network: string) => fit(network, NET_MAX);

/** The (container, interface) pair as it is recorded, as one comparable key. */
export const attachmentKey = (containerID: string, ifname: string) => `${fit(containerID, ID_MAX)}\n${ifname}`;

export function ownerTag(plugin: string, o: Owner): string {
  return `cni-ts ${plugin} net=${recordedNetwork(o.network)} id=${fit(o.containerID, ID_MAX)} if=${o.ifname}`;
}

/** The recorded owner of a tag written by `plugin`; undefined for anything else (no owner recorded). */
export function parseOwnerTag(plugin: string, tag: string | undefined): { network: string; key: string } | undefined {
  if (!tag) return undefined;
  const m = /^cni-ts (\S+) net=(\S+) id=(\S+) if=(\S+)$/.exec(tag);
  if (!m || m[1] !== plugin) return undefined;
  return { network: m[2], key: `${m[3]}\n${m[4]}` };
}

/**
 * What GC may remove: recorded by `plugin` for `network`, and not one of
 * the valid attachments. A resource without a record (the reference's, or
 * made before records existed) is never GC's: DEL still removes it.
 */
export function staleOwned(plugin: string, tag: string | undefined, network: string, valid: ReadonlySet<string>): boolean {
  const o = parseOwnerTag(plugin, tag);
  return o !== undefined && o.network === recordedNetwork(network) && !valid.has(o.key);
}

export const validKeys = (attachments: readonly { containerID: string; ifname: string }[]): Set<string> =>
  new Set(attachments.map((a) => attachmentKey(a.containerID, a.ifname)));
