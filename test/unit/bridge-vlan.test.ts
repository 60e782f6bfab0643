import { describe, expect, it } from 'vitest';
import { bridgeVlanDelPayload } from '../../lib/netlink/rtnl.js';

/**
 * bridge's preserveDefaultVlan: false removes VLAN 1 from the container's
 * bridge port through RTM_DELLINK on AF_BRIDGE, as the reference does. This
 * machine's kernel has no bridge VLAN filtering, so the request itself is
 * compared with what iproute2 sends for the same change, captured with
 *   strace -f -e trace=sendmsg -e write=3 -xx bridge vlan del dev vethA vid 1
 * (vethA had ifindex 4): nlmsghdr {len 44, RTM_DELLINK, REQUEST|ACK, seq, pid 0},
 * ifinfomsg {AF_BRIDGE, index 4}, IFLA_AF_SPEC {IFLA_BRIDGE_VLAN_INFO {flags 0, vid 1}}.
 */
const IPROUTE2 = Buffer.from(
  '2c000000' + '1100' + '0500' + '90830f6b' + '00000000' + // nlmsghdr (seq is iproute2's, not compared)
    '07000000' + '04000000' + '00000000' + '00000000' + // ifinfomsg: AF_BRIDGE, index 4
    '0c001a00' + '08000200' + '0000' + '0100', // IFLA_AF_SPEC { IFLA_BRIDGE_VLAN_INFO { flags 0, vid 1 } }
  'hex',
);

describe('preserveDefaultVlan: the VLAN delete request', () => {
  it('is byte for byte what `bridge vlan del dev <port> vid 1` sends after the header', () => {
    const body = bridgeVlanDelPayload(4, 1);
    expect(body.toString('hex')).toBe(IPROUTE2.subarray(16).toString('hex'));
    // The header the netlink socket adds: total length, RTM_DELLINK (17), NLM_F_REQUEST|NLM_F_ACK (5).
    expect(IPROUTE2.readUInt32LE(0)).toBe(16 + body.length);
    expect([IPROUTE2.readUInt16LE(4), IPROUTE2.readUInt16LE(6)]).toEqual([17, 5]);
  });

  it('encodes the port index and the VLAN id little-endian where the kernel reads them', () => {
    const b = bridgeVlanDelPayload(0x01020304, 4094);
    expect(b.readInt32LE(4)).toBe(0x01020304);
    expect(b.readUInt16LE(16 + 4 + 4 + 2)).toBe(4094);
    expect(b.readUInt16LE(16 + 2) & 0x8000).toBe(0); // no NLA_F_NESTED, as iproute2 writes it
  });
});
