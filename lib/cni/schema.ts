import { z } from 'zod';

/**
 * Go's encoding/json matches object keys to struct fields case-insensitively,
 * and configs in the wild rely on it (`IPAM`, `bandWidth`). `obj` gives a zod
 * object the same tolerance: an exact key wins, otherwise the first key that
 * matches ignoring case is renamed to the schema's spelling. Unknown keys are
 * dropped, never an error (the spec says so).
 */
export function obj<S extends z.ZodRawShape>(shape: S) {
  const canonical = new Map(Object.keys(shape).map((k) => [k.toLowerCase(), k]));
  return z.preprocess((input) => {
    if (input === null || typeof input !== 'object' || Array.isArray(input)) return input;
    const src = input as Record<string, unknown>;
    const out: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(src)) {
      const target = canonical.get(key.toLowerCase());
      if (target === undefined) continue;
      if (key !== target && Object.prototype.hasOwnProperty.call(src, target)) continue;
      if (out[target] === undefined || key === target) out[target] = value;
    }
    return out;
  }, z.object(shape));
}

/** The keys every network configuration has, and what runtimes inject. */
export const baseShape = {
  cniVersion: z.string().optional(),
  // The name is a file name to the plugins that keep state (host-local's
  // <dataDir>/<name>, dnsname's directory): at most 255 bytes.
  name: z
    .string()
    .regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/, 'network name must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$')
    .max(255, 'network name is longer than 255 characters'),
  type: z.string().min(1),
  prevResult: z.unknown().optional(),
  runtimeConfig: z.record(z.string(), z.unknown()).optional(),
  args: z.record(z.string(), z.unknown()).optional(),
  'cni.dev/valid-attachments': z
    .array(obj({ containerID: z.string(), ifname: z.string() }))
    .optional(),
};

export function netConf<S extends z.ZodRawShape>(shape: S) {
  return obj({ ...baseShape, ...shape });
}

export type BaseNetConf = z.output<ReturnType<typeof netConf<{}>>>;

/** Formats a zod error into one line per problem, for CNI error details. */
export function describeZodError(err: z.ZodError): string {
  return err.issues
    .map((i) => `${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`)
    .join('; ');
}
