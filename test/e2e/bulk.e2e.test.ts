import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parse } from "csv-parse/sync";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { HOSTILE_NAMES } from "../../adapters/testing/index.js";
import { admin, type SampleEnv, sampleEnv } from "../support/sample.js";

/** `npm run admin -- import / export` on small files: formats, quoting, validation. */
describe("admin import and export", { timeout: 60_000 }, () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "hub-membership-bulk-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const file = async (name: string, text: string) => {
    const path = join(dir, name);
    await writeFile(path, text);
    return path;
  };
  const run = async (env: SampleEnv, ...args: string[]) => {
    const result = await admin(env, ...args);
    expect(result.code, result.stderr).toBe(0);
    return result;
  };
  /** Every stored membership, as sorted `[userId, group, expiresAt]` triples, through export. */
  const stored = async (env: SampleEnv) => {
    const { stdout } = await run(env, "export", "--json");
    return stdout
      .split("\n")
      .filter(Boolean)
      .map(
        (line) => JSON.parse(line) as { userId: string; group: string; expiresAt: string | null },
      )
      .map((m) => JSON.stringify([m.userId, m.group, m.expiresAt]))
      .sort();
  };
  const later = new Date(Date.now() + 86_400_000).toISOString();
  // Names that need RFC 4180 quoting or JSON escaping, and ones that break naive stores.
  const names = HOSTILE_NAMES.filter((n) => n.length < 100);
  const rows = names.map((userId, i) => ({
    userId,
    group: names[(i + 7) % names.length] as string,
    expiresAt: i % 3 === 0 ? later : null,
  }));
  const expected = rows.map((r) => JSON.stringify([r.userId, r.group, r.expiresAt])).sort();
  /** A name as the export writes it: a leading `'` before what a spreadsheet would run. */
  const guarded = (name: string) => (/^[=+\-@\t\r']/.test(name) ? `'${name}` : name);
  const csvField = (value: string) =>
    /[",\r\n]/.test(value) ? `"${value.replaceAll('"', '""')}"` : value;

  it("imports CSV with RFC 4180 quoting and any valid name; export reproduces it as CSV and NDJSON", async () => {
    const env = sampleEnv(inject("azuriteConnectionString"));
    const csv = [
      "group,userId,expiresAt", // any column order
      ...rows.map((r) =>
        [guarded(r.group), guarded(r.userId), r.expiresAt ?? ""].map(csvField).join(","),
      ),
    ].join("\r\n");
    const imported = await run(env, "import", await file("hostile.csv", csv), "--json");
    expect(JSON.parse(imported.stdout)).toMatchObject({
      ok: true,
      written: rows.length,
      invalid: 0,
    });
    expect(await stored(env)).toEqual(expected);

    const out = join(dir, "out.csv");
    await run(env, "export", out);
    const exported = parse(await readFile(out), { columns: true, bom: true }) as Array<
      Record<string, string>
    >;
    const unguarded = (cell: string | undefined) => (cell?.startsWith("'") ? cell.slice(1) : cell);
    expect(exported.every((r) => r.userId === guarded(unguarded(r.userId) ?? ""))).toBe(true);
    expect(
      exported
        .map((r) => JSON.stringify([unguarded(r.userId), unguarded(r.group), r.expiresAt || null]))
        .sort(),
    ).toEqual(expected);
    // The export imports again into another table, to the same memberships.
    const copy = sampleEnv(inject("azuriteConnectionString"));
    await run(copy, "import", out);
    expect(await stored(copy)).toEqual(expected);
  });

  it("imports NDJSON the same", async () => {
    const env = sampleEnv(inject("azuriteConnectionString"));
    const ndjson = `${rows.map((r) => JSON.stringify(r)).join("\n")}\n\n`;
    await run(env, "import", await file("hostile.ndjson", ndjson));
    expect(await stored(env)).toEqual(expected);
  });

  it("stops at the first bad row before writing anything, naming its line; --skip-invalid reports each and imports the rest", async () => {
    const env = sampleEnv(inject("azuriteConnectionString"));
    const csv = [
      "userId,group,expiresAt",
      "alice,Sports,",
      'bob,"multi\nline",', // lines 3-4
      ",Sports,", // 5: no user
      "carol,Sports,2001-01-01T00:00:00Z", // 6: already expired
      "dave,Sports,tomorrow", // 7: not a date
      "erin,Sports", // 8: a field short
      `frank,${"x".repeat(1025)},`, // 9: too long
      "grace,Chess,",
    ].join("\n");
    const path = await file("bad.csv", csv);
    const refused = await admin(env, "import", path);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toBe(
      "error: line 5: userId must be 1 to 1,024 UTF-16 code units, well-formed\n",
    );
    expect(await stored(env)).toEqual([]);

    const skipped = await run(env, "import", path, "--skip-invalid");
    expect(skipped.stderr.split("\n").filter((l) => l.startsWith("line "))).toEqual([
      "line 5: userId must be 1 to 1,024 UTF-16 code units, well-formed",
      "line 6: expiresAt 2001-01-01T00:00:00.000Z is in the past",
      'line 7: expiresAt must be an ISO 8601 date or empty, got "tomorrow"',
      "line 8: expected 3 fields, got 2",
      "line 9: group must be 1 to 1,024 UTF-16 code units, well-formed",
    ]);
    expect(skipped.stdout).toBe("imported 3 row(s); 5 invalid row(s) skipped\n");
    expect(await stored(env)).toEqual(
      [
        ["alice", "Sports", null],
        ["bob", "multi\nline", null],
        ["grace", "Chess", null],
      ]
        .map((t) => JSON.stringify(t))
        .sort(),
    );

    const ndjson = await file("bad.ndjson", '{"userId":"a","group":"g"}\nnot json\n[1]\n');
    const bad = await admin(env, "import", ndjson, "--skip-invalid");
    expect(bad.stderr).toContain("line 2: not valid JSON");
    expect(bad.stderr).toContain("line 3: not a JSON object");
  });

  it("refuses a header without userId and group, a missing file, and bad usage", async () => {
    const env = sampleEnv(inject("azuriteConnectionString"));
    const header = await admin(
      env,
      "import",
      await file("header.csv", "user,group\nalice,Sports\n"),
    );
    expect(header.code).toBe(1);
    expect(header.stderr).toMatch(/^error: line 1: the header must name userId, group/);
    const missing = await admin(env, "import", join(dir, "nowhere.csv"));
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/ENOENT|no such file/);
    expect((await admin(env, "import")).code).toBe(2);
    expect((await admin(env, "export", "a", "b")).code).toBe(2);
    expect((await admin(env, "grant", "alice", "Sports", "--skip-invalid")).code).toBe(2);
    expect(await stored(env)).toEqual([]);
  });

  it("exports no cell a spreadsheet would run, and writes files only its owner reads", async () => {
    const env = sampleEnv(inject("azuriteConnectionString"));
    const formulas = ['=HYPERLINK("http://x","y")', "@SUM(A1)", "+1", "-2", "'quoted", "\tTab"];
    for (const name of formulas) await run(env, "grant", "--", name, "=cmd|' /C calc'!A0");
    const out = join(dir, "formulas.csv");
    await run(env, "export", out);
    const cells = (parse(await readFile(out), { bom: true }) as string[][]).slice(1);
    for (const [userId, group] of cells) {
      expect(userId?.startsWith("'"), userId).toBe(true);
      expect(group).toBe("'=cmd|' /C calc'!A0");
    }
    expect((await stat(out)).mode & 0o777).toBe(0o600);
    // And the export imports again exactly.
    const copy = sampleEnv(inject("azuriteConnectionString"));
    await run(copy, "import", out);
    expect(await stored(copy)).toEqual(await stored(env));
  });

  it("prints names as text without forging lines or driving the terminal; --json exactly", async () => {
    const env = sampleEnv(inject("azuriteConnectionString"));
    const forged = "eve\tnever\nmallory\tforever\u001b[2J\u202egnp.exe";
    await run(env, "grant", forged, "room");
    await run(env, "grant", "bob", "room");
    const { stdout } = await run(env, "members", "room");
    expect(stdout.trimEnd().split("\n")).toEqual([
      "bob\tnever expires",
      "eve\\u{9}never\\u{a}mallory\\u{9}forever\\u{1b}[2J\\u{202e}gnp.exe\tnever expires",
    ]);
    const json = await run(env, "members", "room", "--json");
    expect((JSON.parse(json.stdout) as Array<{ userId: string }>).map((m) => m.userId)).toEqual([
      "bob",
      forged,
    ]);
  });
});
