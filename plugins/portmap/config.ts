import { z } from 'zod';
import { netConf, obj } from '../../lib/cni/schema.js';
import { isIP } from '../../lib/ip/index.js';

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

/** Extra iptables matches for the entry rules: argv words, never a shell string. */
const conditions = z
  .array(z.string().max(256).regex(/^[^\0\n\r]*$/, 'no control characters'))
  .max(64)
  .nullish();

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
  backend: z.enum(['iptables', 'nftables']).optional(),
  runtimeConfig: obj({ portMappings: z.array(portMapping).nullish() }).optional(),
}).superRefine((c, ctx) => {
  if (c.externalSetMarkChain !== undefined && c.markMasqBit !== undefined) {
    ctx.addIssue({ code: z.ZodIssueCode.custom, message: 'cannot specify externalSetMarkChain and markMasqBit together' });
  }
});
export type PortmapConfig = z.output<typeof portmapConfig>;
