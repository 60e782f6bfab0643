import { CniError, ErrorCode } from './errors.js';

export const COMMANDS = ['ADD', 'DEL', 'CHECK', 'VERSION', 'STATUS', 'GC'] as const;
export type Command = (typeof COMMANDS)[number];

/** The CNI_* variables, validated for the command they came with. */
export interface CniEnv {
  command: Command;
  containerId: string;
  netns: string;
  ifname: string;
  args: string;
  path: string[];
  /**
   * CNI_NETNS_OVERRIDE: the runtime states that CNI_NETNS may be the
   * namespace it calls from (libcni's variable, "1" or "true" in any case).
   */
  netnsOverride: boolean;
}

// Which variables each command needs (as the reference skel requires them).
const REQUIRED: Record<string, Command[]> = {
  CNI_CONTAINERID: ['ADD', 'CHECK', 'DEL'],
  CNI_NETNS: ['ADD', 'CHECK'],
  CNI_IFNAME: ['ADD', 'CHECK', 'DEL'],
  CNI_PATH: ['ADD', 'CHECK', 'DEL', 'GC', 'STATUS'],
};

const CONTAINER_ID = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

export function validateContainerId(id: string): void {
  if (!CONTAINER_ID.test(id)) {
    throw new CniError(ErrorCode.InvalidEnvironment, 'invalid characters in containerID', id);
  }
}

/**
 * Linux's rules for interface names: at most 15 bytes, no '/', ':' or spaces;
 * and no '%': the kernel takes a name with '%' as a template ("eth%d") and
 * picks a free one, so the interface would never have the name asked for
 * (and could not be found, nor cleaned up, by it).
 */
export function validateIfname(name: string): void {
  const bad = (why: string) => new CniError(ErrorCode.InvalidEnvironment, why, name);
  if (name === '') throw bad('interface name is empty');
  if (Buffer.byteLength(name) > 15) throw bad('interface name is too long (at most 15 bytes)');
  if (name === '.' || name === '..') throw bad('interface name is . or ..');
  if (/[/:\s]/.test(name)) throw bad("interface name contains '/', ':' or whitespace");
  if (name.includes('%')) throw bad("interface name contains '%' (the kernel would take it as a name template)");
}

export function readEnv(vars: NodeJS.ProcessEnv): CniEnv {
  const command = vars.CNI_COMMAND ?? '';
  if (command === '') {
    throw new CniError(ErrorCode.InvalidEnvironment, 'required env variables [CNI_COMMAND] missing');
  }
  if (!(COMMANDS as readonly string[]).includes(command)) {
    throw new CniError(ErrorCode.InvalidEnvironment, `unknown CNI_COMMAND: ${command}`);
  }
  const cmd = command as Command;
  const missing = Object.entries(REQUIRED)
    .filter(([name, cmds]) => cmds.includes(cmd) && !vars[name])
    .map(([name]) => name);
  if (missing.length) {
    throw new CniError(
      ErrorCode.InvalidEnvironment,
      `required env variables [${missing.join(',')}] missing`,
    );
  }
  const env: CniEnv = {
    command: cmd,
    containerId: vars.CNI_CONTAINERID ?? '',
    netns: vars.CNI_NETNS ?? '',
    ifname: vars.CNI_IFNAME ?? '',
    args: vars.CNI_ARGS ?? '',
    path: (vars.CNI_PATH ?? '').split(':').filter((p) => p !== ''),
    netnsOverride: /^(1|true)$/i.test(vars.CNI_NETNS_OVERRIDE ?? ''),
  };
  if (REQUIRED.CNI_CONTAINERID.includes(cmd)) validateContainerId(env.containerId);
  if (REQUIRED.CNI_IFNAME.includes(cmd)) validateIfname(env.ifname);
  return env;
}
