import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import {
  admin,
  grant,
  isRemoved,
  logLines,
  type RunningSample,
  type SampleEnv,
  sampleEnv,
  sleep,
  startSample,
  token,
} from "../support/sample.js";
import { IoClient, useIoClients } from "../support/socket-io.js";

const connect = useIoClients();

describe("Socket.IO sample, one server", { timeout: 60_000 }, () => {
  let env: SampleEnv;
  let sample: RunningSample;
  beforeAll(async () => {
    env = { ...sampleEnv(inject("azuriteConnectionString")), HUB: "socket.io" };
    sample = await startSample(env);
  });
  afterAll(async () => {
    await sample?.stop();
  });

  it("rehydrates on connect; grant, messages and revoke reach every socket of the user", async () => {
    await grant(env, "alice", "Sports");
    await grant(env, "bob", "Sports");
    const alice1 = await connect(sample.url, token(env, "alice"));
    const alice2 = await connect(sample.url, token(env, "alice"), "query");
    const bob = await connect(sample.url, token(env, "bob"));
    expect(alice1.welcome).toEqual({
      type: "welcome",
      userId: "alice",
      groups: ["Sports"],
      groupCount: 1,
    });
    expect(alice2.welcome.groups).toEqual(["Sports"]);

    await grant(env, "alice", "sports");
    for (const c of [alice1, alice2])
      await c.next((m) => m.type === "joined" && m.group === "sports");
    expect(bob.messages.some((m) => m.type === "joined")).toBe(false);

    expect(await alice1.request("send", { group: "Sports", text: "hello" })).toEqual({ ok: true });
    for (const c of [alice1, alice2, bob]) {
      expect(await c.next((m) => m.type === "message" && m.text === "hello")).toMatchObject({
        group: "Sports",
        from: "alice",
      });
    }

    expect((await admin(env, "revoke", "alice", "Sports")).code).toBe(0);
    for (const c of [alice1, alice2])
      expect(await c.next(isRemoved("Sports"))).toMatchObject({ reason: "revoked" });
    // The same metrics and logs as the ws sample: one revoke applied, its lag, the sockets.
    const metrics = await (await fetch(`${sample.url}/metrics`)).text();
    expect(metrics).toContain('hub_membership_revokes_applied_total{reason="revoked"} 1');
    expect(metrics).toContain('hub_membership_propagation_lag_seconds_count{type="removed"} 1');
    expect(metrics).toContain('hub_membership_connections{endpoint="socket.io"} 3');
    expect(logLines(sample.output())).toContainEqual(
      expect.objectContaining({ event: "connection.opened", endpoint: "socket.io", userId: "bob" }),
    );
    expect(await bob.request("send", { group: "Sports", text: "after revoke" })).toEqual({
      ok: true,
    });
    await bob.next((m) => m.text === "after revoke");
    await sleep(300);
    for (const c of [alice1, alice2])
      expect(c.messages.some((m) => m.text === "after revoke")).toBe(false);
    expect(await alice1.request("send", { group: "Sports", text: "still here?" })).toEqual({
      error: "not_member",
      group: "Sports",
    });
  });

  it("joins the stored groups before the first event handler runs", async () => {
    await grant(env, "carl", "early");
    // Emitted before the connection completes: Socket.IO delivers it right after, to the
    // connection handler, which must already see the rehydrated group.
    const carl = IoClient.open(sample.url, token(env, "carl"));
    try {
      const reply = carl.request("send", { group: "early", text: "first event" });
      expect(await reply).toEqual({ ok: true });
      await carl.next((m) => m.type === "message" && m.text === "first event");
    } finally {
      carl.close();
    }
  });

  it("makes every socket leave a group when the membership expires", async () => {
    const ivan1 = await connect(sample.url, token(env, "ivan"));
    const ivan2 = await connect(sample.url, token(env, "ivan"));
    await grant(env, "ivan", "flash", "--expires", "3s");
    for (const c of [ivan1, ivan2]) {
      await c.next((m) => m.type === "joined" && m.group === "flash");
      expect(await c.next(isRemoved("flash"))).toMatchObject({ reason: "expired" });
    }
    expect((await connect(sample.url, token(env, "ivan"))).welcome.groups).toEqual([]);
  });

  it("gives a reconnecting socket its stored groups, with what changed while it was away", async () => {
    await grant(env, "judy", "a");
    await grant(env, "judy", "b/c");
    const first = await connect(sample.url, token(env, "judy"));
    expect(first.welcome.groups).toEqual(["a", "b/c"]);
    first.close();
    await grant(env, "judy", "d#?");
    expect((await admin(env, "revoke", "judy", "a")).code).toBe(0);
    const again = await connect(sample.url, token(env, "judy"));
    expect(again.welcome.groups).toEqual(["b/c", "d#?"]);
  });

  it("joins open groups only, and leaves with reason 'left'", async () => {
    const kim = await connect(sample.url, token(env, "kim"));
    expect(await kim.request("join", { group: "secret" })).toEqual({
      error: "forbidden",
      group: "secret",
    });
    expect(await kim.request("join", { group: "lobby" })).toEqual({ ok: true });
    await kim.next((m) => m.type === "joined" && m.group === "lobby");
    expect(JSON.parse((await admin(env, "groups", "kim", "--json")).stdout)).toMatchObject([
      { group: "lobby" },
    ]);
    expect(await kim.request("leave", { group: "lobby" })).toEqual({ ok: true });
    expect(await kim.next(isRemoved("lobby"))).toMatchObject({ reason: "left" });
    expect(await kim.request("leave", { group: "lobby" })).toEqual({
      error: "not_member",
      group: "lobby",
    });
  });

  it("answers malformed events with bad_request and stays connected", async () => {
    const lou = await connect(sample.url, token(env, "lou"));
    for (const payload of [null, "lobby", { group: "" }, { group: "\ud800" }, { group: 7 }]) {
      expect(await lou.request("join", payload)).toEqual({ error: "bad_request" });
    }
    expect(await lou.request("send", { group: "lobby", text: 7 })).toEqual({
      error: "bad_request",
    });
    expect(lou.socket.connected).toBe(true);
  });

  it("refuses the connection for a missing, forged or expired token", async () => {
    for (const bearer of [
      "",
      token(env, "mallory", {}, "a-different-secret-that-is-32-bytes-long"),
      token(env, "mallory", { expiresIn: -10 }),
      token(env, undefined),
    ]) {
      await expect(IoClient.connect(sample.url, bearer)).rejects.toThrow("unauthorized");
    }
  });
});

describe("Socket.IO sample configuration", { timeout: 60_000 }, () => {
  it("refuses an unknown HUB and an unreachable Redis with a clear error", async () => {
    const env = sampleEnv(inject("azuriteConnectionString"));
    await expect(startSample({ ...env, HUB: "signalr" })).rejects.toThrow(
      /configuration error: HUB must be "ws" or "socket.io"/,
    );
    await expect(
      startSample({ ...env, HUB: "socket.io", REDIS_URL: "http://127.0.0.1:6379" }),
    ).rejects.toThrow(/configuration error: REDIS_URL must start with redis:\/\//);
    await expect(
      startSample({ ...env, HUB: "socket.io", REDIS_URL: "redis://127.0.0.1:1" }),
    ).rejects.toThrow(/cannot reach Redis at redis:\/\/127.0.0.1:1/);
  });
});
