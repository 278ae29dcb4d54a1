/**
 * `npm run bench [-- --quick] [-- --only <name>,...]`: every benchmark against an Azurite started
 * for the run (in memory, random port); one table on stdout, the same figures in
 * bench/results.json (a --quick run: bench/results.quick.json, not committed).
 */
import { once } from "node:events";
import { readFile, writeFile } from "node:fs/promises";
import { cpus } from "node:os";
import { parseArgs } from "node:util";
import { startAzurite } from "../adapters/testing/azurite.js";
import broadcast from "./broadcast.js";
import bulkGrant from "./bulk-grant.js";
import connectStorm from "./connect-storm.js";
import fanOut from "./fan-out.js";
import flood from "./flood.js";
import idleMemory from "./idle-memory.js";
import importBenchmark from "./import.js";
import { type Benchmark, type Row, sleep } from "./lib.js";
import longPolling from "./long-polling.js";
import manyGroups from "./many-groups.js";
import presence from "./presence.js";
import rehydrate from "./rehydrate.js";
import replay from "./replay.js";
import revoke from "./revoke.js";
import scaleOut from "./scale-out.js";

const BENCHMARKS: Record<string, Benchmark> = {
  rehydrate,
  "connect-storm": connectStorm,
  "fan-out": fanOut,
  broadcast,
  revoke,
  "bulk-grant": bulkGrant,
  import: importBenchmark,
  "idle-memory": idleMemory,
  "many-groups": manyGroups,
  "scale-out": scaleOut,
  flood,
  replay,
  presence,
  "long-polling": longPolling,
};

function table(rows: readonly Row[]): string {
  const cells = rows.map((r) => [
    r.benchmark,
    r.case,
    `${r.value.toLocaleString("en")} ${r.unit}`,
    r.p99 === undefined ? "" : `${r.p99.toLocaleString("en")} ${r.unit}`,
    r.baseline ? `${r.baseline.label}: ${r.baseline.value.toLocaleString("en")}` : "",
    r.ratio === undefined ? "" : `${r.ratio}×`,
    r.target ? `${r.target}${r.met === undefined ? "" : r.met ? " ✓" : " ✗"}` : "",
  ]);
  const header = ["benchmark", "case", "median / result", "p99", "comparison", "ratio", "target"];
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => (c[i] ?? "").length)));
  const line = (c: string[]) => `| ${c.map((v, i) => v.padEnd(widths[i] ?? 0)).join(" | ")} |`;
  return [line(header), line(widths.map((w) => "-".repeat(w))), ...cells.map(line)].join("\n");
}

/** The rows of an earlier run in `file` that are not of `replaced` (none if there is no file). */
async function previousRows(file: URL, replaced: string[]): Promise<Row[]> {
  const text = await readFile(file, "utf8").catch((error: NodeJS.ErrnoException) => {
    if (error.code === "ENOENT") return undefined;
    throw error;
  });
  if (text === undefined) return [];
  const { rows, date, machine } = JSON.parse(text) as {
    rows: Row[];
    date: string;
    machine?: { cpu?: string };
  };
  // A kept row says when, and on what, it was measured: the file's machine is this run's.
  return rows
    .filter((row) => row.id === undefined || !replaced.includes(row.id))
    .map((row) => ({
      ...row,
      measured: row.measured ?? date,
      ...((row.measuredOn ?? machine?.cpu) && { measuredOn: row.measuredOn ?? machine?.cpu }),
    }));
}

async function main() {
  const { values } = parseArgs({
    options: { quick: { type: "boolean", default: false }, only: { type: "string" } },
  });
  const only = values.only?.split(",") ?? Object.keys(BENCHMARKS);
  const unknown = only.filter((name) => !(name in BENCHMARKS));
  if (unknown.length > 0) {
    throw new Error(
      `unknown benchmark ${unknown.join(", ")}; have ${Object.keys(BENCHMARKS).join(", ")}`,
    );
  }
  const quick = values.quick;
  // BENCH_PROFILE=1: a CPU profile of Azurite too, in bench/profiles/azurite/.
  const profile = process.env.BENCH_PROFILE === "1";
  const azurite = await startAzurite({
    nodeArgs: profile ? ["--cpu-prof", "--cpu-prof-dir=bench/profiles/azurite"] : [],
  });
  const started = performance.now();
  const rows: Row[] = [];
  let tables = 0;
  try {
    for (const name of only) {
      const benchmark = BENCHMARKS[name] as Benchmark;
      const t = performance.now();
      process.stderr.write(`${name}${quick ? " (quick)" : ""} … `);
      // A benchmark that stalls fails the run within minutes instead of holding CI to its limit
      // (a replay that never completed once did).
      let timer: NodeJS.Timeout | undefined;
      const limit = quick ? 5 * 60_000 : 30 * 60_000;
      const measured = await Promise.race([
        benchmark({
          quick,
          connectionString: azurite.connectionString,
          table: () => `bench${Date.now().toString(36)}x${tables++}`,
        }),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`${name} did not finish within ${limit / 60_000} min`)),
            limit,
          );
        }),
      ]).finally(() => clearTimeout(timer));
      rows.push(...measured.map((row) => ({ id: name, ...row })));
      process.stderr.write(`${((performance.now() - t) / 1_000).toFixed(1)} s\n`);
    }
  } finally {
    // Azurite writes its profile only when it exits by itself, which it does on SIGINT.
    if (profile) {
      azurite.process.kill("SIGINT");
      await Promise.race([once(azurite.process, "exit"), sleep(10_000)]);
    }
    await azurite.stop();
  }
  const cpu = cpus();
  const machine = {
    cpu: cpu[0]?.model.trim() ?? "unknown",
    cores: cpu.length,
    node: process.version,
    platform: `${process.platform} ${process.arch}`,
  };
  const seconds = (performance.now() - started) / 1_000;
  console.log(table(rows));
  console.log(
    `\n${machine.cpu}, ${machine.cores} cores, Node ${machine.node}; ${quick ? "quick" : "full"} run in ${seconds.toFixed(0)} s`,
  );
  // Only a full run replaces the committed figures the README quotes; a quick one (CI's) goes
  // to a file git ignores, so running it leaves the checkout clean. With --only, the other
  // benchmarks' rows stay as they were.
  const file = new URL(quick ? "./results.quick.json" : "./results.json", import.meta.url);
  const kept = values.only ? await previousRows(file, only) : [];
  const results = {
    date: new Date().toISOString(),
    quick,
    seconds,
    machine,
    rows: [...kept, ...rows],
  };
  await writeFile(file, `${JSON.stringify(results, null, 2)}\n`);
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
