import { ruleKeys, expectedRule, save, transaction, withIptablesLock } from '../../iptables/index.js';
import { CniError, ErrorCode } from '../../cni/errors.js';
import { requireRules } from '../check.js';
import type { AosFirewall, AosInstance } from './index.js';
import { expectedRules, FORWARD, FORWARD_PORT, OUTPUT, planAdd, planDel } from './rules.js';

/**
 * The Aos instance firewall on iptables: the original plugin's layout
 * (./rules.ts), one locked iptables-save → plan → iptables-restore per call.
 */
export class IptablesAosFirewall implements AosFirewall {
  readonly backend = 'iptables' as const;

  locked<T>(fn: () => Promise<T>): Promise<T> {
    return withIptablesLock(fn);
  }

  async add(entry: AosInstance, old: AosInstance | undefined): Promise<void> {
    await transaction(4, 'filter', (p) => {
      if (old && (old.address.IP !== entry.address.IP || old.name !== entry.name)) planDel(p, old);
      planAdd(p, entry);
    });
  }

  async del(entry: AosInstance | undefined, chain: string): Promise<void> {
    await transaction(4, 'filter', (p) => {
      if (entry) planDel(p, entry);
      // Without an entry (state file wiped) the instance chain is still found by name.
      p.removeChain(chain);
    });
  }

  async check(entry: AosInstance): Promise<void> {
    const filter = await save(4, 'filter');
    for (const chain of [FORWARD_PORT, FORWARD, OUTPUT, entry.name]) {
      if (!filter.chains.has(chain)) throw new CniError(ErrorCode.CheckFailed, `chain ${chain} not found`);
    }
    requireRules(ruleKeys(filter), expectedRules(entry).map(expectedRule), 'aos-firewall (iptables)');
  }
}
