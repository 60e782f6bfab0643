import { createHash } from 'node:crypto';
import { canonicalNetwork, isCidr, parseCidr } from '../../ip/index.js';
import type { Rule } from '../../iptables/index.js';
import { rule } from '../../iptables/rule.js';
import { ownerTag, type Owner } from '../../cni/owner.js';
import { stdHashHex } from './stdhash.js';
import type { Backend } from '../backend.js';

/**
 * The Aos accounting layout: ONE module for what the traffic-accounting
 * plugin writes and the traffic monitor (manager/traffic.ts) reads. The facts
 * behind it (chain naming, the std::hash vectors and how they were derived)
 * are written down in docs/accounting.md.
 *
 * Per instance, two directions, each named `AOS_<h>_IN` / `AOS_<h>_OUT`
 * where <h> is the lowercase hex (no padding) of libstdc++'s
 * std::hash<std::string> of the instance id (./stdhash.ts):
 *
 *   IN  (download): traffic TO the instance's address, from outside the local ranges
 *   OUT (upload):   traffic FROM the instance's address, to outside the local ranges
 *
 * iptables (filter table, the Aos service manager's own layout):
 *
 *   FORWARD ─(position 1, owner comment)─▶ AOS_<h>_IN    -s <local range> -j RETURN   (one per range)
 *                                                          -d <ip>/32                  (no target: the counter)
 *           ─(position 1, owner comment)─▶ AOS_<h>_OUT   -d <local range> -j RETURN
 *                                                          -s <ip>/32
 *   INPUT  ─▶ AOS_SYSTEM_IN    -s <local range> -j RETURN …, then a rule without match or target
 *   OUTPUT ─▶ AOS_SYSTEM_OUT   -d <local range> -j RETURN …, then a rule without match or target
 *
 * The same names on nftables are the names of named counters (./nftables.ts).
 * The monitor blocks an instance over its limit: the counting rule becomes
 * `… -j DROP` (iptables) / its address joins the blocked set (nftables),
 * and the counter starts again from zero when it is swapped back.
 */
export const AOS_LOCAL_RANGES = ['127.0.0.0/8', '10.0.0.0/8', '192.168.0.0/16', '172.16.0.0/12'];

/** The monitor's chains (iptables) / counters (nftables) for the host's own traffic. */
export const SYSTEM_IN = 'AOS_SYSTEM_IN';
export const SYSTEM_OUT = 'AOS_SYSTEM_OUT';

/** The backend unless configured (plugin and monitor): iptables, as the Aos 9.0 monitor reads iptables. */
export const DEFAULT_BACKEND: Backend = 'iptables';

/** The plugin name in owner records (lib/cni/owner.ts). */
export const OWNER = 'traffic-accounting';

export function chainsFor(instanceId: string): { in: string; out: string } {
  const h = stdHashHex(instanceId);
  return { in: `AOS_${h}_IN`, out: `AOS_${h}_OUT` };
}

/** An instance's chain (iptables) or counter (nftables) name: `AOS_<hex>_IN|OUT`. */
export const INSTANCE_CHAIN = /^AOS_[0-9a-f]{1,16}_(IN|OUT)$/;

/** IPv4 skip ranges as iptables and nft print them (host bits cleared); IPv6 ones are dropped (the accounting is IPv4). */
export function skipRangesV4(skip: readonly string[]): string[] {
  return [...new Set(skip.filter((r) => isCidr(r) && parseCidr(r).family === 4).map(canonicalNetwork))];
}

/** The jumps from FORWARD: with the owner record, or without (as binaries up to fb6743a wrote them). */
export function jumpRules(instanceId: string, owner?: Owner): Rule[] {
  const c = chainsFor(instanceId);
  const cm = owner ? ['-m', 'comment', '--comment', ownerTag(OWNER, owner)] : [];
  return [c.in, c.out].map((chain) => ({ chain: 'FORWARD', spec: [...cm, '-j', chain] }));
}

/** The iptables layout of one instance: the jumps and the chains' rules, in order. */
export function accountingRules(instanceId: string, ips: string[], skip: string[], owner?: Owner): { jumps: Rule[]; rules: Rule[] } {
  const c = chainsFor(instanceId);
  const rules: Rule[] = [];
  for (const r of skip) rules.push(rule(c.in, { src: r, jump: 'RETURN' }));
  for (const ip of ips) rules.push({ chain: c.in, spec: ['-d', `${ip}/32`] });
  for (const r of skip) rules.push(rule(c.out, { dst: r, jump: 'RETURN' }));
  for (const ip of ips) rules.push({ chain: c.out, spec: ['-s', `${ip}/32`] });
  return { jumps: jumpRules(instanceId, owner), rules };
}

/** The monitor's counting and blocking rules (iptables) of one direction. */
export const countRule = (chain: string, flag: '-s' | '-d', ip: string): Rule => ({ chain, spec: [flag, `${ip}/32`] });
export const dropRule = (chain: string, flag: '-s' | '-d', ip: string): Rule => ({ chain, spec: [flag, `${ip}/32`, '-j', 'DROP'] });

/**
 * The owner record as an nftables comment. nft keeps at most 128 bytes of a
 * comment; lib/cni/owner.ts's form can reach ~250 (a 64-byte network, a
 * 128-byte id). When it does not fit, the network and the container id are
 * both written as `#<32 hex of sha256>`, which always fits (≤ 119 bytes)
 * and never collides with a real name (those never start with `#`).
 */
export function nftOwnerComment(o: Owner): string {
  const full = ownerTag(OWNER, o);
  if (Buffer.byteLength(full) <= 128) return full;
  return `cni-ts ${OWNER} net=${hashed(o.network)} id=${hashed(o.containerID)} if=${o.ifname}`;
}
const hashed = (v: string) => `#${createHash('sha256').update(v).digest('hex').slice(0, 32)}`;

/**
 * GC's question for an nftables comment: recorded by this plugin for
 * `network` (in either form above), for an attachment not in `valid`
 * (container id + ifname pairs)? A comment without our record is never GC's.
 */
export function nftStaleOwned(comment: string | undefined, network: string, valid: readonly { containerID: string; ifname: string }[]): boolean {
  const m = comment ? /^cni-ts (\S+) net=(\S+) id=(\S+) if=(\S+)$/.exec(comment) : null;
  if (!m || m[1] !== OWNER) return false;
  const [, , net, id, ifname] = m;
  if (net !== network && net !== hashed(network) && net !== ownerNetOf(network)) return false;
  return !valid.some((a) => a.ifname === ifname && (a.containerID === id || hashed(a.containerID) === id || ownerIdOf(a.containerID) === id));
}
// The forms lib/cni/owner.ts writes for long names (`#<hash>` past its own limits).
const ownerNetOf = (network: string) => /net=(\S+)/.exec(ownerTag(OWNER, { network, containerID: 'x', ifname: 'x' }))![1];
const ownerIdOf = (id: string) => /id=(\S+)/.exec(ownerTag(OWNER, { network: 'x', containerID: id, ifname: 'x' }))![1];
