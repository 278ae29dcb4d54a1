import { type PipelinePolicy, RestError } from "@azure/core-rest-pipeline";
import { odata, TableClient } from "@azure/data-tables";
import { afterEach, describe, expect, inject, it, vi } from "vitest";
import {
  type ChangeFeed,
  ChangeFeedMismatchError,
  type MembershipStore,
  MembershipSync,
} from "../adapters/index.js";
import { CHANGE_LOG_SHARDS } from "../adapters/stores/azure-change-log.js";
import { azureStore, tableNameOf } from "./support/azure.js";
import { logReads } from "./support/log-reads.js";
import { RecordingHub } from "./support/recording-hub.js";
import { watchChanges } from "./support/watch.js";

const opened: Array<{ close(): Promise<void> }> = [];
const track = <T extends { close(): Promise<void> }>(item: T): T => {
  opened.push(item);
  return item;
};
afterEach(async () => {
  vi.restoreAllMocks();
  for (const item of opened.splice(0).reverse()) await item.close();
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const rawClient = (store: MembershipStore) =>
  TableClient.fromConnectionString(inject("azuriteConnectionString"), `${tableNameOf(store)}`, {
    allowInsecureConnection: true,
  });

/** The change log's data rows (not the heads), in every partition. */
async function logRows(store: MembershipStore): Promise<string[]> {
  const keys: string[] = [];
  const filter = odata`PartitionKey ge ${"c:0"} and PartitionKey lt ${"c;"} and RowKey lt ${"head"}`;
  for await (const row of rawClient(store).listEntities({ queryOptions: { filter } }))
    keys.push(`${row.partitionKey}/${row.rowKey}`);
  return keys;
}

/** A policy that fails every request while `down` is set, as an unreachable storage would. */
function outage() {
  const state = {
    down: false,
    policy: {
      name: "outage",
      sendRequest(request, next) {
        if (state.down)
          return Promise.reject(new RestError("connect ECONNREFUSED", { code: "ECONNREFUSED" }));
        return next(request);
      },
    } satisfies PipelinePolicy,
  };
  return state;
}

/** Resolves once `store`'s watcher has seen a change made after it started. */
async function established(store: MembershipStore, seen: ReturnType<typeof watchChanges>) {
  const writer = track(azureStore({ tableName: tableNameOf(store) }));
  let n = 0;
  await expect
    .poll(
      async () => {
        await writer.addToGroup("warm", `up-${n++}`);
        return seen.updates.some((u) => u.userId === "warm");
      },
      { timeout: 10_000, interval: 200 },
    )
    .toBe(true);
}

describe("the table change log", () => {
  it("delivers a change from a writer whose clock is an hour behind", async () => {
    const reader = track(azureStore());
    const writer = track(azureStore({ tableName: tableNameOf(reader) }));
    const seen = watchChanges(reader);
    await established(reader, seen);
    const realNow = Date.now;
    vi.spyOn(Date, "now").mockImplementation(() => realNow() - 3_600_000);
    await writer.addToGroup("alice", "skewed");
    await writer.removeFromGroup("alice", "skewed");
    vi.restoreAllMocks();
    await expect
      .poll(() => seen.updates.filter((u) => u.userId === "alice").map((u) => u.type), {
        timeout: 10_000,
      })
      .toEqual(["added", "removed", "removed"]); // a revoke is announced, then confirmed
  });

  it("starts from now: the first poll reads the heads, not the retained history", async () => {
    const writer = track(azureStore());
    await writer.addMany(Array.from({ length: 500 }, (_, i) => ({ userId: `u${i}`, group: "g" })));
    const reads = logReads();
    const reader = track(azureStore({ tableName: tableNameOf(writer), policies: [reads.policy] }));
    const seen = watchChanges(reader);
    await expect.poll(() => seen.resyncs).toBe(1); // the subscription's start is covered
    await sleep(600);
    expect(seen.updates).toEqual([]);
    // Every quiet poll since: one keyed read per partition, returning only its head row.
    expect(reads.requests).toBeGreaterThan(0);
    expect(reads.rows).toBe(reads.requests);
  });

  it("a quiet poll reads the same rows whether 100 or 3,000 changes are retained", async () => {
    const perQuietPoll = async (retained: number) => {
      const writer = track(azureStore());
      for (let i = 0; i < retained; i += 1_000) {
        const n = Math.min(1_000, retained - i);
        await writer.addMany(
          Array.from({ length: n }, (_, j) => ({ userId: `u${i + j}`, group: "g" })),
        );
      }
      expect((await logRows(writer)).length).toBe(retained);
      const reads = logReads();
      const reader = track(
        azureStore({ tableName: tableNameOf(writer), policies: [reads.policy] }),
      );
      const seen = watchChanges(reader);
      await expect.poll(() => seen.resyncs).toBe(1);
      const before = { ...reads };
      await sleep(1_000);
      const polls = (reads.requests - before.requests) / CHANGE_LOG_SHARDS;
      expect(polls).toBeGreaterThanOrEqual(3);
      return { requests: CHANGE_LOG_SHARDS, rows: (reads.rows - before.rows) / polls };
    };
    const small = await perQuietPoll(100);
    const large = await perQuietPoll(3_000);
    expect(small).toEqual({ requests: CHANGE_LOG_SHARDS, rows: CHANGE_LOG_SHARDS });
    expect(large).toEqual(small);
  });

  it("a poll after changes reads those changes and the heads, nothing older", async () => {
    const reads = logReads();
    const reader = track(azureStore({ policies: [reads.policy] }));
    const writer = track(azureStore({ tableName: tableNameOf(reader) }));
    await writer.addMany(
      Array.from({ length: 2_000 }, (_, i) => ({ userId: `old${i}`, group: "g" })),
    );
    const seen = watchChanges(reader);
    await established(reader, seen);
    const before = reads.rows;
    await writer.addMany(Array.from({ length: 50 }, (_, i) => ({ userId: `new${i}`, group: "g" })));
    await expect.poll(() => seen.updates.filter((u) => u.userId.startsWith("new")).length).toBe(50);
    await sleep(300);
    const pollsSince = 4; // at most a few polls ran meanwhile, each reading the heads
    expect(reads.rows - before).toBeLessThanOrEqual(50 + pollsSince * 10 * CHANGE_LOG_SHARDS);
    expect(reads.rows - before).toBeGreaterThanOrEqual(50);
  });

  it("appends from many writers at once keep every partition gapless, and nothing is lost", async () => {
    const reader = track(azureStore());
    const seen = watchChanges(reader);
    await established(reader, seen);
    const writers = Array.from({ length: 4 }, () =>
      track(azureStore({ tableName: tableNameOf(reader) })),
    );
    await Promise.all(
      writers.flatMap((writer, w) =>
        Array.from({ length: 25 }, (_, i) => writer.addToGroup(`writer${w}-u${i % 5}`, `g${i}`)),
      ),
    );
    await expect
      .poll(() => seen.updates.filter((u) => u.userId.startsWith("writer")).length, {
        timeout: 15_000,
      })
      .toBe(100);
    expect(seen.resyncs).toBe(1); // only the start: no gap was ever seen
  });

  it("concurrent writes of one process share log transactions, and every change arrives", async () => {
    let transactions = 0;
    const store = track(
      azureStore({
        policies: [
          {
            name: "countTransactions",
            sendRequest(request, next) {
              if (request.url.endsWith("/$batch")) transactions++;
              return next(request);
            },
          },
        ],
      }),
    );
    const reader = track(azureStore({ tableName: tableNameOf(store) }));
    const seen = watchChanges(reader);
    await established(reader, seen);
    transactions = 0;
    const users = ["ann", "bob", "cy", "dee"];
    await Promise.all(
      Array.from({ length: 100 }, (_, i) =>
        store.addToGroup(users[i % 4] as string, `g${String(i).padStart(3, "0")}`),
      ),
    );
    expect(transactions).toBeLessThan(40); // 100 appends alone would be 100
    await expect
      .poll(() => seen.updates.filter((u) => users.includes(u.userId)).length, { timeout: 10_000 })
      .toBe(100);
    for (const user of users)
      expect(new Set(seen.updates.filter((u) => u.userId === user).map((u) => u.group)).size).toBe(
        25,
      );
  });

  it("trims rows older than the retention, oldest first, and keeps the heads", async () => {
    const store = track(azureStore({ changeRetentionMs: 1_000 }));
    for (let i = 0; i < 5; i++) await store.addToGroup(`u${i}`, "room");
    expect(await logRows(store)).toHaveLength(5);
    watchChanges(store);
    await expect.poll(() => logRows(store), { timeout: 10_000, interval: 200 }).toEqual([]);
    await store.addToGroup("fresh", "room"); // the heads survived: sequence numbers go on
    expect(await logRows(store)).toHaveLength(1);
  });

  it("a reader cut off longer than the retention resyncs, and its connections end in their stored groups", async () => {
    const cut = outage();
    const store = track(
      azureStore({
        changeRetentionMs: 1_000,
        policies: [cut.policy],
        clientOptions: { retryOptions: { maxRetries: 0 } },
        onWatchError: () => {},
      }),
    );
    const admin = track(azureStore({ tableName: tableNameOf(store), changeRetentionMs: 1_000 }));
    await admin.addToGroup("alice", "kept");
    await admin.addToGroup("alice", "revoked");
    const hub = new RecordingHub();
    const sync = track(new MembershipSync({ store, hub, onError: () => {} }));
    await sync.connect("c1", "alice");
    expect(hub.of("c1")).toEqual(["kept", "revoked"]);
    // Let the reader's first poll establish its cursor.
    await sleep(500);

    cut.down = true;
    await admin.removeFromGroup("alice", "revoked");
    await admin.addToGroup("alice", "granted");
    watchChanges(admin); // the admin's own poller trims the log meanwhile
    await expect.poll(() => logRows(admin), { timeout: 10_000, interval: 200 }).toEqual([]);
    expect(hub.of("c1")).toEqual(["kept", "revoked"]); // cut off: nothing arrived yet

    cut.down = false;
    await expect.poll(() => hub.of("c1"), { timeout: 10_000 }).toEqual(["granted", "kept"]);
    expect(hub.calls).toContain("leave c1 revoked revoked");
  });
});

describe("the table's feed switched while a store watches", () => {
  it("reports the switch to onWatchError within feedCheckIntervalMs, and a switch back delivers a resync", async () => {
    const errors: unknown[] = [];
    const watcher = track(
      azureStore({ feedCheckIntervalMs: 100, onWatchError: (error) => errors.push(error) }),
    );
    await watcher.verify();
    const changes: unknown[] = [];
    const unwatch = watcher.watch((change) => changes.push(change));
    const other: ChangeFeed = {
      kind: "elsewhere",
      publish: async () => {},
      subscribe: () => () => {},
      close: async () => {},
    };
    const switcher = track(azureStore({ tableName: tableNameOf(watcher), changeFeed: other }));
    await switcher.adoptChangeFeed();
    await expect.poll(() => errors, { timeout: 2_000 }).toHaveLength(1);
    expect(errors[0]).toBeInstanceOf(ChangeFeedMismatchError);
    expect(errors[0]).toMatchObject({
      code: "STORE_REJECTED",
      tableFeed: "elsewhere",
      storeFeed: "table-log",
    });
    await watcher.adoptChangeFeed(); // back to the table's log
    await expect.poll(() => changes, { timeout: 2_000 }).toContainEqual({ type: "resync" });
    expect(errors).toHaveLength(1); // once per switch, not once per check
    unwatch();
  });
});
