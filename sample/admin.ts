/**
 * `npm run admin -- <command>`: grant, revoke and inspect memberships while the sample runs, and
 * mint tokens. Uses the same connection string as the server (AZURE_TABLES_CONNECTION_STRING,
 * else the sample's Azurite on AZURITE_PORT). Exit 0 on success, 1 on failure, 2 on usage errors.
 */
import { connect } from "node:net";
import { parseArgs } from "node:util";
import { Presets, SingleBar } from "cli-progress";
import ms from "ms";
import { isValidName, type Membership, MembershipError } from "../adapters/index.js";
import { RedisPresence } from "../adapters/redis/index.js";
import { type Azurite, startAzurite } from "../adapters/testing/azurite.js";
import { mintToken } from "./auth.js";
import { exportTo, importFile } from "./bulk.js";
import {
  ConfigError,
  isRefusedByStore,
  loadConfig,
  openTableStore,
  refusal,
  type SampleConfig,
} from "./config.js";
import { redactedMessage } from "./redact.js";
import { changeFeedOf } from "./redis.js";

class UsageError extends Error {}

type Flag = "expires" | "ttl" | "dry-run" | "skip-invalid";

interface Command {
  args: string[];
  /** Arguments that may be left out, after `args`. */
  optional?: string[];
  options?: Flag[];
  help: string;
}

const COMMANDS: Record<string, Command> = {
  grant: {
    args: ["user", "group"],
    options: ["expires"],
    help: "Grant <user> membership of <group>. --expires takes an ISO date or a duration (30m, 2h, 7d).",
  },
  revoke: {
    args: ["user", "group"],
    help: "Revoke <user>'s membership of <group>; live connections leave it.",
  },
  groups: { args: ["user"], help: "List <user>'s groups, sorted." },
  members: { args: ["group"], help: "List the members of <group>." },
  count: { args: ["group"], help: "Count the members of <group>." },
  online: {
    args: ["group"],
    help:
      "List the users connected in <group> now, and count their connections: from Redis (every\n" +
      "server) when REDIS_URL is set, else from the running server's /online (OPS_TOKEN if set).",
  },
  "remove-user": { args: ["user"], help: "Remove every membership of <user>." },
  "delete-group": { args: ["group"], help: "Remove every membership of <group>." },
  token: { args: ["user"], options: ["ttl"], help: "Mint a token for <user> (--ttl, default 1h)." },
  "use-feed": {
    args: [],
    help:
      "Switch the table to the change feed this environment names (Redis when REDIS_URL is set,\n" +
      "else the table's log). Running servers on the other feed notice within seconds and stop\n" +
      "(exit 1); start them again with REDIS_URL set the same way.",
  },
  import: {
    args: ["file"],
    options: ["skip-invalid"],
    help:
      "Grant every row of <file>: CSV with a header row userId,group,expiresAt (RFC 4180 quoting;\n" +
      'expiresAt an ISO date or empty) or NDJSON ({"userId","group","expiresAt"} a line, by the\n' +
      "extension .ndjson/.jsonl or a first character {). Streamed, in batches of 10,000. A bad row\n" +
      "stops it before anything is written, naming its line; --skip-invalid reports each bad row\n" +
      "and imports the rest. Interrupted, run it again: it goes on after the last stored line.",
  },
  export: {
    args: [],
    optional: ["file"],
    help:
      "Write every live membership as CSV (with --json: NDJSON) to <file>, or to standard output\n" +
      "(use npm run --silent, so npm's banner stays out of it).",
  },
  repair: {
    args: [],
    options: ["dry-run"],
    help:
      "Find rows whose twin is missing (after a crash between two writes) and fix them: the user\n" +
      "side is authoritative. Also purges expired rows. --dry-run reports without changing anything.",
  },
};

const usage = (name?: string) => {
  const lines = Object.entries(COMMANDS)
    .filter(([command]) => name === undefined || command === name)
    .map(([command, { args, optional = [], options = [] }]) =>
      [
        command,
        ...args.map((a) => `<${a}>`),
        ...optional.map((a) => `[<${a}>]`),
        ...options.map((o) =>
          o === "dry-run" || o === "skip-invalid"
            ? `[--${o}]`
            : `[--${o} <${o === "ttl" ? "duration" : "when"}>]`,
        ),
      ].join(" "),
    );
  const details = name ? `\n\n${COMMANDS[name]?.help}` : "";
  return `Usage: npm run admin -- ${lines.join("\n       npm run admin -- ")}${details}\n\nOptions: --json (machine-readable output), --help`;
};

/** An ISO date or a duration from now. */
function parseWhen(value: string): Date {
  const duration =
    /^\d/.test(value) && !value.includes("-") ? ms(value as ms.StringValue) : undefined;
  const when = typeof duration === "number" ? new Date(Date.now() + duration) : new Date(value);
  if (Number.isNaN(when.getTime()) || when.getTime() <= Date.now()) {
    throw new UsageError(
      `--expires must be a future ISO date or a duration like 30m, 2h, 7d; got ${JSON.stringify(value)}`,
    );
  }
  return when;
}

function parseTtl(value: string): number {
  const duration = ms(value as ms.StringValue);
  if (typeof duration !== "number" || duration < 1_000) {
    throw new UsageError(
      `--ttl must be a duration of at least 1s, like 15m or 1h; got ${JSON.stringify(value)}`,
    );
  }
  return Math.floor(duration / 1_000);
}

const describe = (m: Membership) =>
  m.expiresAt ? `expires ${m.expiresAt.toISOString()}` : "never expires";

async function main(argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
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
  });
  const [name, ...rest] = positionals;
  if (name === undefined || name === "help") {
    if (values.help || name === "help") return void console.log(usage());
    throw new UsageError("missing command");
  }
  const command = COMMANDS[name];
  if (command === undefined) throw new UsageError(`unknown command ${JSON.stringify(name)}`);
  if (values.help) return void console.log(usage(name));
  const optional = command.optional ?? [];
  if (rest.length < command.args.length || rest.length > command.args.length + optional.length) {
    const takes = [...command.args.map((a) => `<${a}>`), ...optional.map((a) => `[<${a}>]`)];
    throw new UsageError(`${name} takes ${takes.join(" ") || "no arguments"}`);
  }
  for (const option of ["expires", "ttl", "dry-run", "skip-invalid"] as const) {
    if (values[option] !== undefined && !command.options?.includes(option)) {
      throw new UsageError(`${name} does not take --${option}`);
    }
  }
  const expiresAt = values.expires === undefined ? undefined : parseWhen(values.expires);
  const ttl = values.ttl === undefined ? 3600 : parseTtl(values.ttl);
  const [first = "", second = ""] = rest;
  const print = (json: unknown, text: string) =>
    console.log(values.json ? JSON.stringify(json) : text);

  const config = loadConfig();
  if (name === "token") {
    if (!isValidName(first))
      throw new UsageError("<user> must be 1 to 1,024 UTF-16 code units, well-formed");
    const token = mintToken(config.jwt, first, ttl);
    return print({ token, userId: first, expiresIn: ttl }, token);
  }

  if (name === "online") {
    if (!isValidName(first))
      throw new UsageError("<group> must be 1 to 1,024 UTF-16 code units, well-formed");
    const { users, connections } = await onlineIn(config, first);
    return print(
      { group: first, users, connections },
      [
        ...users.map(shown),
        `${users.length} user(s), ${connections} connection(s) online in ${shown(first)}`,
      ].join("\n"),
    );
  }

  // Without npm start, the sample's Azurite is started for this command (its data is on disk).
  const azurite = config.connectionString === undefined ? await azuriteFor(config) : undefined;
  const changeFeed = changeFeedOf(config);
  const store = openTableStore(config, {
    ...(changeFeed && { changeFeed }),
    // An admin command should answer or fail within seconds, not after minutes of retries.
    clientOptions: {
      retryOptions: { maxRetries: 2, retryDelayInMs: 200, maxRetryDelayInMs: 1_000 },
    },
  });
  try {
    switch (name) {
      case "grant":
        await store.addToGroup(first, second, expiresAt ? { expiresAt } : undefined);
        return print(
          { ok: true, userId: first, group: second, expiresAt: expiresAt?.toISOString() ?? null },
          `granted ${shown(first)} → ${shown(second)}${expiresAt ? ` until ${expiresAt.toISOString()}` : ""}`,
        );
      case "revoke": {
        const removed = await store.removeFromGroup(first, second);
        return print(
          { ok: true, removed, userId: first, group: second },
          removed
            ? `revoked ${shown(first)} from ${shown(second)}`
            : `${shown(first)} was not a member of ${shown(second)}`,
        );
      }
      case "groups": {
        const groups = await store.groupsOf(first);
        return print(
          groups.map((m) => ({
            group: m.group,
            addedAt: m.addedAt,
            expiresAt: m.expiresAt ?? null,
          })),
          groups.map((m) => `${shown(m.group)}\t${describe(m)}`).join("\n") ||
            `${shown(first)} has no groups`,
        );
      }
      case "members": {
        const members: Membership[] = [];
        for await (const m of store.membersOf(first)) members.push(m);
        members.sort((a, b) => (a.userId < b.userId ? -1 : 1));
        return print(
          members.map((m) => ({
            userId: m.userId,
            addedAt: m.addedAt,
            expiresAt: m.expiresAt ?? null,
          })),
          members.map((m) => `${shown(m.userId)}\t${describe(m)}`).join("\n") ||
            `${shown(first)} has no members`,
        );
      }
      case "count": {
        const count = await store.countMembers(first);
        return print({ group: first, count }, String(count));
      }
      case "remove-user": {
        const removed = await store.removeUser(first);
        return print({ ok: true, removed }, `removed ${removed} membership(s) of ${shown(first)}`);
      }
      case "repair": {
        const report = await store.repair({ dryRun: values["dry-run"] === true });
        const pairs = (list: { userId: string; group: string }[]) =>
          list.map((p) => `\n  ${JSON.stringify(p.userId)} in ${JSON.stringify(p.group)}`).join("");
        const verb = report.dryRun ? "would be" : "were";
        return print(
          report,
          `${report.indexRestored.length} missing group-side row(s) ${verb} restored${pairs(report.indexRestored)}\n` +
            `${report.orphansRemoved.length} orphan group-side row(s) ${verb} removed${pairs(report.orphansRemoved)}\n` +
            `${report.expiredPurged} expired membership row(s) ${verb} purged\n` +
            `${report.orphansTooRecent} recent orphan(s) left alone (may be grants in flight)`,
        );
      }
      case "use-feed": {
        await store.adoptChangeFeed();
        const feed = changeFeed ? "Redis (REDIS_URL)" : "the table's own log";
        return print(
          { ok: true, feed: changeFeed?.kind ?? "table-log" },
          `changes now travel on ${feed}`,
        );
      }
      case "import": {
        const progress = progressReporter();
        const report = await importFile({
          store,
          file: first,
          table: config.tableName,
          skipInvalid: values["skip-invalid"] === true,
          onInvalid: (line, error) => progress.note(`line ${line}: ${shown(error)}`),
          onProgress: progress.update,
          onResume: ({ line, written }) =>
            progress.note(`resuming after line ${line}: ${written} row(s) stored before`),
        }).finally(progress.stop);
        return print(
          { ok: true, ...report },
          `imported ${report.written} row(s)` +
            (report.invalid > 0 ? `; ${report.invalid} invalid row(s) skipped` : ""),
        );
      }
      case "export": {
        const format = values.json ? "ndjson" : "csv";
        const count = await exportTo(
          store,
          format,
          first ? { file: first } : { out: process.stdout },
        );
        if (first) console.error(`exported ${count} membership(s) to ${first}`);
        return;
      }
      case "delete-group": {
        const removed = await store.deleteGroup(first);
        return print({ ok: true, removed }, `removed ${removed} membership(s) of ${shown(first)}`);
      }
    }
  } catch (error) {
    // A refusal names the setting that caused it and the command that fixes it.
    throw isRefusedByStore(error) ? refusal(config, error) : error;
  } finally {
    await store.close();
    await azurite?.stop();
  }
}

/**
 * Everyone online in `group`: with REDIS_URL from Redis (what every server reports), else from
 * the one server this machine runs, over HTTP.
 */
async function onlineIn(config: SampleConfig, group: string) {
  const users: string[] = [];
  let connections = 0;
  let after: string | undefined;
  if (config.redisUrl !== undefined) {
    const presence = new RedisPresence({ url: config.redisUrl, onError: () => {} });
    try {
      do {
        const page = await presence.online(group, { limit: 10_000, ...(after && { after }) });
        users.push(...page.users);
        after = page.next;
      } while (after !== undefined);
      connections = (await presence.count(group)).connections;
    } finally {
      await presence.close();
    }
    return { users, connections };
  }
  const base =
    config.opsPort !== undefined
      ? `http://${config.opsHost}:${config.opsPort}`
      : `http://127.0.0.1:${config.port}`;
  do {
    const url = new URL("/online", base);
    url.searchParams.set("group", group);
    if (after !== undefined) url.searchParams.set("after", after);
    const response = await fetch(url, {
      headers: config.opsToken ? { authorization: `Bearer ${config.opsToken}` } : {},
      signal: AbortSignal.timeout(5_000),
    }).catch((error: unknown) => {
      throw new Error(
        `no sample server answers at ${base} (${redactedMessage(error)}): start it with npm start, or set REDIS_URL as the servers have it`,
      );
    });
    if (!response.ok)
      throw new Error(`${url.origin}/online answered ${response.status}: ${await response.text()}`);
    const page = (await response.json()) as { users: string[]; connections: number; next?: string };
    users.push(...page.users);
    connections = page.connections;
    after = page.next;
  } while (after !== undefined);
  return { users, connections };
}

/** The sample's Azurite, started here if nothing listens on its port; undefined if it runs. */
async function azuriteFor(config: SampleConfig): Promise<Azurite | undefined> {
  const listening = await new Promise<boolean>((resolve) => {
    const socket = connect(config.azuritePort, "127.0.0.1");
    const answer = (yes: boolean) => {
      socket.destroy();
      resolve(yes);
    };
    socket.once("connect", () => answer(true));
    socket.once("error", () => answer(false));
    socket.setTimeout(1_000, () => answer(false));
  });
  if (listening) return undefined;
  return startAzurite({ port: config.azuritePort, location: config.azuriteLocation });
}

/**
 * Progress of an import on standard error: a bar on a terminal (cli-progress), plain lines at
 * most once a second otherwise (a log, CI). `note` prints a line above the bar.
 */
function progressReporter() {
  const tty = process.stderr.isTTY === true;
  const bar = tty
    ? new SingleBar(
        { format: "import [{bar}] {percentage}% | {written} rows", stream: process.stderr },
        Presets.shades_classic,
      )
    : undefined;
  let started = false;
  let last = 0;
  let said = "";
  return {
    update({ bytes, total, written }: { bytes: number; total: number; written: number }) {
      if (bar) {
        if (!started) bar.start(total, 0, { written: 0 });
        started = true;
        bar.update(bytes, { written });
      } else if (Date.now() - last >= 1_000 || bytes >= total) {
        last = Date.now();
        const percent = total === 0 ? 100 : Math.floor((bytes / total) * 100);
        const line = `import: ${written} rows written, ${percent}% of the file read`;
        if (line !== said) console.error(line); // the last batch reports 100% twice
        said = line;
      }
    },
    note(line: string) {
      if (bar && started) bar.stop();
      started = false;
      console.error(line);
    },
    stop() {
      bar?.stop();
    },
  };
}

/**
 * A name as text output shows it: control characters (a tab or a newline would forge a line, an
 * escape sequence would drive the terminal), bidirectional overrides and backslashes written as
 * escapes. `--json` prints names exactly.
 */
const shown = (name: string) =>
  name.replace(/[\\\p{Cc}\p{Bidi_Control}\p{Zl}\p{Zp}]/gu, (c) =>
    c === "\\" ? "\\\\" : `\\u{${c.codePointAt(0)?.toString(16)}}`,
  );

/** The command named on the command line, if it is one, for a usage message about it alone. */
const command = (argv: string[]) => argv.slice(2).find((arg) => arg in COMMANDS);

/** A reader that stopped reading (`export | head`) is done with us: that is no failure. */
const closedPipe = (error: unknown) => (error as NodeJS.ErrnoException | null)?.code === "EPIPE";
process.stdout.on("error", (error) => {
  if (closedPipe(error)) process.exit(0);
  throw error;
});

main(process.argv.slice(2)).catch((error: unknown) => {
  if (closedPipe(error)) return;
  const usageError =
    error instanceof UsageError ||
    (error as { code?: string }).code?.startsWith("ERR_PARSE_ARGS") ||
    (error instanceof MembershipError && error.code === "INVALID_ARGUMENT");
  const message = redactedMessage(error);
  const prefix =
    error instanceof ConfigError || isRefusedByStore(error) ? "configuration error: " : "error: ";
  console.error(`${prefix}${message}`);
  if (usageError && !(error instanceof MembershipError))
    console.error(usage(command(process.argv)));
  process.exitCode = usageError ? 2 : 1;
});
