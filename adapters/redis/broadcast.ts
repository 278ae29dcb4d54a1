import { randomBytes } from "node:crypto";
import type { BroadcastTarget, ServerBus } from "../hubs/ws.js";
import {
  RedisConnections,
  type RedisTarget,
  readMessage,
  redisUnavailable,
  within,
} from "./client.js";

export interface RedisBroadcastSettings {
  /** The pub/sub channel every server shares. Default `hub-membership:messages`. */
  channel?: string;
  /** Called once per Redis outage (messages published meanwhile are lost, as pub/sub loses them). */
  onError?: (error: unknown) => void;
  /** How long a publish may take before it fails. Default 2 s. */
  publishTimeoutMs?: number;
}

export type RedisBroadcastOptions = RedisTarget & RedisBroadcastSettings;

/**
 * Messages across hub servers on Redis pub/sub, for `ws` hubs (Socket.IO has its own adapter):
 * a server delivers a message to its own connections and publishes it once; every other server
 * gets it and delivers it to its own. Membership is enforced where the message is delivered:
 * `deliver` sends only to connections that are in the group there and then.
 *
 * Pub/sub is at most once: a server cut off from Redis misses the messages of that time (as
 * Socket.IO's Redis adapter does). Membership changes do not travel here; they travel on the
 * store's change feed, which loses nothing.
 */
export class RedisBroadcast implements ServerBus {
  readonly #id = randomBytes(6).toString("base64url");
  readonly #redis: RedisConnections;
  readonly #channel: string;
  #deliver: ((target: BroadcastTarget, frame: Buffer) => void) | undefined;
  readonly #onError: (error: unknown) => void;
  readonly #publishTimeoutMs: number;
  #subscribed: Promise<unknown> | undefined;
  #failing = false;

  constructor(options: RedisBroadcastOptions) {
    this.#channel = options.channel ?? "hub-membership:messages";
    this.#onError =
      options.onError ??
      ((error) => process.emitWarning(`hub-membership: Redis broadcast: ${String(error)}`));
    this.#publishTimeoutMs = options.publishTimeoutMs ?? 2_000;
    this.#redis = new RedisConnections(options, (error) => this.#report(error));
  }

  /**
   * Subscribes and connects; resolves once messages of other servers arrive, each handed to
   * `deliver` for this server's own connections (`bindWs` passes its own).
   */
  start(deliver: (target: BroadcastTarget, frame: Buffer) => void): Promise<unknown> {
    this.#deliver = deliver;
    this.#subscribed ??= Promise.all([
      this.#redis
        .own()
        .then((subscriber) =>
          subscriber.subscribe(this.#channel, (message) => this.#receive(message), true),
        ),
      this.#redis.main(this.#publishTimeoutMs),
    ]);
    return this.#subscribed;
  }

  /**
   * Publishes `frame` for the other servers (deliver it to this server's connections yourself).
   * Rejects with `STORE_UNAVAILABLE` when Redis cannot take it.
   */
  async publish(target: BroadcastTarget, frame: Buffer): Promise<void> {
    const header = Buffer.from(`${JSON.stringify([this.#id, target])}\n`);
    try {
      const client = await this.#redis.main(this.#publishTimeoutMs);
      // Sent as bytes: the frame is not turned into a string and back.
      const message = Buffer.concat([header, frame]) as unknown as string;
      await within(client.sendCommand(["PUBLISH", this.#channel, message]), this.#publishTimeoutMs);
      this.#failing = false;
    } catch (error) {
      this.#report(error);
      throw redisUnavailable(error);
    }
  }

  async close(): Promise<void> {
    await this.#redis.close();
  }

  #receive(message: Buffer): void {
    const read = readMessage(message);
    const [from, target] = read?.header ?? [];
    const { group, userId } = ((typeof target === "object" && target) || {}) as Record<
      string,
      unknown
    >;
    const valid = typeof group === "string" || typeof userId === "string";
    if (read === undefined || !valid || from === this.#id) return;
    this.#deliver?.(target as BroadcastTarget, read.body);
  }

  #report(error: unknown): void {
    if (this.#failing) return;
    this.#failing = true;
    this.#onError(redisUnavailable(error));
  }
}
