/** Phase timings on stderr when CNI_TS_TRACE is set (for `make bench` investigations). */
let on: boolean | undefined;
export function trace(what: string): void {
  on ??= Boolean(process.env.CNI_TS_TRACE); // read at run time, never at snapshot time
  if (on) process.stderr.write(`[trace] ${performance.now().toFixed(1)} ms ${what}\n`);
}
