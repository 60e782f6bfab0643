import { z } from 'zod';
import { CniError, ErrorCode } from '../cni/errors.js';
import { run } from '../exec/index.js';

/**
 * nftables through the `nft` tool, as the reference plugins use it (go-nft
 * runs `nft` too): a script applied by one `nft -f -` (one transaction,
 * all or nothing) and a table read as JSON (`nft -j list table`).
 */
const listing = z.object({ nftables: z.array(z.unknown()) });
const chainItem = z.object({ chain: z.object({ name: z.string(), handle: z.number() }) });
const ruleItem = z.object({ rule: z.object({ chain: z.string(), handle: z.number(), comment: z.string().optional() }).passthrough() });

export interface NftTable {
  chains: Map<string, number>;
  rules: (z.infer<typeof ruleItem>['rule'] & { raw: Record<string, unknown> })[];
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

/** The table's chains and rules (with handles), or undefined when the table does not exist. */
export async function nftListTable(family: string, table: string): Promise<NftTable | undefined> {
  const r = await nft(['-j', 'list', 'table', family, table]);
  if (r.code !== 0) {
    if (/No such file or directory/.test(r.stderr)) return undefined;
    throw new CniError(ErrorCode.KernelRefused, `nft list table ${family} ${table} failed`, r.stderr.trim());
  }
  const parsed = listing.safeParse(JSON.parse(r.stdout));
  if (!parsed.success) throw new CniError(ErrorCode.KernelRefused, 'unexpected nft JSON', parsed.error.message);
  const out: NftTable = { chains: new Map(), rules: [] };
  for (const item of parsed.data.nftables) {
    const c = chainItem.safeParse(item);
    if (c.success) out.chains.set(c.data.chain.name, c.data.chain.handle);
    const rl = ruleItem.safeParse(item);
    if (rl.success) out.rules.push({ ...rl.data.rule, raw: rl.data.rule });
  }
  return out;
}
