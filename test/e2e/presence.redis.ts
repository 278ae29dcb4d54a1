import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { type RedisServer, startRedis } from "../support/redis.js";
import {
  admin,
  type Client,
  grant,
  type RunningSample,
  type SampleEnv,
  type ServerMessage,
  sampleEnv,
  sleep,
  startSample,
  token,
  useClients,
  useSignalRClients,
} from "../support/sample.js";
import { useIoClients } from "../support/socket-io.js";

/**
 * `npm run test:redis`: presence over three sample servers in three processes on one Redis, a
 * ws + SignalR one, another, and a Socket.IO one, with the admin script as a child process.
 */
const connect = useClients();
const connectSignalR = useSignalRClients();
const connectIo = useIoClients();

/** What a ws client is told when it asks who is online in `group`. */
async function askOnline(client: Client, group: string): Promise<ServerMessage> {
  const before = client.messages.length;
  client.send({ type: "online", group });
  return client.next(
    (m) =>
      client.messages.indexOf(m) >= before &&
      m.group === group &&
      (m.type === "online" || m.type === "error"),
  );
}

const presenceOf = (userId: string, online: boolean) => (m: ServerMessage) =>
  m.type === "presence" && m.userId === userId && m.online === online;

describe("presence over three servers (ws, SignalR, Socket.IO) and one Redis", {
  timeout: 120_000,
}, () => {
  let redis: RedisServer;
  let env: SampleEnv;
  let a: RunningSample;
  let b: RunningSample;
  let c: RunningSample;
  beforeAll(async () => {
    redis = await startRedis();
    env = { ...sampleEnv(inject("azuriteConnectionString")), REDIS_URL: redis.url };
    [a, b, c] = await Promise.all([
      startSample(env),
      startSample(env),
      startSample({ ...env, HUB: "socket.io" }),
    ]);
  });
  afterAll(async () => {
    await Promise.all([a, b, c].map((s) => s?.stop()));
    await redis?.stop();
  });

  it("counts and lists exactly on every hub, tells once per user, follows revokes, expiries and disconnects", async () => {
    for (const user of ["alice", "bob", "carol"]) await grant(env, user, "Room");
    const bob = await connect(b.wsUrl, token(env, "bob"));
    const aliceWs = await connect(a.wsUrl, token(env, "alice"));
    await bob.next(presenceOf("alice", true));
    // Alice's second and third connections, on other servers and hubs: no new event.
    const aliceSignalR = await connectSignalR(b.url, token(env, "alice"));
    const aliceWsB = await connect(b.wsUrl, token(env, "alice"));
    const carol = await connectIo(c.url, token(env, "carol"));
    await bob.next(presenceOf("carol", true));
    const everyone = { users: ["alice", "bob", "carol"], connections: 5 };
    expect(await askOnline(bob, "Room")).toMatchObject({ type: "online", ...everyone });
    expect(await aliceSignalR.invoke("Online", "Room")).toEqual(everyone);
    expect(await aliceSignalR.invoke("OnlineAfter", "Room", "alice")).toEqual({
      users: ["bob", "carol"],
      connections: 5,
    });
    expect(await carol.request("online", { group: "Room" })).toEqual({
      group: "Room",
      ...everyone,
    });
    await sleep(300);
    expect(bob.messages.filter(presenceOf("alice", true))).toHaveLength(1);
    expect(aliceWsB.messages.filter((m) => m.type === "presence")).toEqual([
      { type: "presence", group: "Room", userId: "carol", online: true },
    ]);

    // Only members may ask.
    const dan = await connect(a.wsUrl, token(env, "dan"));
    expect(await askOnline(dan, "Room")).toMatchObject({ type: "error", code: "not_member" });
    expect(await carol.request("online", { group: "Nope" })).toMatchObject({ error: "not_member" });
    expect(await aliceSignalR.invoke("Online", "Nope")).toEqual({ error: "not_member" });

    // The admin script lists who is online, from Redis.
    const listed = await admin(env, "online", "Room", "--json");
    expect(listed.code, listed.stderr).toBe(0);
    expect(JSON.parse(listed.stdout)).toEqual({ group: "Room", ...everyone });

    // A revoke: alice leaves on all three of her connections, everyone else is told once.
    expect((await admin(env, "revoke", "alice", "Room")).code).toBe(0);
    for (const client of [bob, carol]) await client.next(presenceOf("alice", false));
    expect(await askOnline(bob, "Room")).toMatchObject({
      users: ["bob", "carol"],
      connections: 2,
    });

    // An expiry.
    expect((await admin(env, "grant", "erin", "Room", "--expires", "3s")).code).toBe(0);
    const erin = await connect(a.wsUrl, token(env, "erin"));
    await bob.next(presenceOf("erin", true));
    await bob.next(presenceOf("erin", false), 10_000);
    expect(erin.messages.some((m) => m.type === "removed" && m.reason === "expired")).toBe(true);

    // A disconnect.
    carol.close();
    await bob.next(presenceOf("carol", false));
    expect(await askOnline(bob, "Room")).toMatchObject({ users: ["bob"], connections: 1 });
    for (const userId of ["alice", "carol", "erin"])
      for (const online of [true, false])
        expect(bob.messages.filter(presenceOf(userId, online))).toHaveLength(1);

    // /metrics counts who is online, over every server.
    const metrics = await (await fetch(`${c.url}/metrics`)).text();
    expect(metrics).toMatch(/^hub_membership_online_users \d+$/m);
    expect(metrics).toMatch(/^hub_membership_online_connections \d+$/m);
    aliceWs.close();
  });

  it("a SIGKILLed server's users are gone within 5 s; a Redis restarted empty is whole again within 5 s", async () => {
    for (const user of ["gina", "hal"]) await grant(env, user, "Lobby");
    const doomed = await startSample(env);
    const gina = await connect(b.wsUrl, token(env, "gina"));
    await connect(doomed.wsUrl, token(env, "hal"));
    await gina.next(presenceOf("hal", true));
    await doomed.stop("SIGKILL");
    // Within 5 s, or next() fails.
    await gina.next(presenceOf("hal", false), 5_000);
    expect(await askOnline(gina, "Lobby")).toMatchObject({ users: ["gina"], connections: 1 });

    const ian = await connectIo(c.url, token(env, "ian"));
    await redis.kill();
    await redis.restart();
    const restarted = Date.now();
    const whole = async () => {
      const listed = await admin(env, "online", "Lobby", "--json");
      if (listed.code !== 0 || JSON.parse(listed.stdout).connections !== 1) return false;
      // Ian is in no group: online all the same, on another server.
      const metrics = await (await fetch(`${c.url}/metrics`)).text();
      return /^hub_membership_online_users 2$/m.test(metrics);
    };
    while (!(await whole())) {
      expect(Date.now() - restarted, "whole again within 5 s").toBeLessThan(5_000);
      await sleep(100);
    }
    ian.close();
  });
});
