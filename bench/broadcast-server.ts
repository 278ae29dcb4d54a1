/**
 * The server of the broadcast benchmark (bench/broadcast.ts), a child process driven over IPC.
 * It holds the same clients twice, on a bare `ws` server and on a bare Socket.IO 4.8 server
 * (websocket transport, in-memory adapter), and broadcasts `messages` to all of them, `perTurn`
 * per turn of the event loop, in one of these ways:
 *   wsgroups   WsGroups.broadcast (what bindWs's broadcast is without a history)
 *   history    the same with the in-process message history on: published to a MemoryHistory,
 *              delivered from its subscription as bindWs delivers it (Resumes.hold, then
 *              WsGroups.broadcast)
 *   socket.io  io.to(room).emit
 *   naive      ws.send to every socket
 *   d1         the frame built once, one write per client (lower bound at 1 per turn)
 *   d2         the turn's frames concatenated once, one write per socket per turn (lower bound
 *              for bursts)
 * Messages go out in windows of `window`, the next one when the coordinator says the clients
 * have them all, so nothing piles up in memory. Answers each run with its CPU time (user and
 * system: the kernel's part, mostly loopback writes).
 */
import { once } from "node:events";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { Server } from "socket.io";
import { type WebSocket, WebSocketServer } from "ws";
import { MemoryHistory } from "../adapters/history/memory.js";
import { Resumes } from "../adapters/history/resumes.js";
import { textFrame, WsGroups } from "../adapters/hubs/ws-groups.js";
import { InMemoryMembershipStore } from "../adapters/index.js";

export type Mode = "wsgroups" | "history" | "socket.io" | "naive" | "d1" | "d2";
export interface Run {
  run: Mode;
  perTurn: number;
  messages: number;
  window: number;
}
export type Command = Run | { next: true } | { exit: true };

const send = (message: object) => process.send?.(message);
const GROUP = "g";
const TEXT = "x".repeat(60);
/** The message with sequence number `seq`: 100 bytes of JSON. */
export const message = (seq: number) =>
  `{"type":"message","seq":${String(seq).padStart(8, "0")},"text":"${TEXT}"}`;

const wsHttp = createServer();
const wss = new WebSocketServer({ server: wsHttp });
const groups = new WsGroups<WebSocket>();
const sockets: WebSocket[] = [];
wss.on("connection", (ws) => {
  const id = `c${sockets.length}`;
  sockets.push(ws);
  groups.add(id, ws);
  groups.join(id, GROUP);
});
// As bindWs wires a history: its subscription delivers every message, through the resumes.
const history = new MemoryHistory({ store: new InMemoryMembershipStore() });
const resumes = new Resumes(history, (error) => {
  throw error;
});
history.subscribe((m) => {
  resumes.hold(m);
  if (groups.size(m.group) > 0) groups.broadcast(m.group, m.payload);
});
const ioHttp = createServer();
const io = new Server(ioHttp, { transports: ["websocket"] });
io.on("connection", (socket) => socket.join(GROUP));
wsHttp.listen(0, "127.0.0.1");
ioHttp.listen(0, "127.0.0.1");
await Promise.all([once(wsHttp, "listening"), once(ioHttp, "listening")]);
send({
  wsPort: (wsHttp.address() as AddressInfo).port,
  ioPort: (ioHttp.address() as AddressInfo).port,
});

/** A raw TCP write, as ws would do it: the frame ws's sender would build. */
const tcp = (ws: WebSocket) =>
  (ws as unknown as { _socket: { write(b: Buffer): boolean } })._socket;

/** Broadcasts messages `from`..`to` (exclusive), `perTurn` in each turn. */
function turn(mode: Mode, from: number, to: number): void {
  switch (mode) {
    case "wsgroups":
      for (let seq = from; seq < to; seq++) groups.broadcast(GROUP, message(seq));
      return;
    case "history":
      for (let seq = from; seq < to; seq++) void history.publish(GROUP, Buffer.from(message(seq)));
      return;
    case "socket.io":
      for (let seq = from; seq < to; seq++)
        io.to(GROUP).emit("message", { seq: String(seq).padStart(8, "0"), text: TEXT });
      return;
    case "naive":
      for (let seq = from; seq < to; seq++) {
        const text = message(seq);
        for (const ws of sockets) ws.send(text);
      }
      return;
    case "d1":
      for (let seq = from; seq < to; seq++) {
        const frame = textFrame(Buffer.from(message(seq)));
        for (const ws of sockets) tcp(ws).write(frame);
      }
      return;
    case "d2": {
      const frames: Buffer[] = [];
      for (let seq = from; seq < to; seq++) frames.push(textFrame(Buffer.from(message(seq))));
      const all = Buffer.concat(frames);
      for (const ws of sockets) tcp(ws).write(all);
      return;
    }
  }
}

let next: () => void = () => {};
async function run({ run: mode, perTurn, messages, window }: Run) {
  const start = process.cpuUsage();
  const started = performance.now();
  for (let sent = 0; sent < messages; ) {
    const end = Math.min(messages, sent + window);
    while (sent < end) {
      const to = Math.min(end, sent + perTurn);
      turn(mode, sent, to);
      sent = to;
      await new Promise((resolve) => setImmediate(resolve));
    }
    // Until the clients have every message of the window.
    await new Promise<void>((resolve) => {
      next = resolve;
      send({ window: sent });
    });
  }
  const { user, system } = process.cpuUsage(start);
  send({ done: { user, system, ms: performance.now() - started } });
}

process.on("message", (command: Command) => {
  if ("run" in command) void run(command);
  else if ("next" in command) next();
  else process.exit(0);
});
