import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import {
  grant,
  logLines,
  type RunningSample,
  type SampleEnv,
  sampleEnv,
  sleep,
  startSample,
  token,
  upgradeAnswer,
  upgradeStatus,
  useClients,
  useSignalRClients,
} from "../support/sample.js";
import { IoClient } from "../support/socket-io.js";

const connect = useClients();
const connectSignalR = useSignalRClients();

/** Small limits, so that a test can pass them quickly. */
const LIMITS = {
  RATE_MESSAGES: "5",
  RATE_BURST: "2",
  RATE_USER_MESSAGES: "50",
  RATE_CLOSE_AFTER: "20",
  RATE_PENALTY_SECONDS: "2",
  MAX_CONNECTIONS_PER_USER: "2",
};

describe("a flooding client cannot starve the others (ws)", { timeout: 60_000 }, () => {
  let env: SampleEnv;
  let sample: RunningSample;
  beforeAll(async () => {
    env = { ...sampleEnv(inject("azuriteConnectionString")), ...LIMITS };
    for (const user of ["flooder", "listener", "ordinary"]) await grant(env, user, "room");
    sample = await startSample(env);
  });
  afterAll(async () => {
    await sample?.stop();
  });

  it("answers rate_limited past the limit, delivers nothing past it, and closes with 1008 past the ceiling", async () => {
    const flooder = await connect(sample.wsUrl, token(env, "flooder"));
    const listener = await connect(sample.wsUrl, token(env, "listener"));
    const ordinary = await connect(sample.wsUrl, token(env, "ordinary"));
    for (let i = 0; i < 15; i++) flooder.send({ type: "send", group: "room", text: `flood ${i}` });
    await expect
      .poll(() => flooder.messages.filter((m) => m.code === "rate_limited").length)
      .toBeGreaterThanOrEqual(8);
    const refused = flooder.messages.filter((m) => m.code === "rate_limited");
    expect(refused.every((m) => typeof m.retryAfterMs === "number" && m.retryAfterMs > 0)).toBe(
      true,
    );
    await sleep(300);
    const delivered = listener.messages.filter((m) => String(m.text).startsWith("flood"));
    // Every frame was either delivered or refused, never both: 5 a second and a burst of 2.
    expect(delivered.length + refused.length).toBe(15);
    expect(delivered.length).toBeLessThanOrEqual(7);

    // The others carry on meanwhile.
    ordinary.send({ type: "send", group: "room", text: "still heard" });
    await listener.next((m) => m.text === "still heard");

    // Keeping on past 20 refusals in 10 s closes the connection.
    for (let i = 0; i < 30; i++) flooder.send({ type: "send", group: "room", text: `more ${i}` });
    expect(await flooder.closed).toMatchObject({ code: 1008, reason: "rate limit exceeded" });
    expect(logLines(sample.output())).toContainEqual(
      expect.objectContaining({
        event: "connection.closed",
        endpoint: "ws",
        reason: "rate_limited",
        userId: "flooder",
      }),
    );

    // Coming straight back is refused for RATE_PENALTY_SECONDS, before any socket; others are not.
    const again = await upgradeAnswer(sample.wsUrl, {
      authorization: `Bearer ${token(env, "flooder")}`,
    });
    expect(again).toMatchObject({ status: 429, headers: { "retry-after": "2" } });
    await connect(sample.wsUrl, token(env, "ordinary"));
    await sleep(2_100);
    const back = await connect(sample.wsUrl, token(env, "flooder"));
    expect(back.messages[0]).toMatchObject({ type: "welcome", groups: ["room"] });
  });

  it("refuses a user's connection past the cap with 429, before any socket", async () => {
    const first = await connect(sample.wsUrl, token(env, "capped"));
    await connect(sample.wsUrl, token(env, "capped"));
    expect(
      await upgradeStatus(sample.wsUrl, { authorization: `Bearer ${token(env, "capped")}` }),
    ).toBe(429);
    first.close();
    await sleep(200);
    await connect(sample.wsUrl, token(env, "capped")); // a place came free
  });
});

describe("a flooding client cannot starve the others (Socket.IO)", { timeout: 60_000 }, () => {
  let env: SampleEnv;
  let sample: RunningSample;
  beforeAll(async () => {
    env = { ...sampleEnv(inject("azuriteConnectionString")), ...LIMITS, HUB: "socket.io" };
    await grant(env, "flooder", "room");
    sample = await startSample(env);
  });
  afterAll(async () => {
    await sample?.stop();
  });

  it("acknowledges rate_limited past the limit, and refuses a connection past the cap", async () => {
    const flooder = await IoClient.connect(sample.url, token(env, "flooder"));
    try {
      const replies = await Promise.all(
        Array.from({ length: 12 }, (_, i) =>
          flooder.request("send", { group: "room", text: `f${i}` }),
        ),
      );
      const limited = replies.filter((r) => r.error === "rate_limited");
      expect(replies.filter((r) => r.ok === true).length).toBeLessThanOrEqual(7);
      expect(limited.length).toBeGreaterThanOrEqual(5);
      expect(limited.every((r) => typeof r.retryAfterMs === "number")).toBe(true);

      const second = await IoClient.connect(sample.url, token(env, "flooder"));
      await expect(IoClient.connect(sample.url, token(env, "flooder"))).rejects.toThrow(
        "too_many_connections",
      );
      second.close();

      // Keeping on past 20 refusals disconnects it, and it may not come back for 2 s.
      for (let i = 0; i < 30; i++)
        flooder.request("send", { group: "room", text: `g${i}` }).catch(() => {});
      await expect.poll(() => flooder.socket.connected).toBe(false);
      await expect(IoClient.connect(sample.url, token(env, "flooder"))).rejects.toThrow(
        "rate_limited",
      );
      await sleep(2_100);
      (await IoClient.connect(sample.url, token(env, "flooder"))).close();
    } finally {
      flooder.close();
    }
  });
});

describe("a flooding client cannot starve the others (SignalR)", { timeout: 60_000 }, () => {
  let env: SampleEnv;
  let sample: RunningSample;
  beforeAll(async () => {
    env = { ...sampleEnv(inject("azuriteConnectionString")), ...LIMITS };
    await grant(env, "flooder", "room");
    sample = await startSample(env);
  });
  afterAll(async () => {
    await sample?.stop();
  });

  it("fails invocations with rate_limited past the limit, closes past the ceiling, and counts connections on both endpoints", async () => {
    const flooder = await connectSignalR(sample.url, token(env, "flooder"));
    const replies = await Promise.all(
      Array.from({ length: 12 }, (_, i) => flooder.invoke("Send", "room", `f${i}`)),
    );
    expect(replies.filter((r) => r === null).length).toBeLessThanOrEqual(7);
    expect(
      replies.filter((r) => (r as { error?: string })?.error === "rate_limited").length,
    ).toBeGreaterThanOrEqual(5);

    // One connection on each endpoint is the cap of 2: a third is refused on negotiate.
    const wsToo = await connect(sample.wsUrl, token(env, "flooder"));
    const negotiate = () =>
      fetch(`${sample.url}/signalr/negotiate?negotiateVersion=1`, {
        method: "POST",
        headers: { authorization: `Bearer ${token(env, "flooder")}` },
      });
    expect((await negotiate()).status).toBe(429);

    for (let i = 0; i < 30; i++) void flooder.invoke("Send", "room", `g${i}`);
    expect((await flooder.closed)?.message).toContain("rate limit exceeded");
    wsToo.close();
    await sleep(300); // both places free: what refuses now is the ban
    const banned = await negotiate();
    expect(banned.status).toBe(429);
    expect(banned.headers.get("retry-after")).toBe("2");
  });
});
