import type { Rule, TablePlan } from '../../iptables/index.js';
import { rule, type RuleSpec } from '../../iptables/rule.js';
import { maskToPrefix, type AccessChain, type AccessRule } from '../../../plugins/aos-firewall/state.js';

/**
 * The Aos instance firewall's iptables layout (the original plugin's chains;
 * why each rule: docs/aos-firewall.md). What aos-firewall puts into the
 * filter table for one instance, derived
 * from its state entry (so DEL and CHECK need nothing else):
 *
 *   FORWARD          -j AOS-FORWARD, -j AOS-FORWARD-PORT (top, in that order) … -j AOS-OUTPUT (end)
 *   AOS-FORWARD-PORT -d IP -m conntrack --ctstate NEW -j <C>
 *   AOS-OUTPUT       -s IP -p icmp -j DROP; not public: -s IP -m conntrack --ctstate NEW -j DROP
 *   AOS-FORWARD      public: -s IP -o WAN ACCEPT, -d IP -i WAN RELATED,ESTABLISHED ACCEPT
 *                    outputAccess: -s SRC -d DST -p P --dport X ACCEPT and its reply rule
 *                    -s IP -d GW/GP ACCEPT and back
 *   <C>              -s GW/P -p tcp|udp ACCEPT, inputAccess RETURNs, -p tcp DROP, -p udp DROP
 *
 * Where the original contradicts its intent, this follows the intent (see
 * docs/aos-firewall.md, "Decisions"): input RETURNs match any source, the WAN rule accepts
 * replies only, and the outputAccess reply carries protocol, port and state.
 */
export const FORWARD_PORT = 'AOS-FORWARD-PORT';
export const FORWARD = 'AOS-FORWARD';
export const OUTPUT = 'AOS-OUTPUT';

export const frameJumps = {
  forward: rule('FORWARD', { jump: FORWARD }),
  forwardPort: rule('FORWARD', { jump: FORWARD_PORT }),
  output: rule('FORWARD', { jump: OUTPUT }),
};

function proto(p: string): 'tcp' | 'udp' | undefined {
  return p === 'tcp' || p === 'udp' ? p : undefined;
}

function outRuleSpecs(o: AccessRule, instanceIP: string): { forward: RuleSpec; reply: RuleSpec } {
  const src = o.srcIp || instanceIP;
  const p = proto(o.proto);
  const port = p && o.dstPort ? o.dstPort : undefined;
  return {
    forward: { src, dst: o.dstIp, proto: p, dport: port, jump: 'ACCEPT' },
    reply: { src: o.dstIp, dst: src, proto: p, sport: port, ctstate: 'RELATED,ESTABLISHED', jump: 'ACCEPT' },
  };
}

export interface InstanceRules {
  /** Rules in the shared AOS-* chains. */
  shared: Rule[];
  /** The instance chain's rules, in order. */
  chain: Rule[];
}

export function instanceRules(e: AccessChain): InstanceRules {
  const ip = e.address.IP;
  const prefix = maskToPrefix(e.address.Mask);
  const gwNet = `${e.gateway}/${e.gatewayPrefixLen}`;
  const shared: Rule[] = [
    rule(FORWARD_PORT, { dst: ip, ctstate: 'NEW', jump: e.name }),
    rule(OUTPUT, { src: ip, proto: 'icmp', jump: 'DROP' }),
  ];
  if (e.hasInternetConnection) {
    shared.push(rule(FORWARD, { src: ip, out: e.publicInterface, jump: 'ACCEPT' }));
    shared.push(rule(FORWARD, { dst: ip, in: e.publicInterface, ctstate: 'RELATED,ESTABLISHED', jump: 'ACCEPT' }));
  } else {
    shared.push(rule(OUTPUT, { src: ip, ctstate: 'NEW', jump: 'DROP' }));
  }
  for (const o of e.outRules ?? []) {
    const s = outRuleSpecs(o, ip);
    shared.push(rule(FORWARD, s.forward), rule(FORWARD, s.reply));
  }
  shared.push(rule(FORWARD, { src: ip, dst: gwNet, jump: 'ACCEPT' }), rule(FORWARD, { src: gwNet, dst: ip, jump: 'ACCEPT' }));

  const chain: Rule[] = [
    rule(e.name, { src: `${e.gateway}/${prefix}`, proto: 'tcp', jump: 'ACCEPT' }),
    rule(e.name, { src: `${e.gateway}/${prefix}`, proto: 'udp', jump: 'ACCEPT' }),
  ];
  if (e.inputPortsTCP?.length) chain.push(rule(e.name, { proto: 'tcp', dport: e.inputPortsTCP.join(','), jump: 'RETURN' }));
  if (e.inputPortsUDP?.length) chain.push(rule(e.name, { proto: 'udp', dport: e.inputPortsUDP.join(','), jump: 'RETURN' }));
  chain.push(rule(e.name, { proto: 'tcp', jump: 'DROP' }), rule(e.name, { proto: 'udp', jump: 'DROP' }));
  return { shared, chain };
}

/** The original plugin's forms of the same rules, so DEL also cleans what it left. */
function legacyRules(e: AccessChain): Rule[] {
  const ip = e.address.IP;
  const out: Rule[] = [];
  if (e.hasInternetConnection && e.publicInterface) out.push(rule(FORWARD, { dst: ip, in: e.publicInterface, jump: 'ACCEPT' }));
  for (const o of e.outRules ?? []) {
    const p = proto(o.proto);
    const multi = o.dstPort && (o.dstPort.includes(',') || o.dstPort.includes(':'));
    const src = o.srcIp || undefined;
    out.push(rule(FORWARD, { src: o.dstIp, dst: src, jump: 'ACCEPT' }));
    if (p && multi) {
      const base = rule(FORWARD, { src, dst: o.dstIp, proto: p, dport: o.dstPort, jump: 'ACCEPT' });
      // The original writes "-p tcp -m tcp -m multiport --dports …".
      const i = base.spec.indexOf('multiport');
      out.push({ chain: FORWARD, spec: [...base.spec.slice(0, i - 1), '-m', p, ...base.spec.slice(i - 1)] });
    } else {
      out.push(rule(FORWARD, { src, dst: o.dstIp, proto: p, dport: p ? o.dstPort || undefined : undefined, jump: 'ACCEPT' }));
    }
  }
  return out;
}

/** Adds the shared frame (chains and FORWARD jumps). */
export function planFrame(p: TablePlan, instanceChain: string): void {
  p.ensureChain(FORWARD_PORT).ensureChain(FORWARD).ensureChain(OUTPUT).ensureChain(instanceChain);
  p.insertUnique(frameJumps.forwardPort);
  p.insertUnique(frameJumps.forward);
  p.appendUnique(frameJumps.output);
}

export function planAdd(p: TablePlan, e: AccessChain): void {
  planFrame(p, e.name);
  const r = instanceRules(e);
  p.flushChain(e.name); // a re-ADD rebuilds the instance chain from scratch
  for (const x of r.chain) p.appendUnique(x);
  for (const x of r.shared) p.appendUnique(x);
}

export function planDel(p: TablePlan, e: AccessChain): void {
  const r = instanceRules(e);
  for (const x of [...r.shared, ...legacyRules(e)]) p.delete(x);
  p.removeChain(e.name);
}

/** Every rule CHECK expects, in `chain spec` text form, with the chains. */
export function expectedRules(e: AccessChain): Rule[] {
  const r = instanceRules(e);
  return [frameJumps.forward, frameJumps.forwardPort, frameJumps.output, ...r.shared, ...r.chain];
}
