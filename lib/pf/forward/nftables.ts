import { createHash } from 'node:crypto';
import { CniError, ErrorCode } from '../../cni/errors.js';
import { canonicalIP } from '../../ip/index.js';
import { withIptablesLock } from '../../iptables/index.js';
import { NFT_NAME, nftApply, nftCommentKeys, nftExpected, nftListChain, nftListTable, nftQuote, type NftTable } from '../../nft/index.js';
import type { Backend } from '../backend.js';
import { requireRules, type Expected } from '../check.js';
import { closeIptablesForward, openIptablesForward } from '../coexist.js';
import type { ForwardFilter, ForwardOwner, ForwardRequest } from './index.js';

/**
 * The firewall plugin's nftables layout (our own: the reference firewall
 * has no nftables backend). One table, one base chain of fixed rules; what
 * changes per container is a set element, so ADD adds elements and DEL
 * deletes them (per-call cost flat in the number of containers):
 *
 *   table inet cni_ts_firewall
 *   ├─ set accept4 { type ipv4_addr }            container addresses, each element
 *   ├─ set accept6 { type ipv6_addr }              commented "<network> <container id> <ifname>"
 *   ├─ set bridges { type ifname }               bridges with an ingressPolicy (commented <network>)
 *   ├─ set isolated { type ifname }              bridges with ingressPolicy "isolated"
 *   ├─ set within { type ifname . ifname }       "br" . "br" for bridges with "same-bridge"
 *   ├─ chain forward  (filter hook forward priority filter; policy accept)
 *   │    iifname @isolated oifname @bridges drop                                     "cni-ts isolated"
 *   │    iifname @bridges oifname @bridges iifname . oifname != @within drop          "cni-ts same-bridge"
 *   │    jump CNI-ADMIN                                      (one per admin chain)   "cni-ts admin CNI-ADMIN"
 *   │    ip daddr @accept4 ct state established,related accept                     "cni-ts accept4 replies"
 *   │    ip saddr @accept4 accept                                                  "cni-ts accept4"
 *   │    ip6 daddr @accept6 ct state established,related accept                    "cni-ts accept6 replies"
 *   │    ip6 saddr @accept6 accept                                                 "cni-ts accept6"
 *   └─ chain CNI-ADMIN   the operators' overrides (iptablesAdminChainName); created empty, never flushed
 *
 * The reference's semantics, re-expressed: isolation first (between two
 * bridges that have a policy, and within an "isolated" one: the iptables
 * STAGE-1/STAGE-2 pair), then the admin chain, then the accepts (which, as
 * with iptables, matter against later drops: here an admin chain's, or the
 * iptables side's, see ../coexist.ts). Bridge elements stay on DEL as the
 * reference's isolation chains do. ADD reads the forward chain (a constant
 * size) and rebuilds it in the same transaction when a fixed rule or an
 * admin jump is missing; DEL reads the table once to find the container's
 * elements by their comment (so DEL needs no prevResult) and to count the
 * network's remaining containers (its last one closes the iptables-side
 * opening). Calls hold the per-namespace lock, as the iptables backend's do.
 */
export const TABLE = 'cni_ts_firewall';
const T = `inet ${TABLE}`;
const FAMILY_SET = { 4: 'accept4', 6: 'accept6' } as const;
const C_ISOLATED = 'cni-ts isolated';
const C_SAME = 'cni-ts same-bridge';
const C_ADMIN = 'cni-ts admin ';
const cAccept = (fam: 4 | 6, replies: boolean) => `cni-ts ${FAMILY_SET[fam]}${replies ? ' replies' : ''}`;

const familyOf = (cidr: string): 4 | 6 => (cidr.includes(':') ? 6 : 4);
const ipOf = (cidr: string) => canonicalIP(cidr.split('/')[0]);

/** An element comment part: as it is when short, else a digest (comments are capped at 128 bytes). */
const part = (s: string, max: number) => (s.length <= max ? s : `~${createHash('sha256').update(s).digest('hex').slice(0, 24)}`);
const networkPart = (network: string) => part(network, 47);
/** The owner comment of a container's elements: "<network> <container id> <ifname>", at most 128 bytes. */
export const ownerComment = (o: ForwardOwner) => `${networkPart(o.network)} ${part(o.containerId, 64)} ${part(o.ifname, 15)}`;

/** An element as nft -j prints it: a value (a concatenation joined by " . ") and its comment. */
function elemOf(x: unknown): { val: string; comment?: string } | undefined {
  const show = (v: unknown): string | undefined => {
    if (typeof v === 'string' || typeof v === 'number') return String(v);
    if (v && typeof v === 'object' && 'concat' in v && Array.isArray((v as { concat: unknown[] }).concat)) return (v as { concat: unknown[] }).concat.map(show).join(' . ');
    return undefined;
  };
  if (x && typeof x === 'object' && 'elem' in x) {
    const e = (x as { elem: { val?: unknown; comment?: unknown } }).elem;
    const val = show(e.val);
    return val === undefined ? undefined : { val, comment: typeof e.comment === 'string' ? e.comment : undefined };
  }
  const val = show(x);
  return val === undefined ? undefined : { val };
}
const elements = (t: NftTable, set: string) => (t.sets.get(set) ?? []).map(elemOf).filter((e): e is { val: string; comment?: string } => e !== undefined);

function fixedRules(admins: string[]): { comment: string; rule: string }[] {
  return [
    { comment: C_ISOLATED, rule: 'iifname @isolated oifname @bridges drop' },
    { comment: C_SAME, rule: 'iifname @bridges oifname @bridges iifname . oifname != @within drop' },
    ...admins.map((a) => ({ comment: C_ADMIN + a, rule: `jump ${a}` })),
    { comment: cAccept(4, true), rule: 'ip daddr @accept4 ct state established,related accept' },
    { comment: cAccept(4, false), rule: 'ip saddr @accept4 accept' },
    { comment: cAccept(6, true), rule: 'ip6 daddr @accept6 ct state established,related accept' },
    { comment: cAccept(6, false), rule: 'ip6 saddr @accept6 accept' },
  ];
}

function checkNames(req: ForwardRequest): void {
  if (!NFT_NAME.test(req.adminChain)) {
    throw new CniError(ErrorCode.InvalidNetworkConfig, `iptablesAdminChainName "${req.adminChain}" cannot be an nftables chain name`, 'with backend "nftables" use letters, digits, ".", "_" and "-"');
  }
}

/** The script lines that make the container's (and its bridge's) elements. */
function elementLines(req: ForwardRequest): string[] {
  const owner = nftQuote(ownerComment(req.owner));
  const lines = req.cidrs.map((c) => `add element ${T} ${FAMILY_SET[familyOf(c)]} { ${ipOf(c)} comment ${owner} }`);
  if (req.isolation) {
    const br = nftQuote(req.isolation.bridge);
    const net = nftQuote(networkPart(req.owner.network));
    lines.push(`add element ${T} bridges { ${br} comment ${net} }`);
    if (req.isolation.policy === 'isolated') lines.push(`add element ${T} isolated { ${br} comment ${net} }`);
    else lines.push(`add element ${T} within { ${br} . ${br} comment ${net} }`);
  }
  return lines;
}

export class NftForward implements ForwardFilter {
  readonly backend: Backend = 'nftables';

  async add(req: ForwardRequest): Promise<void> {
    checkNames(req);
    await withIptablesLock(async () => {
      const fwd = await nftListChain('inet', TABLE, 'forward');
      const have = new Set((fwd?.rules ?? []).filter((r) => r.chain === 'forward' && r.comment).map((r) => r.comment!));
      const admins = [...have].filter((c) => c.startsWith(C_ADMIN)).map((c) => c.slice(C_ADMIN.length)).filter((a) => NFT_NAME.test(a));
      if (!admins.includes(req.adminChain)) admins.push(req.adminChain);
      const fixed = fixedRules(admins);
      const lines: string[] = [];
      if (!fwd?.chainInfo.get('forward')?.hook || fixed.some((f) => !have.has(f.comment)) || (fwd?.rules.length ?? 0) !== fixed.length) {
        // (Re)build the skeleton in this transaction: every `add` of a table, set or chain is idempotent, the base chain is refilled.
        lines.push(
          `add table ${T}`,
          `add set ${T} accept4 { type ipv4_addr; }`,
          `add set ${T} accept6 { type ipv6_addr; }`,
          `add set ${T} bridges { type ifname; }`,
          `add set ${T} isolated { type ifname; }`,
          `add set ${T} within { type ifname . ifname; }`,
          ...admins.map((a) => `add chain ${T} ${a}`),
          `add chain ${T} forward { type filter hook forward priority filter; policy accept; }`,
          `flush chain ${T} forward`,
          ...fixed.map((f) => `add rule ${T} forward ${f.rule} comment ${nftQuote(f.comment)}`),
        );
      }
      lines.push(...elementLines(req));
      // The iptables side first: a "refuse" fails before anything of ours exists. Should our
      // transaction fail after an opening, the runtime's DEL of this ADD closes it (no container left).
      await openIptablesForward(req.owner.network, req.cidrs, req.iptablesForwardDrop);
      await nftApply(`${lines.join('\n')}\n`);
    });
  }

  async del(owner: ForwardOwner, _cidrs: string[]): Promise<void> {
    await withIptablesLock(async () => {
      const t = await nftListTable('inet', TABLE);
      if (!t) return;
      const mine = ownerComment(owner);
      const net = `${networkPart(owner.network)} `;
      const lines: string[] = [];
      let others = 0;
      for (const set of Object.values(FAMILY_SET)) {
        for (const e of elements(t, set)) {
          if (e.comment === mine) lines.push(`delete element ${T} ${set} { ${e.val} }`);
          else if (e.comment?.startsWith(net)) others++;
        }
      }
      if (lines.length) await nftApply(`${lines.join('\n')}\n`);
      if (others === 0) await closeIptablesForward(owner.network);
    });
  }

  async check(req: ForwardRequest): Promise<void> {
    checkNames(req);
    const t = await nftListTable('inet', TABLE);
    const show = (what: string) => `${what} in ${T} (nft list table ${T})`;
    if (!t) throw new CniError(ErrorCode.CheckFailed, `firewall (nftables): table ${T} not found`);
    const have = nftCommentKeys(t);
    for (const c of t.chains.keys()) have.add(`chain ${c}`);
    for (const set of ['accept4', 'accept6', 'bridges', 'isolated', 'within']) for (const e of elements(t, set)) have.add(`element ${set} ${e.val} ${e.comment ?? ''}`);
    const fams = [...new Set(req.cidrs.map(familyOf))];
    const want: Expected[] = [
      { key: `chain ${req.adminChain}`, show: show(`chain ${req.adminChain}`) },
      ...[C_ISOLATED, C_SAME, C_ADMIN + req.adminChain, ...fams.flatMap((f) => [cAccept(f, true), cAccept(f, false)])].map((c) => nftExpected('inet', TABLE, 'forward', c)),
      ...req.cidrs.map((c) => ({ key: `element ${FAMILY_SET[familyOf(c)]} ${ipOf(c)} ${ownerComment(req.owner)}`, show: show(`element ${ipOf(c)} (comment ${JSON.stringify(ownerComment(req.owner))}) of set ${FAMILY_SET[familyOf(c)]}`) })),
    ];
    if (req.isolation) {
      const { bridge, policy } = req.isolation;
      const net = networkPart(req.owner.network);
      const sets: [string, string][] = [['bridges', bridge], policy === 'isolated' ? ['isolated', bridge] : ['within', `${bridge} . ${bridge}`]];
      // A bridge element carries the comment of the network that added it first: any comment will do.
      for (const [set, val] of sets) {
        const found = elements(t, set).find((e) => e.val === val);
        if (found) have.add(`element ${set} ${val} ${net}`);
        want.push({ key: `element ${set} ${val} ${net}`, show: show(`element ${JSON.stringify(val)} of set ${set}`) });
      }
    }
    requireRules(have, want, 'firewall (nftables)');
  }
}
