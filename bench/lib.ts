import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { PipelinePolicy } from "@azure/core-rest-pipeline";
import { AzureTableMembershipStore } from "../adapters/index.js";
import { requestCounter } from "../test/support/request-counter.js";

export { requestCounter };

const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** What every benchmark gets from `bench/run.ts`. */
export interface BenchContext {
  /** `--quick`: smaller counts, same shape. */
  quick: boolean;
  /** Azurite started for this run (in memory, random port). */
  connectionString: string;
  /** A table name no other benchmark uses. */
  table(): string;
}

/** One line of the results table. */
export interface Row {
  /** The benchmark's name in `npm run bench -- --only` (set by the runner). */
  id?: string;
  /** When a row was kept from an earlier run (`--only` of other benchmarks): that run's date. */
  measured?: string;
  /** And that run's CPU. */
  measuredOn?: string;
  benchmark: string;
  case: string;
  /** The figure measured: a median where there are many samples. */
  value: number;
  unit: string;
  p99?: number;
  /** What the same workload gives done the other way, in the same run. */
  baseline?: { label: string; value: number };
  /** How many times better than the baseline (higher is better). */
  ratio?: number;
  target?: string;
  /** Whether the target was met; absent when this run cannot tell (a quick run's smaller counts). */
  met?: boolean;
  /** Anything else worth keeping in results.json. */
  details?: Record<string, unknown>;
}

export type Benchmark = (ctx: BenchContext) => Promise<Row[]>;

/** The q-quantile (0..1) of `samples`, nearest rank. */
export function quantile(samples: readonly number[], q: number): number {
  if (samples.length === 0) return Number.NaN;
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank] as number;
}

export const median = (samples: readonly number[]) => quantile(samples, 0.5);
export const p99 = (samples: readonly number[]) => quantile(samples, 0.99);
export const round = (value: number, digits = 2) => Number(value.toFixed(digits));
export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Node flags for a sample server under benchmark: `--expose-gc` for /stats?gc=1, and with
 * BENCH_PROFILE=1 a CPU profile per server process in bench/profiles/ (open it in Chrome DevTools
 * or summarize it with `node bench/profile-summary.ts FILE`).
 */
export function serverNodeArgs(): string[] {
  const args = ["--expose-gc"];
  if (process.env.BENCH_PROFILE === "1")
    args.push("--cpu-prof", `--cpu-prof-dir=${ROOT}bench/profiles`);
  return args;
}

/** Milliseconds `operation` takes. */
export async function timed(operation: () => Promise<unknown>): Promise<number> {
  const start = performance.now();
  await operation();
  return performance.now() - start;
}

/** `operation` run `count` times, one after another: the milliseconds of each. */
export async function timedRuns(
  count: number,
  operation: () => Promise<unknown>,
): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < count; i++) times.push(await timed(operation));
  return times;
}

/** A row of latencies in ms: their median, their p99, how many. */
export function latencyRow(
  benchmark: string,
  label: string,
  times: readonly number[],
  extra: Partial<Row> = {},
  digits = 2,
): Row {
  return {
    benchmark,
    case: label,
    value: round(median(times), digits),
    p99: round(p99(times), digits),
    unit: "ms",
    details: { samples: times.length },
    ...extra,
  };
}

/**
 * A store on this run's Azurite, counting its requests. `delayMs` is added to every request,
 * about a round trip to Azure Table Storage where Azurite on loopback has none. `tableName`:
 * a sample server's table (default: a new one).
 */
export function benchStore(
  ctx: BenchContext,
  options: { concurrency?: number; delayMs?: number; tableName?: string } = {},
) {
  const counter = requestCounter();
  const { delayMs = 0, tableName = ctx.table(), ...storeOptions } = options;
  const delay: PipelinePolicy = {
    name: "bench-delay",
    sendRequest: async (request, next) => {
      await sleep(delayMs);
      return next(request);
    },
  };
  const policies = delayMs > 0 ? [counter.policy, delay] : [counter.policy];
  const store = AzureTableMembershipStore.fromConnectionString(ctx.connectionString, {
    tableName,
    ...storeOptions,
    clientOptions: {
      additionalPolicies: policies.map((policy) => ({ policy, position: "perRetry" as const })),
    },
  });
  return { store, counter };
}

/**
 * Runs `bench/loadgen.ts` in its own process and returns the JSON object of its last output
 * line. `onLine` sees every line as it comes (the load generator says "ready" when holding).
 */
export function loadgen<T>(
  params: Record<string, unknown>,
  onLine?: (line: string, child: ReturnType<typeof spawn>) => void,
): Promise<T> {
  const child = spawn(
    process.execPath,
    ["--max-old-space-size=4096", "--import", "tsx", "bench/loadgen.ts", JSON.stringify(params)],
    { cwd: ROOT, stdio: ["pipe", "pipe", "inherit"] },
  );
  let last = "";
  let buffer = "";
  child.stdout.on("data", (chunk: Buffer) => {
    buffer += chunk;
    let newline = buffer.indexOf("\n");
    while (newline >= 0) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + 1);
      if (line.trim() !== "") {
        last = line;
        onLine?.(line, child);
      }
      newline = buffer.indexOf("\n");
    }
  });
  return new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("exit", (code) => {
      if (code !== 0) return reject(new Error(`load generator exited with ${code}`));
      try {
        resolve(JSON.parse(last) as T);
      } catch {
        reject(new Error(`load generator said: ${last}`));
      }
    });
  });
}

/** The sample server's /stats (after a GC when it runs with --expose-gc). */
export async function serverStats(url: string, gc = false) {
  const res = await fetch(`${url}/stats${gc ? "?gc=1" : ""}`);
  return (await res.json()) as {
    connections: number;
    heapUsed: number;
    rss: number;
    cpuMicros: number;
    storageRequests: { membership: number; changeLog: number };
  };
}
