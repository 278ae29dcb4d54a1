import pLimit from "p-limit";
import { MembershipError } from "../contract.js";
import { isValidName } from "../validate.js";
import type {
  GroupResume,
  HistoryMark,
  HistoryMessage,
  HistoryRead,
  MessageHistory,
  Position,
  ResumeRequest,
} from "./history.js";

/**
 * Clients may present at most this many positions (the rest are ignored), and a resume reads at
 * most this many groups (the others are `recovered: false`).
 */
export const MAX_POSITIONS = 1_000;

const isMark = (entry: HistoryMessage | HistoryMark): entry is HistoryMark => "type" in entry;

/**
 * What of `read` a user who is a member of its group now may be replayed, and whether that is
 * all it missed.
 *
 * No mark of the user since its position: it was a member all along (it is one now, and every
 * change left a mark), so every message is replayed. Any mark: only the messages after the last
 * mark, if that mark is an `added`, and `recovered: false`. Marks of one change may be written by
 * several servers, each when it learned of it, so a stale `added` can follow a later `removed`:
 * nothing before the last mark is trusted.
 *
 * `granted`: the client did not have the group at its position (it presented none for it), so
 * it gets only what follows a mark of its grant. Without `read.marked` (a reset since: changes
 * may be unmarked) nothing is replayed.
 */
export function replayable(
  read: HistoryRead,
  userId: string,
  granted = false,
): { messages: HistoryMessage[]; recovered: boolean } {
  let start = 0;
  let marked = false;
  let member = !granted;
  read.entries.forEach((entry, i) => {
    if (!isMark(entry) || entry.userId !== userId) return;
    marked = true;
    member = entry.type === "added";
    start = i + 1;
  });
  const messages: HistoryMessage[] = [];
  if (member && read.marked)
    for (let i = start; i < read.entries.length; i++) {
      const entry = read.entries[i] as HistoryMessage | HistoryMark;
      if (!isMark(entry)) messages.push(entry);
    }
  return { messages, recovered: read.complete && read.marked && !marked && !granted };
}

/**
 * What a reconnecting user is owed in each group it is a member of now (`groups`, from the
 * store), given what its client presents: the messages sent while it was a member, in order, or
 * `recovered: false`. Each group is read from its own position, or from `since`; without either
 * it gets `recovered: false`. A group it did not present (granted while it was away) is replayed
 * only after a mark of the grant. Positions of groups it is no longer a member of are ignored (the
 * binding tells it it was removed). A group whose history cannot be read gets
 * `recovered: false` and keeps the presented position.
 */
export async function resumeGroups(
  history: MessageHistory,
  userId: string,
  groups: readonly string[],
  request: ResumeRequest,
  onError: (error: unknown) => void,
): Promise<GroupResume[]> {
  const limit = pLimit(16);
  // One read of the current position, for every group that starts over.
  let now: Promise<Position> | undefined;
  const current = () => {
    now ??= history.position();
    return now;
  };
  const lost = (group: string, position?: Position): Promise<GroupResume> =>
    (position === undefined ? current() : Promise.resolve(position)).then(
      (at) => ({ group, recovered: false, messages: [], position: at }),
      () => ({ group, recovered: false, messages: [], position: "" }),
    );
  // The groups it presented a position for first: past MAX_POSITIONS reads, the rest start over.
  const ordered = [...groups].sort(
    (a, b) => Number(request.positions.has(b)) - Number(request.positions.has(a)),
  );
  return Promise.all(
    ordered.map((group, i) =>
      limit(async (): Promise<GroupResume> => {
        // A group without a position of its own ("" or none) is read from `since`; one it did
        // not present at all it did not have: only what follows its grant's mark is its own.
        const from = request.positions.get(group) || request.since;
        if (from === undefined || i >= MAX_POSITIONS) return lost(group);
        try {
          const read = await history.read(group, from);
          const granted = !request.positions.has(group);
          return { group, ...replayable(read, userId, granted), position: read.position };
        } catch (error) {
          // A position this history never gave (a client's own) is the client's fault: start over.
          if (error instanceof MembershipError && error.code === "INVALID_ARGUMENT")
            return lost(group);
          onError(error);
          return lost(group, from);
        }
      }),
    ),
  );
}

const isPosition = (value: unknown): value is Position =>
  typeof value === "string" && value.length > 0 && value.length <= 100;

/**
 * Reads what a reconnecting client presents, from untrusted JSON:
 * `{ "since": position, "positions": { group: position, ... } }`, at most
 * {@link MAX_POSITIONS} groups (`""` for a group it is in without a position of its own).
 * Anything else is `undefined`: a fresh connect.
 */
export function parseResume(value: unknown): ResumeRequest | undefined {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return undefined;
  const { since, positions: given } = value as Record<string, unknown>;
  if (since !== undefined && !isPosition(since)) return undefined;
  if (typeof given !== "object" || given === null || Array.isArray(given)) return undefined;
  const positions = new Map<string, Position>();
  for (const [group, position] of Object.entries(given)) {
    if (positions.size === MAX_POSITIONS) break;
    if (!isValidName(group) || (position !== "" && !isPosition(position))) return undefined;
    positions.set(group, position);
  }
  return { ...(since !== undefined && { since }), positions };
}
