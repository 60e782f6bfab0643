import { definePlugin, type PluginContext } from '../../lib/cni/skel.js';
import { CniError, ErrorCode } from '../../lib/cni/errors.js';
import { assertUsable, chooseBackend, inCleanupBackends, type Backend } from '../../lib/pf/backend.js';
import { forwardFilter, type ForwardOwner, type ForwardRequest } from '../../lib/pf/forward/index.js';
import { DEFAULT_ADMIN_CHAIN } from '../../lib/pf/forward/rules.js';
import { firewallConfig, type FirewallConfig } from './config.js';

/**
 * firewall: lets the container's addresses through the host's forward path
 * (with an admin chain first for operators' overrides) and optionally
 * isolates bridges from each other. `backend`: "iptables" (the reference
 * plugin's chains; the default), "nftables" (our own table, lib/pf/forward),
 * unset or "" for the default, or nftables when only nft is installed.
 */
type Ctx = PluginContext<FirewallConfig>;
const WHAT = 'firewall backend';
const DEFAULT: Backend = 'iptables';

function configured(ctx: Ctx): Backend | '' | undefined {
  const b = ctx.config.backend;
  if (b === 'firewalld') {
    throw new CniError(ErrorCode.UnsupportedField, 'backend "firewalld" is not supported by this firewall plugin', 'use "backend": "iptables" (the default here) or "nftables"');
  }
  return b;
}

function prevOrFail(ctx: Ctx) {
  if (!ctx.prevResult) throw new CniError(ErrorCode.InvalidNetworkConfig, 'missing prevResult from earlier plugin');
  return ctx.prevResult;
}

function bridgeOf(ctx: Ctx): string {
  const name = ctx.prevResult?.interfaces[0]?.name;
  if (!name) {
    throw new CniError(ErrorCode.InvalidNetworkConfig, `ingressPolicy "${ctx.config.ingressPolicy}" needs the bridge as the first interface of prevResult`, 'chain the firewall plugin after bridge');
  }
  return name;
}

const ownerOf = (ctx: Ctx): ForwardOwner => ({ network: ctx.config.name, containerId: ctx.env.containerId, ifname: ctx.env.ifname });

function request(ctx: Ctx): ForwardRequest {
  const prev = prevOrFail(ctx);
  const p = ctx.config.ingressPolicy;
  return {
    owner: ownerOf(ctx),
    cidrs: prev.ips.map((ip) => ip.address),
    adminChain: ctx.config.iptablesAdminChainName || DEFAULT_ADMIN_CHAIN,
    isolation: p === 'same-bridge' || p === 'isolated' ? { policy: p, bridge: bridgeOf(ctx) } : undefined,
    iptablesForwardDrop: ctx.config.iptablesForwardDrop ?? 'open',
  };
}

export default definePlugin({
  name: 'firewall',
  schema: firewallConfig,

  async add(ctx) {
    const backend = chooseBackend(configured(ctx), DEFAULT, WHAT);
    const req = request(ctx);
    await (await forwardFilter(backend)).add(req);
    return prevOrFail(ctx);
  },

  async del(ctx) {
    const chosen = configured(ctx) || undefined;
    const cidrs = (ctx.prevResult?.ips ?? []).map((ip) => ip.address);
    await inCleanupBackends(chosen ?? DEFAULT, async (b) => (await forwardFilter(b)).del(ownerOf(ctx), cidrs));
  },

  async check(ctx) {
    const backend = chooseBackend(configured(ctx), DEFAULT, WHAT);
    await (await forwardFilter(backend)).check(request(ctx));
  },

  async status(ctx) {
    assertUsable(configured(ctx), DEFAULT, WHAT);
  },
});
