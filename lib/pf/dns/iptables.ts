import { expectedRule, ruleKeys, save, transaction, type TablePlan } from '../../iptables/index.js';
import { rule } from '../../iptables/rule.js';
import { requireRules } from '../check.js';
import { dnsTag, type DnsOpening, type DnsPorts } from './index.js';

/**
 * DNS port openings on iptables: `filter` INPUT, at the top,
 *   -A INPUT -i <bridge> -p udp -m udp --dport 53 -m comment --comment "cni-ts dnsname: <network>" -j ACCEPT
 *   -A INPUT -i <bridge> -p tcp -m tcp --dport 53 -m comment --comment "cni-ts dnsname: <network>" -j ACCEPT
 * in the table of the bridge address's family; one locked save → plan →
 * restore per call.
 */
export function inputRules(o: Pick<DnsOpening, 'bridge' | 'network'>) {
  return (['udp', 'tcp'] as const).map((proto) => rule('INPUT', { in: o.bridge, proto, dport: '53', comment: dnsTag(o.network), jump: 'ACCEPT' }));
}

/** Removes the network's port-53 rules, found by their comment (works without state). */
function dropNetwork(p: TablePlan, network: string): void {
  for (const r of p.rulesOf('INPUT')) if (r.spec.includes(dnsTag(network))) p.delete(r);
}

export class IptablesDnsPorts implements DnsPorts {
  readonly backend = 'iptables' as const;

  async open(o: DnsOpening): Promise<void> {
    await transaction(o.family, 'filter', (p) => {
      for (const r of inputRules(o)) p.insertUnique(r);
    });
  }

  async refresh(): Promise<void> {}

  async close(o: DnsOpening): Promise<void> {
    await transaction(o.family, 'filter', (p) => {
      for (const r of inputRules(o)) p.delete(r);
    });
  }

  async closeNetwork(network: string, families: (4 | 6)[]): Promise<void> {
    for (const fam of families) await transaction(fam, 'filter', (p) => dropNetwork(p, network));
  }

  async check(o: DnsOpening): Promise<void> {
    const filter = await save(o.family, 'filter');
    requireRules(ruleKeys(filter), inputRules(o).map(expectedRule), 'dnsname port 53 accept rule (iptables)');
  }
}
