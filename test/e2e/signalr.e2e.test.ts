import { HubConnectionBuilder, LogLevel } from "@microsoft/signalr";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import WebSocket from "ws";
import {
  admin,
  badTokens,
  grant,
  isRemoved,
  type RunningSample,
  type SampleEnv,
  sampleEnv,
  sleep,
  startSample,
  token,
  upgradeStatus,
  useClients,
  useSignalRClients,
} from "../support/sample.js";

/** The sample's /signalr endpoint driven by the official client, beside `ws` clients of /hub. */
const connectWs = useClients();
const connect = useSignalRClients();

describe("sample SignalR endpoint, end to end", { timeout: 60_000 }, () => {
  let env: SampleEnv;
  let sample: RunningSample;
  beforeAll(async () => {
    env = sampleEnv(inject("azuriteConnectionString"));
    sample = await startSample(env);
  });
  afterAll(async () => {
    await sample?.stop();
  });

  it("sends the welcome with the handshake answer: it is there when start() resolves, every time", async () => {
    for (let i = 0; i < 40; i++) {
      const connection = new HubConnectionBuilder()
        .withUrl(`${sample.url}/signalr`, {
          accessTokenFactory: () => token(env, `opener${i % 10}`),
        })
        .configureLogging(LogLevel.None)
        .build();
      let welcomed = false;
      connection.on("welcome", () => {
        welcomed = true;
      });
      await connection.start();
      const before = welcomed;
      await connection.stop();
      expect(before, `connection ${i}`).toBe(true);
    }
  });

  it("welcomes with the stored groups; grants and revokes from the admin script reach every connection; messages cross protocols", async () => {
    await grant(env, "alice", "Sports");
    await grant(env, "bob", "Sports");
    const alice1 = await connect(sample.url, token(env, "alice"));
    const alice2 = await connect(sample.url, token(env, "alice"), { skipNegotiation: true });
    const aliceWs = await connectWs(sample.wsUrl, token(env, "alice"));
    const bob = await connect(sample.url, token(env, "bob"));
    const bobWs = await connectWs(sample.wsUrl, token(env, "bob"));
    expect(alice1.welcome).toMatchObject({ userId: "alice", groups: ["Sports"] });
    expect(alice1.welcome.connectionId).toBe(alice1.connection.connectionId);

    await grant(env, "alice", "sports");
    for (const c of [alice1, alice2, aliceWs])
      await c.next((m) => m.type === "joined" && m.group === "sports");
    expect(bob.messages.some((m) => m.type === "joined")).toBe(false);

    expect(await alice1.invoke("Send", "Sports", "from SignalR")).toBeNull();
    bobWs.send({ type: "send", group: "Sports", text: "from ws" });
    for (const c of [alice1, alice2, aliceWs, bob, bobWs])
      for (const text of ["from SignalR", "from ws"])
        expect(await c.next((m) => m.type === "message" && m.text === text)).toMatchObject({
          group: "Sports",
          at: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
        });

    const revoked = await admin(env, "revoke", "alice", "Sports");
    expect(revoked.code, revoked.stderr).toBe(0);
    for (const c of [alice1, alice2, aliceWs])
      expect(await c.next(isRemoved("Sports"))).toMatchObject({ reason: "revoked" });
    expect(await bob.invoke("Send", "Sports", "after revoke")).toBeNull();
    await bobWs.next((m) => m.text === "after revoke");
    await sleep(300);
    for (const c of [alice1, alice2, aliceWs])
      expect(c.messages.some((m) => m.text === "after revoke")).toBe(false);
    expect(await alice1.invoke("Send", "Sports", "still here?")).toEqual({ error: "not_member" });
    expect(bob.messages.some((m) => m.text === "still here?")).toBe(false);
  });

  for (const [transport, protocol] of [
    ["WebSockets", "json"],
    ["ServerSentEvents", "json"],
    ["LongPolling", "json"],
    ["WebSockets", "messagepack"],
    ["LongPolling", "messagepack"],
  ] as const)
    it(`over ${transport} with ${protocol}: rehydrated groups, messages across protocols, History, and nothing more after the admin's revoke`, async () => {
      const user = `${transport}-${protocol}`;
      const group = `Room ${user}`;
      await grant(env, "watcher", group);
      const watcher = await connectWs(sample.wsUrl, token(env, "watcher"));
      watcher.send({ type: "send", group, text: "before their grant" });
      await watcher.next((m) => m.text === "before their grant");
      await grant(env, user, group);
      const client = await connect(sample.url, token(env, user), { transport, protocol });
      expect(client.welcome).toMatchObject({ userId: user, groups: [group] });
      expect(await client.invoke("Send", group, `from ${user}`)).toBeNull();
      watcher.send({ type: "send", group, text: "from ws" });
      for (const text of [`from ${user}`, "from ws"]) {
        await client.next((m) => m.type === "message" && m.text === text);
        await watcher.next((m) => m.type === "message" && m.text === text);
      }
      // What was said since they were granted, oldest first: not what came before.
      expect(await client.stream("History", group, 5)).toEqual([
        expect.objectContaining({ group, text: `from ${user}`, from: user }),
        expect.objectContaining({ group, text: "from ws", from: "watcher" }),
      ]);
      expect(await client.stream("History", group, 1)).toEqual([
        expect.objectContaining({ text: "from ws" }),
      ]);
      expect(await client.stream("History", "not theirs", 5)).toEqual({ error: "not_member" });

      const revoked = await admin(env, "revoke", user, group);
      expect(revoked.code, revoked.stderr).toBe(0);
      expect(await client.next(isRemoved(group))).toMatchObject({ reason: "revoked" });
      watcher.send({ type: "send", group, text: "after the revoke" });
      await watcher.next((m) => m.text === "after the revoke");
      // A round trip after it: anything sent to the group before it would have come first.
      expect(await client.invoke("Send", group, "still here?")).toEqual({ error: "not_member" });
      expect(client.messages.filter((m) => m.text === "after the revoke")).toEqual([]);
      expect(await client.stream("History", group, 5)).toEqual({ error: "not_member" });
    });

  it("Whisper, Join and Leave complete with null or the protocol's error code", async () => {
    const carol = await connect(sample.url, token(env, "carol"));
    const carolWs = await connectWs(sample.wsUrl, token(env, "carol"));
    const dave = await connect(sample.url, token(env, "dave"));
    expect(await dave.invoke("Whisper", "carol", "psst")).toBeNull();
    for (const c of [carol, carolWs])
      expect(await c.next((m) => m.text === "psst")).toMatchObject({ to: "carol", from: "dave" });
    expect(dave.messages.some((m) => m.text === "psst")).toBe(false);

    expect(await carol.invoke("Join", "admins")).toEqual({ error: "forbidden" });
    expect(await carol.invoke("Join", "lobby")).toBeNull();
    for (const c of [carol, carolWs])
      await c.next((m) => m.type === "joined" && m.group === "lobby");
    expect(await carol.invoke("Leave", "lobby")).toBeNull();
    for (const c of [carol, carolWs])
      expect(await c.next(isRemoved("lobby"))).toMatchObject({ reason: "left" });
    expect(await carol.invoke("Leave", "lobby")).toEqual({ error: "not_member" });
    expect((await admin(env, "count", "lobby")).stdout.trim()).toBe("0");
  });

  it("answers bad arguments and unknown methods with errors and keeps the connection; a malformed frame closes only its own", async () => {
    const erin = await connect(sample.url, token(env, "erin"));
    for (const args of [
      [42, "x"],
      ["", "x"],
      [["a"], "x"],
    ])
      expect(await erin.invoke("Send", ...args), JSON.stringify(args)).toEqual({
        error: "bad_request",
      });
    for (const args of [["lobby"], ["lobby", "x", "extra"]])
      expect(await erin.invoke("Send", ...args), JSON.stringify(args)).toEqual({
        error: "Failed to invoke 'Send' due to an error on the server.",
      });
    expect(await erin.invoke("Whisper", "x".repeat(1025), "hi")).toEqual({ error: "bad_request" });
    expect(await erin.invoke("Shout", "lobby")).toEqual({
      error:
        "Failed to invoke 'Shout' due to an error on the server. HubException: Method does not exist.",
    });
    expect(await erin.invoke("Join", "lobby")).toBeNull();

    const raw = new WebSocket(`${sample.url.replace("http", "ws")}/signalr`, {
      headers: { authorization: `Bearer ${token(env, "erin")}` },
    });
    const received: string[] = [];
    raw.on("message", (data) => received.push(data.toString()));
    await new Promise((resolve) => raw.once("open", resolve));
    raw.send('{"protocol":"json","version":1}\u001e');
    await expect.poll(() => received.length).toBe(3); // the handshake answer, welcome, resumed
    raw.send("{not json\u001e");
    const [code] = await new Promise<[number]>((resolve) => raw.once("close", (c) => resolve([c])));
    expect(code).toBe(1000);
    expect(received.at(-1)).toContain('"type":7');
    expect(await erin.invoke("Send", "lobby", "still connected")).toBeNull();
    await erin.next((m) => m.text === "still connected");
  });

  it("refuses every bad token with 401 on negotiate and on the socket, before any socket", async () => {
    for (const [name, headers] of Object.entries(badTokens(env))) {
      const negotiate = await fetch(`${sample.url}/signalr/negotiate?negotiateVersion=1`, {
        method: "POST",
        headers,
      });
      expect(negotiate.status, name).toBe(401);
      expect(
        await upgradeStatus(`${sample.wsUrl.replace("/hub", "/signalr")}`, headers),
        name,
      ).toBe(401);
    }
    const client = new HubConnectionBuilder()
      .withUrl(`${sample.url}/signalr`, { accessTokenFactory: () => "garbage" })
      .configureLogging(LogLevel.None)
      .build();
    await expect(client.start()).rejects.toThrow(/401/);
  });

  it("closes with an error saying so when the token expires; a membership expires without a reconnect", async () => {
    const short = await connect(sample.url, token(env, "henry", { expiresIn: 2 }));
    expect((await short.closed)?.message).toContain("token expired");

    const ivan = await connect(sample.url, token(env, "ivan"));
    await grant(env, "ivan", "flash", "--expires", "3s");
    await ivan.next((m) => m.type === "joined" && m.group === "flash");
    expect(await ivan.next(isRemoved("flash"))).toMatchObject({ reason: "expired" });
  });
});

describe("SignalR reconnect", { timeout: 60_000 }, () => {
  it("withAutomaticReconnect gets exactly the stored groups back after a server restart", async () => {
    const env = sampleEnv(inject("azuriteConnectionString"));
    await grant(env, "judy", "a");
    await grant(env, "judy", "b/c");
    const first = await startSample(env);
    const port = new URL(first.url).port;
    const judy = await connect(first.url, token(env, "judy"), {
      reconnectDelays: Array.from({ length: 60 }, () => 250),
    });
    expect(judy.welcome.groups).toEqual(["a", "b/c"]);
    const reconnected = new Promise((resolve) => judy.connection.onreconnected(resolve));
    expect(await first.stop("SIGTERM")).toBe(0);
    // Changed while no server runs: the reconnect must see the store, not the old groups.
    expect((await admin(env, "revoke", "judy", "a")).code).toBe(0);
    await grant(env, "judy", "d");
    const second = await startSample({ ...env, PORT: port });
    try {
      await reconnected;
      const welcomes = () => judy.messages.filter((m) => m.type === "welcome");
      await expect.poll(() => welcomes().length).toBe(2);
      expect(welcomes()[1]?.groups).toEqual(["b/c", "d"]);
    } finally {
      judy.close();
      await second.stop();
    }
  });
});
