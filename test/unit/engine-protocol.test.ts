import { describe, expect, it } from 'vitest';
import {
  decodeRequest, decodeResponse, encodeRequest, encodeResponse, envMap, frameLength, MAX_REQUEST, ProtocolError,
} from '../../lib/engine/protocol.js';

// The engine's wire format (docs/engine.md): what native/client.c writes and reads byte for byte.
const field = (tag: number, value: Buffer) => {
  const h = Buffer.alloc(5);
  h.writeUInt8(tag, 0);
  h.writeUInt32LE(value.length, 1);
  return Buffer.concat([h, value]);
};
const frame = (body: Buffer, magic = 'CNTS', claimed = body.length) => {
  const h = Buffer.alloc(8);
  h.write(magic, 0, 'latin1');
  h.writeUInt32LE(claimed, 4);
  return Buffer.concat([h, body]);
};
const minimal = () => [field(1, Buffer.from('0123456789abcdef')), field(2, Buffer.from('bridge')), field(4, Buffer.from('{}'))];

describe('engine wire protocol', () => {
  it('a request round-trips, environment order and raw bytes kept', () => {
    const req = {
      build: '0123456789abcdef', name: 'host-local', stdin: Buffer.from([0x7b, 0xff, 0x00, 0x7d]), netnsFd: 5,
      env: [Buffer.from('CNI_COMMAND=ADD'), Buffer.from('X=a=b'), Buffer.from('CNI_COMMAND=DEL')],
    };
    const out = decodeRequest(encodeRequest(req));
    expect(out).toEqual(req);
    // getenv semantics: the first of two entries with one name wins.
    expect(envMap(out.env)).toEqual({ CNI_COMMAND: 'ADD', X: 'a=b' });
  });

  it('the layout is the documented one: CNTS, u32 LE body length, then u8 tag + u32 LE length fields', () => {
    const buf = encodeRequest({ build: 'b', name: 'n', env: [], stdin: Buffer.from('s') });
    expect(buf.toString('hex')).toBe(frame(Buffer.concat([field(1, Buffer.from('b')), field(2, Buffer.from('n')), field(4, Buffer.from('s'))])).toString('hex'));
  });

  it('responses round-trip: done with exit status and both streams, exec with a reason', () => {
    const done = { status: 'done' as const, exit: 1, stdout: Buffer.from('{"code":7}\n'), stderr: Buffer.from('x') };
    expect(decodeResponse(encodeResponse(done))).toEqual(done);
    expect(decodeResponse(encodeResponse({ status: 'exec', reason: 'busy' }))).toEqual({ status: 'exec', reason: 'busy' });
  });

  it('frameLength: undefined until the header is there, then the whole length; bad magic and oversize throw', () => {
    const f = frame(Buffer.concat(minimal()));
    expect(frameLength(f.subarray(0, 7), MAX_REQUEST)).toBeUndefined();
    expect(frameLength(f.subarray(0, 8), MAX_REQUEST)).toBe(f.length);
    expect(() => frameLength(frame(Buffer.alloc(0), 'XXXX'), MAX_REQUEST)).toThrow(ProtocolError);
    expect(() => frameLength(frame(Buffer.alloc(0), 'CNTS', MAX_REQUEST + 1), MAX_REQUEST)).toThrow(/over the limit/);
  });

  it.each([
    ['an unknown field', [...minimal(), field(99, Buffer.from('x'))], /unknown request field 99/],
    ['an environment entry without =', [...minimal(), field(3, Buffer.from('NOEQUALS'))], /KEY=VALUE/],
    ['an environment entry starting with =', [...minimal(), field(3, Buffer.from('=x'))], /KEY=VALUE/],
    ['a name with a slash', [field(1, Buffer.from('b')), field(2, Buffer.from('../bridge')), field(4, Buffer.from('{}'))], /bad plugin name/],
    ['no stdin', minimal().slice(0, 2), /required/],
    ['a netns descriptor that is not a number', [...minimal(), field(5, Buffer.from('3; rm'))], /not a number/],
  ])('refuses %s', (_what, fields, why) => {
    expect(() => decodeRequest(frame(Buffer.concat(fields)))).toThrow(why);
  });

  it('refuses a field that overruns its frame and bytes after it', () => {
    const body = Buffer.concat(minimal());
    const short = Buffer.from(body);
    short.writeUInt32LE(1000, 1); // the first field claims more than there is
    expect(() => decodeRequest(frame(short))).toThrow(/overruns/);
    expect(() => decodeRequest(Buffer.concat([frame(body), Buffer.from('x')]))).toThrow(/trailing/);
  });
});
