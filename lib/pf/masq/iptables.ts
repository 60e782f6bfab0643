import { chainName } from '../../iptables/names.js';
import { apply, Batch, expectedRule, PendingRestore, ruleKeys, save, transaction, type IpFamily, type Rule } from '../../iptables/index.js';
import { canonicalNetwork, parseCidr } from '../../ip/index.js';
import { requireRules, type Expected } from '../check.js';
import { which } from '../../exec/index.js';
import type { Masquerade, MasqKnown, MasqOwner, MasqPrepared } from './index.js';

/**
 * Per-container source NAT (bridge's ipMasq), named and commented like the
 * reference: chain `CNI-<24 hex of sha512(network + containerID)>` in the
 * nat table, jumped to from POSTROUTING for the container's addresses.
 * Teardown finds the jumps by chain name in one iptables-save, so it needs
 * neither the namespace nor the address (the reference leaks the chain then).
 */
export { chainName };

export function comment(network: string, containerId: string): string {
  return `name: ${JSON.stringify(network)} id: ${JSON.stringify(containerId)}`;
}

const MULTICAST: Record<IpFamily, string> = { 4: '224.0.0.0/4', 6: 'ff00::/8' };

/** The rules for one address, in iptables-save's normal form. */
export function masqRules(network: string, containerId: string, cidr: string): { chain: string; chainRules: Rule[]; jump: Rule } {
  const chain = chainName(network, containerId);
  const c = parseCidr(cidr);
  const fam = c.family as IpFamily;
  const host = `${cidr.split('/')[0]}/${fam === 4 ? 32 : 128}`;
  const cm = ['-m', 'comment', '--comment', comment(network, containerId)];
  return {
    chain,
    chainRules: [
      { chain, spec: ['-d', canonicalNetwork(cidr), ...cm, '-j', 'ACCEPT'] },
      { chain, spec: ['!', '-d', MULTICAST[fam], ...cm, '-j', 'MASQUERADE'] },
    ],
    jump: { chain: 'POSTROUTING', spec: ['-s', host, ...cm, '-j', chain] },
  };
}

const key = (r: Rule) => `${r.chain}\0${r.spec.join('\0')}`;

/**
 * One iptables-restore per family, no read first: the chain is declared
 * (created, or emptied if a crashed ADD left it) and refilled, and the jump
 * appended. A duplicate jump can only come from a re-ADD after the
 * interface was removed by hand; teardown removes every jump to the chain.
 */
export async function setupMasq(network: string, containerId: string, cidrs: string[], pending?: PendingRestore): Promise<void> {
  for (const fam of [4, 6] as const) {
    const mine = cidrs.filter((c) => parseCidr(c).family === fam);
    if (mine.length === 0) continue;
    const batch = new Batch('nat');
    batch.declareChain(chainName(network, containerId));
    const seen = new Set<string>();
    for (const cidr of mine) {
      const { chainRules, jump } = masqRules(network, containerId, cidr);
      for (const r of [...chainRules, jump]) {
        if (seen.has(key(r))) continue;
        seen.add(key(r));
        batch.append(r);
      }
    }
    await apply(fam, [batch], pending);
  }
}

/**
 * Removes the chain and every jump to it. With the container's addresses
 * known (prevResult, or read off its interface) the exact rules are deleted
 * in one iptables-restore; when that fails (rules already gone, addresses
 * unknown, duplicates) one iptables-save finds whatever is there.
 */
export async function teardownMasq(network: string, containerId: string, families: IpFamily[], knownCidrs: string[] = []): Promise<void> {
  const chain = chainName(network, containerId);
  for (const fam of families) {
    const mine = knownCidrs.filter((c) => parseCidr(c).family === fam);
    if (mine.length) {
      const batch = new Batch('nat');
      for (const cidr of mine) batch.delete(masqRules(network, containerId, cidr).jump);
      batch.flushChain(chain).deleteChain(chain);
      try {
        await apply(fam, [batch]);
        continue;
      } catch {
        // fall back to reading what is really there
      }
    }
    const state = await save(fam, 'nat');
    const batch = new Batch('nat');
    for (const r of state.rules) if (r.spec.at(-1) === chain && r.spec.at(-2) === '-j') batch.delete(r);
    if (state.chains.has(chain)) batch.flushChain(chain).deleteChain(chain);
    await apply(fam, [batch]);
  }
}

/** CHECK: the chain's rules and the jump of every address; fails on the first missing one (lib/pf/check.ts). */
export async function checkMasq(network: string, containerId: string, cidrs: string[]): Promise<void> {
  for (const fam of [4, 6] as const) {
    const mine = cidrs.filter((c) => parseCidr(c).family === fam);
    if (mine.length === 0) continue;
    const have = ruleKeys(await save(fam, 'nat'));
    const want: Expected[] = [];
    for (const cidr of mine) {
      const { chainRules, jump } = masqRules(network, containerId, cidr);
      want.push(...[...chainRules, jump].map(expectedRule));
    }
    requireRules(have, want, 'bridge ipMasq (iptables)');
  }
}

/**
 * Removes masquerade chains of this network whose container is not in
 * `validIds`. The owner record is the comment (`name: "<net>" id: "<id>"`,
 * the reference's too): only rules naming this network are read. The chain
 * name hashes network + id run together, so ("a", "bc") and ("ab", "c")
 * share one: a chain holding a rule of another owner keeps it, only this
 * network's stale jumps go. Locked and planned like every other change.
 */
export async function gcMasq(network: string, validIds: Set<string>, families: IpFamily[]): Promise<void> {
  const re = new RegExp(`^name: ${escapeRe(JSON.stringify(network))} id: "(.*)"$`);
  const commentOf = (r: Rule) => {
    const i = r.spec.indexOf('--comment');
    return i >= 0 ? r.spec[i + 1] : undefined;
  };
  for (const fam of families) {
    await transaction(fam, 'nat', (p) => {
      // Stale chains, found by any rule of theirs (the jump, or the chain's own rules should a crash have left no jump).
      const stale = new Map<string, string>(); // chain → its stale owner's comment
      for (const chain of p.chainNames()) {
        if (!/^CNI-[0-9a-f]{24}$/.test(chain)) continue;
        for (const r of [...p.rulesOf(chain), ...p.jumpsTo(chain)]) {
          const m = re.exec(commentOf(r) ?? '');
          if (m && !validIds.has(m[1]) && chainName(network, m[1]) === chain) stale.set(chain, commentOf(r)!);
        }
      }
      for (const [chain, owner] of stale) {
        for (const j of p.jumpsTo(chain)) if (commentOf(j) === owner) p.delete(j);
        const foreign = p.rulesOf(chain).some((r) => commentOf(r) !== owner) || p.jumpsTo(chain).length > 0;
        if (!foreign) p.removeChain(chain);
      }
    });
  }
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** The families of a teardown or GC that have tools here (a host without ip6tables has no IPv6 rules of ours). */
const withTools = (families: IpFamily[]) => families.filter((f) => f === 4 || which('ip6tables-save') !== undefined);

/** The iptables implementation of lib/pf/masq: the functions above, the ifname unused (the reference's iptables layout has none). */
export class IptablesMasquerade implements Masquerade {
  readonly backend = 'iptables' as const;
  prepare(): MasqPrepared & { restore: PendingRestore } {
    const restore = new PendingRestore(4);
    return { restore, release: () => restore.discard() };
  }
  add(owner: MasqOwner, cidrs: string[], prepared?: MasqPrepared): Promise<void> {
    return setupMasq(owner.network, owner.containerId, cidrs, (prepared as { restore?: PendingRestore } | undefined)?.restore);
  }
  del(owner: MasqOwner, known: MasqKnown): Promise<void> {
    return teardownMasq(owner.network, owner.containerId, withTools(known.families), known.cidrs);
  }
  check(owner: MasqOwner, cidrs: string[]): Promise<void> {
    return checkMasq(owner.network, owner.containerId, cidrs);
  }
  gc(network: string, valid: { containerID: string; ifname: string }[], families: (4 | 6)[]): Promise<void> {
    return gcMasq(network, new Set(valid.map((a) => a.containerID)), withTools(families));
  }
}
