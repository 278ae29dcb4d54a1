import {
  AzureNamedKeyCredential,
  AzureSASCredential,
  generateTableSas,
  odata,
  TableClient,
  type TableSasPermissions,
} from "@azure/data-tables";
import { afterEach, describe, expect, inject, it, vi } from "vitest";
import {
  AzureTableMembershipStore,
  MembershipError,
  type MembershipStore,
  type MembershipUpdate,
} from "../adapters/index.js";
import { shardOf } from "../adapters/shard.js";
import { CHANGE_LOG_SHARDS } from "../adapters/stores/azure-change-log.js";
import { startAzurite } from "../adapters/testing/azurite.js";
import {
  EVERY_CODE_POINT_NAMES,
  HOSTILE_NAMES,
  testMembershipStore,
} from "../adapters/testing/index.js";
import { azureStore, requestCounter, tableNameOf } from "./support/azure.js";

testMembershipStore("AzureTableMembershipStore on Azurite", {
  create: () => azureStore(),
  sibling: (store) => azureStore({ tableName: tableNameOf(store) }),
});

const opened: MembershipStore[] = [];
const track = <T extends MembershipStore>(store: T): T => {
  opened.push(store);
  return store;
};
afterEach(async () => {
  vi.restoreAllMocks();
  await Promise.all(opened.splice(0).map((store) => store.close()));
});

async function drain<T>(source: AsyncIterable<T>): Promise<number> {
  let n = 0;
  for await (const _ of source) n++;
  return n;
}

describe("AzureTableMembershipStore storage requests per operation", () => {
  it("matches the costs the README states", async () => {
    const counter = requestCounter();
    const store = track(azureStore({ policies: [counter.policy] }));
    const cost = async (operation: () => Promise<unknown>) => {
      const before = counter.count;
      await operation();
      return counter.count - before;
    };

    expect(await cost(() => store.isMember("warm", "up"))).toBe(2); // createTable once, then the read
    // The first write reads the table's feed marker and creates it, and reads the log's head.
    expect(await cost(() => store.addToGroup("alice", "room"))).toBe(3 + 3);
    expect(await cost(() => store.addToGroup("alice", "room"))).toBe(3);
    expect(await cost(() => store.isMember("alice", "room"))).toBe(1);
    expect(await cost(() => store.groupsOf("alice"))).toBe(1);
    expect(await cost(() => store.removeFromGroup("alice", "room"))).toBe(5);
    expect(await cost(() => store.removeFromGroup("alice", "room"))).toBe(2);
    // A writer reads a log partition's head once, then knows it: warm the other three.
    const oneUserPer = [0, 1, 2, 3].map((shard) =>
      Array.from({ length: 100 }, (_, i) => `w${i}`).find(
        (user) => shardOf(user, CHANGE_LOG_SHARDS) === shard,
      ),
    ) as string[];
    await store.addMany(oneUserPer.map((userId) => ({ userId, group: "warm" })));

    /** Log transactions for these updates: 99 a transaction, per log partition. */
    const logTransactions = (users: string[]) => {
      const perShard = new Map<number, number>();
      for (const u of users) {
        const shard = shardOf(u, CHANGE_LOG_SHARDS);
        perShard.set(shard, (perShard.get(shard) ?? 0) + 1);
      }
      return [...perShard.values()].reduce((sum, n) => sum + Math.ceil(n / 99), 0);
    };
    const many = Array.from({ length: 1_001 }, (_, i) => `m${i}`);
    // addMany: per side, one transaction per 100 rows of a partition; the log, 99 per transaction.
    // One user into 1,001 groups: 1,001 index rows (one per partition) + 11 + 11.
    expect(await cost(() => store.addMany(many.map((group) => ({ userId: "big", group }))))).toBe(
      1_001 + 11 + 11,
    );
    // 1,001 users into one group: 11 index transactions + 1,001 user rows + the log.
    expect(
      await cost(() => store.addMany(many.map((userId) => ({ userId, group: "crowd" })))),
    ).toBe(11 + 1_001 + logTransactions(many));
    expect(await cost(() => store.groupsOf("big"))).toBe(2); // ceil(1,001 / 1,000) pages
    expect(await cost(() => store.countMembers("crowd"))).toBe(2);
    expect(await cost(() => drain(store.membersOf("crowd")))).toBe(2);

    // list (2 pages) + log twice (11 transactions each) + user side (11) + a delete per group row
    expect(await cost(() => store.removeUser("big"))).toBe(2 + 22 + 11 + 1_001);
    const groups = many.slice(0, 150);
    await Promise.all(groups.map((g) => store.addToGroup("wide", g)));
    expect(await cost(() => store.removeUser("wide"))).toBe(1 + 4 + 2 + 150);
    // deleteGroup mirrors it: list + log twice + one delete per user row + group side in transactions
    expect(await cost(() => store.deleteGroup("crowd"))).toBe(
      2 + 2 * logTransactions(many) + 1_001 + 11,
    );
  });

  it("sends no request for invalid input", async () => {
    const counter = requestCounter();
    const store = track(azureStore({ policies: [counter.policy] }));
    await expect(store.addToGroup("", "room")).rejects.toBeInstanceOf(MembershipError);
    await expect(store.addToGroup("a", "r", { expiresAt: new Date(0) })).rejects.toThrow(/future/);
    await expect(store.groupsOf("\uD800")).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    const members = store.membersOf("x".repeat(1_025))[Symbol.asyncIterator]();
    await expect(members.next()).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    expect(counter.count).toBe(0);
  });
});

describe("AzureTableMembershipStore when storage is down", () => {
  it("reports STORE_UNAVAILABLE with the cause, never an empty answer", async () => {
    const azurite = await startAzurite();
    const store = track(
      azureStore({
        connectionString: azurite.connectionString,
        clientOptions: {
          retryOptions: { maxRetries: 1, retryDelayInMs: 10, maxRetryDelayInMs: 20 },
        },
      }),
    );
    await store.addToGroup("alice", "room");
    await azurite.stop();

    const settle = (promise: Promise<unknown>) =>
      promise.then(
        (value) => ({ value }),
        (e: unknown) => e,
      );
    const errors = await Promise.all(
      [
        store.isMember("alice", "room"),
        store.groupsOf("alice"),
        store.countMembers("room"),
        drain(store.membersOf("room")),
        store.addToGroup("alice", "other"),
        store.removeFromGroup("alice", "room"),
        store.removeUser("alice"),
        store.deleteGroup("room"),
      ].map(settle),
    );
    for (const error of errors) {
      expect(error).toBeInstanceOf(MembershipError);
      expect((error as MembershipError).code).toBe("STORE_UNAVAILABLE");
      expect((error as MembershipError).cause).toMatchObject({ name: "RestError" });
    }
  });
});

describe("AzureTableMembershipStore with every code point on its own paths", () => {
  const rawClient = (store: MembershipStore) =>
    TableClient.fromConnectionString(inject("azuriteConnectionString"), `${tableNameOf(store)}`, {
      allowInsecureConnection: true,
    });

  it("the change log carries every name to another instance exactly", async () => {
    const store = track(azureStore());
    const other = track(azureStore({ tableName: tableNameOf(store) }));
    const seen: MembershipUpdate[] = [];
    other.watch((change) => change.type !== "resync" && seen.push(change));
    await vi.waitFor(() => expect(other.addToGroup("warm", "up")).resolves.toBeUndefined());
    await store.addMany(EVERY_CODE_POINT_NAMES.map((group) => ({ userId: "batcher", group })));
    await store.removeUser("batcher");
    const forBatcher = () => seen.filter((c) => c.userId === "batcher");
    await expect
      .poll(() => forBatcher().length, { timeout: 10_000 })
      .toBeGreaterThanOrEqual(2 * EVERY_CODE_POINT_NAMES.length);
    const groups = (type: string) =>
      new Set(
        forBatcher()
          .filter((c) => c.type === type)
          .map((c) => c.group),
      );
    expect(groups("added")).toEqual(new Set(EVERY_CODE_POINT_NAMES));
    expect(groups("removed")).toEqual(new Set(EVERY_CODE_POINT_NAMES));
  });

  it("repair restores the group side of every name", async () => {
    const store = track(azureStore());
    const names = [...HOSTILE_NAMES, ...EVERY_CODE_POINT_NAMES];
    await store.addMany(names.map((userId) => ({ userId, group: "everyone" })));
    const client = rawClient(store);
    const filter = odata`PartitionKey ge ${"g:"} and PartitionKey lt ${"g;"}`;
    for await (const row of client.listEntities({ queryOptions: { filter } }))
      await client.deleteEntity(row.partitionKey as string, row.rowKey as string);
    expect(await store.countMembers("everyone")).toBe(0);
    const report = await store.repair();
    expect(report.indexRestored.map((p) => p.userId).sort()).toEqual([...names].sort());
    const members = [];
    for await (const m of store.membersOf("everyone")) members.push(m.userId);
    expect(members.sort()).toEqual([...names].sort());
  });
});

describe("AzureTableMembershipStore refused by the storage", () => {
  const connectionString = () => inject("azuriteConnectionString");
  const endpoint = () => /TableEndpoint=([^;]+)/.exec(connectionString())?.[1] as string;
  const accountKey = () =>
    new AzureNamedKeyCredential(
      /AccountName=([^;]+)/.exec(connectionString())?.[1] as string,
      /AccountKey=([^;]+)/.exec(connectionString())?.[1] as string,
    );
  const sasStore = (tableName: string, permissions: TableSasPermissions, expiresOn: Date) => {
    const sas = generateTableSas(tableName, accountKey(), {
      permissions,
      startsOn: new Date(expiresOn.getTime() - 7_200_000),
      expiresOn,
    });
    return track(
      new AzureTableMembershipStore(endpoint(), new AzureSASCredential(sas), {
        tableName,
        clientOptions: { retryOptions: { maxRetries: 0 } },
      }),
    );
  };
  const all = { query: true, add: true, update: true, delete: true };
  const wrongKeyConnectionString = () =>
    connectionString().replace(
      /AccountKey=[^;]+/,
      `AccountKey=${Buffer.from("not the key".padEnd(64, "!")).toString("base64")}`,
    );
  const refusal = (call: Promise<unknown>) =>
    call.then(
      () => expect.fail("expected a refusal"),
      (error: unknown) => error as MembershipError,
    );

  it("a wrong account key is ACCESS_DENIED, saying so, on every kind of call", async () => {
    const store = track(azureStore({ connectionString: wrongKeyConnectionString() }));
    for (const call of [
      () => store.addToGroup("alice", "room"),
      () => store.isMember("alice", "room"),
      () =>
        store.addMany([
          { userId: "alice", group: "a" },
          { userId: "alice", group: "b" },
        ]),
      async () => {
        for await (const _ of store.membersOf("room"));
      },
    ]) {
      const error = await refusal(call());
      expect(error).toBeInstanceOf(MembershipError);
      expect(error.code).toBe("ACCESS_DENIED");
      expect(error.message).toMatch(/refused the account key or SAS \(AuthorizationFailure\)/);
      expect(error.cause).toMatchObject({ statusCode: 403 });
    }
  });

  it("a SAS without delete permission is ACCESS_DENIED and the membership stays", async () => {
    const owner = track(azureStore());
    await owner.addToGroup("alice", "room");
    const tableName = `${tableNameOf(owner)}`;
    const store = sasStore(tableName, { ...all, delete: false }, new Date(Date.now() + 3_600_000));
    expect(await store.isMember("alice", "room")).toBe(true);
    const error = await refusal(store.removeFromGroup("alice", "room"));
    expect(error.code).toBe("ACCESS_DENIED");
    expect(error.message).toMatch(/refused the account key or SAS/);
    expect((await refusal(store.removeUser("alice"))).code).toBe("ACCESS_DENIED");
    expect(await owner.isMember("alice", "room")).toBe(true);
  });

  it("an expired SAS is ACCESS_DENIED", async () => {
    const owner = track(azureStore());
    await owner.addToGroup("alice", "room");
    const store = sasStore(`${tableNameOf(owner)}`, all, new Date(Date.now() - 3_600_000));
    const error = await refusal(store.groupsOf("alice"));
    expect(error.code).toBe("ACCESS_DENIED");
    expect(error.message).toMatch(/expiry and permissions/);
  });

  it("a table that does not exist and may not be created is STORE_REJECTED", async () => {
    const store = sasStore(`missing${Date.now()}`, all, new Date(Date.now() + 3_600_000));
    const error = await refusal(store.groupsOf("alice"));
    expect(error.code).toBe("STORE_REJECTED");
    expect(error.message).toMatch(/404 TableNotFound/);
  });

  it("a refused watch reports ACCESS_DENIED to onWatchError, once per outage", async () => {
    const errors: unknown[] = [];
    const store = track(
      azureStore({
        connectionString: wrongKeyConnectionString(),
        onWatchError: (error) => errors.push(error),
      }),
    );
    store.watch(() => {});
    await expect.poll(() => errors.length).toBe(1);
    expect(errors[0]).toMatchObject({ name: "MembershipError", code: "ACCESS_DENIED" });
    await new Promise((resolve) => setTimeout(resolve, 500)); // five more failed polls
    expect(errors).toHaveLength(1);
  });
});
