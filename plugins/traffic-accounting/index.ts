import { z } from 'zod';
import { definePlugin, type PluginContext } from '../../lib/cni/skel.js';
import { CniError, ErrorCode } from '../../lib/cni/errors.js';
import { netConf } from '../../lib/cni/schema.js';
import { save, transaction, type Rule, type TablePlan } from '../../lib/iptables/index.js';
import { rule } from '../../lib/iptables/rule.js';
import { stdHashHex } from '../../lib/iptables/stdhash.js';
import { isCidr } from '../../lib/ip/index.js';

/**
 * traffic-accounting: the Aos service manager's per-instance accounting
 * chains, so any runtime gets them and an Aos traffic monitor finds ours:
 *   FORWARD (position 1)  -j AOS_<h>_IN, -j AOS_<h>_OUT
 *   AOS_<h>_IN            -s <local range> -j RETURN …, then -d <ip> (no target: its bytes are the download)
 *   AOS_<h>_OUT           -d <local range> -j RETURN …, then -s <ip> (the upload)
 * with <h> the hex of libstdc++'s std::hash of the instance id.
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

export function accountingRules(instanceId: string, ips: string[], skip: string[]): { jumps: Rule[]; rules: Rule[] } {
  const c = chainsFor(instanceId);
  const rules: Rule[] = [];
  for (const r of skip) rules.push(rule(c.in, { src: r, jump: 'RETURN' }));
  for (const ip of ips) rules.push({ chain: c.in, spec: ['-d', `${ip}/32`] });
  for (const r of skip) rules.push(rule(c.out, { dst: r, jump: 'RETURN' }));
  for (const ip of ips) rules.push({ chain: c.out, spec: ['-s', `${ip}/32`] });
  return { jumps: [rule('FORWARD', { jump: c.in }), rule('FORWARD', { jump: c.out })], rules };
}

const instanceOf = (ctx: Ctx) => ctx.config.instanceId ?? ctx.env.containerId;
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
    const { jumps, rules } = accountingRules(instanceOf(ctx), ips, ctx.config.skipRanges ?? AOS_LOCAL_RANGES);
    const c = chainsFor(instanceOf(ctx));
    await transaction(4, 'filter', (p) => {
      p.ensureChain(c.in).ensureChain(c.out);
      p.flushChain(c.in).flushChain(c.out); // a re-ADD starts the counters afresh, like the Aos monitor
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
    const { jumps, rules } = accountingRules(instanceOf(ctx), v4(ctx), ctx.config.skipRanges ?? AOS_LOCAL_RANGES);
    const state = await save(4, 'filter');
    const have = new Set(state.rules.map((r) => `${r.chain} ${r.spec.join(' ')}`));
    for (const r of [...jumps, ...rules]) {
      const line = `${r.chain} ${r.spec.join(' ')}`;
      if (!have.has(line)) throw new CniError(ErrorCode.CheckFailed, 'accounting rule missing', `-A ${line}`);
    }
  },

  async gc(ctx) {
    const keep = new Set(ctx.validAttachments.map((a) => stdHashHex(a.containerID)));
    if (ctx.config.instanceId) keep.add(stdHashHex(ctx.config.instanceId));
    await transaction(4, 'filter', (p) => {
      for (const chain of [...p.chainNames()]) {
        const m = /^AOS_([0-9a-f]{1,16})_(IN|OUT)$/.exec(chain);
        if (m && !keep.has(m[1])) p.removeChain(chain);
      }
    });
  },
});
