import { CniError, ErrorCode } from '../../cni/errors.js';
import { save, transaction, type IpFamily, type TablePlan } from '../../iptables/index.js';
import { FP, trace } from '../../cni/trace.js';
import type { PortForwarding, PortmapParams } from './index.js';
import { dnatChain, dnatRules, MASQ, masqJump, masqRule, SETMARK, setMarkRule, TOP_DNAT, topJumps } from './rules.js';

/**
 * Port forwarding on iptables: the reference portmap's nat layout
 * (rules.ts). One save + one restore per address family and call, under
 * the per-namespace lock (lib/iptables `transaction`). DEL needs neither
 * prevResult nor the namespace: the container's chain is named by
 * (network, containerID).
 */
function planShared(p: TablePlan, c: PortmapParams): string {
  const external = c.externalSetMarkChain;
  if (c.snat && !external) {
    p.ensureChain(SETMARK).appendUnique(setMarkRule(c.markMasqBit));
    p.ensureChain(MASQ).appendUnique(masqRule(c.markMasqBit));
    // First in POSTROUTING: bridge's ipMasq rules would otherwise see the packet first.
    p.insertUnique(masqJump());
  }
  p.ensureChain(TOP_DNAT);
  for (const j of topJumps()) p.appendUnique(j);
  return external ?? SETMARK;
}

/** The container's chain, emptied and unhooked (it stays, empty, only when refilled in the same restore). */
function planRemove(p: TablePlan, chain: string): void {
  p.removeChain(chain);
}

function rulesFor(c: PortmapParams, family: IpFamily, container: string) {
  return dnatRules({
    network: c.network,
    containerId: c.containerId,
    family,
    container,
    mappings: c.mappings,
    snat: c.snat,
    masqAll: c.masqAll,
    setMarkChain: c.externalSetMarkChain ?? SETMARK,
    conditions: family === 4 ? c.conditionsV4 : c.conditionsV6,
  });
}

/** ip6tables may be missing or unusable on a v4-only host: DEL and GC skip it there (a failed save), but not a failed restore. */
async function inV6(plan: (p: TablePlan) => void): Promise<void> {
  try {
    await transaction(6, 'nat', plan);
  } catch (err) {
    if (!(err instanceof CniError && /-save failed$/.test(err.message))) throw err;
  }
}

export const iptablesPortForwarding: PortForwarding = {
  backend: 'iptables',

  async forward(c) {
    for (const [family, container] of c.addresses) {
      const { chain, entries, rules } = rulesFor(c, family, container);
      await transaction(family, 'nat', (p) => {
        planShared(p, c);
        // Start from a clean chain: a re-ADD or a half-done earlier ADD leaves no stale rule.
        planRemove(p, chain);
        p.ensureChain(chain);
        for (const r of rules) p.appendUnique(r);
        for (const e of entries) p.appendUnique(e);
      });
      trace(FP.portmap.familyDone);
    }
  },

  async unforward(network, containerId) {
    // The chain may exist in either family whatever prevResult says (or lacks).
    const chain = dnatChain(network, containerId);
    await transaction(4, 'nat', (p) => planRemove(p, chain));
    await inV6((p) => planRemove(p, chain));
  },

  /** Only the families the container has an address in (the reference also demands the other one). */
  async check(c) {
    for (const [family, container] of c.addresses) {
      const { chain, entries, rules } = rulesFor(c, family, container);
      const state = await save(family, 'nat');
      const have = state.rules.filter((r) => r.chain === chain).map((r) => r.spec.join(' '));
      const want = rules.map((r) => r.spec.join(' '));
      if (have.join('\n') !== want.join('\n')) {
        const missing = want.find((w) => !have.includes(w));
        throw new CniError(ErrorCode.CheckFailed, `portmap chain ${chain} does not hold the expected rules (IPv${family})`, missing ? `missing: -A ${chain} ${missing}` : `found: ${have.join(' | ')}`);
      }
      const needed = [...topJumps(), ...(c.snat && !c.externalSetMarkChain ? [masqJump(), setMarkRule(c.markMasqBit), masqRule(c.markMasqBit)] : [])];
      // Entry rules with user conditions are printed back in iptables' own normal
      // form, which we cannot predict for arbitrary matches: count those instead.
      const conditional = (family === 4 ? c.conditionsV4 : c.conditionsV6).length;
      if (!conditional) needed.push(...entries);
      const keys = new Set(state.rules.map((r) => `${r.chain} ${r.spec.join(' ')}`));
      for (const r of needed) {
        if (!keys.has(`${r.chain} ${r.spec.join(' ')}`)) throw new CniError(ErrorCode.CheckFailed, `portmap rule missing (IPv${family})`, `-A ${r.chain} ${r.spec.join(' ')}`);
      }
      const jumps = state.rules.filter((r) => r.chain === TOP_DNAT && r.spec.at(-1) === chain).length;
      if (jumps !== entries.length) throw new CniError(ErrorCode.CheckFailed, `portmap: ${jumps} jumps to ${chain}, expected ${entries.length} (IPv${family})`);
    }
  },

  /** Removes this network's container chains whose container is not kept (found by the entry rules' comments). */
  async gc(network, keepIds) {
    const keep = new Set([...keepIds].map((id) => dnatChain(network, id)));
    const marker = `dnat name: "${network}" id: "`;
    const sweep = (p: TablePlan) => {
      for (const r of p.rulesOf(TOP_DNAT)) {
        const target = r.spec.at(-1)!;
        const comment = r.spec[r.spec.indexOf('--comment') + 1] ?? '';
        if (target.startsWith('CNI-DN-') && comment.startsWith(marker) && !keep.has(target)) p.removeChain(target);
      }
    };
    await transaction(4, 'nat', sweep);
    await inV6(sweep);
  },
};
