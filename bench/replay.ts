/**
 * Replay: a client that reconnects after missing 1,000 messages of its group (100 bytes each),
 * from the start of its upgrade to the last of them, p99 over many reconnects. Through bindWs
 * with the in-process history and with RedisHistory (its own redis-server), against Socket.IO's
 * connection state recovery (the peer) and a lower bound: a fresh connect sent the same 1,000
 * frames from memory, with no history read and no membership check. Also what a retained message
 * costs: heap in the process, memory in Redis.
 */
import { execFile } from "node:child_process";
import { once } from "node:events";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { Server as IoServer } from "socket.io";
import { io as ioClient } from "socket.io-client";
import WebSocket, { WebSocketServer } from "ws";
import type { MessageHistory } from "../adapters/history/history.js";
import { MemoryHistory } from "../adapters/history/memory.js";
import { parseResume } from "../adapters/history/resume.js";
import { bindWs, requestTarget } from "../adapters/hubs/ws.js";
import { InMemoryMembershipStore } from "../adapters/index.js";
import { RedisHistory } from "../adapters/redis/index.js";
import { startRedis } from "../test/support/redis.js";
import { type Benchmark, latencyRow, p99, type Row, round } from "./lib.js";

const execute = promisify(execFile);
const MISSED = 1_000;
const GROUP = "room";
const payload = (i: number) =>
  Buffer.from(`{"n":${String(i).padStart(8, "0")},"t":"${"x".repeat(78)}"}`);

async function listen(server: Server): Promise<number> {
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return (server.address() as AddressInfo).port;
}

/**
 * Opens a WebSocket and resolves once it has received `count` messages: the time it took. Fails
 * after 10 s rather than hang the run when fewer arrive.
 */
async function receive(url: string, count: number): Promise<number> {
  const started = performance.now();
  const ws = new WebSocket(url, { perMessageDeflate: false });
  let got = 0;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error(`${got} of ${count} messages arrived within 10 s`));
    }, 10_000);
    ws.on("message", () => {
      if (++got === count) {
        clearTimeout(timer);
        resolve();
      }
    });
    ws.once("error", reject);
  });
  const took = performance.now() - started;
  ws.terminate();
  return took;
}

/** bindWs on `history`: each sample, 1,000 messages published while away, then a resume. */
async function hubReplay(history: MessageHistory, samples: number): Promise<number[]> {
  const store = new InMemoryMembershipStore();
  await store.addToGroup("reader", GROUP);
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
  const hub = bindWs(wss, {
    store,
    history,
    heartbeatMs: 0,
    userIdOf: () => "reader",
    resumeOf: (request: IncomingMessage) => {
      const raw = requestTarget(request)?.searchParams.get("resume");
      return raw ? parseResume(JSON.parse(raw)) : undefined;
    },
  });
  const http = createServer();
  http.on("upgrade", (req, socket, head) => void hub.handleUpgrade(req, socket, head));
  const port = await listen(http);
  const times: number[] = [];
  try {
    for (let s = 0; s < samples; s++) {
      const since = await history.position();
      for (let i = 0; i < MISSED; i++) await history.publish(GROUP, payload(i));
      // The client was in the group when it left: it presents the group's position (a group it
      // does not present counts as granted while away, and replays only behind a grant's mark).
      const resume = encodeURIComponent(JSON.stringify({ since, positions: { [GROUP]: since } }));
      times.push(await receive(`ws://127.0.0.1:${port}/?resume=${resume}`, MISSED));
    }
  } finally {
    await hub.close();
    http.close();
    http.closeAllConnections();
  }
  return times;
}

/** The lower bound: a fresh connect sent the 1,000 frames at once from memory. */
async function lowerBound(samples: number): Promise<number[]> {
  const frames = Array.from({ length: MISSED }, (_, i) => payload(i));
  const store = new InMemoryMembershipStore();
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
  const hub = bindWs(wss, {
    store,
    heartbeatMs: 0,
    userIdOf: () => "reader",
    onConnection: ({ id }) => {
      for (const frame of frames) hub.send(id, frame);
    },
  });
  const http = createServer();
  http.on("upgrade", (req, socket, head) => void hub.handleUpgrade(req, socket, head));
  const port = await listen(http);
  const times: number[] = [];
  for (let s = 0; s < samples; s++) times.push(await receive(`ws://127.0.0.1:${port}/`, MISSED));
  await hub.close();
  http.close();
  http.closeAllConnections();
  return times;
}

/** Socket.IO 4.8's connection state recovery: the transport drops, 1,000 emits, a reconnect. */
async function socketIoRecovery(samples: number): Promise<number[]> {
  const http = createServer();
  const io = new IoServer(http, {
    transports: ["websocket"],
    connectionStateRecovery: { maxDisconnectionDuration: 60_000 },
  });
  let serverSide: { once(event: "disconnect", listener: () => void): unknown } | undefined;
  io.on("connection", (socket) => {
    serverSide = socket;
    if (!socket.recovered) void socket.join(GROUP);
  });
  const port = await listen(http);
  const client = ioClient(`http://127.0.0.1:${port}`, {
    transports: ["websocket"],
    reconnection: false,
    forceNew: true,
  });
  await new Promise((resolve) => client.once("connect", () => resolve(undefined)));
  let got = 0;
  let done: () => void = () => {};
  client.on("m", () => {
    if (++got === MISSED) done();
  });
  // A client recovers from the offset of the last packet it got: it needs one first.
  const first = new Promise((resolve) => client.once("m", () => resolve(undefined)));
  io.to(GROUP).emit("m", "first");
  await first;
  const times: number[] = [];
  try {
    for (let s = 0; s < samples; s++) {
      // Both ends must have seen the drop: a packet emitted before the server has is written to
      // the dead transport and is not among the missed ones.
      const gone = Promise.all([
        new Promise((resolve) => client.once("disconnect", () => resolve(undefined))),
        new Promise((resolve) => serverSide?.once("disconnect", () => resolve(undefined))),
      ]);
      client.io.engine.close();
      await gone;
      for (let i = 0; i < MISSED; i++) io.to(GROUP).emit("m", payload(i).toString());
      got = 0;
      let timer: NodeJS.Timeout | undefined;
      const arrived = new Promise<void>((resolve, reject) => {
        done = resolve;
        timer = setTimeout(
          () => reject(new Error(`Socket.IO replayed ${got} of ${MISSED} missed messages in 10 s`)),
          10_000,
        );
      });
      const started = performance.now();
      client.connect();
      await arrived.finally(() => clearTimeout(timer));
      times.push(performance.now() - started);
      if (!client.recovered) throw new Error("Socket.IO did not recover the connection");
    }
  } finally {
    client.disconnect();
    await io.close();
  }
  return times;
}

/** Heap per retained message of the in-process history, in a fresh process with `--expose-gc`. */
async function heapPerMessage(): Promise<number> {
  const { stdout } = await execute(
    process.execPath,
    ["--expose-gc", "--import", "tsx", "bench/replay.ts", "heap"],
    { cwd: fileURLToPath(new URL("..", import.meta.url)) },
  );
  return Number(stdout.trim());
}

/** Heap (and buffers) per retained message of the in-process history (100-byte payloads). */
async function measureHeap(): Promise<number> {
  const gc = (globalThis as { gc?: () => void }).gc;
  const history = new MemoryHistory({ store: new InMemoryMembershipStore(), maxEntries: 200_000 });
  gc?.();
  const before = process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers;
  const count = 100_000;
  for (let i = 0; i < count; i++) await history.publish(`g${i % 100}`, payload(i));
  gc?.();
  const after = process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers;
  await history.close();
  return (after - before) / count;
}

const replay: Benchmark = async (ctx) => {
  const samples = ctx.quick ? 20 : 100;
  const store = new InMemoryMembershipStore();
  const memory = await hubReplay(new MemoryHistory({ store }), samples);
  const redis = await startRedis();
  let onRedis: number[];
  let redisBytes: number;
  try {
    const history = new RedisHistory({ url: redis.url, store });
    await history.start();
    onRedis = await hubReplay(history, samples);
    // Memory of Redis per retained message: 1,000 more in a new group (all retained), INFO's
    // used_memory.
    const used = async () => {
      const { createClient } = await import("redis");
      const client = createClient({ url: redis.url });
      await client.connect();
      const info = await client.info("memory");
      await client.close();
      return Number(/used_memory:(\d+)/.exec(info)?.[1]);
    };
    const before = await used();
    for (let i = 0; i < 1_000; i++) await history.publish("measured", payload(i));
    redisBytes = ((await used()) - before) / 1_000;
    await history.close();
  } finally {
    await redis.stop();
  }
  const peer = await socketIoRecovery(samples);
  const bound = await lowerBound(samples);
  const heapBytes = await heapPerMessage();

  const row = (label: string, times: number[], extra: Partial<Row> = {}): Row =>
    latencyRow("replay", `1,000 missed messages to a reconnecting client: ${label}`, times, extra);
  const vs = (times: number[]) => ({
    baseline: { label: "Socket.IO recovery p99", value: round(p99(peer), 2) },
    ratio: round(p99(peer) / p99(times)),
    target: "p99 ≤ 50 ms",
    met: ctx.quick ? undefined : p99(times) <= 50,
  });
  return [
    row("bindWs, in-process history", memory, vs(memory)),
    row("bindWs, RedisHistory", onRedis, vs(onRedis)),
    row("Socket.IO 4.8 connection state recovery (same server only, no store check)", peer),
    row("lower bound: fresh connect, the frames sent from memory", bound, {
      baseline: { label: "in-process history p99", value: round(p99(memory), 2) },
      ratio: round(p99(memory) / p99(bound)),
    }),
    {
      benchmark: "replay",
      case: "cost of a retained 100-byte message: in-process history (heap and buffers)",
      value: Math.round(heapBytes),
      unit: "bytes",
    },
    {
      benchmark: "replay",
      case: "cost of a retained 100-byte message: RedisHistory (Redis used_memory)",
      value: Math.round(redisBytes),
      unit: "bytes",
    },
  ];
};

export default replay;

if (process.argv[2] === "heap") process.stdout.write(`${await measureHeap()}\n`);
