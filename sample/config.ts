import { randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import {
  AzureTableMembershipStore,
  type AzureTableMembershipStoreOptions,
  ChangeFeedMismatchError,
  isValidName,
  MembershipError,
} from "../adapters/index.js";
import { azuriteConnectionString } from "../adapters/testing/azurite.js";
import type { Limits } from "./limits.js";
import { redact } from "./redact.js";

/** A configuration problem, reported as one clear line before anything starts. */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

/**
 * Whether `error` is the storage refusing our configuration (a wrong key, an expired SAS, a SAS
 * without a permission, a missing table) rather than an outage: reported as a configuration error.
 */
export const isRefusedByStore = (error: unknown): error is MembershipError =>
  error instanceof MembershipError &&
  (error.code === "ACCESS_DENIED" || error.code === "STORE_REJECTED");

const ROOT = fileURLToPath(new URL("..", import.meta.url));

export interface SampleConfig {
  /** Set when AZURE_TABLES_CONNECTION_STRING is; otherwise the sample's own Azurite is used. */
  connectionString: string | undefined;
  azuritePort: number;
  azuriteLocation: string;
  tableName: string;
  host: string;
  port: number;
  openGroups: string[];
  jwt: { secret: string; issuer: string; audience: string };
  /** Whether GET /token?user=… mints tokens (the web page's dev sign-in), for loopback hosts. */
  devSignIn: boolean;
  /**
   * Origins a browser's upgrade or negotiate may come from (requests without one, from Node,
   * .NET and other clients, always may); empty: the server's own origins only.
   */
  allowedOrigins: string[];
  /** Unsent bytes past which a client that does not read is disconnected. */
  maxBufferedBytes: number;
  /** Which hub `npm start` runs: the `ws` sample (default) or the Socket.IO one. */
  hub: "ws" | "socket.io";
  /**
   * Servers sharing this Redis share membership changes (Redis Streams) and messages (one chat
   * channel every hub renders: see chat-bus.ts); unset, changes travel on the table's log.
   */
  redisUrl: string | undefined;
  /** What a client may send (rate limits and connection cap). */
  limits: Limits;
  /** How often `/hub` pings each client; one silent since the previous ping is dropped. */
  heartbeatSeconds: number;
  /** A second listener for /metrics, /stats and /healthz (OPS_PORT, on OPS_HOST). */
  opsPort: number | undefined;
  opsHost: string;
  /** A bearer token /metrics and /stats require (OPS_TOKEN). */
  opsToken: string | undefined;
}

function integer(env: NodeJS.ProcessEnv, name: string, fallback: number, min: number, max: number) {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(
      `${name} must be an integer from ${min} to ${max}, got ${JSON.stringify(raw)}`,
    );
  }
  return value;
}

/**
 * The JWT secret: JWT_SECRET, or one generated on first use and kept in `.jwt-secret`
 * (git-ignored, mode 0600) so the admin script mints tokens the server accepts.
 */
function jwtSecret(env: NodeJS.ProcessEnv): string {
  const fromEnv = env.JWT_SECRET;
  if (fromEnv !== undefined && fromEnv !== "") {
    if (Buffer.byteLength(fromEnv) < 32) {
      throw new ConfigError("JWT_SECRET must be at least 32 bytes (HS256 needs a 256-bit key)");
    }
    return fromEnv;
  }
  const file = env.JWT_SECRET_FILE || `${ROOT}.jwt-secret`;
  try {
    // "wx" fails if the file exists, so two processes starting at once agree on one secret.
    writeFileSync(file, randomBytes(48).toString("base64url"), { flag: "wx", mode: 0o600 });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
  }
  const secret = readFileSync(file, "utf8").trim();
  if (Buffer.byteLength(secret) < 32)
    throw new ConfigError(`${file} holds a secret shorter than 32 bytes`);
  return secret;
}

/** Reads and checks the sample's configuration from the environment. Throws {@link ConfigError}. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): SampleConfig {
  const connectionString = env.AZURE_TABLES_CONNECTION_STRING?.trim() || undefined;
  const azuritePort = integer(env, "AZURITE_PORT", 10002, 0, 65535);
  const openGroups = (env.OPEN_GROUPS ?? "lobby")
    .split(",")
    .map((g) => g.trim())
    .filter((g) => g !== "");
  for (const group of openGroups) {
    if (!isValidName(group)) {
      throw new ConfigError(`OPEN_GROUPS has an invalid group name: ${JSON.stringify(group)}`);
    }
  }
  const tableName = env.MEMBERSHIP_TABLE || "HubMembership";
  if (!/^[A-Za-z][A-Za-z0-9]{2,62}$/.test(tableName)) {
    throw new ConfigError(
      "MEMBERSHIP_TABLE must be 3-63 letters and digits, starting with a letter",
    );
  }
  const host = env.HOST || "127.0.0.1";
  // Dev sign-in hands a token for any user to whoever asks: only ever for a local development
  // run, by default when it plainly is one, never against a real storage account or anything
  // that calls itself other than development or test.
  const nodeEnv = env.NODE_ENV ?? "";
  const developing = ["", "development", "test"].includes(nodeEnv);
  const localStorage = connectionString === undefined || isEmulator(connectionString);
  if (env.DEV_SIGN_IN !== undefined && env.DEV_SIGN_IN !== "0" && env.DEV_SIGN_IN !== "1")
    throw new ConfigError(`DEV_SIGN_IN must be 0 or 1, got ${JSON.stringify(env.DEV_SIGN_IN)}`);
  const devSignIn =
    env.DEV_SIGN_IN === undefined
      ? developing && localStorage && isLoopback(host)
      : env.DEV_SIGN_IN === "1";
  if (devSignIn && !developing)
    throw new ConfigError(
      `DEV_SIGN_IN=1 is refused with NODE_ENV=${nodeEnv}: it mints tokens for any user (unset NODE_ENV, or set it to development or test)`,
    );
  if (devSignIn && !localStorage)
    throw new ConfigError(
      "DEV_SIGN_IN=1 is refused with a storage account in AZURE_TABLES_CONNECTION_STRING: it mints tokens for any user (use Azurite, or DEV_SIGN_IN=0)",
    );
  const allowedOrigins = (env.ALLOWED_ORIGINS ?? "")
    .split(",")
    .map((o) => o.trim())
    .filter((o) => o !== "");
  for (const origin of allowedOrigins)
    if (URL.parse(origin)?.origin !== origin)
      throw new ConfigError(
        `ALLOWED_ORIGINS must list origins like https://chat.example.com, got ${JSON.stringify(origin)}`,
      );
  const hub = env.HUB || "ws";
  if (hub !== "ws" && hub !== "socket.io")
    throw new ConfigError(`HUB must be "ws" or "socket.io", got ${JSON.stringify(hub)}`);
  const redisUrl = env.REDIS_URL?.trim() || undefined;
  if (redisUrl !== undefined && !/^rediss?:\/\//.test(redisUrl))
    throw new ConfigError(
      `REDIS_URL must start with redis:// or rediss://, got ${JSON.stringify(redact(redisUrl))}`,
    );
  return {
    connectionString,
    azuritePort,
    azuriteLocation: env.AZURITE_LOCATION || `${ROOT}azurite-data`,
    tableName,
    host,
    port: integer(env, "PORT", 3000, 0, 65535),
    openGroups,
    jwt: {
      secret: jwtSecret(env),
      issuer: env.JWT_ISSUER || "hub-membership-sample",
      audience: env.JWT_AUDIENCE || "hub-membership-sample",
    },
    devSignIn,
    allowedOrigins,
    maxBufferedBytes: integer(env, "MAX_BUFFERED_BYTES", 4 * 1024 * 1024, 64 * 1024, 2 ** 30),
    hub,
    redisUrl,
    heartbeatSeconds: integer(env, "HEARTBEAT_SECONDS", 30, 1, 3600),
    opsPort: env.OPS_PORT ? integer(env, "OPS_PORT", 0, 0, 65535) : undefined,
    opsHost: env.OPS_HOST || "127.0.0.1",
    opsToken: opsToken(env),
    limits: {
      messagesPerSecond: integer(env, "RATE_MESSAGES", 20, 1, 1_000_000),
      messageBurst: integer(env, "RATE_BURST", 40, 0, 1_000_000),
      // At least one largest frame (64 KiB) a second, or such a frame could never pass.
      bytesPerSecond: integer(env, "RATE_BYTES", 256 * 1024, 64 * 1024, 2 ** 30),
      userMessagesPerSecond: integer(env, "RATE_USER_MESSAGES", 50, 1, 1_000_000),
      connectionsPerUser: integer(env, "MAX_CONNECTIONS_PER_USER", 20, 1, 100_000),
      closeAfterRefusals: integer(env, "RATE_CLOSE_AFTER", 100, 1, 1_000_000),
      penaltySeconds: integer(env, "RATE_PENALTY_SECONDS", 10, 1, 86_400),
    },
  };
}

/** The connection string the sample and the admin script use: the configured one, or the sample's Azurite. */
export const connectionStringOf = (config: SampleConfig) =>
  config.connectionString ?? azuriteConnectionString(config.azuritePort);

function opsToken(env: NodeJS.ProcessEnv): string | undefined {
  const token = env.OPS_TOKEN;
  if (token === undefined || token === "") return undefined;
  if (Buffer.byteLength(token) < 16 || /\s/.test(token))
    throw new ConfigError("OPS_TOKEN must be at least 16 bytes, without spaces");
  return token;
}

/** A loopback host name: localhost, 127.0.0.0/8 or ::1 (brackets and a port allowed). */
export function isLoopback(host: string): boolean {
  const name = host
    .replace(/:\d+$/, "")
    .replace(/^\[(.*)\]$/, "$1")
    .toLowerCase();
  return name === "localhost" || name === "::1" || /^127(\.\d{1,3}){3}$/.test(name);
}

/** Whether a connection string names Azurite (its well-known account on a loopback host). */
function isEmulator(connectionString: string): boolean {
  if (/(^|;)\s*UseDevelopmentStorage=true\s*(;|$)/i.test(connectionString)) return true;
  const account = /(?:^|;)\s*AccountName=([^;]*)/i.exec(connectionString)?.[1]?.trim();
  const endpoint = /(?:^|;)\s*TableEndpoint=([^;]*)/i.exec(connectionString)?.[1]?.trim();
  const host = endpoint === undefined ? undefined : URL.parse(endpoint)?.host;
  return account === "devstoreaccount1" && host !== undefined && isLoopback(host);
}

/**
 * The sample's store (the server's and the admin script's), on the change feed REDIS_URL names.
 * A connection string the SDK cannot read is a configuration error, named as one.
 */
export function openTableStore(
  config: SampleConfig,
  options: Omit<AzureTableMembershipStoreOptions, "tableName">,
): AzureTableMembershipStore {
  try {
    return AzureTableMembershipStore.fromConnectionString(connectionStringOf(config), {
      ...options,
      tableName: config.tableName,
    });
  } catch (error) {
    if (error instanceof MembershipError && error.code === "INVALID_ARGUMENT")
      throw new ConfigError(`AZURE_TABLES_CONNECTION_STRING: ${error.message}`, { cause: error });
    throw error;
  }
}

/**
 * A refusal of the store (`isRefusedByStore`) as a configuration error that names the setting
 * that caused it and the command that fixes it.
 */
export function refusal(config: SampleConfig, error: MembershipError): ConfigError {
  if (error instanceof ChangeFeedMismatchError) {
    const redis = error.tableFeed === "redis";
    return new ConfigError(
      `table ${config.tableName} keeps its changes on ${redis ? "Redis" : "the table's own log"}, ` +
        `but REDIS_URL is ${config.redisUrl ? "set" : "not set"}: start every server and the ` +
        `admin script with REDIS_URL ${redis ? "set to that Redis" : "unset"}, or switch the table ` +
        `(every server stopped first) with: ${config.redisUrl ? "REDIS_URL=… " : ""}npm run admin -- use-feed`,
      { cause: error },
    );
  }
  const setting = config.connectionString
    ? "AZURE_TABLES_CONNECTION_STRING"
    : `the sample's Azurite on port ${config.azuritePort}`;
  return new ConfigError(`${setting}: ${error.message}`, { cause: error });
}
