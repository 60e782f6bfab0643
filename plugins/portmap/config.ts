import { z } from 'zod';
import { netConf, obj } from '../../lib/cni/schema.js';
import { isIP } from '../../lib/ip/index.js';
import { backendName, type Backend } from '../../lib/pf/backend.js';
import { CniError, ErrorCode } from '../../lib/cni/errors.js';

/**
 * portmap's configuration, as the reference reads it: the mappings come
 * from the runtime through the `portMappings` capability
 * (`runtimeConfig.portMappings`); the rest is static config.
 */
const port = z.number().int().min(1, 'port must be 1-65535').max(65535, 'port must be 1-65535');

export const portMapping = obj({
  hostPort: port,
  containerPort: port,
  // Runtimes write lowercase; the reference's iptables calls take any case.
  protocol: z
    .string()
    .default('tcp')
    .transform((p) => p.toLowerCase())
    .pipe(z.enum(['tcp', 'udp', 'sctp'], { message: 'protocol must be tcp, udp or sctp' })),
  hostIP: z
    .string()
    .optional()
    .refine((s) => s === undefined || s === '' || isIP(s), 'hostIP must be an IP address'),
});
export type PortMapping = z.output<typeof portMapping>;

/**
 * Extra matches for the entry rules, as the reference takes them: iptables
 * argv words (`["-d", "1.2.3.4"]`) or nftables expression words (`["ip",
 * "daddr", "1.2.3.4"]`); the first word says which (below). Never a shell
 * string; for nftables nothing that ends or comments out the script's line
 * (`;`, `#`), which would let a condition write rules of its own.
 */
const conditions = z
  .array(z.string().max(256).regex(/^[^\0\n\r]*$/, 'no control characters'))
  .max(64)
  .nullish()
  .refine((c) => conditionsBackend(c) !== 'nftables' || c!.every((w) => !/[;#]/.test(w)), 'nftables conditions must not contain ";" or "#"');

/**
 * The backend a list of conditions is written for, as the reference tells:
 * an iptables match starts with `-` or `!` (`-d`, `-m`, `!`), an nftables
 * expression never does; empty (or a first word that is empty) says nothing.
 */
export function conditionsBackend(c: readonly string[] | null | undefined): Backend | undefined {
  if (!c || c.length === 0 || c[0] === '') return undefined;
  return c[0][0] === '-' || c[0][0] === '!' ? 'iptables' : 'nftables';
}

export const portmapConfig = netConf({
  snat: z.boolean().optional(),
  masqAll: z.boolean().optional(),
  markMasqBit: z.number().int().min(0).max(31).optional(),
  externalSetMarkChain: z
    .string()
    .min(1)
    .max(28)
    .regex(/^[A-Za-z0-9_.:-]+$/, 'not a valid iptables chain name')
    .optional(),
  conditionsV4: conditions,
  conditionsV6: conditions,
  backend: backendName.optional(),
  runtimeConfig: obj({ portMappings: z.array(portMapping).nullish() }).optional(),
}).superRefine((c, ctx) => {
  if (c.externalSetMarkChain !== undefined && c.markMasqBit !== undefined) {
    ctx.addIssue({ code: z.ZodIssueCode.custom, message: 'cannot specify externalSetMarkChain and markMasqBit together' });
  }
  const wrong = c.backend && wrongBackendOptions(c, c.backend);
  if (wrong) ctx.addIssue({ code: z.ZodIssueCode.custom, message: wrong });
});
export type PortmapConfig = z.output<typeof portmapConfig>;

/** The options that belong to one backend only, by backend (the reference's list: externalSetMarkChain, conditions by their syntax). */
export function backendSpecificOptions(c: Pick<PortmapConfig, 'externalSetMarkChain' | 'conditionsV4' | 'conditionsV6'>): Map<Backend, string[]> {
  const out = new Map<Backend, string[]>();
  const note = (b: Backend | undefined, option: string) => b && out.set(b, [...(out.get(b) ?? []), option]);
  if (c.externalSetMarkChain !== undefined) note('iptables', 'externalSetMarkChain');
  note(conditionsBackend(c.conditionsV4), 'conditionsV4');
  note(conditionsBackend(c.conditionsV6), 'conditionsV6');
  return out;
}

/** The reference's message when options of the other backend are configured, else undefined. */
export function wrongBackendOptions(c: Pick<PortmapConfig, 'externalSetMarkChain' | 'conditionsV4' | 'conditionsV6'>, backend: Backend): string | undefined {
  const other: Backend = backend === 'iptables' ? 'nftables' : 'iptables';
  const wrong = backendSpecificOptions(c).get(other);
  return wrong ? `${backend} backend was requested but configuration contains ${other}-specific options [${wrong.join(' ')}]` : undefined;
}

/** For a backend chosen on this host (no `backend` configured): the same refusal, code 7. */
export function requireOptionsOf(c: PortmapConfig, backend: Backend): void {
  const wrong = wrongBackendOptions(c, backend);
  if (wrong) throw new CniError(ErrorCode.InvalidNetworkConfig, wrong, backend === 'iptables' && !c.backend ? 'no "backend" configured: iptables is the default; set "backend": "nftables" for these options' : '');
}
