/**
 * Bulk grant: users into one group with `addMany` (entity-group transactions of 100 per
 * partition, 32 requests in flight) against `addToGroup` one at a time. Twice: on Azurite over
 * loopback as it is, and with 5 ms added to every request, about a round trip to Azure Table
 * Storage in the same region, where waiting, not Azurite's CPU, is what one-at-a-time costs.
 */
import { type BenchContext, type Benchmark, benchStore, type Row, round, timed } from "./lib.js";

async function compare(ctx: BenchContext, n: number, delayMs: number): Promise<Row> {
  const users = Array.from({ length: n }, (_, i) => `bulk-${i}`);
  const batched = benchStore(ctx, { concurrency: 32, delayMs });
  const naive = benchStore(ctx, { delayMs });
  try {
    const batchedMs = await timed(() =>
      batched.store.addMany(users.map((userId) => ({ userId, group: "everyone" }))),
    );
    const batchedRequests = batched.counter.count;
    const naiveMs = await timed(async () => {
      for (const user of users) await naive.store.addToGroup(user, "everyone");
    });
    const naiveRequests = naive.counter.count;
    for (const s of [batched.store, naive.store])
      if ((await s.countMembers("everyone")) !== n) throw new Error("a grant was lost");
    return {
      benchmark: "bulk grant",
      case: `${n.toLocaleString("en")} users into one group: addMany${delayMs ? `, +${delayMs} ms per request` : ", Azurite as is"}`,
      value: round(batchedMs / 1_000),
      unit: "s",
      baseline: { label: "addToGroup one at a time", value: round(naiveMs / 1_000) },
      ratio: round(naiveMs / batchedMs, 1),
      target: "≥ 10× the naive way",
      met: naiveMs / batchedMs >= 10,
      details: { batchedRequests, naiveRequests },
    };
  } finally {
    await Promise.all([batched.store.close(), naive.store.close()]);
  }
}

const bulkGrant: Benchmark = async (ctx) => [
  await compare(ctx, ctx.quick ? 2_000 : 10_000, 0),
  await compare(ctx, ctx.quick ? 300 : 1_000, 5),
];

export default bulkGrant;
