import jwt from "jsonwebtoken";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { httpRequest, rawRequest, WEBSOCKET_HEADERS } from "../support/raw-http.js";
import {
  grant,
  logLines,
  type RunningSample,
  type SampleEnv,
  sampleEnv,
  startSample,
  token,
  useClients,
} from "../support/sample.js";

const connect = useClients();

describe("the sample at its edge: one request never stops it", () => {
  let env: SampleEnv;
  let sample: RunningSample;
  let port: number;
  beforeAll(async () => {
    env = sampleEnv(inject("azuriteConnectionString"));
    sample = await startSample(env);
    port = Number(new URL(sample.url).port);
  });
  afterAll(() => sample.stop());

  it("answers malformed requests and upgrades 400, and keeps serving", async () => {
    const bearer = { authorization: `Bearer ${token(env, "alice")}` };
    const requests = {
      "GET //[/hub HTTP/1.1": { ...WEBSOCKET_HEADERS, ...bearer },
      "GET //[/signalr HTTP/1.1": { ...WEBSOCKET_HEADERS, ...bearer },
      "GET //[ HTTP/1.1": { ...WEBSOCKET_HEADERS },
      "GET //[ HTTP/1.1 ": {},
      "POST //[/signalr/negotiate HTTP/1.1": bearer,
    };
    for (const [line, headers] of Object.entries(requests)) {
      const answer = await rawRequest(port, httpRequest(line.trim(), headers));
      expect(answer.status, line).toMatch(/^HTTP\/1\.1 400 /);
    }
    expect(sample.process.exitCode).toBeNull();
    await grant(env, "alice", "Sports");
    const alice = await connect(sample.wsUrl, token(env, "alice"));
    expect(alice.welcome.groups).toEqual(["Sports"]);
  });

  it("answers /whoami for a token whose exp is past any date", async () => {
    const far = jwt.sign({ sub: "alice", exp: 1e15 }, env.JWT_SECRET, {
      algorithm: "HS256",
      issuer: "hub-membership-sample",
      audience: "hub-membership-sample",
    });
    const answer = await fetch(`${sample.url}/whoami`, {
      headers: { authorization: `Bearer ${far}` },
    });
    expect(answer.status).toBe(200);
    expect(await answer.json()).toEqual({
      userId: "alice",
      expiresAt: "+275760-09-13T00:00:00.000Z",
    });
  });

  it("logs a frame over the limit at warn with the client's identity, not as a server failure", async () => {
    const bob = await connect(sample.wsUrl, token(env, "bob"));
    bob.ws.send("x".repeat(64 * 1024 + 1));
    expect((await bob.closed).code).toBe(1009);
    await expect
      .poll(() => logLines(sample.output()).filter((l) => l.event === "client.protocol_error"))
      .toEqual([expect.objectContaining({ level: 40, endpoint: "ws", userId: "bob" })]);
    expect(logLines(sample.output()).filter((l) => Number(l.level) >= 50)).toEqual([]);
  });
});
