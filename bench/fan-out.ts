/**
 * Fan-out: one group of 1,000 connections, one sender, 100-byte messages, 20 in flight: messages
 * delivered per second, and the server's CPU time per delivery, through the `ws` sample, its
 * SignalR endpoint (JSON and MessagePack) and the same sample on Socket.IO 4.8 (websocket transport, in-memory
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
  hub: "ws" | "signalr" | "signalr-msgpack" | "socket.io",
  members: number,
  messages: number,
): Promise<FanOut> {
  // Fan-out capacity: the one sender sends far faster than the rate limits let a person.
  // The SignalR endpoint is part of the `ws` sample's server.
  const env = {
    ...sampleEnv(ctx.connectionString),
    HUB: hub === "socket.io" ? hub : "ws",
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
  const msgpack = await fanOut(ctx, "signalr-msgpack", members, messages);
  const io = await fanOut(ctx, "socket.io", members, messages);
  const name = `${members.toLocaleString("en")} connections × ${messages} messages of 100 B`;
  const socketIo = (value: number) => ({ label: "Socket.IO 4.8", value });
  /** Deliveries per second and CPU per delivery of one endpoint, against Socket.IO's. */
  const rowsOf = (
    result: FanOut,
    throughput: string,
    cpu: string,
    details?: Record<string, unknown>,
  ): Row[] => [
    {
      benchmark: "fan-out",
      case: `${name}: ${throughput}`,
      value: Math.round(result.perSecond),
      unit: "deliveries/s",
      baseline: socketIo(Math.round(io.perSecond)),
      ratio: round(result.perSecond / io.perSecond),
      target: "≥ 1.5× Socket.IO",
      met: result.perSecond >= 1.5 * io.perSecond,
      ...(details && { details }),
    },
    {
      benchmark: "fan-out",
      case: cpu,
      value: round(result.cpuPerDelivery),
      unit: "µs",
      baseline: socketIo(round(io.cpuPerDelivery)),
      ratio: round(io.cpuPerDelivery / result.cpuPerDelivery),
    },
  ];
  return [
    ...rowsOf(ws, "ws sample", "server CPU per delivery", { ws, signalr, msgpack, socketIo: io }),
    ...rowsOf(signalr, "SignalR endpoint", "server CPU per delivery: SignalR endpoint"),
    // MessagePack against JSON on the same endpoint: a group message is encoded once per
    // protocol, then each MessagePack connection is written through ws's own send.
    {
      benchmark: "fan-out",
      case: "server CPU per delivery: SignalR endpoint, MessagePack",
      value: round(msgpack.cpuPerDelivery),
      unit: "µs",
      baseline: { label: "the same endpoint, JSON", value: round(signalr.cpuPerDelivery) },
      ratio: round(signalr.cpuPerDelivery / msgpack.cpuPerDelivery),
      target: "≤ 2× JSON",
      met: msgpack.cpuPerDelivery <= 2 * signalr.cpuPerDelivery,
    },
  ];
};

export default fanOutBenchmark;
