/**
 * `text` with every secret a URL or connection string can carry blanked: a URL's user and
 * password (`redis://default:PASSWORD@host`), `AccountKey=`, `SharedAccessSignature=` and a SAS
 * query's `sig=`. Applied to everything the sample prints: errors, logs, configuration messages.
 */
export function redact(text: string): string {
  return (
    text
      // Up to the last `@` before the host: a password may hold a raw `@` too.
      .replace(/\b([a-z][a-z0-9+.-]*:\/\/)[^/?#\s"']*@/gi, "$1***@")
      .replace(/\b(AccountKey|SharedAccessSignature)=[^;\s"']*/gi, "$1=***")
      .replace(/([?&;]sig=)[^&;\s"']*/gi, "$1***")
  );
}

/** An error's message (and, with `stack`, its stack), redacted. */
export function redactedMessage(error: unknown): string {
  return redact(error instanceof Error ? error.message : String(error));
}
