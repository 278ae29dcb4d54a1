/**
 * The message-history contract: what lets a client that reconnects get the group messages it
 * missed, and only those it may see. Every history implements {@link MessageHistory}; the
 * property tests in `test/history.test.ts` and `test/history.redis.ts` check the rules written
 * here against a model.
 *
 * A history keeps, per group, the messages sent to it and a mark of every membership change of
 * the group, in one order: offsets that only grow, given by one sequencer (this process, or
 * Redis), never by comparing servers' clocks. A client's place in a group is a
 * {@link Position}: the history's epoch and an offset.
 *
 * @module
 */

/** Where a client is in a group's history: opaque, from `publish`, `position` or `read`. */
export type Position = string;

/** One message of a group, as delivered live or replayed. */
export interface HistoryMessage {
  readonly group: string;
  /** The message's place: a client that got it holds this position for the group. */
  readonly position: Position;
  readonly payload: Buffer;
}

/** A membership change as the history recorded it, between the messages. */
export interface HistoryMark {
  readonly type: "added" | "removed";
  readonly userId: string;
}

/** What {@link MessageHistory.read} found after a position. */
export interface HistoryRead {
  /** Messages and marks after the position, in order. Marks carry no position. */
  readonly entries: ReadonlyArray<HistoryMessage | HistoryMark>;
  /**
   * `true` only when `entries` is provably everything since the position: the epoch is the
   * same, nothing after it was trimmed, and no `reset` came since.
   */
  readonly complete: boolean;
  /**
   * `true` when every membership change since the position is marked, in `entries` or before
   * them (trimmed, with the messages before them): the same epoch and no `reset` since. Without
   * it, no message of the read may be replayed.
   */
  readonly marked: boolean;
  /** The group's position after the last entry (the position read from if there are none). */
  readonly position: Position;
}

/**
 * Per-group history of messages and membership marks, shared by every process that uses the same
 * backing (the in-process history: this process only; `RedisHistory`: every server on one Redis).
 */
export interface MessageHistory {
  /**
   * `true` when `publish` delivers to this process's listeners before it resolves and no other
   * process publishes: a message can never arrive after a later membership change, so joins
   * need not wait for messages on their way.
   */
  readonly inProcess: boolean;

  /**
   * Appends `payload` to `group`'s history and delivers it to every `subscribe` listener in
   * every process sharing the history, in position order per group (its own process included).
   * @returns the message's position.
   * @throws MembershipError `STORE_UNAVAILABLE` when the history cannot take it: the message was
   * then delivered nowhere, so a retry does not duplicate it.
   */
  publish(group: string, payload: Buffer): Promise<Position>;

  /**
   * Delivers every message published from now on, by any process sharing the history, once, in
   * position order per group. A listener that throws does not stop delivery to the others.
   * @returns a function that unsubscribes; calling it again does nothing.
   */
  subscribe(listener: (message: HistoryMessage) => void): () => void;

  /**
   * Resolves once every message published (by any process) before the call has been delivered to
   * this process's `subscribe` listeners: what a replay waits for, so that no message it read
   * arrives live after it.
   * @throws MembershipError `STORE_UNAVAILABLE` when that cannot be made sure of.
   */
  settled(): Promise<void>;

  /**
   * A position for every group: each group's next message comes after it. What a client that
   * connects now holds for the groups it has no message of yet. Reads only.
   */
  position(): Promise<Position>;

  /**
   * Records a membership change of `userId` in `group`'s history, between the messages published
   * before and after it. A `removed` mark is written before the revoke is stored, an `added` one
   * after the grant is.
   * @returns a position after every message published before the mark and before every later
   * one (a group with no entries kept needs no mark: then a position before its next message).
   * @throws MembershipError `STORE_UNAVAILABLE` when the mark may not have been written: every
   * later {@link read} of this instance is then incomplete until a {@link reset} went through
   * (a missed mark must never let a message through).
   */
  mark(group: string, type: "added" | "removed", userId: string): Promise<Position>;

  /**
   * Changes may have been missed (the store's feed said `resync`): no position from before now
   * can be proven complete any more, in any process sharing the history. Retried by `read`
   * until it went through. Never rejects.
   */
  reset(): Promise<void>;

  /**
   * The entries of `group` after `position`, oldest first, with whether they are provably all.
   * @throws MembershipError `INVALID_ARGUMENT` for a position this history did not give (a
   * malformed one from a client; a position of another epoch is not an error: `complete: false`);
   * `STORE_UNAVAILABLE` when the backing does not answer.
   */
  read(group: string, position: Position): Promise<HistoryRead>;

  /**
   * The group's most recent entries still kept, oldest first: its last `count` messages (fewer
   * when fewer are kept; a long run of marks may cut it shorter), with the marks among them.
   * For a member asking what was said before they came: who may see which message is the
   * caller's to decide from the marks (see the sample's `History`). `marked` as in `read`, from
   * the first entry returned; `complete` when nothing before them is kept either.
   * @throws MembershipError `INVALID_ARGUMENT` for a malformed group or a `count` that is not an
   * integer from 1 to 1,000; `STORE_UNAVAILABLE` when the backing does not answer.
   */
  recent(group: string, count: number): Promise<HistoryRead>;

  /**
   * Orders two positions of one group from this history: negative when `a` came first, 0 when
   * they are the same, positive otherwise. Positions of another epoch come first.
   */
  compare(a: Position, b: Position): number;

  /** Stops delivery and releases what the history opened. Idempotent. */
  close(): Promise<void>;
}

/** What a reconnecting client presents: see `parseResume`. */
export interface ResumeRequest {
  /** Where it was in every group it has no position of its own for. */
  readonly since?: Position;
  /** Its position in each group it got a message of. */
  readonly positions: ReadonlyMap<string, Position>;
}

/** What a reconnecting client is owed in one group: see `resumeGroups`. */
export interface GroupResume {
  readonly group: string;
  /** `false`: messages may be missing; the client should re-fetch the group if it cares. */
  readonly recovered: boolean;
  /** The messages to replay, in order. */
  readonly messages: readonly HistoryMessage[];
  /** The client's position once they are delivered. */
  readonly position: Position;
}
