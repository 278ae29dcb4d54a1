import { subscribe, unsubscribe } from "node:diagnostics_channel";
import type { PipelinePolicy } from "@azure/core-rest-pipeline";
import { createHttpHeaders } from "@azure/core-rest-pipeline";
import { afterEach, describe, expect, it } from "vitest";
import { WsGroups } from "../adapters/hubs/ws-groups.js";
import {
  type ChangeAppliedEvent,
  type FeedEvent,
  MembershipSync,
  type RehydrateEvent,
  type ResyncEvent,
  type SlowConsumerEvent,
  type StorageRequestEvent,
} from "../adapters/index.js";
import { FeedSubscribers } from "../adapters/listeners.js";
import { azureStore, tableNameOf } from "./support/azure.js";
import { RecordingHub } from "./support/recording-hub.js";

/** Collects what a channel publishes until the test ends. */
const listening: Array<() => void> = [];
function collect<T>(name: string): T[] {
  const events: T[] = [];
  const listener = (message: unknown) => events.push(message as T);
  subscribe(name, listener);
  listening.push(() => unsubscribe(name, listener));
  return events;
}
const closing: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const stop of listening.splice(0)) stop();
  await Promise.all(closing.splice(0).map((close) => close()));
});

describe("diagnostics channels", { timeout: 30_000 }, () => {
  it("hub-membership:storage reports every request of the Azure store: operation, outcome, retries, throttling", async () => {
    const events = collect<StorageRequestEvent>("hub-membership:storage");
    // The first query of the user's groups is answered 503 ServerBusy once, then retried.
    let busy = true;
    const serverBusy: PipelinePolicy = {
      name: "server-busy-once",
      async sendRequest(request, next) {
        if (busy && request.method === "GET" && request.url.includes("%27u%3A")) {
          busy = false;
          return {
            request,
            status: 503,
            headers: createHttpHeaders({ "x-ms-error-code": "ServerBusy" }),
            bodyAsText: '{"odata.error":{"code":"ServerBusy","message":{"value":"busy"}}}',
          };
        }
        return next(request);
      },
    };
    const store = azureStore({
      policies: [serverBusy],
      clientOptions: { retryOptions: { retryDelayInMs: 5, maxRetryDelayInMs: 10 } },
    });
    closing.push(() => store.close());
    await store.addToGroup("alice", "Sports");
    expect(await store.isMember("alice", "Chess")).toBe(false);
    const groups = await store.groupsOf("alice");
    expect(groups.map((m) => m.group)).toEqual(["Sports"]);
    const operations = new Set(events.map((e) => e.operation));
    for (const op of ["createTable", "batch", "read", "query"]) expect(operations).toContain(op);
    expect(events.find((e) => e.operation === "read" && e.status === 404)).toMatchObject({
      outcome: "not_found",
    });
    expect(events.filter((e) => e.throttled)).toEqual([
      expect.objectContaining({ operation: "query", retries: 1, outcome: "ok", status: 200 }),
    ]);
    expect(events.every((e) => e.durationMs >= 0)).toBe(true);
  });

  it("hub-membership:change, rehydrate and resync report what MembershipSync applied, with the propagation lag of other processes' changes", async () => {
    const changes = collect<ChangeAppliedEvent>("hub-membership:change");
    const rehydrates = collect<RehydrateEvent>("hub-membership:rehydrate");
    const resyncs = collect<ResyncEvent>("hub-membership:resync");
    const here = azureStore();
    const admin = azureStore({ tableName: tableNameOf(here) }); // another process, as it were
    closing.push(
      () => here.close(),
      () => admin.close(),
    );
    await admin.addToGroup("alice", "Sports");
    const hub = new RecordingHub();
    const sync = new MembershipSync({ store: here, hub });
    closing.push(() => sync.close());
    await sync.connect("c1", "alice");
    await sync.connect("c2", "alice");
    expect(rehydrates).toEqual([
      expect.objectContaining({ connectionId: "c1", userId: "alice", groups: 1, read: true }),
      expect.objectContaining({ connectionId: "c2", groups: 1, read: false }),
    ]);
    await expect.poll(() => resyncs.length).toBeGreaterThan(0); // the feed starts with one

    const revokedAt = Date.now();
    await admin.removeFromGroup("alice", "Sports");
    await expect
      .poll(() => changes.filter((c) => c.type === "removed"))
      .toEqual([
        expect.objectContaining({
          userId: "alice",
          group: "Sports",
          reason: "revoked",
          connections: 2,
        }),
      ]);
    const lag = changes[0]?.lagMs ?? -1;
    expect(lag).toBeGreaterThanOrEqual(0);
    expect(lag).toBeLessThanOrEqual(Date.now() - revokedAt + 1_000); // Azurite's clock is ours
    await sync.grant("alice", "Chess"); // this process's own: applied at once, no lag to report
    await expect
      .poll(() => changes.filter((c) => c.type === "added"))
      .toEqual([expect.objectContaining({ group: "Chess", reason: "granted", connections: 2 })]);
    expect(changes.find((c) => c.type === "added")).not.toHaveProperty("lagMs");
    await sync.grant("alice", "Brief", { expiresAt: new Date(Date.now() + 300) });
    await expect
      .poll(() => changes.filter((c) => c.reason === "expired"))
      .toEqual([
        { type: "removed", userId: "alice", group: "Brief", reason: "expired", connections: 2 },
      ]);
  });

  it("hub-membership:feed reports an outage once and its end; slow-consumer reports a dropped connection", () => {
    const feed = collect<FeedEvent>("hub-membership:feed");
    const subscribers = new FeedSubscribers(
      () => {},
      () => {},
    );
    subscribers.subscribe(
      () => {},
      () => {},
    );
    subscribers.failed(new Error("down"));
    subscribers.failed(new Error("still down"));
    subscribers.recovered();
    subscribers.recovered();
    expect(feed).toEqual([{ state: "down", error: new Error("down") }, { state: "up" }]);

    const slow = collect<SlowConsumerEvent>("hub-membership:slow-consumer");
    const groups = new WsGroups({ maxBufferedBytes: 10 });
    let terminated = false;
    groups.add("c1", {
      readyState: 1,
      bufferedAmount: 11,
      send: () => {},
      terminate: () => {
        terminated = true;
      },
    });
    groups.join("c1", "g");
    groups.broadcast("g", "hello");
    expect(terminated).toBe(true);
    expect(slow).toEqual([{ connectionId: "c1", bufferedBytes: 11 }]);
  });
});
