import { describe, expect, it } from 'vitest';
import { openDb, periodStart, TrafficMonitor, type Iptables } from '../../manager/traffic.js';
import { parseSave, type Batch, type TableState } from '../../lib/iptables/index.js';

describe('accounting periods (UTC)', () => {
  const t = new Date(Date.UTC(2026, 10, 24, 13, 45, 30));
  it('start where they should', () => {
    expect(new Date(periodStart(t, 'minute')).toISOString()).toBe('2026-11-24T13:45:00.000Z');
    expect(new Date(periodStart(t, 'hour')).toISOString()).toBe('2026-11-24T13:00:00.000Z');
    expect(new Date(periodStart(t, 'day')).toISOString()).toBe('2026-11-24T00:00:00.000Z');
    expect(new Date(periodStart(t, 'month')).toISOString()).toBe('2026-11-01T00:00:00.000Z');
    expect(new Date(periodStart(t, 'year')).toISOString()).toBe('2026-01-01T00:00:00.000Z');
  });
});

/** An in-memory filter table whose counters the test sets and whose batches it applies. */
class FakeTable implements Iptables {
  bytes = { in: 0, out: 0 };
  rules = new Set(['-A AOS_h_IN -d 10.0.0.2/32', '-A AOS_h_OUT -s 10.0.0.2/32']);
  save = async (): Promise<TableState> => {
    const lines = [...this.rules].map((r) => `[1:${r.includes('_IN') ? this.bytes.in : this.bytes.out}] ${r}`);
    return parseSave(`*filter\n:AOS_h_IN - [0:0]\n:AOS_h_OUT - [0:0]\n${lines.join('\n')}\nCOMMIT\n`).get('filter')!;
  };
  apply = async (_f: number, batches: Batch[]) => {
    for (const b of batches) {
      for (const line of b.text().split('\n')) {
        if (line.startsWith('-D ')) this.rules.delete(`-A ${line.slice(3)}`);
        if (line.startsWith('-A ')) this.rules.add(line);
      }
    }
  };
}

describe('traffic monitor', () => {
  const inst = { id: 'i', ip: '10.0.0.2', inChain: 'AOS_h_IN', outChain: 'AOS_h_OUT', downloadLimit: 1000 };
  it('accumulates deltas, survives a restart and a counter reset, resets with the period, and enforces limits', async () => {
    const db = await openDb(':memory:');
    let now = new Date(Date.UTC(2026, 0, 1, 10, 0, 10));
    const ipt = new FakeTable();
    const mon = () => new TrafficMonitor(db, 'minute', () => now, ipt);
    ipt.bytes = { in: 300, out: 50 };
    expect((await mon().collect([inst]))[0]).toMatchObject({ download: 300, upload: 50, blocked: false });
    ipt.bytes = { in: 500, out: 80 };
    expect((await mon().collect([inst]))[0]).toMatchObject({ download: 500, upload: 80 }); // a new monitor (restart) keeps totals
    ipt.bytes = { in: 100, out: 10 }; // the chain was re-created: counters restarted
    expect((await mon().collect([inst]))[0]).toMatchObject({ download: 600, upload: 90 });
    ipt.bytes = { in: 600, out: 10 };
    const over = (await mon().collect([inst]))[0];
    expect(over).toMatchObject({ download: 1100, blocked: true });
    expect(ipt.rules.has('-A AOS_h_IN -d 10.0.0.2/32 -j DROP')).toBe(true);
    expect(ipt.rules.has('-A AOS_h_IN -d 10.0.0.2/32')).toBe(false);
    expect((await mon().collect([inst]))[0].blocked).toBe(true);
    now = new Date(Date.UTC(2026, 0, 1, 10, 1, 5)); // next period
    ipt.bytes = { in: 0, out: 0 };
    const fresh = (await mon().collect([inst]))[0];
    expect(fresh).toMatchObject({ download: 0, upload: 0, blocked: false });
    expect(ipt.rules.has('-A AOS_h_IN -d 10.0.0.2/32')).toBe(true);
    expect(ipt.rules.has('-A AOS_h_IN -d 10.0.0.2/32 -j DROP')).toBe(false);
    db.close();
  });
});
