import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { type RedisServer, startRedis } from "../support/redis.js";
import {
  admin,
  type Client,
  grant,
  type RunningSample,
  resumeFrom,
  type SampleEnv,
  sampleEnv,
  sleep,
  startSample,
  token,
  useClients,
} from "../support/sample.js";

/**
 * `npm run test:redis`: the message history on Redis Streams, shared by two sample servers: a
 * client resumes on the other server, even after its own was killed.
 */
const connect = useClients();

const texts = (client: Client, group: string) =>
  client.messages.filter((m) => m.type === "message" && m.group === group).map((m) => m.text);

describe("resume on another server, on Redis", { timeout: 120_000 }, () => {
  let redis: RedisServer;
  let env: SampleEnv;
  let servers: RunningSample[];
  beforeAll(async () => {
    redis = await startRedis();
    env = {
      ...sampleEnv(inject("azuriteConnectionString")),
      REDIS_URL: redis.url,
      RATE_MESSAGES: "1000",
      RATE_USER_MESSAGES: "1000",
    };
    servers = await Promise.all([startSample(env), startSample(env)]);
  });
  afterAll(async () => {
    await Promise.all((servers ?? []).map((s) => s.stop()));
    await redis?.stop();
  });

  it("the first server SIGKILLed: the client resumes on the second without losing a message", async () => {
    const [first, second] = servers as [RunningSample, RunningSample];
    await grant(env, "ada", "Killed");
    await grant(env, "bo", "Killed");
    const ada = await connect(first.wsUrl, token(env, "ada"));
    const bo = await connect(second.wsUrl, token(env, "bo"));
    bo.send({ type: "send", group: "Killed", text: "before" });
    await ada.next((m) => m.text === "before");

    first.process.kill("SIGKILL");
    const sent: string[] = [];
    for (let i = 0; i < 100; i++) {
      sent.push(`gap ${i}`);
      bo.send({ type: "send", group: "Killed", text: `gap ${i}` });
      await sleep(30);
    }
    await bo.next((m) => m.text === sent.at(-1));
    const back = await connect(second.wsUrl, token(env, "ada"), "header", resumeFrom(ada));
    expect(await back.next((m) => m.type === "resumed")).toMatchObject({
      resumed: true,
      groups: [{ group: "Killed", recovered: true }],
    });
    await back.next((m) => m.text === sent.at(-1));
    expect(texts(back, "Killed")).toEqual(sent);

    // Revoked while away, from the admin script: nothing more of the group, and told so.
    back.ws.terminate();
    expect((await admin(env, "revoke", "ada", "Killed")).code).toBe(0);
    await sleep(200);
    bo.send({ type: "send", group: "Killed", text: "after the revoke" });
    await bo.next((m) => m.text === "after the revoke");
    const again = await connect(second.wsUrl, token(env, "ada"), "header", resumeFrom(back));
    expect(await again.next((m) => m.type === "resumed")).toMatchObject({ removed: ["Killed"] });
    await sleep(300);
    expect(texts(again, "Killed")).toEqual([]);
  });
});
