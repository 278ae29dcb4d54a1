import {
  type AddToGroupOptions,
  MembershipError,
  type MembershipGrant,
  type MembershipUpdate,
  type RemoveReason,
} from "./contract.js";

/** The longest user id or group name, in UTF-16 code units (Azure SignalR Service's group limit). */
export const MAX_NAME_LENGTH = 1024;

const describe = (value: unknown): string =>
  typeof value === "string" ? `a string of ${value.length} code units` : typeof value;

/** Whether `value` is a valid user id or group name: 1 to 1,024 code units, well-formed. */
export const isValidName = (value: unknown): value is string =>
  typeof value === "string" &&
  value.length > 0 &&
  value.length <= MAX_NAME_LENGTH &&
  value.isWellFormed();

/** Throws `INVALID_ARGUMENT` unless `value` is a valid user id or group name. */
export function assertName(kind: "userId" | "group", value: unknown): asserts value is string {
  if (isValidName(value)) return;
  if (typeof value !== "string" || value.length === 0 || value.length > MAX_NAME_LENGTH) {
    throw new MembershipError(
      "INVALID_ARGUMENT",
      `${kind} must be a string of 1 to ${MAX_NAME_LENGTH} UTF-16 code units, got ${describe(value)}`,
    );
  }
  if (!value.isWellFormed()) {
    throw new MembershipError("INVALID_ARGUMENT", `${kind} contains a lone surrogate`);
  }
}

/** Throws `INVALID_ARGUMENT` unless `options` is absent or holds an absent or future `expiresAt`. */
export function readExpiresAt(options: AddToGroupOptions | undefined, now = Date.now()) {
  if (options === undefined) return undefined;
  if (typeof options !== "object" || options === null) {
    throw new MembershipError("INVALID_ARGUMENT", "options must be an object");
  }
  const { expiresAt } = options;
  if (expiresAt === undefined) return undefined;
  if (!(expiresAt instanceof Date) || Number.isNaN(expiresAt.getTime())) {
    throw new MembershipError("INVALID_ARGUMENT", "expiresAt must be a valid Date");
  }
  if (expiresAt.getTime() <= now) {
    throw new MembershipError("INVALID_ARGUMENT", "expiresAt must be in the future");
  }
  return new Date(expiresAt.getTime());
}

/** Throws `CLOSED` once the store is closed. */
export function assertOpen(closed: boolean): void {
  if (closed) throw new MembershipError("CLOSED", "the membership store is closed");
}

/**
 * The one key of a pair of names (a user and a group, a partition and a row) for maps and sets:
 * length-prefixed, because names may hold any character, so no separator could keep two pairs
 * apart (`a\0b` + `c` and `a` + `b\0c`).
 */
export const pairKey = (first: string, second: string) => `${first.length}:${first}${second}`;

/** Ordinal (code unit) comparison, the order of `groupsOf`. */
export const byGroup = (a: { group: string }, b: { group: string }) =>
  a.group < b.group ? -1 : a.group > b.group ? 1 : 0;

/** The `added` change of a grant (no `expiresAt` key when it never expires). */
export const addedChange = (
  userId: string,
  group: string,
  expiresAt: Date | undefined,
): MembershipUpdate =>
  expiresAt ? { type: "added", userId, group, expiresAt } : { type: "added", userId, group };

/** A `removed` change; the reason only when it is not the default, `revoked`. */
export const removedChange = (
  userId: string,
  group: string,
  reason: RemoveReason | undefined,
  pending?: true,
): MembershipUpdate & { type: "removed" } => ({
  type: "removed",
  userId,
  group,
  ...(pending && { pending }),
  ...(reason === "left" && { reason }),
});

/**
 * Validates every grant of `addMany` and keeps one per user and group (the last, in the position
 * of the first), as `added` changes. Throws `INVALID_ARGUMENT` naming the first bad grant.
 */
export function readGrants(
  grants: Iterable<MembershipGrant>,
): Array<MembershipUpdate & { type: "added" }> {
  if (grants === null || typeof grants !== "object" || !(Symbol.iterator in grants)) {
    throw new MembershipError("INVALID_ARGUMENT", "grants must be an iterable of grants");
  }
  const now = Date.now();
  const unique = new Map<string, MembershipUpdate & { type: "added" }>();
  let index = 0;
  for (const grant of grants) {
    try {
      if (grant === null || typeof grant !== "object")
        throw new MembershipError("INVALID_ARGUMENT", "a grant must be an object");
      assertName("userId", grant.userId);
      assertName("group", grant.group);
      const { userId, group } = grant;
      const change = addedChange(userId, group, readExpiresAt(grant, now));
      unique.set(pairKey(userId, group), change as MembershipUpdate & { type: "added" });
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      throw new MembershipError("INVALID_ARGUMENT", `grants[${index}]: ${message}`);
    }
    index++;
  }
  return [...unique.values()];
}

/** Throws `INVALID_ARGUMENT` unless `value` is an integer from 1 to `max`. */
export function assertCount(name: string, value: unknown, max: number): asserts value is number {
  if (!Number.isInteger(value) || (value as number) < 1 || (value as number) > max)
    throw new MembershipError("INVALID_ARGUMENT", `${name} must be an integer from 1 to ${max}`);
}
