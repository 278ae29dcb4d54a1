/**
 * Valid names that break naive stores: key separators, quoting, control characters, case and
 * Unicode twins, prototype keys, query-looking text and names at the length limit. Every one
 * must round-trip exactly and stay distinct from every other.
 */
export const HOSTILE_NAMES: readonly string[] = [
  "/",
  "\\",
  "#",
  "?",
  "%",
  "'",
  "''",
  '"',
  "a/b",
  "a\\b",
  "#room",
  "q?x=1&y=2",
  "100%",
  "%2F",
  "it's",
  " ",
  "  leading",
  "trailing  ",
  "tab\there",
  "new\nline",
  "\r\n",
  "\u0000",
  "\u0001\u001f",
  "\u007f",
  "\u0085",
  "\u009f",
  "\u2028",
  "\u2029",
  "a\u2028b\u2029c",
  "{\u2028}",
  "\uFEFF",
  "\uFFFF",
  "😀",
  "👨‍👩‍👧",
  "é",
  "e\u0301",
  "А",
  "A",
  "Ａ",
  "ℌ",
  "Sports",
  "sports",
  "SPORTS",
  "__proto__",
  "constructor",
  "prototype",
  "hasOwnProperty",
  "toString",
  "' or PartitionKey ne '",
  "PartitionKey eq 'x'",
  "$filter=true",
  "!0041",
  "!",
  "~",
  "~abc",
  "u:alice",
  "g:room",
  "c:",
  ".",
  "..",
  "-",
  "_",
  "null",
  "undefined",
  "0",
  "x".repeat(1024),
  "\\".repeat(1024),
  "😀".repeat(512),
  `${"/".repeat(1023)}#`,
  `${"/".repeat(1023)}?`,
];

/**
 * Every code point of the Basic Multilingual Plane but the surrogates, then samples of the
 * astral planes, packed in order into names of at most 1,000 UTF-16 code units (64 names): one
 * batched call over them sends every character through every path a store has. U+2028 and
 * U+2029 failed every Azurite transaction they were in.
 */
export const EVERY_CODE_POINT_NAMES: readonly string[] = (() => {
  const codePoints: number[] = [];
  for (let cp = 0; cp <= 0xffff; cp++) if (cp < 0xd800 || cp > 0xdfff) codePoints.push(cp);
  for (let cp = 0x10000; cp <= 0x10ffff; cp += 0x1001) codePoints.push(cp);
  codePoints.push(0x1f600, 0xe0001, 0x10ffff);
  const names: string[] = [];
  let name = "";
  for (const cp of codePoints) {
    const ch = String.fromCodePoint(cp);
    if (name.length + ch.length > 1_000) {
      names.push(name);
      name = "";
    }
    name += ch;
  }
  names.push(name);
  return names;
})();

/** Invalid names: each must be rejected with `INVALID_ARGUMENT`. */
export const INVALID_NAMES: readonly unknown[] = [
  "",
  "x".repeat(1025),
  `${"😀".repeat(512)}x`,
  "\uD800",
  "a\uDC00",
  "\uDE00\uD83D",
  undefined,
  null,
  42,
  {},
  ["a"],
  Symbol("a"),
  new String("a"),
];
