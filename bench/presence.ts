/**
 * Presence on Redis, in one run:
 * - the online count of a group with 100,000 connections (50,000 users) over 8 servers, each a
 *   RedisPresence of its own in this process, as in the scale-out benchmark; one count at a time;
 *   against Socket.IO's cluster-wide `io.in(room).fetchSockets()` on @socket.io/redis-adapter over
 *   8 servers holding the same 100,000 sockets (the peer: every server is asked and answers with
 *   its sockets), and the lower bound: one HLEN;
 * - listing 10,000 online users: one page of 10,000 and ten pages of 1,000, against one ZRANGE;
 * - Redis round trips per connect of a user with 20 groups, through MembershipSync: one connect at
 *   a time, and a burst of 1,000.
 */
import { createServer } from "node:http";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";
import { Server as IoServer } from "socket.io";
import { InMemoryMembershipStore, MembershipSync } from "../adapters/index.js";
import { RedisPresence } from "../adapters/redis/index.js";
import { scriptsRun, startRedis } from "../test/support/redis.js";
import { type Benchmark, latencyRow, p99, type Row, round, sleep, timedRuns } from "./lib.js";

const SERVERS = 8;

/** Socket.IO on the Redis adapter: `servers` of them, each holding its share of the sockets. */
async function socketIoCluster(url: string, connections: number) {
  const servers: IoServer[] = [];
  const clients: Array<ReturnType<typeof createClient>> = [];
  for (let s = 0; s < SERVERS; s++) {
    const pub = createClient({ url });
    const sub = pub.duplicate();
    for (const client of [pub, sub]) client.on("error", () => {});
    await Promise.all([pub.connect(), sub.connect()]);
    clients.push(pub, sub);
    const io = new IoServer(createServer(), { adapter: createAdapter(pub, sub) });
    servers.push(io);
  }
  // Sockets in the namespaces and the adapters' rooms, as connected sockets that joined "big" are,
  // with what fetchSockets() sends of each (its id, handshake, rooms, data).
  for (let i = 0; i < connections; i++) {
    const id = `socket-${i}`;
    const rooms = new Set([id, "big"]);
    const namespace = servers[i % SERVERS]?.of("/");
    const sockets = namespace?.sockets as Map<string, unknown> | undefined;
    sockets?.set(id, { id, handshake: {}, rooms, data: {} });
    await namespace?.adapter.addAll(id, rooms);
  }
  await sleep(200); // the adapters' subscriptions
  return {
    count: async () => (await servers[0]?.in("big").fetchSockets())?.length ?? 0,
    async close() {
      for (const io of servers) io.close();
      await Promise.all(clients.map((client) => client.close().catch(() => undefined)));
    },
  };
}

const presence: Benchmark = async (ctx) => {
  const connections = ctx.quick ? 10_000 : 100_000;
  const users = connections / 2;
  const samples = ctx.quick ? 200 : 1_000;
  const redis = await startRedis();
  const rows: Row[] = [];
  const open: Array<{ close(): Promise<unknown> }> = [];
  try {
    const raw = createClient({ url: redis.url });
    await raw.connect();
    open.push({ close: () => raw.close() });
    const servers: RedisPresence[] = [];
    for (let s = 0; s < SERVERS; s++) {
      const server = new RedisPresence({ url: redis.url, prefix: "bench" });
      open.push(server);
      await server.start();
      servers.push(server);
    }
    // User u has its two connections on server u % 8.
    for (let u = 0; u < users; u++) servers[u % SERVERS]?.source().set(`user-${u}`, 2, ["big"]);
    const reader = servers[0] as RedisPresence;
    for (;;) {
      const count = await reader.count("big");
      if (count.connections === connections) break;
      await sleep(50);
    }
    // Warm-up, then one count at a time.
    await timedRuns(50, () => reader.count("big"));
    const counts = await timedRuns(samples, () => reader.count("big"));
    const bound = await timedRuns(samples, () => raw.hLen("bench:g:big"));
    const cluster = await socketIoCluster(redis.url, connections);
    if ((await cluster.count()) !== connections) throw new Error("Socket.IO counted wrong");
    const peer = await timedRuns(ctx.quick ? 10 : 50, () => cluster.count());
    await cluster.close();
    const row = (label: string, times: number[], extra: Partial<Row> = {}): Row =>
      latencyRow(
        "presence",
        `online count of a group, ${connections.toLocaleString("en")} connections over 8 servers: ${label}`,
        times,
        extra,
        3,
      );
    rows.push(
      row("RedisPresence.count", counts, {
        baseline: { label: "Socket.IO fetchSockets() p99", value: round(p99(peer), 2) },
        ratio: round(p99(peer) / p99(counts)),
        target: "p99 ≤ 5 ms",
        met: ctx.quick ? undefined : p99(counts) <= 5,
      }),
      row(
        "Socket.IO 4.8 io.in(room).fetchSockets() on @socket.io/redis-adapter (asks every server)",
        peer,
      ),
      row("lower bound: one HLEN", bound, {
        baseline: { label: "RedisPresence.count p99", value: round(p99(counts), 3) },
        ratio: round(p99(bound) / p99(counts)),
      }),
    );

    // Listing 10,000 online users of a group.
    const listed = 10_000;
    const lister = servers[1] as RedisPresence;
    const source = lister.source();
    for (let u = 0; u < listed; u++) source.set(`member-${u}`, 1, ["listed"]);
    while ((await reader.count("listed")).users < listed) await sleep(50);
    const listSamples = ctx.quick ? 10 : 50;
    const onePage = await timedRuns(listSamples, async () => {
      if ((await reader.online("listed", { limit: listed })).users.length !== listed)
        throw new Error("listed wrong");
    });
    const tenPages = await timedRuns(listSamples, async () => {
      let after: string | undefined;
      let got = 0;
      do {
        const page = await reader.online("listed", { limit: 1_000, ...(after && { after }) });
        got += page.users.length;
        after = page.next;
      } while (after !== undefined);
      if (got !== listed) throw new Error("paged wrong");
    });
    const zrange = await timedRuns(listSamples, () =>
      raw.sendCommand(["ZRANGE", "bench:gl:listed", "-", "+", "BYLEX"]),
    );
    const list = (label: string, times: number[], extra: Partial<Row> = {}): Row =>
      latencyRow("presence", `listing 10,000 online users: ${label}`, times, extra);
    rows.push(
      list("one page of 10,000", onePage, {
        target: "≤ 100 ms",
        met: ctx.quick ? undefined : p99(onePage) <= 100,
        baseline: { label: "one ZRANGE p99", value: round(p99(zrange), 2) },
        ratio: round(p99(zrange) / p99(onePage)),
      }),
      list("ten pages of 1,000", tenPages, {
        target: "≤ 100 ms",
        met: ctx.quick ? undefined : p99(tenPages) <= 100,
      }),
      list("lower bound: one ZRANGE of the 10,000", zrange),
    );

    // Round trips per connect of a user with 20 groups, through MembershipSync.
    const store = new InMemoryMembershipStore();
    const groups = Array.from({ length: 20 }, (_, i) => `g${i}`);
    const burst = ctx.quick ? 200 : 1_000;
    for (let u = 0; u < burst + 100; u++)
      await store.addMany(groups.map((group) => ({ userId: `c${u}`, group })));
    // A server of its own with a long lease: no other server's heartbeat in the count.
    for (const server of servers) await server.close();
    const connecting = new RedisPresence({ url: redis.url, prefix: "connects", leaseMs: 600_000 });
    open.push(connecting);
    await connecting.start();
    const sync = new MembershipSync({
      store,
      hub: { join() {}, leave() {} },
      presence: connecting,
    });
    const before = await scriptsRun(raw);
    for (let u = 0; u < 100; u++) {
      await sync.connect(`one-${u}`, `c${u}`);
      await sleep(2); // the report goes after the turn: one connect at a time
    }
    await sleep(200);
    const single = ((await scriptsRun(raw)) - before) / 100;
    const burstBefore = await scriptsRun(raw);
    await Promise.all(
      Array.from({ length: burst }, (_, u) => sync.connect(`burst-${u}`, `c${u + 100}`)),
    );
    await sleep(200);
    const inBurst = ((await scriptsRun(raw)) - burstBefore) / burst;
    if ((await connecting.count("g0")).users !== burst + 100)
      throw new Error("connects not counted");
    await sync.close();
    rows.push(
      {
        benchmark: "presence",
        case: "Redis round trips per connect of a user with 20 groups: one at a time",
        value: round(single, 3),
        unit: "round trips",
        target: "1",
        met: single <= 1,
      },
      {
        benchmark: "presence",
        case: `Redis round trips per connect of a user with 20 groups: a burst of ${burst.toLocaleString("en")}`,
        value: round(inBurst, 3),
        unit: "round trips",
        target: "1",
        met: inBurst <= 1,
      },
    );
  } finally {
    for (const closable of open.reverse()) await closable.close().catch(() => undefined);
    await redis.stop();
  }
  return rows;
};

export default presence;
