import { once } from "node:events";
import {
  HttpTransportType,
  type HubConnection,
  HubConnectionBuilder,
  type HubMessage,
  JsonHubProtocol,
  LogLevel,
  MessageType,
  NullLogger,
} from "@microsoft/signalr";
import { MessagePackHubProtocol } from "@microsoft/signalr-protocol-msgpack";
import fc from "fast-check";
import { afterEach, describe, expect, it, vi } from "vitest";
import { WebSocket } from "ws";
import type { SignalRBindingOptions } from "../adapters/hubs/signalr.js";
import {
  fromMessagePack,
  splitMessagePack,
  toMessagePack,
} from "../adapters/hubs/signalr-msgpack.js";
import { FUZZ_SEED, runs } from "./fuzz/harness.js";
import { serve } from "./support/signalr-hub.js";

const RS = "\u001e";
const official = new MessagePackHubProtocol();
/** What the official client reads: an ArrayBuffer of exactly these bytes. */
const parse = (bytes: Buffer) =>
  official.parseMessages(
    bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length) as ArrayBuffer,
    NullLogger.instance,
  );

describe("bindSignalR: the MessagePack hub protocol", () => {
  const cleanup: Array<() => Promise<unknown>> = [];
  afterEach(async () => {
    for (const step of cleanup.splice(0).reverse()) await step();
  });
  const start = async (options: Partial<SignalRBindingOptions<WebSocket>> = {}) => {
    const server = await serve(options);
    cleanup.push(() => server.close());
    return server;
  };
  const connect = async (
    url: string,
    userId: string,
    protocol: "json" | "messagepack",
    transport = HttpTransportType.WebSockets,
  ) => {
    const connection: HubConnection = new HubConnectionBuilder()
      .withUrl(url, { accessTokenFactory: () => userId, transport })
      .withHubProtocol(protocol === "json" ? new JsonHubProtocol() : new MessagePackHubProtocol())
      .configureLogging(LogLevel.None)
      .build();
    const welcome = new Promise((resolve) => connection.on("welcome", resolve));
    await connection.start();
    await welcome;
    cleanup.push(() => connection.stop());
    return connection;
  };

  it("writes every message the server sends byte for byte as the official client's protocol does", () => {
    const messages: Array<[Record<string, unknown>, HubMessage]> = [
      [
        { type: 1, target: "message", arguments: [{ group: "Room/#1", text: "hé" }, 3, null] },
        {
          type: MessageType.Invocation,
          headers: {},
          target: "message",
          arguments: [{ group: "Room/#1", text: "hé" }, 3, null],
        },
      ],
      [
        { type: 1, invocationId: "7", target: "question", arguments: [2.5] },
        {
          type: MessageType.Invocation,
          headers: {},
          invocationId: "7",
          target: "question",
          arguments: [2.5],
        },
      ],
      [
        { type: 2, invocationId: "1", item: [1, "two"] },
        { type: MessageType.StreamItem, headers: {}, invocationId: "1", item: [1, "two"] },
      ],
      [
        { type: 3, invocationId: "1", result: { a: 1 } },
        { type: MessageType.Completion, headers: {}, invocationId: "1", result: { a: 1 } },
      ],
      [
        { type: 3, invocationId: "2", error: "not_member" },
        { type: MessageType.Completion, headers: {}, invocationId: "2", error: "not_member" },
      ],
      [
        { type: 3, invocationId: "3" },
        { type: MessageType.Completion, headers: {}, invocationId: "3" },
      ],
      [{ type: 6 }, { type: MessageType.Ping }],
      [
        { type: 8, sequenceId: 300 },
        { type: MessageType.Ack, sequenceId: 300 },
      ],
      [
        { type: 9, sequenceId: 70_000 },
        { type: MessageType.Sequence, sequenceId: 70_000 },
      ],
    ];
    for (const [ours, theirs] of messages)
      expect(toMessagePack(ours), JSON.stringify(ours)).toEqual(
        Buffer.from(official.writeMessage(theirs)),
      );
    // The client writes a close without its error; the server's carries it, which it reads.
    const close = toMessagePack({ type: 7, error: "revoked", allowReconnect: true });
    const [read] = parse(close);
    expect(read).toEqual({ type: MessageType.Close, error: "revoked", allowReconnect: true });
  });

  it("reads every message the official client writes", () => {
    const sent: HubMessage[] = [
      {
        type: MessageType.Invocation,
        headers: {},
        invocationId: "1",
        target: "Echo",
        arguments: [new Uint8Array([1, 2]), "x"],
        streamIds: ["2"],
      },
      { type: MessageType.Invocation, headers: {}, target: "Echo", arguments: [] },
      { type: MessageType.StreamItem, headers: {}, invocationId: "2", item: 5 },
      { type: MessageType.Completion, headers: {}, invocationId: "2", result: 1 },
      { type: MessageType.Completion, headers: {}, invocationId: "2", error: "no" },
      { type: MessageType.Completion, headers: {}, invocationId: "2" },
      {
        type: MessageType.StreamInvocation,
        headers: {},
        invocationId: "3",
        target: "Count",
        arguments: [3],
        streamIds: [],
      },
      { type: MessageType.CancelInvocation, headers: {}, invocationId: "3" },
      { type: MessageType.Ping },
      { type: MessageType.Close },
      { type: MessageType.Ack, sequenceId: 4 },
      { type: MessageType.Sequence, sequenceId: 5 },
    ];
    const bytes = Buffer.concat(sent.map((m) => Buffer.from(official.writeMessage(m))));
    const { payloads, rest, tooLarge } = splitMessagePack(bytes, 32 * 1024);
    expect([rest.length, tooLarge]).toEqual([0, false]);
    expect(payloads.map((payload) => fromMessagePack(payload))).toEqual([
      {
        type: 1,
        invocationId: "1",
        target: "Echo",
        arguments: [Buffer.from([1, 2]), "x"],
        streamIds: ["2"],
      },
      { type: 1, invocationId: undefined, target: "Echo", arguments: [], streamIds: undefined },
      { type: 2, invocationId: "2", item: 5 },
      { type: 3, invocationId: "2", result: 1 },
      { type: 3, invocationId: "2", error: "no" },
      { type: 3, invocationId: "2" },
      { type: 4, invocationId: "3", target: "Count", arguments: [3], streamIds: [] },
      { type: 5, invocationId: "3" },
      { type: 6 },
      { type: 7, error: undefined },
      { type: 8, sequenceId: 4 },
      { type: 9, sequenceId: 5 },
    ]);
  });

  it("never throws on hostile bytes, and never hands on a message past the limit", () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 300 }),
        fc.integer({ min: 1, max: 400 }),
        (bytes, max) => {
          const { payloads } = splitMessagePack(Buffer.from(bytes), max);
          for (const payload of payloads) {
            expect(payload.length).toBeLessThanOrEqual(max);
            fromMessagePack(payload);
          }
        },
      ),
      { seed: FUZZ_SEED, numRuns: runs(2_000) },
    );
  });

  it("reads the official client's messages however the bytes are cut", () => {
    const invocation = fc.record({
      target: fc.string({ minLength: 1, maxLength: 20 }),
      arguments: fc.array(fc.jsonValue({ maxDepth: 3 }), { maxLength: 3 }),
    });
    fc.assert(
      fc.property(fc.array(invocation, { minLength: 1, maxLength: 5 }), fc.nat(), (sent, at) => {
        const frames = sent.map((m) =>
          Buffer.from(official.writeMessage({ type: MessageType.Invocation, headers: {}, ...m })),
        );
        const bytes = Buffer.concat(frames);
        const cut = at % (bytes.length + 1);
        const first = splitMessagePack(bytes.subarray(0, cut), 1 << 20);
        const second = splitMessagePack(Buffer.concat([first.rest, bytes.subarray(cut)]), 1 << 20);
        expect([first.tooLarge, second.tooLarge, second.rest.length]).toEqual([false, false, 0]);
        const read = [...first.payloads, ...second.payloads].map((p) => fromMessagePack(p));
        // JSON values and their MessagePack round trip: -0 comes back as 0, as JSON writes it.
        const expected = sent.map((m) => JSON.parse(JSON.stringify(m)));
        expect(read.map((m) => JSON.parse(JSON.stringify(m)))).toEqual(
          expected.map((m) => ({ type: 1, ...m })),
        );
        // The message the cut fell in says how many bytes it needs in all.
        const ends = frames.map((_, i) => Buffer.concat(frames.slice(0, i + 1)).length);
        const whole = ends.findIndex((end) => end > cut);
        if (first.need !== undefined) expect(first.need).toBe(frames[whole]?.length);
      }),
      { seed: FUZZ_SEED, numRuns: runs(500) },
    );
  });

  it("sends one group message to JSON and MessagePack clients alike, over WebSockets and long polling", async () => {
    const server = await start();
    const clients = [
      await connect(server.url, "ann", "json"),
      await connect(server.url, "bob", "messagepack"),
      await connect(server.url, "cy", "messagepack", HttpTransportType.LongPolling),
    ];
    const received = clients.map((client) => {
      const messages: unknown[] = [];
      client.on("message", (message) => messages.push(message));
      return messages;
    });
    for (const user of ["ann", "bob", "cy"]) await server.hub.grant(user, "Room/#1");
    for (let i = 0; i < 3; i++)
      await server.hub.sendToGroup("Room/#1", "message", { text: `hé ${i}`, n: i, big: 2 ** 40 });
    const expected = [0, 1, 2].map((n) => ({ text: `hé ${n}`, n, big: 2 ** 40 }));
    await vi.waitFor(() => expect(received).toEqual([expected, expected, expected]));
    // Nested past what MessagePack's encoder takes: JSON clients still get it, the MessagePack
    // ones do not, and nothing after it is lost for anyone.
    let deep: unknown = "bottom";
    for (let i = 0; i < 120; i++) deep = [deep];
    await server.hub.sendToGroup("Room/#1", "message", deep);
    await server.hub.sendToGroup("Room/#1", "message", "after");
    await vi.waitFor(() =>
      expect(received.map((r) => r.at(-1))).toEqual(["after", "after", "after"]),
    );
    expect(received.map((r) => r.length)).toEqual([5, 4, 4]);
    expect(server.errors).toEqual([]);
  });

  it("keeps binary arguments, results and stream items binary, and revokes as over JSON", async () => {
    const server = await start({
      methods: { Echo: (_c, value) => value, Length: (_c, bytes) => (bytes as Uint8Array).length },
      streams: {
        Chunks: async function* (_c, count) {
          for (let i = 0; i < Number(count); i++) yield new Uint8Array([i, i]);
        },
      },
    });
    const client = await connect(server.url, "ann", "messagepack");
    const bytes = new Uint8Array([0, 255, 7]);
    expect(await client.invoke("Echo", bytes)).toEqual(bytes);
    expect(await client.invoke("Length", new Uint8Array(1000))).toBe(1000);
    const chunks: Uint8Array[] = [];
    await new Promise<void>((resolve, reject) =>
      client.stream("Chunks", 3).subscribe({
        next: (chunk: Uint8Array) => chunks.push(chunk),
        complete: resolve,
        error: reject,
      }),
    );
    expect(chunks).toEqual([0, 1, 2].map((i) => new Uint8Array([i, i])));
    const messages: unknown[] = [];
    client.on("message", (message) => messages.push(message));
    await server.hub.grant("ann", "room");
    await server.hub.sendToGroup("room", "message", "before");
    await vi.waitFor(() => expect(messages).toEqual(["before"]));
    await server.hub.revoke("ann", "room");
    await server.hub.sendToGroup("room", "message", "after");
    await client.invoke("Echo", "round trip");
    expect(messages).toEqual(["before"]);
  });

  it("refuses MessagePack over Server-Sent Events, a malformed message and one past the limit, with a close message", async () => {
    const clientErrors: string[] = [];
    const server = await start({
      maxMessageBytes: 100,
      onClientError: (_c, error) => clientErrors.push(error.message),
    });
    const sse = new HubConnectionBuilder()
      .withUrl(server.url, {
        accessTokenFactory: () => "ann",
        transport: HttpTransportType.ServerSentEvents,
      })
      .withHubProtocol(new MessagePackHubProtocol())
      .configureLogging(LogLevel.None)
      .build();
    await expect(sse.start()).rejects.toThrow(/ServerSentEvents|Text|transport/);
    const raw = async (frame: Buffer) => {
      const socket = new WebSocket(`${server.url.replace("http", "ws")}?access_token=bob`);
      const frames: Buffer[] = [];
      socket.on("message", (data: Buffer) => frames.push(data));
      await once(socket, "open");
      socket.send(`{"protocol":"messagepack","version":1}${RS}`);
      await vi.waitFor(() => expect(frames.length).toBeGreaterThan(1)); // the answer, the welcome
      socket.send(frame);
      await once(socket, "close");
      const close = frames.at(-1) as Buffer;
      return parse(close);
    };
    expect(await raw(Buffer.from([0x03, 0xc1, 0xc1, 0xc1]))).toEqual([
      { type: MessageType.Close, error: "Connection closed with an error.", allowReconnect: true },
    ]);
    expect(await raw(Buffer.from([0xe5, 0x01]))).toEqual([
      { type: MessageType.Close, error: "Connection closed with an error.", allowReconnect: true },
    ]);
    expect(clientErrors).toEqual([
      expect.stringMatching(/^Error reading MessagePack data/),
      "The maximum message size of 100B was exceeded. The message size can be configured with maxMessageBytes.",
    ]);
    expect(server.errors).toEqual([]);
  });
});
