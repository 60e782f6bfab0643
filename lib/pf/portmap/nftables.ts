import { CniError, ErrorCode } from '../../cni/errors.js';
import { run } from '../../exec/index.js';
import { canonicalIP } from '../../ip/index.js';
import { FP, trace } from '../../cni/trace.js';
import { nftApply, nftListTable, nftQuote } from '../../nft/index.js';
import { requireRules, type Expected } from '../check.js';
import type { PortForwarding, PortmapParams } from './index.js';
import {
  NFT_CONTAINER_CHAINS, NFT_HOSTIP_HOSTPORTS, NFT_HOSTPORTS, NFT_HOSTPORTS_ALL, NFT_OWNERS, NFT_TABLE,
  nftBaseLines, nftContainerRules, nftFamily, nftOwnerTag, parseNftOwnerTag, recordedId, recordedNetworkOfTag,
} from './rules.js';

/**
 * Port forwarding on nftables: the reference portmap's tables `ip
 * cni_hostport` and `ip6 cni_hostport` (layout in rules.ts). Every call is
 * one `nft -f -` transaction (all families in it), after one read of the
 * tables it changes: the reference's layout keeps a container's rules in
 * shared chains, identified by their comment only, so removing them needs
 * their handles. A transaction that fails because a rule it deletes went
 * away meanwhile (another call's GC) is planned again from a fresh read.
 */
type Family = 4 | 6;
interface Found {
  chain: string;
  handle: number;
  comment?: string;
  /** The rule's expressions as nft -j prints them (JSON text). */
  expr: string;
}

/** The rules of the table of one family (undefined: no table). */
async function readRules(family: Family): Promise<Found[] | undefined> {
  const t = await nftListTable(nftFamily(family), NFT_TABLE);
  return t?.rules.map((r) => ({ chain: r.chain, handle: r.handle, comment: r.comment, expr: JSON.stringify(r.expr ?? []) }));
}

const isContainerChain = (chain: string) => (NFT_CONTAINER_CHAINS as readonly string[]).includes(chain);

/**
 * `delete rule` lines for the rules of `containerId` and its owner record
 * on `network`. With `address` (ADD replacing its own rules) only the rules
 * naming that address: the same container id published by another network
 * (a container on two networks) dnats to its address there, and keeps its
 * rules. Without (DEL), every rule with the id, as the reference deletes.
 */
function deletions(family: Family, rules: Found[], containerId: string, network: string, address?: string): string[] {
  const owner = nftOwnerTag(network, containerId);
  const quoted = address === undefined ? undefined : JSON.stringify(canonicalIP(address.split('/')[0]));
  return rules
    .filter((r) => (isContainerChain(r.chain) && r.comment === containerId && (quoted === undefined || r.expr.includes(quoted))) || (r.chain === NFT_OWNERS && r.comment === owner))
    .map((r) => `delete rule ${nftFamily(family)} ${NFT_TABLE} ${r.chain} handle ${r.handle}`);
}

/** Reads, plans, applies; planned again (twice at most) if the transaction fails. */
async function transact(families: Family[], plan: (rules: Map<Family, Found[] | undefined>) => string[]): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    const rules = new Map<Family, Found[] | undefined>();
    for (const f of families) rules.set(f, await readRules(f));
    const lines = plan(rules);
    if (lines.length === 0) return;
    try {
      await nftApply(`${lines.join('\n')}\n`);
      trace(FP.portmap.familyDone);
      return;
    } catch (err) {
      if (attempt >= 2) throw err;
    }
  }
}

/** `nft list table` as text, chain → its rule lines as nft prints them (handles and counters left out). */
async function listText(family: Family): Promise<Map<string, string[]> | undefined> {
  const r = await run('nft', ['list', 'table', nftFamily(family), NFT_TABLE]);
  if (r.code !== 0) {
    if (/No such file or directory/.test(r.stderr)) return undefined;
    throw new CniError(ErrorCode.KernelRefused, `nft list table ${nftFamily(family)} ${NFT_TABLE} failed`, r.stderr.trim());
  }
  const chains = new Map<string, string[]>();
  let cur: string[] | undefined;
  for (const raw of r.stdout.split('\n')) {
    const line = raw.trim();
    const m = /^chain (\S+) \{$/.exec(line);
    if (m) chains.set(m[1], (cur = []));
    else if (line === '}') cur = undefined;
    else if (cur && line && !/^type \S+ hook /.test(line)) cur.push(line);
  }
  return chains;
}

const conditionsOf = (c: PortmapParams, f: Family) => (f === 4 ? c.conditionsV4 : c.conditionsV6);

export const nftablesPortForwarding: PortForwarding = {
  backend: 'nftables',

  async forward(c) {
    const families = [...c.addresses.keys()];
    await transact(families, (read) => {
      const lines: string[] = [];
      for (const f of families) {
        const t = `${nftFamily(f)} ${NFT_TABLE}`;
        lines.push(...nftBaseLines(f, conditionsOf(c, f), c.snat));
        // A re-ADD (or one over a half-done ADD) replaces the container's rules.
        lines.push(...deletions(f, read.get(f) ?? [], c.containerId, c.network, c.addresses.get(f)!));
        const rules = nftContainerRules({ network: c.network, containerId: c.containerId, family: f, container: c.addresses.get(f)!, mappings: c.mappings, snat: c.snat, masqAll: c.masqAll });
        for (const r of rules) lines.push(`add rule ${t} ${r.chain} ${r.rule} comment ${nftQuote(c.containerId)}`);
        lines.push(`add rule ${t} ${NFT_OWNERS} return comment ${nftQuote(nftOwnerTag(c.network, c.containerId))}`);
      }
      return lines;
    });
  },

  /** Both families, whatever the container had: the rules whose comment is its id (the reference's DEL does the same). */
  async unforward(network, containerId) {
    await transact([4, 6], (read) => [...read].flatMap(([f, rules]) => deletions(f, rules ?? [], containerId, network)));
  },

  async check(c) {
    for (const [f, container] of c.addresses) {
      const fam = nftFamily(f);
      const chains = await listText(f);
      const have = new Set<string>();
      for (const [chain, lines] of chains ?? []) for (const l of lines) have.add(`${chain} ${l}`);
      // The table's structure: entry rules (their conditions in nft's own normal form, so only their jump is compared) and hostports_all.
      for (const hook of ['prerouting', 'output']) {
        if ((chains?.get(hook) ?? []).some((l) => l.endsWith(`fib daddr type local jump ${NFT_HOSTPORTS_ALL}`))) have.add(`${hook} entry`);
      }
      const show = (chain: string, rule: string) => `${rule} in ${fam} ${NFT_TABLE} ${chain} (nft list chain ${fam} ${NFT_TABLE} ${chain})`;
      const want: Expected[] = [
        ...['prerouting', 'output'].map((h) => ({ key: `${h} entry`, show: show(h, `fib daddr type local jump ${NFT_HOSTPORTS_ALL}`) })),
        ...[NFT_HOSTIP_HOSTPORTS, NFT_HOSTPORTS].map((j) => ({ key: `${NFT_HOSTPORTS_ALL} jump ${j}`, show: show(NFT_HOSTPORTS_ALL, `jump ${j}`) })),
        ...nftContainerRules({ network: c.network, containerId: c.containerId, family: f, container, mappings: c.mappings, snat: c.snat, masqAll: c.masqAll }).map((r) => {
          const rule = `${r.rule} comment ${nftQuote(c.containerId)}`;
          return { key: `${r.chain} ${rule}`, show: show(r.chain, rule) };
        }),
      ];
      requireRules(have, want, `portmap (nftables, IPv${f})`);
    }
  },

  /** Containers of this network (owner records) not kept: their rules and records go; other networks' never. */
  async gc(network, keep) {
    const net = recordedNetworkOfTag(network);
    const keptIds = new Set([...keep].map(recordedId));
    await transact([4, 6], (read) => {
      const lines: string[] = [];
      for (const [f, rules] of read) {
        if (!rules) continue;
        const stale = new Set<string>();
        const otherNetworks = new Set<string>();
        for (const r of rules) {
          if (r.chain !== NFT_OWNERS) continue;
          const o = parseNftOwnerTag(r.comment);
          if (!o) continue;
          if (o.network === net && !keptIds.has(o.id)) stale.add(o.id);
          else otherNetworks.add(o.id);
        }
        for (const r of rules) {
          const mine = r.chain === NFT_OWNERS ? parseNftOwnerTag(r.comment)?.network === net && stale.has(parseNftOwnerTag(r.comment)!.id)
            // A container id also published by another network (or kept) keeps its rules: they cannot be told apart.
            : isContainerChain(r.chain) && r.comment !== undefined && stale.has(recordedId(r.comment)) && !otherNetworks.has(recordedId(r.comment));
          if (mine) lines.push(`delete rule ${nftFamily(f)} ${NFT_TABLE} ${r.chain} handle ${r.handle}`);
        }
      }
      return lines;
    });
  },
};

