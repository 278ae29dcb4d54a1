import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { PresenceEvent } from "../adapters/index.js";
import { RedisPresence } from "../adapters/redis/index.js";
import { testPresence } from "../adapters/testing/index.js";
import { partitionableProxy, type RedisServer, scriptsRun, startRedis } from "./support/redis.js";

let redis: RedisServer;
let runs = 0;
beforeAll(async () => {
  redis = await startRedis();
});
afterAll(() => redis.stop());

const quiet = { onError: () => {} };

testPresence("RedisPresence", {
  async create() {
    // One prefix per test: every test starts on an empty backing.
    const prefix = `presence-${runs++}`;
    const pair = [
      new RedisPresence({ url: redis.url, prefix, ...quiet }),
      new RedisPresence({ url: redis.url, prefix, ...quiet }),
    ] as const;
    await Promise.all(pair.map((presence) => presence.start()));
    return pair;
  },
});

describe("RedisPresence when a server or Redis fails", () => {
  const open: Array<{ close(): Promise<unknown> }> = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((closable) => closable.close()));
  });
  const presence = async (url: string, prefix: string) => {
    const made = new RedisPresence({ url, prefix, ...quiet });
    open.push(made);
    await made.start();
    return made;
  };
  const waitFor = async (check: () => Promise<boolean>, ms: number) => {
    const started = Date.now();
    while (!(await check().catch(() => false))) {
      if (Date.now() - started > ms) throw new Error(`not within ${ms} ms`);
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    return Date.now() - started;
  };

  it("a connect with 20 groups is one Redis command", async () => {
    // A long lease: no heartbeat in the window measured.
    const a = new RedisPresence({ url: redis.url, prefix: `presence-${runs++}`, leaseMs: 60_000 });
    open.push(a);
    await a.start();
    const { createClient } = await import("redis");
    const monitor = createClient({ url: redis.url });
    await monitor.connect();
    open.push({ close: () => monitor.close() });
    const before = await scriptsRun(monitor);
    a.source().set(
      "ann",
      1,
      Array.from({ length: 20 }, (_, i) => `g${i}`),
    );
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect((await scriptsRun(monitor)) - before).toBe(1);
    expect(await a.count("g19")).toEqual({ users: 1, connections: 1 });
  });

  it("a server that dies is out of presence within 5 s, and the others are told", async () => {
    const prefix = `presence-${runs++}`;
    const proxy = await partitionableProxy(redis.port);
    open.push(proxy);
    const doomed = await presence(proxy.url, prefix);
    const survivor = await presence(redis.url, prefix);
    const events: PresenceEvent[] = [];
    survivor.subscribe((event) => events.push(event));
    doomed.source().set("ann", 2, ["room"]);
    survivor.source().set("bob", 1, ["room"]);
    await waitFor(async () => (await survivor.count("room")).users === 2, 2_000);
    proxy.cut(); // as a SIGKILL or a partition looks from Redis: no more heartbeats
    const took = await waitFor(
      async () => (await survivor.online("room")).users.join() === "bob",
      5_000,
    );
    expect(took).toBeLessThan(5_000);
    expect(await survivor.count("room")).toEqual({ users: 1, connections: 1 });
    expect(events).toContainEqual({ group: "room", userId: "ann", online: false });
    // The partition heals: the server finds its lease gone and sends everything again.
    proxy.heal();
    const healed = await waitFor(async () => (await survivor.count("room")).users === 2, 5_000);
    console.log(
      `presence: a cut-off server's users gone in ${took} ms; back ${healed} ms after the heal`,
    );
    expect(await survivor.count("room")).toEqual({ users: 2, connections: 3 });
  });

  it("Redis restarted empty: every live entry is back within 5 s", async () => {
    const own = await startRedis();
    open.push({ close: () => own.stop() });
    const prefix = `presence-${runs++}`;
    const a = await presence(own.url, prefix);
    const b = await presence(own.url, prefix);
    a.source().set("ann", 1, ["room", "ops"]);
    b.source().set("bob", 2, ["room"]);
    await waitFor(async () => (await a.count("room")).users === 2, 2_000);
    await own.kill();
    await own.restart();
    const took = await waitFor(async () => {
      const room = await b.count("room");
      return room.users === 2 && room.connections === 3 && (await b.count("ops")).users === 1;
    }, 5_000);
    expect(took).toBeLessThan(5_000);
    console.log(`presence: whole again ${took} ms after Redis restarted empty`);
    expect(await a.total()).toEqual({ users: 2, connections: 3 });
  });

  it("a Redis restored from an older snapshot (or a lagging replica) is set right at the next heartbeat", async () => {
    const prefix = `presence-${runs++}`;
    const a = await presence(redis.url, prefix);
    const source = a.source();
    source.set("ann", 1, ["room"]);
    await waitFor(async () => (await a.isOnline("ann", "room")) === true, 2_000);
    const { createClient } = await import("redis");
    const raw = createClient({ url: redis.url, RESP: 2 });
    await raw.connect();
    open.push({ close: () => raw.close() });
    // The snapshot: every key of this presence, as DUMP keeps them.
    const keys = await raw.keys(`${prefix}:*`);
    const snapshot = await Promise.all(
      keys.map(
        async (key) =>
          [key, await raw.sendCommand([`DUMP`, key], { typeMapping: { 36: Buffer } })] as const,
      ),
    );
    source.set("ann", 0, []);
    source.set("bob", 1, ["room"]);
    await waitFor(async () => (await a.online("room")).users.join() === "bob", 2_000);
    // Restored: ann online again, bob gone, as Redis was then; the lease still holds.
    await raw.del(await raw.keys(`${prefix}:*`));
    for (const [key, dump] of snapshot)
      await raw.sendCommand(["RESTORE", key, "0", dump as unknown as string]);
    expect((await a.online("room")).users).toEqual(["ann"]);
    await waitFor(async () => (await a.online("room")).users.join() === "bob", 3_000);
    expect(await a.count("room")).toEqual({ users: 1, connections: 1 });
  });

  it("refuses a lease it could not keep", () => {
    for (const leaseMs of [0, 299, Number.NaN, 2_000.5])
      expect(() => new RedisPresence({ url: redis.url, leaseMs })).toThrow(/leaseMs/);
    expect(() => new RedisPresence({ url: redis.url, leaseMs: 1_000, timeoutMs: 1_000 })).toThrow(
      /leaseMs/,
    );
  });

  it("a presence nobody started starts with its first report", async () => {
    const prefix = `presence-${runs++}`;
    const unstarted = new RedisPresence({ url: redis.url, prefix, ...quiet });
    open.push(unstarted);
    const reader = await presence(redis.url, prefix);
    unstarted.source().set("ann", 1, ["room"]);
    await waitFor(async () => (await reader.isOnline("ann", "room")) === true, 3_000);
  });

  it("a server closed cleanly takes its users out at once", async () => {
    const prefix = `presence-${runs++}`;
    const a = await presence(redis.url, prefix);
    const b = await presence(redis.url, prefix);
    a.source().set("ann", 1, ["room"]);
    await waitFor(async () => (await b.isOnline("ann", "room")) === true, 2_000);
    await a.close();
    expect(await b.isOnline("ann")).toBe(false);
    expect(await b.count("room")).toEqual({ users: 0, connections: 0 });
  });
});
