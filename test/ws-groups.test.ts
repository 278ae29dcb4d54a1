import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { WebSocket, WebSocketServer } from "ws";
import { WsGroups } from "../adapters/hubs/ws.js";

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** A real ws server whose connections are registered in `groups` as c0, c1, ... and a client each. */
async function connected(groups: WsGroups, count: number, perMessageDeflate = false) {
  const wss = new WebSocketServer({ port: 0, host: "127.0.0.1", perMessageDeflate });
  cleanups.push(() => new Promise((resolve) => wss.close(resolve)));
  await once(wss, "listening");
  let n = 0;
  wss.on("connection", (ws) => {
    const id = `c${n++}`;
    groups.add(id, ws);
    groups.join(id, "room");
  });
  const { port } = wss.address() as AddressInfo;
  const clients: Array<{ ws: WebSocket; received: Array<{ text: string; binary: boolean }> }> = [];
  for (let i = 0; i < count; i++) {
    const ws = new WebSocket(`ws://127.0.0.1:${port}`, { perMessageDeflate });
    const client = { ws, received: [] as Array<{ text: string; binary: boolean }> };
    ws.on("message", (data, binary) => client.received.push({ text: data.toString(), binary }));
    cleanups.push(() => ws.terminate());
    await once(ws, "open");
    clients.push(client);
  }
  while (n < count) await new Promise((resolve) => setTimeout(resolve, 5));
  return clients;
}

describe("WsGroups.broadcast", () => {
  for (const deflate of [false, true]) {
    it(`frames every size intact, in order, as text${deflate ? " (permessage-deflate)" : ""}`, async () => {
      const groups = new WsGroups();
      const clients = await connected(groups, 3, deflate);
      // 7-bit, 16-bit and 64-bit payload lengths, a burst of small ones, multi-byte characters
      const messages = [
        "a",
        "b".repeat(125),
        "c".repeat(126),
        "é".repeat(40_000),
        "d".repeat(70_000),
        ...Array.from({ length: 50 }, (_, i) => `burst ${i} ✓`),
      ];
      for (const message of messages) expect(groups.broadcast("room", message)).toBe(3);
      await Promise.all(
        clients.map(({ received }) =>
          expect.poll(() => received.length, { timeout: 5_000 }).toBe(messages.length),
        ),
      );
      for (const { received } of clients) {
        expect(received.map((m) => m.text)).toEqual(messages);
        expect(received.some((m) => m.binary)).toBe(false);
      }
    });
  }

  it("does not count a burst it holds back itself against a reading client", async () => {
    const dropped: string[] = [];
    // 12 KB in one turn of the event loop: over the limit, but all of it waiting on our cork.
    const groups = new WsGroups({
      maxBufferedBytes: 8_000,
      onSlowConsumer: (id) => dropped.push(id),
    });
    const [reader] = await connected(groups, 1);
    for (let i = 0; i < 12; i++)
      expect(groups.broadcast("room", `${i}:${"y".repeat(1_000)}`)).toBe(1);
    await expect.poll(() => reader?.received.length, { timeout: 5_000 }).toBe(12);
    expect(dropped).toEqual([]);
  });

  it("terminates a client that does not read once its unsent data passes the limit", async () => {
    const dropped: string[] = [];
    const groups = new WsGroups({
      maxBufferedBytes: 64 * 1024,
      onSlowConsumer: (id) => dropped.push(id),
    });
    const [stalled, reader] = await connected(groups, 2);
    if (stalled === undefined || reader === undefined) throw new Error("not connected");
    (stalled.ws as unknown as { _socket: { pause(): void } })._socket.pause();
    const chunk = "x".repeat(1_000);
    for (let i = 0; i < 5_000 && dropped.length === 0; i++) {
      groups.broadcast("room", chunk);
      if (i % 100 === 99) await new Promise((resolve) => setTimeout(resolve, 1));
    }
    expect(dropped).toEqual(["c0"]);
    expect(groups.size("room")).toBe(1);
    await expect.poll(() => reader.received.length, { timeout: 5_000 }).toBeGreaterThan(100);
  });
});
