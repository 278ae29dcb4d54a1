import { describe, it } from "vitest";
import { MemoryHistory } from "../adapters/history/memory.js";
import { checkRecent } from "./support/history-recent.js";
import { checkResumeProperty } from "./support/resume-model.js";

describe("resume after a reconnect, on the in-process history", () => {
  it("replays exactly the messages of the membership, or says recovered: false", async () => {
    await checkResumeProperty(async (store) => new MemoryHistory({ store }), {
      runs: Number(process.env.RESUME_RUNS ?? 10_000),
      seed: Number(process.env.FUZZ_SEED ?? 42),
    });
  }, 300_000);

  it("reads a group's most recent messages with the marks among them", async () => {
    await checkRecent(async (store) => new MemoryHistory({ store }));
  });
});
