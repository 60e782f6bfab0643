import { CniError, ErrorCode, toCniError } from './errors.js';

/** Every version this suite reads and writes, oldest first. */
export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] as const;
export type CniVersion = (typeof SUPPORTED_VERSIONS)[number];
export const LATEST_VERSION: CniVersion = '1.1.0';

export function isSupported(v: string): v is CniVersion {
  return (SUPPORTED_VERSIONS as readonly string[]).includes(v);
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

export function requireSupported(v: string | undefined): CniVersion {
  const version = v === undefined || v === '' ? '0.1.0' : v;
  if (!isSupported(version)) {
    throw new CniError(
      ErrorCode.IncompatibleVersion,
      'incompatible CNI versions',
      `config is "${version}", plugin supports ${JSON.stringify(SUPPORTED_VERSIONS)}`,
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

/** The VERSION command's answer: the caller's version echoed when we speak it. */
export function versionInfo(asked: string | undefined): { cniVersion: string; supportedVersions: string[] } {
  return {
    cniVersion: asked !== undefined && isSupported(asked) ? asked : LATEST_VERSION,
    supportedVersions: [...SUPPORTED_VERSIONS],
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
