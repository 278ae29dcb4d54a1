import { spawn } from "node:child_process";
import { once } from "node:events";
import jwt from "jsonwebtoken";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { AzureTableMembershipStore } from "../../adapters/index.js";
import { freePort } from "../../adapters/testing/azurite.js";
import { httpRequest, rawRequest, WEBSOCKET_HEADERS } from "../support/raw-http.js";
import {
  admin,
  grant,
  logLines,
  NO_RATE_LIMITS,
  type RunningSample,
  type SampleEnv,
  sampleEnv,
  startSample,
  token,
  upgradeStatus,
  useClients,
} from "../support/sample.js";

const connect = useClients();

describe("the sample at its edge: one request never stops it, a browser is checked", () => {
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

  // The browser-facing checks.
  it("mints dev tokens only for a request to a loopback host name", async () => {
    const ask = (host: string, headers: Record<string, string> = {}) =>
      rawRequest(port, httpRequest("GET /token?user=alice HTTP/1.1", { host, ...headers }));
    for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, `[::1]:${port}`])
      expect((await ask(host)).status, host).toBe("HTTP/1.1 200 OK");
    for (const host of [`attacker.example:${port}`, "attacker.example", "127.0.0.1.nip.io"])
      expect((await ask(host)).status, host).toBe("HTTP/1.1 403 Forbidden");
    const rebound = await ask(`localhost:${port}`, { origin: "http://attacker.example" });
    expect(rebound.status).toBe("HTTP/1.1 403 Forbidden");
  });

  it("tells who is online (/online), and how busy it is, only to a request naming a loopback host", async () => {
    const ask = (target: string, host: string) =>
      rawRequest(port, httpRequest(`GET ${target} HTTP/1.1`, { host }));
    for (const target of ["/online?group=Sports", "/metrics", "/stats"]) {
      expect((await ask(target, `127.0.0.1:${port}`)).status, target).toBe("HTTP/1.1 200 OK");
      // A DNS-rebinding page, or a proxy in front, names its own host.
      for (const host of [`attacker.example:${port}`, "127.0.0.1.nip.io"])
        expect((await ask(target, host)).status, `${target} ${host}`).toBe(
          "HTTP/1.1 404 Not Found",
        );
    }
    const online = await fetch(`${sample.url}/online?group=Sports`);
    expect(await online.json()).toEqual({ group: "Sports", users: [], connections: 0 });
    for (const target of ["/online", "/online?group=", "/online?group=a&after="])
      expect((await ask(target, `127.0.0.1:${port}`)).status, target).toBe(
        "HTTP/1.1 400 Bad Request",
      );
  });

  it("refuses upgrades and negotiates from another origin, and takes its own and none", async () => {
    const bearer = { authorization: `Bearer ${token(env, "alice")}` };
    for (const url of [sample.wsUrl, sample.wsUrl.replace("/hub", "/signalr")]) {
      expect(await upgradeStatus(url, { ...bearer, origin: "http://evil.example" }), url).toBe(403);
      expect(await upgradeStatus(url, { ...bearer, origin: "null" }), url).toBe(403);
      expect(await upgradeStatus(url, { ...bearer, origin: sample.url }), url).toBe("open");
      expect(await upgradeStatus(url, bearer), url).toBe("open");
    }
    const negotiate = (origin: string) =>
      fetch(`${sample.url}/signalr/negotiate?negotiateVersion=1`, {
        method: "POST",
        headers: { ...bearer, origin },
      });
    expect((await negotiate("http://evil.example")).status).toBe(403);
    expect((await negotiate(sample.url)).status).toBe(200);
  });
});

describe("no secret reaches the sample's output", () => {
  it("an unreachable Redis with a password: one line, exit 1, no password", async () => {
    const env = sampleEnv(inject("azuriteConnectionString"));
    const error = await startSample({
      ...env,
      REDIS_URL: "redis://default:hunter2secret@127.0.0.1:1",
    }).then(
      () => expect.fail("the sample started"),
      (e: Error) => e.message,
    );
    expect(error).toMatch(/^error: cannot reach Redis at redis:\/\/\*\*\*@127\.0\.0\.1:1/m);
    expect(error).not.toContain("hunter2secret");
    expect(error).not.toMatch(/\n\s+at /);
  });

  it("the admin script on an unreachable SAS endpoint: no signature", async () => {
    const env = sampleEnv(inject("azuriteConnectionString"));
    const sas =
      "TableEndpoint=http://127.0.0.1:1/devstoreaccount1;SharedAccessSignature=sv=2020-08-04&ss=t&srt=sco&sp=rwdlacu&se=2099-01-01&sig=SECRETSIGNATURE";
    const result = await admin({ ...env, AZURE_TABLES_CONNECTION_STRING: sas }, "groups", "alice");
    expect(result.code).toBe(1);
    expect(result.stderr).not.toContain("SECRETSIGNATURE");
    expect(result.stderr).toMatch(/unavailable/);
  });
});

describe("the sample's operations endpoints and idle clients", () => {
  it("answers /healthz from what it knows: 500 checks, at most a read or two", async () => {
    const env = sampleEnv(inject("azuriteConnectionString"));
    const sample = await startSample(env);
    try {
      const reads = async () =>
        (
          (await (await fetch(`${sample.url}/stats`)).json()) as {
            storageRequests: { membership: number };
          }
        ).storageRequests.membership;
      const before = await reads();
      const answers = await Promise.all(
        Array.from({ length: 500 }, () => fetch(`${sample.url}/healthz`).then((r) => r.status)),
      );
      expect(new Set(answers)).toEqual(new Set([200]));
      expect((await reads()) - before).toBeLessThanOrEqual(2);
    } finally {
      await sample.stop();
    }
  });

  it("serves /metrics and /stats only with OPS_TOKEN, or only on OPS_PORT", async () => {
    const env = sampleEnv(inject("azuriteConnectionString"));
    const opsToken = "o".repeat(24);
    const withToken = await startSample({ ...env, OPS_TOKEN: opsToken });
    try {
      for (const path of ["/metrics", "/stats"]) {
        expect((await fetch(`${withToken.url}${path}`)).status, path).toBe(404);
        const bearer = { authorization: `Bearer ${opsToken}` };
        expect((await fetch(`${withToken.url}${path}`, { headers: bearer })).status, path).toBe(
          200,
        );
      }
    } finally {
      await withToken.stop();
    }
    const opsPort = await freePort();
    const withPort = await startSample({ ...env, OPS_PORT: String(opsPort) });
    try {
      expect((await fetch(`${withPort.url}/metrics`)).status).toBe(404);
      expect((await fetch(`http://127.0.0.1:${opsPort}/metrics`)).status).toBe(200);
      expect((await fetch(`http://127.0.0.1:${opsPort}/healthz`)).status).toBe(200);
      expect((await fetch(`http://127.0.0.1:${opsPort}/token?user=x`)).status).toBe(404);
    } finally {
      await withPort.stop();
    }
  });

  it("drops a /hub client that stops answering pings, and rate-limits negotiate", async () => {
    const env = {
      ...sampleEnv(inject("azuriteConnectionString")),
      HEARTBEAT_SECONDS: "1",
      RATE_MESSAGES: "5",
      RATE_BURST: "2",
    };
    const sample = await startSample(env);
    try {
      const silent = await connect(sample.wsUrl, token(env, "sleeper"));
      (silent.ws as unknown as { _socket: { pause(): void } })._socket.pause();
      await expect
        .poll(
          () =>
            logLines(sample.output()).filter(
              (l) => l.event === "connection.closed" && l.userId === "sleeper",
            ),
          {
            timeout: 5_000,
          },
        )
        .toHaveLength(1);
      const negotiate = () =>
        fetch(`${sample.url}/signalr/negotiate?negotiateVersion=1`, {
          method: "POST",
          headers: { authorization: `Bearer ${token(env, "spammer")}` },
        }).then((r) => r.status);
      const statuses = await Promise.all(Array.from({ length: 30 }, negotiate));
      expect(statuses.filter((s) => s === 200).length).toBeLessThanOrEqual(7);
      expect(statuses.filter((s) => s === 429).length).toBeGreaterThanOrEqual(23);
    } finally {
      await sample.stop();
    }
  });
});

describe("a user in many groups", () => {
  it("gets a welcome of 1,000 groups and their count, and is in every one of them", async () => {
    const env = { ...sampleEnv(inject("azuriteConnectionString")), ...NO_RATE_LIMITS };
    const groups = Array.from({ length: 1_500 }, (_, i) => `g${String(i).padStart(4, "0")}`);
    const store = AzureTableMembershipStore.fromConnectionString(
      env.AZURE_TABLES_CONNECTION_STRING ?? "",
      {
        tableName: env.MEMBERSHIP_TABLE,
      },
    );
    await store.addMany(groups.map((group) => ({ userId: "busy", group })));
    await store.close();
    const sample = await startSample(env);
    try {
      const [first, second] = [
        await connect(sample.wsUrl, token(env, "busy")),
        await connect(sample.wsUrl, token(env, "busy")),
      ];
      for (const client of [first, second]) {
        expect(client.welcome.groupCount).toBe(1_500);
        expect(client.welcome.groups).toEqual(groups.slice(0, 1_000));
      }
      first.send({ type: "send", group: "g1499", text: "the last one" });
      for (const client of [first, second]) await client.next((m) => m.text === "the last one");
    } finally {
      await sample.stop();
    }
  });
});

describe("start-up errors: one line, exit 1", () => {
  it("a malformed connection string, for the sample and the admin script", async () => {
    const env = {
      ...sampleEnv(inject("azuriteConnectionString")),
      AZURE_TABLES_CONNECTION_STRING: "not;a=connection string",
    };
    const line =
      /^configuration error: AZURE_TABLES_CONNECTION_STRING: not a connection string Azure Table Storage takes/m;
    const error = await startSample(env).then(
      () => expect.fail("the sample started"),
      (e: Error) => e.message,
    );
    expect(error).toMatch(line);
    expect(error).not.toMatch(/TypeError|\n\s+at |\*\*\*/); // nor a hint the redaction garbled
    const run = await admin(env, "groups", "alice");
    expect(run.code).toBe(1);
    expect(run.stderr.trim()).toMatch(line);
  });

  it("the hub's port in use", async () => {
    const env = sampleEnv(inject("azuriteConnectionString"));
    const first = await startSample(env);
    try {
      const port = new URL(first.url).port;
      const error = await startSample({ ...env, PORT: port }).then(
        () => expect.fail("a second sample started on the same port"),
        (e: Error) => e.message,
      );
      expect(error).toMatch(
        new RegExp(`^configuration error: PORT: 127\\.0\\.0\\.1:${port} is in use`, "m"),
      );
      expect(error).not.toMatch(/\n\s+at /);
    } finally {
      await first.stop();
    }
  });

  it("export into a pipe closed early ends quietly with exit 0", async () => {
    const env = sampleEnv(inject("azuriteConnectionString"));
    const store = AzureTableMembershipStore.fromConnectionString(
      env.AZURE_TABLES_CONNECTION_STRING ?? "",
      {
        tableName: env.MEMBERSHIP_TABLE,
      },
    );
    await store.addMany(Array.from({ length: 3_000 }, (_, i) => ({ userId: `u${i}`, group: "g" })));
    await store.close();
    // pipefail: the pipeline fails if the admin script does.
    const child = spawn(
      "bash",
      ["-c", "set -o pipefail; node --import tsx sample/admin.ts export | head -2"],
      {
        env: { ...process.env, ...env, NODE_ENV: "test" },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    let stderr = "";
    child.stderr.on("data", (chunk: Buffer) => {
      stderr += chunk;
    });
    const lines: string[] = [];
    child.stdout.on("data", (chunk: Buffer) =>
      lines.push(...String(chunk).split("\n").filter(Boolean)),
    );
    const [code] = (await once(child, "exit")) as [number];
    expect(code).toBe(0);
    expect(lines).toHaveLength(2);
    expect(stderr).toBe("");
  });
});
