import { CniError, ErrorCode } from '../../cni/errors.js';
import { apply, Batch, sameRule, save, transaction, type Rule, type TablePlan } from '../../iptables/index.js';
import { staleOwned, validKeys } from '../../cni/owner.js';
import type { AccountedInstance, Collector, Direction, InstanceAccounting, Reading, Snapshot, Swap } from './index.js';
import { accountingRules, AOS_LOCAL_RANGES, chainsFor, countRule, dropRule, INSTANCE_CHAIN, jumpRules, OWNER, SYSTEM_IN, SYSTEM_OUT } from './layout.js';

/**
 * Accounting on iptables: the Aos service manager's chains in `filter`
 * (layout diagram in ./layout.ts), every call one locked
 * iptables-save + iptables-restore (lib/iptables transaction), the monitor's
 * collection one `iptables-save -c` plus one restore when it swaps rules.
 */
const commentOf = (r: Rule) => {
  const i = r.spec.indexOf('--comment');
  return i >= 0 ? r.spec[i + 1] : undefined;
};

function planRemove(p: TablePlan, instanceId: string): void {
  const c = chainsFor(instanceId);
  p.removeChain(c.in).removeChain(c.out);
}

export class IptablesAccounting implements InstanceAccounting {
  readonly backend = 'iptables' as const;

  async add(inst: AccountedInstance): Promise<void> {
    const { jumps, rules } = accountingRules(inst.instanceId, inst.ips, inst.skip, inst.owner);
    const c = chainsFor(inst.instanceId);
    await transaction(4, 'filter', (p) => {
      p.ensureChain(c.in).ensureChain(c.out);
      p.flushChain(c.in).flushChain(c.out); // a re-ADD starts the counters afresh, like the Aos monitor
      // Any other jump to these chains (an older binary's, without record) would count every packet twice: ours replaces it.
      for (const j of [...p.jumpsTo(c.in), ...p.jumpsTo(c.out)]) if (!jumps.some((x) => sameRule(x, j))) p.delete(j);
      for (const r of rules) p.appendUnique(r);
      for (const j of [...jumps].reverse()) p.insertUnique(j);
    });
  }

  /** From the instance id alone: no prevResult needed. */
  async del(inst: AccountedInstance): Promise<void> {
    await transaction(4, 'filter', (p) => planRemove(p, inst.instanceId));
  }

  async check(inst: AccountedInstance): Promise<void> {
    const { jumps, rules } = accountingRules(inst.instanceId, inst.ips, inst.skip, inst.owner);
    const legacy = jumpRules(inst.instanceId);
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
  }

  /**
   * Removes the chains whose jumps all carry this network's record of an
   * attachment not in valid-attachments (matched by container id and
   * interface, whatever the instance id). A chain with a jump of another
   * network or without a record (older binaries', the Aos manager's own)
   * is not GC's: only this network's stale jumps to it go.
   */
  async gc(network: string, validAttachments: readonly { containerID: string; ifname: string }[]): Promise<void> {
    const valid = validKeys(validAttachments);
    await transaction(4, 'filter', (p) => {
      for (const chain of p.chainNames()) {
        if (!INSTANCE_CHAIN.test(chain)) continue;
        const jumps = p.jumpsTo(chain);
        const stale = jumps.filter((j) => j.chain === 'FORWARD' && staleOwned(OWNER, commentOf(j), network, valid));
        if (stale.length === 0) continue;
        if (stale.length === jumps.length) p.removeChain(chain);
        else for (const j of stale) p.delete(j);
      }
    });
  }
}

/** The iptables operations the monitor uses (unit tests give a fake). */
export interface Iptables {
  save: typeof save;
  apply: typeof apply;
  /** The per-namespace iptables lock (default withIptablesLock). */
  lock?: <T>(fn: () => Promise<T>) => Promise<T>;
}

const flagOf = (d: Direction): '-s' | '-d' => (d.dir === 'in' ? '-d' : '-s');

class IptablesSnapshot implements Snapshot {
  constructor(readonly byChain: Map<string, Rule[]>) {}

  read(d: Direction): Reading {
    const rules = this.byChain.get(d.chain) ?? [];
    const count = countRule(d.chain, flagOf(d), d.ip).spec.join(' ');
    const drop = dropRule(d.chain, flagOf(d), d.ip).spec.join(' ');
    const counting = rules.find((r) => r.spec.join(' ') === count);
    const dropping = rules.some((r) => r.spec.join(' ') === drop);
    return { counting: counting !== undefined, bytes: Number(counting?.counters?.bytes ?? 0n), dropping };
  }

  system(): { in: number; out: number } | undefined {
    if (!this.byChain.has(SYSTEM_IN) && !this.byChain.has(SYSTEM_OUT)) return undefined;
    const total = (chain: string) => Number((this.byChain.get(chain) ?? []).find((r) => r.spec.length === 0)?.counters?.bytes ?? 0n);
    return { in: total(SYSTEM_IN), out: total(SYSTEM_OUT) };
  }
}

export class IptablesCollector implements Collector {
  readonly backend = 'iptables' as const;
  constructor(private readonly ipt: Pick<Iptables, 'save' | 'apply'> = { save, apply }) {}

  /** One `iptables-save -c -t filter`, only the AOS_ lines parsed. */
  async snapshot(): Promise<Snapshot> {
    const table = await this.ipt.save(4, 'filter', { counters: true, keep: (line) => line.includes(' AOS_') });
    const byChain = new Map<string, Rule[]>();
    for (const r of table.rules) {
      const list = byChain.get(r.chain) ?? [];
      list.push(r);
      byChain.set(r.chain, list);
    }
    return new IptablesSnapshot(byChain);
  }

  /** One iptables-restore: the counting rule swapped for DROP or back (a new rule counts from zero). */
  async apply(_snap: Snapshot, swaps: Swap[]): Promise<void> {
    const batch = new Batch('filter');
    for (const { d, to } of swaps) {
      const count = countRule(d.chain, flagOf(d), d.ip);
      const drop = dropRule(d.chain, flagOf(d), d.ip);
      if (to === 'drop') batch.delete(count).append(drop);
      else batch.delete(drop).append(count);
    }
    await this.ipt.apply(4, [batch]); // no call when there is nothing to swap
  }

  /**
   * The host's own traffic with the outside: AOS_SYSTEM_IN (from INPUT) and
   * AOS_SYSTEM_OUT (from OUTPUT), RETURN for the local ranges, then a rule
   * without match or target whose counter is the total.
   */
  async ensureSystem(): Promise<void> {
    await transaction(4, 'filter', (p) => {
      for (const [chain, parent, flag] of [[SYSTEM_IN, 'INPUT', '-s'], [SYSTEM_OUT, 'OUTPUT', '-d']] as const) {
        p.ensureChain(chain);
        if (p.rulesOf(chain).length === 0) {
          for (const r of AOS_LOCAL_RANGES) p.appendUnique({ chain, spec: [flag, r, '-j', 'RETURN'] });
          p.appendUnique({ chain, spec: [] });
        }
        p.insertUnique({ chain: parent, spec: ['-j', chain] });
      }
    });
  }

  async removeSystem(): Promise<void> {
    await transaction(4, 'filter', (p) => p.removeChain(SYSTEM_IN).removeChain(SYSTEM_OUT));
  }
}
