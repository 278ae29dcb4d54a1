import type { HistoryMessage, MessageHistory, ResumeRequest } from "../adapters/history/history.js";
import { MemoryHistory } from "../adapters/history/memory.js";
import { parseResume } from "../adapters/history/resume.js";
import type { BroadcastTarget, ResumeReport } from "../adapters/hubs/ws.js";
import {
  isValidName,
  MembershipError,
  type MembershipStore,
  MemoryPresence,
  type Presence,
} from "../adapters/index.js";
import { RedisBroadcast, RedisHistory, RedisPresence } from "../adapters/redis/index.js";
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
 * The sample's messages between servers, whatever their hub: plain chat messages that each
 * server renders for its own endpoints (ws frames, SignalR invocations, Socket.IO events), so a
 * ws, a SignalR and a Socket.IO server on one Redis talk to each other.
 *
 * Group messages go through the message history (on Redis Streams with Redis, in the process
 * without), which keeps them for clients that reconnect and delivers them to every server, this
 * one included; whispers go on one Redis channel. A message reaches every server, or `send`
 * rejects (`STORE_UNAVAILABLE`) having delivered it nowhere, so a retry never duplicates it.
 */
export class ChatBus {
  readonly history: MessageHistory;
  /** Who is online: every hub of this server reports here; with Redis, every server does. */
  readonly presence: Presence;
  readonly #redisHistory: RedisHistory | undefined;
  readonly #bus: RedisBroadcast | undefined;
  readonly #deliver: (target: BroadcastTarget, message: ChatMessage) => void;

  /** `deliver`: a message for this server's endpoints that do not follow the history themselves. */
  constructor(
    config: SampleConfig,
    log: Log,
    store: MembershipStore,
    deliver: (target: BroadcastTarget, message: ChatMessage) => void,
  ) {
    this.#deliver = deliver;
    const down = (client: string) => (err: unknown) =>
      log.error({ event: "redis.down", client, err }, "Redis is unavailable");
    const { redisUrl: url } = config;
    this.#redisHistory =
      url === undefined ? undefined : new RedisHistory({ url, store, onError: down("history") });
    this.history = this.#redisHistory ?? new MemoryHistory({ store });
    this.presence =
      url === undefined
        ? new MemoryPresence()
        : new RedisPresence({ url, onError: down("presence") });
    this.#bus =
      url === undefined
        ? undefined
        : new RedisBroadcast({ url, channel: "hub-membership:chat", onError: down("chat") });
  }

  /** Resolves once other servers' messages arrive. */
  async start(): Promise<void> {
    this.history.subscribe(({ group, payload }) => {
      const message = parseMessage(payload);
      if (message !== undefined) this.#deliver({ group }, message);
    });
    await this.#redisHistory?.start();
    await this.presence.start();
    await this.#bus?.start((target, frame) => {
      const message = parseMessage(frame);
      if (message !== undefined) this.#deliver(target, message);
    });
  }

  async send(target: BroadcastTarget, message: ChatMessage): Promise<void> {
    const frame = Buffer.from(JSON.stringify(message));
    if ("group" in target) return void (await this.history.publish(target.group, frame));
    await this.#bus?.publish(target, frame);
    this.#deliver(target, message);
  }

  async close(): Promise<void> {
    await Promise.all([this.history.close(), this.#bus?.close(), this.presence.close()]);
  }
}

/**
 * A page of who is online in `group` (1,000 users at most; `next` pages on) and how many
 * connections it has, for a client or the admin script; `unavailable` when the presence cannot
 * be read (Redis down): never a stale or empty answer.
 */
export async function onlineOf(presence: Presence, group: string, after?: string) {
  try {
    const [page, count] = await Promise.all([
      presence.online(group, { limit: 1_000, ...(after !== undefined && { after }) }),
      presence.count(group),
    ]);
    return {
      users: page.users,
      connections: count.connections,
      ...(page.next !== undefined && { next: page.next }),
    };
  } catch (error) {
    if (error instanceof MembershipError && error.code === "STORE_UNAVAILABLE")
      return "unavailable" as const;
    throw error;
  }
}

/** A chat message from the history or another server, if it is one. */
export function parseMessage(frame: Buffer): ChatMessage | undefined {
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

/**
 * What a reconnecting client presents, from its URL: `resume`, the JSON of
 * `{ "since": …, "positions": { group: position } }` (see the README). Anything else, or none:
 * a fresh connect.
 */
export function resumeOf(url: URL | undefined): ResumeRequest | undefined {
  const raw = url?.searchParams.get("resume");
  if (raw === null || raw === undefined) return undefined;
  try {
    return parseResume(JSON.parse(raw));
  } catch {
    return undefined; // not JSON: a fresh connect, said as `resumed: false`
  }
}

/** A message of the history as every endpoint renders it: the chat message, with its position. */
export function renderChat(message: HistoryMessage, replayed: boolean) {
  const chat = parseMessage(message.payload);
  if (chat === undefined) return undefined;
  return { ...chat, position: message.position, ...(replayed && { replayed }) };
}

/**
 * The most recent messages of a group (at most `count`) that `userId` may see, oldest first, as
 * `message`s: only what was sent since their membership began, by the store's grant time
 * (`addedAt`, which a new grant moves on) against each message's `at`. The history's marks would
 * tell too, but a server marks a grant when it learns of it, which may be after the member's
 * first messages: the store is the witness that is never late. Nothing when they are not a member.
 */
export async function recentFor(
  history: MessageHistory,
  store: MembershipStore,
  userId: string,
  group: string,
  count: number,
): Promise<Array<NonNullable<ReturnType<typeof renderChat>>>> {
  const [{ entries }, memberships] = await Promise.all([
    history.recent(group, count),
    store.groupsOf(userId),
  ]);
  const since = memberships.find((m) => m.group === group)?.addedAt.getTime();
  const messages = [];
  for (const entry of since === undefined ? [] : entries) {
    const rendered = "payload" in entry ? renderChat(entry, false) : undefined;
    if (rendered !== undefined && Date.parse(rendered.at) >= (since as number))
      messages.push(rendered);
  }
  return messages;
}

/** The `resumed` message: where the client is now, and what it may have missed. */
export function resumedMessage(report: ResumeReport) {
  return {
    type: "resumed",
    resumed: report.resumed,
    since: report.since,
    groups: report.groups.map(({ group, position, recovered }) => ({ group, position, recovered })),
    removed: report.removed,
  };
}
