/**
 * Fan-out: one group of 1,000 connections, one sender, 100-byte messages, 20 in flight: messages
 * delivered per second, and the server's CPU time per delivery, through the `ws` sample, its
 * SignalR endpoint and the same sample on Socket.IO 4.8 (websocket transport, in-memory
 * adapter), all driven by the same raw-WebSocket load generator in one run.
 */
import { NO_RATE_LIMITS, sampleEnv, startSample } from "../test/support/processes.js";
import {
  type BenchContext,
  type Benchmark,
  benchStore,
  loadgen,
  type Row,
  round,
  serverNodeArgs,
  serverStats,
} from "./lib.js";

interface FanOut {
  deliveries: number;
  ms: number;
  perSecond: number;
  /** Server CPU microseconds per delivered message. */
  cpuPerDelivery: number;
}

async function fanOut(
  ctx: BenchContext,
  hub: "ws" | "signalr" | "socket.io",
  members: number,
  messages: number,
): Promise<FanOut> {
  // Fan-out capacity: the one sender sends far faster than the rate limits let a person.
  // The SignalR endpoint is part of the `ws` sample's server.
  const env = {
    ...sampleEnv(ctx.connectionString),
    HUB: hub === "signalr" ? "ws" : hub,
    ...NO_RATE_LIMITS,
  };
  const { store } = benchStore(ctx, { tableName: env.MEMBERSHIP_TABLE });
  const users = Array.from({ length: members }, (_, i) => `fan-${i}`);
  await store.addMany(users.map((userId) => ({ userId, group: "fan" })));
  await store.close();
  const server = await startSample(env, { nodeArgs: serverNodeArgs() });
  try {
    let cpu = 0;
    const result = await loadgen<{ deliveries: number; ms: number; perSecond: number }>(
      {
        mode: "fanout",
        url: server.url,
        hub,
        secret: env.JWT_SECRET,
        users,
        perUser: 1,
        window: 200,
        group: "fan",
        messages,
        textBytes: 100,
        inFlight: 20,
        hold: true,
        timeoutMs: 300_000,
      },
      (line, child) => {
        const step = line.includes('"connected"') ? -1 : line.includes('"ready"') ? 1 : 0;
        if (step === 0) return;
        serverStats(server.url).then((stats) => {
          cpu += step * stats.cpuMicros;
          child.stdin?.write("go\n");
        });
      },
    );
    return { ...result, cpuPerDelivery: cpu / result.deliveries };
  } finally {
    await server.stop();
  }
}

const fanOutBenchmark: Benchmark = async (ctx) => {
  const members = 1_000;
  const messages = ctx.quick ? 100 : 500;
  const ws = await fanOut(ctx, "ws", members, messages);
  const signalr = await fanOut(ctx, "signalr", members, messages);
  const io = await fanOut(ctx, "socket.io", members, messages);
  const name = `${members.toLocaleString("en")} connections × ${messages} messages of 100 B`;
  const rows: Row[] = [
    {
      benchmark: "fan-out",
      case: `${name}: ws sample`,
      value: Math.round(ws.perSecond),
      unit: "deliveries/s",
      baseline: { label: "Socket.IO 4.8", value: Math.round(io.perSecond) },
      ratio: round(ws.perSecond / io.perSecond),
      target: "≥ 1.5× Socket.IO",
      met: ws.perSecond >= 1.5 * io.perSecond,
      details: { ws, signalr, socketIo: io },
    },
    {
      benchmark: "fan-out",
      case: `${name}: SignalR endpoint`,
      value: Math.round(signalr.perSecond),
      unit: "deliveries/s",
      baseline: { label: "Socket.IO 4.8", value: Math.round(io.perSecond) },
      ratio: round(signalr.perSecond / io.perSecond),
      target: "≥ 1.5× Socket.IO",
      met: signalr.perSecond >= 1.5 * io.perSecond,
    },
    {
      benchmark: "fan-out",
      case: "server CPU per delivery",
      value: round(ws.cpuPerDelivery),
      unit: "µs",
      baseline: { label: "Socket.IO 4.8", value: round(io.cpuPerDelivery) },
      ratio: round(io.cpuPerDelivery / ws.cpuPerDelivery),
    },
    {
      benchmark: "fan-out",
      case: "server CPU per delivery: SignalR endpoint",
      value: round(signalr.cpuPerDelivery),
      unit: "µs",
      baseline: { label: "Socket.IO 4.8", value: round(io.cpuPerDelivery) },
      ratio: round(io.cpuPerDelivery / signalr.cpuPerDelivery),
    },
  ];
  return rows;
};

export default fanOutBenchmark;
