/**
 * The engine's wire format (docs/engine.md, "Wire protocol"): one frame each
 * way per connection, `CNTS`, u32 body length, then fields `u8 tag, u32
 * length, bytes`, little-endian. Pure: encoding and decoding only, shared by
 * the engine (lib/engine/server.ts) and the Node client (lib/engine/client.ts).
 */
export const MAGIC = Buffer.from('CNTS', 'latin1');
export const HEADER = 8;
/** A request body larger than this is refused; the client takes the exec path for it instead. */
export const MAX_REQUEST = 4 * 1024 * 1024;
export const MAX_RESPONSE = 64 * 1024 * 1024;

export const Tag = {
  build: 1,
  name: 2,
  env: 3,
  stdin: 4,
  netnsFd: 5,
  status: 16,
  exit: 17,
  stdout: 18,
  stderr: 19,
  reason: 20,
} as const;

export const Status = { done: 0, exec: 1 } as const;

export interface Request {
  build: string;
  name: string;
  /** KEY=VALUE entries in the caller's order. */
  env: Buffer[];
  stdin: Buffer;
  netnsFd?: number;
}

export type Response =
  | { status: 'done'; exit: number; stdout: Buffer; stderr: Buffer }
  | { status: 'exec'; reason: string };

export class ProtocolError extends Error {}

function field(tag: number, value: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt8(tag, 0);
  head.writeUInt32LE(value.length, 1);
  return Buffer.concat([head, value]);
}

function frame(fields: Buffer[]): Buffer {
  const body = Buffer.concat(fields);
  const head = Buffer.alloc(HEADER);
  MAGIC.copy(head, 0);
  head.writeUInt32LE(body.length, 4);
  return Buffer.concat([head, body]);
}

function* fields(body: Buffer): Generator<[number, Buffer]> {
  for (let at = 0; at < body.length; ) {
    if (at + 5 > body.length) throw new ProtocolError('truncated field header');
    const tag = body.readUInt8(at);
    const len = body.readUInt32LE(at + 1);
    if (at + 5 + len > body.length) throw new ProtocolError(`field ${tag} overruns the frame`);
    yield [tag, body.subarray(at + 5, at + 5 + len)];
    at += 5 + len;
  }
}

/**
 * How long the frame at the start of `buf` is, once its header is there
 * (undefined before); throws on a bad magic or a body over `max`.
 */
export function frameLength(buf: Buffer, max: number): number | undefined {
  if (buf.length < HEADER) return undefined;
  if (!buf.subarray(0, 4).equals(MAGIC)) throw new ProtocolError('bad magic');
  const len = buf.readUInt32LE(4);
  if (len > max) throw new ProtocolError(`frame of ${len} bytes is over the limit of ${max}`);
  return HEADER + len;
}

export function encodeRequest(r: Request): Buffer {
  const out = [field(Tag.build, Buffer.from(r.build, 'latin1')), field(Tag.name, Buffer.from(r.name, 'utf8'))];
  for (const e of r.env) out.push(field(Tag.env, e));
  out.push(field(Tag.stdin, r.stdin));
  if (r.netnsFd !== undefined) out.push(field(Tag.netnsFd, Buffer.from(String(r.netnsFd), 'latin1')));
  return frame(out);
}

export function decodeRequest(buf: Buffer): Request {
  const len = frameLength(buf, MAX_REQUEST);
  if (len === undefined || len !== buf.length) throw new ProtocolError('incomplete or trailing bytes');
  let build: string | undefined;
  let name: string | undefined;
  let stdin: Buffer | undefined;
  let netnsFd: number | undefined;
  const env: Buffer[] = [];
  for (const [tag, v] of fields(buf.subarray(HEADER))) {
    switch (tag) {
      case Tag.build:
        build = v.toString('latin1');
        break;
      case Tag.name:
        name = v.toString('utf8');
        break;
      case Tag.env:
        if (v.indexOf(0x3d) <= 0 || v.includes(0)) throw new ProtocolError('environment entry is not KEY=VALUE');
        env.push(Buffer.from(v));
        break;
      case Tag.stdin:
        stdin = Buffer.from(v);
        break;
      case Tag.netnsFd: {
        const s = v.toString('latin1');
        if (!/^\d{1,9}$/.test(s)) throw new ProtocolError('netns descriptor is not a number');
        netnsFd = Number(s);
        break;
      }
      default:
        throw new ProtocolError(`unknown request field ${tag}`);
    }
  }
  if (build === undefined || name === undefined || stdin === undefined) throw new ProtocolError('build, name and stdin are required');
  if (name === '' || name.includes('/') || name.includes('\0')) throw new ProtocolError('bad plugin name');
  return { build, name, env, stdin, netnsFd };
}

export function encodeResponse(r: Response): Buffer {
  if (r.status === 'exec') return frame([field(Tag.status, Buffer.from([Status.exec])), field(Tag.reason, Buffer.from(r.reason, 'utf8'))]);
  const exit = Buffer.alloc(4);
  exit.writeUInt32LE(r.exit >>> 0, 0);
  return frame([field(Tag.status, Buffer.from([Status.done])), field(Tag.exit, exit), field(Tag.stdout, r.stdout), field(Tag.stderr, r.stderr)]);
}

export function decodeResponse(buf: Buffer): Response {
  const len = frameLength(buf, MAX_RESPONSE);
  if (len === undefined || len !== buf.length) throw new ProtocolError('incomplete or trailing bytes');
  let status: number | undefined;
  let exit = 0;
  let stdout = Buffer.alloc(0);
  let stderr = Buffer.alloc(0);
  let reason = '';
  for (const [tag, v] of fields(buf.subarray(HEADER))) {
    if (tag === Tag.status && v.length === 1) status = v[0];
    else if (tag === Tag.exit && v.length === 4) exit = v.readUInt32LE(0);
    else if (tag === Tag.stdout) stdout = Buffer.from(v);
    else if (tag === Tag.stderr) stderr = Buffer.from(v);
    else if (tag === Tag.reason) reason = v.toString('utf8');
    else throw new ProtocolError(`unknown response field ${tag}`);
  }
  if (status === Status.exec) return { status: 'exec', reason };
  if (status === Status.done) return { status: 'done', exit, stdout, stderr };
  throw new ProtocolError('response without a status');
}

/** The environment entries as a variable map (first one wins, as getenv). */
export function envMap(entries: Buffer[]): Record<string, string> {
  const out: Record<string, string> = Object.create(null);
  for (const e of entries) {
    const s = e.toString('utf8');
    const eq = s.indexOf('=');
    const key = s.slice(0, eq);
    if (!(key in out)) out[key] = s.slice(eq + 1);
  }
  return out;
}
