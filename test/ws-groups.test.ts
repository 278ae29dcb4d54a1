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

  it("keeps one order per socket in a turn: broadcasts, send, the socket's own send and close", async () => {
    const groups = new WsGroups();
    const [a, b] = await connected(groups, 2);
    if (a === undefined || b === undefined) throw new Error("not connected");
    const server = groups.socket("c0") as unknown as WebSocket;
    const closed = new Promise<number>((resolve) => a.ws.once("close", resolve));
    groups.broadcast("room", "1");
    groups.broadcast("room", "2");
    groups.send("c0", "3");
    server.send("4");
    groups.broadcast("room", "5");
    for (let i = 6; i < 206; i++) groups.broadcast("room", `${i}:${"z".repeat(1_000)}`);
    server.close(4000, "bye");
    groups.broadcast("room", "after the close");
    expect(await closed).toBe(4000);
    const numbers = (received: { text: string }[]) => received.map((m) => m.text.split(":")[0]);
    const all = Array.from({ length: 205 }, (_, i) => String(i + 1));
    expect(numbers(a.received)).toEqual(all);
    await expect.poll(() => b.received.length).toBe(204);
    expect(numbers(b.received)).toEqual([
      ...all.filter((n) => n !== "3" && n !== "4"),
      "after the close",
    ]);
  });

  it("sends each socket exactly its groups' messages, in order, when groups interleave in a turn", async () => {
    const groups = new WsGroups();
    const clients = await connected(groups, 3);
    // c0 in A, c1 in A and B, c2 in B (and all in room, which gets nothing here)
    groups.join("c0", "A");
    groups.join("c1", "A");
    groups.join("c1", "B");
    groups.join("c2", "B");
    for (let i = 0; i < 30; i++) groups.broadcast(i % 3 === 0 ? "B" : "A", `${i}`);
    const of = (group: "A" | "B") =>
      Array.from({ length: 30 }, (_, i) => i)
        .filter((i) => (i % 3 === 0) === (group === "B"))
        .map(String);
    const expected = [of("A"), Array.from({ length: 30 }, (_, i) => `${i}`), of("B")];
    for (const [i, client] of clients.entries()) {
      await expect.poll(() => client.received.length).toBe(expected[i]?.length);
      expect(client.received.map((m) => m.text)).toEqual(expected[i]);
    }
  });

  it("sends a connection that left mid-turn nothing broadcast after its leave", async () => {
    const left: string[] = [];
    const groups = new WsGroups({
      onLeave: (id) => {
        left.push(id);
        groups.send(id, "removed");
      },
    });
    const [leaver, stayer] = await connected(groups, 2);
    if (leaver === undefined || stayer === undefined) throw new Error("not connected");
    groups.broadcast("room", "before 1");
    groups.broadcast("room", "before 2");
    groups.leave("c0", "room", "revoked");
    groups.broadcast("room", "after");
    await expect.poll(() => stayer.received.length).toBe(3);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(leaver.received.map((m) => m.text)).toEqual(["before 1", "before 2", "removed"]);
    expect(left).toEqual(["c0"]);
  });

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
