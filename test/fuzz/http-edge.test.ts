/**
 * Fuzzing the HTTP edge: any request (methods, malformed targets, junk headers and bodies) and
 * WebSocket handshakes, as raw bytes on TCP, against the real sample (both hubs) and the
 * README's three quick starts. Every input must be answered within 3 s (a status line, or the
 * connection closed by the server), and leave the server up, serving a normal client, with no
 * unhandled error and the store unchanged. FUZZ_SEED and FUZZ_RUNS: see docs/reliability.md.
 */
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ENDPOINTS,
  HTTP_REGRESSIONS,
  handshake,
  httpRequest,
  type RawRequest,
  serializeRequest,
} from "./arbitraries.js";
import {
  type Answer,
  exchange,
  fuzz,
  memberships,
  runs,
  sampleTarget,
  signalrQuickStart,
  socketIoQuickStart,
  type Target,
  testTimeout,
  wsQuickStart,
} from "./harness.js";

/** An input's budget: its answer (engine.io ends a foreign upgrade after 1 s), a normal client. */
const PER_RUN_MS = 1_500;
/** How long a failure is shrunk: every failing candidate may wait out the 3 s bound. */
const SHRINK_MS = 20_000;

interface Case {
  start: () => Promise<Target>;
  endpoints: readonly string[];
  requests: number;
  handshakes: number;
}

const CASES: Record<string, Case> = {
  "the sample (HUB=ws: /hub and /signalr)": {
    start: () => sampleTarget("ws"),
    endpoints: ENDPOINTS.sample,
    requests: runs(150),
    handshakes: runs(100),
  },
  // An upgrade elsewhere than /socket.io/ waits for engine.io's 1 s: fewer inputs.
  "the sample (HUB=socket.io)": {
    start: () => sampleTarget("socket.io"),
    endpoints: ENDPOINTS.socketIo,
    requests: runs(50),
    handshakes: runs(25),
  },
  "the ws quick start": {
    start: wsQuickStart,
    endpoints: ENDPOINTS.ws,
    requests: runs(100),
    handshakes: runs(60),
  },
  "the SignalR quick start": {
    start: signalrQuickStart,
    endpoints: ENDPOINTS.signalr,
    requests: runs(100),
    handshakes: runs(60),
  },
  "the Socket.IO quick start": {
    start: socketIoQuickStart,
    endpoints: ENDPOINTS.socketIo,
    requests: runs(60),
    handshakes: runs(30),
  },
};

/** Answers by status, printed with FUZZ_VERBOSE=1. */
const tally = new Map<string, number>();
const count = (answer: Answer) => {
  const key = "status" in answer ? String(answer.status) : `closed (${answer.closed})`;
  tally.set(key, (tally.get(key) ?? 0) + 1);
};

for (const [name, { start, endpoints, requests, handshakes }] of Object.entries(CASES)) {
  describe(`fuzzing ${name}`, () => {
    let target: Target;
    let stored: string[];
    beforeAll(async () => {
      target = await start();
      stored = await memberships(target.store);
    }, 60_000);
    afterAll(async () => {
      await target?.close();
      if (process.env.FUZZ_VERBOSE) console.log(name, Object.fromEntries(tally));
      tally.clear();
    });

    /** One input: answered within the bound, then the server is as it was. */
    const send = async (request: RawRequest) => {
      await target.ready();
      const answer = await exchange(target.port(), serializeRequest(request, target.tokens));
      count(answer);
      await target.healthy(target.keeps?.(request) ? undefined : answer.client);
      expect(await memberships(target.store), "the store").toEqual(stored);
    };
    const examples = HTTP_REGRESSIONS.map((request): [RawRequest] => [request]);
    const options = { perRunMs: PER_RUN_MS, shrinkMs: SHRINK_MS, examples };

    it(`answers ${requests} requests of any shape within 3 s, and keeps serving`, {
      timeout: testTimeout(requests, PER_RUN_MS, SHRINK_MS),
    }, async () => {
      await fuzz(fc.asyncProperty(httpRequest, send), requests, options);
    });

    it(`answers ${handshakes} WebSocket handshakes, valid or nearly, within 3 s, and keeps serving`, {
      timeout: testTimeout(handshakes, PER_RUN_MS, SHRINK_MS),
    }, async () => {
      await fuzz(fc.asyncProperty(handshake(endpoints), send), handshakes, options);
    });
  });
}
