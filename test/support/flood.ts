/**
 * The flood scenario of issue 17, shared by the load test (which asserts what users see) and
 * `npm run bench -- --only flood` (which holds the latency against its 2x target). No vitest here.
 *
 * 200 members of one room on the ws sample with its default limits; one ordinary member sends a
 * timestamped message every 100 ms, first into a quiet room, then while 5 flooding users in another
 * process send as fast as their sockets take frames and reconnect whenever they are closed. With
 * `redis`, two servers share a Redis: the ordinary member on one, the member measuring on the
 * other, the flooders on both, and the per-user budgets in Redis.
 */
import { spawn } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import { AzureTableMembershipStore } from "../../adapters/index.js";
import { RedisChangeFeed } from "../../adapters/redis/index.js";
import { loadgen, quantile } from "../../bench/lib.js";
import { Client, sleep } from "./clients.js";
import { type RunningSample, sampleEnv, startSample, token } from "./processes.js";
import { startRedis } from "./redis.js";

const MEMBERS = 200;
export const FLOODERS = 5;
const ROOT = fileURLToPath(new URL("../..", import.meta.url));

export interface FloodReport {
  servers: number;
  /** The ordinary member's delivery latencies (ms), one message every 100 ms. */
  quiet: number[];
  flood: number[];
  /** What the flooding process saw. */
  flooders: { sent: number; rateLimited: number; closed: number; refused: number };
  /** Flood messages that reached the measuring member. */
  delivered: number;
  /** Heap (after a GC) of the server the flooders hit first, before and during the flood. */
  heapBefore: number;
  heapDuring: number;
  /** That server's event-loop delay (ms) in each phase: what of the latency is its own. */
  loopDelay: Record<"quiet" | "flood", { p99: number; max: number }>;
  /** How long the flood lasted, for the budget a flooder has. */
  floodMs: number;
}

export async function runFlood(options: {
  connectionString: string;
  redis?: boolean;
  phaseMs?: number;
  /** More environment for the servers (other limits, say). */
  env?: Record<string, string>;
  /** Node flags for the servers (a CPU profile, say). */
  nodeArgs?: string[];
}): Promise<FloodReport> {
  const phaseMs = options.phaseMs ?? 4_000;
  const redis = options.redis ? await startRedis() : undefined;
  const env = {
    ...sampleEnv(options.connectionString),
    ...(redis ? { REDIS_URL: redis.url } : {}),
    ...options.env,
  };
  const store = AzureTableMembershipStore.fromConnectionString(options.connectionString, {
    tableName: env.MEMBERSHIP_TABLE,
    ...(redis && { changeFeed: new RedisChangeFeed({ url: redis.url }) }),
  });
  const servers: RunningSample[] = [];
  const clients: Client[] = [];
  const releases: (() => Promise<void>)[] = [];
  try {
    await store.addMany(
      Array.from({ length: MEMBERS }, (_, i) => ({ userId: `m${i}`, group: "room" })),
    );
    for (let i = 0; i < (redis ? 2 : 1); i++)
      servers.push(await startSample(env, { nodeArgs: options.nodeArgs ?? [] }));
    const server = (i: number) => servers[i % servers.length] as RunningSample;
    // The room's other members in processes of their own: the one measuring receives only its
    // own messages' worth of work, so its clock is not the bottleneck.
    for (const [k, sample] of servers.entries()) {
      const users = [];
      for (let i = FLOODERS + 2 + k; i < MEMBERS; i += servers.length) users.push(`m${i}`);
      releases.push(await holdConnections(sample.url, env.JWT_SECRET, users));
    }
    const ordinary = await Client.connect(server(0).wsUrl, token(env, `m${FLOODERS}`));
    const receiver = await Client.connect(server(1).wsUrl, token(env, `m${FLOODERS + 1}`));
    clients.push(ordinary, receiver);

    const phase = async (label: string) => {
      const latencies: number[] = [];
      for (let n = 0; n < phaseMs / 100; n++) {
        const sentAt = performance.now();
        const text = `ordinary ${label} ${n}`; // not the flooders' "flood N"
        ordinary.send({ type: "send", group: "room", text });
        await receiver.next((m) => m.text === text, 3_000);
        latencies.push(performance.now() - sentAt);
        await sleep(Math.max(0, 100 - (performance.now() - sentAt)));
      }
      return latencies;
    };
    const stats = async () =>
      (await (await fetch(`${server(0).url}/stats?gc=1`)).json()) as {
        heapUsed: number;
        eventLoopDelayMs: { p99: number; max: number };
      };

    await stats();
    const quiet = await phase("quiet");
    const before = await stats();
    const floodMs = phaseMs + 500;
    const flooder = spawn(
      process.execPath,
      [
        "--import",
        "tsx",
        "test/support/flooder.ts",
        JSON.stringify({
          wsUrls: servers.map((s) => s.wsUrl),
          tokens: Array.from({ length: FLOODERS }, (_, i) => token(env, `m${i}`)),
          group: "room",
          ms: floodMs,
        }),
      ],
      { cwd: ROOT, stdio: ["ignore", "pipe", "inherit"] },
    );
    let out = "";
    flooder.stdout.on("data", (chunk: Buffer) => {
      out += chunk;
    });
    const exited = once(flooder, "exit");
    await sleep(300); // the flood is on
    const flood = await phase("flood");
    const during = await stats();
    const [code] = (await exited) as [number | null];
    if (code !== 0) throw new Error(`the flooder exited with ${code}:\n${out}`);
    await sleep(300);
    return {
      servers: servers.length,
      quiet,
      flood,
      flooders: JSON.parse(out.trim().split("\n").at(-1) ?? "{}"),
      delivered: receiver.messages.filter((m) => String(m.text).startsWith("flood ")).length,
      heapBefore: before.heapUsed,
      heapDuring: during.heapUsed,
      loopDelay: { quiet: before.eventLoopDelayMs, flood: during.eventLoopDelayMs },
      floodMs,
    };
  } finally {
    for (const client of clients) client.close();
    await Promise.all(releases.map((release) => release()));
    await Promise.all(servers.map((s) => s.stop()));
    await store.close();
    await redis?.stop();
  }
}

/** Connects each of `users` once from a load generator; resolves to a function that closes them. */
async function holdConnections(
  url: string,
  secret: string,
  users: string[],
): Promise<() => Promise<void>> {
  let close = () => {};
  let ready: (missing: number) => void = () => {};
  const held = new Promise<number>((resolve) => {
    ready = resolve;
  });
  const done = loadgen<{ connections: number; failed: number }>(
    {
      mode: "connect",
      url,
      hub: "ws",
      secret,
      users,
      perUser: 1,
      window: 50,
      hold: true,
      timeoutMs: 120_000,
    },
    (line, child) => {
      if (!line.includes('"ready"')) return;
      close = () => child.stdin?.write("close\n");
      ready(users.length - (JSON.parse(line) as { connections: number }).connections);
    },
  );
  const missing = await Promise.race([
    held,
    done.then(() => Promise.reject(new Error("the load generator left before holding"))),
  ]);
  const release = async () => {
    close();
    await done;
  };
  if (missing > 0) {
    await release();
    throw new Error(`${missing} of the room's members did not connect`);
  }
  return release;
}

/** One line for a log: both latencies and what the flood did. */
export function describeFlood(r: FloodReport): string {
  const p = (xs: number[], q: number) => Math.round(quantile(xs, q) * 10) / 10;
  const mib = (bytes: number) => Math.round(bytes / 2 ** 20);
  return (
    `flood on ${r.servers} server(s): ordinary member's latency quiet p50 ${p(r.quiet, 0.5)} ms / ` +
    `p99 ${p(r.quiet, 0.99)} ms, during the flood p50 ${p(r.flood, 0.5)} ms / p99 ` +
    `${p(r.flood, 0.99)} ms; flooders sent ${r.flooders.sent} frames, ${r.flooders.rateLimited} ` +
    `answered rate_limited, ${r.flooders.closed} connections closed, ${r.flooders.refused} ` +
    `reconnections refused; ${r.delivered} delivered to each member; server heap ` +
    `${mib(r.heapBefore)} → ${mib(r.heapDuring)} MiB, its event-loop delay max ` +
    `${r.loopDelay.quiet.max} ms quiet, ${r.loopDelay.flood.max} ms during the flood`
  );
}
