/**
 * Import: `npm run admin -- import` of a CSV file (1,000 users × n/1,000 groups, the admin
 * script as a child process, its start-up included) against granting the same rows with
 * `addToGroup` one at a time (a script's first try) and 16 at a time (its second), and against
 * the lower bound: `addMany` of the same grants, already in memory, in one call (no file, no
 * parsing, no checkpoints). All on Azurite; rows per second.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pLimit from "p-limit";
import { admin, sampleEnv } from "../test/support/processes.js";
import { type BenchContext, type Benchmark, benchStore, type Row, round, timed } from "./lib.js";

const USERS = 1_000;
type Grant = { userId: string; group: string };

function rowsOf(n: number): Grant[] {
  return Array.from({ length: n }, (_, i) => ({
    userId: `user ${i % USERS}`,
    group: `room, "${Math.floor(i / USERS)}"`,
  }));
}

/** Rows per second of granting `rows` (the first `cap` of them) one way. */
async function rate(
  ctx: BenchContext,
  rows: Grant[],
  grant: (store: ReturnType<typeof benchStore>["store"], rows: Grant[]) => Promise<unknown>,
): Promise<{ perSecond: number; rows: number; ms: number; requests: number }> {
  const { store, counter } = benchStore(ctx);
  try {
    const ms = await timed(() => grant(store, rows));
    return {
      perSecond: (rows.length / ms) * 1_000,
      rows: rows.length,
      ms,
      requests: counter.count,
    };
  } finally {
    await store.close();
  }
}

const importBenchmark: Benchmark = async (ctx) => {
  const n = ctx.quick ? 10_000 : 100_000;
  const rows = rowsOf(n);
  const dir = await mkdtemp(join(tmpdir(), "hub-membership-bench-import-"));
  try {
    const file = join(dir, "rows.csv");
    const quote = (value: string) => `"${value.replaceAll('"', '""')}"`;
    await writeFile(
      file,
      `userId,group,expiresAt\n${rows.map((r) => `${quote(r.userId)},${quote(r.group)},`).join("\n")}\n`,
    );
    const env = { ...sampleEnv(ctx.connectionString), MEMBERSHIP_TABLE: ctx.table() };
    let importMs = 0;
    importMs = await timed(async () => {
      const result = await admin(env, "import", file, "--json");
      if (result.code !== 0) throw new Error(`import failed: ${result.stderr}`);
      if (JSON.parse(result.stdout).written !== n) throw new Error("rows were not all written");
    });
    const imported = (n / importMs) * 1_000;
    const lower = await rate(ctx, rows, (store, all) => store.addMany(all));
    const cap = ctx.quick ? 1_000 : 5_000;
    const naive = await rate(ctx, rows.slice(0, cap), async (store, some) => {
      for (const r of some) await store.addToGroup(r.userId, r.group);
    });
    const limit = pLimit(16);
    const parallel = await rate(ctx, rows.slice(0, cap * 2), (store, some) =>
      Promise.all(some.map((r) => limit(() => store.addToGroup(r.userId, r.group)))),
    );
    const name = `${n.toLocaleString("en")} CSV rows (${USERS.toLocaleString("en")} users × ${n / USERS} groups)`;
    return [
      {
        benchmark: "import",
        case: `${name}: admin import, start-up included`,
        value: Math.round(imported),
        unit: "rows/s",
        baseline: { label: "addToGroup one at a time", value: Math.round(naive.perSecond) },
        ratio: round(imported / naive.perSecond, 1),
        target: "≥ 10× one at a time",
        met: imported >= 10 * naive.perSecond,
        details: { importMs, naive, parallel, lower },
      },
      {
        benchmark: "import",
        case: "addToGroup, 16 at a time (the same rows)",
        value: Math.round(parallel.perSecond),
        unit: "rows/s",
        baseline: { label: "admin import", value: Math.round(imported) },
        ratio: round(parallel.perSecond / imported, 2),
      },
      {
        benchmark: "import",
        case: "lower bound: addMany of the rows in memory, one call",
        value: Math.round(lower.perSecond),
        unit: "rows/s",
        baseline: { label: "admin import", value: Math.round(imported) },
        ratio: round(lower.perSecond / imported, 2),
        target: "import within 1.25× of it",
        met: imported * 1.25 >= lower.perSecond,
      },
    ] satisfies Row[];
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
};

export default importBenchmark;
