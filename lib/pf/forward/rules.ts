import type { TablePlan } from '../../iptables/index.js';
import { rule } from '../../iptables/rule.js';
import type { Rule } from '../../iptables/index.js';

/**
 * The reference firewall plugin's iptables layout, rule for rule, so chains
 * it made are ours to check and remove and the other way round:
 *   FORWARD     -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD   (first)
 *   CNI-FORWARD -m comment --comment "CNI firewall plugin admin overrides" -j <admin> (first)
 *   CNI-FORWARD -d <ip> -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
 *   CNI-FORWARD -s <ip> -j ACCEPT
 * and for ingressPolicy the Docker-style isolation chains.
 */
export const PRIV_CHAIN = 'CNI-FORWARD';
export const DEFAULT_ADMIN_CHAIN = 'CNI-ADMIN';
export const STAGE1 = 'CNI-ISOLATION-STAGE-1';
export const STAGE2 = 'CNI-ISOLATION-STAGE-2';
const SAME_BRIDGE_COMMENT = 'CNI firewall plugin rules (ingressPolicy: same-bridge)';
const ISOLATED_COMMENT = 'CNI firewall plugin rules (ingressPolicy: isolated)';

export const forwardJump = (): Rule => rule('FORWARD', { comment: 'CNI firewall plugin rules', jump: PRIV_CHAIN });
export const adminJump = (admin: string): Rule => rule(PRIV_CHAIN, { comment: 'CNI firewall plugin admin overrides', jump: admin });

export function addressRules(ip: string): Rule[] {
  return [rule(PRIV_CHAIN, { dst: ip, ctstate: 'RELATED,ESTABLISHED', jump: 'ACCEPT' }), rule(PRIV_CHAIN, { src: ip, jump: 'ACCEPT' })];
}

export function planBase(p: TablePlan, admin: string): void {
  p.ensureChain(PRIV_CHAIN).ensureChain(admin);
  p.insertUnique(forwardJump());
  p.insertUnique(adminJump(admin));
}

/** Isolation rules for one bridge; `isolated` also drops traffic within the bridge. */
export function isolationRules(bridge: string, policy: 'same-bridge' | 'isolated') {
  return {
    jump: rule('FORWARD', { comment: SAME_BRIDGE_COMMENT, jump: STAGE1 }),
    stage1Bridge: rule(STAGE1, { in: bridge, out: bridge, notOut: true, comment: SAME_BRIDGE_COMMENT, jump: STAGE2 }),
    stage1Self: policy === 'isolated' ? rule(STAGE1, { in: bridge, out: bridge, comment: ISOLATED_COMMENT, jump: 'DROP' }) : undefined,
    stage1Return: rule(STAGE1, { comment: SAME_BRIDGE_COMMENT, jump: 'RETURN' }),
    stage2Bridge: rule(STAGE2, { out: bridge, comment: SAME_BRIDGE_COMMENT, jump: 'DROP' }),
    stage2Return: rule(STAGE2, { comment: SAME_BRIDGE_COMMENT, jump: 'RETURN' }),
  };
}

/** The jump to STAGE-1 goes before the jump to CNI-FORWARD, bridge rules before the RETURNs. */
export function planIsolation(p: TablePlan, bridge: string, policy: 'same-bridge' | 'isolated'): void {
  const r = isolationRules(bridge, policy);
  p.ensureChain(STAGE1).ensureChain(STAGE2);
  p.insertUnique(r.jump);
  p.insertUnique(r.stage1Bridge);
  if (r.stage1Self) p.insertUnique(r.stage1Self);
  p.appendUnique(r.stage1Return);
  p.insertUnique(r.stage2Bridge);
  p.appendUnique(r.stage2Return);
}

export function expectedIsolation(bridge: string, policy: 'same-bridge' | 'isolated'): Rule[] {
  const r = isolationRules(bridge, policy);
  return [r.jump, r.stage1Bridge, ...(r.stage1Self ? [r.stage1Self] : []), r.stage1Return, r.stage2Bridge, r.stage2Return];
}
