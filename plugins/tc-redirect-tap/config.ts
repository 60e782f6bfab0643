import { z } from 'zod';
import { CniError, ErrorCode } from '../../lib/cni/errors.js';
import { netConf } from '../../lib/cni/schema.js';

// No '%': the kernel would take it as a name template ("tap%d") and pick another name.
const ifname = z
  .string()
  .regex(/^[^/:%\s]+$/, 'not a valid interface name')
  .refine((s) => Buffer.byteLength(s) <= 15 && s !== '.' && s !== '..', 'not a valid interface name (at most 15 bytes, not . or ..)');
const id = z.number().int().min(0).max(0xfffffffe); // (uid_t)-1 means "no owner" to TUNSETOWNER

export const tcRedirectTapConfig = netConf({
  tapName: ifname.default('tap0'),
  /** uid (and gid) allowed to attach the TAP without CAP_NET_ADMIN; unset: only CAP_NET_ADMIN. */
  tapOwner: id.optional(),
  tapGroup: id.optional(),
  multiQueue: z.boolean().default(false),
});
export type TcRedirectTapConfig = z.output<typeof tcRedirectTapConfig>;

/** The CNI_ARGS keys AWS's tc-redirect-tap reads; they override the configuration, as there. */
export const ARG_NAME = 'TC_REDIRECT_TAP_NAME';
export const ARG_UID = 'TC_REDIRECT_TAP_UID';
export const ARG_GID = 'TC_REDIRECT_TAP_GID';
export const KNOWN_ARGS = [ARG_NAME, ARG_UID, ARG_GID] as const;

export interface TapSettings {
  name: string;
  owner?: number;
  group?: number;
  multiQueue: boolean;
}

/** The TAP this call is about: the configuration with CNI_ARGS laid over it. */
export function tapSettings(cfg: TcRedirectTapConfig, args: Map<string, string>): TapSettings {
  const bad = (key: string, why: string, value: string) => new CniError(ErrorCode.InvalidNetworkConfig, `invalid CNI_ARGS ${key}: ${why}`, value);
  const num = (key: string): number | undefined => {
    const v = args.get(key);
    if (v === undefined) return undefined;
    const r = id.safeParse(/^[0-9]+$/.test(v) ? Number(v) : NaN);
    if (!r.success) throw bad(key, 'not a uid/gid (0 to 4294967294)', v);
    return r.data;
  };
  let name = cfg.tapName;
  const argName = args.get(ARG_NAME);
  if (argName !== undefined) {
    const r = ifname.safeParse(argName);
    if (!r.success) throw bad(ARG_NAME, 'not a valid interface name (at most 15 bytes, no / : % or whitespace)', argName);
    name = r.data;
  }
  const owner = num(ARG_UID) ?? cfg.tapOwner;
  const group = num(ARG_GID) ?? cfg.tapGroup;
  return { name, multiQueue: cfg.multiQueue, ...(owner !== undefined ? { owner } : {}), ...(group !== undefined ? { group } : {}) };
}
