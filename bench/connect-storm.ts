/**
 * Connect storm: 5,000 authenticated WebSocket connections to the sample server (2,500 users × 2,
 * 20 groups each), 200 opening at a time: time until every `welcome`, welcome latency, the
 * server's storage requests (one `groupsOf` per user at most), and its memory per connection.
 */
import { connectMany } from "./connections.js";
import { type Benchmark, round } from "./lib.js";

const connectStorm: Benchmark = async (ctx) => {
  const users = ctx.quick ? 500 : 2_500;
  const r = await connectMany(ctx, { users, perUser: 2, groupsPerUser: 20 });
  const name = `${r.connections.toLocaleString("en")} connections (${users.toLocaleString("en")} users × 2, 20 groups)`;
  const details = { failed: r.failed };
  return [
    {
      benchmark: "connect storm",
      case: `${name}: all welcomed`,
      value: round(r.ms / 1_000),
      unit: "s",
      // The target is for 5,000 connections: a quick run only checks that none failed.
      target: ctx.quick ? "≤ 10 s at 5,000 (full run)" : "≤ 10 s",
      met: ctx.quick ? undefined : r.failed === 0 && r.ms <= 10_000,
      details,
    },
    {
      benchmark: "connect storm",
      case: "welcome latency",
      value: round(r.welcomeP50),
      unit: "ms",
      p99: round(r.welcomeP99),
    },
    {
      benchmark: "connect storm",
      case: "storage requests",
      value: r.storageRequests,
      unit: "requests",
      target: `≤ ${users.toLocaleString("en")} (distinct users)`,
      met: r.storageRequests <= users,
    },
    {
      benchmark: "connect storm",
      case: "server heap per connection",
      value: round(r.heapPerConnection / 1024, 1),
      unit: "KiB",
    },
    {
      benchmark: "connect storm",
      case: "server RSS per connection",
      value: round(r.rssPerConnection / 1024, 1),
      unit: "KiB",
    },
  ];
};

export default connectStorm;
