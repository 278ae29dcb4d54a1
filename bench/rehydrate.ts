/**
 * Rehydrate: what a connect costs. `groupsOf` for users with 1 to 2,500 groups (one partition
 * query, 1,000 rows a page), against asking `isMember` of every candidate group (16 at a time).
 */
import pLimit from "p-limit";
import { type Benchmark, benchStore, median, p99, type Row, round, timed } from "./lib.js";

const rehydrate: Benchmark = async (ctx) => {
  const { store, counter } = benchStore(ctx);
  const sizes = ctx.quick ? [1, 10, 100, 1_000] : [1, 10, 100, 1_000, 2_500];
  const rows: Row[] = [];
  try {
    for (const n of sizes) {
      const user = `user-with-${n}`;
      const groups = Array.from({ length: n }, (_, i) => `group-${i}`);
      await store.addMany(groups.map((group) => ({ userId: user, group })));
      const reps = n >= 1_000 ? (ctx.quick ? 5 : 20) : ctx.quick ? 20 : 100;

      const times: number[] = [];
      const before = counter.count;
      for (let i = 0; i < reps; i++) times.push(await timed(() => store.groupsOf(user)));
      const requests = (counter.count - before) / reps;

      // The alternative: the app knows the candidate groups and asks about each.
      const limit = pLimit(16);
      const naive: number[] = [];
      const naiveReps = Math.max(3, Math.round(reps / 5));
      const naiveBefore = counter.count;
      for (let i = 0; i < naiveReps; i++) {
        naive.push(
          await timed(() => Promise.all(groups.map((g) => limit(() => store.isMember(user, g))))),
        );
      }
      const naiveRequests = (counter.count - naiveBefore) / naiveReps;

      rows.push({
        benchmark: "rehydrate",
        case: `${n.toLocaleString("en")} group${n === 1 ? "" : "s"}`,
        value: round(median(times)),
        unit: "ms",
        p99: round(p99(times)),
        baseline: { label: "isMember × n (16 at once)", value: round(median(naive)) },
        ratio: round(median(naive) / median(times), 1),
        target: `${Math.ceil(n / 1_000)} request${n > 1_000 ? "s" : ""}`,
        met: requests === Math.ceil(n / 1_000),
        details: { requests, naiveRequests, reps, naiveReps },
      });
    }
  } finally {
    await store.close();
  }
  return rows;
};

export default rehydrate;
