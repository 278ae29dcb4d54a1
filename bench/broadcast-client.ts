/**
 * The clients of the broadcast benchmark (bench/broadcast.ts), a child process driven over IPC:
 * `connections` raw WebSockets to the bare ws server and as many Engine.IO 4 ones (over a raw
 * WebSocket) to the Socket.IO server. Checks that every connection gets every message of a run
 * exactly once and in order, and says when a given number has arrived.
 */
import WebSocket from "ws";

type Command =
  | { connect: { wsPort: number; ioPort: number; connections: number } }
  | { start: { hub: "ws" | "socket.io"; messages: number } }
  | { await: number }
  | { check: true };

const send = (message: object) => process.send?.(message);
/** Where the 8 digits of `seq` start in each hub's frame. */
const SEQ_AT = {
  ws: '{"type":"message","seq":'.length,
  "socket.io": '42["message",{"seq":"'.length,
};

interface Receiver {
  expected: number;
  errors: number;
}
const receivers: Record<"ws" | "socket.io", Receiver[]> = { ws: [], "socket.io": [] };
let total = 0;
let awaited = Number.POSITIVE_INFINITY;

function seqOf(data: Buffer, at: number): number {
  let seq = 0;
  for (let i = at; i < at + 8; i++) seq = seq * 10 + ((data[i] as number) - 48);
  return seq;
}

function open(hub: "ws" | "socket.io", port: number): Promise<void> {
  const url =
    hub === "ws"
      ? `ws://127.0.0.1:${port}/`
      : `ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket`;
  const ws = new WebSocket(url, { perMessageDeflate: false });
  const receiver: Receiver = { expected: 0, errors: 0 };
  return new Promise((resolve, reject) => {
    ws.once("error", reject);
    ws.on("message", (data: Buffer) => {
      if (hub === "socket.io" && data[0] !== 0x34 /* "4" */) {
        const text = data.toString();
        if (text === "2") ws.send("3"); // ping → pong
        return;
      }
      if (hub === "socket.io" && data[1] === 0x30 /* "40": connected */) {
        receivers[hub].push(receiver);
        return resolve();
      }
      if (seqOf(data, SEQ_AT[hub]) === receiver.expected) receiver.expected++;
      else receiver.errors++;
      if (++total >= awaited) {
        send({ reached: awaited });
        awaited = Number.POSITIVE_INFINITY;
      }
    });
    if (hub === "ws") {
      ws.once("open", () => {
        receivers[hub].push(receiver);
        resolve();
      });
    } else ws.once("open", () => ws.send("40")); // to the main namespace
  });
}

let hub: "ws" | "socket.io" = "ws";
let messages = 0;
process.on("message", async (command: Command) => {
  if ("connect" in command) {
    const { wsPort, ioPort, connections } = command.connect;
    for (let i = 0; i < connections; i += 100) {
      const batch = Math.min(100, connections - i);
      await Promise.all(
        Array.from({ length: batch }, () => [open("ws", wsPort), open("socket.io", ioPort)]).flat(),
      );
    }
    send({ connected: true });
  } else if ("start" in command) {
    ({ hub, messages } = command.start);
    for (const receiver of receivers[hub]) receiver.expected = 0;
    total = 0;
    send({ started: true });
  } else if ("await" in command) {
    if (total >= command.await) send({ reached: command.await });
    else awaited = command.await;
  } else {
    const list = receivers[hub];
    const errors = list.reduce((sum, r) => sum + r.errors, 0);
    const short = list.filter((r) => r.expected !== messages).length;
    send({ checked: { errors, short } });
  }
});
send({ ready: true });
