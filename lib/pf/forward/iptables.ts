import { CniError, ErrorCode } from '../../cni/errors.js';
import { deleteExactly, expectedRule, ruleKeys, save, transaction, type IpFamily } from '../../iptables/index.js';
import type { Backend } from '../backend.js';
import { requireRules } from '../check.js';
import type { ForwardFilter, ForwardOwner, ForwardRequest } from './index.js';
import { addressRules, adminJump, expectedIsolation, forwardJump, planBase, planIsolation, PRIV_CHAIN } from './rules.js';

/**
 * The reference firewall plugin's iptables backend (./rules.ts): one locked
 * iptables-save + iptables-restore per family and call.
 */
const familyOf = (cidr: string): IpFamily => (cidr.includes(':') ? 6 : 4);
const ipOf = (cidr: string) => cidr.split('/')[0];
const ipsOf = (cidrs: string[], fam: IpFamily) => cidrs.filter((c) => familyOf(c) === fam).map(ipOf);

export class IptablesForward implements ForwardFilter {
  readonly backend: Backend = 'iptables';

  async add(req: ForwardRequest): Promise<void> {
    for (const fam of [4, 6] as const) {
      const ips = ipsOf(req.cidrs, fam);
      if (ips.length === 0) continue;
      await transaction(fam, 'filter', (p) => {
        planBase(p, req.adminChain);
        for (const ip of ips) for (const r of addressRules(ip)) p.appendUnique(r);
        if (req.isolation) planIsolation(p, req.isolation.bridge, req.isolation.policy);
      });
    }
  }

  async del(_owner: ForwardOwner, cidrs: string[]): Promise<void> {
    // Without addresses there is nothing to know the rules by (as the reference).
    for (const fam of [4, 6] as const) {
      const ips = ipsOf(cidrs, fam);
      if (ips.length === 0) continue;
      await deleteExactly(fam, 'filter', ips.flatMap((ip) => addressRules(ip)));
    }
  }

  async check(req: ForwardRequest): Promise<void> {
    for (const fam of [4, 6] as const) {
      const ips = ipsOf(req.cidrs, fam);
      if (ips.length === 0) continue;
      const state = await save(fam, 'filter');
      for (const chain of [PRIV_CHAIN, req.adminChain]) {
        if (!state.chains.has(chain)) throw new CniError(ErrorCode.CheckFailed, `chain ${chain} not found`);
      }
      const want = [forwardJump(), adminJump(req.adminChain), ...ips.flatMap((ip) => addressRules(ip))];
      if (req.isolation) want.push(...expectedIsolation(req.isolation.bridge, req.isolation.policy));
      requireRules(ruleKeys(state), want.map(expectedRule), 'firewall (iptables)');
    }
  }
}
