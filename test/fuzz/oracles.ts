/**
 * What a server must do with a client's frames, from the protocols' documentation alone (the
 * sample's `ws` protocol in sample/README.md, SignalR's JSON hub protocol in docs/bindings.md):
 * the frames.test.ts properties compare the servers' answers with these.
 */
import { isUtf8 } from "node:buffer";
import { expand, OPEN_GROUP, RS, type SignalRSession, type WsFrame } from "./arbitraries.js";

/** A valid name (README, "The contract"): 1 to 1,024 UTF-16 code units, well formed. */
export const isName = (value: unknown): value is string =>
  typeof value === "string" && value.length >= 1 && value.length <= 1_024 && value.isWellFormed();

/** What the server gets of a frame: bytes, and whether they came as a binary frame. */
export function wireOf(frame: WsFrame): { data: Buffer; binary: boolean } {
  if ("text" in frame) return { data: Buffer.from(expand(frame.text)), binary: false };
  if ("binary" in frame) return { data: Buffer.from(expand(frame.binary)), binary: true };
  return { data: Buffer.from(frame.bytes), binary: false };
}

/** What the sample answers one frame with, and how the user's groups change. */
export type WsAnswer =
  | { readonly close: number }
  | { readonly error: string }
  | { readonly ok: true; readonly join?: string; readonly leave?: string };

/** The sample's largest frame (sample/README.md: "Frames over 64 KiB close … with 1009"). */
export const SAMPLE_MAX_FRAME = 64 * 1024;

/** The sample's answer to one frame of its `ws` protocol, for a user in `groups`. */
export function sampleWsAnswer(frame: WsFrame, groups: ReadonlySet<string>): WsAnswer {
  const { data, binary } = wireOf(frame);
  if (data.length > SAMPLE_MAX_FRAME) return { close: 1009 };
  if (!binary && !isUtf8(data)) return { close: 1007 }; // RFC 6455: text frames are UTF-8
  if (binary) return { error: "bad_request" };
  let message: unknown;
  try {
    message = JSON.parse(data.toString());
  } catch {
    return { error: "bad_request" };
  }
  if (typeof message !== "object" || message === null || Array.isArray(message))
    return { error: "bad_request" };
  const m = message as Record<string, unknown>;
  const text = typeof m.text === "string" && m.text.isWellFormed();
  switch (m.type) {
    case "send":
      if (!isName(m.group) || !text) return { error: "bad_request" };
      return groups.has(m.group) ? { ok: true } : { error: "not_member" };
    case "whisper":
      return isName(m.to) && text ? { ok: true } : { error: "bad_request" };
    case "join":
      if (!isName(m.group)) return { error: "bad_request" };
      return m.group === OPEN_GROUP ? { ok: true, join: m.group } : { error: "forbidden" };
    case "leave":
      if (!isName(m.group)) return { error: "bad_request" };
      return groups.has(m.group) ? { ok: true, leave: m.group } : { error: "not_member" };
    case "online":
      if (!isName(m.group) || (m.after !== undefined && !isName(m.after)))
        return { error: "bad_request" };
      return groups.has(m.group) ? { ok: true } : { error: "not_member" };
    default:
      return { error: "bad_request" };
  }
}

/** Frames in order: the error codes answered, where the connection closes, the groups after each. */
export function sampleWsExpectation(frames: readonly WsFrame[], groups: readonly string[]) {
  const errors: string[] = [];
  const states: string[][] = [[...groups].sort()];
  const current = new Set(groups);
  for (const frame of frames) {
    const answer = sampleWsAnswer(frame, current);
    if ("close" in answer) return { errors, states, close: answer.close };
    if ("error" in answer) errors.push(answer.error);
    if ("ok" in answer) {
      if (answer.join) current.add(answer.join);
      if (answer.leave) current.delete(answer.leave);
      states.push([...current].sort());
    }
  }
  return { errors, states, close: undefined };
}

// ---------------------------------------------------------------------------------------------
// SignalR

/** A hub method as the binding sees it: its arity, and what it does to the caller's groups. */
export interface MethodModel {
  readonly arity: number;
  readonly effect?: (args: readonly unknown[], groups: Set<string>) => void;
}

/** The sample's hub methods (sample/README.md, "SignalR clients"). */
export const SAMPLE_METHODS: Record<string, MethodModel> = {
  send: { arity: 2 },
  whisper: { arity: 2 },
  join: {
    arity: 1,
    effect: ([group], groups) => {
      if (group === OPEN_GROUP) groups.add(group);
    },
  },
  leave: {
    arity: 1,
    effect: ([group], groups) => {
      if (isName(group)) groups.delete(group);
    },
  },
};

/** The quick start's one method. */
export const QUICK_START_METHODS: Record<string, MethodModel> = { send: { arity: 2 } };

/** Splits `text` at the given fractions of its length, between code points. */
export function cut(text: string, at: readonly number[]): string[] {
  const points = Array.from(text);
  const ends = [...new Set(at.map((f) => Math.round(f * points.length)))]
    .filter((i) => i > 0 && i < points.length)
    .sort((a, b) => a - b);
  const parts: string[] = [];
  let start = 0;
  for (const end of [...ends, points.length]) {
    parts.push(points.slice(start, end).join(""));
    start = end;
  }
  return parts.filter((part) => part.length > 0);
}

/** The text frames a session sends, the sentinel (a message of its own) last. */
export function signalrFrames(session: SignalRSession, sentinel: string): string[] {
  const body = session.messages.map(([message, separator]) => `${expand(message)}${separator}`);
  const rest = cut(body.join(""), session.cuts);
  const frames = session.handshakeAlone
    ? [session.handshake, ...rest]
    : cut(`${session.handshake}${body.join("")}`, session.cuts);
  return [...frames.filter((f) => f.length > 0), `${sentinel}${RS}`];
}

export interface SignalRExpectation {
  /** The handshake's answer: `{}`, or an error (and a close). */
  readonly handshake: "ok" | "error";
  /**
   * How the connection ends, if it must: a close message, a plain close, or a frame refused
   * (1009) as it arrives, maybe before anything sent earlier was read or answered.
   */
  readonly end: "close message" | "close" | "frame too large" | undefined;
  /** The invocation ids completed before that, in order. */
  readonly completions: readonly string[];
  /** The caller's groups after each message. */
  readonly states: readonly string[][];
}

const byteLength = (text: string) => Buffer.byteLength(text);

/** What a SignalR server answers `frames` with (docs/bindings.md's table, HubProtocol.md). */
export function signalrExpectation(
  frames: readonly string[],
  options: { maxMessageBytes: number; methods: Record<string, MethodModel>; groups: string[] },
): SignalRExpectation {
  const groups = new Set(options.groups);
  const states = [[...groups].sort()];
  const completions: string[] = [];
  // A frame past maxPayload (maxMessageBytes and the separator) is refused as it arrives (1009),
  // maybe before anything sent earlier was read: then only what did happen can be checked.
  const tooLarge = frames.findIndex((f) => byteLength(f) > options.maxMessageBytes + 1);
  const read = (tooLarge < 0 ? frames : frames.slice(0, tooLarge)).join("");
  const result = (
    end: SignalRExpectation["end"],
    handshake: SignalRExpectation["handshake"] = "ok",
  ): SignalRExpectation => ({
    handshake,
    end: tooLarge < 0 ? end : "frame too large",
    completions,
    states,
  });
  const [handshake = "", ...pieces] = read.split(RS);
  // A handshake too large is refused before its end arrives ("Handshake was canceled.").
  if (byteLength(handshake) > options.maxMessageBytes) return result(undefined, "error");
  const request = read.includes(RS) ? parseObject(handshake) : undefined;
  // Version 2 is version 1 with Ack and Sequence (stateful reconnect): ASP.NET Core takes both.
  if (request?.protocol !== "json" || (request.version !== 1 && request.version !== 2))
    return result(undefined, "error");
  // The last piece is what follows the last separator: a message not complete yet.
  for (const piece of pieces.slice(0, -1)) {
    if (byteLength(piece) > options.maxMessageBytes) return result("close message");
    const message = parseObject(piece);
    if (message === undefined || typeof message.type !== "number") return result("close message");
    const { type, invocationId, target, arguments: args, streamIds } = message;
    if (type === 7) return result("close");
    if (type !== 1 && type !== 4) continue; // types a server does not know are ignored
    if (typeof target !== "string" || !Array.isArray(args)) return result("close message");
    if (invocationId !== undefined && typeof invocationId !== "string")
      return result("close message");
    if (
      streamIds !== undefined &&
      !(Array.isArray(streamIds) && streamIds.every((id) => typeof id === "string"))
    )
      return result("close message");
    if (type === 4 && typeof invocationId !== "string") return result("close message");
    if (typeof invocationId === "string") completions.push(invocationId);
    const streaming = type === 4 || (Array.isArray(streamIds) && streamIds.length > 0);
    const method = options.methods[target.toLowerCase()];
    if (!streaming && method?.arity === args.length) {
      method.effect?.(args, groups);
      states.push([...groups].sort());
    }
  }
  return result(undefined);
}

function parseObject(text: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(Buffer.from(text).toString());
    return typeof value === "object" && value !== null && !Array.isArray(value)
      ? (value as Record<string, unknown>)
      : undefined;
  } catch {
    return undefined;
  }
}
