import { createHash } from 'node:crypto';
import { z } from 'zod';
import { CniError, ErrorCode } from '../cni/errors.js';
import { which } from '../exec/index.js';
import { canonicalNetwork } from '../ip/index.js';
import { apply, save, TablePlan, withIptablesLock, type IpFamily, type Rule, type TableState } from '../iptables/index.js';
import { nftListChain } from '../nft/index.js';

/**
 * Coexistence with an iptables FORWARD policy of DROP (Docker sets it).
 * nftables runs every base chain hooked at forward: an `accept` in our own
 * table ends only our table's verdict, and iptables-nft's `ip filter
 * FORWARD` (or iptables-legacy's FORWARD) still drops the packet. So an
 * nftables backend that lets a network's containers through also opens the
 * network on the iptables side, with ONE rule per network and subnet, at
 * the top of the filter table's FORWARD chain:
 *
 *   -A FORWARD -m conntrack --ctorigsrc 10.62.1.0/24 -m comment --comment "cni-ts nftables network net1" -j ACCEPT
 *
 * (`--ctorigsrc`: every packet of a connection the network started, both
 * directions — the reference firewall's `-s IP` plus its `-d IP ctstate
 * RELATED,ESTABLISHED`, per network). It is added with the network's first
 * container (every ADD makes sure of it: insert-unique, nothing when there)
 * and removed with its last (the caller counts the network's containers in
 * its own nftables state). `iptablesForwardDrop: "refuse"` makes ADD fail
 * instead, naming the policy.
 *
 * Reading the policy: with the iptables tools installed, iptables-save (nft
 * or legacy, as the host's alternatives select); without them, iptables-nft's
 * table as nft shows it (`nft -j list chain ip filter FORWARD`). A DROP there
 * without the tools to open it is an error (we never write into iptables-nft's
 * tables with nft); no such table, nothing to open.
 *
 * Callers hold the per-namespace lock (lib/iptables withIptablesLock) around
 * "open + add their own state" and "remove their own state + count + close",
 * so a network's last DEL and a new ADD never cross.
 */
export const forwardDropMode = z.enum(['open', 'refuse']);
export type ForwardDropMode = z.infer<typeof forwardDropMode>;

const TOOLS: Record<IpFamily, string[]> = { 4: ['iptables-save', 'iptables-restore'], 6: ['ip6tables-save', 'ip6tables-restore'] };
const haveTools = (fam: IpFamily) => TOOLS[fam].every((t) => which(t) !== undefined);
const familyOf = (cidr: string): IpFamily => (cidr.includes(':') ? 6 : 4);

/** The opening rule's comment: the network by name (a digest for names iptables' 256-byte comments cannot hold). */
export function openingComment(network: string): string {
  const name = network.length <= 200 ? network : `sha256:${createHash('sha256').update(network).digest('hex').slice(0, 32)}`;
  return `cni-ts nftables network ${name}`;
}

/** The opening rule for one subnet, in iptables-save's normal form. */
export function openingRule(network: string, subnet: string): Rule {
  return { chain: 'FORWARD', spec: ['-m', 'conntrack', '--ctorigsrc', canonicalNetwork(subnet), '-m', 'comment', '--comment', openingComment(network), '-j', 'ACCEPT'] };
}

function refused(network: string, fam: IpFamily, how: string): CniError {
  const tool = fam === 6 ? 'ip6tables' : 'iptables';
  return new CniError(
    ErrorCode.NotAvailable,
    `${tool} FORWARD policy is DROP: nftables rules alone cannot let network "${network}" through`,
    how,
  );
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
 * ADD side: for each family of `subnets`, when that family's iptables
 * FORWARD policy is DROP, inserts the network's opening rule (mode "open")
 * or fails naming the policy (mode "refuse"). Nothing when the policy is
 * ACCEPT or there is no iptables table. Returns the families opened.
 */
export async function openIptablesForward(network: string, subnets: string[], mode: ForwardDropMode): Promise<IpFamily[]> {
  const opened: IpFamily[] = [];
  for (const fam of [4, 6] as const) {
    const mine = [...new Set(subnets.filter((s) => familyOf(s) === fam).map((s) => canonicalNetwork(s)))];
    if (mine.length === 0) continue;
    if (!haveTools(fam)) {
      const chain = await nftListChain(fam === 6 ? 'ip6' : 'ip', 'filter', 'FORWARD');
      if (chain?.chainInfo.get('FORWARD')?.policy !== 'drop') continue;
      throw refused(network, fam, mode === 'refuse'
        ? 'iptablesForwardDrop is "refuse"; set it to "open" (and install the iptables tools) or change the policy'
        : `the ${TOOLS[fam].join(' / ')} tools are not installed to open it; install them, or change the policy`);
    }
    await filterTransaction(fam, (state, p) => {
      if (state.chains.get('FORWARD') !== 'DROP') return;
      if (mode === 'refuse') throw refused(network, fam, 'iptablesForwardDrop is "refuse"; set it to "open" to add one rule per network there, or change the policy');
      for (const s of mine) p.insertUnique(openingRule(network, s));
      if (!opened.includes(fam)) opened.push(fam);
    });
  }
  return opened;
}

/**
 * DEL side, when the network's last container is gone: removes the
 * network's opening rules (found by their comment) in both families.
 * Nothing to do without the iptables tools (nobody could have added one).
 */
export async function closeIptablesForward(network: string): Promise<void> {
  const comment = openingComment(network);
  for (const fam of [4, 6] as const) {
    if (!haveTools(fam)) continue;
    await filterTransaction(fam, (state, p) => {
      for (const r of state.rules) {
        if (r.chain !== 'FORWARD') continue;
        const i = r.spec.indexOf('--comment');
        if (i >= 0 && r.spec[i + 1] === comment && r.spec.at(-1) === 'ACCEPT') p.delete(r);
      }
    });
  }
}
