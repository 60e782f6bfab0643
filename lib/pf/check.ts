import { CniError, ErrorCode } from '../cni/errors.js';

/**
 * CHECK's "which rules are missing", written once for every concern and
 * backend. A backend reads its state once and turns it into keys (iptables:
 * chain + rule in iptables-save's normal form; nftables: chain + the rule's
 * identifying comment); the concern lists what it expects. The first
 * missing rule fails the CHECK, shown the way an operator would look for it
 * (`-A CHAIN …` for iptables, `nft list chain …` wording for nftables).
 */
export interface Expected {
  /** Compared against the backend's keys. */
  key: string;
  /** How the missing rule is shown in the error's details. */
  show: string;
}

export function firstMissing(have: ReadonlySet<string>, want: Iterable<Expected>): Expected | undefined {
  for (const w of want) if (!have.has(w.key)) return w;
  return undefined;
}

/** Throws CNI's CheckFailed for the first expected rule not found; `what` names the plugin and backend. */
export function requireRules(have: ReadonlySet<string>, want: Iterable<Expected>, what: string): void {
  const m = firstMissing(have, want);
  if (m) throw new CniError(ErrorCode.CheckFailed, `${what}: expected rule not found`, m.show);
}
