import { once } from "node:events";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { WebSocket } from "ws";
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

    // One connection on each endpoint is the cap of 2: a third is refused at its upgrade.
    const wsToo = await connect(sample.wsUrl, token(env, "flooder"));
    const bearer = { authorization: `Bearer ${token(env, "flooder")}` };
    expect(await upgradeStatus(`${sample.wsUrl.replace("/hub", "/signalr")}`, bearer)).toBe(429);
    const negotiate = () =>
      fetch(`${sample.url}/signalr/negotiate?negotiateVersion=1`, {
        method: "POST",
        headers: bearer,
      });

    for (let i = 0; i < 30; i++) void flooder.invoke("Send", "room", `g${i}`);
    expect((await flooder.closed)?.message).toContain("rate limit exceeded");
    wsToo.close();
    await sleep(300); // both places free: what refuses now is the ban
    const banned = await negotiate();
    expect(banned.status).toBe(429);
    expect(banned.headers.get("retry-after")).toBe("2");
  });
});

describe("every frame counts, of every type, on every endpoint", { timeout: 60_000 }, () => {
  let env: SampleEnv;
  let sample: RunningSample;
  beforeAll(async () => {
    env = { ...sampleEnv(inject("azuriteConnectionString")), ...LIMITS };
    sample = await startSample(env);
  });
  afterAll(async () => {
    await sample?.stop();
  });
  const signalrUrl = () => `${sample.wsUrl.replace("/hub", "/signalr")}`;
  const closedFor = (user: string) =>
    logLines(sample.output()).filter(
      (l) => l.event === "connection.closed" && l.reason === "rate_limited" && l.userId === user,
    );

  it("SignalR over long polling and SSE: a connection takes a slot of the cap when it opens, is closed past it, and gives it back", async () => {
    const as = token(env, "poller");
    const first = await connectSignalR(sample.url, as, { transport: "LongPolling" });
    const second = await connectSignalR(sample.url, as, { transport: "ServerSentEvents" });
    // Polls and POSTs are not negotiations: a while of them spends none of the budget.
    for (let i = 0; i < 4; i++) {
      await sleep(300);
      expect(await first.invoke("Leave", "nowhere")).toEqual({ error: "not_member" });
    }
    // Refused once its slot is asked for: its start() fails, or it closes, with the reason.
    const third = await connectSignalR(sample.url, as, { transport: "LongPolling" }).then(
      (client) => client.closed,
      (error: unknown) => error as Error,
    );
    expect(third?.message).toContain("Too Many Connections");
    await first.connection.stop();
    await sleep(300);
    const fourth = await connectSignalR(sample.url, as, { transport: "LongPolling" });
    await sleep(500);
    expect(fourth.connection.state).toBe("Connected");
    expect(second.connection.state).toBe("Connected");
  });

  it("SignalR: pings, completions, stream items, cancels and unknown types are counted, and a flood of them is closed", async () => {
    const messages = {
      ping: { type: 6 },
      completion: { type: 3, invocationId: "1", result: 1 },
      "stream item": { type: 2, invocationId: "1", item: 1 },
      cancel: { type: 5, invocationId: "1" },
      "unknown type": { type: 42 },
    };
    for (const [kind, message] of Object.entries(messages)) {
      const user = `flood-${kind.replace(" ", "-")}`;
      const socket = new WebSocket(signalrUrl(), {
        headers: { authorization: `Bearer ${token(env, user)}` },
      });
      const records: string[] = [];
      socket.on("message", (data) => records.push(String(data)));
      await once(socket, "open");
      socket.send('{"protocol":"json","version":1}\u001e');
      await expect.poll(() => records.length).toBe(3); // the handshake answer, welcome, resumed
      const frame = `${JSON.stringify(message)}\u001e`;
      for (let i = 0; i < 40 && socket.readyState === WebSocket.OPEN; i++) socket.send(frame);
      const [code] = (await once(socket, "close")) as [number];
      expect({ kind, code, last: records.at(-1) }).toEqual({
        kind,
        code: 1000,
        last: `${JSON.stringify({ type: 7, error: "rate limit exceeded", allowReconnect: false })}\u001e`,
      });
      await expect.poll(() => closedFor(user)).toHaveLength(1);
    }
  });

  it("SignalR: frames that end no message pay too, before and after the handshake", async () => {
    for (const [user, handshake] of [
      ["pieces-after", true],
      ["pieces-before", false],
    ] as const) {
      const socket = new WebSocket(signalrUrl(), {
        headers: { authorization: `Bearer ${token(env, user)}` },
      });
      const records: string[] = [];
      socket.on("message", (data) => records.push(String(data)));
      await once(socket, "open");
      if (handshake) {
        socket.send('{"protocol":"json","version":1}\u001e');
        await expect.poll(() => records.length).toBe(3);
      }
      for (let i = 0; i < 2_000 && socket.readyState === WebSocket.OPEN; i++) socket.send(" ");
      const [code] = (await once(socket, "close")) as [number];
      expect(code).toBe(1000);
      // Before the handshake: refused past 64 pieces; after it: closed over the rate limit.
      expect(records.at(-1)).toContain(
        handshake ? "rate limit exceeded" : "Handshake was canceled.",
      );
    }
  });

  it("ws and SignalR: pong frames pay too", async () => {
    for (const url of [sample.wsUrl, signalrUrl()]) {
      const user = url.endsWith("/hub") ? "ponger-ws" : "ponger-signalr";
      const socket = new WebSocket(url, {
        headers: { authorization: `Bearer ${token(env, user)}` },
      });
      await once(socket, "open");
      if (url.endsWith("/signalr")) socket.send('{"protocol":"json","version":1}\u001e');
      await once(socket, "message");
      for (let i = 0; i < 500 && socket.readyState === WebSocket.OPEN; i++) socket.pong("x");
      await once(socket, "close");
      await expect.poll(() => closedFor(user)).toHaveLength(1);
    }
  });

  it("ws and SignalR: WebSocket ping frames are counted and answered only within the limits", async () => {
    for (const url of [sample.wsUrl, signalrUrl()]) {
      const user = url.endsWith("/hub") ? "pinger-ws" : "pinger-signalr";
      const socket = new WebSocket(url, {
        headers: { authorization: `Bearer ${token(env, user)}` },
      });
      await once(socket, "open");
      if (url.endsWith("/signalr")) socket.send('{"protocol":"json","version":1}\u001e');
      await once(socket, "message");
      const pongs: Buffer[] = [];
      socket.on("pong", (data) => pongs.push(data));
      socket.ping("one");
      await expect.poll(() => pongs.map(String)).toEqual(["one"]);
      for (let i = 0; i < 60 && socket.readyState === WebSocket.OPEN; i++) socket.ping("flood");
      await once(socket, "close");
      expect(pongs.length).toBeLessThan(10); // within RATE_MESSAGES and RATE_BURST, not 61
      await expect.poll(() => closedFor(user)).toHaveLength(1);
    }
  });

  it("Socket.IO: events it has no handler for are counted, and a flood of them is disconnected", async () => {
    const sio = await startSample({ ...env, HUB: "socket.io" });
    try {
      const client = await IoClient.connect(sio.url, token(env, "unknown-events"));
      for (let i = 0; i < 60; i++) client.socket.emit("nonsense", { i });
      await expect.poll(() => client.socket.connected).toBe(false);
      // An engine.io socket that never asks for the namespace (nor sends a token) is not held.
      const opened = Date.now();
      const idle = new WebSocket(
        `${sio.url.replace("http", "ws")}/socket.io/?EIO=4&transport=websocket`,
      );
      await once(idle, "close");
      expect(Date.now() - opened).toBeLessThan(8_000);
      expect(logLines(sio.output())).toContainEqual(
        expect.objectContaining({ event: "connection.closed", userId: "unknown-events" }),
      );
    } finally {
      await sio.stop();
    }
  });

  it("holds the per-user cap across endpoints when upgrades race, and gives slots back", async () => {
    const bearer = { authorization: `Bearer ${token(env, "racer")}` };
    // SignalR sockets that never send their handshake count from their upgrade on.
    const upgrade = (url: string) =>
      new Promise<WebSocket | number>((resolve, reject) => {
        const socket = new WebSocket(url, { headers: bearer });
        socket.once("open", () => resolve(socket));
        socket.once("unexpected-response", (_request, response) =>
          resolve(response.statusCode ?? 0),
        );
        socket.once("error", reject);
      });
    const answers = await Promise.all(
      Array.from({ length: 30 }, (_, i) => upgrade(i % 2 ? sample.wsUrl : signalrUrl())),
    );
    expect(answers.filter((a) => a === 429)).toHaveLength(28);
    const open = answers.filter((a) => a instanceof WebSocket);
    expect(open).toHaveLength(2);
    for (const socket of open) socket.terminate();
    await sleep(300);
    await connect(sample.wsUrl, token(env, "racer")); // the slots came back
  });
});
