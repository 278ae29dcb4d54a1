import { describe, expect, it } from "vitest";
import { groupPartition, toKey, userPartition } from "../adapters/stores/azure-keys.js";
import { HOSTILE_NAMES } from "../adapters/testing/index.js";

/** Only these ever reach a key: no `/ \\ # ?`, control characters, `'` or `%`. */
const KEY_CHARACTERS = /^[A-Za-z0-9_.\-!~:]+$/;

describe("Azure key encoding", () => {
  const names = [...HOSTILE_NAMES, ...Array.from({ length: 2_000 }, (_, i) => `n${i}`)];

  it("maps distinct names to distinct keys", () => {
    const keys = new Map<string, string>();
    for (const name of names) {
      const key = toKey(name);
      expect(keys.get(key), `${JSON.stringify(name)} collides`).toBeUndefined();
      keys.set(key, name);
    }
  });

  it("keeps keys within Azurite's 512 units and made of safe characters only", () => {
    for (const name of names) {
      for (const key of [userPartition(name), groupPartition(name)]) {
        expect(key.length).toBeLessThanOrEqual(512);
        expect(key).toMatch(KEY_CHARACTERS);
      }
    }
  });

  it("keeps simple names readable and hashes only what cannot fit", () => {
    expect(toKey("sports-2024_v1.0")).toBe("sports-2024_v1.0");
    expect(toKey("a b")).toBe("a!0020b");
    expect(toKey("A")).not.toBe(toKey("a"));
    expect(toKey("x".repeat(500))).toBe("x".repeat(500));
    expect(toKey("x".repeat(501))).toMatch(/^~[A-Za-z0-9_-]{43}$/);
    expect(toKey("\\".repeat(1_024))).toMatch(/^~/);
    expect(toKey("\\".repeat(100))).toMatch(/^(!005c){100}$/);
  });
});
