import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import {
  admin,
  type Client,
  grant,
  isRemoved,
  type RunningSample,
  resumeFrom,
  type SampleEnv,
  type ServerMessage,
  sampleEnv,
  sleep,
  startSample,
  token,
  useClients,
  useSignalRClients,
} from "../support/sample.js";
import { type IoClient, useIoClients } from "../support/socket-io.js";
import { tcpProxy } from "../support/tcp-proxy.js";

const connect = useClients();
const connectSignalR = useSignalRClients();

/** The texts of `group`'s messages a client got after `after`, in order. */
const texts = (client: Pick<Client, "messages">, group: string) =>
  client.messages.filter((m) => m.type === "message" && m.group === group).map((m) => m.text);

/** Sends `count` messages to `group`, one every `everyMs`, as `client`; resolves to their texts. */
async function chatter(
  client: Client,
  group: string,
  prefix: string,
  count: number,
  everyMs: number,
) {
  const sent: string[] = [];
  for (let i = 0; i < count; i++) {
    const text = `${prefix} ${i}`;
    client.send({ type: "send", group, text });
    sent.push(text);
    await sleep(everyMs);
  }
  await client.next((m) => m.type === "message" && m.text === sent.at(-1));
  return sent;
}

describe("the ws protocol resumes: nothing lost, nothing leaked", { timeout: 60_000 }, () => {
  let env: SampleEnv;
  let sample: RunningSample;
  beforeAll(async () => {
    env = {
      ...sampleEnv(inject("azuriteConnectionString")),
      RATE_MESSAGES: "1000",
      RATE_USER_MESSAGES: "1000",
    };
    sample = await startSample(env);
  });
  afterAll(async () => {
    await sample?.stop();
  });

  /** Two users granted `group`, connected, the first having got a message of the second's. */
  async function membersOf(group: string, first: string, second: string) {
    for (const user of [first, second]) await grant(env, user, group);
    const a = await connect(sample.wsUrl, token(env, first));
    const b = await connect(sample.wsUrl, token(env, second));
    b.send({ type: "send", group, text: "seen" });
    await a.next((m) => m.text === "seen");
    return [a, b] as const;
  }

  it("a client that loses its connection for 3 s gets the 100 messages sent meanwhile, once, in order", async () => {
    await grant(env, "ada", "Gap");
    await grant(env, "bo", "Gap");
    const ada = await connect(sample.wsUrl, token(env, "ada"));
    const bo = await connect(sample.wsUrl, token(env, "bo"));
    expect(await ada.next((m) => m.type === "resumed")).toMatchObject({ resumed: false });
    bo.send({ type: "send", group: "Gap", text: "before" });
    await ada.next((m) => m.text === "before");

    ada.ws.terminate(); // the TCP connection is gone, as on a network drop
    // 100 messages over about 3.5 s: the client is back after 3 s, in the middle of them.
    const sending = chatter(bo, "Gap", "gap", 100, 35);
    await sleep(3_000);
    const back = await connect(sample.wsUrl, token(env, "ada"), "header", resumeFrom(ada));
    const sent = await sending;
    await back.next((m) => m.type === "message" && m.text === sent.at(-1));
    expect(await back.next((m) => m.type === "resumed")).toMatchObject({
      resumed: true,
      groups: [{ group: "Gap", recovered: true }],
      removed: [],
    });
    expect(texts(back, "Gap")).toEqual(sent);
    expect(back.messages.filter((m) => m.replayed === true).length).toBeGreaterThan(50);
    // The replay comes after the resumed message, and live delivery continues after it.
    const resumedAt = back.messages.findIndex((m) => m.type === "resumed");
    const firstMessage = back.messages.findIndex((m) => m.type === "message");
    expect(resumedAt).toBeLessThan(firstMessage);
    bo.send({ type: "send", group: "Gap", text: "after" });
    expect(await back.next((m) => m.text === "after")).not.toHaveProperty("replayed");
  });

  it("@microsoft/signalr drops for 3 s: its automatic reconnect presents its position and gets the 100 messages", async () => {
    await grant(env, "al", "Sig");
    await grant(env, "bea", "Sig");
    const al = await connectSignalR(sample.url, token(env, "al"), {
      reconnectDelays: [3_000],
      resume: true,
    });
    const bea = await connect(sample.wsUrl, token(env, "bea"));
    bea.send({ type: "send", group: "Sig", text: "before" });
    await al.next((m) => m.text === "before");

    al.drop();
    const sent = await chatter(bea, "Sig", "gap", 100, 35);
    await al.next((m) => m.type === "message" && m.text === sent.at(-1), 15_000);
    expect(al.messages.filter((m) => m.type === "resumed")).toMatchObject([
      { resumed: false },
      { resumed: true, groups: [{ group: "Sig", recovered: true }] },
    ]);
    expect(texts(al, "Sig")).toEqual(["before", ...sent]);
  });

  it("withStatefulReconnect(): the network down for 3 s, the same connection carries on with the 100 messages", async () => {
    await grant(env, "cal", "Stateful");
    await grant(env, "cal", "Stateful-revoked");
    await grant(env, "dot", "Stateful");
    await grant(env, "dot", "Stateful-revoked");
    const proxy = await tcpProxy(Number(new URL(sample.url).port));
    try {
      const cal = await connectSignalR(`http://127.0.0.1:${proxy.port}`, token(env, "cal"), {
        stateful: true,
      });
      const dot = await connect(sample.wsUrl, token(env, "dot"));
      // Another connection of cal's, not cut: it says when the server has applied the revoke.
      const calWatcher = await connect(sample.wsUrl, token(env, "cal"));
      dot.send({ type: "send", group: "Stateful", text: "before" });
      await cal.next((m) => m.text === "before");
      const id = cal.connection.connectionId;

      proxy.hold(3_000); // its WebSocket goes, and its next one waits 3 s
      proxy.cut();
      const sent = await chatter(dot, "Stateful", "gap", 50, 20);
      expect((await admin(env, "revoke", "cal", "Stateful-revoked")).code).toBe(0);
      // The admin script's exit is not the server's learning of it (the table log's poll is):
      // what is sent once the server has applied it must not reach cal.
      await calWatcher.next(isRemoved("Stateful-revoked"));
      dot.send({ type: "send", group: "Stateful-revoked", text: "after the revoke" });
      sent.push(...(await chatter(dot, "Stateful", "gap 2", 50, 10)));
      await cal.next((m) => m.text === sent.at(-1), 15_000);
      expect(cal.connection.connectionId).toBe(id); // the same connection: no new welcome
      expect(cal.messages.filter((m) => m.type === "welcome")).toHaveLength(1);
      expect(texts(cal, "Stateful")).toEqual(["before", ...sent]);
      expect(await cal.next(isRemoved("Stateful-revoked"))).toMatchObject({ reason: "revoked" });
      expect(texts(cal, "Stateful-revoked")).toEqual([]);
      expect(await cal.invoke("Send", "Stateful", "back")).toBeNull();
      await dot.next((m) => m.text === "back");
    } finally {
      await proxy.close();
    }
  });

  it("revoked during the gap: nothing sent after the revoke arrives, and the client is told", async () => {
    const [cy, dee] = await membersOf("Revoked", "cy", "dee");
    cy.ws.terminate();
    const before = await chatter(dee, "Revoked", "before", 20, 5);
    expect((await admin(env, "revoke", "cy", "Revoked")).code).toBe(0);
    const after = await chatter(dee, "Revoked", "after", 20, 5);
    const back = await connect(sample.wsUrl, token(env, "cy"), "header", resumeFrom(cy));
    expect(await back.next((m) => m.type === "resumed")).toMatchObject({
      resumed: true,
      groups: [],
      removed: ["Revoked"],
    });
    dee.send({ type: "send", group: "Revoked", text: "later" });
    await dee.next((m) => m.text === "later");
    await sleep(300);
    expect(texts(back, "Revoked")).toEqual([]);
    expect(before.length + after.length).toBe(40);
  });

  it("revoked and granted again during the gap: only what came after the new grant, and recovered: false", async () => {
    const [eve, fay] = await membersOf("Again", "eve", "fay");
    // Another connection of eve's says when the server has learned of the new grant.
    const watcher = await connect(sample.wsUrl, token(env, "eve"));
    eve.ws.terminate();
    await chatter(fay, "Again", "member", 5, 5);
    expect((await admin(env, "revoke", "eve", "Again")).code).toBe(0);
    const outside = await chatter(fay, "Again", "outside", 5, 5);
    await grant(env, "eve", "Again");
    await watcher.next((m) => m.type === "joined" && m.group === "Again"); // learned: marked
    const inside = await chatter(fay, "Again", "inside", 5, 5);
    const back = await connect(sample.wsUrl, token(env, "eve"), "header", resumeFrom(eve));
    expect(await back.next((m) => m.type === "resumed")).toMatchObject({
      groups: [{ group: "Again", recovered: false }],
    });
    await back.next((m) => m.text === inside.at(-1));
    const got = texts(back, "Again");
    for (const text of outside) expect(got).not.toContain(text);
    expect(got.slice(-inside.length)).toEqual(inside);
  });

  it("a made-up resume is a fresh connect, and /metrics counts replays", async () => {
    await grant(env, "gus", "Made-up");
    // Counted from here: whatever the tests before this one did.
    const counters = async () => {
      const metrics = await (await fetch(`${sample.url}/metrics`)).text();
      const value = (name: string) =>
        Number(
          new RegExp(`^hub_membership_${name}_total\\{endpoint="ws"\\} (\\d+)`, "m").exec(
            metrics,
          )?.[1] ?? 0,
        );
      return {
        replays: value("replays"),
        replayed: value("replayed_messages"),
        unrecovered: value("unrecovered_groups"),
      };
    };
    const before = await counters();
    for (const resume of [
      "not json",
      "[]",
      '{"positions":{"Made-up":"forged.1"}}',
      '{"since":1}',
    ]) {
      const client = await connect(sample.wsUrl, token(env, "gus"), "header", resume);
      const resumed = (await client.next((m) => m.type === "resumed")) as ServerMessage;
      if (resume.startsWith('{"positions"'))
        expect(resumed).toMatchObject({
          resumed: true,
          groups: [{ group: "Made-up", recovered: false }],
        });
      else
        expect(resumed).toMatchObject({
          resumed: false,
          groups: [{ group: "Made-up", recovered: true }],
        });
      client.close();
    }
    // A genuine resume: one message missed, replayed.
    const gus = await connect(sample.wsUrl, token(env, "gus"));
    const other = await connect(sample.wsUrl, token(env, "gus"));
    other.send({ type: "send", group: "Made-up", text: "seen" });
    await gus.next((m) => m.text === "seen");
    const place = resumeFrom(gus);
    gus.close();
    other.send({ type: "send", group: "Made-up", text: "missed" });
    await other.next((m) => m.text === "missed");
    const back = await connect(sample.wsUrl, token(env, "gus"), "header", place);
    expect(await back.next((m) => m.text === "missed")).toMatchObject({ replayed: true });
    // The forged resume and the genuine one replayed; one message; the forged group unrecovered.
    expect(await counters()).toEqual({
      replays: before.replays + 2,
      replayed: before.replayed + 1,
      unrecovered: before.unrecovered + 1,
    });
  });
});

describe("Socket.IO's connection state recovery, checked against the store", {
  timeout: 60_000,
}, () => {
  let env: SampleEnv;
  let sample: RunningSample;
  const connectIo = useIoClients();
  beforeAll(async () => {
    env = {
      ...sampleEnv(inject("azuriteConnectionString")),
      HUB: "socket.io",
      RATE_MESSAGES: "1000",
      RATE_USER_MESSAGES: "1000",
    };
    sample = await startSample(env);
  });
  afterAll(async () => {
    await sample?.stop();
  });

  /** Sends `count` messages as `client`, one every `everyMs`; resolves to their texts. */
  async function chatterIo(
    client: IoClient,
    group: string,
    prefix: string,
    count: number,
    everyMs: number,
  ) {
    const sent: string[] = [];
    for (let i = 0; i < count; i++) {
      sent.push(`${prefix} ${i}`);
      expect(await client.request("send", { group, text: `${prefix} ${i}` })).toEqual({ ok: true });
      await sleep(everyMs);
    }
    return sent;
  }

  it("socket.io-client drops for 3 s: the 100 messages arrive once, in order; a revoked group's do not", async () => {
    for (const user of ["hal", "ivy"]) await grant(env, user, "Io");
    await grant(env, "hal", "IoRevoked");
    await grant(env, "ivy", "IoRevoked");
    const hal = await connectIo(sample.url, token(env, "hal"));
    const ivy = await connectIo(sample.url, token(env, "ivy"));
    await chatterIo(ivy, "Io", "before", 1, 0);
    await hal.next((m) => m.text === "before 0");

    hal.socket.io.engine.close(); // the transport is gone, as on a network drop
    await sleep(100);
    const sending = chatterIo(ivy, "Io", "gap", 100, 20);
    const revokedBefore = await chatterIo(ivy, "IoRevoked", "still a member", 3, 0);
    expect((await admin(env, "revoke", "hal", "IoRevoked")).code).toBe(0);
    await sleep(200);
    await chatterIo(ivy, "IoRevoked", "after the revoke", 3, 0);
    const sent = await sending;
    await sleep(3_000 - 100 - 20 * 100);
    hal.socket.connect(); // with its session id and last offset: a recovery
    expect(await hal.next((m) => m.type === "recovered")).toEqual({
      type: "recovered",
      recovered: ["Io"],
      lost: ["IoRevoked"],
    });
    await hal.next((m) => m.text === sent.at(-1));
    expect(hal.socket.recovered).toBe(true);
    expect(texts(hal, "Io")).toEqual(["before 0", ...sent]);
    expect(await hal.next(isRemoved("IoRevoked"))).toMatchObject({ reason: "revoked" });
    await chatterIo(ivy, "IoRevoked", "later", 1, 0);
    await sleep(300);
    expect(texts(hal, "IoRevoked")).toEqual([]);
    expect(revokedBefore).toHaveLength(3);
    const metrics = await (await fetch(`${sample.url}/metrics`)).text();
    expect(metrics).toMatch(/hub_membership_replays_total\{endpoint="socket.io"\} 1\n/);
    expect(metrics).toMatch(
      /hub_membership_replayed_messages_total\{endpoint="socket.io"\} 10\d\n/,
    );
    expect(metrics).toMatch(/hub_membership_unrecovered_groups_total\{endpoint="socket.io"\} 1\n/);
  });
});
