/**
 * Import: `npm run admin -- import` of a CSV file (1,000 users × n/1,000 groups; the admin script
 * as a child process, its start-up included) against granting the same rows with `addToGroup`
 * one at a time (a script's first try) and 16 at a time (its second), and against the lower
 * bound: `addMany` of the same grants, already in memory, in one call (no file, no parsing, no
 * checkpoints). Azurite slows as it fills, so every way runs on an Azurite of its own, started
 * empty, on the same n rows. Then the import alone of 100,000 rows (full run).
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pLimit from "p-limit";
import { startAzurite } from "../adapters/testing/azurite.js";
import { admin, sampleEnv } from "../test/support/processes.js";
import { type Benchmark, benchStore, type Row, round, timed } from "./lib.js";

const USERS = 1_000;
type Grant = { userId: string; group: string };
type Store = ReturnType<typeof benchStore>["store"];

const rowsOf = (n: number): Grant[] =>
  Array.from({ length: n }, (_, i) => ({
    userId: `user ${i % USERS}`,
    group: `room, "${Math.floor(i / USERS)}"`,
  }));

/** Rows per second of `run`, on an Azurite of its own. */
async function onFreshAzurite(
  n: number,
  run: (connectionString: string) => Promise<unknown>,
): Promise<{ perSecond: number; ms: number }> {
  const azurite = await startAzurite();
  try {
    const ms = await timed(() => run(azurite.connectionString));
    return { perSecond: (n / ms) * 1_000, ms };
  } finally {
    await azurite.stop();
  }
}

/** Grants `rows` through a store of its own on `connectionString`. */
async function withStore(connectionString: string, grant: (store: Store) => Promise<unknown>) {
  let tables = 0;
  const { store } = benchStore({
    quick: false,
    connectionString,
    table: () => `import${tables++}`,
  });
  try {
    await grant(store);
  } finally {
    await store.close();
  }
}

const importBenchmark: Benchmark = async (ctx) => {
  const n = ctx.quick ? 5_000 : 20_000;
  const rows = rowsOf(n);
  const dir = await mkdtemp(join(tmpdir(), "hub-membership-bench-import-"));
  const quote = (value: string) => `"${value.replaceAll('"', '""')}"`;
  const csv = async (count: number) => {
    const file = join(dir, `rows-${count}.csv`);
    const lines = rowsOf(count).map((r) => `${quote(r.userId)},${quote(r.group)},`);
    await writeFile(file, `userId,group,expiresAt\n${lines.join("\n")}\n`);
    return file;
  };
  const importFile = (count: number, file: string) => (connectionString: string) =>
    admin(sampleEnv(connectionString), "import", file, "--json").then((result) => {
      if (result.code !== 0) throw new Error(`import failed: ${result.stderr}`);
      if (JSON.parse(result.stdout).written !== count) throw new Error("rows went missing");
    });
  try {
    const imported = await onFreshAzurite(n, importFile(n, await csv(n)));
    const lower = await onFreshAzurite(n, (cs) => withStore(cs, (store) => store.addMany(rows)));
    const naive = await onFreshAzurite(n, (cs) =>
      withStore(cs, async (store) => {
        for (const r of rows) await store.addToGroup(r.userId, r.group);
      }),
    );
    const limit = pLimit(16);
    const parallel = await onFreshAzurite(n, (cs) =>
      withStore(cs, (store) =>
        Promise.all(rows.map((r) => limit(() => store.addToGroup(r.userId, r.group)))),
      ),
    );
    const name = `${n.toLocaleString("en")} CSV rows (${USERS.toLocaleString("en")} users × ${n / USERS} groups)`;
    const result: Row[] = [
      {
        benchmark: "import",
        case: `${name}: admin import, start-up included`,
        value: Math.round(imported.perSecond),
        unit: "rows/s",
        baseline: { label: "addToGroup one at a time", value: Math.round(naive.perSecond) },
        ratio: round(imported.perSecond / naive.perSecond, 1),
        details: { imported, naive, parallel, lower },
      },
      {
        benchmark: "import",
        case: "the same rows: addToGroup, 16 at a time",
        value: Math.round(parallel.perSecond),
        unit: "rows/s",
        baseline: { label: "admin import", value: Math.round(imported.perSecond) },
        ratio: round(parallel.perSecond / imported.perSecond, 2),
      },
      {
        benchmark: "import",
        case: "the same rows: lower bound, addMany of them in memory, one call",
        value: Math.round(lower.perSecond),
        unit: "rows/s",
        baseline: { label: "admin import", value: Math.round(imported.perSecond) },
        ratio: round(lower.perSecond / imported.perSecond, 2),
        target: "import within 1.25× of it",
        // A quick run's few rows are mostly the admin script's start-up: judged on full runs.
        ...(!ctx.quick && { met: imported.perSecond * 1.25 >= lower.perSecond }),
      },
    ];
    if (!ctx.quick) {
      const big = 100_000;
      const alone = await onFreshAzurite(big, importFile(big, await csv(big)));
      result.push({
        benchmark: "import",
        case: "100,000 CSV rows (1,000 users × 100 groups): admin import",
        value: Math.round(alone.perSecond),
        unit: "rows/s",
        details: { ms: Math.round(alone.ms) },
      });
    }
    return result;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
};

export default importBenchmark;
