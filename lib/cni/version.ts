import { CniError, ErrorCode, toCniError } from './errors.js';

/**
 * Every version this suite reads and writes, oldest first: those of the
 * reference plugins (containernetworking/plugins 1.1.1) plus 1.1.0. 0.1.0 and
 * 0.2.0 results have their own shape (`ip4`/`ip6`, see result.ts).
 */
export const SUPPORTED_VERSIONS = ['0.1.0', '0.2.0', '0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] as const;
export type CniVersion = (typeof SUPPORTED_VERSIONS)[number];
export const LATEST_VERSION: CniVersion = '1.1.0';

const from = (oldest: CniVersion): readonly CniVersion[] => SUPPORTED_VERSIONS.slice(SUPPORTED_VERSIONS.indexOf(oldest));

/**
 * Plugins that declare fewer versions. bandwidth and firewall as their
 * reference binaries do (`VERSION` of Debian's 1.1.1: bandwidth from 0.3.0,
 * firewall from 0.4.0); aos-firewall and traffic-accounting have no reference
 * and only work chained, which 0.1.0/0.2.0 cannot express; nor does
 * tc-redirect-tap (it redirects an interface a previous plugin made). Every other plugin
 * (and the reference's bridge, host-local, portmap, tuning, loopback,
 * dnsname) speaks all of SUPPORTED_VERSIONS.
 */
const PLUGIN_VERSIONS: ReadonlyMap<string, readonly CniVersion[]> = new Map([
  ['bandwidth', from('0.3.0')],
  ['firewall', from('0.4.0')],
  ['aos-firewall', from('0.3.0')],
  ['traffic-accounting', from('0.3.0')],
  ['tc-redirect-tap', from('0.3.0')],
]);

/** The versions a plugin (by its invoked name) declares; all of them when the name is not known. */
export function supportedVersions(plugin?: string): readonly CniVersion[] {
  return (plugin !== undefined && PLUGIN_VERSIONS.get(plugin)) || SUPPORTED_VERSIONS;
}

/** Whether the suite can read and write results of this version at all. */
export function isSupported(v: string, plugin?: string): v is CniVersion {
  return (supportedVersions(plugin) as readonly string[]).includes(v);
}

/** Compares dotted versions numerically: <0, 0 or >0. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** The config's version, checked against what the plugin declares. No cniVersion means 0.1.0 (as the reference). */
export function requireSupported(v: string | undefined, plugin?: string): CniVersion {
  const version = v === undefined || v === '' ? '0.1.0' : v;
  if (!isSupported(version, plugin)) {
    throw new CniError(
      ErrorCode.IncompatibleVersion,
      'incompatible CNI versions',
      `config is "${version}", plugin supports ${JSON.stringify(supportedVersions(plugin))}`,
    );
  }
  return version;
}

/** CHECK needs 0.4.0, GC and STATUS need 1.1.0: older configs get code 1. */
export function requireAtLeast(v: string, min: string, command: string): void {
  if (compareVersions(v, min) < 0) {
    throw new CniError(
      ErrorCode.IncompatibleVersion,
      `config version does not allow ${command}`,
      `${command} needs cniVersion ${min} or later, config is ${v}`,
    );
  }
}

/** The VERSION command's answer: the caller's version echoed when the plugin speaks it. */
export function versionInfo(asked: string | undefined, plugin?: string): { cniVersion: string; supportedVersions: string[] } {
  return {
    cniVersion: asked !== undefined && isSupported(asked, plugin) ? asked : LATEST_VERSION,
    supportedVersions: [...supportedVersions(plugin)],
  };
}

/** Reads a config's cniVersion without trusting (or validating) the rest. */
export function sniffVersion(stdin: Buffer): string | undefined {
  try {
    const v = (JSON.parse(stdin.toString('utf8')) as { cniVersion?: unknown })?.cniVersion;
    return typeof v === 'string' ? v : undefined;
  } catch {
    return undefined;
  }
}

/** The error JSON for stdout, in the config's version where it is readable. */
export function errorOutput(err: unknown, stdin: Buffer): Record<string, unknown> {
  const v = sniffVersion(stdin);
  return toCniError(err).toJSON(v && isSupported(v) ? v : LATEST_VERSION);
}
