import { randomBytes } from "node:crypto";
import { subscribe, unsubscribe } from "node:diagnostics_channel";
import { createClient } from "redis";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  type ChangeAppliedEvent,
  MembershipError,
  type MembershipStore,
  MembershipSync,
} from "../adapters/index.js";
import { RedisBroadcast, RedisChangeFeed } from "../adapters/redis/index.js";
import { testMembershipStore } from "../adapters/testing/index.js";
import { azureStore, tableNameOf } from "./support/azure.js";
import { RecordingHub } from "./support/recording-hub.js";
import { partitionableProxy, type RedisServer, startRedis } from "./support/redis.js";
import { watchChanges } from "./support/watch.js";

/** `npm run test:redis`: the Redis change feed and broadcast on a real redis-server of their own. */
let redis: RedisServer;
beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis?.stop();
});

const opened: Array<{ close(): Promise<unknown> }> = [];
const track = <T extends { close(): Promise<unknown> }>(item: T): T => {
  opened.push(item);
  return item;
};
afterEach(async () => {
  for (const item of opened.splice(0).reverse()) await item.close();
});

const prefixes = new WeakMap<object, string>();
/** An Azure store on a fresh table whose changes travel on Redis (its own key prefix). */
function redisStore(
  options: {
    like?: MembershipStore;
    url?: string;
    maxLength?: number;
    onWatchError?: (e: unknown) => void;
  } = {},
) {
  const prefix = options.like
    ? (prefixes.get(options.like) as string)
    : `t${randomBytes(4).toString("hex")}`;
  const store = azureStore({
    ...(options.like && { tableName: tableNameOf(options.like) }),
    ...(options.onWatchError && { onWatchError: options.onWatchError }),
    changeFeed: new RedisChangeFeed({
      url: options.url ?? redis.url,
      prefix,
      publishTimeoutMs: 1_000,
      ...(options.maxLength && { maxLength: options.maxLength }),
    }),
  });
  prefixes.set(store, prefix);
  return store;
}

testMembershipStore(
  "AzureTableMembershipStore with RedisChangeFeed",
  { create: () => redisStore(), sibling: (store) => redisStore({ like: store }) },
  { watchTimeout: 5_000 },
);

describe("RedisChangeFeed", { timeout: 60_000 }, () => {
  it("a store with a Redis feed refuses a table set up for the table log, and the other way", async () => {
    const tableLog = track(azureStore());
    await tableLog.addToGroup("alice", "room");
    const onRedis = track(redisStore({ like: tableLog }));
    await expect(onRedis.addToGroup("bob", "room")).rejects.toMatchObject({
      code: "STORE_REJECTED",
      message: expect.stringMatching(
        /travel on the table-log feed, but this store uses the redis feed/,
      ),
    });
    await expect(onRedis.verify()).rejects.toMatchObject({ code: "STORE_REJECTED" });
    expect(await onRedis.isMember("bob", "room")).toBe(false);
    await onRedis.adoptChangeFeed();
    await onRedis.addToGroup("bob", "room");
    // Instances check once: a table-log store started after the switch refuses to write.
    const late = track(azureStore({ tableName: tableNameOf(tableLog) }));
    await expect(late.removeFromGroup("alice", "room")).rejects.toMatchObject({
      code: "STORE_REJECTED",
    });
    expect(await late.isMember("alice", "room")).toBe(true);
  });

  it("takes a connected client of yours, duplicates it for its blocking reads, and leaves it open", async () => {
    const client = createClient({ url: redis.url });
    await client.connect();
    const prefix = `c${randomBytes(4).toString("hex")}`;
    const writer = track(azureStore({ changeFeed: new RedisChangeFeed({ client, prefix }) }));
    const reader = track(
      azureStore({
        tableName: tableNameOf(writer),
        changeFeed: new RedisChangeFeed({ client, prefix }),
      }),
    );
    const seen = watchChanges(reader);
    await expect.poll(() => seen.resyncs).toBe(1);
    await writer.addToGroup("alice", "room");
    await expect
      .poll(() => seen.updates)
      .toEqual([{ type: "added", userId: "alice", group: "room" }]);
    await writer.close();
    await reader.close();
    opened.splice(0);
    expect(await client.ping()).toBe("PONG"); // still yours, still open
    await client.close();
  });

  it("a publish that fails fails the operation: a revoke is never stored unannounced", async () => {
    const store = track(redisStore());
    await store.addToGroup("alice", "room");
    await store.close();
    opened.pop();
    const deaf = track(redisStore({ like: store, url: "redis://127.0.0.1:1" }));
    const started = Date.now();
    const error = await deaf.removeFromGroup("alice", "room").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(MembershipError);
    expect((error as MembershipError).code).toBe("STORE_UNAVAILABLE");
    expect((error as MembershipError).message).toMatch(/Redis is unavailable/);
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(await deaf.isMember("alice", "room")).toBe(true); // not revoked behind anyone's back
    await expect(deaf.addToGroup("bob", "room")).rejects.toMatchObject({
      code: "STORE_UNAVAILABLE",
    });
  });

  it("sends each change as one EVAL per stream, and a reader gets it within milliseconds", async () => {
    const writer = track(redisStore());
    const reader = track(redisStore({ like: writer }));
    const seen = watchChanges(reader);
    await expect.poll(() => seen.resyncs).toBe(1);
    const monitor = createClient({ url: redis.url });
    await monitor.connect();
    const before = Number(
      /total_commands_processed:(\d+)/.exec(await monitor.info("stats"))?.[1] ?? 0,
    );
    const started = performance.now();
    await writer.addToGroup("alice", "room");
    await expect.poll(() => seen.updates.length, { interval: 1 }).toBe(1);
    const latency = performance.now() - started;
    const after = Number(
      /total_commands_processed:(\d+)/.exec(await monitor.info("stats"))?.[1] ?? 0,
    );
    await monitor.close();
    // The EVAL, the reader's XREAD that returned it and the one it blocks on next, the INFO.
    expect(after - before).toBeLessThanOrEqual(5);
    expect(latency).toBeLessThan(1_000);
  });

  it("carries when each change was written: MembershipSync reports its propagation lag", async () => {
    const lags: Array<number | undefined> = [];
    const listener = (message: unknown) => lags.push((message as ChangeAppliedEvent).lagMs);
    subscribe("hub-membership:change", listener);
    try {
      const writer = track(redisStore());
      const reader = track(redisStore({ like: writer }));
      const sync = track(new MembershipSync({ store: reader, hub: new RecordingHub() }));
      await sync.connect("c1", "alice");
      const started = Date.now();
      await writer.addToGroup("alice", "room");
      await expect.poll(() => lags.length).toBe(1);
      expect(lags[0]).toBeGreaterThanOrEqual(0);
      expect(lags[0]).toBeLessThanOrEqual(Date.now() - started);
    } finally {
      unsubscribe("hub-membership:change", listener);
    }
  });

  it("a process cut off from Redis while a revoke is made and history is trimmed resyncs, and its connections end in their stored groups", async () => {
    const proxy = await partitionableProxy(redis.port);
    track(proxy);
    const errors: unknown[] = [];
    const admin = track(redisStore({ maxLength: 10 }));
    const server = track(
      redisStore({
        like: admin,
        url: proxy.url,
        maxLength: 10,
        onWatchError: (e) => errors.push(e),
      }),
    );
    await admin.addToGroup("alice", "kept");
    await admin.addToGroup("alice", "revoked");
    const hub = new RecordingHub();
    const sync = track(new MembershipSync({ store: server, hub, onError: () => {} }));
    await sync.connect("c1", "alice");
    expect(hub.of("c1")).toEqual(["kept", "revoked"]);

    proxy.cut();
    await expect.poll(() => errors.length).toBeGreaterThan(0);
    expect(errors[0]).toMatchObject({ code: "STORE_UNAVAILABLE" });
    await admin.removeFromGroup("alice", "revoked");
    await admin.addToGroup("alice", "granted");
    // Far more than the stream keeps: the reader's cursor falls off the trimmed history.
    await admin.addMany(
      Array.from({ length: 500 }, (_, i) => ({ userId: "alice", group: `x${i}` })),
    );
    await admin.removeUser("alice");
    await admin.addMany([
      { userId: "alice", group: "kept" },
      { userId: "alice", group: "granted" },
    ]);
    expect(hub.of("c1")).toEqual(["kept", "revoked"]); // nothing arrived while cut off

    proxy.heal();
    await expect.poll(() => hub.of("c1"), { timeout: 15_000 }).toEqual(["granted", "kept"]);
    expect(hub.calls).toContain("leave c1 revoked revoked");
  });

  it("redis-server killed and restarted empty: writes fail meanwhile, then every server resyncs and resumes", async () => {
    const own = await startRedis();
    try {
      const store = (like?: MembershipStore) =>
        track(
          azureStore({
            ...(like && { tableName: tableNameOf(like) }),
            onWatchError: () => {},
            changeFeed: new RedisChangeFeed({ url: own.url, publishTimeoutMs: 1_000 }),
          }),
        );
      const admin = store();
      const servers = [store(admin), store(admin)];
      await admin.addToGroup("alice", "room");
      const hubs = servers.map(() => new RecordingHub());
      const syncs = servers.map((s, i) =>
        track(new MembershipSync({ store: s, hub: hubs[i] as RecordingHub, onError: () => {} })),
      );
      for (const [i, sync] of syncs.entries()) await sync.connect(`c${i}`, "alice");

      await own.kill();
      await expect(admin.removeFromGroup("alice", "room")).rejects.toMatchObject({
        code: "STORE_UNAVAILABLE",
      });
      expect(await admin.isMember("alice", "room")).toBe(true);
      await own.restart();
      // The admin retries once Redis is back; both servers hear it although Redis lost its data.
      await expect
        .poll(() => admin.removeFromGroup("alice", "room"), { timeout: 15_000 })
        .toBe(true);
      for (const hub of hubs)
        await expect
          .poll(() => hub.of(hub === hubs[0] ? "c0" : "c1"), { timeout: 15_000 })
          .toEqual([]);
      await admin.addToGroup("alice", "after");
      for (const [i, hub] of hubs.entries())
        await expect.poll(() => hub.of(`c${i}`), { timeout: 15_000 }).toEqual(["after"]);
    } finally {
      await own.stop();
    }
  });
});

describe("RedisBroadcast", { timeout: 30_000 }, () => {
  it("delivers what one server publishes to every other server once, not to itself, bytes intact", async () => {
    const channel = `c${randomBytes(4).toString("hex")}`;
    const got: Array<Array<[unknown, string]>> = [[], [], []];
    const servers = got.map(() => track(new RedisBroadcast({ url: redis.url, channel })));
    await Promise.all(
      servers.map((s, i) => s.start((target, frame) => got[i]?.push([target, frame.toString()]))),
    );
    const text = `{"text":"é😀\\n\\u2028 ${"x".repeat(70_000)}"}`;
    await servers[0]?.publish({ group: "Sports" }, Buffer.from(text));
    await servers[1]?.publish({ userId: "a\nb" }, Buffer.from("whisper"));
    await expect.poll(() => got.map((inbox) => inbox.length)).toEqual([1, 1, 2]);
    expect(got[1]?.[0]).toEqual([{ group: "Sports" }, text]);
    expect(got[0]?.[0]).toEqual([{ userId: "a\nb" }, "whisper"]);
    expect(got[2]).toEqual([
      [{ group: "Sports" }, text],
      [{ userId: "a\nb" }, "whisper"],
    ]);
  });
});
