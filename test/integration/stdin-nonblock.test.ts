import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, must, Sandbox } from '../helpers/sandbox.js';
import { modeEnv } from '../helpers/mode.js';

/**
 * §5 of issue 13: a runtime may give a plugin a non-blocking stdin
 * (O_NONBLOCK belongs to the open file, shared with the runtime). Reading it
 * by retrying EAGAIN at once burnt a CPU for as long as the runtime took to
 * write (3.5 CPU-seconds for 4 idle seconds). Here a small C driver (built
 * with gcc for the test) makes the stdin — an anonymous pipe, a socket
 * pair, a named FIFO — sets O_NONBLOCK on it, starts the binary, writes the
 * config only after ~3 s, and reports the child's own CPU time from wait4().
 * The answer must be right and the CPU time well under a second.
 *
 * The binary runs in a sandbox's namespace (through `ip netns exec`, or
 * nsenter in engine mode: the same process, exec'd): in engine mode the
 * client reads the stdin (and the engine it starts is the sandbox's, not
 * one in the machine's namespace).
 */
const DRIVER = `
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* nbstdin <pipe|socket|fifo> <delay-ms> <input-file> <rusage-out> <fifo-path> <program> [argv0 args...] */
int main(int argc, char **argv) {
  if (argc < 8) return 2;
  const char *mode = argv[1];
  long delay = atol(argv[2]);
  static char input[1 << 20];
  FILE *f = fopen(argv[3], "r");
  if (!f) return 2;
  size_t len = fread(input, 1, sizeof input, f);
  fclose(f);
  int fds[2];
  if (!strcmp(mode, "pipe")) {
    if (pipe(fds)) return 3;
  } else if (!strcmp(mode, "socket")) {
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds)) return 3;
  } else {
    if (mkfifo(argv[5], 0600)) return 3;
    fds[0] = open(argv[5], O_RDONLY | O_NONBLOCK);
    fds[1] = open(argv[5], O_WRONLY);
    if (fds[0] < 0 || fds[1] < 0) return 3;
  }
  if (fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)) return 4;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[0], 0);
    close(fds[0]);
    close(fds[1]);
    execv(argv[6], argv + 7);
    _exit(127);
  }
  close(fds[0]);
  struct timespec ts = { delay / 1000, (delay % 1000) * 1000000L };
  nanosleep(&ts, NULL);
  for (size_t off = 0; off < len;) {
    ssize_t n = write(fds[1], input + off, len - off);
    if (n <= 0) return 5;
    off += (size_t)n;
  }
  close(fds[1]);
  int status;
  struct rusage ru;
  if (wait4(pid, &status, 0, &ru) != pid) return 6;
  FILE *out = fopen(argv[4], "w");
  fprintf(out, "%ld %ld %d\\n", ru.ru_utime.tv_sec * 1000000L + ru.ru_utime.tv_usec, ru.ru_stime.tv_sec * 1000000L + ru.ru_stime.tv_usec,
          WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
  fclose(out);
  return 0;
}
`;

let dir: string;
let driver: string;
let sb: Sandbox;
beforeAll(() => {
  sb = new Sandbox('stdin');
  dir = mkdtempSync(join(tmpdir(), 'cnits-stdin-'));
  writeFileSync(join(dir, 'nbstdin.c'), DRIVER);
  driver = join(dir, 'nbstdin');
  must(['gcc', '-O2', '-Wall', '-o', driver, join(dir, 'nbstdin.c')]);
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
  sb?.cleanup();
});

/** The driver execv()s without a PATH search: the prefix's own program by its full path. */
const fullPath = (cmd: string) => ['/usr/sbin', '/usr/bin', '/sbin', '/bin'].map((d) => join(d, cmd)).find((p) => existsSync(p)) ?? cmd;

let n = 0;
function run(mode: string, program: string, argv: string[], env: Record<string, string>, input: string, delayMs = 3000) {
  const tag = `${mode}-${++n}`;
  const inputFile = join(dir, `${tag}.in`);
  const usage = join(dir, `${tag}.rusage`);
  writeFileSync(inputFile, input);
  // argv[0] (the name the binary is invoked by) becomes the program's path: its basename names the plugin all the same.
  const inNs = sb.pluginArgv(program, ...argv.slice(1));
  const r = spawnSync(driver, [mode, String(delayMs), inputFile, usage, join(dir, `${tag}.fifo`), fullPath(inNs[0]), ...inNs], { env: { PATH: process.env.PATH ?? '', ...modeEnv(), ...env }, encoding: 'utf8' });
  expect(r.status, `driver: ${r.stderr}`).toBe(0);
  const [utime, stime, code] = readFileSync(usage, 'utf8').trim().split(' ').map(Number);
  return { stdout: r.stdout, stderr: r.stderr, code, cpuSeconds: (utime + stime) / 1e6 };
}

describe('a non-blocking stdin that stays idle before the config arrives', () => {
  const versions = { cniVersion: '1.0.0', supportedVersions: expect.arrayContaining(['0.4.0', '1.0.0', '1.1.0']) };
  for (const mode of ['pipe', 'socket', 'fifo']) {
    it(`is waited for, not spun on (${mode}): the loader's VERSION and the bundle's path`, () => {
      // The loader answers VERSION for a plugin name; `cni-ts loopback` goes through the bundle (src/main.ts).
      const paths = [
        ['loader', join(BIN, 'loopback'), ['loopback']],
        ['bundle', join(BIN, 'cni-ts'), ['cni-ts', 'loopback']],
      ] as const;
      for (const [what, program, argv] of paths) {
        // The same call with its input there at once: what starting Node costs on this machine right now.
        const base = run(mode, program, [...argv], { CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}', 0);
        const r = run(mode, program, [...argv], { CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}');
        expect(r.code, `${what}: ${r.stdout}${r.stderr}`).toBe(0);
        expect(JSON.parse(r.stdout), what).toEqual(versions);
        const msg = `${what} used ${r.cpuSeconds} s of CPU while waiting ~3 s for its stdin (${base.cpuSeconds} s without waiting)`;
        // A spinning reader gets ~1 CPU-second per idle second on a quiet machine, still ~0.8 on this busy one.
        expect(r.cpuSeconds, msg).toBeLessThan(1);
        expect(r.cpuSeconds - base.cpuSeconds, msg).toBeLessThan(0.5);
      }
    });
  }

  it('still reads a config larger than a pipe buffer completely', () => {
    // ~1 MiB: more than one pipe buffer, written after the idle time.
    const big = JSON.stringify({ cniVersion: '1.0.0', pad: 'x'.repeat(1_000_000) });
    const r = run('pipe', join(BIN, 'loopback'), ['loopback'], { CNI_COMMAND: 'VERSION' }, big);
    expect(r.code, r.stdout).toBe(0);
    expect(JSON.parse(r.stdout).cniVersion).toBe('1.0.0');
  });
});
