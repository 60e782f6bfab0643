import { CniError, ErrorCode } from '../cni/errors.js';
import { NFT_NAME, nftApply, nftListTable } from './index.js';

/**
 * bridge's `macspoofchk`: frames entering the bridge from a container's host
 * veth must carry that container's MAC, others are dropped. The reference's
 * nftables layout, so either plugin's DEL removes the other's rules: table
 * `bridge nat`, base chain `PREROUTING` (filter hook, priority -300), a jump
 * `iifname <veth>` to `cni-br-iface-<id>`, which jumps to
 * `cni-br-iface-<id>-mac`: `ether saddr <mac> return`, then `drop`; every
 * rule commented `macspoofchk-<id>`, with <id> = `<containerID>-<ifname>`.
 */
const TABLE = 'bridge nat';
const BASE = 'PREROUTING';

export const spoofCheckId = (containerId: string, ifname: string) => `${containerId}-${ifname}`;
const chains = (id: string) => ({ iface: `cni-br-iface-${id}`, mac: `cni-br-iface-${id}-mac` });
const comment = (id: string) => `macspoofchk-${id}`;

function checkNames(...names: string[]): void {
  for (const n of names) {
    if (!NFT_NAME.test(n)) throw new CniError(ErrorCode.InvalidEnvironment, 'macspoofchk needs container ids and interface names of letters, digits, ".", "_" and "-"', n);
  }
}

/** One nft transaction: the chains (re)made empty, then the rules. */
export async function spoofCheckSetup(hostIface: string, mac: string, id: string): Promise<void> {
  checkNames(hostIface, id);
  if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(mac)) throw new CniError(ErrorCode.InvalidNetworkConfig, 'macspoofchk: not a MAC address', mac);
  const c = chains(id);
  const note = `comment "${comment(id)}"`;
  await nftApply(
    [
      `add table ${TABLE}`,
      `add chain ${TABLE} ${BASE} { type filter hook prerouting priority -300; policy accept; }`,
      `add chain ${TABLE} ${c.iface}`,
      `add chain ${TABLE} ${c.mac}`,
      `flush chain ${TABLE} ${c.iface}`,
      `flush chain ${TABLE} ${c.mac}`,
      `add rule ${TABLE} ${BASE} iifname "${hostIface}" jump ${c.iface} ${note}`,
      `add rule ${TABLE} ${c.iface} jump ${c.mac} ${note}`,
      `add rule ${TABLE} ${c.mac} ether saddr ${mac.toLowerCase()} return ${note}`,
      `add rule ${TABLE} ${c.mac} drop ${note}`,
      '',
    ].join('\n'),
  );
}

/** Removes the container's jump and chains, found by name and comment: no veth or MAC needed. */
export async function spoofCheckTeardown(id: string): Promise<void> {
  if (!NFT_NAME.test(id)) return; // setup refused such an id: nothing of ours can exist
  const table = await nftListTable('bridge', 'nat');
  if (!table) return;
  const c = chains(id);
  const lines = table.rules.filter((r) => r.chain === BASE && r.comment === comment(id)).map((r) => `delete rule ${TABLE} ${BASE} handle ${r.handle}`);
  // Flushed first: a chain is deleted only when nothing refers to it and it is empty.
  const present = [c.iface, c.mac].filter((name) => table.chains.has(name));
  lines.push(...present.map((name) => `flush chain ${TABLE} ${name}`), ...present.map((name) => `delete chain ${TABLE} ${name}`));
  if (lines.length) await nftApply(`${lines.join('\n')}\n`);
}

/** CHECK: the jump from the host veth and the MAC rule are there. */
export async function spoofCheckVerify(hostIface: string, mac: string, id: string): Promise<void> {
  const fail = (msg: string) => new CniError(ErrorCode.CheckFailed, `macspoofchk: ${msg}`);
  const table = await nftListTable('bridge', 'nat');
  if (!table) throw fail('table bridge nat is missing');
  const c = chains(id);
  for (const name of [BASE, c.iface, c.mac]) if (!table.chains.has(name)) throw fail(`chain ${name} is missing`);
  const mine = table.rules.filter((r) => r.comment === comment(id));
  if (!mine.some((r) => r.chain === BASE && JSON.stringify(r.raw).includes(JSON.stringify(hostIface)))) throw fail(`no jump for ${hostIface} in ${BASE}`);
  if (!mine.some((r) => r.chain === c.mac && JSON.stringify(r.raw).includes(mac.toLowerCase()))) throw fail(`no rule for ${mac} in ${c.mac}`);
  if (!mine.some((r) => r.chain === c.mac && JSON.stringify(r.raw).includes('"drop"'))) throw fail(`no drop rule in ${c.mac}`);
}
