/** Child processes of the sample: the server (`npm start`) and the admin script. No vitest here: the benchmarks use it too. */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { fileURLToPath, pathToFileURL } from "node:url";
import jwt from "jsonwebtoken";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

/** Environment shared by a sample server and the admin script of one test. */
export interface SampleEnv {
  AZURE_TABLES_CONNECTION_STRING?: string;
  JWT_SECRET: string;
  MEMBERSHIP_TABLE: string;
  [name: string]: string | undefined;
}

let tables = 0;
/**
 * Rate limits out of the way, for tests and benchmarks of something else (protocol handling,
 * fan-out capacity) that send faster than a person would.
 */
export const NO_RATE_LIMITS = {
  RATE_MESSAGES: "1000000",
  RATE_USER_MESSAGES: "1000000",
  RATE_BYTES: "1073741824",
} as const;

/** A fresh environment: its own table, its own JWT secret. */
export function sampleEnv(connectionString: string): SampleEnv {
  return {
    AZURE_TABLES_CONNECTION_STRING: connectionString,
    JWT_SECRET: randomBytes(32).toString("base64url"),
    MEMBERSHIP_TABLE: `e2e${process.pid}x${Date.now().toString(36)}x${tables++}`,
  };
}

function childEnv(env: Record<string, string | undefined>) {
  // REDIS_URL chooses the change feed: only the tests that mean it pass it on.
  const { REDIS_URL: _, ...inherited } = process.env;
  const merged: Record<string, string | undefined> = { ...inherited, NODE_ENV: "test", ...env };
  return Object.fromEntries(
    Object.entries(merged).filter(([, v]) => v !== undefined),
  ) as NodeJS.ProcessEnv;
}

export interface RunningSample {
  readonly url: string;
  readonly wsUrl: string;
  readonly process: ChildProcess;
  output(): string;
  /** Sends `signal` and waits for the exit; resolves to the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Starts `sample/start.ts` (what `npm start` runs) on a free port and waits until it listens. */
export async function startSample(
  env: Record<string, string | undefined>,
  options: { nodeArgs?: string[] } = {},
): Promise<RunningSample> {
  const args = [...(options.nodeArgs ?? []), "--import", "tsx", "sample/start.ts"];
  const child = spawn(process.execPath, args, {
    cwd: ROOT,
    env: childEnv({ PORT: "0", ...env }),
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout.on("data", (chunk: Buffer) => {
    output += chunk;
  });
  child.stderr.on("data", (chunk: Buffer) => {
    output += chunk;
  });
  const exited = once(child, "exit");
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`sample did not start:\n${output}`)), 30_000);
    child.stdout.on("data", () => {
      const match = /listening on (http:\/\/\S+)/.exec(output);
      if (match?.[1]) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    });
    exited.then(() => {
      clearTimeout(timer);
      reject(new Error(`sample exited before listening:\n${output}`));
    });
  });
  return {
    url,
    wsUrl: `${url.replace("http", "ws")}/hub`,
    process: child,
    output: () => output,
    async stop(signal = "SIGTERM") {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      child.kill(signal);
      const [code] = await exited;
      return code as number | null;
    },
  };
}

export interface AdminResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `sample/admin.ts` (what `npm run admin` runs) as a child process. */
export function admin(
  env: Record<string, string | undefined>,
  ...args: string[]
): Promise<AdminResult> {
  return adminIn(env, args);
}

/**
 * `admin`, from another working directory (`cwd`), killed past `timeoutMs` (then `code` is
 * null: a hang fails the caller instead of the suite).
 */
export async function adminIn(
  env: Record<string, string | undefined>,
  args: string[],
  options: { cwd?: string; timeoutMs?: number } = {},
): Promise<AdminResult> {
  // The loader by its path: from another directory, `--import tsx` would not resolve.
  const tsx = pathToFileURL(`${ROOT}node_modules/tsx/dist/loader.mjs`).href;
  const child = spawn(process.execPath, ["--import", tsx, `${ROOT}sample/admin.ts`, ...args], {
    cwd: options.cwd ?? ROOT,
    env: childEnv(env),
    stdio: ["ignore", "pipe", "pipe"],
  });
  const timer =
    options.timeoutMs === undefined
      ? undefined
      : setTimeout(() => child.kill("SIGKILL"), options.timeoutMs);
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk: Buffer) => {
    stdout += chunk;
  });
  child.stderr.on("data", (chunk: Buffer) => {
    stderr += chunk;
  });
  const [code] = await once(child, "exit");
  clearTimeout(timer);
  return { code: code as number | null, stdout, stderr };
}

/** Signs a token the way a real issuer would; claims and options can be bent for negative tests. */
export function token(
  env: SampleEnv,
  sub: string | undefined,
  options: jwt.SignOptions = {},
  secret: string = env.JWT_SECRET,
): string {
  return jwt.sign(sub === undefined ? {} : { sub }, secret, {
    algorithm: "HS256",
    expiresIn: 600,
    issuer: "hub-membership-sample",
    audience: "hub-membership-sample",
    ...options,
  });
}
