import type { JoinReason } from "../sync/membership-sync.js";
import type {
  GroupResume,
  HistoryMessage,
  MessageHistory,
  Position,
  ResumeRequest,
} from "./history.js";
import { MAX_POSITIONS, resumeGroups } from "./resume.js";

/** What a resumed connection is sent, in this order, in one turn: see {@link Resumes.finish}. */
export interface ResumeOutcome {
  /** Whether the client presented a position (a fresh connect did not). */
  readonly resumed: boolean;
  /** The client's position in every group it gets no message of (see `MessageHistory.position`). */
  readonly since: Position;
  /** On a resume, per group the connection is in: recovered or not, and its replay. */
  readonly groups: GroupResume[];
  /** Groups whose position the client presented but that it is no longer a member of. */
  readonly removed: string[];
  /** The joins to make now, with their reason, as `MembershipSync` asked for them. */
  readonly joins: ReadonlyArray<readonly [string, JoinReason | undefined]>;
  /** Every message to send, replayed ones first: live ones held meanwhile follow, once each. */
  readonly messages: ReadonlyArray<{ message: HistoryMessage; replayed: boolean }>;
}

interface Resuming {
  readonly userId: string;
  readonly request: ResumeRequest | undefined;
  /** The groups it is to join, in join order, with the reason. */
  readonly joins: Map<string, JoinReason | undefined>;
  /** Live messages of those groups, since the resume began. */
  readonly held: HistoryMessage[];
  /**
   * Groups granted while it resumed: the position of the grant's mark, before which nothing is
   * delivered (`undefined`: the mark failed, so nothing held is).
   */
  readonly floors: Map<string, Promise<Position | undefined>>;
}

/**
 * The resumes in progress of one hub binding, whatever its protocol. While a connection resumes,
 * its joins are held back (no live message reaches it) and the live messages of its groups are
 * held here; its replay is read; then, in one turn, the binding joins it to its groups and sends
 * the replay and the held messages after it, without duplicates. The seam is exact: a message is
 * either in the history read (replayed) or published after it (held or live), and the history's
 * `settled` makes sure no message of the read is still on its way.
 */
export class Resumes {
  readonly #history: MessageHistory;
  readonly #onError: (error: unknown) => void;
  readonly #resuming = new Map<string, Resuming>();
  /** Resuming connections by group: what a live message is held for. */
  readonly #byGroup = new Map<string, Set<Resuming>>();
  /** Grants' joins held until the messages sent before them arrived, by connection and group. */
  readonly #late = new Map<string, Resuming>();

  readonly #retryMs: number;
  readonly #limits: { maxMessages: number; maxBytes: number };

  /**
   * `limits`: what one resume replays at most, in messages and payload bytes (default 10,000
   * and 4 MiB, a slow consumer's limit): a client cannot make the server render and write
   * without bound by presenting old positions in many groups.
   */
  constructor(
    history: MessageHistory,
    onError: (error: unknown) => void,
    limits: { maxMessages?: number; maxBytes?: number; retryMs?: number } = {},
  ) {
    this.#history = history;
    this.#onError = onError;
    this.#retryMs = limits.retryMs ?? 1_000;
    this.#limits = {
      maxMessages: limits.maxMessages ?? 10_000,
      maxBytes: limits.maxBytes ?? 4 * 1024 * 1024,
    };
  }

  /**
   * Starts holding `connectionId`'s joins and live messages; call before it connects. `request`,
   * what the client presented; `undefined` for a fresh connect.
   */
  begin(connectionId: string, userId: string, request: ResumeRequest | undefined): void {
    this.#resuming.set(connectionId, {
      userId,
      request,
      joins: new Map(),
      held: [],
      floors: new Map(),
    });
  }

  /**
   * A join is held for a resuming connection: `true`. A grant's join on a history whose messages
   * arrive late (Redis) is held too, `true`, until every message sent before the grant has
   * arrived, and then `apply` joins and sends the messages held since, if any: a message sent
   * before a grant never reaches the user. Otherwise `false`: make the join.
   */
  join(
    connectionId: string,
    userId: string,
    group: string,
    reason: JoinReason | undefined,
    apply: (messages: HistoryMessage[]) => void,
  ): boolean {
    const resuming = this.#resuming.get(connectionId);
    if (resuming !== undefined) {
      resuming.joins.set(group, reason);
      this.#wait(resuming, group);
      // Granted while resuming, on a history whose messages arrive late: only what comes after
      // the grant's mark is the user's (see below).
      if (reason === "granted" && !this.#history.inProcess)
        resuming.floors.set(
          group,
          this.#history.mark(group, "added", userId).catch((error: unknown) => {
            this.#onError(error);
            return undefined;
          }),
        );
      return true;
    }
    if (reason !== "granted" || this.#history.inProcess) return false;
    const late: Resuming = {
      userId,
      request: undefined,
      joins: new Map([[group, reason]]),
      held: [],
      floors: new Map(),
    };
    const key = `${connectionId}\n${group}`;
    // A join held already is superseded by this one.
    const previous = this.#late.get(key);
    if (previous !== undefined) {
      previous.joins.clear();
      this.#unwait(previous, group);
    }
    this.#late.set(key, late);
    this.#wait(late, group);
    let reported = false;
    const attempt = () =>
      (async () => {
        // Marked once holding began: what comes after the mark is held or still to come, what
        // came before it was sent before the grant was known here.
        const position = await this.#history.mark(group, "added", userId);
        await this.#history.settled();
        return position;
      })().then(
        (position) => {
          if (this.#late.get(key) !== late) return;
          this.#late.delete(key);
          this.#unwait(late, group);
          if (!late.joins.has(group)) return;
          apply(late.held.filter((m) => this.#history.compare(m.position, position) > 0));
        },
        (error: unknown) => {
          // The history is down (and its messages with it): no message can be told from one
          // sent before the grant, so the join waits and is tried again.
          if (!reported) this.#onError(error);
          reported = true;
          if (this.#late.get(key) !== late) return;
          if (late.joins.has(group)) return void setTimeout(attempt, this.#retryMs).unref();
          this.#late.delete(key);
          this.#unwait(late, group);
        },
      );
    void attempt();
    return true;
  }

  /**
   * A leave of a join held here: `true`, and the join is dropped (a resuming connection is to be
   * told it left; a grant's join it was never told of needs no word). Otherwise `false`.
   */
  leave(connectionId: string, group: string): "resuming" | "late" | false {
    const late = this.#late.get(`${connectionId}\n${group}`);
    if (late !== undefined) {
      late.joins.clear();
      return "late";
    }
    const resuming = this.#resuming.get(connectionId);
    if (resuming === undefined) return false;
    resuming.joins.delete(group);
    this.#unwait(resuming, group);
    return "resuming";
  }

  /** A live message: held for every resuming connection about to join its group. */
  hold(message: HistoryMessage): void {
    for (const resuming of this.#byGroup.get(message.group) ?? []) resuming.held.push(message);
  }

  /**
   * Reads what `connectionId` missed in the groups it is to join and, in the same turn as it
   * stops holding, hands `apply` what to do: join, then send. Not called if the connection was
   * {@link cancel}led meanwhile.
   */
  async finish(connectionId: string, apply: (outcome: ResumeOutcome) => void): Promise<void> {
    const resuming = this.#resuming.get(connectionId);
    if (resuming === undefined) return;
    const { request } = resuming;
    // Read once holding began: what comes after it is held, or sent live once joined.
    const since = await this.#history.position().catch((error: unknown) => {
      this.#onError(error);
      return request?.since ?? "";
    });
    // A fresh connect is told its position in each of its groups (the first MAX_POSITIONS):
    // the groups it presents when it resumes are the ones it had.
    const groups =
      request === undefined
        ? [...resuming.joins.keys()]
            .slice(0, MAX_POSITIONS)
            .map((group) => ({ group, recovered: true, messages: [], position: since }))
        : await resumeGroups(
            this.#history,
            resuming.userId,
            [...resuming.joins.keys()],
            request,
            this.#onError,
          );
    // Every message the reads (and the grants' marks) come after has been delivered here
    // (held, or before we held): none of them can still arrive live after this.
    let floors: Map<string, Position | undefined>;
    do {
      const pending = [...resuming.floors];
      floors = new Map(await Promise.all(pending.map(async ([g, p]) => [g, await p] as const)));
      await this.#history.settled().catch(this.#onError);
    } while (floors.size < resuming.floors.size);
    if (this.#resuming.get(connectionId) !== resuming) return;
    this.cancel(connectionId);
    const after = (message: HistoryMessage, position: Position | undefined) =>
      position === "" ||
      (position !== undefined && this.#history.compare(message.position, position) > 0);
    const messages: Array<{ message: HistoryMessage; replayed: boolean }> = [];
    const upTo = new Map<string, Position | undefined>();
    const report: GroupResume[] = [];
    for (const [group, floor] of floors) {
      if (!resuming.joins.has(group)) continue;
      upTo.set(group, floor);
      report.push({ group, recovered: false, messages: [], position: floor ?? since });
    }
    // One resume replays at most `maxMessages` and `maxBytes`: past them, a group keeps its
    // newest messages, and says it lost the rest.
    let count = this.#limits.maxMessages;
    let bytes = this.#limits.maxBytes;
    for (const resume of groups) {
      if (!resuming.joins.has(resume.group) || upTo.has(resume.group)) continue; // see above
      upTo.set(resume.group, resume.position);
      let from = resume.messages.length;
      while (from > 0 && count > 0) {
        const size = (resume.messages[from - 1] as HistoryMessage).payload.length;
        if (size > bytes) break;
        bytes -= size;
        count--;
        from--;
      }
      report.push(from === 0 ? resume : { ...resume, recovered: false });
      for (let i = from; i < resume.messages.length; i++)
        messages.push({ message: resume.messages[i] as HistoryMessage, replayed: true });
    }
    for (const message of resuming.held) {
      if (!resuming.joins.has(message.group)) continue; // left while resuming: told already
      if (!upTo.has(message.group) || after(message, upTo.get(message.group)))
        messages.push({ message, replayed: false });
    }
    const presented = request?.positions.keys() ?? [];
    const removed = [...presented].filter((group) => !resuming.joins.has(group));
    apply({
      resumed: request !== undefined,
      since,
      groups: report,
      removed,
      joins: [...resuming.joins],
      messages,
    });
  }

  /** Stops holding for `connectionId` (it closed, or its resume is done). */
  cancel(connectionId: string): void {
    const prefix = `${connectionId}\n`;
    for (const [key, late] of this.#late)
      if (key.startsWith(prefix)) {
        late.joins.clear();
        this.#late.delete(key);
        this.#unwait(late, key.slice(prefix.length));
      }
    const resuming = this.#resuming.get(connectionId);
    if (resuming === undefined) return;
    this.#resuming.delete(connectionId);
    for (const group of resuming.joins.keys()) this.#unwait(resuming, group);
  }

  #wait(resuming: Resuming, group: string): void {
    const waiting = this.#byGroup.get(group) ?? new Set();
    if (waiting.size === 0) this.#byGroup.set(group, waiting);
    waiting.add(resuming);
  }

  #unwait(resuming: Resuming, group: string): void {
    const waiting = this.#byGroup.get(group);
    waiting?.delete(resuming);
    if (waiting?.size === 0) this.#byGroup.delete(group);
  }
}
