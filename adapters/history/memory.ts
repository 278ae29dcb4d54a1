import { randomBytes } from "node:crypto";
import { MembershipError, type MembershipStore } from "../contract.js";
import { Listeners } from "../listeners.js";
import { assertCount, assertName } from "../validate.js";
import { followMemberships } from "./follow.js";
import type {
  HistoryMark,
  HistoryMessage,
  HistoryRead,
  MessageHistory,
  Position,
} from "./history.js";

export interface HistoryLimits {
  /** Entries (messages and marks) kept per group. Default 2,000. */
  maxEntries?: number;
  /** How long an entry is kept. Default 10 minutes. */
  maxAgeMs?: number;
}

export interface MemoryHistoryOptions extends HistoryLimits {
  /** The store whose changes are marked (see `followMemberships`). */
  store: MembershipStore;
}

interface Entry {
  readonly seq: number;
  readonly at: number;
  readonly value: HistoryMessage | HistoryMark;
}

interface Log {
  entries: Entry[];
  /** Index of the first entry still kept: trimming moves it, compaction resets it. */
  head: number;
  /** The highest sequence number trimmed away. */
  trimmed: number;
}

/**
 * The in-process history: one sequence of offsets for the whole process, a log per group. It
 * dies with the process: a client resuming elsewhere or after a restart meets another epoch and
 * is told `recovered: false`.
 */
export class MemoryHistory implements MessageHistory {
  readonly inProcess = true;
  readonly #epoch = randomBytes(6).toString("base64url");
  readonly #logs = new Map<string, Log>();
  readonly #listeners = new Listeners<HistoryMessage>();
  readonly #maxEntries: number;
  readonly #maxAgeMs: number;
  readonly #unfollow: () => void;
  #seq = 0;
  /** Positions below this are not provably complete: a reset, or a forgotten group's trim. */
  #floor = 0;

  constructor(options: MemoryHistoryOptions) {
    this.#maxEntries = options.maxEntries ?? 2_000;
    this.#maxAgeMs = options.maxAgeMs ?? 600_000;
    this.#unfollow = followMemberships(options.store, this);
  }

  async publish(group: string, payload: Buffer): Promise<Position> {
    assertName("group", group);
    const message: HistoryMessage = { group, position: this.#position(++this.#seq), payload };
    this.#append(group, message);
    this.#listeners.emit(message);
    return message.position;
  }

  subscribe(listener: (message: HistoryMessage) => void): () => void {
    return this.#listeners.add(listener);
  }

  /** Delivery is synchronous: everything published is delivered already. */
  async settled(): Promise<void> {}

  async position(): Promise<Position> {
    return this.#position(this.#seq);
  }

  async mark(group: string, type: "added" | "removed", userId: string): Promise<Position> {
    const log = this.#logs.get(group);
    // A mark goes only into a group that has entries: until a message comes after it, a mark
    // changes no replay, and a user who lost a group regains it only by a grant, marked after
    // that message. (A bulk grant costs no memory per grant.)
    if (log !== undefined && log.head < log.entries.length)
      this.#append(group, { type, userId }, ++this.#seq);
    return this.#position(this.#seq);
  }

  async reset(): Promise<void> {
    this.#floor = this.#seq;
  }

  async read(group: string, position: Position): Promise<HistoryRead> {
    assertName("group", group);
    const after = this.#parse(position);
    if (after === undefined)
      return { entries: [], complete: false, marked: false, position: this.#position(this.#seq) };
    const log = this.#logs.get(group);
    if (log !== undefined) this.#trim(log, Date.now());
    const entries: Array<HistoryMessage | HistoryMark> = [];
    for (let i = log?.head ?? 0; log !== undefined && i < log.entries.length; i++) {
      const entry = log.entries[i] as Entry;
      if (entry.seq > after) entries.push(entry.value);
    }
    const marked = after >= this.#floor && after <= this.#seq;
    const complete = marked && after >= (log?.trimmed ?? 0);
    return { entries, complete, marked, position: this.#position(Math.max(after, this.#seq)) };
  }

  async recent(group: string, count: number): Promise<HistoryRead> {
    assertName("group", group);
    assertCount("count", count, 1_000);
    const log = this.#logs.get(group);
    if (log !== undefined) this.#trim(log, Date.now());
    const entries: Array<HistoryMessage | HistoryMark> = [];
    let messages = 0;
    let first = this.#seq + 1;
    for (let i = (log?.entries.length ?? 0) - 1; log && i >= log.head && messages < count; i--) {
      const entry = log.entries[i] as Entry;
      entries.push(entry.value);
      first = entry.seq;
      if ("payload" in entry.value) messages++;
    }
    const marked = first - 1 >= this.#floor;
    const oldest = log?.entries[log.head]?.seq ?? first;
    const complete = marked && first <= oldest && first - 1 >= (log?.trimmed ?? 0);
    return { entries: entries.reverse(), complete, marked, position: this.#position(this.#seq) };
  }

  compare(a: Position, b: Position): number {
    const order = (p: Position) => {
      try {
        return this.#parse(p) ?? -1;
      } catch {
        return -2; // not a position: before any
      }
    };
    return order(a) - order(b);
  }

  async close(): Promise<void> {
    this.#unfollow();
    this.#listeners.clear();
  }

  #append(group: string, value: HistoryMessage | HistoryMark, seq = this.#seq): void {
    const at = Date.now();
    let log = this.#logs.get(group);
    if (log === undefined) {
      log = { entries: [], head: 0, trimmed: 0 };
      this.#logs.set(group, log);
    }
    log.entries.push({ seq, at, value });
    this.#trim(log, at);
  }

  #trim(log: Log, now: number): void {
    const oldest = now - this.#maxAgeMs;
    while (log.head < log.entries.length) {
      const entry = log.entries[log.head] as Entry;
      if (log.entries.length - log.head <= this.#maxEntries && entry.at > oldest) break;
      log.trimmed = entry.seq;
      log.head++;
    }
    if (log.head > 64 && log.head * 2 > log.entries.length) {
      log.entries = log.entries.slice(log.head);
      log.head = 0;
    }
  }

  #position(seq: number): Position {
    return `${this.#epoch}.${seq}`;
  }

  /** The sequence number of one of this history's positions; `undefined` for another epoch's. */
  #parse(position: Position): number | undefined {
    const dot = typeof position === "string" ? position.indexOf(".") : -1;
    const seq = Number(position.slice(dot + 1));
    if (dot < 0 || !Number.isSafeInteger(seq) || seq < 0 || !/^\d+$/.test(position.slice(dot + 1)))
      throw new MembershipError("INVALID_ARGUMENT", "not a position of a message history");
    return position.slice(0, dot) === this.#epoch ? seq : undefined;
  }
}
