/**
 * Long polling against WebSockets, one run, the same in-process `bindSignalR` and the official
 * client: the latency of a group message from `sendToGroup` to the client's handler (one message
 * at a time, and the last of a burst of 100), and the HTTP requests the server answered per
 * message delivered. Server-Sent Events are measured beside them.
 */
import { once } from "node:events";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { HttpTransportType, HubConnectionBuilder, LogLevel } from "@microsoft/signalr";
import { WebSocketServer } from "ws";
import { accessTokenOf, bindSignalR } from "../adapters/hubs/signalr.js";
import { InMemoryMembershipStore } from "../adapters/index.js";
import { type Benchmark, latencyRow, median, type Row, round, timedRuns } from "./lib.js";

const TRANSPORTS = ["WebSockets", "ServerSentEvents", "LongPolling"] as const;
type Transport = (typeof TRANSPORTS)[number];

interface Measured {
  single: number[];
  burst: number[];
  /** HTTP requests answered per message delivered, one at a time and in bursts. */
  requests: { single: number; burst: number };
}

async function measure(transport: Transport, singles: number, bursts: number): Promise<Measured> {
  const http = createServer();
  const store = new InMemoryMembershipStore();
  await store.addToGroup("reader", "room");
  const hub = bindSignalR(new WebSocketServer({ noServer: true }), {
    store,
    path: "/hub",
    userIdOf: (request) => accessTokenOf(request),
    methods: {},
  });
  let requests = 0;
  http.on("request", (request, response) => {
    requests++;
    void hub.handleRequest(request, response);
  });
  http.on("upgrade", (request, socket, head) => void hub.handleUpgrade(request, socket, head));
  http.listen(0, "127.0.0.1");
  await once(http, "listening");
  const url = `http://127.0.0.1:${(http.address() as AddressInfo).port}/hub`;
  const client = new HubConnectionBuilder()
    .withUrl(url, { accessTokenFactory: () => "reader", transport: HttpTransportType[transport] })
    .configureLogging(LogLevel.None)
    .build();
  let received = 0;
  let waiting: { count: number; resolve: () => void } | undefined;
  client.on("message", () => {
    received++;
    if (waiting !== undefined && received >= waiting.count) waiting.resolve();
  });
  const delivered = (count: number) =>
    new Promise<void>((resolve) => {
      waiting = { count, resolve };
      if (received >= count) resolve();
    });
  try {
    await client.start();
    const body = { text: "x".repeat(100) };
    // Warm up: the first messages pay for the JIT and the first poll's turn.
    for (let i = 0; i < 20; i++) {
      const at = received + 1;
      await hub.sendToGroup("room", "message", body);
      await delivered(at);
    }
    let before = { requests, received };
    const perMessage = () => (requests - before.requests) / (received - before.received);
    const single = await timedRuns(singles, async () => {
      const at = received + 1;
      await hub.sendToGroup("room", "message", body);
      await delivered(at);
    });
    const singleRequests = perMessage();
    before = { requests, received };
    const burst = await timedRuns(bursts, async () => {
      const at = received + 100;
      for (let i = 0; i < 100; i++) void hub.sendToGroup("room", "message", body);
      await delivered(at);
    });
    return { single, burst, requests: { single: singleRequests, burst: perMessage() } };
  } finally {
    await client.stop();
    await hub.close();
    http.closeAllConnections();
    http.close();
  }
}

const longPolling: Benchmark = async (ctx) => {
  const singles = ctx.quick ? 200 : 2_000;
  const bursts = ctx.quick ? 20 : 200;
  const results = {} as Record<Transport, Measured>;
  for (const transport of TRANSPORTS)
    results[transport] = await measure(transport, singles, bursts);
  const ws = results.WebSockets;
  const rows: Row[] = [];
  for (const transport of TRANSPORTS) {
    const { single, burst, requests } = results[transport];
    const against = (times: number[], base: number[]) =>
      transport === "WebSockets"
        ? {}
        : {
            baseline: { label: "WebSockets", value: round(median(base)) },
            ratio: round(median(times) / median(base)),
          };
    rows.push(
      latencyRow("long-polling", `${transport}: one message at a time, send to handler`, single, {
        ...against(single, ws.single),
        details: { samples: single.length, requestsPerMessage: round(requests.single, 3) },
      }),
      latencyRow("long-polling", `${transport}: the last of a burst of 100`, burst, {
        ...against(burst, ws.burst),
        details: { samples: burst.length, requestsPerMessage: round(requests.burst, 3) },
      }),
      {
        benchmark: "long-polling",
        case: `${transport}: HTTP requests per message, one at a time / in bursts of 100`,
        value: round(requests.single, 3),
        unit: `requests / ${round(requests.burst, 3)} in bursts`,
      },
    );
  }
  return rows;
};

export default longPolling;
