// TEMPORARY probe (crash/fuzz helper): removed before the report.
import { it } from 'vitest';
import { FuzzWorld } from '../fuzz/harness.js';
import { baseCase, Rng } from '../fuzz/generate.js';
import { writeFileSync } from 'node:fs';

it('probe', async () => {
  const w = new FuzzWorld(1, 'probe');
  const out: string[] = [];
  try {
    for (const plugin of ['bridge', 'firewall', 'aos-firewall', 'dnsname', 'traffic-accounting', 'portmap']) {
      let nfts = 0;
      for (let v = 0; v < 40 && nfts < 2; v++) {
        const id = `prb${v}`;
        const base = baseCase(plugin, new Rng(1000 + v), id, 'ADD');
        if ((base.config as any).backend !== 'nftables' && (base.config as any).ipMasqBackend !== 'nftables') continue;
        if (plugin === 'bridge' && !(base.config as any).ipMasq) continue;
        nfts++;
        const before = w.snapshot();
        const c = { env: base.env, stdin: Buffer.from(JSON.stringify(base.config)) };
        const add = await w.run(plugin, c, w.slots[0], 30000);
        const mid = w.snapshot();
        const del = await w.run(plugin, { ...c, env: { ...c.env, CNI_COMMAND: 'DEL' } }, w.slots[0], 30000);
        const after = w.snapshot();
        out.push(`=== ${plugin} ${id} add ${add.code} ${add.stdout.toString().slice(0, 200)} del ${del.code} ${del.stdout.toString().slice(0, 200)}`);
        out.push('--- during (new vs before):', ...mid.filter((l) => !before.includes(l)));
        out.push('--- after (new vs before):', ...after.filter((l) => !before.includes(l)));
        out.push('--- after (gone vs before):', ...before.filter((l) => !after.includes(l)));
      }
    }
  } finally {
    writeFileSync('/tmp/probe/out.txt', out.join('\n') + '\n');
    w.cleanup();
  }
}, 600000);
