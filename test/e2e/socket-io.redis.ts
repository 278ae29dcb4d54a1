import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { type RedisServer, startRedis } from "../support/redis.js";
import {
  admin,
  grant,
  isRemoved,
  type RunningSample,
  type SampleEnv,
  sampleEnv,
  sleep,
  startSample,
  token,
} from "../support/sample.js";
import { useIoClients } from "../support/socket-io.js";

/**
 * `npm run test:redis`: two Socket.IO sample servers in two processes, joined by the sample's
 * chat channel and the Redis change feed on a real redis-server of their own.
 */
const connect = useIoClients();

const stats = async (sample: RunningSample) =>
  (await (await fetch(`${sample.url}/stats`)).json()) as {
    connections: number;
    joins: number;
    leaves: number;
  };

describe("Socket.IO scale-out: two servers in two processes, one Redis", {
  timeout: 90_000,
}, () => {
  let redis: RedisServer;
  let env: SampleEnv;
  let a: RunningSample;
  let b: RunningSample;
  beforeAll(async () => {
    redis = await startRedis();
    env = {
      ...sampleEnv(inject("azuriteConnectionString")),
      HUB: "socket.io",
      REDIS_URL: redis.url,
    };
    [a, b] = await Promise.all([startSample(env), startSample(env)]);
  });
  afterAll(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
    await redis?.stop();
  });

  it("an admin revoke removes the user's sockets on both servers, once each; the group reaches neither", async () => {
    for (const user of ["alice", "bob", "carol"]) await grant(env, user, "Sports");
    const aliceA = await connect(a.url, token(env, "alice"));
    const aliceB = await connect(b.url, token(env, "alice"));
    const bob = await connect(a.url, token(env, "bob"));
    const carol = await connect(b.url, token(env, "carol"));

    // Broadcasts cross servers through Redis.
    expect(await bob.request("send", { group: "Sports", text: "before" })).toEqual({ ok: true });
    for (const c of [aliceA, aliceB, bob, carol]) await c.next((m) => m.text === "before");
    const [leavesA, leavesB] = [(await stats(a)).leaves, (await stats(b)).leaves];

    expect((await admin(env, "revoke", "alice", "Sports")).code).toBe(0);
    for (const c of [aliceA, aliceB])
      expect(await c.next(isRemoved("Sports"))).toMatchObject({ reason: "revoked" });
    await sleep(1_000); // a second application, if there were one, would have happened by now
    expect((await stats(a)).leaves - leavesA).toBe(1);
    expect((await stats(b)).leaves - leavesB).toBe(1);
    for (const c of [aliceA, aliceB])
      expect(c.messages.filter(isRemoved("Sports"))).toHaveLength(1);

    expect(await bob.request("send", { group: "Sports", text: "after" })).toEqual({ ok: true });
    await carol.next((m) => m.text === "after");
    await bob.next((m) => m.text === "after");
    await sleep(300);
    for (const c of [aliceA, aliceB])
      expect(c.messages.some((m) => m.text === "after")).toBe(false);
  });

  it("a grant made on one server joins the user's sockets on the other, and a revoke leaves", async () => {
    const danA = await connect(a.url, token(env, "dan"));
    const danB = await connect(b.url, token(env, "dan"));
    expect(await danA.request("join", { group: "lobby" })).toEqual({ ok: true });
    for (const c of [danA, danB]) await c.next((m) => m.type === "joined" && m.group === "lobby");
    expect(await danB.request("send", { group: "lobby", text: "hi from B" })).toEqual({ ok: true });
    for (const c of [danA, danB]) await c.next((m) => m.text === "hi from B");
    await sleep(500);
    for (const c of [danA, danB])
      expect(c.messages.filter((m) => m.type === "joined" && m.group === "lobby")).toHaveLength(1);

    // A revoke issued on server B (dan leaves) removes dan's socket on server A too.
    expect(await danB.request("leave", { group: "lobby" })).toEqual({ ok: true });
    expect(await danB.next(isRemoved("lobby"))).toMatchObject({ reason: "left" });
    // The reason travels with the change: the other server says "left" too.
    expect(await danA.next(isRemoved("lobby"))).toMatchObject({ reason: "left" });
  });
});
