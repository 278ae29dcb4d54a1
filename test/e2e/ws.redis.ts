import { once } from "node:events";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { WebSocket } from "ws";
import { type RedisServer, startRedis } from "../support/redis.js";
import {
  admin,
  grant,
  isRemoved,
  logLines,
  type RunningSample,
  type SampleEnv,
  sampleEnv,
  sleep,
  startSample,
  token,
  useClients,
  useSignalRClients,
} from "../support/sample.js";
import { IoClient } from "../support/socket-io.js";

/**
 * `npm run test:redis`: three `ws` sample servers in three processes on one table and one
 * redis-server of the test's own, with the admin script as a child process.
 */
const connect = useClients();
const connectSignalR = useSignalRClients();

describe("ws scale-out: three servers, one table, one Redis", { timeout: 120_000 }, () => {
  let redis: RedisServer;
  let env: SampleEnv;
  let servers: RunningSample[];
  beforeAll(async () => {
    redis = await startRedis();
    env = { ...sampleEnv(inject("azuriteConnectionString")), REDIS_URL: redis.url };
    servers = await Promise.all([startSample(env), startSample(env), startSample(env)]);
  });
  afterAll(async () => {
    await Promise.all((servers ?? []).map((s) => s.stop()));
    await redis?.stop();
  });
  const ws = (i: number) => (servers[i] as RunningSample).wsUrl;

  it("messages and whispers cross servers; an admin revoke reaches every server's connections", async () => {
    for (const user of ["alice", "bob", "carol"]) await grant(env, user, "Sports");
    const aliceA = await connect(ws(0), token(env, "alice"));
    const aliceB = await connect(ws(1), token(env, "alice"));
    const bob = await connect(ws(2), token(env, "bob"));
    const carol = await connect(ws(0), token(env, "carol"));
    // SignalR clients of the same servers: their messages travel on a channel of their own.
    const aliceSignalR = await connectSignalR(servers[1]?.url ?? "", token(env, "alice"));
    const carolSignalR = await connectSignalR(servers[2]?.url ?? "", token(env, "carol"));

    bob.send({ type: "send", group: "Sports", text: "from C" });
    expect(await carolSignalR.invoke("Send", "Sports", "from SignalR on C")).toBeNull();
    for (const c of [aliceA, aliceB, bob, carol, aliceSignalR])
      expect(await c.next((m) => m.text === "from SignalR on C")).toMatchObject({ from: "carol" });
    for (const c of [aliceA, aliceB, bob, carol, aliceSignalR, carolSignalR])
      expect(await c.next((m) => m.text === "from C")).toMatchObject({
        group: "Sports",
        from: "bob",
      });
    carol.send({ type: "whisper", to: "alice", text: "psst" });
    for (const c of [aliceA, aliceB]) await c.next((m) => m.text === "psst");

    const revoked = await admin(env, "revoke", "alice", "Sports");
    expect(revoked.code, revoked.stderr).toBe(0);
    for (const c of [aliceA, aliceB, aliceSignalR])
      expect(await c.next(isRemoved("Sports"))).toMatchObject({ reason: "revoked" });
    bob.send({ type: "send", group: "Sports", text: "after revoke" });
    await carol.next((m) => m.text === "after revoke");
    await sleep(300);
    for (const c of [aliceA, aliceB, aliceSignalR])
      expect(c.messages.some((m) => m.text === "after revoke")).toBe(false);
    await carolSignalR.next((m) => m.text === "after revoke");

    // Every message arrived once per connection.
    for (const c of [aliceA, aliceB, bob, carol, aliceSignalR, carolSignalR])
      for (const text of ["from C", "from SignalR on C"])
        expect(c.messages.filter((m) => m.text === text)).toHaveLength(1);
  });

  it("a server or an admin script on the table's log refuses the Redis table instead of missing changes", async () => {
    const { REDIS_URL: _, ...onTableLog } = env;
    const run = await admin(onTableLog, "revoke", "bob", "Sports");
    expect(run.code).toBe(1);
    // One line naming the setting that caused it and the command that fixes it.
    const named =
      /^configuration error: table \w+ keeps its changes on Redis, but REDIS_URL is not set: start every server and the admin script with REDIS_URL set to that Redis, or switch the table \(every server stopped first\) with: npm run admin -- use-feed$/m;
    expect(run.stderr).toMatch(named);
    expect((await admin(env, "groups", "bob")).stdout).toMatch(/^Sports\t/);
    await expect(startSample(onTableLog)).rejects.toThrow(named);
  });

  it("a user who leaves is told 'left' on every server, not 'revoked'", async () => {
    const kimA = await connect(ws(0), token(env, "kim"));
    const kimB = await connect(ws(1), token(env, "kim"));
    kimA.send({ type: "join", group: "lobby" });
    for (const c of [kimA, kimB]) await c.next((m) => m.type === "joined" && m.group === "lobby");
    kimA.send({ type: "leave", group: "lobby" });
    for (const c of [kimA, kimB])
      expect(await c.next(isRemoved("lobby"))).toMatchObject({ reason: "left" });
  });

  it("ws, SignalR and Socket.IO servers on one Redis exchange messages, every way", async () => {
    for (const user of ["gus", "hal", "ida"]) await grant(env, user, "Mixed");
    const sio = await startSample({ ...env, HUB: "socket.io" });
    try {
      const gus = await connect(ws(0), token(env, "gus"));
      const hal = await connectSignalR(servers[1]?.url ?? "", token(env, "hal"));
      const ida = await IoClient.connect(sio.url, token(env, "ida"));
      try {
        gus.send({ type: "send", group: "Mixed", text: "from ws" });
        expect(await hal.invoke("Send", "Mixed", "from SignalR")).toBeNull();
        expect(await ida.request("send", { group: "Mixed", text: "from Socket.IO" })).toEqual({
          ok: true,
        });
        for (const client of [gus, hal, ida])
          for (const text of ["from ws", "from SignalR", "from Socket.IO"])
            expect(await client.next((m) => m.text === text)).toMatchObject({ group: "Mixed" });
      } finally {
        ida.close();
      }
    } finally {
      await sio.stop();
    }
  });

  it("a grant stored during a Redis outage reaches every server's connections once Redis is back; logs stay JSON", async () => {
    await grant(env, "fay", "Ops");
    const fayA = await connect(ws(0), token(env, "fay"));
    const fayB = await connect(ws(1), token(env, "fay"));
    const before = servers.map((s) => s.output().length);
    await redis.kill();
    await sleep(500);
    const during = await admin(env, "grant", "fay", "Dev");
    // Stored, though not announced: the admin script says so.
    expect(during.code).toBe(1);
    expect(during.stderr).toMatch(/^error: stored, but not announced: Redis is unavailable/);
    expect((await admin(env, "groups", "fay")).stdout).toMatch(/^Dev\t/m);
    await sleep(1_500);
    await redis.restart();
    for (const c of [fayA, fayB])
      await c.next((m) => m.type === "joined" && m.group === "Dev", 10_000);
    const fresh = await connect(ws(0), token(env, "fay"));
    expect(fresh.welcome.groups).toEqual(["Dev", "Ops"]);
    // Every line a server wrote meanwhile is a JSON log line; each outage said once per client.
    const lines = servers.flatMap((s, i) =>
      s.output().slice(before[i]).split("\n").filter(Boolean),
    );
    expect(lines.filter((line) => !line.startsWith("{"))).toEqual([]);
  });

  it("redis-server killed and restarted mid-run: writes fail meanwhile, then revokes and messages flow again", async () => {
    await grant(env, "dave", "Ops");
    await grant(env, "erin", "Ops");
    const daveA = await connect(ws(0), token(env, "dave"));
    const daveC = await connect(ws(2), token(env, "dave"));
    const erin = await connect(ws(1), token(env, "erin"));

    await redis.kill();
    const during = await admin(env, "revoke", "dave", "Ops");
    expect(during.code).toBe(1);
    expect(during.stderr).toMatch(/unavailable/);
    erin.send({ type: "send", group: "Ops", text: "while down" });
    expect(await erin.next((m) => m.type === "error")).toMatchObject({ code: "unavailable" });

    await redis.restart();
    // Messages resume once every server's subscriber is back (each reconnects on its own
    // backoff, and pub/sub drops what is published before a server resubscribed).
    let n = 0;
    const back = (c: typeof daveA) => c.messages.some((m) => String(m.text).startsWith("back"));
    await expect
      .poll(
        async () => {
          erin.send({ type: "send", group: "Ops", text: `back ${++n}` });
          await sleep(200);
          return back(daveA) && back(daveC);
        },
        { timeout: 20_000, interval: 100 },
      )
      .toBe(true);

    const after = await admin(env, "revoke", "dave", "Ops");
    expect(after.code, after.stderr).toBe(0);
    for (const c of [daveA, daveC]) await c.next(isRemoved("Ops"), 15_000);
  });
});

describe("rate limits with Redis: a user's budget holds across servers", {
  timeout: 60_000,
}, () => {
  let redis: RedisServer;
  let env: SampleEnv;
  let servers: RunningSample[];
  beforeAll(async () => {
    redis = await startRedis();
    env = {
      ...sampleEnv(inject("azuriteConnectionString")),
      REDIS_URL: redis.url,
      RATE_MESSAGES: "1000",
      RATE_USER_MESSAGES: "6",
      RATE_CLOSE_AFTER: "1000",
    };
    await grant(env, "busy", "room");
    await grant(env, "watcher", "room");
    servers = await Promise.all([startSample(env), startSample(env)]);
  });
  afterAll(async () => {
    await Promise.all((servers ?? []).map((s) => s.stop()));
    await redis?.stop();
  });

  it("one user's connections on two servers share one budget", async () => {
    const [a, b] = servers as [RunningSample, RunningSample];
    const onA = await connect(a.wsUrl, token(env, "busy"));
    const onB = await connect(b.wsUrl, token(env, "busy"));
    const watcher = await connect(a.wsUrl, token(env, "watcher"));
    for (let i = 0; i < 10; i++) {
      onA.send({ type: "send", group: "room", text: `a${i}` });
      onB.send({ type: "send", group: "room", text: `b${i}` });
    }
    const limited = () =>
      [onA, onB].flatMap((c) => c.messages.filter((m) => m.code === "rate_limited")).length;
    await expect.poll(limited).toBeGreaterThanOrEqual(12);
    await sleep(300);
    const delivered = watcher.messages.filter((m) => /^[ab]\d$/.test(String(m.text))).length;
    // Two servers with a budget each would have let 12 through; one shared budget lets 6 a
    // second (a few more if the window turned meanwhile).
    expect(delivered + limited()).toBe(20);
    expect(delivered).toBeLessThanOrEqual(8);
  });
});

describe("the connection cap on Redis: across servers, atomically", { timeout: 120_000 }, () => {
  it("holds when 60 upgrades of one user race over three servers, and frees a dead server's slots", async () => {
    const redis = await startRedis();
    const env = {
      ...sampleEnv(inject("azuriteConnectionString")),
      REDIS_URL: redis.url,
      MAX_CONNECTIONS_PER_USER: "5",
    };
    const servers = await Promise.all([startSample(env), startSample(env), startSample(env)]);
    const held: Array<{ socket: WebSocket; server: number }> = [];
    try {
      const bearer = { authorization: `Bearer ${token(env, "racer")}` };
      const upgrade = (server: number, path = "/hub") =>
        new Promise<number>((resolve, reject) => {
          const url = (servers[server] as RunningSample).wsUrl.replace("/hub", path);
          const socket = new WebSocket(url, { headers: bearer });
          socket.once("open", () => {
            held.push({ socket, server });
            resolve(101);
          });
          socket.once("unexpected-response", (_request, response) =>
            resolve(response.statusCode ?? 0),
          );
          socket.once("error", reject);
        });
      const statuses = await Promise.all(
        Array.from({ length: 60 }, (_, i) => upgrade(i % 3, i % 2 ? "/hub" : "/signalr")),
      );
      expect(statuses.filter((s) => s === 101)).toHaveLength(5);
      expect(statuses.filter((s) => s === 429)).toHaveLength(55);
      // A server that dies holding slots gives them back when they expire (15 s), not never;
      // the slots of the connections still open elsewhere stay taken.
      const dead = (held[0] as { server: number }).server;
      await servers[dead]?.stop("SIGKILL");
      const alive = servers.findIndex((_, i) => i !== dead);
      expect(await upgrade(alive)).toBe(429);
      await expect.poll(() => upgrade(alive), { timeout: 30_000, interval: 1_000 }).toBe(101);
      const open = held.filter((h) => h.server !== dead && h.socket.readyState === WebSocket.OPEN);
      expect(open.length).toBeLessThanOrEqual(5);
    } finally {
      for (const { socket } of held) socket.terminate();
      await Promise.all(servers.map((s) => s.stop()));
      await redis.stop();
    }
  });
});

describe("a table's feed switched under a running server", { timeout: 120_000 }, () => {
  it("table log → Redis, and Redis → table log: the running server stops within seconds, and says why", async () => {
    const redis = await startRedis();
    try {
      const base = sampleEnv(inject("azuriteConnectionString"));
      const onRedis = { ...base, REDIS_URL: redis.url };
      for (const [from, to, says] of [
        [base, onRedis, /^error: table \w+ keeps its changes on Redis, but REDIS_URL is not set/m],
        [
          onRedis,
          base,
          /^error: table \w+ keeps its changes on the table's own log, but REDIS_URL is set/m,
        ],
      ] as const) {
        expect((await admin(from, "use-feed")).code).toBe(0);
        await grant(from, "alice", "Sports");
        const server = await startSample(from);
        const alice = await connect(server.wsUrl, token(from, "alice"));
        const switched = Date.now();
        expect((await admin(to, "use-feed")).code).toBe(0);
        const [code] = (await once(server.process, "exit")) as [number];
        expect(code).toBe(1);
        expect(Date.now() - switched).toBeLessThan(10_000);
        expect(server.output()).toMatch(says);
        expect(logLines(server.output())).toContainEqual(
          expect.objectContaining({ event: "feed.switched", level: 50 }),
        );
        expect((await alice.closed).code).not.toBe(1006); // told, not cut off
      }
    } finally {
      await redis.stop();
    }
  });
});
