/**
 * The named points of the suite's work (lib/cni/trace.ts): each is a phase
 * timing under CNI_TS_TRACE=1 and, in the test build, a failpoint
 * (CNI_TS_KILL_AT=<label>[#<n>] SIGKILLs the process there). `trace()`
 * accepts only these constants — a label is spelled once, here — and
 * test/integration/crash.test.ts imports them instead of spelling the
 * strings it reads back from a traced run.
 *
 * A label is `<group>: <what happened>` (the group the plugin or library
 * that passes it), except the entry's, which every plugin passes. Add a new
 * point to its group; test/unit/failpoints.test.ts checks that labels are
 * unique and that each one is passed somewhere.
 */

/** Named so that a type error at a `trace('…')` call says what to do. */
declare const declareTheLabelInFP_libCniFailpointsTs: unique symbol;
/** A failpoint label: only the constants below are one (a string literal is not). */
export type Failpoint<L extends string = string> = L & { readonly [declareTheLabelInFP_libCniFailpointsTs]: true };

function group<const T extends Record<string, string>>(labels: T): { readonly [K in keyof T]: Failpoint<T[K]> } {
  return Object.freeze(labels) as unknown as { readonly [K in keyof T]: Failpoint<T[K]> };
}

export const FP = Object.freeze({
  /** src/main.ts: every plugin call. `main` and `contract loaded` come before anything is read. */
  entry: group({
    main: 'main',
    contractLoaded: 'contract loaded',
    pluginLoaded: 'plugin loaded',
    /** All work done, the result not yet printed. */
    done: 'done',
  }),
  /** lib/iptables: a locked save → plan → restore transaction. */
  iptables: group({
    locking: 'iptables: locking',
    lockHeld: 'iptables: lock held',
    saved: 'iptables: saved',
    planned: 'iptables: planned',
    restoreHalfWritten: 'iptables: restore half written',
    restoreInputWritten: 'iptables: restore input written',
    restored: 'iptables: restored',
  }),
  bridge: group({
    socketsOpen: 'bridge: sockets open',
    bridgeReady: 'bridge: bridge ready',
    vethCreated: 'bridge: veth created',
    vethAttached: 'bridge: veth attached',
    spoofcheckSet: 'bridge: spoofcheck set',
    ipamDone: 'bridge: ipam done',
    addressesSet: 'bridge: addresses set',
    routesSet: 'bridge: routes set',
    gatewayConfigured: 'bridge: gateway configured',
    masqDone: 'bridge: masq done',
    ipamReleased: 'bridge: ipam released',
    addressesRead: 'bridge: addresses read',
    linkDeleted: 'bridge: link deleted',
  }),
  hostLocal: group({
    locked: 'host-local: locked',
    allocationCreated: 'host-local: allocation created',
    allocationWritten: 'host-local: allocation written',
    cursorWritten: 'host-local: cursor written',
  }),
  portmap: group({
    familyDone: 'portmap: family done',
  }),
  tuning: group({
    linkChanged: 'tuning: link changed',
    originalsSaved: 'tuning: originals saved',
    sysctlSet: 'tuning: sysctl set',
  }),
  bandwidth: group({
    netemAdded: 'bandwidth: netem added',
    ingressShaped: 'bandwidth: ingress shaped',
    ifbCreated: 'bandwidth: ifb created',
    ifbUp: 'bandwidth: ifb up',
    egressShaped: 'bandwidth: egress shaped',
    ingressQdiscAdded: 'bandwidth: ingress qdisc added',
    redirectAdded: 'bandwidth: redirect added',
  }),
  aosFirewall: group({
    stateLocked: 'aos-firewall: state locked',
    stateJournaled: 'aos-firewall: state journaled',
    stateWritten: 'aos-firewall: state written',
  }),
  dnsname: group({
    locked: 'dnsname: locked',
    stateRead: 'dnsname: state read',
    filesWritten: 'dnsname: files written',
    hostsWritten: 'dnsname: hosts written',
    startingDnsmasq: 'dnsname: starting dnsmasq',
    dnsmasqSpawned: 'dnsname: dnsmasq spawned',
    dnsmasqSignalled: 'dnsname: dnsmasq signalled',
    nameAnswers: 'dnsname: name answers',
  }),
  /** manager/traffic.ts: one collection of the traffic monitor. */
  collect: group({
    start: 'collect: start',
    totalsStored: 'collect: totals stored',
    savedAndParsed: 'collect: saved and parsed',
  }),
});

/** Every label, grouped as above. */
export const ALL_FAILPOINTS: readonly Failpoint[] = Object.freeze(Object.values(FP).flatMap((g) => Object.values(g) as Failpoint[]));

/** Whether `label` (read back from a traced run, say) is one of ours. */
export function isFailpoint(label: string): label is Failpoint {
  return (ALL_FAILPOINTS as readonly string[]).includes(label);
}
