import {
  createHttpHeaders,
  type PipelinePolicy,
  type PipelineRequest,
  RestError,
} from "@azure/core-rest-pipeline";
import { odata, TableClient } from "@azure/data-tables";
import { afterEach, describe, expect, inject, it } from "vitest";
import {
  type AzureTableMembershipStore,
  type MembershipChange,
  MembershipError,
} from "../adapters/index.js";
import { azureStore, requestCounter, tableNameOf } from "./support/azure.js";

type Mode = "fail" | "drop" | "delay";

/** Fails (never sent), drops (sent, answer lost) or delays request number `at` (0-based, from arming). */
function faultInjector() {
  const state = { seen: 0, at: -1, mode: "fail" as Mode, injected: 0 };
  const policy: PipelinePolicy = {
    name: "injectFaults",
    async sendRequest(request, next) {
      const n = state.seen++;
      if (n !== state.at) return next(request);
      state.injected++;
      const fault = () => new RestError(`injected ${state.mode}`, { code: "ECONNRESET", request });
      if (state.mode === "fail") throw fault();
      if (state.mode === "delay") {
        await new Promise((resolve) => setTimeout(resolve, 50));
        return next(request);
      }
      await next(request);
      throw fault();
    },
  };
  return {
    policy,
    arm(offset: number, mode: Mode) {
      state.at = state.seen + offset;
      state.mode = mode;
    },
    disarm() {
      state.at = -1;
    },
    get injected() {
      return state.injected;
    },
  };
}

type Pair = [user: string, group: string];
interface Scenario {
  setup: (store: AzureTableMembershipStore) => Promise<unknown>;
  run: (store: AzureTableMembershipStore) => Promise<unknown>;
  /** Pairs the operation makes live, and pairs it makes gone. */
  live: Pair[];
  gone: Pair[];
  untouched: Pair[];
}

const scenarios: Record<string, Scenario> = {
  addToGroup: {
    setup: async (s) => s.addToGroup("bob", "room"),
    run: (s) => s.addToGroup("alice", "room"),
    live: [["alice", "room"]],
    gone: [],
    untouched: [["bob", "room"]],
  },
  addMany: {
    setup: async (s) => s.addToGroup("bob", "room"),
    run: (s) =>
      s.addMany([
        { userId: "alice", group: "room" },
        { userId: "carol", group: "room" },
        { userId: "alice", group: "other" },
      ]),
    live: [
      ["alice", "room"],
      ["carol", "room"],
      ["alice", "other"],
    ],
    gone: [],
    untouched: [["bob", "room"]],
  },
  removeFromGroup: {
    setup: async (s) => {
      await s.addToGroup("alice", "room");
      await s.addToGroup("bob", "room");
    },
    run: (s) => s.removeFromGroup("alice", "room"),
    live: [],
    gone: [["alice", "room"]],
    untouched: [["bob", "room"]],
  },
  removeUser: {
    setup: async (s) => {
      for (const g of ["g1", "g2", "g3"]) await s.addToGroup("alice", g);
      await s.addToGroup("bob", "g1");
    },
    run: (s) => s.removeUser("alice"),
    live: [],
    gone: [
      ["alice", "g1"],
      ["alice", "g2"],
      ["alice", "g3"],
    ],
    untouched: [["bob", "g1"]],
  },
  deleteGroup: {
    setup: async (s) => {
      for (const u of ["u1", "u2", "u3"]) await s.addToGroup(u, "room");
      await s.addToGroup("u1", "other");
    },
    run: (s) => s.deleteGroup("room"),
    live: [],
    gone: [
      ["u1", "room"],
      ["u2", "room"],
      ["u3", "room"],
    ],
    untouched: [["u1", "other"]],
  },
};

/** Every membership row of the table, by side, as "user|group". */
async function sides(store: AzureTableMembershipStore) {
  const client = TableClient.fromConnectionString(
    inject("azuriteConnectionString"),
    tableNameOf(store) as string,
    {
      allowInsecureConnection: true,
    },
  );
  const read = async (prefix: "u:" | "g:") => {
    const pairs: string[] = [];
    const filter = odata`PartitionKey ge ${prefix} and PartitionKey lt ${prefix === "u:" ? "u;" : "g;"}`;
    for await (const row of client.listEntities<{ userId: string; group: string }>({
      queryOptions: { filter },
    })) {
      pairs.push(`${row.userId}|${row.group}`);
    }
    return pairs.sort();
  };
  return { users: await read("u:"), groups: await read("g:") };
}

const opened: AzureTableMembershipStore[] = [];
afterEach(async () => {
  await Promise.all(opened.splice(0).map((s) => s.close()));
});

function faultyStore() {
  const faults = faultInjector();
  const counter = requestCounter();
  const store = azureStore({
    policies: [counter.policy, faults.policy],
    clientOptions: { retryOptions: { maxRetries: 0 } },
  });
  opened.push(store);
  return { store, faults, counter };
}

let injectedTotal = 0;

describe("Azure store under injected faults", { timeout: 120_000 }, () => {
  for (const [name, scenario] of Object.entries(scenarios)) {
    it(`${name}: a fault at any request is safe, and converges by retry or by repair`, async () => {
      const probe = faultyStore();
      await probe.store.isMember("warm", "up");
      await scenario.setup(probe.store);
      const before = probe.counter.count;
      await scenario.run(probe.store);
      const requests = probe.counter.count - before;
      expect(requests).toBeGreaterThan(1);

      for (let n = 0; n < requests; n++) {
        for (const mode of ["fail", "drop", "delay"] as const) {
          for (const recovery of ["retry", "repair"] as const) {
            const where = `${name}, request ${n + 1}/${requests}, ${mode}, then ${recovery}`;
            const { store, faults } = faultyStore();
            await store.isMember("warm", "up");
            await scenario.setup(store);
            const changes: MembershipChange[] = [];
            const watcher = azureStore({ tableName: tableNameOf(store), pollIntervalMs: 50 });
            opened.push(watcher);
            // Watching before the fault: the table log's first resync says its cursors are set.
            const stop = watcher.watch((change) => changes.push(change));
            await expect.poll(() => changes.some((c) => c.type === "resync")).toBe(true);

            faults.arm(n, mode);
            const outcome = await scenario.run(store).then(
              () => "ok",
              (e: unknown) => e,
            );
            faults.disarm();
            if (mode === "delay") expect(outcome, where).toBe("ok");
            else {
              expect(outcome, where).toBeInstanceOf(MembershipError);
              expect((outcome as MembershipError).code, where).toBe("STORE_UNAVAILABLE");
            }

            // (a) After the fault: a user-side (authoritative) row never lacks its group-side twin,
            // except transiently for the pairs the failed call was removing; untouched pairs are intact.
            const after = await sides(store);
            const removing = new Set(scenario.gone.map(([u, g]) => `${u}|${g}`));
            for (const pair of after.users) {
              if (!removing.has(pair))
                expect(after.groups, `${where}: index lost ${pair}`).toContain(pair);
            }
            for (const [u, g] of scenario.untouched)
              expect(await store.isMember(u, g), where).toBe(true);

            // (b) Recovery converges: both sides agree exactly.
            if (recovery === "retry") await scenario.run(store);
            else await store.repair({ minAgeMs: 0 });
            const healed = await sides(store);
            expect(healed.groups, where).toEqual(healed.users);
            for (const [u, g] of scenario.untouched)
              expect(healed.users, where).toContain(`${u}|${g}`);
            if (recovery === "retry") {
              for (const [u, g] of scenario.live)
                expect(await store.isMember(u, g), where).toBe(true);
              for (const [u, g] of scenario.gone)
                expect(await store.isMember(u, g), where).toBe(false);
              for (const [u, g] of scenario.gone)
                expect(healed.groups, where).not.toContain(`${u}|${g}`);
              // Another process hears about every removal, whichever request failed.
              for (const [u, g] of scenario.gone) {
                await expect
                  .poll(
                    () =>
                      changes.some((c) => c.type === "removed" && c.userId === u && c.group === g),
                    {
                      timeout: 10_000,
                    },
                  )
                  .toBe(true);
              }
            } else {
              // Repaired to before or after the operation, per pair, never half of it.
              for (const [u, g] of [...scenario.live, ...scenario.gone]) {
                expect(healed.users.includes(`${u}|${g}`), where).toBe(
                  healed.groups.includes(`${u}|${g}`),
                );
              }
            }
            stop();
            injectedTotal += faults.injected;
          }
        }
      }
    });
  }

  it("repair --dry-run reports without changing anything", async () => {
    const { store } = faultyStore();
    await store.addToGroup("alice", "room");
    await store.addToGroup("bob", "room");
    const client = TableClient.fromConnectionString(
      inject("azuriteConnectionString"),
      tableNameOf(store) as string,
      {
        allowInsecureConnection: true,
      },
    );
    // Break both ways by hand: a lost index row and an orphan index row.
    await client.deleteEntity("g:room", "alice");
    await store.removeFromGroup("bob", "room");
    await client.upsertEntity({
      partitionKey: "g:room",
      rowKey: "carol",
      userId: "carol",
      group: "room",
      addedAt: new Date(0),
    });
    const broken = await sides(store);
    const dry = await store.repair({ dryRun: true });
    expect(dry).toMatchObject({
      dryRun: true,
      indexRestored: [{ userId: "alice", group: "room" }],
      orphansRemoved: [{ userId: "carol", group: "room" }],
    });
    expect(await sides(store)).toEqual(broken);
    const fixed = await store.repair();
    expect(fixed.dryRun).toBe(false);
    expect(await sides(store)).toEqual({ users: ["alice|room"], groups: ["alice|room"] });
    expect(await store.repair()).toMatchObject({
      indexRestored: [],
      orphansRemoved: [],
      expiredPurged: 0,
    });
  });

  it(`injected ${"faults"} were counted`, () => {
    expect(injectedTotal).toBeGreaterThan(100);
    console.log(`fault injection: ${injectedTotal} faults injected`);
  });
});

/** Answers the first `times` attempts of every request with `status`, as Azure does when throttling. */
function throttle(status: 429 | 503, times: number) {
  const attempts = new WeakMap<PipelineRequest, number>();
  const state = { throttled: 0 };
  const policy: PipelinePolicy = {
    name: "throttle",
    async sendRequest(request, next) {
      const attempt = attempts.get(request) ?? 0;
      attempts.set(request, attempt + 1);
      if (attempt >= times) return next(request);
      state.throttled++;
      const code = status === 429 ? "TooManyRequests" : "ServerBusy";
      return {
        request,
        status,
        headers: createHttpHeaders({
          "content-type": "application/json;odata=minimalmetadata",
          "x-ms-error-code": code,
          "retry-after": "0",
        }),
        bodyAsText: JSON.stringify({
          "odata.error": { code, message: { lang: "en-US", value: "throttled" } },
        }),
      };
    },
  };
  return { policy, state };
}

describe("Azure store under throttling", () => {
  for (const status of [429, 503] as const) {
    it(`retries ${status} with backoff and loses nothing`, async () => {
      const { policy, state } = throttle(status, 2);
      const store = azureStore({
        policies: [policy],
        clientOptions: {
          retryOptions: { maxRetries: 3, retryDelayInMs: 10, maxRetryDelayInMs: 50 },
        },
      });
      opened.push(store);
      await store.addToGroup("alice", "a");
      await store.addToGroup("alice", "b");
      expect(await store.removeFromGroup("alice", "a")).toBe(true);
      expect((await store.groupsOf("alice")).map((m) => m.group)).toEqual(["b"]);
      expect(await store.countMembers("b")).toBe(1);
      expect(state.throttled).toBeGreaterThanOrEqual(2 * 8);
    });
  }

  it("reports STORE_UNAVAILABLE when throttling outlasts the retries", async () => {
    const { policy } = throttle(503, 100);
    const store = azureStore({
      policies: [policy],
      clientOptions: { retryOptions: { maxRetries: 2, retryDelayInMs: 10, maxRetryDelayInMs: 20 } },
    });
    opened.push(store);
    const error = await store.groupsOf("alice").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(MembershipError);
    expect(error).toMatchObject({ code: "STORE_UNAVAILABLE", cause: { statusCode: 503 } });
  });
});
