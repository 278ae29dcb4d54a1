import { Decoder, Encoder } from "@msgpack/msgpack";

/** A hub message in the JSON protocol's shape: `{ type, invocationId, target, ... }`. */
export type HubMessage = Record<string, unknown>;

const encoder = new Encoder({ ignoreUndefined: true });
const decoder = new Decoder();
/** Frames this module made: the transcoder passes them as they are. */
const encoded = new WeakSet<Buffer>();
/** Five 7-bit groups: ASP.NET Core's limit on a message's length prefix (2 GB). */
const MAX_PREFIX_BYTES = 5;

const ERROR_RESULT = 1;
const VOID_RESULT = 2;
const NON_VOID_RESULT = 3;

/**
 * One message of the MessagePack hub protocol (HubProtocol.md), framed: its length as a varint,
 * then the array the official `@microsoft/signalr-protocol-msgpack` client reads.
 */
export function toMessagePack(message: HubMessage): Buffer {
  const { type, invocationId } = message;
  let array: unknown[];
  switch (type) {
    case 1:
      array = [1, {}, invocationId ?? null, message.target, message.arguments];
      break;
    case 2:
      array = [2, {}, invocationId, message.item];
      break;
    case 3:
      if (message.error !== undefined) array = [3, {}, invocationId, ERROR_RESULT, message.error];
      else if ("result" in message)
        array = [3, {}, invocationId, NON_VOID_RESULT, message.result ?? null];
      else array = [3, {}, invocationId, VOID_RESULT];
      break;
    case 7:
      array = [7, message.error ?? null, message.allowReconnect === true];
      break;
    case 8:
    case 9:
      array = [type, message.sequenceId];
      break;
    default:
      array = [type];
  }
  const payload = encoder.encode(array);
  const frame = Buffer.allocUnsafe(prefixLength(payload.length) + payload.length);
  let length = payload.length;
  let at = 0;
  do {
    frame[at++] = (length & 0x7f) | (length > 0x7f ? 0x80 : 0);
    length >>>= 7;
  } while (length > 0);
  frame.set(payload, at);
  encoded.add(frame);
  return frame;
}

/**
 * Reads one message's payload (without its length prefix) into the JSON protocol's shape; a
 * string saying what is wrong when it is not a message of the protocol.
 */
export function fromMessagePack(payload: Uint8Array): HubMessage | string {
  let value: unknown;
  try {
    value = decoder.decode(payload);
  } catch (error) {
    return `Error reading MessagePack data: ${(error as Error).message}`;
  }
  if (!Array.isArray(value) || typeof value[0] !== "number")
    return "Error reading MessagePack data: a message is an array that starts with its type.";
  const [type, second, invocationId] = value as [number, unknown, unknown];
  const id = invocationId ?? undefined;
  switch (type) {
    case 1:
    case 4: {
      const [, , , target, args, streamIds] = value as unknown[];
      return { type, invocationId: id, target, arguments: args, streamIds: streamIds ?? undefined };
    }
    case 2:
      return { type, invocationId: id, item: value[3] };
    case 3: {
      const kind = value[3];
      if (kind === ERROR_RESULT) return { type, invocationId: id, error: value[4] };
      if (kind === VOID_RESULT) return { type, invocationId: id };
      if (kind === NON_VOID_RESULT) return { type, invocationId: id, result: value[4] };
      return "Error reading MessagePack data: invalid result kind.";
    }
    case 5:
      return { type, invocationId: id };
    case 7:
      return { type, error: second ?? undefined };
    case 8:
    case 9:
      return { type, sequenceId: second };
    default:
      return { type };
  }
}

/**
 * Splits `buffer` into the payloads of the whole messages it holds; `rest` is the start of the
 * next one. `tooLarge` when a message's length passes `maxBytes` (or its prefix is malformed).
 */
export function splitMessagePack(
  buffer: Buffer,
  maxBytes: number,
): { payloads: Buffer[]; rest: Buffer; tooLarge: boolean; need?: number } {
  const payloads: Buffer[] = [];
  let at = 0;
  while (at < buffer.length) {
    let length = 0;
    let shift = 0;
    let next = at;
    let complete = false;
    while (next < buffer.length && next - at < MAX_PREFIX_BYTES) {
      const byte = buffer[next++] as number;
      length += (byte & 0x7f) * 2 ** shift;
      shift += 7;
      if (byte < 0x80) {
        complete = true;
        break;
      }
    }
    if (!complete) {
      const malformed = next - at >= MAX_PREFIX_BYTES;
      return { payloads, rest: buffer.subarray(at), tooLarge: malformed };
    }
    if (length > maxBytes) return { payloads, rest: buffer.subarray(at), tooLarge: true };
    // The rest is an unfinished message of this many bytes, prefix included.
    if (next + length > buffer.length)
      return { payloads, rest: buffer.subarray(at), tooLarge: false, need: next - at + length };
    payloads.push(buffer.subarray(next, next + length));
    at = next + length;
  }
  return { payloads, rest: buffer.subarray(at), tooLarge: false };
}

/**
 * The MessagePack frames of a frame of the JSON protocol (one or more records, from a group
 * message or an invocation of a client method), for a MessagePack connection. A frame of this
 * module passes as it is. A group's message reaches all its connections as the same buffer, so
 * the last one is remembered: it is encoded once for all of them.
 */
export function transcoder(): (frame: Buffer) => Buffer {
  let last: Buffer | undefined;
  let lastEncoded: Buffer = Buffer.alloc(0);
  return (frame) => {
    if (encoded.has(frame)) return frame;
    if (frame === last) return lastEncoded;
    const frames: Buffer[] = [];
    let start = 0;
    for (let end = frame.indexOf(0x1e); end >= 0; end = frame.indexOf(0x1e, start)) {
      const record = parseRecord(frame.toString("utf8", start, end));
      // Not a message of the protocol (a renderMessage of yours gone wrong), or one MessagePack
      // cannot carry (nested past the encoder's depth: JSON has no such limit): not sent to
      // MessagePack connections, rather than failing the delivery to every member after them.
      const encoded = record === undefined ? undefined : tryEncode(record);
      if (encoded !== undefined) frames.push(encoded);
      start = end + 1;
    }
    last = frame;
    lastEncoded = frames.length === 1 ? (frames[0] as Buffer) : Buffer.concat(frames);
    return lastEncoded;
  };
}

function tryEncode(message: HubMessage): Buffer | undefined {
  try {
    return toMessagePack(message);
  } catch {
    return undefined;
  }
}

function parseRecord(text: string): HubMessage | undefined {
  try {
    const value: unknown = JSON.parse(text);
    return typeof value === "object" && value !== null ? (value as HubMessage) : undefined;
  } catch {
    return undefined;
  }
}

function prefixLength(length: number): number {
  let bytes = 1;
  for (let rest = length >>> 7; rest > 0; rest >>>= 7) bytes++;
  return bytes;
}
