/** Error codes of the CNI specification, plus the suite's own (100 and up). */
export const ErrorCode = {
  IncompatibleVersion: 1,
  UnsupportedField: 2,
  UnknownContainer: 3,
  InvalidEnvironment: 4,
  IOFailure: 5,
  DecodingFailure: 6,
  InvalidNetworkConfig: 7,
  /** CNI_NETNS unusable for this call (libcni's ErrInvalidNetNS): here, the caller's own namespace. */
  InvalidNetNS: 8,
  TryAgainLater: 11,
  NotAvailable: 50,
  Limited: 51,
  // Suite-specific codes (the spec reserves 100+ for plugins).
  /** The IPAM range has no free address left. */
  AddressExhausted: 110,
  /** A requested address is outside the ranges or taken by another container. */
  AddressUnavailable: 111,
  /** The kernel refused a netlink request (missing feature, conflicting link, ...). */
  KernelRefused: 112,
  /** iptables-restore or iptables-save failed. */
  IptablesFailed: 113,
  /** A delegated plugin could not be found or run. */
  DelegateFailed: 114,
  /** CHECK found the container's state different from prevResult. */
  CheckFailed: 115,
  /** A DNS name or alias is already taken by another container on the network. */
  NameTaken: 116,
  /** Anything unexpected; the Go reference uses the same number. */
  Internal: 999,
} as const;

export class CniError extends Error {
  constructor(
    readonly code: number,
    readonly msg: string,
    readonly details = '',
  ) {
    super(details ? `${msg}: ${details}` : msg);
    this.name = 'CniError';
  }

  toJSON(cniVersion: string): Record<string, unknown> {
    const out: Record<string, unknown> = { cniVersion, code: this.code, msg: this.msg };
    if (this.details) out.details = this.details;
    return out;
  }
}

/** Wraps anything thrown into a CniError, keeping CniErrors as they are. */
export function toCniError(err: unknown, code: number = ErrorCode.Internal, msg?: string): CniError {
  if (err instanceof CniError) return err;
  const text = err instanceof Error ? err.message : String(err);
  return new CniError(code, msg ?? text, msg ? text : '');
}
