/**
 * Fuzzing SignalR's Server-Sent Events and long polling on a live connection: after a real
 * negotiate and first poll, any sequence of POSTs (hub messages of either protocol, junk, text or
 * binary), polls, event streams, DELETEs, as the connection's user or another. Every request must
 * be answered within 3 s with a status the transport spec allows, and the server must stay up,
 * serving a normal long-polling client, with no unhandled error. FUZZ_SEED and FUZZ_RUNS: see
 * docs/reliability.md.
 */
import { HttpTransportType, HubConnectionBuilder, LogLevel } from "@microsoft/signalr";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { toMessagePack } from "../../adapters/hubs/signalr-msgpack.js";
import { serve } from "../support/signalr-hub.js";
import { fuzz, runs } from "./harness.js";

const RS = "\u001e";
const ANSWERED = [200, 202, 204, 400, 404, 409];

type Step =
  | { kind: "post"; body: Uint8Array; as: "ann" | "bob"; binary: boolean }
  | { kind: "poll" | "sse" | "delete"; as: "ann" | "bob" };

const text = (value: string) => new TextEncoder().encode(value);
const json = (message: object) => text(`${JSON.stringify(message)}${RS}`);

const body: fc.Arbitrary<Uint8Array> = fc.oneof(
  fc.constantFrom(
    text(`{"protocol":"json","version":1}${RS}`),
    text(`{"protocol":"messagepack","version":1}${RS}`),
    text(`{"protocol":"json","version":2}${RS}`),
    json({ type: 1, invocationId: "1", target: "Echo", arguments: ["hi"] }),
    json({ type: 4, invocationId: "2", target: "Count", arguments: [50] }),
    json({ type: 5, invocationId: "2" }),
    json({ type: 6 }),
    json({ type: 7 }),
    json({ type: 1, target: "Echo", arguments: ["x"], streamIds: ["9"] }),
    json({ type: 2, invocationId: "9", item: 1 }),
    json({ type: 3, invocationId: "9" }),
    toMessagePack({ type: 1, invocationId: "3", target: "Echo", arguments: [1] }),
    toMessagePack({ type: 6 }),
    new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
    text(`${"{".repeat(2_000)}${RS}`),
  ),
  fc.uint8Array({ maxLength: 300 }),
  fc.string({ maxLength: 200 }).map(text),
);

const step: fc.Arbitrary<Step> = fc.oneof(
  fc.record({
    kind: fc.constant("post" as const),
    body,
    as: fc.constantFrom("ann" as const, "ann" as const, "bob" as const),
    binary: fc.boolean(),
  }),
  fc.record({
    kind: fc.constantFrom("poll" as const, "sse" as const, "delete" as const),
    as: fc.constantFrom("ann" as const, "ann" as const, "bob" as const),
  }),
);

describe("fuzzing SignalR's HTTP transports on a live connection", () => {
  let server: Awaited<ReturnType<typeof serve>>;
  beforeAll(async () => {
    server = await serve({
      maxMessageBytes: 1_000,
      methods: { Echo: (_c, value) => value },
      streams: {
        Count: async function* (_c, to) {
          for (let i = 0; i < Number(to); i++) yield i;
        },
      },
      longPolling: { pollTimeoutMs: 300, disconnectTimeoutMs: 1_000 },
    });
  });
  afterAll(() => server?.close());

  it(`answers every request of ${runs(60)} sessions, and keeps serving`, async () => {
    const session = async (steps: Step[]) => {
      const negotiated = (await (
        await fetch(`${server.url}/negotiate?negotiateVersion=1`, {
          method: "POST",
          headers: { authorization: "Bearer ann" },
        })
      ).json()) as { connectionToken: string };
      const at = `${server.url}?id=${encodeURIComponent(negotiated.connectionToken)}`;
      const first = await fetch(at, { headers: { authorization: "Bearer ann" } });
      expect(first.status).toBe(200);
      for (const s of steps) {
        const headers: Record<string, string> = { authorization: `Bearer ${s.as}` };
        const init: RequestInit = { headers, signal: AbortSignal.timeout(3_000) };
        if (s.kind === "post") {
          init.method = "POST";
          init.body = s.body;
          headers["content-type"] = s.binary ? "application/octet-stream" : "text/plain";
        } else if (s.kind === "delete") init.method = "DELETE";
        else if (s.kind === "sse") headers.accept = "text/event-stream";
        const response = await fetch(at, init);
        // An event stream stays open: its headers are its answer.
        if (s.kind === "sse" && response.status === 200) await response.body?.cancel();
        else await response.arrayBuffer();
        expect(ANSWERED, `${s.kind} as ${s.as}`).toContain(response.status);
      }
      await fetch(at, { method: "DELETE", headers: { authorization: "Bearer ann" } });
    };
    await fuzz(fc.asyncProperty(fc.array(step, { maxLength: 10 }), session), runs(60), {
      perRunMs: 4_000,
    });
    expect(server.errors).toEqual([]);
    const client = new HubConnectionBuilder()
      .withUrl(server.url, {
        accessTokenFactory: () => "ann",
        transport: HttpTransportType.LongPolling,
      })
      .configureLogging(LogLevel.None)
      .build();
    await client.start();
    expect(await client.invoke("Echo", "still serving")).toBe("still serving");
    await client.stop();
  }, 600_000);
});
