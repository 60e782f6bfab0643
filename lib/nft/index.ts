import { z } from 'zod';
import { CniError, ErrorCode } from '../cni/errors.js';
import { run } from '../exec/index.js';

/**
 * nftables through the `nft` tool, as the reference plugins use it (go-nft
 * runs `nft` too): a script applied by one `nft -f -` (one transaction,
 * all or nothing) and a table read as JSON (`nft -j list table`).
 */
const listed = z.object({
  nftables: z.array(
    z.union([
      z.object({ chain: z.object({ name: z.string(), handle: z.number() }).passthrough() }),
      z.object({ rule: z.object({ chain: z.string(), handle: z.number(), comment: z.string().optional() }).passthrough() }),
      z.record(z.unknown()),
    ]),
  ),
});

export interface NftTable {
  chains: Map<string, number>;
  rules: { chain: string; handle: number; comment?: string; raw: Record<string, unknown> }[];
}

/** Names as the suite writes them into scripts: nothing nft would parse as syntax. */
export const NFT_NAME = /^[a-zA-Z0-9_.-]+$/;

export async function nftApply(script: string): Promise<void> {
  const r = await run('nft', ['-f', '-'], script);
  if (r.code === 127) throw new CniError(ErrorCode.NotAvailable, 'nft not found', 'install the nftables package');
  if (r.code !== 0) throw new CniError(ErrorCode.KernelRefused, 'nft failed', `${r.stderr.trim()}\ninput:\n${script}`);
}

/** The table's chains and rules (with handles), or undefined when the table does not exist. */
export async function nftListTable(family: string, table: string): Promise<NftTable | undefined> {
  const r = await run('nft', ['-j', 'list', 'table', family, table]);
  if (r.code === 127) throw new CniError(ErrorCode.NotAvailable, 'nft not found', 'install the nftables package');
  if (r.code !== 0) {
    if (/No such file or directory/.test(r.stderr)) return undefined;
    throw new CniError(ErrorCode.KernelRefused, `nft list table ${family} ${table} failed`, r.stderr.trim());
  }
  const parsed = listed.safeParse(JSON.parse(r.stdout));
  if (!parsed.success) throw new CniError(ErrorCode.KernelRefused, 'unexpected nft JSON', parsed.error.message);
  const out: NftTable = { chains: new Map(), rules: [] };
  for (const item of parsed.data.nftables) {
    if ('chain' in item && typeof item.chain === 'object' && item.chain && 'handle' in item.chain) {
      const c = item.chain as { name: string; handle: number };
      out.chains.set(c.name, c.handle);
    } else if ('rule' in item && typeof item.rule === 'object' && item.rule && 'handle' in item.rule) {
      const rl = item.rule as { chain: string; handle: number; comment?: string };
      out.rules.push({ chain: rl.chain, handle: rl.handle, comment: rl.comment, raw: item.rule as Record<string, unknown> });
    }
  }
  return out;
}
