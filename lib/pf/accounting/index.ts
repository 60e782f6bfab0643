import type { Backend } from '../backend.js';
import type { Owner } from '../../cni/owner.js';

/**
 * Accounting counters, the concern of the traffic-accounting plugin (one
 * instance's counters, in CNI terms) and of the traffic monitor
 * (manager/traffic.ts: every instance's counters read in one call per
 * collection, and the limit enforcement). One implementation per backend:
 *  - iptables (./iptables.ts): the Aos service manager's own chains,
 *    AOS_<h>_IN/OUT jumped to from FORWARD (what the Aos 9.0 monitor reads);
 *  - nftables (./nftables.ts): table `inet cni_ts_accounting`, a named
 *    counter per instance and direction selected through maps keyed by the
 *    instance's address (layout diagram there).
 * Names and ranges common to both: ./layout.ts. Background: docs/accounting.md.
 */

/** One instance's accounting, as ADD and CHECK know it. */
export interface AccountedInstance {
  /** The Aos instance id (the counters are named after its hash); the container id when not configured. */
  instanceId: string;
  /** Its IPv4 addresses (prevResult); DEL may know none. */
  ips: string[];
  /** Sources (IN) / destinations (OUT) not counted: the local ranges unless configured. */
  skip: string[];
  /** Who made it: written on the rules (iptables: the jumps' comment; nftables: the counters' comment), read by GC. */
  owner: Owner;
}

export interface InstanceAccounting {
  readonly backend: Backend;
  /** ADD: one transaction making the instance's counters; a re-ADD starts them from zero. */
  add(inst: AccountedInstance): Promise<void>;
  /** DEL: removes them; the instance id suffices (ips may be empty), fine when nothing exists. */
  del(inst: AccountedInstance): Promise<void>;
  /** CHECK: throws CheckFailed (lib/pf/check.ts) for the first missing piece. */
  check(inst: AccountedInstance): Promise<void>;
  /** GC: removes this network's instances whose attachment (container id, ifname) is not valid. */
  gc(network: string, valid: readonly { containerID: string; ifname: string }[]): Promise<void>;
}

/** One direction of one instance, as the monitor reads it. */
export interface Direction {
  /** `AOS_<h>_IN` (download, matched by destination) or `AOS_<h>_OUT` (upload, matched by source). */
  chain: string;
  dir: 'in' | 'out';
  ip: string;
}

/** What a collection read for a direction. */
export interface Reading {
  /** Counting: the counter is in place and its traffic passes. */
  counting: boolean;
  /** Its bytes (0 when not counting). */
  bytes: number;
  /** Blocked: its traffic is dropped (the monitor put it so). */
  dropping: boolean;
}

/** All counters, read by one call. */
export interface Snapshot {
  read(d: Direction): Reading;
  /** The host's own totals (AOS_SYSTEM_IN/OUT), undefined when the monitor's system counters are not there. */
  system(): { in: number; out: number } | undefined;
}

/** A change of a direction's state; either way its counter starts again from zero. */
export interface Swap {
  d: Direction;
  to: 'drop' | 'count';
}

export interface Collector {
  readonly backend: Backend;
  /** Every instance's counters (and the system counters) in ONE call of the backend's tool. */
  snapshot(): Promise<Snapshot>;
  /** Applies swaps planned from `snap` in one transaction (none: no call); throws when it could not. */
  apply(snap: Snapshot, swaps: Swap[]): Promise<void>;
  /** The monitor's own counters of the host's traffic with the outside; idempotent. */
  ensureSystem(): Promise<void>;
  /** Removes them; fine when they are not there. */
  removeSystem(): Promise<void>;
}

/** The plugin side of a backend (loaded on demand). */
export async function accounting(backend: Backend): Promise<InstanceAccounting> {
  if (backend === 'nftables') return new (await import('./nftables.js')).NftAccounting();
  return new (await import('./iptables.js')).IptablesAccounting();
}

/** The monitor side of a backend (loaded on demand). */
export async function collector(backend: Backend): Promise<Collector> {
  if (backend === 'nftables') return new (await import('./nftables.js')).NftCollector();
  return new (await import('./iptables.js')).IptablesCollector();
}
