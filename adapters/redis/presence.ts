import { randomBytes } from "node:crypto";
import { MembershipError } from "../contract.js";
import { Listeners } from "../listeners.js";
import type {
  OnlinePage,
  OnlineQuery,
  Presence,
  PresenceCount,
  PresenceEvent,
  PresenceSource,
} from "../presence/presence.js";
import { type Contribution, pageOf, Sources } from "../presence/sources.js";
import { assertName, isValidName } from "../validate.js";
import {
  type RedisConnections as Connections,
  RedisConnections,
  type RedisTarget,
  redisUnavailable,
} from "./client.js";

export type RedisPresenceOptions = RedisTarget & {
  /**
   * Prefix of every key and of the channel. Default `hub-membership:presence`; it must differ
   * from a `RedisHistory`'s on the same Redis (their keys would clash).
   */
  prefix?: string;
  /**
   * How long a server's entries outlive its last heartbeat (sent every `leaseMs / 3`). Default
   * 3 s: a dead server's users are gone within about 4 s.
   */
  leaseMs?: number;
  /** How long a command may take. Default 2 s. */
  timeoutMs?: number;
  /** Redis failures (then repaired by a resync). Default: a process warning. */
  onError?: (error: unknown) => void;
};

// Time from Redis, never from the servers: leases do not rest on clocks agreeing.
const NOW = `local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)`;

// ARGV: prefix. Changes one user's connections in one group by `d`, noting the event if any.
const APPLY = `
local p = ARGV[1]
local events = {}
local function change(group, user, d)
  if d == 0 then return end
  local total = redis.call('HINCRBY', p .. ':g:' .. group, user, d)
  if redis.call('INCRBY', p .. ':gn:' .. group, d) <= 0 then redis.call('DEL', p .. ':gn:' .. group) end
  if total <= 0 then
    redis.call('HDEL', p .. ':g:' .. group, user)
    redis.call('ZREM', p .. ':gl:' .. group, user)
    if total - d > 0 then table.insert(events, {group, user, false}) end
  elseif total - d <= 0 then
    redis.call('ZADD', p .. ':gl:' .. group, 0, user)
    table.insert(events, {group, user, true})
  end
end
local function counts(c)
  local byGroup = {}
  for i = 2, #c, 2 do byGroup[c[i]] = c[i + 1] end
  return byGroup
end
-- Replaces what server sid contributes for user by new (JSON [connections, group, n, ...]).
local function apply(sid, user, new)
  local key = p .. ':s:' .. sid
  local raw = redis.call('HGET', key, user)
  local old = raw and cjson.decode(raw) or {0}
  local next = cjson.decode(new)
  local before, after = counts(old), counts(next)
  for group, n in pairs(before) do change(group, user, (after[group] or 0) - n) end
  for group, n in pairs(after) do if before[group] == nil then change(group, user, n) end end
  local d = next[1] - old[1]
  if d ~= 0 then
    if redis.call('HINCRBY', p .. ':u', user, d) <= 0 then redis.call('HDEL', p .. ':u', user) end
    if redis.call('INCRBY', p .. ':n', d) <= 0 then redis.call('DEL', p .. ':n') end
  end
  if next[1] > 0 then redis.call('HSET', key, user, new) else redis.call('HDEL', key, user) end
end
local function announce()
  if #events > 0 then redis.call('PUBLISH', p .. ':events', cjson.encode(events)) end
end
`;

// ARGV: prefix, sid, the number of reports Redis should hold of sid, then user, contribution
// pairs. Applied only while sid's lease holds and Redis holds every report sid made since it
// registered: a server taken for dead, or a Redis restored from an older snapshot or failed over
// to a lagging replica, makes the server register again and send everything.
const SET = `${APPLY}
${NOW}
local lease = redis.call('ZSCORE', p .. ':servers', ARGV[2])
if not lease or tonumber(lease) < now then return 1 end
if redis.call('HGET', p .. ':seq', ARGV[2]) ~= ARGV[3] then return 1 end
for i = 4, #ARGV, 2 do apply(ARGV[2], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', p .. ':seq', ARGV[2], tonumber(ARGV[3]) + 1)
announce()
return 0`;

// ARGV: prefix, sid, leaseMs, batch, the number of reports (or '' not to check). Renews the lease
// (0) or says it was lost (1); then takes up to batch users of one dead server out of presence.
// Returns {lost, more to reap}.
const BEAT = `${APPLY}
${NOW}
local servers = p .. ':servers'
local lease = redis.call('ZSCORE', servers, ARGV[2])
local lost = 0
if not lease or tonumber(lease) < now then lost = 1
elseif ARGV[5] ~= '' and redis.call('HGET', p .. ':seq', ARGV[2]) ~= ARGV[5] then lost = 1
else redis.call('ZADD', servers, now + tonumber(ARGV[3]), ARGV[2]) end
local more = 0
local dead = redis.call('ZRANGEBYSCORE', servers, '-inf', '(' .. now, 'LIMIT', 0, 1)
for _, sid in ipairs(dead) do
  local key = p .. ':s:' .. sid
  local fields = redis.call('HRANDFIELD', key, tonumber(ARGV[4]))
  for _, user in ipairs(fields) do apply(sid, user, '[0]') end
  if redis.call('EXISTS', key) == 0 then
    redis.call('ZREM', servers, sid)
    redis.call('HDEL', p .. ':seq', sid)
  else more = 1 end
end
announce()
return {lost, more}`;

// ARGV: prefix, sid, leaseMs. Takes the lease again; returns the users it still holds entries of.
const REGISTER = `${NOW}
local p = ARGV[1]
redis.call('ZADD', p .. ':servers', now + tonumber(ARGV[3]), ARGV[2])
redis.call('HSET', p .. ':seq', ARGV[2], 0)
return redis.call('HKEYS', p .. ':s:' .. ARGV[2])`;

// KEYS: a users hash, a connections counter. One round trip for both.
const COUNT = `return {redis.call('HLEN', KEYS[1]), tonumber(redis.call('GET', KEYS[2]) or '0')}`;

/** Users a resync or reap sends per command. */
const BATCH = 500;

/**
 * Presence shared by every server on one Redis. Each process contributes, per user, its
 * connections and how many are in each group; Redis keeps the sums (per group: a hash of users'
 * connections, a sorted set for paging, a counter), so a count is O(1) and a page is a range.
 *
 * A report is one command, however many groups the user has (one script applies the whole
 * difference and publishes the events it caused, so each fires once, cluster-wide). Each report
 * states the user's whole contribution, so a retry or a late duplicate changes nothing.
 *
 * Each process holds a lease in Redis (Redis's clock), renewed every `leaseMs / 3`. Any server's
 * heartbeat takes a server whose lease ran out (killed, cut off) out of presence. A server that
 * finds its lease gone (it was taken for dead, or Redis restarted empty) registers again and
 * sends its whole contribution; a report that fails has it do the same.
 */
export class RedisPresence implements Presence {
  readonly #redis: Connections;
  readonly #prefix: string;
  readonly #sid = randomBytes(9).toString("base64url");
  readonly #leaseMs: number;
  readonly #timeoutMs: number;
  readonly #onError: (error: unknown) => void;
  readonly #sources = new Sources((userId) => this.#send(userId));
  readonly #listeners = new Listeners<PresenceEvent>();
  /** Users to send, in the next command. */
  readonly #dirty = new Set<string>();
  /** The flush or registration under way: one at a time, so reports reach Redis in order. */
  #busy: Promise<void> | undefined;
  /** Reports Redis holds of this server since it registered, if all went well: checked by each. */
  #seq = 0;
  /** Everything must be sent again (the lease was lost, or a report failed). */
  #resync = true;
  #timer: NodeJS.Timeout | undefined;
  #started: Promise<unknown> | undefined;
  #failing = false;
  #closed = false;

  constructor(options: RedisPresenceOptions) {
    this.#prefix = options.prefix ?? "hub-membership:presence";
    this.#leaseMs = options.leaseMs ?? 3_000;
    this.#timeoutMs = options.timeoutMs ?? 2_000;
    if (!Number.isSafeInteger(this.#timeoutMs) || this.#timeoutMs < 1)
      throw new MembershipError("INVALID_ARGUMENT", "timeoutMs must be a whole number of ms ≥ 1");
    // A heartbeat (every leaseMs / 3) must come back before the lease runs out.
    if (
      !Number.isSafeInteger(this.#leaseMs) ||
      this.#leaseMs < 300 ||
      this.#leaseMs <= this.#timeoutMs
    )
      throw new MembershipError(
        "INVALID_ARGUMENT",
        "leaseMs must be a whole number of ms, at least 300 and more than timeoutMs",
      );
    this.#onError =
      options.onError ??
      ((error) => process.emitWarning(`hub-membership: Redis presence: ${String(error)}`));
    this.#redis = new RedisConnections(options, (error) => this.#report(error));
  }

  /**
   * Subscribes to events and takes this server's lease; resolves once both are done. The first
   * report starts it too, but only a start you await tells you Redis is not there.
   */
  start(): Promise<unknown> {
    this.#started ??= (async () => {
      const subscriber = await this.#redis.own();
      await subscriber.subscribe(
        `${this.#prefix}:events`,
        (message) => this.#receive(message),
        true,
      );
      await this.#beat();
      if (this.#closed) return;
      this.#timer = setInterval(() => void this.#beat(), this.#leaseMs / 3);
      this.#timer.unref();
    })().catch((error: unknown) => {
      this.#started = undefined;
      throw redisUnavailable(error);
    });
    return this.#started;
  }

  source(): PresenceSource {
    return this.#sources.source();
  }

  async count(group: string): Promise<PresenceCount> {
    assertName("group", group);
    return this.#count(`${this.#prefix}:g:${group}`, `${this.#prefix}:gn:${group}`);
  }

  total(): Promise<PresenceCount> {
    return this.#count(`${this.#prefix}:u`, `${this.#prefix}:n`);
  }

  async online(group: string, query?: OnlineQuery): Promise<OnlinePage> {
    const { after, limit } = pageOf(group, query);
    const from = after === undefined ? "-" : `(${after}`;
    const key = `${this.#prefix}:gl:${group}`;
    const reply = (await this.#command([
      "ZRANGE",
      key,
      from,
      "+",
      "BYLEX",
      "LIMIT",
      "0",
      String(limit + 1),
    ])) as string[];
    const users = reply.slice(0, limit);
    return reply.length > limit ? { users, next: users.at(-1) as string } : { users };
  }

  async isOnline(userId: string, group?: string): Promise<boolean> {
    assertName("userId", userId);
    if (group !== undefined) assertName("group", group);
    const key = group === undefined ? `${this.#prefix}:u` : `${this.#prefix}:g:${group}`;
    return (await this.#command(["HEXISTS", key, userId])) === 1;
  }

  subscribe(listener: (event: PresenceEvent) => void): () => void {
    return this.#listeners.add(listener);
  }

  /** Withdraws this server's entries (one command) and closes its connections. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
    this.#sources.closeAll(); // each user withdrawn goes to #dirty, sent below
    this.#listeners.clear();
    // What was reported goes now rather than at the lease's end: other servers see these users
    // leave at once.
    await this.#busy;
    const users = [...this.#dirty];
    this.#dirty.clear();
    if (users.length > 0 && !this.#resync) await this.#set(users).catch(() => undefined);
    await this.#redis.close();
  }

  #send(userId: string): void {
    this.#dirty.add(userId);
    // Reports need the lease and its heartbeat: a presence nobody started starts with them.
    if (this.#started === undefined && !this.#closed)
      this.start().catch((error: unknown) => this.#report(error));
    this.#busy ??= this.#flush();
  }

  /**
   * Sends the dirty users, one command at a time, in order: each says the user's whole
   * contribution at the time it is sent, so the last one Redis applies is the current truth.
   */
  async #flush(): Promise<void> {
    try {
      await Promise.resolve(); // this turn's reports go together
      while (this.#dirty.size > 0 && !this.#resync && !this.#closed) {
        const users = [...this.#dirty].slice(0, BATCH);
        for (const userId of users) this.#dirty.delete(userId);
        if ((await this.#set(users)) === 1) this.#resync = true;
      }
    } catch (error) {
      this.#report(error);
      this.#resync = true;
    } finally {
      this.#busy = undefined;
    }
  }

  /** One command: `users`' contributions as they are now. Resolves 1 if the lease was lost. */
  async #set(users: readonly string[]): Promise<unknown> {
    const args: string[] = [];
    for (const userId of users) args.push(userId, encode(this.#sources.of(userId)));
    const seq = String(this.#seq);
    const lost = await this.#command(["EVAL", SET, "0", this.#prefix, this.#sid, seq, ...args]);
    if (lost === 0) this.#seq++;
    return lost;
  }

  /** Renews the lease and reaps dead servers; registers again and resends all if needed. */
  async #beat(): Promise<void> {
    if (this.#closed) return;
    try {
      let more = 1;
      for (let round = 0; more === 1 && round < 20 && !this.#closed; round++) {
        // The count of reports is checked only between them: a report in flight would be
        // counted by Redis before this beat and by us after it.
        const seq = this.#busy === undefined && !this.#resync ? String(this.#seq) : "";
        const [lost, rest] = (await this.#command([
          "EVAL",
          BEAT,
          "0",
          this.#prefix,
          this.#sid,
          String(this.#leaseMs),
          String(BATCH),
          seq,
        ])) as [number, number];
        if (lost === 1) this.#resync = true;
        more = rest;
      }
      if (this.#resync && this.#busy === undefined && !this.#closed) {
        this.#busy = this.#register();
        await this.#busy;
      }
      this.#failing = false;
    } catch (error) {
      this.#report(error);
    }
  }

  /**
   * Takes the lease and sends every user this server holds or held entries of. Reports made
   * meanwhile wait: each user is sent as it is at its turn, so nothing older overtakes it.
   */
  async #register(): Promise<void> {
    try {
      const held = (await this.#command([
        "EVAL",
        REGISTER,
        "0",
        this.#prefix,
        this.#sid,
        String(this.#leaseMs),
      ])) as string[];
      this.#seq = 0;
      this.#resync = false;
      const users = new Set([...held, ...this.#sources.users(), ...this.#dirty]);
      this.#dirty.clear();
      const all = [...users];
      for (let i = 0; i < all.length; i += BATCH) {
        if ((await this.#set(all.slice(i, i + BATCH))) === 1)
          throw new Error("the lease was lost while registering");
      }
    } catch (error) {
      this.#resync = true;
      throw error;
    } finally {
      this.#busy = undefined;
    }
    if (this.#dirty.size > 0) this.#busy ??= this.#flush();
  }

  async #count(users: string, connections: string): Promise<PresenceCount> {
    const [u, n] = (await this.#command(["EVAL", COUNT, "2", users, connections])) as [
      number,
      number,
    ];
    return { users: u, connections: Math.max(0, n) };
  }

  #command(command: string[]): Promise<unknown> {
    return this.#redis.command(command, this.#timeoutMs);
  }

  #receive(message: Buffer): void {
    let events: unknown;
    try {
      events = JSON.parse(message.toString());
    } catch {
      return; // anyone who can reach Redis can publish here
    }
    if (!Array.isArray(events)) return;
    for (const event of events) {
      if (!Array.isArray(event)) continue;
      const [group, userId, online] = event as unknown[];
      if (isValidName(group) && isValidName(userId) && typeof online === "boolean")
        this.#listeners.emit({ group, userId, online });
    }
  }

  #report(error: unknown): void {
    if (this.#failing) return;
    this.#failing = true;
    this.#onError(redisUnavailable(error));
  }
}

/** A contribution as the scripts read it: JSON `[connections, group, n, group, n, ...]`. */
function encode({ connections, groups }: Contribution): string {
  const flat: Array<string | number> = [connections];
  for (const [group, n] of groups) flat.push(group, n);
  return JSON.stringify(flat);
}
