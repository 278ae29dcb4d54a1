import type { BroadcastTarget } from "../adapters/hubs/ws.js";
import { isValidName } from "../adapters/index.js";
import { RedisBroadcast } from "../adapters/redis/index.js";
import type { SampleConfig } from "./config.js";
import type { Log } from "./observability.js";

/** A chat message, as every hub of the sample renders it in its own protocol. */
export interface ChatMessage {
  group?: string;
  to?: string;
  from: string;
  text: string;
  at: string;
}

/**
 * The sample's messages between servers, whatever their hub: one Redis channel of plain chat
 * messages that each server renders for its own endpoints (ws frames, SignalR invocations,
 * Socket.IO events), so a ws, a SignalR and a Socket.IO server on one Redis talk to each other.
 * Without Redis, messages stay on this server.
 *
 * A message is published first and delivered here only once Redis took it: it reaches every
 * server, or `send` rejects (`STORE_UNAVAILABLE`) having delivered it nowhere, so a retry
 * never duplicates it.
 */
export class ChatBus {
  readonly #bus: RedisBroadcast | undefined;
  readonly #deliver: (target: BroadcastTarget, message: ChatMessage) => void;

  constructor(
    config: SampleConfig,
    log: Log,
    deliver: (target: BroadcastTarget, message: ChatMessage) => void,
  ) {
    this.#deliver = deliver;
    this.#bus =
      config.redisUrl === undefined
        ? undefined
        : new RedisBroadcast({
            url: config.redisUrl,
            channel: "hub-membership:chat",
            onError: (err) =>
              log.error({ event: "redis.down", client: "chat", err }, "Redis is unavailable"),
          });
  }

  /** Resolves once other servers' messages arrive. */
  async start(): Promise<void> {
    await this.#bus?.start((target, frame) => {
      const message = parseMessage(frame);
      if (message !== undefined) this.#deliver(target, message);
    });
  }

  async send(target: BroadcastTarget, message: ChatMessage): Promise<void> {
    await this.#bus?.publish(target, Buffer.from(JSON.stringify(message)));
    this.#deliver(target, message);
  }

  close(): Promise<void> {
    return this.#bus?.close() ?? Promise.resolve();
  }
}

/** What another server published, if it is a chat message. */
function parseMessage(frame: Buffer): ChatMessage | undefined {
  let value: unknown;
  try {
    value = JSON.parse(frame.toString());
  } catch {
    return undefined;
  }
  const { group, to, from, text, at } = (value ?? {}) as Record<string, unknown>;
  if (!isValidName(from) || typeof text !== "string" || typeof at !== "string") return undefined;
  if (group !== undefined && !isValidName(group)) return undefined;
  if (to !== undefined && !isValidName(to)) return undefined;
  return {
    ...(group !== undefined && { group }),
    ...(to !== undefined && { to }),
    from,
    text,
    at,
  };
}
