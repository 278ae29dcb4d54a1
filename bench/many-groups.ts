/**
 * Many groups: a user with 20,000 groups connects to the sample (ws), then connects 10 times
 * more while the first connection is held. What the first connect takes and sends, how long the
 * server's event loop is held up by each further connect (p99 and max of its delay), and the
 * heap each further connection costs; against a user with 10 groups, the common case, in the
 * same run.
 */
import { Client, NO_RATE_LIMITS, sampleEnv, startSample, token } from "../test/support/sample.js";
import { type Benchmark, benchStore, median, type Row, round, serverNodeArgs } from "./lib.js";

interface LoopDelay {
  eventLoopDelayMs: { p99: number; max: number };
  heapUsed: number;
}

const manyGroups: Benchmark = async (ctx) => {
  const big = ctx.quick ? 5_000 : 20_000;
  const extra = ctx.quick ? 5 : 10;
  const env = {
    ...sampleEnv(ctx.connectionString),
    ...NO_RATE_LIMITS,
    MAX_CONNECTIONS_PER_USER: "100",
  };
  const { store } = benchStore(ctx, { tableName: env.MEMBERSHIP_TABLE });
  const grants = (userId: string, n: number) =>
    Array.from({ length: n }, (_, i) => ({
      userId,
      group: `room-${i.toString().padStart(5, "0")}`,
    }));
  await store.addMany([...grants("many", big), ...grants("few", 10)]);
  await store.close();
  const server = await startSample(env, { nodeArgs: serverNodeArgs() });
  // After a GC for the heap; without one for the event loop, or the GC's pause would count.
  const stats = async (gc: boolean): Promise<LoopDelay> =>
    (await (await fetch(`${server.url}/stats${gc ? "?gc=1" : ""}`)).json()) as LoopDelay;
  const clients: Client[] = [];
  const connect = async (user: string) => {
    const started = performance.now();
    const client = await Client.connect(server.wsUrl, token(env, user));
    clients.push(client);
    return { ms: performance.now() - started, client };
  };
  const rows: Row[] = [];
  try {
    const measure = async (user: string, groups: number) => {
      const first = await connect(user);
      const welcomeBytes = Buffer.byteLength(JSON.stringify(first.client.welcome));
      const before = await stats(true); // also starts the event-loop window anew
      const times: number[] = [];
      for (let i = 0; i < extra; i++) times.push((await connect(user)).ms);
      const loop = (await stats(false)).eventLoopDelayMs;
      const after = await stats(true);
      return {
        firstMs: first.ms,
        welcomeBytes,
        groups,
        extraMs: median(times),
        loopMax: loop.max,
        heapPerConnection: (after.heapUsed - before.heapUsed) / extra,
      };
    };
    const few = await measure("few", 10);
    const many = await measure("many", big);
    const n = big.toLocaleString("en");
    rows.push(
      {
        benchmark: "many groups",
        case: `first connect of a user with ${n} groups (to its welcome)`,
        value: round(many.firstMs, 1),
        unit: "ms",
        baseline: { label: "10 groups", value: round(few.firstMs, 1) },
        details: { welcomeBytes: many.welcomeBytes },
      },
      {
        benchmark: "many groups",
        case: `each further connection of that user (median of ${extra})`,
        value: round(many.extraMs, 1),
        unit: "ms",
        baseline: { label: "10 groups", value: round(few.extraMs, 1) },
      },
      {
        // /stats samples the loop every 10 ms: an idle loop reads 10 ms, a stall the excess.
        benchmark: "many groups",
        case: "longest event-loop stall while they connect",
        value: round(Math.max(0, many.loopMax - 10), 2),
        unit: "ms",
        baseline: { label: "10 groups", value: round(Math.max(0, few.loopMax - 10), 2) },
        target: "≤ 5 ms",
        met: many.loopMax - 10 <= 5,
      },
      {
        benchmark: "many groups",
        case: "heap per further connection",
        value: round(many.heapPerConnection / 1024, 1),
        unit: "KiB",
        baseline: { label: "10 groups", value: round(few.heapPerConnection / 1024, 1) },
      },
    );
  } finally {
    for (const client of clients) client.close();
    await server.stop();
  }
  return rows;
};

export default manyGroups;
