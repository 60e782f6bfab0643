import { z } from 'zod';
import { definePlugin, type PluginContext } from '../../lib/cni/skel.js';
import { CniError, ErrorCode } from '../../lib/cni/errors.js';
import { netConf } from '../../lib/cni/schema.js';
import { isCidr } from '../../lib/ip/index.js';
import type { Owner } from '../../lib/cni/owner.js';
import { assertUsable, backendName, chooseBackend, inCleanupBackends } from '../../lib/pf/backend.js';
import { accounting, type AccountedInstance } from '../../lib/pf/accounting/index.js';
import { AOS_LOCAL_RANGES, DEFAULT_BACKEND } from '../../lib/pf/accounting/layout.js';

/**
 * traffic-accounting: the Aos service manager's per-instance accounting
 * counters, so any runtime gets them and an Aos traffic monitor (or ours,
 * cni-manager traffic/serve) finds them: download (to the instance's
 * address) and upload (from it), traffic with the local ranges not counted.
 * On iptables the Aos chains AOS_<h>_IN/OUT jumped to from FORWARD, on
 * nftables named counters of the same names in `inet cni_ts_accounting`
 * (lib/pf/accounting; docs/accounting.md).
 */
const WHAT = 'traffic-accounting backend';

export const trafficAccountingConfig = netConf({
  instanceId: z.string().min(1).optional(),
  skipRanges: z.array(z.string().refine(isCidr, 'must be a CIDR')).optional(),
  /** The packet filter (lib/pf/backend.ts): unset is iptables, or nftables where only nft is there. */
  backend: backendName.optional(),
});
type Config = z.output<typeof trafficAccountingConfig>;
type Ctx = PluginContext<Config>;

const ownerOf = (ctx: Ctx): Owner => ({ network: ctx.config.name, containerID: ctx.env.containerId, ifname: ctx.env.ifname });
const v4 = (ctx: Ctx) => (ctx.prevResult?.ips ?? []).map((ip) => ip.address.split('/')[0]).filter((ip) => !ip.includes(':'));
const instanceOf = (ctx: Ctx): AccountedInstance => ({
  instanceId: ctx.config.instanceId ?? ctx.env.containerId,
  ips: v4(ctx),
  skip: ctx.config.skipRanges ?? AOS_LOCAL_RANGES,
  owner: ownerOf(ctx),
});

export default definePlugin({
  name: 'traffic-accounting',
  schema: trafficAccountingConfig,

  async add(ctx) {
    const prev = ctx.prevResult;
    if (!prev) throw new CniError(ErrorCode.InvalidNetworkConfig, 'traffic-accounting must be chained: missing prevResult');
    const inst = instanceOf(ctx);
    if (inst.ips.length === 0) throw new CniError(ErrorCode.InvalidNetworkConfig, 'prevResult has no IPv4 address to account');
    await (await accounting(chooseBackend(ctx.config.backend, DEFAULT_BACKEND, WHAT))).add(inst);
    return prev;
  },

  /** From the instance id alone (no prevResult needed), in every usable backend: a switched backend leaves nothing behind. */
  async del(ctx) {
    const inst = instanceOf(ctx);
    await inCleanupBackends(ctx.config.backend ?? DEFAULT_BACKEND, async (b) => (await accounting(b)).del(inst));
  },

  async check(ctx) {
    await (await accounting(chooseBackend(ctx.config.backend, DEFAULT_BACKEND, WHAT))).check(instanceOf(ctx));
  },

  /**
   * Removes the instances whose owner record names this network and an
   * attachment not in valid-attachments (matched by container id and
   * interface, whatever the instance id), in every usable backend. Ones
   * without a record (older binaries', the Aos manager's own) are not GC's.
   */
  async gc(ctx) {
    await inCleanupBackends(ctx.config.backend ?? DEFAULT_BACKEND, async (b) => (await accounting(b)).gc(ctx.config.name, ctx.validAttachments));
  },

  async status(ctx) {
    assertUsable(ctx.config.backend, DEFAULT_BACKEND, WHAT);
  },
});
