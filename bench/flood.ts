/**
 * An ordinary member's delivery latency while 5 users flood its room of 200 (issue 17), against
 * the same member's latency in the quiet room just before, in the same run: on one ws sample
 * server, and on two sharing Redis (the flooders' budgets held there). The scenario is the load
 * test's (test/support/flood.ts).
 */
import { describeFlood, runFlood } from "../test/support/flood.js";
import { type Benchmark, median, p99, type Row, round } from "./lib.js";

const flood: Benchmark = async (ctx) => {
  const rows: Row[] = [];
  for (const redis of [false, true]) {
    const r = await runFlood({
      connectionString: ctx.connectionString,
      redis,
      phaseMs: ctx.quick ? 2_000 : 6_000,
    });
    process.stderr.write(`\n  ${describeFlood(r)}\n  `);
    const quiet = p99(r.quiet);
    rows.push({
      benchmark: "flood",
      case: `${redis ? "2 servers on Redis" : "1 server"}: an ordinary member's latency, 5 flooders`,
      value: round(median(r.flood)),
      unit: "ms",
      p99: round(p99(r.flood)),
      baseline: { label: "quiet p99", value: round(quiet) },
      ratio: round(quiet / p99(r.flood)),
      target: "p99 ≤ 2× quiet",
      // 20 samples (a quick run) make a p99 one sample's luck.
      ...(ctx.quick ? {} : { met: p99(r.flood) <= 2 * quiet }),
      details: {
        quiet: r.quiet.map((x) => round(x)),
        flood: r.flood.map((x) => round(x)),
        flooders: r.flooders,
        delivered: r.delivered,
        heapBefore: r.heapBefore,
        heapDuring: r.heapDuring,
        loopDelay: r.loopDelay,
      },
    });
  }
  return rows;
};

export default flood;
