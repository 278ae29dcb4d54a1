/**
 * Idle memory: heap and RSS of the sample server per idle connection, 10 groups each, at 5,000
 * connections of 5,000 distinct users (the worst case: nothing shared between connections).
 */
import { connectMany } from "./connections.js";
import { type Benchmark, round } from "./lib.js";

const idleMemory: Benchmark = async (ctx) => {
  const users = ctx.quick ? 1_000 : 5_000;
  const r = await connectMany(ctx, { users, perUser: 1, groupsPerUser: 10 });
  const heapKiB = r.heapPerConnection / 1024;
  return [
    {
      benchmark: "idle memory",
      case: `${r.connections.toLocaleString("en")} idle connections, 10 groups each: heap`,
      value: round(heapKiB, 1),
      unit: "KiB/conn",
      // Fixed costs weigh more at 1,000 connections: the target is for the full run's 5,000.
      target: ctx.quick ? "≤ 8 KB at 5,000 (full run)" : "≤ 8 KB",
      met: ctx.quick ? undefined : r.heapPerConnection <= 8_000,
    },
    {
      benchmark: "idle memory",
      case: "RSS",
      value: round(r.rssPerConnection / 1024, 1),
      unit: "KiB/conn",
    },
  ];
};

export default idleMemory;
