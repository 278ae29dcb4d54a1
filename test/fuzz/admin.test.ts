/**
 * Fuzzing the admin script (`npm run admin -- …`): junk arguments, and import files (CSV and
 * NDJSON) with junk rows. Each input runs the real script, on a table of its own, in a directory
 * of its own: it must exit within 30 s with 0, 1 or 2, say what went wrong in one line and no
 * stack trace, and change the store only as a command that succeeded says (a grant, a revoke,
 * an import: every valid row, or nothing when a bad row stops it). About 1 s an input: few runs.
 */
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { AzureTableMembershipStore } from "../../adapters/index.js";
import { type SampleEnv, sampleEnv } from "../support/sample.js";
import { adminArgs, type Grant, type ImportFile, importFile } from "./arbitraries.js";
import {
  type AdminRun,
  fatalLines,
  fuzz,
  memberships,
  runAdmin,
  runs,
  testTimeout,
} from "./harness.js";
import { isName } from "./oracles.js";

const ARG_RUNS = runs(8);
const IMPORT_RUNS = runs(8);
const PER_RUN_MS = 4_000;

/** The memberships every table starts with. */
const SEEDED: Array<[string, string]> = [
  ["alice", "Sports"],
  ["bob", "Sports"],
  ["alice", "lobby"],
];

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "hub-membership-fuzz-admin-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

let inputs = 0;

/** A fresh table with the seeded memberships, and a directory for the script to run in. */
async function fresh() {
  const env: SampleEnv = sampleEnv(inject("azuriteConnectionString"));
  const store = AzureTableMembershipStore.fromConnectionString(
    env.AZURE_TABLES_CONNECTION_STRING ?? "",
    {
      tableName: env.MEMBERSHIP_TABLE,
    },
  );
  for (const [user, group] of SEEDED) await store.addToGroup(user, group);
  const cwd = join(dir, `input-${++inputs}`);
  await mkdir(cwd);
  return { env, store, cwd };
}

/** The store's memberships as sorted `[userId, group]` pairs. */
const pairs = (rows: readonly string[]) =>
  rows.map((row) => JSON.stringify((JSON.parse(row) as unknown[]).slice(0, 2))).sort();

/** A run that ended as the script promises: in time, 0/1/2, one line on failure, no stack trace. */
function expectClean(run: AdminRun) {
  const output = `exit ${run.code}\nstderr: ${run.stderr}\nstdout: ${run.stdout.slice(0, 500)}`;
  expect([0, 1, 2], output).toContain(run.code);
  expect(fatalLines(run.stderr), output).toEqual([]);
  if (run.code !== 0) expect(run.stderr, output).toMatch(/^(configuration )?error: \S/);
}

describe("fuzzing the admin script", () => {
  it(`answers ${ARG_RUNS} command lines of junk arguments, changing only what a success says`, {
    timeout: testTimeout(ARG_RUNS, PER_RUN_MS),
  }, async () => {
    await fuzz(
      fc.asyncProperty(adminArgs, async (args) => {
        const { env, store, cwd } = await fresh();
        try {
          await writeFile(join(cwd, "empty.csv"), "");
          const before = pairs(await memberships(store));
          const run = await runAdmin(env, args, cwd);
          expectClean(run);
          const parsed = parse(args);
          if (parsed === undefined) expect(run.code, "a command line that does not parse").toBe(2);
          const expected = run.code === 0 && parsed ? effect(parsed, before) : before;
          expect(pairs(await memberships(store)), "the store").toEqual(expected);
        } finally {
          await store.close();
        }
      }),
      ARG_RUNS,
      { perRunMs: PER_RUN_MS },
    );
  });

  it(`imports ${IMPORT_RUNS} files with junk rows: every valid row, or nothing`, {
    timeout: testTimeout(IMPORT_RUNS, PER_RUN_MS),
  }, async () => {
    await fuzz(
      fc.asyncProperty(importFile, async (file) => {
        const { env, store, cwd } = await fresh();
        try {
          const path = join(cwd, `memberships${file.extension}`);
          await writeFile(path, render(file));
          const before = await memberships(store);
          const flags = file.skipInvalid ? ["--skip-invalid"] : [];
          const run = await runAdmin(env, ["import", path, "--json", ...flags], cwd);
          expectClean(run);
          const after = await memberships(store);
          const outcome = expectedImport(file);
          if (outcome === "refused") {
            expect(run.code, `a file that must be refused (${run.stderr})`).toBe(1);
            expect(after, "the store after a refused import").toEqual(before);
            return;
          }
          expect(run.code, `a file that imports (${run.stderr})`).toBe(0);
          const report = JSON.parse(run.stdout.trim().split("\n").at(-1) ?? "{}");
          expect(report, "the import's report").toMatchObject({
            ok: true,
            written: outcome.grants.length,
            invalid: outcome.invalid,
          });
          expect(pairs(after), "the store after the import").toEqual(
            [...new Set([...pairs(before), ...outcome.grants.map((g) => pair(g))])].sort(),
          );
          for (const row of after) {
            const [userId, group, expiresAt] = JSON.parse(row) as [string, string, string | null];
            const rows = outcome.grants.filter((g) => g.userId === userId && g.group === group);
            if (rows.length > 0)
              expect(
                rows.map((g) => g.expiresAt),
                `${row}'s expiry`,
              ).toContain(expiresAt);
          }
        } finally {
          await store.close();
        }
      }),
      IMPORT_RUNS,
      { perRunMs: PER_RUN_MS },
    );
  });
});

const pair = (g: { userId: string; group: string }) => JSON.stringify([g.userId, g.group]);

/** The command line as the script reads it (sample/admin.ts's options), or undefined. */
function parse(args: readonly string[]) {
  try {
    // What the script gets: a process's arguments are UTF-8, lone surrogates become U+FFFD.
    const argv = args.map((arg) => Buffer.from(arg).toString());
    return parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        json: { type: "boolean" },
        help: { type: "boolean", short: "h" },
        expires: { type: "string" },
        ttl: { type: "string" },
        "dry-run": { type: "boolean" },
        "skip-invalid": { type: "boolean" },
      },
    }).positionals;
  } catch {
    return undefined;
  }
}

/** The pairs after a command that succeeded (README, "Admin script"). */
function effect([command, first = "", second = ""]: string[], before: string[]): string[] {
  const rows = before.map((row) => JSON.parse(row) as [string, string]);
  const keep = (predicate: (row: [string, string]) => boolean) =>
    rows.filter(predicate).map((row) => JSON.stringify(row));
  switch (command) {
    case "grant":
      return [...new Set([...before, JSON.stringify([first, second])])].sort();
    case "revoke":
      return keep(([u, g]) => u !== first || g !== second);
    case "remove-user":
      return keep(([u]) => u !== first);
    case "delete-group":
      return keep(([, g]) => g !== first);
    default:
      return before;
  }
}

/** A file's text, as the generator described it. */
function render(file: ImportFile): string {
  const lines: string[] = [];
  const columns = Array.isArray(file.header) ? (file.header as string[]) : undefined;
  if (file.format === "csv") {
    lines.push(columns ? columns.join(",") : (file.header as { junk: string }).junk);
    for (const row of file.rows) {
      if ("grant" in row) {
        const values: Record<string, string> = {
          userId: row.grant.userId,
          group: row.grant.group,
          expiresAt: row.grant.expiresAt ?? "",
        };
        lines.push((columns ?? []).map((c) => csvField(values[c.trim()] ?? "")).join(","));
      } else
        lines.push("blank" in row ? row.blank : "invalid" in row ? row.invalid : row.unreadable);
    }
  } else {
    for (const row of file.rows) {
      if ("grant" in row) lines.push(JSON.stringify(row.grant));
      else lines.push("blank" in row ? row.blank : "invalid" in row ? row.invalid : row.unreadable);
    }
  }
  return `${file.bom ? "\ufeff" : ""}${lines.join(file.eol)}${file.eol}`;
}

/**
 * A CSV cell as export writes it (sample/README.md): a name a spreadsheet would run as a formula,
 * or that starts with `'`, behind a leading `'` (the import takes it off); RFC 4180 quoting.
 */
const csvField = (value: string) => {
  const guarded = /^[=+\-@\t\r']/.test(value) ? `'${value}` : value;
  return /[",\r\n]/.test(guarded) ? `"${guarded.replaceAll('"', '""')}"` : guarded;
};

/** What importing a file must do: refuse it whole, or import these grants (with a count of bad rows). */
function expectedImport(file: ImportFile): "refused" | { grants: Grant[]; invalid: number } {
  if (!Array.isArray(file.header) && file.format === "csv") return "refused";
  if (file.rows.some((row) => "unreadable" in row)) return "refused";
  const invalid = file.rows.filter((row) => "invalid" in row).length;
  if (invalid > 0 && !file.skipInvalid) return "refused";
  const dropsExpiry =
    file.format === "csv" && !(file.header as string[]).some((c) => c.trim() === "expiresAt");
  const grants = file.rows.flatMap((row) =>
    "grant" in row && isName(row.grant.userId) && isName(row.grant.group)
      ? [dropsExpiry ? { ...row.grant, expiresAt: null } : row.grant]
      : [],
  );
  return { grants, invalid };
}
