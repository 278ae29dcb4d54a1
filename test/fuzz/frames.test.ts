/**
 * Fuzzing each protocol after a valid, authenticated connection: the sample's `ws` protocol,
 * SignalR's JSON hub protocol and Socket.IO packets, against the real sample and the README's
 * quick starts. Every session ends with a sentinel (a message to the user's own group): the
 * server must answer it, or have closed the connection as the protocol says; answer the frames
 * before it as the protocol says (test/fuzz/oracles.ts); stay up, with no unhandled error; serve
 * a normal client; and change the store only as the frames asked (a `join` of the open group, a
 * `leave`). FUZZ_SEED and FUZZ_RUNS: see docs/reliability.md.
 */
import { isUtf8 } from "node:buffer";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { token } from "../support/sample.js";
import {
  eventOf,
  expand,
  IO_REGRESSIONS,
  type IoPacket,
  ioPackets,
  RS,
  type SignalRSession,
  signalrSession,
  type WsFrame,
  wsFrames,
} from "./arbitraries.js";
import {
  FUZZER_GROUPS,
  fuzz,
  memberships,
  RawSocket,
  runs,
  sampleTarget,
  signalrQuickStart,
  socketIoQuickStart,
  type Target,
  testTimeout,
  wsQuickStart,
} from "./harness.js";
import {
  type MethodModel,
  QUICK_START_METHODS,
  SAMPLE_METHODS,
  sampleWsExpectation,
  signalrExpectation,
  signalrFrames,
  wireOf,
} from "./oracles.js";

const PER_RUN_MS = 1_000;
const options = { perRunMs: PER_RUN_MS };

/** The store's rows of `user`'s groups, and every other row. */
function split(rows: readonly string[], user: string) {
  const mine = (row: string) => (JSON.parse(row) as unknown[])[0] === user;
  const groups = rows.filter(mine).map((row) => (JSON.parse(row) as string[])[1] as string);
  return { groups: groups.sort(), others: rows.filter((row) => !mine(row)) };
}

/** Fails unless the store holds `user` in one of `states` and everyone else as before. */
async function expectStore(
  target: Target,
  before: readonly string[],
  user: string,
  states: readonly string[][],
) {
  const after = split(await memberships(target.store), user);
  expect(after.others, "the other users' memberships").toEqual(split(before, user).others);
  expect(states, `${user}'s groups`).toContainEqual(after.groups);
}

let users = 0;

describe("fuzzing the sample's protocols (HUB=ws)", () => {
  const WS_RUNS = runs(100);
  const SIGNALR_RUNS = runs(100);
  let target: Awaited<ReturnType<typeof sampleTarget>>;
  beforeAll(async () => {
    target = await sampleTarget("ws");
  }, 60_000);
  afterAll(() => target?.close());

  /** A new user in FUZZER_GROUPS (its frames may join and leave): its id, token, rows before. */
  const newUser = async () => {
    await target.ready();
    const user = `fuzzer-${++users}`;
    for (const group of FUZZER_GROUPS) await target.store.addToGroup(user, group);
    return { user, bearer: token(target.env, user), before: await memberships(target.store) };
  };

  it(`answers ${WS_RUNS} sessions of ws frames (/hub) as its protocol says`, {
    timeout: testTimeout(WS_RUNS, PER_RUN_MS),
  }, async () => {
    const session = async (frames: WsFrame[]) => {
      const { user, bearer, before } = await newUser();
      const client = await RawSocket.open(target.sample().wsUrl, {
        authorization: `Bearer ${bearer}`,
      });
      try {
        const json = () =>
          client.received.map((m) => JSON.parse(m.text) as Record<string, unknown>);
        await client.until(() => json().some((m) => m.type === "welcome"), "the welcome");
        for (const frame of frames) {
          const { data, binary } = wireOf(frame);
          client.send(data, binary);
        }
        const sentinel = `sentinel of ${user}`;
        client.send(JSON.stringify({ type: "send", group: "home", text: sentinel }));
        const outcome = await client.until(
          () => json().some((m) => m.text === sentinel),
          "the sentinel's message",
        );
        const expected = sampleWsExpectation(frames, FUZZER_GROUPS);
        const errors = json()
          .filter((m) => m.type === "error")
          .map((m) => m.code);
        expect(
          client.received.filter((m) => m.binary),
          "binary frames from the server",
        ).toEqual([]);
        if (expected.close === undefined) {
          expect(outcome, `the sentinel's answer (${client.describe()})`).toBe("done");
          expect(errors, "the error codes answered").toEqual(expected.errors);
          await expectStore(target, before, user, expected.states.slice(-1));
        } else {
          expect(outcome, `the close (${client.describe()})`).toBe("closed");
          expect(client.closed?.code, "the close code").toBe(expected.close);
          expect(errors, "the error codes answered before the close").toEqual(
            expected.errors.slice(0, errors.length),
          );
          await expectStore(target, before, user, expected.states);
        }
      } finally {
        client.close();
      }
      await target.healthy();
    };
    await fuzz(fc.asyncProperty(wsFrames, session), WS_RUNS, options);
  });

  it(`answers ${SIGNALR_RUNS} SignalR sessions (/signalr) as the JSON hub protocol says`, {
    timeout: testTimeout(SIGNALR_RUNS, PER_RUN_MS),
  }, async () => {
    const session = async (input: SignalRSession) => {
      const { user, bearer, before } = await newUser();
      const url = `${target.url().replace("http", "ws")}/signalr?access_token=${bearer}`;
      await signalrSessionAgainst(url, input, {
        maxMessageBytes: 64 * 1024,
        methods: SAMPLE_METHODS,
        check: (states) => expectStore(target, before, user, states),
      });
      await target.healthy();
    };
    await fuzz(fc.asyncProperty(signalrSession, session), SIGNALR_RUNS, options);
  });
});

describe("fuzzing the SignalR quick start", () => {
  const RUNS = runs(150);
  let target: Target;
  beforeAll(async () => {
    target = await signalrQuickStart();
  });
  afterAll(() => target?.close());

  it(`answers ${RUNS} SignalR sessions as the JSON hub protocol says`, {
    timeout: testTimeout(RUNS, PER_RUN_MS),
  }, async () => {
    const stored = await memberships(target.store);
    const session = async (input: SignalRSession) => {
      await signalrSessionAgainst(`${target.url().replace("http", "ws")}/chat`, input, {
        maxMessageBytes: 32 * 1024, // the default
        methods: QUICK_START_METHODS,
        headers: { authorization: "Bearer tok-fuzzer" },
        check: async () => expect(await memberships(target.store)).toEqual(stored),
      });
      await target.healthy();
    };
    await fuzz(fc.asyncProperty(signalrSession, session), RUNS, options);
  });
});

/** One SignalR session: its frames, then what came back against the oracle. */
async function signalrSessionAgainst(
  url: string,
  input: SignalRSession,
  options: {
    maxMessageBytes: number;
    methods: Record<string, MethodModel>;
    headers?: Record<string, string>;
    /** Checks the store against the caller's possible groups. */
    check: (states: readonly string[][]) => Promise<void>;
  },
) {
  const sentinel = JSON.stringify({
    type: 1,
    invocationId: "sentinel",
    target: "Send",
    arguments: ["home", "sentinel"],
  });
  const frames = signalrFrames(input, sentinel);
  const expected = signalrExpectation(frames, { ...options, groups: FUZZER_GROUPS });
  const client = await RawSocket.open(url, options.headers);
  try {
    for (const frame of frames)
      client.send(input.binary ? Buffer.from(frame) : frame, input.binary);
    const records = () =>
      client.received.flatMap((m) =>
        m.text
          .split(RS)
          .filter(Boolean)
          .map((part) => JSON.parse(part) as Record<string, unknown>),
      );
    const completions = () =>
      records()
        .filter((r) => r.type === 3)
        .map((r) => r.invocationId);
    const outcome = await client.until(
      () => completions().includes("sentinel"),
      "the sentinel's completion",
    );
    const seen = `${client.describe()}`;
    if (input.binary) {
      // How a binary frame is taken is the binding's choice: an answer, or a close, will do.
      await options.check(expected.states);
      return;
    }
    const [first] = records();
    const handshakeAnswer = expected.handshake === "ok" ? {} : { error: expect.any(String) };
    if (expected.end === "frame too large") {
      // Refused as it arrived: what came before it may not have been read, let alone answered.
      expect(outcome, `a close (${seen})`).toBe("closed");
      // 1000 when a message read before it ended the connection first.
      expect([1000, 1009], "the close code").toContain(client.closed?.code);
      if (first !== undefined) expect(first, "the handshake's answer").toEqual(handshakeAnswer);
      expect(completions(), "the completions before the close").toEqual(
        expected.completions.slice(0, completions().length),
      );
      await options.check(expected.states);
      return;
    }
    expect(first, `the handshake's answer (${seen})`).toEqual(handshakeAnswer);
    if (expected.handshake === "error") {
      expect(outcome, `a close after the handshake's error (${seen})`).toBe("closed");
      expect(records(), "what follows a refused handshake").toHaveLength(1);
      await options.check(expected.states);
      return;
    }
    const closes = records().filter((r) => r.type === 7);
    if (expected.end === undefined) {
      // The sentinel is the session's last message: its completion comes last.
      expect(outcome, `the sentinel's completion (${seen})`).toBe("done");
      expect(completions(), "the completions, in order").toEqual(expected.completions);
      expect(closes, "close messages").toEqual([]);
    } else {
      expect(outcome, `the connection's end (${seen})`).toBe("closed");
      expect(completions(), "the completions, in order").toEqual(expected.completions);
      expect(client.closed?.code, "the close code").toBe(1000);
      expect(closes, "the close message").toEqual(
        expected.end === "close message"
          ? [{ type: 7, error: expect.any(String), allowReconnect: expect.any(Boolean) }]
          : [],
      );
    }
    await options.check(expected.states.slice(-1));
  } finally {
    client.close();
  }
}

const SENTINEL_ACK = 4242;

/** Events that the sample's handlers acknowledge (sample/README.md, "The Socket.IO variant"). */
const ACKED = new Set(["send", "join", "leave"]);

/** The sample's largest packet (maxHttpBufferSize), and Socket.IO's default (the quick start's). */
const SAMPLE_MAX_PACKET = 64 * 1024;
const DEFAULT_MAX_PACKET = 1e6;

describe("fuzzing the sample's Socket.IO (HUB=socket.io)", () => {
  const RUNS = runs(80);
  let target: Awaited<ReturnType<typeof sampleTarget>>;
  beforeAll(async () => {
    target = await sampleTarget("socket.io");
  }, 60_000);
  afterAll(() => target?.close());

  it(`answers ${RUNS} sessions of Socket.IO packets: acknowledged, or closed`, {
    timeout: testTimeout(RUNS, PER_RUN_MS),
  }, async () => {
    const stored = await memberships(target.store);
    const session = async (packets: IoPacket[]) => {
      await target.ready();
      const client = await socketIo(target.url(), {
        headers: { authorization: `Bearer ${target.tokens.valid}` },
        welcome: true,
      });
      try {
        const outcome = await sendPackets(client, packets, `43${SENTINEL_ACK}[{"ok":true}]`);
        const events = packets.map((p) => eventOf(p, SAMPLE_MAX_PACKET));
        if (events.every((e) => e !== undefined)) {
          expect(outcome, `the sentinel's ack (${client.describe()})`).toBe("done");
          const acks = client.received.flatMap((m) => /^43(\d+)\[/.exec(m.text)?.[1] ?? []);
          const expected = events.flatMap((e) => (e?.ack && ACKED.has(e.event) ? e.ack : []));
          expect(acks.sort(), "the acknowledgements").toEqual(
            [...expected, String(SENTINEL_ACK)].sort(),
          );
        }
      } finally {
        client.close();
      }
      expect(await memberships(target.store), "the store").toEqual(stored);
      await target.healthy();
    };
    const examples = IO_REGRESSIONS.map((packets): [IoPacket[]] => [packets]);
    await fuzz(fc.asyncProperty(ioPackets, session), RUNS, { ...options, examples });
  });
});

describe("fuzzing the Socket.IO quick start", () => {
  const RUNS = runs(100);
  let target: Target;
  beforeAll(async () => {
    target = await socketIoQuickStart();
  });
  afterAll(() => target?.close());

  it(`answers ${RUNS} sessions of Socket.IO packets, or closes them`, {
    timeout: testTimeout(RUNS, PER_RUN_MS),
  }, async () => {
    const stored = await memberships(target.store);
    const session = async (packets: IoPacket[]) => {
      const client = await socketIo(target.url(), { auth: { token: "tok-fuzzer" } });
      try {
        // The quick start acknowledges nothing: the sentinel's answer is its message.
        const outcome = await sendPackets(client, packets, '42["message",{"group":"home"');
        if (packets.every((p) => eventOf(p, DEFAULT_MAX_PACKET)))
          expect(outcome, `the sentinel's message (${client.describe()})`).toBe("done");
      } finally {
        client.close();
      }
      expect(await memberships(target.store), "the store").toEqual(stored);
      await target.healthy();
    };
    const examples = IO_REGRESSIONS.map((packets): [IoPacket[]] => [packets]);
    await fuzz(fc.asyncProperty(ioPackets, session), RUNS, { ...options, examples });
  });
});

/** A raw engine.io 4 / socket.io 5 session on the websocket transport, connected to "/". */
async function socketIo(
  url: string,
  how: { headers?: Record<string, string>; auth?: object; welcome?: boolean },
): Promise<RawSocket> {
  const client = await RawSocket.open(
    `${url.replace("http", "ws")}/socket.io/?EIO=4&transport=websocket`,
    how.headers,
  );
  await client.until((r) => r.some((m) => m.text.startsWith("0{")), "engine.io's open packet");
  client.send(`40${how.auth ? JSON.stringify(how.auth) : ""}`);
  const connected = (text: string) =>
    how.welcome ? text.startsWith('42["welcome"') : text.startsWith("40{");
  const outcome = await client.until((r) => r.some((m) => connected(m.text)), "the connect");
  expect(outcome, `the connect (${client.describe()})`).toBe("done");
  return client;
}

/** Sends the packets, then the sentinel; resolves once its answer (`answer…`) or a close came. */
function sendPackets(client: RawSocket, packets: readonly IoPacket[], answer: string) {
  for (const packet of packets) {
    if ("text" in packet) client.send(expand(packet.text));
    else client.send(Buffer.from(packet.binary), true);
  }
  client.send(`42${SENTINEL_ACK}["send",{"group":"home","text":"sentinel"}]`);
  return client.until((r) => r.some((m) => m.text.startsWith(answer)), "the sentinel's answer");
}

describe("fuzzing the ws quick start", () => {
  const RUNS = runs(100);
  let target: Target;
  beforeAll(async () => {
    target = await wsQuickStart();
  });
  afterAll(() => target?.close());

  it(`answers ${RUNS} sessions of frames, or closes them as RFC 6455 says`, {
    timeout: testTimeout(RUNS, PER_RUN_MS),
  }, async () => {
    const stored = await memberships(target.store);
    const session = async (frames: WsFrame[]) => {
      const client = await RawSocket.open(`${target.url().replace("http", "ws")}/`, {
        authorization: "Bearer tok-fuzzer",
      });
      try {
        await client.until((r) => r.some((m) => m.text.includes("welcome")), "the welcome");
        for (const frame of frames) {
          const { data, binary } = wireOf(frame);
          client.send(data, binary);
        }
        client.send(JSON.stringify({ group: "home", text: "sentinel" }));
        const outcome = await client.until(
          (r) => r.some((m) => m.text === '{"userId":"fuzzer","text":"sentinel"}'),
          "the sentinel's message",
        );
        // Its protocol ignores what it cannot parse; a text frame that is not UTF-8 is closed.
        const invalid = frames.some((f) => {
          const { data, binary } = wireOf(f);
          return !binary && !isUtf8(data);
        });
        expect(outcome, client.describe()).toBe(invalid ? "closed" : "done");
        if (invalid) expect(client.closed?.code, "the close code").toBe(1007);
      } finally {
        client.close();
      }
      expect(await memberships(target.store), "the store").toEqual(stored);
      await target.healthy();
    };
    await fuzz(fc.asyncProperty(wsFrames, session), RUNS, options);
  });
});
