import type { JoinReason } from "../sync/membership-sync.js";
import type { GroupResume, HistoryMessage, MessageHistory, Position } from "./history.js";
import { resumeGroups } from "./resume.js";

/** What a resumed connection is sent, in this order, in one turn: see {@link Resumes.finish}. */
export interface ResumeOutcome {
  /** Per group the connection is in: recovered or not, and its replay. */
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
  readonly positions: ReadonlyMap<string, Position>;
  /** The groups it is to join, in join order, with the reason. */
  readonly joins: Map<string, JoinReason | undefined>;
  /** Live messages of those groups, since the resume began. */
  readonly held: HistoryMessage[];
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

  constructor(history: MessageHistory, onError: (error: unknown) => void) {
    this.#history = history;
    this.#onError = onError;
  }

  /** Starts holding `connectionId`'s joins and live messages; call before it connects. */
  begin(connectionId: string, userId: string, positions: ReadonlyMap<string, Position>): void {
    this.#resuming.set(connectionId, { userId, positions, joins: new Map(), held: [] });
  }

  /** A join for a resuming connection is held: `true`. Otherwise `false`: make it. */
  join(connectionId: string, group: string, reason: JoinReason | undefined): boolean {
    const resuming = this.#resuming.get(connectionId);
    if (resuming === undefined) return false;
    resuming.joins.set(group, reason);
    const waiting = this.#byGroup.get(group) ?? new Set();
    if (waiting.size === 0) this.#byGroup.set(group, waiting);
    waiting.add(resuming);
    return true;
  }

  /** A leave for a resuming connection: its held join is dropped, `true`. Otherwise `false`. */
  leave(connectionId: string, group: string): boolean {
    const resuming = this.#resuming.get(connectionId);
    if (resuming === undefined) return false;
    resuming.joins.delete(group);
    this.#unwait(resuming, group);
    return true;
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
    const groups = await resumeGroups(
      this.#history,
      resuming.userId,
      [...resuming.joins.keys()],
      resuming.positions,
      this.#onError,
    );
    // Every message the reads hold has been delivered here (held, or before we held): none of
    // them can still arrive live after this.
    await this.#history.settled().catch(this.#onError);
    if (this.#resuming.get(connectionId) !== resuming) return;
    this.cancel(connectionId);
    const messages: Array<{ message: HistoryMessage; replayed: boolean }> = [];
    const upTo = new Map<string, Position>();
    for (const resume of groups) {
      if (!resuming.joins.has(resume.group)) continue; // left while resuming: told already
      if (resume.position !== "") upTo.set(resume.group, resume.position);
      for (const message of resume.messages) messages.push({ message, replayed: true });
    }
    for (const message of resuming.held) {
      const last = upTo.get(message.group);
      if (!resuming.joins.has(message.group)) continue;
      if (last === undefined || this.#history.compare(message.position, last) > 0)
        messages.push({ message, replayed: false });
    }
    const removed = [...resuming.positions.keys()].filter((group) => !resuming.joins.has(group));
    apply({
      groups: groups.filter((resume) => resuming.joins.has(resume.group)),
      removed,
      joins: [...resuming.joins],
      messages,
    });
  }

  /** Stops holding for `connectionId` (it closed, or its resume is done). */
  cancel(connectionId: string): void {
    const resuming = this.#resuming.get(connectionId);
    if (resuming === undefined) return;
    this.#resuming.delete(connectionId);
    for (const group of resuming.joins.keys()) this.#unwait(resuming, group);
  }

  #unwait(resuming: Resuming, group: string): void {
    const waiting = this.#byGroup.get(group);
    waiting?.delete(resuming);
    if (waiting?.size === 0) this.#byGroup.delete(group);
  }
}
