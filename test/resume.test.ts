import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { MessageHistory } from "../adapters/history/history.js";
import { MemoryHistory } from "../adapters/history/memory.js";
import { MAX_POSITIONS, parseResume, resumeGroups } from "../adapters/history/resume.js";
import { type ResumeOutcome, Resumes } from "../adapters/history/resumes.js";
import { InMemoryMembershipStore, MembershipError } from "../adapters/index.js";

const history = (options: { maxEntries?: number; maxAgeMs?: number } = {}) =>
  new MemoryHistory({ store: new InMemoryMembershipStore(), ...options });
const text = (s: string) => Buffer.from(s);

describe("what a reconnecting client presents", () => {
  it("parseResume keeps exactly a since and positions, and nothing else", () => {
    expect(parseResume({ since: "e.1", positions: { a: "e.2", b: "" } })).toEqual({
      since: "e.1",
      positions: new Map([
        ["a", "e.2"],
        ["b", ""],
      ]),
    });
    for (const bad of [null, [], "x", 1, {}, { positions: [] }, { since: 1, positions: {} }])
      expect(parseResume(bad), JSON.stringify(bad)).toBeUndefined();
    expect(parseResume({ positions: { a: "x".repeat(101) } })).toBeUndefined();
    expect(parseResume({ positions: { "": "e.1" } })).toBeUndefined();
    const many = Object.fromEntries(Array.from({ length: 5_000 }, (_, i) => [`g${i}`, "e.1"]));
    expect(parseResume({ positions: many })?.positions.size).toBe(MAX_POSITIONS);
  });

  it("parseResume never throws, whatever JSON a client sends (fast-check)", () => {
    fc.assert(
      fc.property(fc.jsonValue(), (value) => {
        const parsed = parseResume(value);
        if (parsed !== undefined) expect(parsed.positions.size).toBeLessThanOrEqual(MAX_POSITIONS);
      }),
      { numRuns: 2_000, seed: 42 },
    );
  });
});

describe("MemoryHistory", () => {
  it("reads what came after a position, and says when it cannot prove it is all", async () => {
    const h = history({ maxEntries: 3 });
    const start = await h.position();
    const first = await h.publish("g", text("1"));
    await h.publish("g", text("2"));
    expect((await h.read("g", first)).entries).toMatchObject([{ payload: text("2") }]);
    expect((await h.read("g", start)).complete).toBe(true);
    for (const n of ["3", "4", "5"]) await h.publish("g", text(n));
    // "1" and "2" were trimmed: from `start`, the read cannot be complete.
    expect((await h.read("g", start)).complete).toBe(false);
    const now = await h.position();
    await h.reset();
    expect((await h.read("g", now)).complete).toBe(true);
    expect((await h.read("g", first)).complete).toBe(false);
    // Another epoch's position is not an error: nothing is replayed, and it is said.
    expect(await h.read("g", "another.1")).toMatchObject({ entries: [], complete: false });
    for (const bad of ["", "nodot", "e.-1", "e.1.5", "e.x"])
      await expect(h.read("g", bad), bad).rejects.toBeInstanceOf(MembershipError);
    await h.close();
  });

  it("marks only groups with entries: a bulk grant costs nothing per grant", async () => {
    const h = history();
    const zero = (await h.position()).replace(/\d+$/, "0"); // before everything
    await h.mark("quiet", "added", "u");
    expect(await h.read("quiet", zero)).toMatchObject({ entries: [], complete: true });
    await h.publish("busy", text("m"));
    await h.mark("busy", "removed", "u");
    expect((await h.read("busy", zero)).entries).toMatchObject([
      { payload: text("m") },
      { type: "removed", userId: "u" },
    ]);
    await h.close();
  });
});

describe("resumeGroups", () => {
  it("reads at most 1,000 groups, those with a position first, and one position for the rest", async () => {
    const h = history();
    let reads = 0;
    let positions = 0;
    const counting: MessageHistory = Object.assign(Object.create(h) as MessageHistory, {
      read: (group: string, position: string) => {
        reads++;
        return h.read(group, position);
      },
      position: () => {
        positions++;
        return h.position();
      },
    });
    const since = await h.position();
    const groups = Array.from({ length: 3_000 }, (_, i) => `g${i}`);
    const result = await resumeGroups(
      counting,
      "u",
      groups,
      { since, positions: new Map([["g2999", since]]) },
      (error) => {
        throw error;
      },
    );
    expect(reads).toBe(MAX_POSITIONS);
    expect(positions).toBe(1);
    expect(result.find((r) => r.group === "g2999")?.recovered).toBe(true);
    // The others it did not present: granted while it was away, as far as it knows.
    expect(result.filter((r) => !r.recovered)).toHaveLength(2_999);
    await h.close();
  });
});

describe("Resumes", () => {
  it("replays at most its limits, keeping each group's newest messages, and says what it lost", async () => {
    const h = history();
    const resumes = new Resumes(
      h,
      (error) => {
        throw error;
      },
      { maxMessages: 3 },
    );
    const since = await h.position();
    for (const n of ["1", "2", "3", "4", "5"]) await h.publish("g", text(n));
    resumes.begin("c", "u", { since, positions: new Map([["g", since]]) });
    expect(resumes.join("c", "u", "g", "connect", () => undefined)).toBe(true);
    let outcome: ResumeOutcome | undefined;
    await resumes.finish("c", (o) => {
      outcome = o;
    });
    expect(outcome?.messages.map((m) => m.message.payload.toString())).toEqual(["3", "4", "5"]);
    expect(outcome?.groups).toMatchObject([{ group: "g", recovered: false }]);
    await h.close();
  });
});
