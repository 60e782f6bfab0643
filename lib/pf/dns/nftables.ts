import { CniError, ErrorCode } from '../../cni/errors.js';
import { NFT_COMMENT_MAX, nftApply, nftCommentKeys, nftListTable, nftQuote, nftTryApply } from '../../nft/index.js';
import { option } from '../../iptables/rule.js';
import { requireRules } from '../check.js';
import { closeIptables, closeNetwork, dnsFrom, networkPart, openIptables, type Opening } from '../coexist.js';
import { dnsTag, type DnsOpening, type DnsPorts } from './index.js';

/**
 * DNS port openings on nftables, a table of our own:
 *
 *   table inet cni_ts_dns
 *   ├─ set bridges   type ifname                one element per network:
 *   │                                           "<bridge>" comment "cni-ts dnsname: <network>"
 *   └─ chain input   type filter hook input priority filter (0); policy accept
 *        iifname @bridges meta l4proto { tcp, udp } th dport 53 counter accept
 *                    comment "cni-ts dnsname: DNS from the networks' bridges"   (flushed and written
 *                                                                 again by every opening)
 *
 * An opening is one element: the network's first ADD adds it (no read), a
 * failed ADD's undo deletes it by its key, the network's last DEL or GC
 * finds it by its comment (one `nft -j list table`, once per network, not
 * per container). A bridge shared by two networks is one element, tagged
 * with the first; the iptables layout keeps a rule pair per network.
 *
 * Like every accept in nftables, this one ends our table's chain only: a
 * drop in another base chain at the input hook (iptables' INPUT policy
 * DROP, a firewall's own table) still drops DNS. So when iptables' INPUT
 * policy is DROP, an opening also opens the network on the iptables side
 * (../coexist.ts: `-i <bridge> -p udp|tcp --dport 53 … -j ACCEPT`, one pair
 * per network, gone with the network), or with `iptablesInputDrop:
 * "refuse"` fails naming the policy. (Another table's drop is that table's
 * business.)
 */
export const TABLE = 'cni_ts_dns';
export const FAMILY = 'inet';
const T = `${FAMILY} ${TABLE}`;
export const SET = 'bridges';
export const CHAIN = 'input';
export const RULE = `iifname @${SET} meta l4proto { tcp, udp } th dport 53 counter accept`;
export const RULE_COMMENT = "cni-ts dnsname: DNS from the networks' bridges";

/** An element comment: the tag, cut to 128 bytes. */
export function elementComment(network: string): string {
  const tag = dnsTag(network).replace(/["\\\n\r]/g, '');
  const b = Buffer.from(tag);
  return b.length > NFT_COMMENT_MAX ? b.subarray(0, NFT_COMMENT_MAX).toString().replace(/\uFFFD+$/, '') : tag;
}

function bridgeName(bridge: string): string {
  if (!/^[^\s"\\/]{1,15}$/.test(bridge)) throw new CniError(ErrorCode.InvalidNetworkConfig, `dnsname (nftables): "${bridge}" is not an interface name`);
  return nftQuote(bridge);
}

const frame = () => [
  `add table ${T}`,
  `add set ${T} ${SET} { type ifname ; }`,
  `add chain ${T} ${CHAIN} { type filter hook input priority filter ; policy accept ; }`,
  `flush chain ${T} ${CHAIN}`,
  `add rule ${T} ${CHAIN} ${RULE} comment ${nftQuote(RULE_COMMENT)}`,
];
const script = (lines: string[]) => `${lines.join('\n')}\n`;

/** The iptables-side opening of a network's port 53. */
const inputOpening = (o: DnsOpening): Opening => ({
  hook: 'INPUT', owner: 'dnsname', network: o.network, matches: dnsFrom(o.bridge, o.family), option: 'iptablesInputDrop', purpose: 'reach its DNS server (port 53)',
});

/** A listed element: its interface name and comment. */
function elementOf(el: unknown): { name: string; comment?: string } {
  if (typeof el === 'object' && el !== null && 'elem' in el) {
    const e = (el as { elem: { val?: unknown; comment?: unknown } }).elem;
    return { name: String(e.val), comment: typeof e.comment === 'string' ? e.comment : undefined };
  }
  return { name: String(el) };
}

export class NftDnsPorts implements DnsPorts {
  readonly backend = 'nftables' as const;

  async open(o: DnsOpening): Promise<void> {
    const bridge = bridgeName(o.bridge); // (validated before anything is written)
    // The iptables side first: a "refuse" fails before anything of ours exists (a failed ADD's undo closes both).
    await openIptables(inputOpening(o), o.iptablesInputDrop ?? 'open');
    await nftApply(script([...frame(), `add element ${T} ${SET} { ${bridge} comment ${nftQuote(elementComment(o.network))} }`]));
  }

  async refresh(o: DnsOpening): Promise<void> {
    await openIptables(inputOpening(o), o.iptablesInputDrop ?? 'open');
  }

  async close(o: DnsOpening): Promise<void> {
    await this.closeElement(o);
    const mine = networkPart(o.network);
    await closeIptables('INPUT', 'dnsname', (r, n) => n === mine && option(r, '-i') === o.bridge, [o.family]);
  }

  private async closeElement(o: DnsOpening): Promise<void> {
    if (await nftTryApply(script([`delete element ${T} ${SET} { ${bridgeName(o.bridge)} }`]))) return;
    // Not there (or the table is gone): read, and delete it only if it is there after all.
    const t = await nftListTable(FAMILY, TABLE);
    if ((t?.sets.get(SET) ?? []).some((el) => elementOf(el).name === o.bridge)) await nftApply(script([`delete element ${T} ${SET} { ${bridgeName(o.bridge)} }`]));
  }

  async closeNetwork(network: string, families: (4 | 6)[]): Promise<void> {
    const t = await nftListTable(FAMILY, TABLE);
    const tag = elementComment(network);
    const mine = (t?.sets.get(SET) ?? []).map(elementOf).filter((e) => e.comment === tag);
    if (mine.length) await nftApply(script(mine.map((e) => `delete element ${T} ${SET} { ${nftQuote(e.name)} }`)));
    // Also without our table: an opening is made before it (an ADD that failed in between leaves one).
    await closeNetwork('INPUT', 'dnsname', network, families);
  }

  async check(o: DnsOpening): Promise<void> {
    const t = await nftListTable(FAMILY, TABLE);
    const have = nftCommentKeys(t);
    for (const el of t?.sets.get(SET) ?? []) {
      const e = elementOf(el);
      have.add(`@${SET} ${e.name} ${e.comment ?? ''}`);
    }
    requireRules(have, [
      { key: `${CHAIN} ${RULE_COMMENT}`, show: `${RULE} comment ${nftQuote(RULE_COMMENT)} in ${T} ${CHAIN} (nft list chain ${T} ${CHAIN})` },
      { key: `@${SET} ${o.bridge} ${elementComment(o.network)}`, show: `element { ${nftQuote(o.bridge)} comment ${nftQuote(elementComment(o.network))} } in ${T} ${SET} (nft list set ${T} ${SET})` },
    ], 'dnsname port 53 opening (nftables)');
  }
}
