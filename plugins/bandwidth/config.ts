import { z } from 'zod';
import { netConf, obj } from '../../lib/cni/schema.js';

const bits = z.number().int().nonnegative(); // rates in bits/s, bursts in bits, as the reference
const ms = z.number().nonnegative().max(3_600_000);
const percent = z.number().min(0).max(100);

const limits = {
  ingressRate: bits.optional(),
  ingressBurst: bits.optional(),
  egressRate: bits.optional(),
  egressBurst: bits.optional(),
};

/**
 * The reference bandwidth keys, plus link impairment per direction (netem):
 * <dir>Delay and <dir>Jitter in milliseconds, <dir>Loss, <dir>Duplicate and
 * <dir>Reorder in percent, with <dir> = ingress (toward the container) or
 * egress (from it).
 */
export const bandwidthConfig = netConf({
  ...limits,
  ingressDelay: ms.optional(),
  ingressJitter: ms.optional(),
  ingressLoss: percent.optional(),
  ingressDuplicate: percent.optional(),
  ingressReorder: percent.optional(),
  egressDelay: ms.optional(),
  egressJitter: ms.optional(),
  egressLoss: percent.optional(),
  egressDuplicate: percent.optional(),
  egressReorder: percent.optional(),
  runtimeConfig: obj({ bandwidth: obj(limits).optional() }).optional(),
});
export type BandwidthConfig = z.output<typeof bandwidthConfig>;

export interface Impairment {
  delayMs: number;
  jitterMs: number;
  loss: number;
  duplicate: number;
  reorder: number;
}

export interface Direction {
  /** bits/s and bits; 0/0 = no rate limit */
  rate: number;
  burst: number;
  netem?: Impairment;
}

export function shaped(d: Direction): boolean {
  return d.rate > 0 || d.netem !== undefined;
}

const MAX_BURST_BYTES = 2 ** 32 - 1;

export function directions(cfg: BandwidthConfig): { ingress: Direction; egress: Direction } {
  const staticSet = [cfg.ingressRate, cfg.ingressBurst, cfg.egressRate, cfg.egressBurst].some((v) => v !== undefined);
  const bw = staticSet ? cfg : (cfg.runtimeConfig?.bandwidth ?? {}); // static config wins
  const one = (dir: 'ingress' | 'egress'): Direction => {
    const rate = bw[`${dir}Rate`] ?? 0;
    const burst = bw[`${dir}Burst`] ?? 0;
    if (rate > 0 && burst === 0) throw new Error(`${dir}Rate is set, so ${dir}Burst must be set too`);
    if (burst > 0 && rate === 0) throw new Error(`${dir}Burst is set, so ${dir}Rate must be set too`);
    if (burst / 8 >= MAX_BURST_BYTES) throw new Error(`${dir}Burst cannot be more than 4 GiB`);
    const delayMs = cfg[`${dir}Delay`] ?? 0;
    const jitterMs = cfg[`${dir}Jitter`] ?? 0;
    const loss = cfg[`${dir}Loss`] ?? 0;
    const duplicate = cfg[`${dir}Duplicate`] ?? 0;
    const reorder = cfg[`${dir}Reorder`] ?? 0;
    if (jitterMs > 0 && delayMs === 0) throw new Error(`${dir}Jitter needs ${dir}Delay`);
    if (reorder > 0 && delayMs === 0) throw new Error(`${dir}Reorder needs ${dir}Delay (packets are reordered by letting some skip the delay)`);
    const impaired = delayMs > 0 || loss > 0 || duplicate > 0 || reorder > 0;
    return { rate, burst, ...(impaired ? { netem: { delayMs, jitterMs, loss, duplicate, reorder } } : {}) };
  };
  return { ingress: one('ingress'), egress: one('egress') };
}
