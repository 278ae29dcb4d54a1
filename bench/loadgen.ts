/**
 * The load generator: its own process, so its CPU and memory are not the server's. Speaks the
 * `ws` sample's protocol, its SignalR endpoint's (the JSON hub protocol) or Socket.IO's (Engine.IO
 * 4), each over a raw WebSocket with the same client code, so the comparison measures the
 * servers. Connects only to 127.0.0.1.
 *
 *   node --import tsx bench/loadgen.ts '{"mode":"connect",...}'   (see Params)
 *
 * Prints one JSON line with the result. It pauses (prints {"<step>":true,...} and waits for a line
 * on stdin) when connected before a fan-out, and, with `hold`, before closing.
 */
import { createInterface } from "node:readline";
import jwt from "jsonwebtoken";
import WebSocket from "ws";
import {
  fromMessagePack,
  splitMessagePack,
  toMessagePack,
} from "../adapters/hubs/signalr-msgpack.js";
import { secretKey } from "../sample/auth.js";
import { quantile } from "./lib.js";

interface Params {
  mode: "connect" | "fanout";
  /** http://127.0.0.1:PORT of the server. */
  url: string;
  hub: "ws" | "signalr" | "signalr-msgpack" | "socket.io";
  secret: string;
  /** Users, each connected `perUser` times (adjacent). */
  users: string[];
  perUser: number;
  /** Connections opening at once. */
  window: number;
  hold?: boolean;
  /** fanout: the group every connection is in, how many messages, their text size, in flight. */
  group?: string;
  messages?: number;
  textBytes?: number;
  inFlight?: number;
  /** Give up after this long. */
  timeoutMs: number;
}

const params = JSON.parse(process.argv[2] ?? "{}") as Params;
if (!/^http:\/\/127\.0\.0\.1:\d+$/.test(params.url)) throw new Error("loopback URLs only");
setTimeout(() => {
  console.log(JSON.stringify({ error: `timed out after ${params.timeoutMs} ms` }));
  process.exit(1);
}, params.timeoutMs).unref();

const PREFIXES = {
  ws: ['{"type":"message"', '{"type":"welcome"'],
  signalr: ['{"type":1,"target":"message"', '{"type":1,"target":"welcome"'],
  "signalr-msgpack": ["", ""], // read by target, below
  "socket.io": ['42["message"', '42["welcome"'],
} as const;
const [MESSAGE, WELCOME] = PREFIXES[params.hub].map((prefix) => Buffer.from(prefix)) as [
  Buffer,
  Buffer,
];
const MSGPACK = params.hub === "signalr-msgpack";
/** The target of a MessagePack frame's first message: [1, headers, id, target, args]. */
const targetOf = (data: Buffer) => {
  const [payload] = splitMessagePack(data, 1 << 20).payloads;
  const message = payload && fromMessagePack(payload);
  return typeof message === "object" ? message.target : undefined;
};
const startsWith = (data: Buffer, prefix: Buffer) =>
  MSGPACK
    ? targetOf(data) === (prefix === MESSAGE ? "message" : "welcome")
    : data.length >= prefix.length &&
      data.compare(prefix, 0, prefix.length, 0, prefix.length) === 0;

const key = secretKey(params.secret);
const token = (userId: string) =>
  jwt.sign({}, key, {
    algorithm: "HS256",
    subject: userId,
    expiresIn: 3600,
    issuer: "hub-membership-sample",
    audience: "hub-membership-sample",
  });

interface Connection {
  ws: WebSocket;
  messages: number;
  welcomeMs: number;
}

let delivered = 0;
let onDelivery: () => void = () => {};

/** Opens one connection; resolves when its `welcome` arrives. */
function open(userId: string): Promise<Connection> {
  const started = performance.now();
  const base = params.url.replace("http", "ws");
  const endpoint = {
    ws: `${base}/hub`,
    signalr: `${base}/signalr`, // without negotiation, as clients with skipNegotiation connect
    "signalr-msgpack": `${base}/signalr`,
    "socket.io": `${base}/socket.io/?EIO=4&transport=websocket`,
  }[params.hub];
  const ws = new WebSocket(endpoint, {
    headers: { authorization: `Bearer ${token(userId)}` },
    perMessageDeflate: false,
  });
  const connection: Connection = { ws, messages: 0, welcomeMs: 0 };
  return new Promise((resolve, reject) => {
    ws.once("error", reject);
    if (params.hub === "signalr" || MSGPACK)
      ws.once("open", () =>
        ws.send(`{"protocol":"${MSGPACK ? "messagepack" : "json"}","version":1}\u001e`),
      );
    ws.once("close", (code) => reject(new Error(`closed with ${code} before welcome`)));
    ws.on("message", (data: Buffer) => {
      if (startsWith(data, MESSAGE)) {
        connection.messages++;
        delivered++;
        onDelivery();
      } else if (startsWith(data, WELCOME)) {
        connection.welcomeMs = performance.now() - started;
        ws.removeAllListeners("close");
        resolve(connection);
      } else if (params.hub === "socket.io") {
        const text = data.toString();
        if (text === "2")
          ws.send("3"); // Engine.IO ping → pong
        else if (text.startsWith("0")) ws.send("40"); // open → connect to the main namespace
      }
    });
  });
}

/** Opens every connection, `window` at a time, each user's connections one after the other. */
async function openAll(): Promise<{ connections: Connection[]; ms: number; failed: number }> {
  const queue = params.users.flatMap((user) => Array<string>(params.perUser).fill(user));
  const connections: Connection[] = [];
  let failed = 0;
  let next = 0;
  const started = performance.now();
  const worker = async () => {
    while (next < queue.length) {
      const user = queue[next++] as string;
      try {
        connections.push(await open(user));
      } catch {
        failed++;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(params.window, queue.length) }, worker));
  return { connections, ms: performance.now() - started, failed };
}

/** One sender sends `messages` to the group, `inFlight` at a time; every connection counts them. */
async function fanout(connections: Connection[]) {
  const sender = connections[0];
  if (sender === undefined) throw new Error("no connection");
  const total = (params.messages ?? 0) * connections.length;
  const text = "x".repeat(params.textBytes ?? 100);
  const frame = {
    ws: JSON.stringify({ type: "send", group: params.group, text }),
    // Non-blocking invocations (no invocationId): like `send`, no completion comes back.
    signalr: `${JSON.stringify({ type: 1, target: "Send", arguments: [params.group, text] })}\u001e`,
    "signalr-msgpack": toMessagePack({ type: 1, target: "Send", arguments: [params.group, text] }),
    "socket.io": `42${JSON.stringify(["send", { group: params.group, text }])}`,
  }[params.hub];
  let sent = 0;
  const started = performance.now();
  await new Promise<void>((resolve) => {
    const pump = () => {
      while (sent < (params.messages ?? 0) && sent - sender.messages < (params.inFlight ?? 10)) {
        sender.ws.send(frame);
        sent++;
      }
    };
    onDelivery = () => {
      if (delivered >= total) resolve();
      else pump();
    };
    pump();
  });
  const ms = performance.now() - started;
  return { deliveries: delivered, ms, perSecond: (delivered / ms) * 1000 };
}

const stdin = createInterface({ input: process.stdin });
const lines = stdin[Symbol.asyncIterator]();

/** Says `{ [step]: true, ...result }` and waits for a line on stdin: the runner reads the server's stats meanwhile. */
async function pause(step: string, result: object) {
  console.log(JSON.stringify({ [step]: true, ...result }));
  await lines.next();
}

async function main() {
  const { connections, ms, failed } = await openAll();
  const welcome = connections.map((c) => c.welcomeMs);
  const opened = {
    connections: connections.length,
    failed,
    ms,
    welcomeP50: quantile(welcome, 0.5),
    welcomeP99: quantile(welcome, 0.99),
  };
  let result: object = opened;
  if (params.mode === "fanout") {
    await pause("connected", opened);
    result = { ...opened, ...(await fanout(connections)) };
  }
  if (params.hold) await pause("ready", result);
  stdin.close();
  for (const c of connections) c.ws.terminate();
  console.log(JSON.stringify(result));
}

main().catch((error: unknown) => {
  console.log(JSON.stringify({ error: String(error) }));
  process.exit(1);
});
