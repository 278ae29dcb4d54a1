import { createClient } from "redis";
import { MembershipError } from "../contract.js";

/** What this package needs of a `redis` (node-redis v5) client; `createClient()`'s result has it. */
export interface RedisClientLike {
  readonly isOpen: boolean;
  connect(): Promise<unknown>;
  sendCommand(args: ReadonlyArray<string>): Promise<unknown>;
  subscribe(
    channel: string,
    listener: (message: Buffer) => void,
    bufferMode: true,
  ): Promise<unknown>;
  duplicate(): RedisClientLike;
  close(): Promise<unknown>;
  destroy(): void;
  on(event: "error", listener: (error: Error) => void): unknown;
}

/** Where to reach Redis: a URL (connections opened and closed here) or a client of yours. */
export type RedisTarget =
  | { url: string; client?: never }
  | { client: RedisClientLike; url?: never };

/**
 * The connections one user of Redis needs: `main` for commands, and `own()` for a blocking or
 * subscribing connection of its own. Clients made from a URL fail commands at once while
 * disconnected (no offline queue), so a publish during an outage fails instead of hanging.
 */
export class RedisConnections {
  readonly #target: RedisTarget;
  readonly #onError: (error: Error) => void;
  readonly #opened = new Set<RedisClientLike>();
  #main: Promise<RedisClientLike> | undefined;

  constructor(target: RedisTarget, onError: (error: Error) => void) {
    if (target.url !== undefined && !/^rediss?:\/\//.test(target.url)) {
      throw new MembershipError("INVALID_ARGUMENT", "url must start with redis:// or rediss://");
    }
    if (target.url === undefined && target.client === undefined) {
      throw new MembershipError("INVALID_ARGUMENT", "give a Redis url or a client");
    }
    this.#target = target;
    this.#onError = onError;
  }

  /**
   * The command connection, once connected; rejects if it is not within `timeoutMs` (a
   * connection keeps retrying while Redis is away, and a caller must not wait for that).
   */
  main(timeoutMs: number): Promise<RedisClientLike> {
    this.#main ??= (async () => {
      const { client } = this.#target;
      if (client !== undefined) {
        if (!client.isOpen) await client.connect();
        return client;
      }
      return this.#open(createClient({ url: this.#target.url, disableOfflineQueue: true }));
    })().catch((error: unknown) => {
      this.#main = undefined;
      throw error;
    });
    return within(this.#main, timeoutMs);
  }

  /** One command on the main connection, within `timeoutMs`; a failure as `STORE_UNAVAILABLE`. */
  async command(args: ReadonlyArray<string | Buffer>, timeoutMs: number): Promise<unknown> {
    try {
      const client = await this.main(timeoutMs);
      // Buffers go as bytes: a payload is not turned into a string and back.
      return await within(client.sendCommand(args as ReadonlyArray<string>), timeoutMs);
    } catch (error) {
      throw redisUnavailable(error);
    }
  }

  /** A new connection of its own, closed by {@link close}. */
  async own(): Promise<RedisClientLike> {
    const { client } = this.#target;
    const fresh = client
      ? client.duplicate()
      : createClient({ url: this.#target.url, disableOfflineQueue: true });
    return this.#open(fresh);
  }

  async #open(client: RedisClientLike): Promise<RedisClientLike> {
    client.on("error", this.#onError);
    this.#opened.add(client);
    await client.connect();
    return client;
  }

  /** Closes a connection {@link own} opened. */
  drop(client: RedisClientLike): void {
    this.#opened.delete(client);
    // destroy() also ends a blocking read in flight, which close() would wait for.
    if (client.isOpen) client.destroy();
  }

  /** Closes what was opened here (never a client that was given). */
  async close(): Promise<void> {
    this.#main = undefined;
    for (const client of [...this.#opened]) this.drop(client);
  }
}

/** `promise`, or a rejection once `ms` have passed without an answer. */
export async function within<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** A Redis failure as the contract names it. */
export const redisUnavailable = (error: unknown) =>
  error instanceof MembershipError
    ? error
    : new MembershipError(
        "STORE_UNAVAILABLE",
        `Redis is unavailable: ${error instanceof Error ? error.message : String(error)}`,
        { cause: error },
      );

/**
 * A message of one of this package's channels: a JSON array on the first line, then the body.
 * `undefined` for anything else: anyone who can reach Redis can publish on a channel.
 */
export function readMessage(message: Buffer): { header: unknown[]; body: Buffer } | undefined {
  const end = message.indexOf(0x0a);
  if (end < 0) return undefined;
  let header: unknown;
  try {
    header = JSON.parse(message.subarray(0, end).toString());
  } catch {
    return undefined;
  }
  return Array.isArray(header) ? { header, body: message.subarray(end + 1) } : undefined;
}
