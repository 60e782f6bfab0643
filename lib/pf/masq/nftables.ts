import { createHash } from 'node:crypto';
import { canonicalNetwork, formatIP, parseCidr } from '../../ip/index.js';
import { deleteRuleLines, NFT_COMMENT_MAX, nftApply, nftListChain, nftListTable, nftTryApply, type NftRule } from '../../nft/index.js';
import { requireRules, type Expected } from '../check.js';
import type { Masquerade, MasqKnown, MasqOwner, MasqPrepared } from './index.js';

/**
 * bridge's ipMasq on nftables: the reference plugins' layout (their
 * pkg/ip, nftables backend), name for name and comment for comment, so a
 * container added by either plugin is checked, deleted and collected by
 * the other:
 *
 *   table inet cni_plugins_masquerade            (comment "Masquerading for plugins from …")
 *   ├─ chain postrouting                          type nat hook postrouting priority srcnat (100)
 *   │    ip daddr 224.0.0.0/4 return              ┐ flushed and written again by every ADD
 *   │    ip6 daddr ff00::/8 return                │ (its content never depends on the containers)
 *   │    goto masq_checks                         ┘
 *   └─ chain masq_checks                          (comment "Masquerade traffic from certain IPs …")
 *        ip saddr 10.88.0.5 ip daddr != 10.88.0.0/16 masquerade comment "<N>-<I>, net: podman, if: eth0, id: 3f2a…"
 *        ip6 saddr fd00::5 ip6 daddr != fd00::/64 masquerade comment "<N>-<I>, net: podman, if: eth0, id: 3f2a…"
 *        … one rule per container address
 *
 *   <N> = first 16 hex digits of sha512(network)              → GC finds a network's rules by it
 *   <I> = first 16 hex digits of sha512(ifname + ":" + id)    → "<N>-<I>" finds one attachment's
 *   comment = "<N>-<I>, net: <network>, if: <ifname>, id: <id>", cut to 128 bytes (knftables' limit)
 *
 * One rule per address rather than one set element: an element cannot say
 * which container it belongs to, and two containers may hold one address
 * in turn (ADD of B before the DEL of A); the hash in the comment can.
 * DEL needs the rules' handles, so it reads the one chain first
 * (`nft -j list chain`), then deletes by handle in one transaction. ADD
 * is one transaction without a read (the reference reads, to replace a
 * leftover of the same attachment; here a re-ADD without DEL leaves a
 * harmless second copy that DEL removes along with the first).
 * nft 1.0.6 has no `destroy`: a delete of a rule that went away in between
 * fails the whole transaction, which is then re-read and retried.
 */
export const TABLE = 'cni_plugins_masquerade';
export const FAMILY = 'inet';
export const CHECKS = 'masq_checks';
export const POSTROUTING = 'postrouting';
const T = `${FAMILY} ${TABLE}`;
const TABLE_COMMENT = 'Masquerading for plugins from github.com/containernetworking/plugins';
const CHECKS_COMMENT = 'Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet';

/** The reference's MustFormatHashWithPrefix(16, "", s): sha512 in hex, the first 16 digits. */
export const hash16 = (s: string) => createHash('sha512').update(s).digest('hex').slice(0, 16);
export const hashForNetwork = (network: string) => hash16(network);
export const hashForInstance = (network: string, ifname: string, containerId: string) => `${hashForNetwork(network)}-${hash16(`${ifname}:${containerId}`)}`;

/** The rule comment of one attachment: its hash first, then a readable (possibly cut) description. */
export function commentForInstance(network: string, ifname: string, containerId: string): string {
  const strip = (s: string) => s.replaceAll('"', '');
  const full = `${hashForInstance(network, ifname, containerId)}, net: ${strip(network)}, if: ${strip(ifname)}, id: ${strip(containerId)}`;
  const bytes = Buffer.from(full);
  return bytes.length > NFT_COMMENT_MAX ? bytes.subarray(0, NFT_COMMENT_MAX).toString() : full;
}

/** The match of one address: `ip saddr == A ip daddr != NET` (ip6 for IPv6). */
function match(cidr: string): { proto: 'ip' | 'ip6'; saddr: string; dnet: string } {
  const c = parseCidr(cidr);
  return { proto: c.family === 4 ? 'ip' : 'ip6', saddr: formatIP(c.family, c.ip), dnet: canonicalNetwork(cidr) };
}

/** Rule comments are written as Go's %q would for these names (no quote, backslash or control character can occur in them). */
const quoted = (s: string) => JSON.stringify(s);

/**
 * ADD's script, as the reference's transaction reads: table and chains
 * (re)declared, postrouting flushed and refilled, `stale` rules deleted,
 * one rule per address appended.
 */
export function addScript(owner: MasqOwner, cidrs: string[], stale: Pick<NftRule, 'chain' | 'handle'>[] = []): string {
  const comment = commentForInstance(owner.network, owner.ifname, owner.containerId);
  const seen = new Set<string>();
  const rules: string[] = [];
  for (const cidr of cidrs) {
    const m = match(cidr);
    const line = `add rule ${T} ${CHECKS} ${m.proto} saddr == ${m.saddr} ${m.proto} daddr != ${m.dnet} masquerade comment ${quoted(comment)}`;
    if (!seen.has(line)) rules.push(line);
    seen.add(line);
  }
  return [
    `add table ${T} { comment ${quoted(TABLE_COMMENT)} ; }`,
    `add chain ${T} ${CHECKS} { comment ${quoted(CHECKS_COMMENT)} ; }`,
    `add chain ${T} ${POSTROUTING} { type nat hook postrouting priority 100 ; }`,
    `flush chain ${T} ${POSTROUTING}`,
    `add rule ${T} ${POSTROUTING} ip daddr == 224.0.0.0/4  return`,
    `add rule ${T} ${POSTROUTING} ip6 daddr == ff00::/8  return`,
    `add rule ${T} ${POSTROUTING} goto ${CHECKS}`,
    ...deleteRuleLines(FAMILY, TABLE, stale),
    ...rules,
    '',
  ].join('\n');
}

/** The rules of masq_checks whose comment starts with `prefix` (none when the table or chain is missing). */
async function findRules(prefix: string): Promise<NftRule[]> {
  const chain = await nftListChain(FAMILY, TABLE, CHECKS);
  return (chain?.rules ?? []).filter((r) => r.chain === CHECKS && r.comment?.startsWith(prefix));
}

/**
 * Reads, plans and applies; a plan that deletes a rule someone else
 * deleted in between fails as a whole and is planned again from a fresh read.
 */
async function readPlanApply(prefix: string, plan: (found: NftRule[]) => string | undefined): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    const script = plan(await findRules(prefix));
    if (script === undefined) return;
    if (attempt >= 2) return nftApply(script); // the error, with nft's message
    if (await nftTryApply(script)) return;
  }
}

/** A value at a path of nft's JSON, or undefined. */
function at(v: unknown, ...path: string[]): unknown {
  for (const k of path) v = typeof v === 'object' && v !== null ? (v as Record<string, unknown>)[k] : undefined;
  return v;
}

/** A rule's key for CHECK: chain, comment, and what it matches (so each address is checked, not just the comment). */
function ruleKey(r: NftRule): string | undefined {
  const expr = r.expr ?? [];
  const src = expr.find((e) => at(e, 'match', 'op') === '==' && at(e, 'match', 'left', 'payload', 'field') === 'saddr');
  const dst = expr.find((e) => at(e, 'match', 'op') === '!=' && at(e, 'match', 'left', 'payload', 'field') === 'daddr');
  if (!src || !dst || !expr.some((e) => typeof e === 'object' && e !== null && 'masquerade' in e)) return undefined;
  const right = at(dst, 'match', 'right');
  const dnet = at(right, 'prefix') ? `${at(right, 'prefix', 'addr')}/${at(right, 'prefix', 'len')}` : String(right);
  return `${r.chain} ${r.comment} ${at(src, 'match', 'left', 'payload', 'protocol')} ${at(src, 'match', 'right')} ${dnet}`;
}

const isGotoChecks = (r: NftRule) => r.chain === POSTROUTING && (r.expr ?? []).some((e) => at(e, 'goto', 'target') === CHECKS);

export class NftMasquerade implements Masquerade {
  readonly backend = 'nftables' as const;

  prepare(): MasqPrepared {
    return { release: async () => {} };
  }

  /**
   * No read first (the reference reads to delete a leftover of the same
   * attachment): one process whatever the number of containers. A re-ADD
   * without DEL appends a second copy of the rules, which changes nothing
   * for the traffic and which DEL and GC remove with the rest (by prefix).
   */
  async add(owner: MasqOwner, cidrs: string[]): Promise<void> {
    await nftApply(addScript(owner, cidrs));
  }

  async del(owner: MasqOwner, _known?: MasqKnown): Promise<void> {
    // Found by the attachment's hash: neither the namespace nor the addresses are needed.
    const prefix = hashForInstance(owner.network, owner.ifname, owner.containerId);
    await readPlanApply(prefix, (found) => (found.length ? `${deleteRuleLines(FAMILY, TABLE, found).join('\n')}\n` : undefined));
  }

  async check(owner: MasqOwner, cidrs: string[]): Promise<void> {
    const what = 'bridge ipMasq (nftables)';
    const table = await nftListTable(FAMILY, TABLE);
    const comment = commentForInstance(owner.network, owner.ifname, owner.containerId);
    const have = new Set<string>();
    for (const r of table?.rules ?? []) {
      const k = ruleKey(r);
      if (k) have.add(k);
      if (isGotoChecks(r)) have.add(`${POSTROUTING} goto`);
    }
    const want: Expected[] = [{ key: `${POSTROUTING} goto`, show: `goto ${CHECKS} in ${T} ${POSTROUTING} (nft list chain ${T} ${POSTROUTING})` }];
    for (const cidr of cidrs) {
      const m = match(cidr);
      want.push({
        key: `${CHECKS} ${comment} ${m.proto} ${m.saddr} ${m.dnet}`,
        show: `${m.proto} saddr ${m.saddr} ${m.proto} daddr != ${m.dnet} masquerade comment ${quoted(comment)} in ${T} ${CHECKS} (nft list chain ${T} ${CHECKS})`,
      });
    }
    requireRules(have, want, what);
  }

  async gc(network: string, valid: { containerID: string; ifname: string }[]): Promise<void> {
    const keep = new Set(valid.map((a) => commentForInstance(network, a.ifname, a.containerID)));
    await readPlanApply(hashForNetwork(network), (found) => {
      const stale = found.filter((r) => !keep.has(r.comment ?? ''));
      return stale.length ? `${deleteRuleLines(FAMILY, TABLE, stale).join('\n')}\n` : undefined;
    });
  }
}
