import { CniError, ErrorCode } from '../../cni/errors.js';
import { canonicalIP, canonicalNetwork, isCidr, isIP } from '../../ip/index.js';
import { deleteRuleLines, NFT_COMMENT_MAX, NFT_NAME, nftApply, nftCommentKeys, nftListChain, nftListTable, nftQuote, nftTryApply, type NftRule, type NftTable } from '../../nft/index.js';
import { withIptablesLock, type Rule } from '../../iptables/index.js';
import { requireRules, type Expected } from '../check.js';
import { closeIptables, ctSubnet, networkPart, openIptables, type Opening } from '../coexist.js';
import type { AosFirewall, AosInstance, AosNetwork } from './index.js';
import { maskToPrefix, type AccessRule } from '../../../plugins/aos-firewall/state.js';

/**
 * The Aos instance firewall on nftables: the decisions of the iptables
 * layout (./rules.ts, docs/aos-firewall.md), rule for rule, in a table of
 * our own. The three shared iptables chains become three steps of one base
 * chain, and an instance's rules live in two chains of its own, reached
 * through verdict maps keyed by its address — so ADD and DEL write only
 * the instance's elements and chains (no read), and a call costs the same
 * with 1 or 500 instances.
 *
 *   table inet cni_ts_aos
 *   ├─ map forward_access  ipv4_addr : verdict    IP → jump <C>-fwd       (AOS-FORWARD)
 *   ├─ map forward_port    ipv4_addr : verdict    IP → jump <C>           (AOS-FORWARD-PORT)
 *   ├─ set output_icmp     ipv4_addr              every instance          (AOS-OUTPUT)
 *   ├─ set output_new      ipv4_addr              instances not public    (AOS-OUTPUT)
 *   ├─ chain forward       type filter hook forward priority filter (0); policy accept
 *   │    jump access_other                                      ┐ flushed and written
 *   │    ip saddr vmap @forward_access                          │ again by every ADD
 *   │    ip daddr vmap @forward_access                          │ (never depends on
 *   │    ct state new ip daddr vmap @forward_port               │ the instances)
 *   │    ip saddr @output_icmp meta l4proto icmp drop           │
 *   │    ct state new ip saddr @output_new drop                 ┘
 *   ├─ chain access_other  outputAccess pairs whose srcIp is not the instance's own address
 *   │                      (rules commented "aos <uuid>: outputAccess <i>"; DEL reads this chain
 *   │                      only for an instance that has such pairs)
 *   ├─ chain <C>-fwd       the instance's accepts, each naming its address as source or destination:
 *   │    ip saddr IP oifname WAN accept                          public
 *   │    ip daddr IP iifname WAN ct state established,related accept   public
 *   │    ip saddr IP ip daddr DST [tcp dport P] accept           outputAccess
 *   │    ip saddr DST ip daddr IP [tcp sport P] ct state established,related accept
 *   │    ip saddr IP ip daddr GW/GP accept, ip saddr GW/GP ip daddr IP accept
 *   └─ chain <C>           new connections to the instance:
 *        ip saddr GW/P meta l4proto tcp accept, … udp accept
 *        tcp dport { inputAccess } return, udp dport { … } return
 *        meta l4proto tcp drop, meta l4proto udp drop
 *
 *   <C> = the instance chain's name from the state entry (`CNI-` + 24 hex
 *   of sha512(iptablesAdminChainName + uuid), as on iptables)
 *   every rule's comment: "aos <uuid>: <role>" (uuid cut to keep 128 bytes)
 *
 * An accept ends this table's chain only: another base chain at the forward
 * hook (iptables' FORWARD, another table) still sees the packet, and its
 * drop wins. The drops here are final wherever they are. So on a host whose
 * iptables FORWARD policy is DROP (Docker's), ADD also opens the instance's
 * subnet there (../coexist.ts): two rules per subnet, accepting the
 * connections the subnet's instances start (`--ctorigsrc`) and those they
 * answer (`--ctreplsrc`), which leaves every decision to this table; the
 * subnet's last instance (counted in the state file) takes them away.
 * `iptablesForwardDrop: "refuse"` makes ADD fail instead, naming the policy.
 */
export const TABLE = 'cni_ts_aos';
export const FAMILY = 'inet';
const T = `${FAMILY} ${TABLE}`;
export const BASE = 'forward';
export const OTHER = 'access_other';
export const MAP_ACCESS = 'forward_access';
export const MAP_PORT = 'forward_port';
export const SET_ICMP = 'output_icmp';
export const SET_NEW = 'output_new';

const FRAME: [string, string][] = [
  [`jump ${OTHER}`, 'outputAccess of other sources'],
  [`ip saddr vmap @${MAP_ACCESS}`, 'AOS-FORWARD by source'],
  [`ip daddr vmap @${MAP_ACCESS}`, 'AOS-FORWARD by destination'],
  [`ct state new ip daddr vmap @${MAP_PORT}`, 'AOS-FORWARD-PORT'],
  [`ip saddr @${SET_ICMP} meta l4proto icmp drop`, 'AOS-OUTPUT icmp'],
  [`ct state new ip saddr @${SET_NEW} drop`, 'AOS-OUTPUT not public'],
];
const frameComment = (role: string) => `aos: ${role}`;

function frameLines(): string[] {
  return [
    `add table ${T}`,
    `add map ${T} ${MAP_ACCESS} { type ipv4_addr : verdict ; }`,
    `add map ${T} ${MAP_PORT} { type ipv4_addr : verdict ; }`,
    `add set ${T} ${SET_ICMP} { type ipv4_addr ; }`,
    `add set ${T} ${SET_NEW} { type ipv4_addr ; }`,
    `add chain ${T} ${OTHER}`,
    `add chain ${T} ${BASE} { type filter hook forward priority filter ; policy accept ; }`,
    `flush chain ${T} ${BASE}`,
    ...FRAME.map(([rule, role]) => `add rule ${T} ${BASE} ${rule} comment ${nftQuote(frameComment(role))}`),
  ];
}

const bad = (msg: string) => new CniError(ErrorCode.InvalidNetworkConfig, `aos-firewall (nftables): ${msg}`);

/** A rule comment naming the instance: "aos <uuid>: <role>", the uuid cut (and stripped of what nft cannot quote) to fit 128 bytes. */
export function commentFor(uuid: string, role: string): string {
  const clean = uuid.replace(/[^\x20-\x7e]|["\\]/g, '?');
  const room = NFT_COMMENT_MAX - `aos : ${role}`.length;
  return `aos ${clean.slice(0, Math.max(0, room))}: ${role}`;
}

/** Validated pieces of an entry, as nft writes them (the entry may come from another writer's state file). */
interface Parts {
  ip: string;
  /** IP/P, the instance's subnet (canonical): what an iptables-side opening opens. */
  subnet: string;
  chain: string;
  fwd: string;
  /** GW/P, the instance's own subnet as the gateway sees it. */
  gwSubnet: string;
  /** GW/GP, the host interface's network. */
  gwNet: string;
  wan: string;
  uuid: string;
  own: { o: AccessRule; i: number }[];
  other: { o: AccessRule; i: number }[];
}

function address(s: string, what: string): string {
  if (isIP(s) && !s.includes(':')) return canonicalIP(s);
  if (isCidr(s) && !s.includes(':')) return canonicalNetwork(s);
  throw bad(`${what} "${s}" is not an IPv4 address or network`);
}

function ports(list: string[], what: string): string {
  for (const p of list) if (!/^\d{1,5}(:\d{1,5})?$/.test(p)) throw bad(`${what} "${p}" is not a port or a:b range`);
  return `{ ${list.map((p) => p.replace(':', '-')).join(', ')} }`;
}

function parts(e: AosInstance): Parts {
  const ip = address(e.address.IP, 'address');
  if (ip.includes('/')) throw bad(`address "${e.address.IP}" is not a single address`);
  if (!NFT_NAME.test(e.name) || e.name.length > 200) throw bad(`chain name "${e.name}" cannot be an nftables chain`);
  const gw = address(e.gateway, 'gateway');
  const own: Parts['own'] = [];
  const other: Parts['other'] = [];
  (e.outRules ?? []).forEach((o, i) => {
    const src = o.srcIp ? address(o.srcIp, 'srcIp') : ip;
    (src === ip ? own : other).push({ o, i });
  });
  if (e.hasInternetConnection && !/^[^\s"\\/]{1,15}$/.test(e.publicInterface)) throw bad(`public interface "${e.publicInterface}" is not an interface name`);
  return {
    ip, subnet: canonicalNetwork(`${ip}/${maskToPrefix(e.address.Mask)}`), chain: e.name, fwd: `${e.name}-fwd`,
    gwSubnet: canonicalNetwork(`${gw}/${maskToPrefix(e.address.Mask)}`),
    gwNet: canonicalNetwork(`${gw}/${Number(e.gatewayPrefixLen)}`),
    wan: e.publicInterface, uuid: e.containerID || e.name, own, other,
  };
}

/** An outputAccess pair's two rules (match, role), as in ./rules.ts: the forward one and its replies. */
function accessRules(o: AccessRule, i: number, ip: string): [string, string][] {
  const src = o.srcIp ? address(o.srcIp, 'srcIp') : ip;
  const dst = address(o.dstIp, 'dstIp');
  const p = o.proto === 'tcp' || o.proto === 'udp' ? o.proto : undefined;
  const port = p && o.dstPort ? ports(o.dstPort.split(','), 'dstPort') : undefined;
  const l4 = (dir: 'dport' | 'sport') => (p ? (port ? ` ${p} ${dir} ${port}` : ` meta l4proto ${p}`) : '');
  return [
    [`ip saddr ${src} ip daddr ${dst}${l4('dport')} accept`, `outputAccess ${i}`],
    [`ip saddr ${dst} ip daddr ${src}${l4('sport')} ct state established,related accept`, `outputAccess ${i} replies`],
  ];
}

/** The instance's rules: chain → [match, role][]. */
function instanceRules(e: AosInstance, x: Parts): Map<string, [string, string][]> {
  const input: [string, string][] = [
    [`ip saddr ${x.gwSubnet} meta l4proto tcp accept`, 'tcp from the host'],
    [`ip saddr ${x.gwSubnet} meta l4proto udp accept`, 'udp from the host'],
  ];
  if (e.inputPortsTCP?.length) input.push([`tcp dport ${ports(e.inputPortsTCP, 'inputAccess port')} return`, 'inputAccess tcp']);
  if (e.inputPortsUDP?.length) input.push([`udp dport ${ports(e.inputPortsUDP, 'inputAccess port')} return`, 'inputAccess udp']);
  input.push(['meta l4proto tcp drop', 'other tcp'], ['meta l4proto udp drop', 'other udp']);
  const fwd: [string, string][] = [];
  if (e.hasInternetConnection) {
    fwd.push([`ip saddr ${x.ip} oifname ${nftQuote(x.wan)} accept`, 'public']);
    fwd.push([`ip daddr ${x.ip} iifname ${nftQuote(x.wan)} ct state established,related accept`, 'public replies']);
  }
  for (const { o, i } of x.own) fwd.push(...accessRules(o, i, x.ip));
  fwd.push([`ip saddr ${x.ip} ip daddr ${x.gwNet} accept`, 'to the host network'], [`ip saddr ${x.gwNet} ip daddr ${x.ip} accept`, 'from the host network']);
  const other: [string, string][] = x.other.flatMap(({ o, i }) => accessRules(o, i, x.ip));
  return new Map([[x.chain, input], [x.fwd, fwd], [OTHER, other]]);
}

/** The elements of an instance: [map or set, element as written, CHECK key]. */
function elements(e: AosInstance, x: Parts): [string, string, string][] {
  const out: [string, string, string][] = [
    [MAP_ACCESS, `${x.ip} : jump ${x.fwd}`, `${x.ip} jump ${x.fwd}`],
    [MAP_PORT, `${x.ip} : jump ${x.chain}`, `${x.ip} jump ${x.chain}`],
    [SET_ICMP, x.ip, x.ip],
  ];
  if (!e.hasInternetConnection) out.push([SET_NEW, x.ip, x.ip]);
  return out;
}

function addLines(e: AosInstance, x: Parts): string[] {
  const lines: string[] = [];
  for (const [chain, rules] of instanceRules(e, x)) {
    if (chain !== OTHER) lines.push(`add chain ${T} ${chain}`, `flush chain ${T} ${chain}`);
    for (const [rule, role] of rules) lines.push(`add rule ${T} ${chain} ${rule} comment ${nftQuote(commentFor(x.uuid, role))}`);
  }
  for (const [set, el] of elements(e, x)) lines.push(`add element ${T} ${set} { ${el} }`);
  return lines;
}

/** The comments of an instance's rules in access_other (found by them, since that chain is shared). */
function otherComments(e: AosInstance, x: Parts): Set<string> {
  return new Set((instanceRules(e, x).get(OTHER) ?? []).map(([, role]) => commentFor(x.uuid, role)));
}

/** Exact removal, no read: the instance's elements and (unless kept) chains; access_other rules by the handles given. */
function removeLines(e: AosInstance, x: Parts, otherRules: Pick<NftRule, 'chain' | 'handle'>[], keepChains: boolean): string[] {
  const lines = elements(e, x).map(([set, el]) => `delete element ${T} ${set} { ${el.split(' : ')[0]} }`);
  if (!keepChains) for (const c of [x.chain, x.fwd]) lines.push(`flush chain ${T} ${c}`, `delete chain ${T} ${c}`);
  lines.push(...deleteRuleLines(FAMILY, TABLE, otherRules));
  return lines;
}

/** A value at a path of nft's JSON, or undefined. */
function at(v: unknown, ...path: (string | number)[]): unknown {
  for (const k of path) v = typeof v === 'object' && v !== null ? (v as Record<string | number, unknown>)[k] : undefined;
  return v;
}

/** An element of a listed set or map: its key, and for a verdict map "jump <chain>". */
function elementOf(el: unknown): { key: string; verdict?: string } {
  if (Array.isArray(el)) {
    const v = el[1];
    const kind = typeof v === 'object' && v !== null ? Object.keys(v)[0] : String(v);
    const target = at(v, kind, 'target');
    return { key: elementOf(el[0]).key, verdict: target === undefined ? kind : `${kind} ${String(target)}` };
  }
  if (typeof el === 'object' && el !== null && 'elem' in el) return elementOf(at(el, 'elem', 'val'));
  return { key: String(el) };
}

/**
 * Removal of what the listing shows of an instance (after an exact plan
 * failed, or without an entry): elements keyed by its address or jumping
 * to its chains, its chains, its access_other rules.
 */
function removePresent(t: NftTable, ips: Set<string>, chains: Set<string>, owned: (comment: string) => boolean, keepChains: Set<string>): string[] {
  const lines: string[] = [];
  // The maps first: an element jumping to the instance's chains also names its address (for the sets, without an entry).
  for (const set of [MAP_ACCESS, MAP_PORT, SET_ICMP, SET_NEW]) {
    for (const el of t.sets.get(set) ?? []) {
      const { key, verdict } = elementOf(el);
      const target = verdict?.split(' ')[1];
      if (target !== undefined && chains.has(target)) ips.add(key);
      if (ips.has(key)) lines.push(`delete element ${T} ${set} { ${key} }`);
    }
  }
  for (const c of chains) if (t.chains.has(c) && !keepChains.has(c)) lines.push(`flush chain ${T} ${c}`, `delete chain ${T} ${c}`);
  lines.push(...deleteRuleLines(FAMILY, TABLE, t.rules.filter((r) => r.chain === OTHER && owned(r.comment ?? ''))));
  return lines;
}

/** The comment prefix of an instance's outputAccess rules in access_other (DEL without an entry finds them by it). */
const otherPrefix = (uuid: string) => commentFor(uuid, 'outputAccess').replace(/outputAccess$/, 'outputAccess ');

const script = (lines: string[]) => `${lines.join('\n')}\n`;

/** The iptables-side opening of an instance subnet. */
const opening = (net: AosNetwork, subnet: string): Opening => ({
  hook: 'FORWARD', owner: 'aos-firewall', network: net.name, matches: [ctSubnet(subnet, 'orig'), ctSubnet(subnet, 'repl')],
  option: 'iptablesForwardDrop', purpose: 'through',
});
/** The subnet an opening rule opens. */
function openedSubnet(r: Rule): string | undefined {
  const i = r.spec.findIndex((a) => a === '--ctorigsrc' || a === '--ctreplsrc');
  return i >= 0 ? r.spec[i + 1] : undefined;
}
/** Removes the openings of `subnet`, whichever network's name they carry (its instances are gone). */
const closeSubnet = (subnet: string) => closeIptables('FORWARD', 'aos-firewall', (r) => openedSubnet(r) === subnet, [4]);

async function otherRulesOf(comments: Set<string>): Promise<NftRule[]> {
  if (comments.size === 0) return [];
  const c = await nftListChain(FAMILY, TABLE, OTHER);
  return (c?.rules ?? []).filter((r) => r.chain === OTHER && comments.has(r.comment ?? ''));
}

export class NftAosFirewall implements AosFirewall {
  readonly backend = 'nftables' as const;

  locked<T>(fn: () => Promise<T>): Promise<T> {
    return withIptablesLock(fn);
  }

  async add(entry: AosInstance, old: AosInstance | undefined, net: AosNetwork): Promise<void> {
    const x = parts(entry);
    const ox = old ? partsOrUndefined(old) : undefined;
    // The iptables side first: a "refuse" fails before anything changes. Should the transaction
    // below fail after an opening, a DEL (finding no entry) closes it with the subnet unused.
    await openIptables(opening(net, x.subnet), net.iptablesForwardDrop);
    await this.write(entry, x, old, ox);
    // The instance moved: its old subnet's opening goes when no one else is there.
    if (ox && ox.subnet !== x.subnet && !net.subnetInUse(ox.subnet)) await closeSubnet(ox.subnet);
  }

  private async write(entry: AosInstance, x: Parts, old: AosInstance | undefined, ox: Parts | undefined): Promise<void> {
    const adds = addLines(entry, x);
    // The planned script: the old entry's elements (and chains, when renamed) out, the new in.
    const oldComments = old && ox ? otherComments(old, ox) : new Set<string>();
    const planned = [...frameLines()];
    if (old && ox) planned.push(...removeLines(old, ox, await otherRulesOf(oldComments), ox.chain === x.chain));
    if (await nftTryApply(script([...planned, ...adds]))) return;
    // Something is not as planned (removed by hand, a leftover holding the address): read and plan again.
    const t = await nftListTable(FAMILY, TABLE);
    const lines = [...frameLines()];
    if (t) {
      const ips = new Set([x.ip, ...(ox ? [ox.ip] : [])]);
      const chains = new Set([x.chain, x.fwd, ...(ox ? [ox.chain, ox.fwd] : [])]);
      const comments = new Set([...oldComments, ...otherComments(entry, x)]);
      lines.push(...removePresent(t, ips, chains, (c) => comments.has(c), new Set([x.chain, x.fwd])));
    }
    await nftApply(script([...lines, ...adds]));
  }

  async del(entry: AosInstance | undefined, chain: string, uuid: string, net: AosNetwork): Promise<void> {
    const x = entry ? partsOrUndefined(entry) : undefined;
    await this.remove(entry, x, chain, uuid);
    if (x) {
      if (!net.subnetInUse(x.subnet)) await closeSubnet(x.subnet);
    } else if (!entry) {
      // No entry (the state file lost it, or a repeated DEL): this network's openings of subnets no instance uses.
      const mine = networkPart(net.name);
      await closeIptables('FORWARD', 'aos-firewall', (r, n) => n === mine && !net.subnetInUse(openedSubnet(r) ?? ''), [4]);
    }
  }

  private async remove(entry: AosInstance | undefined, x: Parts | undefined, chain: string, uuid: string): Promise<void> {
    if (entry && x) {
      const comments = otherComments(entry, x);
      if (await nftTryApply(script(removeLines(entry, x, await otherRulesOf(comments), false)))) return;
    }
    // The exact plan failed (or no entry to plan from): remove what is there.
    const t = await nftListTable(FAMILY, TABLE);
    if (!t) return; // nothing of ours exists
    const chains = new Set(x ? [x.chain, x.fwd] : NFT_NAME.test(chain) ? [chain, `${chain}-fwd`] : []);
    const comments = entry && x ? otherComments(entry, x) : undefined;
    const prefix = otherPrefix(uuid);
    const owned = (c: string) => (comments ? comments.has(c) : c.startsWith(prefix));
    const lines = removePresent(t, new Set(x ? [x.ip] : []), chains, owned, new Set());
    if (lines.length) await nftApply(script(lines));
  }

  async check(entry: AosInstance): Promise<void> {
    const x = parts(entry);
    const t = await nftListTable(FAMILY, TABLE);
    if (!t) throw new CniError(ErrorCode.CheckFailed, `aos-firewall (nftables): table ${T} not found`);
    const have = nftCommentKeys(t);
    for (const [set, els] of t.sets) {
      for (const el of els) {
        const { key, verdict } = elementOf(el);
        have.add(`@${set} ${key}${verdict ? ` ${verdict}` : ''}`);
      }
    }
    const shown = (chain: string, rule: string, comment: string) => `${rule} comment ${nftQuote(comment)} in ${T} ${chain} (nft list chain ${T} ${chain})`;
    const want: Expected[] = FRAME.map(([rule, role]) => ({ key: `${BASE} ${frameComment(role)}`, show: shown(BASE, rule, frameComment(role)) }));
    for (const [chain, rules] of instanceRules(entry, x)) {
      for (const [rule, role] of rules) want.push({ key: `${chain} ${commentFor(x.uuid, role)}`, show: shown(chain, rule, commentFor(x.uuid, role)) });
    }
    for (const [set, el, key] of elements(entry, x)) want.push({ key: `@${set} ${key}`, show: `element { ${el} } in ${T} ${set} (nft list set ${T} ${set})` });
    requireRules(have, want, 'aos-firewall (nftables)');
  }
}

/** An entry's parts, or undefined when it cannot be written in nft (then it was never written there). */
function partsOrUndefined(e: AosInstance): Parts | undefined {
  try {
    return parts(e);
  } catch {
    return undefined;
  }
}
