import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { AzureTableMembershipStore } from "../../adapters/index.js";
import {
  Client,
  NO_RATE_LIMITS,
  type RunningSample,
  type SampleEnv,
  sampleEnv,
  startSample,
  token,
} from "../support/sample.js";

const USERS = 1_000; // two connections each
const ROOMS = 50; // 40 connections per room
const BURST = 2; // messages each connection sends to its room
const SLOW = 20; // clients that never read
const MAX_BUFFERED = 256 * 1024;

describe("load: 2,000 connections on loopback, with clients that never read", () => {
  let env: SampleEnv;
  let sample: RunningSample;
  const clients: Client[] = [];
  beforeAll(async () => {
    env = {
      ...sampleEnv(inject("azuriteConnectionString")),
      MAX_BUFFERED_BYTES: String(MAX_BUFFERED),
      ...NO_RATE_LIMITS, // fan-out capacity: the firehose sends far faster than a person
    };
    const store = AzureTableMembershipStore.fromConnectionString(
      inject("azuriteConnectionString"),
      {
        tableName: env.MEMBERSHIP_TABLE,
      },
    );
    const grants: Array<[string, string]> = [
      ...Array.from({ length: USERS }, (_, i): [string, string] => [`u${i}`, `room-${i % ROOMS}`]),
      ...Array.from({ length: SLOW }, (_, i): [string, string] => [`slow${i}`, "firehose"]),
      ["reader", "firehose"],
      ["sender", "firehose"],
    ];
    for (let i = 0; i < grants.length; i += 50) {
      await Promise.all(grants.slice(i, i + 50).map(([u, g]) => store.addToGroup(u, g)));
    }
    await store.close();
    sample = await startSample(env);
  });
  afterAll(async () => {
    for (const client of clients) client.close();
    await sample?.stop();
  });

  const stats = async () =>
    (await (await fetch(`${sample.url}/stats`)).json()) as {
      connections: number;
      slowConsumersDropped: number;
      heapUsed: number;
      rss: number;
    };

  it("delivers every burst, drops only the clients that never read, and stays within memory", async () => {
    const started = Date.now();
    const users = Array.from({ length: USERS * 2 }, (_, i) => `u${i % USERS}`);
    for (let i = 0; i < users.length; i += 100) {
      clients.push(
        ...(await Promise.all(
          users.slice(i, i + 100).map((u) => Client.connect(sample.wsUrl, token(env, u))),
        )),
      );
    }
    const connectedIn = Date.now() - started;
    expect((await stats()).connections).toBe(USERS * 2);

    const slow = await Promise.all(
      Array.from({ length: SLOW }, (_, i) => Client.connect(sample.wsUrl, token(env, `slow${i}`))),
    );
    for (const client of slow)
      (client.ws as unknown as { _socket: { pause(): void } })._socket.pause();
    const reader = await Client.connect(sample.wsUrl, token(env, "reader"));
    const sender = await Client.connect(sample.wsUrl, token(env, "sender"));

    // Bursts in every room; then a firehose of 12 MB that the paused clients cannot take.
    for (const client of clients) {
      for (let n = 0; n < BURST; n++)
        client.send({
          type: "send",
          group: (client.welcome.groups as string[])[0],
          text: `burst ${n}`,
        });
    }
    const perClient = ((USERS * 2) / ROOMS) * BURST;
    const received = (c: Client) => c.messages.filter((m) => m.type === "message").length;
    await expect
      .poll(() => clients.filter((c) => received(c) < perClient).length, {
        timeout: 120_000,
        interval: 500,
      })
      .toBe(0);
    // Paced by what the reader has received (4 in flight, under MAX_BUFFERED): a client that
    // reads must never be dropped, however busy this process is; the paused clients take
    // nothing and must be. (Pacing by the sender's own copies let the reader fall behind by more
    // on a loaded machine, past the limit.)
    const big = "x".repeat(60 * 1024);
    for (let n = 0; n < 200; n++) {
      sender.send({ type: "send", group: "firehose", text: `${n}:${big}` });
      const read = `${n - 4}:`;
      if (n >= 4) await reader.next((m) => typeof m.text === "string" && m.text.startsWith(read));
    }
    await expect.poll(() => received(reader), { timeout: 60_000, interval: 200 }).toBe(200);
    for (const client of clients) expect(received(client)).toBe(perClient);

    const after = await stats();
    expect(after.slowConsumersDropped).toBe(SLOW);
    expect(after.connections).toBe(USERS * 2 + 2);
    expect(after.rss).toBeLessThan(1.5 * 1024 ** 3);
    expect((await fetch(`${sample.url}/healthz`)).status).toBe(200);
    console.log(
      `load: ${USERS * 2} connections in ${connectedIn} ms, ${clients.length * BURST} burst messages → ` +
        `${clients.length * perClient} deliveries, 200 × 60 KiB firehose; ${after.slowConsumersDropped} slow ` +
        `consumers dropped at ${MAX_BUFFERED} bytes; server heap ${(after.heapUsed / 2 ** 20).toFixed(0)} MiB, ` +
        `RSS ${(after.rss / 2 ** 20).toFixed(0)} MiB, ${Date.now() - started} ms in all`,
    );
  });
});
