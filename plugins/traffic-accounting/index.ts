import { z } from 'zod';
import { definePlugin, type PluginContext } from '../../lib/cni/skel.js';
import { CniError, ErrorCode } from '../../lib/cni/errors.js';
import { netConf } from '../../lib/cni/schema.js';
import { sameRule, save, transaction, type Rule, type TablePlan } from '../../lib/iptables/index.js';
import { rule } from '../../lib/iptables/rule.js';
import { stdHashHex } from '../../lib/iptables/stdhash.js';
import { isCidr } from '../../lib/ip/index.js';
import { ownerTag, staleOwned, validKeys, type Owner } from '../../lib/cni/owner.js';

/**
 * traffic-accounting: the Aos service manager's per-instance accounting
 * chains, so any runtime gets them and an Aos traffic monitor finds ours:
 *   FORWARD (position 1)  -j AOS_<h>_IN, -j AOS_<h>_OUT
 *   AOS_<h>_IN            -s <local range> -j RETURN …, then -d <ip> (no target: its bytes are the download)
 *   AOS_<h>_OUT           -d <local range> -j RETURN …, then -s <ip> (the upload)
 * with <h> the hex of libstdc++'s std::hash of the instance id. The jumps
 * carry the attachment's owner record (`-m comment`), which GC reads: chains
 * are named after the instance, not the network, so the record is the only
 * way to tell this network's from another's. The chains' own rules stay
 * exactly the Aos layout (the monitor matches the counting rule as is).
 */
export const AOS_LOCAL_RANGES = ['127.0.0.0/8', '10.0.0.0/8', '192.168.0.0/16', '172.16.0.0/12'];

const config = netConf({
  instanceId: z.string().min(1).optional(),
  skipRanges: z.array(z.string().refine(isCidr, 'must be a CIDR')).optional(),
});
type Config = z.output<typeof config>;
type Ctx = PluginContext<Config>;

export function chainsFor(instanceId: string): { in: string; out: string } {
  const h = stdHashHex(instanceId);
  return { in: `AOS_${h}_IN`, out: `AOS_${h}_OUT` };
}

export const OWNER = 'traffic-accounting';

/** The jumps from FORWARD: with the owner record, or without (as binaries up to fb6743a wrote them). */
export function jumpRules(instanceId: string, owner?: Owner): Rule[] {
  const c = chainsFor(instanceId);
  const cm = owner ? ['-m', 'comment', '--comment', ownerTag(OWNER, owner)] : [];
  return [c.in, c.out].map((chain) => ({ chain: 'FORWARD', spec: [...cm, '-j', chain] }));
}

export function accountingRules(instanceId: string, ips: string[], skip: string[], owner?: Owner): { jumps: Rule[]; rules: Rule[] } {
  const c = chainsFor(instanceId);
  const rules: Rule[] = [];
  for (const r of skip) rules.push(rule(c.in, { src: r, jump: 'RETURN' }));
  for (const ip of ips) rules.push({ chain: c.in, spec: ['-d', `${ip}/32`] });
  for (const r of skip) rules.push(rule(c.out, { dst: r, jump: 'RETURN' }));
  for (const ip of ips) rules.push({ chain: c.out, spec: ['-s', `${ip}/32`] });
  return { jumps: jumpRules(instanceId, owner), rules };
}

const instanceOf = (ctx: Ctx) => ctx.config.instanceId ?? ctx.env.containerId;
const ownerOf = (ctx: Ctx): Owner => ({ network: ctx.config.name, containerID: ctx.env.containerId, ifname: ctx.env.ifname });
const commentOf = (r: Rule) => {
  const i = r.spec.indexOf('--comment');
  return i >= 0 ? r.spec[i + 1] : undefined;
};
const v4 = (ctx: Ctx) => (ctx.prevResult?.ips ?? []).map((ip) => ip.address.split('/')[0]).filter((ip) => !ip.includes(':'));

function planRemove(p: TablePlan, instanceId: string): void {
  const c = chainsFor(instanceId);
  p.removeChain(c.in).removeChain(c.out);
}

export default definePlugin({
  name: 'traffic-accounting',
  schema: config,

  async add(ctx) {
    const prev = ctx.prevResult;
    if (!prev) throw new CniError(ErrorCode.InvalidNetworkConfig, 'traffic-accounting must be chained: missing prevResult');
    const ips = v4(ctx);
    if (ips.length === 0) throw new CniError(ErrorCode.InvalidNetworkConfig, 'prevResult has no IPv4 address to account');
    const { jumps, rules } = accountingRules(instanceOf(ctx), ips, ctx.config.skipRanges ?? AOS_LOCAL_RANGES, ownerOf(ctx));
    const c = chainsFor(instanceOf(ctx));
    await transaction(4, 'filter', (p) => {
      p.ensureChain(c.in).ensureChain(c.out);
      p.flushChain(c.in).flushChain(c.out); // a re-ADD starts the counters afresh, like the Aos monitor
      // Any other jump to these chains (an older binary's, without record) would count every packet twice: ours replaces it.
      for (const j of [...p.jumpsTo(c.in), ...p.jumpsTo(c.out)]) if (!jumps.some((x) => sameRule(x, j))) p.delete(j);
      for (const r of rules) p.appendUnique(r);
      for (const j of [...jumps].reverse()) p.insertUnique(j);
    });
    return prev;
  },

  /** From the instance id alone: no prevResult needed. */
  async del(ctx) {
    await transaction(4, 'filter', (p) => planRemove(p, instanceOf(ctx)));
  },

  async check(ctx) {
    const { jumps, rules } = accountingRules(instanceOf(ctx), v4(ctx), ctx.config.skipRanges ?? AOS_LOCAL_RANGES, ownerOf(ctx));
    const legacy = jumpRules(instanceOf(ctx));
    const state = await save(4, 'filter');
    const line = (r: Rule) => `${r.chain} ${r.spec.join(' ')}`;
    const have = new Set(state.rules.map(line));
    // An attachment an older binary made has its jumps without the record: still intact.
    jumps.forEach((j, i) => {
      if (!have.has(line(j)) && !have.has(line(legacy[i]))) throw new CniError(ErrorCode.CheckFailed, 'accounting rule missing', `-A ${line(j)}`);
    });
    for (const r of rules) {
      if (!have.has(line(r))) throw new CniError(ErrorCode.CheckFailed, 'accounting rule missing', `-A ${line(r)}`);
    }
  },

  /**
   * Removes the chains whose jumps all carry this network's record of an
   * attachment not in valid-attachments (matched by container id and
   * interface, whatever the instance id). A chain with a jump of another
   * network or without a record (older binaries', the Aos manager's own)
   * is not GC's: only this network's stale jumps to it go.
   */
  async gc(ctx) {
    const valid = validKeys(ctx.validAttachments);
    await transaction(4, 'filter', (p) => {
      for (const chain of p.chainNames()) {
        if (!/^AOS_[0-9a-f]{1,16}_(IN|OUT)$/.test(chain)) continue;
        const jumps = p.jumpsTo(chain);
        const stale = jumps.filter((j) => j.chain === 'FORWARD' && staleOwned(OWNER, commentOf(j), ctx.config.name, valid));
        if (stale.length === 0) continue;
        if (stale.length === jumps.length) p.removeChain(chain);
        else for (const j of stale) p.delete(j);
      }
    });
  },
});
