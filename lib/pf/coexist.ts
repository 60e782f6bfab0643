import { createHash } from 'node:crypto';
import { z } from 'zod';
import { CniError, ErrorCode } from '../cni/errors.js';
import { which } from '../exec/index.js';
import { canonicalNetwork } from '../ip/index.js';
import { apply, save, TablePlan, withIptablesLock, type IpFamily, type Rule, type TableState } from '../iptables/index.js';
import { rule } from '../iptables/rule.js';
import { nftListChain } from '../nft/index.js';

/**
 * Coexistence with an iptables policy of DROP (Docker sets FORWARD's; some
 * hosts set INPUT's). nftables runs every base chain hooked at a hook: an
 * `accept` in our own table ends only our table's verdict, and iptables-nft's
 * `ip filter FORWARD`/`INPUT` (or iptables-legacy's) still drops the packet.
 * So an nftables backend that lets a network's traffic through (forward) or
 * in (input) also opens the network on the iptables side, with one opening
 * per network (a rule per subnet, or per protocol, never per container), at
 * the top of the filter table's chain of that hook:
 *
 *   firewall (lib/pf/forward), FORWARD, per subnet — what the network starts, both directions:
 *     -A FORWARD -m conntrack --ctorigsrc 10.62.1.0/24 -m comment --comment "cni-ts nftables network net1" -j ACCEPT
 *   aos-firewall (lib/pf/aos), FORWARD, per instance subnet — what the instances start and what they answer
 *   (our table decides which: its drops are final, its base chain's policy accept):
 *     -A FORWARD -m conntrack --ctorigsrc 10.61.1.0/24 -m comment --comment "cni-ts nftables aos-firewall network aosnet" -j ACCEPT
 *     -A FORWARD -m conntrack --ctreplsrc 10.61.1.0/24 -m comment --comment "cni-ts nftables aos-firewall network aosnet" -j ACCEPT
 *   dnsname (lib/pf/dns), INPUT, per bridge — DNS queries to the network's dnsmasq:
 *     -A INPUT -i br0 -p udp -m udp --dport 53 -m comment --comment "cni-ts nftables dnsname network net1" -j ACCEPT
 *     -A INPUT -i br0 -p tcp -m tcp --dport 53 -m comment --comment "cni-ts nftables dnsname network net1" -j ACCEPT
 *
 * (`--ctorigsrc`: every packet of a connection the subnet started, both
 * directions; `--ctreplsrc`: of one it answers, also behind a DNAT.) The
 * opening is made with the network's first container (every ADD that opens
 * makes sure of it: insert-unique, nothing when there) and removed with its
 * last (each caller counts its network's containers in its own state). A
 * "refuse" mode (`iptablesForwardDrop` / `iptablesInputDrop: "refuse"`)
 * makes ADD fail instead, naming the policy.
 *
 * Reading the policy: with the iptables tools installed, iptables-save (nft
 * or legacy, as the host's alternatives select); without them, iptables-nft's
 * table as nft shows it (`nft -j list chain ip filter FORWARD`). A DROP there
 * without the tools to open it is an error (we never write into iptables-nft's
 * tables with nft); no such table, nothing to open.
 *
 * Callers hold the per-namespace lock (lib/iptables withIptablesLock) around
 * "open + add their own state" and "remove their own state + count + close"
 * (or serialise those by a lock of their own taken first), so a network's
 * last DEL and a new ADD never cross.
 */
export const dropMode = z.enum(['open', 'refuse']);
export type DropMode = z.infer<typeof dropMode>;
/** The firewall's name for it (`iptablesForwardDrop`). */
export const forwardDropMode = dropMode;
export type ForwardDropMode = DropMode;

/** The filter table's chain whose policy may drop what our nftables table accepts. */
export type Hook = 'FORWARD' | 'INPUT';
/** Whose opening it is (named in its comment; the firewall's, the first, carries no name). */
export type OpeningOwner = 'firewall' | 'aos-firewall' | 'dnsname';

/** One network's opening: its rules' matches (iptables-save normal form, without comment and target), per family. */
export interface Opening {
  hook: Hook;
  owner: OpeningOwner;
  network: string;
  matches: { family: IpFamily; match: string[] }[];
  /** The configuration option that says "refuse", named in the errors (`iptablesForwardDrop`). */
  option: string;
  /** What the network cannot do without it, for the error: `through`, `query its dnsmasq` … */
  purpose: string;
}

const TOOLS: Record<IpFamily, string[]> = { 4: ['iptables-save', 'iptables-restore'], 6: ['ip6tables-save', 'ip6tables-restore'] };
const haveTools = (fam: IpFamily) => TOOLS[fam].every((t) => which(t) !== undefined);
const familyOf = (cidr: string): IpFamily => (cidr.includes(':') ? 6 : 4);

const commentPrefix = (owner: OpeningOwner) => (owner === 'firewall' ? 'cni-ts nftables network ' : `cni-ts nftables ${owner} network `);

/** The opening's comment: the owner and the network by name (a digest for names iptables' 256-byte comments cannot hold). */
export function openingComment(network: string, owner: OpeningOwner = 'firewall'): string {
  const name = network.length <= 200 ? network : `sha256:${createHash('sha256').update(network).digest('hex').slice(0, 32)}`;
  return commentPrefix(owner) + name;
}

/** An opening's rules, in iptables-save's normal form. */
export function openingRules(o: Pick<Opening, 'hook' | 'owner' | 'network' | 'matches'>): { family: IpFamily; rule: Rule }[] {
  const comment = openingComment(o.network, o.owner);
  return o.matches.map(({ family, match }) => ({ family, rule: { chain: o.hook, spec: [...match, '-m', 'comment', '--comment', comment, '-j', 'ACCEPT'] } }));
}

/** Matches: the connections a subnet started (`orig`) or answers (`repl`), any direction. */
export const ctSubnet = (subnet: string, side: 'orig' | 'repl' = 'orig') => ({ family: familyOf(subnet), match: ['-m', 'conntrack', side === 'orig' ? '--ctorigsrc' : '--ctreplsrc', canonicalNetwork(subnet)] });
/** Matches: DNS (udp and tcp port 53) arriving on an interface. */
export const dnsFrom = (iface: string, family: IpFamily) =>
  (['udp', 'tcp'] as const).map((proto) => ({ family, match: rule('INPUT', { in: iface, proto, dport: '53', jump: 'ACCEPT' }).spec.slice(0, -2) }));

/** The firewall's opening rule for one subnet. */
export function openingRule(network: string, subnet: string): Rule {
  return openingRules({ hook: 'FORWARD', owner: 'firewall', network, matches: [ctSubnet(subnet)] })[0].rule;
}

function refused(o: Opening, fam: IpFamily, how: string): CniError {
  const tool = fam === 6 ? 'ip6tables' : 'iptables';
  return new CniError(ErrorCode.NotAvailable, `${tool} ${o.hook} policy is DROP: nftables rules alone cannot let network "${o.network}" ${o.purpose}`, how);
}

/** lib/iptables' locked save-plan-restore, with the state read (policies) shown to the plan. */
async function filterTransaction(fam: IpFamily, plan: (state: TableState, p: TablePlan) => void): Promise<void> {
  await withIptablesLock(async () => {
    for (let attempt = 0; ; attempt++) {
      const state = await save(fam, 'filter');
      const p = new TablePlan('filter', state);
      plan(state, p);
      try {
        await apply(fam, [p.batch]);
        return;
      } catch (err) {
        if (attempt >= 2) throw err;
      }
    }
  });
}

/**
 * ADD side: for each family of the opening's rules, when that family's
 * iptables policy of the hook is DROP, inserts the rules (mode "open") or
 * fails naming the policy (mode "refuse"). Nothing when the policy is
 * ACCEPT or there is no iptables table. Returns the families opened.
 */
export async function openIptables(o: Opening, mode: DropMode): Promise<IpFamily[]> {
  const opened: IpFamily[] = [];
  const all = openingRules(o);
  for (const fam of [4, 6] as const) {
    const mine = all.filter((r) => r.family === fam).map((r) => r.rule);
    if (mine.length === 0) continue;
    if (!haveTools(fam)) {
      const chain = await nftListChain(fam === 6 ? 'ip6' : 'ip', 'filter', o.hook);
      if (chain?.chainInfo.get(o.hook)?.policy !== 'drop') continue;
      throw refused(o, fam, mode === 'refuse'
        ? `${o.option} is "refuse"; set it to "open" (and install the iptables tools) or change the policy`
        : `the ${TOOLS[fam].join(' / ')} tools are not installed to open it; install them, or change the policy`);
    }
    await filterTransaction(fam, (state, p) => {
      if (state.chains.get(o.hook) !== 'DROP') return;
      if (mode === 'refuse') throw refused(o, fam, `${o.option} is "refuse"; set it to "open" to add one opening per network there, or change the policy`);
      for (const r of mine) p.insertUnique(r);
      if (!opened.includes(fam)) opened.push(fam);
    });
  }
  return opened;
}

/**
 * DEL side: removes the openings of `owner` in `hook` that `pick` selects —
 * given each rule and its comment's network part (the name, or its digest) —
 * in the families given. Nothing to do in a family without the iptables
 * tools (nobody could have added one there).
 */
export async function closeIptables(hook: Hook, owner: OpeningOwner, pick: (r: Rule, network: string) => boolean, families: IpFamily[] = [4, 6]): Promise<void> {
  const prefix = commentPrefix(owner);
  for (const fam of families) {
    if (!haveTools(fam)) continue;
    await filterTransaction(fam, (state, p) => {
      for (const r of state.rules) {
        if (r.chain !== hook || r.spec.at(-1) !== 'ACCEPT') continue;
        const i = r.spec.indexOf('--comment');
        const c = i >= 0 ? r.spec[i + 1] : undefined;
        if (c?.startsWith(prefix) && pick(r, c.slice(prefix.length))) p.delete(r);
      }
    });
  }
}

/** The network part of an opening's comment (what `closeIptables` hands `pick`). */
export const networkPart = (network: string) => openingComment(network, 'firewall').slice(commentPrefix('firewall').length);

/** Closes every opening of one network of `owner` in `hook`. */
export const closeNetwork = (hook: Hook, owner: OpeningOwner, network: string, families?: IpFamily[]) =>
  closeIptables(hook, owner, (_r, n) => n === networkPart(network), families);

/** The firewall's opening (FORWARD, per subnet, `--ctorigsrc`). */
export const openIptablesForward = (network: string, subnets: string[], mode: ForwardDropMode) =>
  openIptables({ hook: 'FORWARD', owner: 'firewall', network, matches: [...new Set(subnets.map((s) => canonicalNetwork(s)))].map((s) => ctSubnet(s)), option: 'iptablesForwardDrop', purpose: 'through' }, mode);

/** The firewall's closing, when the network's last container is gone (both families). */
export const closeIptablesForward = (network: string) => closeNetwork('FORWARD', 'firewall', network);
