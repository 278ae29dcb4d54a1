/**
 * Every generator of the fuzz suite (fast-check): HTTP requests and WebSocket handshakes as raw
 * bytes, frames of the three protocols, the admin script's arguments and import files. Values
 * that depend on the run (tokens, a body's length) are placeholders filled in by `fill`; long
 * runs of one string are `Big`, so a counterexample prints as `{"repeat":"a","times":70000}`
 * rather than as 70,000 characters.
 */
import fc from "fast-check";

/** A long run of one string. */
export interface Big {
  readonly repeat: string;
  readonly times: number;
}
/** A JSON value, stringified when sent (so a counterexample shows its parts as generated). */
export interface Json {
  readonly json: unknown;
}
/** Text as generated: plain, a long run, JSON, or parts. */
export type Text = string | Big | Json | readonly Text[];

export const expand = (text: Text): string => {
  if (typeof text === "string") return text;
  if (Array.isArray(text)) return text.map(expand).join("");
  if ("json" in (text as Json)) return JSON.stringify((text as Json).json);
  return (text as Big).repeat.repeat((text as Big).times);
};

const big = (repeat: fc.Arbitrary<string>, min: number, max: number): fc.Arbitrary<Big> =>
  fc.record({ repeat, times: fc.integer({ min, max }) });

/** A long string inside a JSON value: stringified in full, printed in counterexamples as short. */
const long = (unit: string, times: number) => ({
  toJSON: () => unit.repeat(times),
  [fc.toStringMethod]: () => `${JSON.stringify(unit)}.repeat(${times})`,
});

/** Tokens of the run (a valid one for the fuzzing user, an expired one, a forged one). */
export interface Tokens {
  valid: string;
  expired: string;
  forged: string;
}

/** Fills the placeholders `$TOKEN$`, `$EXPIRED$`, `$FORGED$` (and `$LENGTH$` with `length`). */
export const fill = (text: string, tokens: Tokens, length = 0): string =>
  text
    .replaceAll("$TOKEN$", tokens.valid)
    .replaceAll("$EXPIRED$", tokens.expired)
    .replaceAll("$FORGED$", tokens.forged)
    .replaceAll("$LENGTH$", String(length));

const weighted = <T>(...choices: Array<[number, fc.Arbitrary<T>]>): fc.Arbitrary<T> =>
  fc.oneof(...choices.map(([weight, arbitrary]) => ({ weight, arbitrary })));

// ---------------------------------------------------------------------------------------------
// HTTP requests and WebSocket handshakes, as bytes on a TCP connection

/** A request exactly as it goes on the wire (nothing normalizes it). */
export interface RawRequest {
  method: Text;
  target: Text;
  version: string;
  headers: ReadonlyArray<readonly [Text, Text]>;
  body: Text;
  eol: string;
}

export function serializeRequest(request: RawRequest, tokens: Tokens): Buffer {
  const body = Buffer.from(fill(expand(request.body), tokens));
  const { eol } = request;
  const line = (text: Text) => fill(expand(text), tokens, body.length);
  const version = request.version === "" ? "" : ` ${request.version}`;
  const head =
    `${line(request.method)} ${line(request.target)}${version}${eol}` +
    request.headers.map(([name, value]) => `${line(name)}: ${line(value)}${eol}`).join("") +
    eol;
  return Buffer.concat([Buffer.from(head), body]);
}

/** Paths the servers serve (the sample's, the quick starts'), and some they do not. */
const PATHS = [
  "/",
  "/hub",
  "/signalr",
  "/signalr/negotiate",
  "/chat",
  "/chat/negotiate",
  "/socket.io/",
  "/healthz",
  "/stats",
  "/metrics",
  "/token",
  "/whoami",
  "/config",
  "/vendor/signalr.js",
  "/favicon.ico",
  "/missing",
];

/** Request targets no URL parser should be trusted with, that HTTP parsers let through. */
const MALFORMED_TARGETS = [
  "//[",
  "//[/hub",
  "//[/signalr",
  "//[/signalr/negotiate",
  "//[/chat",
  "//[/chat/negotiate",
  "//[/socket.io/",
  "//]",
  "//x:99999/hub",
  "//user@/signalr",
  "http://x/..",
  "http://x/hub",
  "http://[::1]/signalr/negotiate",
  "http://[/chat",
  "https://user:pw@x:1/chat/negotiate",
  "ws://x/hub",
  "*",
  "hub",
  "..",
  "/..",
  "/../../etc/passwd",
  "//",
  "//hub",
  "///signalr",
  "/hub/../signalr",
  "/%",
  "/%zz",
  "/%00",
  "/%2e%2e/%2e%2e/",
  "/%ff%fe",
  "/hub%00",
  "/%E2%80%AE",
  "/hub\\..\\x",
  "/?",
  "/#",
  "/hub;x",
  "/hub#frag",
];

/** Request targets an HTTP parser should refuse. */
const JUNK_TARGETS = ["", "/ hub", "/\u0000", "/é", "/😀", "/\t", "/hub\r"];

const QUERY_KEYS = [
  "access_token",
  "id",
  "negotiateVersion",
  "EIO",
  "transport",
  "sid",
  "user",
  "gc",
  "",
  "access_token[]",
  "__proto__",
];
const QUERY_VALUES = [
  "$TOKEN$",
  "$EXPIRED$",
  "$FORGED$",
  "",
  "0",
  "1",
  "-1",
  "1.5",
  "99999999999999999999",
  "3",
  "4",
  "websocket",
  "polling",
  "junk",
  "%",
  "%zz",
  "%00",
  "%E2%80%AE",
  "a+b",
  "null",
  "[]",
  "{}",
];

const queryString: fc.Arbitrary<Text> = fc
  .tuple(
    fc.array(
      fc.tuple(
        weighted([4, fc.constantFrom(...QUERY_KEYS)], [1, fc.string({ maxLength: 8 })]),
        weighted([4, fc.constantFrom(...QUERY_VALUES)], [1, fc.string({ maxLength: 12 })]),
        fc.constantFrom("=", "=", "=", "", "=="),
      ),
      { minLength: 1, maxLength: 4 },
    ),
    fc.constantFrom("&", "&", "&&", ";"),
  )
  .map(([pairs, sep]) => `?${pairs.map(([key, value, eq]) => `${key}${eq}${value}`).join(sep)}`);

const path = weighted<Text>(
  [4, fc.constantFrom(...PATHS)],
  [4, fc.constantFrom(...MALFORMED_TARGETS)],
  [
    2,
    fc
      .tuple(fc.constantFrom(...MALFORMED_TARGETS, ...PATHS), fc.constantFrom(...PATHS))
      .map(([a, b]) => `${a}${b}`),
  ],
);

const target: fc.Arbitrary<Text> = fc
  .tuple(path, fc.option(queryString, { nil: "" }))
  .map(([p, query]) => [p, query]);

const junkTarget: fc.Arbitrary<Text> = weighted<Text>(
  [2, target],
  [2, fc.constantFrom(...JUNK_TARGETS)],
  [
    1,
    fc
      .tuple(fc.constantFrom(...PATHS), fc.string({ unit: "binary", maxLength: 16 }))
      .map(([a, b]) => `${a}${b}`),
  ],
  [
    1,
    fc.tuple(
      fc.constantFrom("/", "/hub/", "/signalr/", "/chat/", "/socket.io/"),
      big(fc.constantFrom("a", "%", "/", "%2F"), 1_000, 70_000),
    ),
  ],
);

/** A valid WebSocket handshake's headers (RFC 6455), as clients send them. */
const WS_HEADERS: ReadonlyArray<readonly [string, string]> = [
  ["Upgrade", "websocket"],
  ["Connection", "Upgrade"],
  ["Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="],
  ["Sec-WebSocket-Version", "13"],
];

const AUTHORIZATION = [
  "Bearer $TOKEN$",
  "Bearer $EXPIRED$",
  "Bearer $FORGED$",
  "bearer $TOKEN$",
  "Bearer  $TOKEN$",
  "Bearer $TOKEN$ $TOKEN$",
  "Bearer",
  "Bearer ",
  "Basic YWxpY2U6c2VjcmV0",
  "$TOKEN$",
  "Token $TOKEN$",
  "Bearer a.b.c",
  "Bearer ....",
  "Bearer e30.e30.",
];

const pair = (name: string, values: readonly string[]) =>
  fc.tuple(fc.constant(name), fc.constantFrom(...values));

/** A header HTTP parsers accept, whatever the server makes of it; duplicates come from drawing several. */
const header: fc.Arbitrary<readonly [Text, Text]> = weighted<readonly [Text, Text]>(
  [3, pair("Authorization", AUTHORIZATION)],
  [
    1,
    fc.tuple(
      fc.constant("Authorization"),
      fc.tuple(fc.constant("Bearer "), big(fc.constantFrom("a", "."), 100, 8_000)),
    ),
  ],
  [2, pair("Upgrade", ["websocket", "WebSocket", "websocket, h2c", "h2c", "", "websocket\t"])],
  [
    2,
    pair("Connection", [
      "Upgrade",
      "upgrade, keep-alive",
      "keep-alive",
      "close",
      "",
      "Upgrade, Upgrade",
    ]),
  ],
  [
    2,
    pair("Sec-WebSocket-Key", [
      "dGhlIHNhbXBsZSBub25jZQ==",
      "",
      "short",
      "AAAAAAAAAAAAAAAAAAAAAA==",
      "!!!!",
    ]),
  ],
  [2, pair("Sec-WebSocket-Version", ["13", "8", "", "13, 8", "abc", "-1"])],
  [1, pair("Sec-WebSocket-Protocol", ["json", "chat, chat", ",", "a b", ""])],
  [
    1,
    pair("Sec-WebSocket-Extensions", [
      "permessage-deflate; client_max_window_bits",
      "permessage-deflate; server_max_window_bits=99",
      "permessage-deflate; client_max_window_bits=0",
      "permessage-deflate, permessage-deflate",
      'x; y="',
      "permessage-deflate; unknown",
    ]),
  ],
  [2, pair("Content-Length", ["$LENGTH$", "$LENGTH$", "0", "5", "100000"])],
  [
    1,
    fc.tuple(
      fc.constantFrom("Host", "Origin", "Cookie", "Content-Type", "X-Forwarded-For", "Accept"),
      fc.constantFrom(
        "127.0.0.1",
        "",
        "[",
        "x:99999",
        "access_token=$TOKEN$",
        "*/*",
        "a".repeat(300),
      ),
    ),
  ],
  [1, pair("Expect", ["100-continue"])],
);

/** Headers an HTTP parser should refuse, or choke on. */
const junkHeader: fc.Arbitrary<readonly [Text, Text]> = weighted<readonly [Text, Text]>(
  [1, pair("Authorization", ["Bearer \u0000", "Bearer \r", "Bearer é"])],
  [2, pair("Content-Length", ["-1", "abc", "1e3", "5, 6", "", "99999999999999999999"])],
  [2, pair("Transfer-Encoding", ["chunked", "gzip, chunked", "chunked, identity", "junk", ""])],
  [1, pair("Expect", ["junk", "100-continue, x"])],
  [
    2,
    fc.tuple(
      fc.constantFrom("Bad Header", "X:Y", "", "Été", "X\tY", "X\u0000", "(", "X-Ok", " X"),
      fc.string({ unit: "binary", maxLength: 12 }),
    ),
  ],
  [1, fc.tuple(fc.constant("X-Big"), big(fc.constant("a"), 1_000, 20_000))],
);

const body: fc.Arbitrary<Text> = weighted<Text>(
  [4, fc.constant("")],
  [
    2,
    fc.constantFrom(
      "hello",
      "{}",
      '{"protocol":"json","version":1}\u001e',
      "0\r\n\r\n",
      "5\r\nhello\r\n0\r\n\r\n",
      "zz\r\n",
      "5\r\nhi\r\n",
      "ffffffffffffffffff\r\n\r\n",
      "-1\r\n",
      "5;ext\r\nhello\r\n0\r\n\r\n",
      "\u0000\u0001\u0002",
      "GET / HTTP/1.1\r\n\r\n",
    ),
  ],
  [1, fc.string({ unit: "binary", maxLength: 40 })],
  [1, big(fc.constantFrom("a", "0\r\n"), 1_000, 100_000)],
);

const method = weighted<Text>(
  [8, fc.constantFrom("GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH")],
  [2, fc.constantFrom("CONNECT", "TRACE", "PRI", "get", "G ET", "", "GET\u0000", "É", "M-SEARCH")],
  [1, fc.string({ maxLength: 10 })],
);

const version = weighted(
  [10, fc.constant("HTTP/1.1")],
  [1, fc.constantFrom("HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "HTTP/0.9", "HTTP/1.1x", "", "http/1.1")],
);

const eol = weighted([12, fc.constant("\r\n")], [1, fc.constant("\n")]);

const HOST: readonly [string, string] = ["Host", "127.0.0.1"];

/** Requests an HTTP parser accepts: what the servers' own code has to cope with. */
const parsableRequest: fc.Arbitrary<RawRequest> = fc
  .record({
    method: fc.constantFrom(
      "GET",
      "GET",
      "GET",
      "POST",
      "POST",
      "HEAD",
      "OPTIONS",
      "PUT",
      "DELETE",
    ),
    target,
    version: weighted([8, fc.constant("HTTP/1.1")], [1, fc.constant("HTTP/1.0")]),
    host: weighted([6, fc.constant(true)], [1, fc.constant(false)]),
    upgrade: fc.option(fc.subarray([...WS_HEADERS]), { nil: undefined }),
    headers: fc.array(header, { maxLength: 5 }),
    body: weighted<Text>([3, fc.constant("")], [1, body]),
  })
  .map(({ host, upgrade, headers, ...rest }) => ({
    ...rest,
    eol: "\r\n",
    headers: [...(host ? [HOST] : []), ...(upgrade ?? []), ...headers],
  }));

/** Requests that break HTTP itself: request lines, header names, framing. */
const junkRequest: fc.Arbitrary<RawRequest> = fc
  .record({
    method,
    target: junkTarget,
    version,
    host: fc.boolean(),
    upgrade: fc.option(fc.subarray([...WS_HEADERS]), { nil: undefined }),
    headers: fc.array(weighted([2, header], [1, junkHeader]), { maxLength: 6 }),
    body,
    eol,
  })
  .map(({ host, upgrade, headers, ...rest }) => ({
    ...rest,
    headers: [...(host ? [HOST] : []), ...(upgrade ?? []), ...headers],
  }));

/** Any request: methods, targets, headers, bodies, with or without a WebSocket upgrade's headers. */
export const httpRequest: fc.Arbitrary<RawRequest> = weighted(
  [3, parsableRequest],
  [2, junkRequest],
);

/** The hubs' WebSocket endpoints, as clients address them. */
export const ENDPOINTS = {
  sample: ["/hub", "/signalr", "/signalr?id=junk"],
  socketIo: ["/socket.io/?EIO=4&transport=websocket"],
  signalr: ["/chat", "/chat?id=junk"],
  ws: ["/", "/hub"],
};

/**
 * WebSocket upgrade requests, mostly to `endpoints` (a server's own), valid or valid but for a
 * part or two.
 */
export const handshake = (endpoints: readonly string[]): fc.Arbitrary<RawRequest> =>
  fc
    .record({
      method: weighted<Text>([8, fc.constant("GET")], [1, method]),
      path: weighted(
        [8, fc.constantFrom(...endpoints)],
        [
          3,
          fc.constantFrom(
            "/hub",
            "/signalr",
            "/chat",
            "/hub/",
            "/HUB",
            "/signalr/negotiate",
            "/",
            "/socket.io/?EIO=4&transport=websocket",
            "/socket.io/?EIO=3&transport=websocket",
            "/socket.io/?EIO=4&transport=polling",
            "/socket.io/?transport=websocket",
            "/socket.io/?EIO=4&transport=websocket&sid=junk",
            "//[/hub",
            "//[/signalr",
            "//[/chat",
            "//[/socket.io/?EIO=4&transport=websocket",
            "/hub/../signalr",
          ),
        ],
      ),
      query: fc.array(
        fc.constantFrom(
          "access_token=$TOKEN$",
          "access_token=$EXPIRED$",
          "access_token=$FORGED$",
          "access_token=",
          "access_token=%",
          "id=junk",
          "id=",
          "id=%zz",
          "id=$TOKEN$",
          "negotiateVersion=1",
          "EIO=4",
          "EIO=junk",
          "transport=websocket",
          "transport=junk",
          "sid=junk",
        ),
        { maxLength: 3 },
      ),
      authorization: fc.option(fc.constantFrom(...AUTHORIZATION), { nil: undefined }),
      kept: weighted([3, fc.constant([...WS_HEADERS])], [1, fc.subarray([...WS_HEADERS])]),
      headers: fc.array(weighted([6, header], [1, junkHeader]), { maxLength: 3 }),
      body: weighted<Text>([6, fc.constant("")], [1, body]),
      eol: fc.constant("\r\n"),
    })
    .map(({ path, query, authorization, kept, headers, ...rest }) => ({
      ...rest,
      version: "HTTP/1.1",
      target:
        query.length === 0 ? path : `${path}${path.includes("?") ? "&" : "?"}${query.join("&")}`,
      headers: [
        HOST,
        ...kept,
        ...(authorization === undefined ? [] : [["Authorization", authorization] as const]),
        ...headers,
      ],
    }));

/**
 * Requests that broke a server once, tried first on every run: a target `new URL` throws on
 * (with and without a WebSocket upgrade), a request outside the hub's path, and an upgrade
 * refused while more than a socket buffer of its body is still unread.
 */
export const HTTP_REGRESSIONS: RawRequest[] = [
  { method: "GET", target: "//[", version: "HTTP/1.1", headers: [HOST], body: "", eol: "\r\n" },
  {
    method: "GET",
    target: "//[/hub",
    version: "HTTP/1.1",
    headers: [HOST, ...WS_HEADERS],
    body: "",
    eol: "\r\n",
  },
  {
    method: "GET",
    target: "/elsewhere",
    version: "HTTP/1.1",
    headers: [HOST],
    body: "",
    eol: "\r\n",
  },
  {
    method: "GET",
    target: "/hub",
    version: "HTTP/1.1",
    headers: [HOST, ...WS_HEADERS],
    body: { repeat: "a", times: 100_000 },
    eol: "\r\n",
  },
];

// ---------------------------------------------------------------------------------------------
// Names

/** Groups the fuzzing user is in when it connects; `home` it never leaves (the sentinel's). */
export const MEMBER_GROUPS = ["home", "den"] as const;
/** The sample's open group (OPEN_GROUPS): anyone may join it. */
export const OPEN_GROUP = "lobby";
/** Another user's group. */
export const OTHERS_GROUP = "private";

const HOSTILE = [
  "__proto__",
  "constructor",
  "toString",
  "a/b#c?d",
  "%00",
  "'",
  "\\",
  " ",
  "\u0000",
  "\u2028",
  "😀",
  "*",
  "normal",
];

/** Group names: the user's, the open one, someone else's, hostile and invalid ones. */
const groupName = (pool: readonly string[]) =>
  weighted<unknown>(
    [6, fc.constantFrom(...pool)],
    [2, fc.constantFrom(...HOSTILE)],
    [
      1,
      fc.constantFrom<unknown>("", "\ud800", long("x", 1_025), 42, null, true, [], {}, ["home"], {
        $ne: null,
      }),
    ],
    [1, fc.string({ maxLength: 6 })],
  );

const text = weighted<unknown>(
  [6, fc.string({ maxLength: 20 })],
  [
    1,
    fc.constantFrom<unknown>("", "\ud800", "a\udc00b", 42, null, [], { t: 1 }, long("x", 60_000)),
  ],
);

// ---------------------------------------------------------------------------------------------
// The sample's `ws` protocol (sample/README.md, "Protocol")

/** A client frame: text (JSON or not), binary, or raw bytes in a text frame (maybe not UTF-8). */
export type WsFrame =
  | { readonly text: Text }
  | { readonly binary: Text }
  | { readonly bytes: readonly number[] };

const SAMPLE_GROUPS = [...MEMBER_GROUPS, OPEN_GROUP, OTHERS_GROUP];
/** `leave` never names `home`: the sentinel sends to it. */
const LEAVABLE = ["den", OPEN_GROUP, OTHERS_GROUP];

const wsMessage = fc
  .record(
    {
      type: weighted<unknown>(
        [12, fc.constantFrom("send", "whisper", "join", "leave", "online")],
        [
          1,
          fc.constantFrom<unknown>(
            "SEND",
            "",
            "welcome",
            "error",
            1,
            null,
            ["send"],
            {},
            "__proto__",
          ),
        ],
      ),
      group: groupName(SAMPLE_GROUPS),
      to: groupName(["normal", "fuzzer", "nobody"]),
      after: groupName(["normal", "fuzzer", "nobody"]),
      text,
      extra: fc.jsonValue({ maxDepth: 2 }),
    },
    { requiredKeys: ["type"] },
  )
  .map((message) => {
    if (message.type === "leave" && message.group === "home") return { ...message, group: "den" };
    return message;
  })
  .map((message): Json => ({ json: message }));

const deep = (depth: number, closed: boolean): Text => [
  '{"type":"send","group":"home","text":"x","n":',
  { repeat: "[", times: depth },
  closed ? { repeat: "]", times: depth } : "",
  closed ? "}" : "",
];

const junkText = weighted<Text>(
  [
    4,
    fc.constantFrom(
      "not json",
      "{",
      "[",
      "",
      "null",
      "[]",
      "42",
      '"send"',
      '{"type":"send","group":"home","text":"x"',
      '{"type":"send","type":"join","group":"lobby"}',
      '{"__proto__":{"type":"send"},"group":"home","text":"x"}',
      '\ufeff{"type":"send","group":"home","text":"x"}',
      '{"type":"send","group":"\\ud800","text":"x"}',
      '{"type":"send","group":"home","text":"\\udc00"}',
      '{"type":"join","group":"\\u0000"}',
      '{"type":"join","group":"lobby","group":42}',
      '{"type":"send","group":"home","text":"x"}\u0000',
    ),
  ],
  [2, fc.json({ maxDepth: 3 })],
  [2, fc.string({ unit: "binary", maxLength: 30 })],
  [1, fc.tuple(fc.integer({ min: 1, max: 20_000 }), fc.boolean()).map(([n, c]) => deep(n, c))],
  [1, fc.constant([{ repeat: "[", times: 30_000 }])],
);

/** Frames of the sample's `ws` protocol: messages, near misses and junk. */
export const wsFrame: fc.Arbitrary<WsFrame> = weighted<WsFrame>(
  [8, wsMessage.map((text) => ({ text }))],
  [5, junkText.map((text) => ({ text }))],
  [1, wsMessage.map((binary) => ({ binary }))],
  [
    1,
    weighted<readonly number[]>(
      [
        3,
        fc.constantFrom([0xff], [0xc0, 0x80], [0xed, 0xa0, 0x80], [0x7b, 0xfe, 0x7d], [0xe2, 0x82]),
      ],
      [1, fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: 16 })],
    ).map((bytes) => ({ bytes })),
  ],
  [
    1,
    fc
      .constantFrom(
        64 * 1024 - 100, // under the 64 KiB limit: a message like any other
        64 * 1024 + 1, // over it: closed with 1009
      )
      .map((times) => ({
        text: ['{"type":"send","group":"home","text":"', { repeat: "x", times }, '"}'],
      })),
  ],
);

export const wsFrames = fc.array(wsFrame, { minLength: 1, maxLength: 6 });

// ---------------------------------------------------------------------------------------------
// SignalR's JSON hub protocol (HubProtocol.md): a handshake, then messages ending with 0x1E (the
// MessagePack protocol has its own fuzzing in test/signalr-msgpack.test.ts)

export const RS = "\u001e";

const VALID_HANDSHAKE = `{"protocol":"json","version":1}${RS}`;

const signalrHandshake = weighted<string>(
  [10, fc.constant(VALID_HANDSHAKE)],
  [
    3,
    fc.constantFrom(
      '{"protocol":"json","version":1}', // no separator
      `{"protocol":"json","version":1}${RS}${RS}`,
      `{"protocol":"blob","version":1}${RS}`,
      `{"protocol":"json","version":2}${RS}`,
      `{"protocol":"json","version":"1"}${RS}`,
      `{"protocol":"JSON","version":1}${RS}`,
      `{"version":1}${RS}`,
      `{}${RS}`,
      `[]${RS}`,
      `null${RS}`,
      `${RS}`,
      `{"protocol":"json","version":1${RS}}`,
      `{"protocol":"json","version":1,"protocol":"x"}${RS}`,
      `{"protocol":"json","version":1,"__proto__":{"version":2}}${RS}`,
      "",
    ),
  ],
  [1, fc.string({ unit: "binary", maxLength: 30 })],
);

const TARGETS = [
  "Send",
  "Whisper",
  "Join",
  "Leave",
  "send",
  "JOIN",
  "Unknown",
  "",
  "constructor",
  "__proto__",
  "toString",
];

const hubArguments = weighted<unknown>(
  [6, fc.tuple(groupName(SAMPLE_GROUPS), text).map(([group, t]) => [group, t])],
  [3, fc.tuple(groupName(LEAVABLE)).map(([group]) => [group])],
  [2, fc.array(fc.jsonValue({ maxDepth: 2 }), { maxLength: 3 })],
  [1, fc.constantFrom<unknown>(null, {}, "home", 1, [[]])],
);

/** A hub message (its JSON text, no separator), valid or not. */
const hubMessage: fc.Arbitrary<Text> = weighted<Text>(
  [
    8,
    fc
      .record(
        {
          type: weighted<unknown>([10, fc.constant(1)], [1, fc.constant(4)]),
          invocationId: weighted<unknown>(
            [6, fc.stringMatching(/^[0-9a-z]{1,4}$/)],
            [1, fc.constantFrom<unknown>("", 7, null, ["1"])],
          ),
          target: weighted<unknown>(
            [8, fc.constantFrom(...TARGETS)],
            [1, fc.constantFrom<unknown>(1, null, ["Send"])],
          ),
          arguments: hubArguments,
          streamIds: fc.constantFrom<unknown>([], ["1"], "1"),
          headers: fc.constantFrom<unknown>({}, { a: "b" }, []),
        },
        { requiredKeys: ["type", "target", "arguments"] },
      )
      .map((message) =>
        // `Leave` of home would end the sentinel's membership.
        typeof message.target === "string" &&
        message.target.toLowerCase() === "leave" &&
        Array.isArray(message.arguments) &&
        message.arguments[0] === "home"
          ? { json: { ...message, arguments: ["den"] } }
          : { json: message },
      ),
  ],
  [
    2,
    fc
      .record(
        {
          type: fc.constantFrom(2, 3, 5, 6, 7, 8, 9),
          invocationId: fc.constantFrom<unknown>("1", 2),
          error: fc.constantFrom<unknown>("bye", 1),
          allowReconnect: fc.boolean(),
          item: fc.jsonValue({ maxDepth: 1 }),
        },
        { requiredKeys: ["type"] },
      )
      .map((message): Json => ({ json: message })),
  ],
  [
    3,
    fc.constantFrom(
      "",
      "{",
      "not json",
      "[]",
      "null",
      "1",
      '{"type":"1","target":"Send","arguments":[]}',
      '{"type":0}',
      '{"type":10}',
      '{"type":-1}',
      '{"type":1.5,"target":"Send","arguments":[]}',
      '{"type":1,"target":"Send"}',
      '{"type":1,"target":"Send","arguments":{}}',
      '{"type":1,"invocationId":1,"target":"Send","arguments":[]}',
      '{"type":1,"target":"Send","arguments":["home","\\ud800"]}',
      '{"type":1,"invocationId":"a","target":"Send","arguments":["home","x"],"type":6}',
      '{"type":1,"invocationId":"b","target":"Send","arguments":["home","x"]',
    ),
  ],
  [1, fc.json({ maxDepth: 2 })],
  [
    1,
    fc
      .constantFrom(32 * 1024 + 1, 64 * 1024 + 1)
      .map(
        (times): Text => [
          '{"type":1,"target":"Send","arguments":["home","',
          { repeat: "x", times },
          '"]}',
        ],
      ),
  ],
);

/** A SignalR session: the handshake, messages with their separators, cut into frames. */
export interface SignalRSession {
  readonly handshake: string;
  /** Each message and what follows it: a separator, none, two, or one inside it. */
  readonly messages: ReadonlyArray<readonly [Text, string]>;
  /** Where the stream after the handshake's frame is cut into frames (fractions of its length). */
  readonly cuts: readonly number[];
  /** Whether the handshake has a frame of its own (clients send it alone). */
  readonly handshakeAlone: boolean;
  readonly binary: boolean;
}

export const signalrSession: fc.Arbitrary<SignalRSession> = fc.record({
  handshake: signalrHandshake,
  messages: fc.array(
    fc.tuple(hubMessage, weighted([12, fc.constant(RS)], [1, fc.constantFrom("", `${RS}${RS}`)])),
    { maxLength: 6 },
  ),
  cuts: fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 3 }),
  handshakeAlone: weighted([4, fc.constant(true)], [1, fc.constant(false)]),
  binary: weighted([8, fc.constant(false)], [1, fc.constant(true)]),
});

// ---------------------------------------------------------------------------------------------
// Socket.IO (engine.io 4 packets carrying socket.io 5 packets) over the websocket transport

/** A packet as a text frame, or a binary frame (an attachment, or junk). */
export type IoPacket = { readonly text: Text } | { readonly binary: readonly number[] };

/** Event payloads: what the sample's and the quick start's handlers destructure. */
const ioPayload = (pool: readonly string[]) =>
  weighted<unknown[]>(
    [
      4,
      fc
        .record(
          { group: groupName(pool), text, extra: fc.jsonValue({ maxDepth: 1 }) },
          { requiredKeys: [] },
        )
        .map((payload) => [payload]),
    ],
    [
      3,
      fc.constantFrom<unknown[]>(
        [],
        [null],
        [42],
        ["home"],
        [[]],
        [{}, {}],
        [{ group: "home" }, "extra"],
      ),
    ],
    [1, fc.array(fc.jsonValue({ maxDepth: 2 }), { maxLength: 3 })],
  );

/**
 * Events; `join` never names the open group and `leave` never a group the user is in, so the
 * store must not change (the state-changing ones are fuzzed through the `ws` and SignalR hubs).
 */
const ioEvent = fc
  .tuple(
    weighted<[unknown, unknown[]]>(
      [4, ioPayload(SAMPLE_GROUPS).map((args) => ["send", args])],
      [
        2,
        ioPayload([...MEMBER_GROUPS, OTHERS_GROUP]).map((args) => [
          "join",
          args.map((a) => withGroup(a, OPEN_GROUP, "closed")),
        ]),
      ],
      [
        2,
        ioPayload([OPEN_GROUP, OTHERS_GROUP]).map((args) => [
          "leave",
          args.map((a) => withGroup(withGroup(a, "home", "nope"), "den", "nope")),
        ]),
      ],
      [
        1,
        fc
          .tuple(
            fc.constantFrom<unknown>(
              "welcome",
              "message",
              "x",
              "",
              0,
              "connect",
              "disconnect",
              "error",
              "newListener",
              "__proto__",
              "toString",
              "disconnecting",
              null,
            ),
            fc.array(fc.jsonValue({ maxDepth: 1 }), { maxLength: 2 }),
          )
          .map(([event, args]) => [event, args]),
      ],
    ),
    weighted<number | undefined>([1, fc.constant(undefined)], [1, fc.nat({ max: 999 })]),
    fc.constantFrom("", "", "", "", "", "/", "/admin,"),
  )
  .map(
    ([[event, args], ack, namespace]): IoPacket => ({
      text: [`42${namespace}${ack ?? ""}`, { json: [event, ...args] }],
    }),
  );

function withGroup(payload: unknown, from: string, to: string): unknown {
  if (
    typeof payload === "object" &&
    payload !== null &&
    (payload as { group?: unknown }).group === from
  )
    return { ...payload, group: to };
  return payload;
}

const ioJunk = weighted<IoPacket>(
  [
    4,
    fc.constantFrom<IoPacket>(
      { text: "" },
      { text: "2" },
      { text: "3" },
      { text: "3probe" },
      { text: "5" },
      { text: "6" },
      { text: "1" },
      { text: "9" },
      { text: "4" },
      { text: "40" }, // a second connect to "/" ("41", leaving it, is the client's to send)
      { text: "43[]" },
      { text: "431[]" },
      { text: "44{}" },
      { text: "4x" },
      { text: "42" },
      { text: "42[" },
      { text: "42{}" },
      { text: '42"send"' },
      { text: "42[]" },
      { text: '42["send",{"group":"home","text":"x"}' },
      { text: '4299999999999999999999["send",{}]' },
      { text: '42-1["send",{}]' },
      { text: '451-["send",{"_placeholder":true,"num":0}]' },
      { text: '451-["send",{"_placeholder":true,"num":5}]' },
      { text: '452-["send",{"_placeholder":true,"num":0}]' },
      { text: '459999999-["send",{}]' },
      { text: '46-["send"]' },
      { text: '42["send",{"group":"\\ud800","text":"x"}]' },
      { binary: [1, 2, 3] },
      { binary: [] },
    ),
  ],
  [1, fc.string({ unit: "binary", maxLength: 20 }).map((t): IoPacket => ({ text: t }))],
  [1, fc.string({ maxLength: 20 }).map((t): IoPacket => ({ text: `42${t}` }))],
  [
    1,
    fc.constant<IoPacket>({
      text: ['42["send",{"group":"home","text":"', { repeat: "x", times: 64 * 1024 }, '"}]'],
    }),
  ],
);

/** Events that broke a server once: no payload, with and without an ack id. */
export const IO_REGRESSIONS: IoPacket[][] = [[{ text: '42["send"]' }], [{ text: '420["send"]' }]];

/** Packets of a session after the connect: events and junk, a binary attachment now and then. */
export const ioPackets = fc.array(weighted<IoPacket>([3, ioEvent], [2, ioJunk]), {
  minLength: 1,
  maxLength: 5,
});

const RESERVED_EVENTS = [
  "connect",
  "connect_error",
  "disconnect",
  "disconnecting",
  "newListener",
  "removeListener",
];

/**
 * The event and ack id of a packet, if it is a well-formed event on the main namespace, of at
 * most `maxBytes` (the server's maxHttpBufferSize), with an ack id a client could use.
 */
export function eventOf(
  packet: IoPacket,
  maxBytes: number,
): { event: string; ack: string | undefined } | undefined {
  if (!("text" in packet)) return undefined;
  const text = expand(packet.text);
  const match = /^42(\d*)(\[.*)$/s.exec(text);
  if (!match || Buffer.byteLength(text) > maxBytes) return undefined;
  try {
    const [event] = JSON.parse(match[2] as string) as unknown[];
    if (typeof event !== "string" || RESERVED_EVENTS.includes(event)) return undefined;
    // An ack id is a number: one past 2^53 comes back rounded, no client could match it.
    if (match[1] && !Number.isSafeInteger(Number(match[1]))) return undefined;
    return { event, ack: match[1] || undefined };
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// The admin script (`npm run admin -- …`)

export const ADMIN_COMMANDS = [
  "grant",
  "revoke",
  "groups",
  "members",
  "count",
  "remove-user",
  "delete-group",
  "token",
  "repair",
  "use-feed",
  "import",
  "export",
  "help",
];

/**
 * Names as arguments: seeded ones, hostile ones, invalid ones, option look-alikes (no NUL: no
 * process can be given one).
 */
const ADMIN_NAMES = [
  "alice",
  "bob",
  "Sports",
  "lobby",
  "nobody",
  "",
  "x".repeat(1_025),
  "a b",
  "a,b",
  '"',
  "__proto__",
  "-",
  "-x",
  "--json",
  "--",
  "名前",
  "\ud800",
  "😀",
  "$(id)",
  "%s",
];

const WHEN = [
  "2h",
  "7d",
  "30m",
  "1s",
  "0",
  "-1",
  "abc",
  "",
  "2999-01-01T00:00:00Z",
  "2000-01-01",
  "1e9",
  "NaN",
  "Infinity",
  "2h ago",
  "P1D",
];

const adminOption = weighted<string[]>(
  [4, fc.constantFrom(["--json"], ["--help"], ["-h"], ["--dry-run"], ["--skip-invalid"])],
  [
    3,
    fc
      .tuple(fc.constantFrom("--expires", "--ttl"), fc.constantFrom(...WHEN))
      .map((pair) => [...pair]),
  ],
  [
    1,
    fc
      .tuple(fc.constantFrom("--expires=", "--ttl="), fc.constantFrom(...WHEN))
      .map(([o, v]) => [`${o}${v}`]),
  ],
  [
    2,
    fc.constantFrom(
      ["--expires"],
      ["--unknown"],
      ["-x"],
      ["--"],
      ["---"],
      ["--json=1"],
      ["--JSON"],
      ["-"],
      ["--help=no"],
    ),
  ],
);

/**
 * Arguments of the admin script. `export` and `import` are given file paths under `dir` (and
 * the script runs in `dir`), so nothing is written outside it.
 */
export const adminArgs = fc
  .record({
    command: weighted<string | undefined>(
      [8, fc.constantFrom(...ADMIN_COMMANDS)],
      [
        1,
        fc.constantFrom<string | undefined>(undefined, "GRANT", "Grant", "grant ", "export2", ""),
      ],
    ),
    names: fc.array(fc.constantFrom(...ADMIN_NAMES), { maxLength: 3 }),
    files: fc.array(fc.constantFrom("out.csv", "missing.csv", ".", "sub/out.ndjson", "empty.csv"), {
      maxLength: 1,
    }),
    options: fc.array(adminOption, { maxLength: 3 }),
    optionsFirst: fc.boolean(),
  })
  .map(({ command, names, files, options, optionsFirst }) => {
    const positionals = command === "import" || command === "export" ? files : names;
    const flags = options.flat();
    const rest = optionsFirst ? [...flags, ...positionals] : [...positionals, ...flags];
    return command === undefined ? rest : [command, ...rest];
  });

// ---------------------------------------------------------------------------------------------
// Import files (CSV with a header row, or NDJSON), with junk rows

export interface Grant {
  readonly userId: string;
  readonly group: string;
  /** ISO date in the future, or null. */
  readonly expiresAt: string | null;
}

/** A row of a file: a valid grant, or junk of a kind (what it is decides what must happen). */
export type Row =
  | { readonly grant: Grant }
  | { readonly blank: string }
  /** A row the importer reports as invalid: skipped with --skip-invalid, stops it without. */
  | { readonly invalid: string }
  /** A row the CSV parser cannot read at all (quotes): the import fails, nothing is written. */
  | { readonly unreadable: string };

export interface ImportFile {
  readonly format: "csv" | "ndjson";
  readonly extension: string;
  /** CSV: the header's columns, or a junk header line. */
  readonly header: readonly string[] | { readonly junk: string };
  readonly rows: readonly Row[];
  readonly bom: boolean;
  readonly eol: string;
  readonly skipInvalid: boolean;
}

const IMPORT_NAMES = [
  "alice",
  "bob",
  "Sports",
  "new-user",
  "new group",
  "a,b",
  'say "hi"',
  "line\nbreak",
  "cr\rhere",
  " padded ",
  "__proto__",
  "\u2028",
  "😀",
  "名前",
  "'",
  "=1+1",
  "#",
];

const FUTURE = "2999-01-01T00:00:00.000Z";

const grant = fc.record({
  userId: fc.constantFrom(...IMPORT_NAMES),
  group: fc.constantFrom(...IMPORT_NAMES),
  expiresAt: fc.constantFrom<string | null>(null, null, FUTURE),
});

const csvInvalid = fc.constantFrom(
  ",Sports,", // empty userId
  "alice,,", // empty group
  `${"x".repeat(1_025)},Sports,`,
  "alice,Sports,yesterday",
  "alice,Sports,2000-01-01T00:00:00Z",
  "alice,Sports,2024-13-45",
  "alice,Sports,,extra",
  "alice",
  ",,",
);

const csvUnreadable = fc.constantFrom('a"b,Sports,', '"alice"x,Sports,');

const ndjsonInvalid = fc.constantFrom(
  "not json",
  "{",
  "[1,2]",
  "null",
  "42",
  '"alice"',
  '{"userId":"alice"}',
  '{"userId":"","group":"Sports"}',
  '{"userId":1,"group":"Sports"}',
  '{"userId":"alice","group":["Sports"]}',
  '{"userId":"alice","group":"Sports","expiresAt":"2000-01-01"}',
  '{"userId":"alice","group":"Sports","expiresAt":123}',
  '{"userId":"alice","group":"Sports","expiresAt":"soon"}',
  '{"userId":"\\ud800","group":"Sports"}',
  '{"userId":"alice","group":"Sports"} trailing',
  '\u0000{"userId":"alice","group":"Sports"}',
);

const HEADERS = [
  ["userId", "group", "expiresAt"],
  ["group", "userId", "expiresAt"],
  ["expiresAt", "group", "userId"],
  ["userId", "group"],
  [" userId ", " group "],
];

export const importFile: fc.Arbitrary<ImportFile> = fc
  .constantFrom<"csv" | "ndjson">("csv", "ndjson")
  .chain((format) =>
    fc.record({
      format: fc.constant(format),
      extension: format === "csv" ? fc.constant(".csv") : fc.constantFrom(".ndjson", ".jsonl"),
      header: weighted<readonly string[] | { readonly junk: string }>(
        [8, fc.constantFrom(...HEADERS)],
        [
          1,
          fc
            .constantFrom("user,group", "userId,group,extra", "userId", '"userId,group')
            .map((junk) => ({ junk })),
        ],
      ),
      rows: fc.array(
        weighted<Row>(
          [6, grant.map((g) => ({ grant: g }))],
          // An empty line is skipped in both formats; a line of spaces only in NDJSON.
          [
            1,
            fc.constantFrom("", ...(format === "csv" ? [] : ["   "])).map((blank) => ({ blank })),
          ],
          [2, (format === "csv" ? csvInvalid : ndjsonInvalid).map((invalid) => ({ invalid }))],
          ...(format === "csv"
            ? [
                [1, csvUnreadable.map((unreadable): Row => ({ unreadable }))] as [
                  number,
                  fc.Arbitrary<Row>,
                ],
              ]
            : []),
        ),
        { maxLength: 8 },
      ),
      bom: format === "csv" ? fc.boolean() : fc.constant(false),
      eol: fc.constantFrom("\n", "\r\n"),
      skipInvalid: fc.boolean(),
    }),
  );
