import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, it } from "vitest";
import { RedisHistory } from "../adapters/redis/index.js";
import { checkRecent } from "./support/history-recent.js";
import { type RedisServer, startRedis } from "./support/redis.js";
import { checkResumeProperty } from "./support/resume-model.js";

let redis: RedisServer;
beforeAll(async () => {
  redis = await startRedis();
});
afterAll(() => redis?.stop());

describe("resume after a reconnect, on Redis Streams", () => {
  it("replays exactly the messages of the membership, or says recovered: false", async () => {
    await checkResumeProperty(
      async (store) => {
        const history = new RedisHistory({
          url: redis.url,
          store,
          prefix: `run:${randomBytes(6).toString("hex")}`,
        });
        await history.start();
        return history;
      },
      {
        runs: Number(process.env.RESUME_RUNS ?? 10_000),
        seed: Number(process.env.FUZZ_SEED ?? 42),
        // Whatever a step set off (a replay read, a message on its way) has come back.
        settle: async (history) => {
          for (let i = 0; i < 3; i++) {
            await history.settled();
            await new Promise((resolve) => setImmediate(resolve));
          }
        },
      },
    );
  }, 600_000);

  it("reads a group's most recent messages with the marks among them", async () => {
    await checkRecent(async (store) => {
      const history = new RedisHistory({
        url: redis.url,
        store,
        prefix: `recent:${randomBytes(6).toString("hex")}`,
      });
      await history.start();
      return history;
    });
  });
});
