import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { AzureTableMembershipStore } from "../../adapters/index.js";
import { admin, type SampleEnv, sampleEnv } from "../support/sample.js";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const ROWS = 100_000;
const USERS = 1_000;

/**
 * A 100,000-row CSV (1,000 users × 100 groups whose names need quoting, every tenth with an
 * expiry) with a bad row every 2,000, of five kinds. Returns the file and the valid pairs.
 */
function file(): { csv: string; valid: Set<string>; bad: number[] } {
  const later = new Date(Date.now() + 30 * 86_400_000).toISOString();
  const lines = ["userId,group,expiresAt"];
  const valid = new Set<string>();
  const bad: number[] = [];
  const quote = (value: string) => `"${value.replaceAll('"', '""')}"`;
  for (let i = 0; i < ROWS; i++) {
    const userId = `user ${i % USERS}`;
    const group = `room, "${Math.floor(i / USERS)}"`;
    if (i % 2_000 === 999) {
      bad.push(lines.length + 1);
      lines.push(
        [
          `,${quote(group)},`,
          `${userId},${quote(group)},yesterday`,
          `${userId},${quote(group)},2001-01-01T00:00:00Z`,
          `${userId}`,
          `${userId},${"x".repeat(1025)},`,
        ][((i / 2_000) % 5) | 0] as string,
      );
      continue;
    }
    lines.push(`${userId},${quote(group)},${i % 10 === 0 ? later : ""}`);
    valid.add(JSON.stringify([userId, group]));
  }
  return { csv: `${lines.join("\r\n")}\r\n`, valid, bad };
}

describe("import of 100,000 rows, killed midway and run again", () => {
  let dir: string;
  let env: SampleEnv;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "hub-membership-import-"));
    env = sampleEnv(inject("azuriteConnectionString"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("stores exactly the valid rows once, and export reproduces them", {
    timeout: 900_000,
  }, async () => {
    const { csv, valid, bad } = file();
    const path = join(dir, "memberships.csv");
    await writeFile(path, csv);

    // The first run: SIGKILLed once progress says 30,000 rows are stored.
    const first = spawn(
      process.execPath,
      ["--import", "tsx", "sample/admin.ts", "import", path, "--skip-invalid"],
      { cwd: ROOT, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] },
    );
    let stderr = "";
    const started = Date.now();
    await new Promise<void>((resolve, reject) => {
      first.stderr.on("data", (chunk: Buffer) => {
        stderr += chunk;
        const written = [...stderr.matchAll(/import: (\d+) rows written/g)].at(-1)?.[1];
        if (Number(written) >= 30_000) resolve();
      });
      first.once("exit", () => reject(new Error(`the import ended before the kill:\n${stderr}`)));
    });
    first.kill("SIGKILL");
    await once(first, "exit");
    const killedAfter = Date.now() - started;
    const checkpoint = JSON.parse(await readFile(`${path}.import-progress.json`, "utf8")) as {
      line: number;
      written: number;
    };
    expect(checkpoint.written).toBeGreaterThanOrEqual(30_000);
    expect(checkpoint.written).toBeLessThan(valid.size);
    const reportedFirst = stderr.split("\n").filter((l) => /^line \d+: /.test(l));
    expect(reportedFirst.length).toBeGreaterThan(0);

    // The second run goes on after the checkpoint and finishes.
    const again = Date.now();
    const second = await admin(env, "import", path, "--skip-invalid", "--json");
    expect(second.code, second.stderr).toBe(0);
    const report = JSON.parse(second.stdout) as { written: number; resumedAfterLine: number };
    expect(report.resumedAfterLine).toBe(checkpoint.line);
    expect(second.stderr).toContain(`resuming after line ${checkpoint.line}`);
    const reportedSecond = second.stderr
      .split("\n")
      .filter((l) => /^line \d+: /.test(l))
      .map((l) => Number(/^line (\d+)/.exec(l)?.[1]));
    // Each bad row is reported with its line, by one run or the other (or both: rows after the
    // checkpoint the first run had reached).
    const reported = new Set([
      ...reportedFirst.map((l) => Number(/^line (\d+)/.exec(l)?.[1])),
      ...reportedSecond,
    ]);
    expect([...reported].sort((a, b) => a - b)).toEqual(bad);
    await expect(stat(`${path}.import-progress.json`)).rejects.toMatchObject({ code: "ENOENT" });
    console.log(
      `import of ${ROWS.toLocaleString("en")} rows: killed after ${killedAfter} ms at ` +
        `${checkpoint.written} stored, the rest in ${Date.now() - again} ms`,
    );

    // Exactly the valid rows, once each: on the user side (export) and the group side (counts).
    const exported = await admin(env, "export", "--json");
    expect(exported.code, exported.stderr).toBe(0);
    const lines = exported.stdout.split("\n").filter(Boolean);
    const pairs = lines.map((line) => {
      const m = JSON.parse(line) as { userId: string; group: string };
      return JSON.stringify([m.userId, m.group]);
    });
    expect(pairs.length).toBe(valid.size);
    expect(new Set(pairs)).toEqual(valid);
    const store = AzureTableMembershipStore.fromConnectionString(
      inject("azuriteConnectionString"),
      { tableName: env.MEMBERSHIP_TABLE },
    );
    try {
      let members = 0;
      for (let g = 0; g < ROWS / USERS; g++) members += await store.countMembers(`room, "${g}"`);
      expect(members).toBe(valid.size);
    } finally {
      await store.close();
    }
  });
});
