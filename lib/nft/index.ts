import { z } from 'zod';
import { CniError, ErrorCode } from '../cni/errors.js';
import { run } from '../exec/index.js';

/**
 * nftables through the `nft` tool, as the reference plugins use it (go-nft
 * and knftables run `nft` too): a script applied by one `nft -f -` (one
 * transaction, all or nothing) and state read as JSON (`nft -j list …`).
 */
const listing = z.object({ nftables: z.array(z.unknown()) });
const chainItem = z.object({
  chain: z.object({ name: z.string(), handle: z.number(), hook: z.string().optional(), policy: z.string().optional(), prio: z.number().optional(), type: z.string().optional() }).passthrough(),
});
const ruleItem = z.object({ rule: z.object({ chain: z.string(), handle: z.number(), comment: z.string().optional(), expr: z.array(z.unknown()).optional() }).passthrough() });
const setItem = z.object({ set: z.object({ name: z.string(), handle: z.number(), elem: z.array(z.unknown()).optional() }).passthrough() });
const mapItem = z.object({ map: z.object({ name: z.string(), handle: z.number(), elem: z.array(z.unknown()).optional() }).passthrough() });
const counterItem = z.object({ counter: z.object({ name: z.string(), handle: z.number(), packets: z.number(), bytes: z.number(), comment: z.string().optional() }).passthrough() });

export type NftFamily = 'ip' | 'ip6' | 'inet' | 'bridge' | 'arp' | 'netdev';
export type NftRule = z.infer<typeof ruleItem>['rule'] & { raw: Record<string, unknown> };
export type NftChain = z.infer<typeof chainItem>['chain'];

export interface NftTable {
  /** Chain name → handle. */
  chains: Map<string, number>;
  /** Chain name → its description (hook, policy, priority for base chains). */
  chainInfo: Map<string, NftChain>;
  rules: NftRule[];
  /** Set and map name → elements as nft -j prints them. */
  sets: Map<string, unknown[]>;
  /** Named counters: name → packets, bytes. */
  counters: Map<string, { packets: number; bytes: number; comment?: string }>;
}

/** Names as the suite writes them into scripts: nothing nft would parse as syntax. */
export const NFT_NAME = /^[a-zA-Z0-9_.-]+$/;

async function nft(args: string[], input?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const r = await run('nft', args, input);
  if (r.code === 127) throw new CniError(ErrorCode.NotAvailable, 'nft not found', 'install the nftables package');
  return r;
}

export async function nftApply(script: string): Promise<void> {
  const r = await nft(['-f', '-'], script);
  if (r.code !== 0) throw new CniError(ErrorCode.KernelRefused, 'nft failed', `${r.stderr.trim()}\ninput:\n${script}`);
}

/** Applies a script; false (and nothing changed) when nft refused it, for callers with a fallback. */
export async function nftTryApply(script: string): Promise<boolean> {
  const r = await nft(['-f', '-'], script);
  return r.code === 0;
}

function parseListing(stdout: string): NftTable {
  const parsed = listing.safeParse(JSON.parse(stdout));
  if (!parsed.success) throw new CniError(ErrorCode.KernelRefused, 'unexpected nft JSON', parsed.error.message);
  const out: NftTable = { chains: new Map(), chainInfo: new Map(), rules: [], sets: new Map(), counters: new Map() };
  for (const item of parsed.data.nftables) {
    if (typeof item !== 'object' || item === null) continue;
    if ('chain' in item) {
      const c = chainItem.safeParse(item);
      if (c.success) {
        out.chains.set(c.data.chain.name, c.data.chain.handle);
        out.chainInfo.set(c.data.chain.name, c.data.chain);
      }
    } else if ('rule' in item) {
      const rl = ruleItem.safeParse(item);
      if (rl.success) out.rules.push({ ...rl.data.rule, raw: rl.data.rule });
    } else if ('set' in item) {
      const s = setItem.safeParse(item);
      if (s.success) out.sets.set(s.data.set.name, s.data.set.elem ?? []);
    } else if ('map' in item) {
      const s = mapItem.safeParse(item);
      if (s.success) out.sets.set(s.data.map.name, s.data.map.elem ?? []);
    } else if ('counter' in item) {
      const c = counterItem.safeParse(item);
      if (c.success) out.counters.set(c.data.counter.name, { packets: c.data.counter.packets, bytes: c.data.counter.bytes, comment: c.data.counter.comment });
    }
  }
  return out;
}

/** The table's chains, rules (with handles), sets and counters, or undefined when the table does not exist. */
export async function nftListTable(family: NftFamily | string, table: string): Promise<NftTable | undefined> {
  const r = await nft(['-j', 'list', 'table', family, table]);
  if (r.code !== 0) {
    if (/No such file or directory/.test(r.stderr)) return undefined;
    throw new CniError(ErrorCode.KernelRefused, `nft list table ${family} ${table} failed`, r.stderr.trim());
  }
  return parseListing(r.stdout);
}

/** One chain's description and rules, or undefined when the table or chain does not exist. */
export async function nftListChain(family: NftFamily | string, table: string, chain: string): Promise<NftTable | undefined> {
  const r = await nft(['-j', 'list', 'chain', family, table, chain]);
  if (r.code !== 0) {
    if (/No such file or directory/.test(r.stderr)) return undefined;
    throw new CniError(ErrorCode.KernelRefused, `nft list chain ${family} ${table} ${chain} failed`, r.stderr.trim());
  }
  return parseListing(r.stdout);
}

/** A string as an nft script literal (comments, interface names): quoted, no quote or newline inside. */
export function nftQuote(s: string): string {
  return `"${s.replace(/["\\\n\r]/g, '')}"`;
}

/** nft keeps at most 128 bytes of a rule's comment (NFT_USERDATA_MAXLEN is 256, knftables caps at 128). */
export const NFT_COMMENT_MAX = 128;

/** `delete rule` lines for rules found by a listing. */
export function deleteRuleLines(family: string, table: string, rules: Pick<NftRule, 'chain' | 'handle'>[]): string[] {
  return rules.map((r) => `delete rule ${family} ${table} ${r.chain} handle ${r.handle}`);
}

/** CHECK keys of a listing (lib/pf/check.ts): chain + comment of every commented rule. */
export function nftCommentKeys(t: NftTable | undefined): Set<string> {
  return new Set((t?.rules ?? []).filter((r) => r.comment !== undefined).map((r) => `${r.chain} ${r.comment}`));
}
export const nftExpected = (family: string, table: string, chain: string, comment: string) => ({
  key: `${chain} ${comment}`,
  show: `a rule with comment ${JSON.stringify(comment)} in ${family} ${table} ${chain} (nft list chain ${family} ${table} ${chain})`,
});
