import { createSecretKey, type KeyObject } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import jwt from "jsonwebtoken";
import passport from "passport";
import { ExtractJwt, Strategy as JwtStrategy } from "passport-jwt";
import { isValidName } from "../adapters/index.js";
import type { SampleConfig } from "./config.js";

/** Who a valid token says the caller is. */
export interface Principal {
  userId: string;
  /** When the token expires, in ms since the epoch. */
  expiresAt: number;
}

interface Claims {
  sub?: unknown;
  exp?: unknown;
}

/**
 * Registers the `jwt` strategy: HS256 only (no `none`, no algorithm switching), issuer and
 * audience checked, `exp` required, user id from `sub`. The token comes from
 * `Authorization: Bearer …` or, for browsers that cannot set headers on a WebSocket, from the
 * `access_token` query parameter.
 */
export function configurePassport(config: SampleConfig["jwt"]): passport.PassportStatic {
  const key = secretKey(config.secret);
  const instance = new passport.Passport() as unknown as passport.PassportStatic;
  instance.use(
    "jwt",
    new JwtStrategy(
      {
        jwtFromRequest: ExtractJwt.fromExtractors([
          ExtractJwt.fromAuthHeaderAsBearerToken(),
          ExtractJwt.fromUrlQueryParameter("access_token"),
        ]),
        // passport-jwt's types predate KeyObject; it hands the key to jsonwebtoken, which takes it.
        secretOrKey: key as unknown as Buffer,
        algorithms: ["HS256"],
        issuer: config.issuer,
        audience: config.audience,
      },
      (claims: Claims, done: (error: unknown, user?: Principal | false) => void) => {
        const { sub, exp } = claims;
        if (!isValidName(sub) || typeof exp !== "number") return done(null, false);
        done(null, { userId: sub, expiresAt: exp * 1000 });
      },
    ),
  );
  return instance;
}

/** Authenticates an HTTP request (here: a WebSocket upgrade) with passport; `undefined` when refused. */
export function authenticate(
  auth: passport.PassportStatic,
  req: IncomingMessage,
): Promise<Principal | undefined> {
  return new Promise((resolve, reject) => {
    const middleware = auth.authenticate(
      "jwt",
      { session: false },
      (error: unknown, user: unknown) => {
        if (error) reject(error);
        else resolve(user ? (user as Principal) : undefined);
      },
    );
    // An upgrade has no response object; passport only needs one for redirects, which the
    // custom callback above replaces.
    middleware(req, {} as ServerResponse, (error: unknown) =>
      error ? reject(error) : resolve(undefined),
    );
  });
}

const keys = new Map<string, KeyObject>();

/**
 * The HS256 key as a KeyObject. Given a string, jsonwebtoken first tries to parse it as a PEM
 * public key and catches the failure, on every call: that was 16% of the server's CPU in the
 * connect-storm benchmark.
 */
export function secretKey(secret: string): KeyObject {
  let key = keys.get(secret);
  if (key === undefined) {
    key = createSecretKey(Buffer.from(secret));
    keys.set(secret, key);
  }
  return key;
}

/** Mints a token the sample accepts. `ttlSeconds` must be positive. */
export function mintToken(config: SampleConfig["jwt"], userId: string, ttlSeconds: number): string {
  return jwt.sign({}, secretKey(config.secret), {
    algorithm: "HS256",
    subject: userId,
    expiresIn: ttlSeconds,
    issuer: config.issuer,
    audience: config.audience,
  });
}
