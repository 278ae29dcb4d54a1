/**
 * Scale-out, the table log and Redis side by side in one run:
 * - revoke propagation to N servers (N = 2, 4, 8; each an in-process store + MembershipSync with
 *   one connection of the user): from the start of the admin's `removeFromGroup` until every
 *   server's connection left the group;
 * - what a table-log poller costs as the retained log grows (requests and rows per quiet poll),
 *   against what a `Timestamp`-filtered poll of one partition (the previous log) reads;
 * - Redis commands per change, one change at a time and in a burst, with 8 subscribers.
 */
import { TableClient } from "@azure/data-tables";
import { createClient } from "redis";
import {
  AzureTableMembershipStore,
  type ChangeFeed,
  type HubBinding,
  MembershipSync,
} from "../adapters/index.js";
import { RedisChangeFeed } from "../adapters/redis/index.js";
import { CHANGE_LOG_SHARDS, TableChangeLog } from "../adapters/stores/azure-change-log.js";
import { logReads } from "../test/support/log-reads.js";
import { startRedis } from "../test/support/redis.js";
import { type BenchContext, type Benchmark, median, p99, type Row, round, sleep } from "./lib.js";

type FeedKind = "table log" | "Redis";

function openStore(
  ctx: BenchContext,
  tableName: string,
  feed: (() => ChangeFeed) | undefined,
  policies: Array<ReturnType<typeof logReads>["policy"]> = [],
) {
  return AzureTableMembershipStore.fromConnectionString(ctx.connectionString, {
    tableName,
    ...(feed && { changeFeed: feed() }),
    onWatchError: () => {},
    clientOptions: {
      additionalPolicies: policies.map((policy) => ({ policy, position: "perRetry" as const })),
    },
  });
}

/** Resolves once `store`'s feed has said where it starts (its first resync). */
function established(store: AzureTableMembershipStore): Promise<void> {
  return new Promise((resolve) => {
    const stop = store.watch((change) => {
      if (change.type !== "resync") return;
      stop();
      resolve();
    });
  });
}

async function propagation(
  ctx: BenchContext,
  feed: (() => ChangeFeed) | undefined,
  servers: number,
  revokes: number,
): Promise<number[]> {
  const tableName = ctx.table();
  const admin = openStore(ctx, tableName, feed);
  const left = new Map<string, (at: number) => void>();
  const nodes = await Promise.all(
    Array.from({ length: servers }, async (_, i) => {
      const store = openStore(ctx, tableName, feed);
      await established(store);
      const hub: HubBinding = {
        join() {},
        leave: (connectionId) => left.get(connectionId)?.(performance.now()),
      };
      return { i, store, sync: new MembershipSync({ store, hub }) };
    }),
  );
  const samples: number[] = [];
  try {
    for (let r = 0; r < revokes; r++) {
      const user = `user-${r}`;
      await admin.addToGroup(user, "room");
      for (const node of nodes) await node.sync.connect(`${node.i}-${r}`, user);
      // At a random point of the pollers' cycle.
      await sleep(Math.random() * 300);
      const arrivals = nodes.map(
        (node) =>
          new Promise<number>((resolve) => {
            left.set(`${node.i}-${r}`, resolve);
          }),
      );
      const started = performance.now();
      await admin.removeFromGroup(user, "room");
      for (const at of await Promise.all(arrivals)) samples.push(at - started);
      for (const node of nodes) node.sync.disconnect(`${node.i}-${r}`);
    }
  } finally {
    for (const node of nodes) {
      await node.sync.close();
      await node.store.close();
    }
    await admin.close();
  }
  return samples;
}

/** A reader's requests and rows per quiet poll with `retained` changes in the log. */
async function quietPolls(ctx: BenchContext, retained: number) {
  const tableName = ctx.table();
  const client = TableClient.fromConnectionString(ctx.connectionString, tableName, {
    allowInsecureConnection: true,
  });
  await client.createTable();
  const log = new TableChangeLog(client, {
    ready: async () => {},
    pollIntervalMs: 250,
    idlePollIntervalMs: 1_000,
    retentionMs: 3_600_000,
  });
  for (let i = 0; i < retained; i += 9_900) {
    const n = Math.min(9_900, retained - i);
    await log.publish(
      Array.from({ length: n }, (_, j) => ({
        type: "added" as const,
        userId: `u${i + j}`,
        group: "g",
      })),
    );
  }
  const reads = logReads();
  const reader = openStore(ctx, tableName, undefined, [reads.policy]);
  await reader.verify(); // sets up the feed marker of a table TableChangeLog alone wrote to
  const stop = reader.watch(() => {});
  await established(reader);
  const before = { requests: reads.requests, rows: reads.rows };
  const started = performance.now();
  await sleep(2_000);
  const seconds = (performance.now() - started) / 1_000;
  stop();
  await reader.close();
  const requests = reads.requests - before.requests;
  const polls = requests / CHANGE_LOG_SHARDS;
  return {
    requestsPerPoll: CHANGE_LOG_SHARDS,
    rowsPerPoll: round((reads.rows - before.rows) / polls),
    requestsPerSecond: round(requests / seconds, 1),
  };
}

async function commandsPerChange(redisUrl: string, single: number, burst: number) {
  const monitor = createClient({ url: redisUrl });
  await monitor.connect();
  const processed = async () =>
    Number(/total_commands_processed:(\d+)/.exec(await monitor.info("stats"))?.[1] ?? 0);
  const prefix = `bench${Date.now()}`;
  const writer = new RedisChangeFeed({ url: redisUrl, prefix });
  const readers = Array.from({ length: 8 }, () => new RedisChangeFeed({ url: redisUrl, prefix }));
  let seen = 0;
  await Promise.all(
    readers.map(
      (reader) =>
        new Promise<void>((resolve) =>
          reader.subscribe(
            (change) => {
              if (change.type === "resync") resolve();
              else seen++;
            },
            () => {},
          ),
        ),
    ),
  );
  await writer.publish([{ type: "added", userId: "warm", group: "up" }]);
  await waitFor(() => seen === readers.length);
  seen = 0;
  let before = await processed();
  for (let i = 0; i < single; i++) {
    await writer.publish([{ type: "added", userId: `one-${i}`, group: "g" }]);
    await waitFor(() => seen === (i + 1) * readers.length);
  }
  const perSingle = (await processed()) - before - 1; // minus this INFO
  seen = 0;
  before = await processed();
  await writer.publish(
    Array.from({ length: burst }, (_, i) => ({
      type: "added" as const,
      userId: `b${i}`,
      group: "g",
    })),
  );
  await waitFor(() => seen === burst * readers.length);
  const perBurst = (await processed()) - before - 1;
  await Promise.all([writer.close(), ...readers.map((r) => r.close())]);
  await monitor.close();
  return { single: round(perSingle / single), burst: round(perBurst / burst, 3) };
}

async function waitFor(condition: () => boolean) {
  while (!condition()) await sleep(1);
}

const scaleOut: Benchmark = async (ctx) => {
  const redis = await startRedis();
  const rows: Row[] = [];
  try {
    const revokes = ctx.quick ? 8 : 40;
    for (const servers of ctx.quick ? [2, 8] : [2, 4, 8]) {
      const results = new Map<FeedKind, number[]>();
      for (const kind of ["table log", "Redis"] as const) {
        // Each run on a table (and Redis keys) of its own: nothing carries over.
        const prefix = `${ctx.table()}-${servers}`;
        const feed =
          kind === "Redis" ? () => new RedisChangeFeed({ url: redis.url, prefix }) : undefined;
        results.set(kind, await propagation(ctx, feed, servers, revokes));
      }
      const table = results.get("table log") as number[];
      const onRedis = results.get("Redis") as number[];
      rows.push({
        benchmark: "scale-out: revoke propagation",
        case: `${servers} servers, Redis feed (${revokes} revokes)`,
        value: round(median(onRedis)),
        unit: "ms",
        p99: round(p99(onRedis)),
        baseline: { label: "table log p99", value: round(p99(table)) },
        ratio: round(p99(table) / p99(onRedis), 1),
        target: "p99 ≤ 50 ms at 8 servers",
        ...(servers === 8 && { met: p99(onRedis) <= 50 }),
        details: { tableLogMedian: round(median(table)), tableLogP99: round(p99(table)) },
      });
    }

    const sizes = ctx.quick ? [100, 5_000] : [100, 5_000, 50_000];
    const polls = [];
    for (const retained of sizes) polls.push({ retained, ...(await quietPolls(ctx, retained)) });
    const smallest = polls[0]?.rowsPerPoll ?? 0;
    for (const poll of polls) {
      rows.push({
        benchmark: "scale-out: table-log quiet poll",
        case: `${poll.retained.toLocaleString("en")} changes retained`,
        value: poll.rowsPerPoll,
        unit: "rows/poll",
        // A Timestamp-filtered query of one log partition (the previous design) reads them all.
        baseline: { label: "Timestamp scan rows/poll", value: poll.retained },
        ratio: round(poll.retained / poll.rowsPerPoll, 0),
        target: "independent of the retained size",
        met: poll.rowsPerPoll === smallest,
        details: {
          requestsPerPoll: poll.requestsPerPoll,
          requestsPerSecond: poll.requestsPerSecond,
        },
      });
    }

    const commands = await commandsPerChange(
      redis.url,
      ctx.quick ? 50 : 200,
      ctx.quick ? 500 : 2_000,
    );
    rows.push(
      {
        benchmark: "scale-out: Redis commands",
        case: "per change, one at a time, 8 subscribers",
        value: commands.single,
        unit: "commands",
        target: "1 EVAL (Redis counts its INCRBY and XADD too) + 1 XREAD per subscriber",
      },
      {
        benchmark: "scale-out: Redis commands",
        case: "per change, a burst in one publish, 8 subscribers",
        value: commands.burst,
        unit: "commands",
      },
    );
  } finally {
    await redis.stop();
  }
  return rows;
};

export default scaleOut;
