import { createNetlink } from 'netlink/dist/netlink';
import { FlagsGet } from 'netlink/dist/constants';
import { parseAttrs } from './attrs.js';

/**
 * Connection tracking over ctnetlink (NETLINK_NETFILTER), in the namespace
 * this process is in. The netlink package knows the protocol family but not
 * ctnetlink's messages, so the few this suite needs are built here: a dump
 * of the table and the deletion of entries, as `conntrack -L` / `-D` would.
 */
const NETLINK_NETFILTER = 12;
const NFNL_SUBSYS_CTNETLINK = 1;
const IPCTNL_MSG_CT_GET = 1;
const IPCTNL_MSG_CT_DELETE = 2;
const NLM_F_REQUEST = 1;
const NLM_F_ACK = 4;
const CTA_TUPLE_ORIG = 1;
const CTA_TUPLE_PROTO = 2;
const CTA_PROTO_NUM = 1;
const CTA_PROTO_DST_PORT = 3;
const IPPROTO_UDP = 17;
const AF_INET = 2;
const AF_INET6 = 10;

const msgType = (m: number) => (NFNL_SUBSYS_CTNETLINK << 8) | m;
/** struct nfgenmsg: family, version (NFNETLINK_V0), resource id (big endian). */
const nfgenmsg = (family: number) => Buffer.from([family, 0, 0, 0]);

/** The original direction's protocol and destination port of a dumped entry. */
function origProto(attrs: Buffer): { proto?: number; dport?: number } {
  const tuple = parseAttrs(attrs).get(CTA_TUPLE_ORIG);
  const proto = tuple && parseAttrs(tuple).get(CTA_TUPLE_PROTO);
  if (!proto) return {};
  const p = parseAttrs(proto);
  return { proto: p.get(CTA_PROTO_NUM)?.readUInt8(0), dport: p.get(CTA_PROTO_DST_PORT)?.readUInt16BE(0) };
}

/**
 * Deletes the UDP entries whose original destination port is one of `ports`
 * (what the reference portmap does on ADD: an entry made before the mapping
 * existed would keep steering a client's datagrams past the new DNAT for as
 * long as the client keeps sending). Returns how many were deleted; an entry
 * gone meanwhile (ENOENT) is not an error.
 */
export async function deleteUdpEntries(family: 4 | 6, ports: number[]): Promise<number> {
  if (ports.length === 0) return 0;
  const wanted = new Set(ports);
  const af = family === 4 ? AF_INET : AF_INET6;
  const sock = createNetlink(NETLINK_NETFILTER);
  try {
    const [msgs] = await sock.request(msgType(IPCTNL_MSG_CT_GET), [nfgenmsg(af)], { flags: NLM_F_REQUEST | FlagsGet.DUMP });
    let deleted = 0;
    for (const m of msgs) {
      const attrs = m.data.subarray(4);
      const { proto, dport } = origProto(attrs);
      if (proto !== IPPROTO_UDP || dport === undefined || !wanted.has(dport)) continue;
      try {
        // The entry's attributes as dumped (CTA_ID among them, so only that very entry goes).
        await sock.request(msgType(IPCTNL_MSG_CT_DELETE), [nfgenmsg(af), attrs], { flags: NLM_F_REQUEST | NLM_F_ACK });
        deleted++;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
    return deleted;
  } finally {
    sock.close();
  }
}
