/**
 * The admin script's `import` and `export`: memberships from and to CSV (RFC 4180, a header row
 * `userId,group,expiresAt`) or NDJSON (`{"userId","group","expiresAt"}` a line), streamed both
 * ways, so a file of any size passes in constant memory.
 */
import { createReadStream, createWriteStream } from "node:fs";
import { chmod, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { createInterface } from "node:readline";
import { Readable, Transform, type Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { parse } from "csv-parse";
import { stringify } from "csv-stringify";
import { isValidName, type MembershipGrant, type MembershipStore } from "../adapters/index.js";

export type Format = "csv" | "ndjson";

/** A row of the file: its line, where it ends (bytes), and the grant or what is wrong with it. */
type Row = { line: number; end: number } & ({ grant: MembershipGrant } | { error: string });

/** The file's format: from its extension, else from its first character (`{`: NDJSON). */
export async function formatOf(file: string): Promise<Format> {
  if (/\.(ndjson|jsonl)$/i.test(file)) return "ndjson";
  if (/\.csv$/i.test(file)) return "csv";
  for await (const chunk of createReadStream(file, { start: 0, end: 63, encoding: "utf8" }))
    return String(chunk).trimStart().startsWith("{") ? "ndjson" : "csv";
  return "csv";
}

/** A grant from a row's fields, or what is wrong with them. */
function check(fields: { userId?: unknown; group?: unknown; expiresAt?: unknown }, now: number) {
  const { userId, group, expiresAt } = fields;
  if (!isValidName(userId)) return "userId must be 1 to 1,024 UTF-16 code units, well-formed";
  if (!isValidName(group)) return "group must be 1 to 1,024 UTF-16 code units, well-formed";
  if (expiresAt === undefined || expiresAt === null || expiresAt === "") return { userId, group };
  const when = typeof expiresAt === "string" ? new Date(expiresAt) : undefined;
  if (when === undefined || Number.isNaN(when.getTime()))
    return `expiresAt must be an ISO 8601 date or empty, got ${JSON.stringify(expiresAt)}`;
  if (when.getTime() <= now) return `expiresAt ${when.toISOString()} is in the past`;
  return { userId, group, expiresAt: when };
}

const COLUMNS = ["userId", "group", "expiresAt"];

/**
 * A spreadsheet runs a cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return as a
 * formula (`=HYPERLINK(…)` from a user id): export writes such a name with a leading `'`, which
 * spreadsheets show as text, and so also a name that starts with `'` itself; import takes one
 * leading `'` off. So every name still round-trips exactly.
 */
const FORMULA = /^[=+\-@\t\r']/;
const guardFormula = (name: string) => (FORMULA.test(name) ? `'${name}` : name);
const unguardFormula = (cell: string | undefined) => (cell?.startsWith("'") ? cell.slice(1) : cell);

/** The rows of a file, in order, with their line numbers. */
export async function* readRows(file: string, format: Format): AsyncIterable<Row> {
  const input = createReadStream(file);
  const now = () => Date.now();
  const row = (line: number, end: number, result: ReturnType<typeof check>): Row =>
    typeof result === "string" ? { line, end, error: result } : { line, end, grant: result };
  if (format === "ndjson") {
    let line = 0;
    let end = 0;
    for await (const text of createInterface({ input, crlfDelay: Number.POSITIVE_INFINITY })) {
      line++;
      end += Buffer.byteLength(text) + 1;
      if (text.trim() === "") continue;
      let value: unknown;
      try {
        value = JSON.parse(text);
      } catch {
        yield { line, end, error: "not valid JSON" };
        continue;
      }
      if (typeof value !== "object" || value === null || Array.isArray(value))
        yield { line, end, error: "not a JSON object" };
      else yield row(line, end, check(value, now()));
    }
    return;
  }
  // RFC 4180 by csv-parse: quoted fields may hold commas, quotes and line breaks. Rows with the
  // wrong number of fields are reported, not thrown; an unclosed quote ends the file.
  const parser = input.pipe(
    parse({ bom: true, info: true, relax_column_count: true, skip_empty_lines: true }),
  );
  let header: string[] | undefined;
  for await (const { record, info } of parser as AsyncIterable<{
    record: string[];
    info: { lines: number; bytes: number };
  }>) {
    const { lines: line, bytes: end } = info;
    if (header === undefined) {
      header = record.map((name) => name.trim());
      const unknown = header.filter((name) => !COLUMNS.includes(name));
      if (unknown.length > 0 || !header.includes("userId") || !header.includes("group"))
        throw new InvalidRowError(
          `line ${line}: the header must name userId, group and optionally expiresAt; got ${JSON.stringify(record)}`,
        );
      continue;
    }
    if (record.length !== header.length) {
      yield { line, end, error: `expected ${header.length} fields, got ${record.length}` };
      continue;
    }
    const fields = Object.fromEntries(header.map((name, i) => [name, record[i]]));
    fields.userId = unguardFormula(fields.userId);
    fields.group = unguardFormula(fields.group);
    yield row(line, end, check(fields, now()));
  }
}

/** Where an interrupted import of a file stands, kept beside the file until it completes. */
interface Checkpoint {
  size: number;
  mtimeMs: number;
  table: string;
  /** Every valid row up to this line is stored. */
  line: number;
  written: number;
}

export interface ImportOptions {
  store: MembershipStore;
  file: string;
  /** The table, so a checkpoint of another table's import is not taken for this one's. */
  table: string;
  skipInvalid: boolean;
  /** Grants per `addMany`. Default 10,000. */
  batchSize?: number;
  onInvalid(line: number, error: string): void;
  onProgress(progress: { bytes: number; total: number; written: number }): void;
  onResume(checkpoint: { line: number; written: number }): void;
}

export interface ImportReport {
  written: number;
  invalid: number;
  resumedAfterLine: number;
}

/** Thrown when a bad row stops an import before anything is written. */
export class InvalidRowError extends Error {}

/**
 * Imports a file with `addMany`, batch by batch. Without `skipInvalid`, every row is checked
 * first and the first bad one stops the import before anything is written. Grants are
 * idempotent, and a checkpoint file beside the input records the last line stored, so running
 * the import again after a crash finishes the job from there.
 */
export async function importFile(options: ImportOptions): Promise<ImportReport> {
  const { store, file, skipInvalid } = options;
  const format = await formatOf(file);
  const { size, mtimeMs } = await stat(file);
  const checkpointFile = `${file}.import-progress.json`;
  const saved = await readCheckpoint(checkpointFile);
  const resume =
    saved && saved.size === size && saved.mtimeMs === mtimeMs && saved.table === options.table
      ? saved
      : undefined;
  if (resume) options.onResume(resume);
  if (!skipInvalid) {
    for await (const row of readRows(file, format))
      if ("error" in row) throw new InvalidRowError(`line ${row.line}: ${row.error}`);
  }
  const batchSize = options.batchSize ?? 10_000;
  let end = 0;
  let written = resume?.written ?? 0;
  let invalid = 0;
  let batch: Array<{ line: number; grant: MembershipGrant }> = [];
  let lastLine = resume?.line ?? 0;
  const flush = async () => {
    if (batch.length === 0) return;
    // A grant whose expiry passed since it was checked would fail the whole batch: reported.
    const now = Date.now();
    const live: MembershipGrant[] = [];
    for (const { line, grant } of batch) {
      if (grant.expiresAt === undefined || grant.expiresAt.getTime() > now) live.push(grant);
      else {
        invalid++;
        options.onInvalid(line, "expiresAt passed before the row was written");
      }
    }
    await store.addMany(live);
    written += live.length;
    batch = [];
    // Only once the batch is stored: a crash before this repeats it, which grants nothing twice.
    const checkpoint: Checkpoint = { size, mtimeMs, table: options.table, line: lastLine, written };
    await writeFile(`${checkpointFile}.partial`, JSON.stringify(checkpoint), { mode: 0o600 });
    await rename(`${checkpointFile}.partial`, checkpointFile);
    options.onProgress({ bytes: end, total: size, written });
  };
  for await (const row of readRows(file, format)) {
    if (row.line <= (resume?.line ?? 0)) continue;
    if ("error" in row) {
      invalid++;
      options.onInvalid(row.line, row.error);
      continue;
    }
    batch.push({ line: row.line, grant: row.grant });
    lastLine = row.line;
    end = row.end;
    if (batch.length >= batchSize) await flush();
  }
  await flush();
  await rm(checkpointFile, { force: true });
  options.onProgress({ bytes: size, total: size, written });
  return { written, invalid, resumedAfterLine: resume?.line ?? 0 };
}

async function readCheckpoint(path: string): Promise<Checkpoint | undefined> {
  const text = await readFile(path, "utf8").catch((error: NodeJS.ErrnoException) => {
    if (error.code === "ENOENT") return undefined;
    throw error;
  });
  return text === undefined ? undefined : (JSON.parse(text) as Checkpoint);
}

/**
 * Writes every live membership to `file` (through a temporary file, renamed when complete) or to
 * `out`: CSV with a header row, or NDJSON. @returns how many.
 */
export async function exportTo(
  store: MembershipStore,
  format: Format,
  target: { file: string } | { out: Writable },
): Promise<number> {
  let count = 0;
  const records = Readable.from(
    (async function* () {
      for await (const m of store.memberships()) {
        count++;
        yield { userId: m.userId, group: m.group, expiresAt: m.expiresAt?.toISOString() ?? "" };
      }
    })(),
  );
  const encode =
    format === "csv"
      ? stringify({
          header: true,
          columns: COLUMNS,
          cast: { string: (value, { header }) => (header ? value : guardFormula(value)) },
        })
      : new Transform({
          writableObjectMode: true,
          transform(record: { expiresAt: string }, _encoding, done) {
            const value = record.expiresAt === "" ? { ...record, expiresAt: null } : record;
            done(null, `${JSON.stringify(value)}\n`);
          },
        });
  if ("out" in target) {
    await pipeline(records, encode, target.out, { end: false });
    return count;
  }
  const partial = `${target.file}.partial`;
  // Memberships are for the operator's eyes: not readable by other users of the machine.
  await pipeline(records, encode, createWriteStream(partial, { mode: 0o600 }));
  await chmod(partial, 0o600); // `mode` applies only to a file it creates
  await rename(partial, target.file);
  return count;
}
