/**
 * Bulk grant: 10,000 users into one group with `addMany` (entity-group transactions of 100 per
 * partition, 32 requests in flight) against `addToGroup` one at a time.
 */
import { type Benchmark, benchStore, round, timed } from "./lib.js";

const bulkGrant: Benchmark = async (ctx) => {
  const n = ctx.quick ? 2_000 : 10_000;
  const users = Array.from({ length: n }, (_, i) => `bulk-${i}`);
  const batched = benchStore(ctx, { concurrency: 32 });
  const naive = benchStore(ctx);
  try {
    const batchedMs = await timed(() =>
      batched.store.addMany(users.map((userId) => ({ userId, group: "everyone" }))),
    );
    const batchedRequests = batched.counter.count;
    const naiveMs = await timed(async () => {
      for (const user of users) await naive.store.addToGroup(user, "everyone");
    });
    if ((await batched.store.countMembers("everyone")) !== n)
      throw new Error("addMany lost grants");
    return [
      {
        benchmark: "bulk grant",
        case: `${n.toLocaleString("en")} users into one group: addMany`,
        value: round(batchedMs / 1_000),
        unit: "s",
        baseline: { label: "addToGroup one at a time", value: round(naiveMs / 1_000) },
        ratio: round(naiveMs / batchedMs, 1),
        target: "≥ 10× the naive way",
        met: naiveMs / batchedMs >= 10,
        details: { batchedRequests, naiveRequests: naive.counter.count },
      },
    ];
  } finally {
    await Promise.all([batched.store.close(), naive.store.close()]);
  }
};

export default bulkGrant;
