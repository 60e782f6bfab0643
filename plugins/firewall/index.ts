import { definePlugin, type PluginContext } from '../../lib/cni/skel.js';
import { CniError, ErrorCode } from '../../lib/cni/errors.js';
import { apply, Batch, save, transaction, type IpFamily } from '../../lib/iptables/index.js';
import { which } from '../../lib/exec/index.js';
import { firewallConfig, type FirewallConfig } from './config.js';
import { addressRules, adminJump, DEFAULT_ADMIN_CHAIN, expectedIsolation, forwardJump, planBase, planIsolation, PRIV_CHAIN } from './rules.js';

/**
 * firewall: the reference plugin's iptables backend. It lets the
 * container's addresses through FORWARD (CNI-FORWARD, with the CNI-ADMIN
 * chain first for operators' overrides) and optionally isolates bridges
 * from each other. One iptables-save and one iptables-restore per family.
 */
type Ctx = PluginContext<FirewallConfig>;

const adminOf = (c: FirewallConfig) => c.iptablesAdminChainName || DEFAULT_ADMIN_CHAIN;
const familyOf = (cidr: string): IpFamily => (cidr.includes(':') ? 6 : 4);
const ipOf = (cidr: string) => cidr.split('/')[0];

function requireIptables(ctx: Ctx): void {
  if (ctx.config.backend === 'firewalld') {
    throw new CniError(ErrorCode.UnsupportedField, 'backend "firewalld" is not supported by this firewall plugin', 'use "backend": "iptables" (the default here)');
  }
}

function prevOrFail(ctx: Ctx) {
  if (!ctx.prevResult) throw new CniError(ErrorCode.InvalidNetworkConfig, 'missing prevResult from earlier plugin');
  return ctx.prevResult;
}

function policyOf(ctx: Ctx): 'same-bridge' | 'isolated' | undefined {
  const p = ctx.config.ingressPolicy;
  return p === 'same-bridge' || p === 'isolated' ? p : undefined;
}

function bridgeOf(ctx: Ctx): string {
  const name = ctx.prevResult?.interfaces[0]?.name;
  if (!name) {
    throw new CniError(ErrorCode.InvalidNetworkConfig, `ingressPolicy "${ctx.config.ingressPolicy}" needs the bridge as the first interface of prevResult`, 'chain the firewall plugin after bridge');
  }
  return name;
}

export default definePlugin({
  name: 'firewall',
  schema: firewallConfig,

  async add(ctx) {
    requireIptables(ctx);
    const prev = prevOrFail(ctx);
    const policy = policyOf(ctx);
    const bridge = policy ? bridgeOf(ctx) : '';
    for (const fam of [4, 6] as const) {
      const ips = prev.ips.filter((ip) => familyOf(ip.address) === fam);
      if (ips.length === 0) continue;
      await transaction(fam, 'filter', (p) => {
        planBase(p, adminOf(ctx.config));
        for (const ip of ips) for (const r of addressRules(ipOf(ip.address))) p.appendUnique(r);
        if (policy) planIsolation(p, bridge, policy);
      });
    }
    return prev;
  },

  async del(ctx) {
    requireIptables(ctx);
    // Without prevResult there is nothing to know the rules by (as the reference).
    for (const fam of [4, 6] as const) {
      const ips = (ctx.prevResult?.ips ?? []).filter((ip) => familyOf(ip.address) === fam);
      if (ips.length === 0) continue;
      const rules = ips.flatMap((ip) => addressRules(ipOf(ip.address)));
      // Fast path, one exec: delete exactly these rules. If one is missing
      // the whole restore fails and changes nothing; then read and re-plan.
      try {
        const batch = new Batch('filter');
        for (const r of rules) batch.delete(r);
        await apply(fam, [batch]);
        continue;
      } catch {
        // fall through
      }
      await transaction(fam, 'filter', (p) => {
        for (const r of rules) p.delete(r);
      });
    }
  },

  async check(ctx) {
    requireIptables(ctx);
    const prev = prevOrFail(ctx);
    const policy = policyOf(ctx);
    for (const fam of [4, 6] as const) {
      const ips = prev.ips.filter((ip) => familyOf(ip.address) === fam);
      if (ips.length === 0) continue;
      const state = await save(fam, 'filter');
      const have = new Set(state.rules.map((r) => `${r.chain} ${r.spec.join(' ')}`));
      for (const chain of [PRIV_CHAIN, adminOf(ctx.config)]) {
        if (!state.chains.has(chain)) throw new CniError(ErrorCode.CheckFailed, `chain ${chain} not found`);
      }
      const want = [forwardJump(), adminJump(adminOf(ctx.config)), ...ips.flatMap((ip) => addressRules(ipOf(ip.address)))];
      if (policy) want.push(...expectedIsolation(bridgeOf(ctx), policy));
      for (const r of want) {
        const line = `${r.chain} ${r.spec.join(' ')}`;
        if (!have.has(line)) throw new CniError(ErrorCode.CheckFailed, 'expected iptables rule not found', `-A ${line}`);
      }
    }
  },

  async status(ctx) {
    requireIptables(ctx);
    if (!which('iptables-restore') || !which('iptables-save')) throw new CniError(ErrorCode.NotAvailable, 'iptables-restore / iptables-save not found');
  },
});
