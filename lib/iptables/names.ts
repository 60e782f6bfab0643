import { createHash } from 'node:crypto';

/**
 * The reference plugins' per-container chain name: `CNI-` + the first 24 hex
 * digits of sha512(name + id) (28 characters, iptables' limit). bridge's
 * ipMasq hashes (network, containerID); aos-firewall (admin chain, uuid).
 */
export function chainName(name: string, id: string, prefix = 'CNI-'): string {
  return prefix + createHash('sha512').update(name + id).digest('hex').slice(0, 28 - prefix.length);
}
