import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { TableClient } from "@azure/data-tables";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import {
  admin,
  badTokens,
  isRemoved,
  type RunningSample,
  type SampleEnv,
  sampleEnv,
  sleep,
  startSample,
  token,
  upgradeStatus,
  useClients,
} from "../support/sample.js";

const connect = useClients();

describe("sample hub, end to end", { timeout: 60_000 }, () => {
  let env: SampleEnv;
  let sample: RunningSample;
  beforeAll(async () => {
    env = sampleEnv(inject("azuriteConnectionString"));
    sample = await startSample(env);
  });
  afterAll(async () => {
    await sample?.stop();
  });

  it("grant, messages, revoke: every connection of the user, live, from the admin script", async () => {
    expect((await admin(env, "grant", "alice", "Sports")).code).toBe(0);
    expect((await admin(env, "grant", "bob", "Sports")).code).toBe(0);
    const alice1 = await connect(sample.wsUrl, token(env, "alice"));
    const alice2 = await connect(sample.wsUrl, token(env, "alice"), "query");
    const bob1 = await connect(sample.wsUrl, token(env, "bob"));
    const bob2 = await connect(sample.wsUrl, token(env, "bob"));
    expect(alice1.welcome).toMatchObject({ userId: "alice", groups: ["Sports"] });
    expect(alice2.welcome.connectionId).not.toBe(alice1.welcome.connectionId);

    const granted = await admin(env, "grant", "alice", "sports");
    expect(granted.code).toBe(0);
    for (const c of [alice1, alice2])
      await c.next((m) => m.type === "joined" && m.group === "sports");
    expect(bob1.messages.some((m) => m.type === "joined")).toBe(false);

    alice1.send({ type: "send", group: "Sports", text: "hello" });
    for (const c of [alice1, alice2, bob1, bob2]) {
      expect(await c.next((m) => m.type === "message" && m.text === "hello")).toMatchObject({
        group: "Sports",
        from: "alice",
        at: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
      });
    }

    const revokeDone = Date.now();
    expect((await admin(env, "revoke", "alice", "Sports")).code).toBe(0);
    const revokedAt = Date.now();
    for (const c of [alice1, alice2]) {
      expect(await c.next(isRemoved("Sports"))).toMatchObject({ reason: "revoked" });
    }
    console.log(
      `revoke → removed on both connections: ${Date.now() - revokedAt} ms after the admin script exited ` +
        `(${Date.now() - revokeDone} ms including its start-up)`,
    );
    bob1.send({ type: "send", group: "Sports", text: "after revoke" });
    await bob2.next((m) => m.text === "after revoke");
    await sleep(300);
    for (const c of [alice1, alice2])
      expect(c.messages.some((m) => m.text === "after revoke")).toBe(false);
    alice1.send({ type: "send", group: "Sports", text: "still here?" });
    expect(await alice1.next((m) => m.type === "error")).toEqual({
      type: "error",
      code: "not_member",
      group: "Sports",
    });
    expect(alice1.messages.some((m) => m.type === "message" && m.text === "still here?")).toBe(
      false,
    );
    expect(JSON.parse((await admin(env, "groups", "alice", "--json")).stdout)).toMatchObject([
      { group: "sports" },
    ]);
  });

  it("whispers to every connection of one user and nobody else", async () => {
    const carol1 = await connect(sample.wsUrl, token(env, "carol"));
    const carol2 = await connect(sample.wsUrl, token(env, "carol"));
    const dave = await connect(sample.wsUrl, token(env, "dave"));
    const eve = await connect(sample.wsUrl, token(env, "eve"));
    dave.send({ type: "whisper", to: "carol", text: "psst" });
    for (const c of [carol1, carol2]) {
      expect(await c.next((m) => m.text === "psst")).toMatchObject({
        type: "message",
        to: "carol",
        from: "dave",
      });
    }
    dave.send({ type: "whisper", to: "dave", text: "note to self" });
    await dave.next((m) => m.text === "note to self");
    expect(eve.messages.some((m) => m.type === "message")).toBe(false);
  });

  it("joins open groups only, persists the join, and leaves with reason 'left'", async () => {
    const frank1 = await connect(sample.wsUrl, token(env, "frank"));
    const frank2 = await connect(sample.wsUrl, token(env, "frank"));
    frank1.send({ type: "join", group: "admins" });
    expect(await frank1.next((m) => m.type === "error")).toEqual({
      type: "error",
      code: "forbidden",
      group: "admins",
    });
    frank1.send({ type: "join", group: "lobby" });
    for (const c of [frank1, frank2])
      await c.next((m) => m.type === "joined" && m.group === "lobby");
    expect((await admin(env, "groups", "frank")).stdout).toMatch(/^lobby\t/);
    expect((await admin(env, "groups", "frank")).stdout).not.toMatch(/admins/);

    frank2.send({ type: "leave", group: "lobby" });
    for (const c of [frank1, frank2])
      expect(await c.next(isRemoved("lobby"))).toMatchObject({ reason: "left" });
    expect((await admin(env, "count", "lobby")).stdout.trim()).toBe("0");
    frank2.send({ type: "leave", group: "lobby" });
    expect(await frank2.next((m) => m.type === "error")).toMatchObject({ code: "not_member" });
  });

  it("answers bad frames with bad_request and stays open; closes 1009 past 64 KiB", async () => {
    const grace = await connect(sample.wsUrl, token(env, "grace"));
    const bad = [
      "not json",
      "[]",
      "null",
      '"send"',
      JSON.stringify({ type: "nope" }),
      JSON.stringify({ type: "send", group: 42, text: "x" }),
      JSON.stringify({ type: "send", group: "lobby" }),
      JSON.stringify({ type: "join", group: "" }),
      JSON.stringify({ type: "join", group: "x".repeat(1025) }),
      JSON.stringify({ type: "whisper", to: ["bob"], text: "x" }),
    ];
    for (const frame of bad) grace.send(frame);
    grace.ws.send(Buffer.from([1, 2, 3]), { binary: true });
    await expect
      .poll(() => grace.messages.filter((m) => m.type === "error").length, { timeout: 5_000 })
      .toBe(bad.length + 1);
    expect(
      grace.messages.filter((m) => m.type === "error").every((m) => m.code === "bad_request"),
    ).toBe(true);
    grace.send({ type: "join", group: "lobby" });
    await grace.next((m) => m.type === "joined");

    grace.send({ type: "send", group: "lobby", text: "x".repeat(64 * 1024) });
    expect((await grace.closed).code).toBe(1009);
  });

  it("refuses the upgrade with 401 for every bad token", async () => {
    const bearer = (t: string) => ({ authorization: `Bearer ${t}` });
    const cases = badTokens(env);
    for (const [name, headers] of Object.entries(cases)) {
      expect(await upgradeStatus(sample.wsUrl, headers), name).toBe(401);
    }
    expect(
      await upgradeStatus(
        `${sample.wsUrl}?access_token=${token(env, "alice", { expiresIn: -10 })}`,
      ),
    ).toBe(401);
    expect(await upgradeStatus(sample.wsUrl, bearer(token(env, "alice")))).toBe("open");
    expect(await upgradeStatus(`${sample.wsUrl}?access_token=${token(env, "alice")}`)).toBe("open");
    expect(await upgradeStatus(sample.url.replace("http", "ws"), bearer(token(env, "alice")))).toBe(
      404,
    );
  });

  it("accepts a token minted by the admin script", async () => {
    const minted = await admin(env, "token", "nina", "--ttl", "15m");
    expect(minted.code).toBe(0);
    const nina = await connect(sample.wsUrl, minted.stdout.trim());
    expect(nina.welcome).toMatchObject({ userId: "nina", groups: [] });
    const json = JSON.parse((await admin(env, "token", "nina", "--json")).stdout);
    expect(json).toMatchObject({ userId: "nina", expiresIn: 3600 });
  });

  it("closes the socket with 4401 when the token expires", async () => {
    const short = await connect(sample.wsUrl, token(env, "henry", { expiresIn: 2 }));
    expect((await short.closed).code).toBe(4401);
  });

  it("makes a connection leave a group when its membership expires", async () => {
    const ivan = await connect(sample.wsUrl, token(env, "ivan"));
    expect((await admin(env, "grant", "ivan", "flash", "--expires", "3s")).code).toBe(0);
    await ivan.next((m) => m.type === "joined" && m.group === "flash");
    expect(await ivan.next(isRemoved("flash"))).toMatchObject({ reason: "expired" });
    const again = await connect(sample.wsUrl, token(env, "ivan"));
    expect(again.welcome.groups).toEqual([]);
  });

  it("answers /healthz", async () => {
    const res = await fetch(`${sample.url}/healthz`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ ok: true });
  });
});

describe("sample server restart", { timeout: 60_000 }, () => {
  it("gives reconnecting clients exactly their stored groups back", async () => {
    const env = sampleEnv(inject("azuriteConnectionString"));
    for (const [user, group] of [
      ["judy", "a"],
      ["judy", "b/c"],
      ["ken", "a"],
    ]) {
      expect((await admin(env, "grant", user as string, group as string)).code).toBe(0);
    }
    const first = await startSample(env);
    const judy = await connect(first.wsUrl, token(env, "judy"));
    const ken = await connect(first.wsUrl, token(env, "ken"));
    expect(judy.welcome.groups).toEqual(["a", "b/c"]);
    judy.send({ type: "join", group: "lobby" });
    await judy.next((m) => m.type === "joined");
    expect(await first.stop("SIGTERM")).toBe(0);
    expect((await judy.closed).code).toBe(1001);
    await ken.closed;

    const second = await startSample(env);
    try {
      const judyAgain = await connect(second.wsUrl, token(env, "judy"));
      const kenAgain = await connect(second.wsUrl, token(env, "ken"));
      expect(judyAgain.welcome.groups).toEqual(["a", "b/c", "lobby"]);
      expect(kenAgain.welcome.groups).toEqual(["a"]);
    } finally {
      await second.stop();
    }
  });
});

describe("npm start without a connection string", { timeout: 60_000 }, () => {
  it("starts its own Azurite on disk, serves, and stops both on SIGINT", async () => {
    const location = await mkdtemp(join(tmpdir(), "hub-membership-azurite-"));
    const env = {
      ...sampleEnv(""),
      AZURE_TABLES_CONNECTION_STRING: undefined,
      AZURITE_PORT: "0",
      AZURITE_LOCATION: location,
    };
    try {
      const sample = await startSample(env);
      try {
        expect(sample.output()).toMatch(/Azurite table service on 127\.0\.0\.1:(\d+)/);
        expect((await fetch(`${sample.url}/healthz`)).status).toBe(200);
        const client = await connect(sample.wsUrl, token(env, "lena"));
        client.send({ type: "join", group: "lobby" });
        await client.next((m) => m.type === "joined");
      } finally {
        expect(await sample.stop("SIGINT")).toBe(0);
      }
      const azuritePort = Number(
        /Azurite table service on 127\.0\.0\.1:(\d+)/.exec(sample.output())?.[1],
      );
      await expect(fetch(`http://127.0.0.1:${azuritePort}/`)).rejects.toThrow();
    } finally {
      await rm(location, { recursive: true, force: true });
    }
  });

  it("refuses a bad configuration with one clear line and exit code 1", async () => {
    const sample = startSample({ PORT: "99999", JWT_SECRET: "short" });
    await expect(sample).rejects.toThrow(/configuration error: (PORT|JWT_SECRET)/);
  });
});

describe("a storage that refuses the key", { timeout: 60_000 }, () => {
  const wrongKey = () =>
    inject("azuriteConnectionString").replace(
      /AccountKey=[^;]+/,
      `AccountKey=${Buffer.from("not the key".padEnd(64, "!")).toString("base64")}`,
    );
  const refused =
    /^configuration error: (AZURE_TABLES_CONNECTION_STRING: )?Azure Table Storage refused the account key or SAS \(AuthorizationFailure\)/m;

  it("stops the sample with one clear line, before it listens", async () => {
    const env = sampleEnv(inject("azuriteConnectionString"));
    const started = startSample({ ...env, AZURE_TABLES_CONNECTION_STRING: wrongKey() });
    const error = await started.then(
      () => expect.fail("the sample started"),
      (e: Error) => e.message,
    );
    expect(error).toMatch(refused);
    expect(error).not.toMatch(/\n\s+at /); // no stack
  });

  it("makes the admin script say so and exit 1", async () => {
    const env = sampleEnv(inject("azuriteConnectionString"));
    for (const args of [
      ["grant", "alice", "room"],
      ["members", "room"],
    ]) {
      const run = await admin({ ...env, AZURE_TABLES_CONNECTION_STRING: wrongKey() }, ...args);
      expect(run.code).toBe(1);
      expect(run.stderr.trim().split("\n")).toHaveLength(1);
      expect(run.stderr).toMatch(refused);
    }
  });
});

describe("admin script", { timeout: 60_000 }, () => {
  it("repair finds rows whose twin is missing, --dry-run changes nothing", async () => {
    const env = sampleEnv(inject("azuriteConnectionString"));
    expect((await admin(env, "grant", "olga", "room")).code).toBe(0);
    expect((await admin(env, "grant", "pete", "room")).code).toBe(0);
    // What a crash between two writes leaves: a lost group-side row, and an orphan one.
    const table = TableClient.fromConnectionString(
      inject("azuriteConnectionString"),
      env.MEMBERSHIP_TABLE,
      {
        allowInsecureConnection: true,
      },
    );
    await table.deleteEntity("g:room", "olga");
    await table.deleteEntity("u:pete", "room");
    expect((await admin(env, "count", "room")).stdout.trim()).toBe("1"); // pete, wrongly

    const dry = await admin(env, "repair", "--dry-run", "--json");
    expect(dry.code).toBe(0);
    expect(JSON.parse(dry.stdout)).toMatchObject({
      dryRun: true,
      indexRestored: [{ userId: "olga", group: "room" }],
      orphansTooRecent: 1,
    });
    expect((await admin(env, "count", "room")).stdout.trim()).toBe("1");

    const fixed = await admin(env, "repair");
    expect(fixed.code).toBe(0);
    expect(fixed.stdout).toMatch(
      /1 missing group-side row\(s\) were restored\n {2}"olga" in "room"/,
    );
    expect((await admin(env, "members", "room")).stdout).toMatch(/^olga\t/);
    expect((await admin(env, "members", "room")).stdout).toMatch(/^pete\t/m); // recent: left alone
  });

  it("exits 0, 1 and 2 as documented, with --help and --json", async () => {
    const env = sampleEnv(inject("azuriteConnectionString"));
    const ok = await admin(env, "grant", "mike", "ops", "--expires", "2h", "--json");
    expect(ok.code).toBe(0);
    expect(JSON.parse(ok.stdout)).toMatchObject({ ok: true, userId: "mike", group: "ops" });
    expect(JSON.parse((await admin(env, "count", "ops", "--json")).stdout)).toEqual({
      group: "ops",
      count: 1,
    });
    expect((await admin(env, "members", "ops")).stdout).toMatch(/^mike\texpires /);
    expect((await admin(env, "remove-user", "mike", "--json")).stdout).toContain('"removed":1');
    expect((await admin(env, "delete-group", "ops")).code).toBe(0);

    for (const args of [
      [],
      ["frobnicate"],
      ["grant", "mike"],
      ["revoke", "a", "b", "c"],
      ["count", "x", "--ttl", "1h"],
      ["grant", "a", "b", "--expires", "yesterday"],
      ["grant", "", "b"],
      ["token", "x", "--ttl", "0s"],
      ["groups", "a", "--bogus"],
    ]) {
      const run = await admin(env, ...args);
      expect(run.code, args.join(" ")).toBe(2);
      expect(run.stderr).toMatch(/error/);
    }
    const help = await admin(env, "revoke", "--help");
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/revoke <user> <group>/);

    const down = await admin(
      {
        ...env,
        AZURE_TABLES_CONNECTION_STRING: inject("azuriteConnectionString").replace(/:\d+\//, ":1/"),
      },
      "groups",
      "mike",
    );
    expect(down.code).toBe(1);
    expect(down.stderr.trim().split("\n")).toHaveLength(1);
    expect(down.stderr).toMatch(/unavailable/);
  });
});
