import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../sample/config.js";
import { redact } from "../sample/redact.js";

const SECRET = "s".repeat(32);
const AZURITE =
  "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;";
const ACCOUNT =
  "DefaultEndpointsProtocol=https;AccountName=contoso;AccountKey=a2V5;EndpointSuffix=core.windows.net";
const config = (env: Record<string, string>) => loadConfig({ JWT_SECRET: SECRET, ...env });

describe("the sample's dev sign-in is safe by construction", () => {
  it("is on by default only for a plainly local development run", () => {
    expect(config({}).devSignIn).toBe(true);
    expect(
      config({ NODE_ENV: "development", AZURE_TABLES_CONNECTION_STRING: AZURITE }).devSignIn,
    ).toBe(true);
    for (const NODE_ENV of ["production", "Production", "staging", "prod"])
      expect(config({ NODE_ENV }).devSignIn, NODE_ENV).toBe(false);
    expect(config({ AZURE_TABLES_CONNECTION_STRING: ACCOUNT }).devSignIn).toBe(false);
    expect(config({ AZURE_TABLES_CONNECTION_STRING: "UseDevelopmentStorage=true" }).devSignIn).toBe(
      true,
    );
    expect(config({ HOST: "0.0.0.0" }).devSignIn).toBe(false);
    // Azurite's account on another machine is somebody's storage, not this run's emulator.
    const remote = AZURITE.replace("127.0.0.1", "10.1.2.3");
    expect(config({ AZURE_TABLES_CONNECTION_STRING: remote }).devSignIn).toBe(false);
  });

  it("refuses to be turned on against a storage account or outside development", () => {
    for (const env of <Array<Record<string, string>>>[
      { DEV_SIGN_IN: "1", NODE_ENV: "Production" },
      { DEV_SIGN_IN: "1", NODE_ENV: "staging" },
      { DEV_SIGN_IN: "1", AZURE_TABLES_CONNECTION_STRING: ACCOUNT },
      { DEV_SIGN_IN: "yes" },
    ])
      expect(() => config(env), JSON.stringify(env)).toThrow(ConfigError);
    expect(config({ DEV_SIGN_IN: "1", HOST: "0.0.0.0" }).devSignIn).toBe(true); // yours to say
    expect(config({ DEV_SIGN_IN: "0" }).devSignIn).toBe(false);
  });

  it("takes ALLOWED_ORIGINS as origins, and nothing else", () => {
    expect(
      config({ ALLOWED_ORIGINS: "https://chat.example.com, http://localhost:8080" }).allowedOrigins,
    ).toEqual(["https://chat.example.com", "http://localhost:8080"]);
    for (const bad of ["chat.example.com", "https://chat.example.com/", "*"])
      expect(() => config({ ALLOWED_ORIGINS: bad }), bad).toThrow(ConfigError);
  });
});

describe("the sample prints no secret", () => {
  it("redacts URL credentials, account keys and SAS signatures", () => {
    expect(
      redact("cannot reach Redis at redis://default:hunter2@10.0.0.1:6379: ECONNREFUSED"),
    ).toBe("cannot reach Redis at redis://***@10.0.0.1:6379: ECONNREFUSED");
    expect(redact('"REDIS://:pw@host"')).toBe('"REDIS://***@host"');
    expect(redact("redis://user:hunter2@ss@127.0.0.1:1")).toBe("redis://***@127.0.0.1:1");
    expect(redact(`${ACCOUNT}`)).not.toContain("a2V5");
    expect(
      redact("TableEndpoint=https://x/;SharedAccessSignature=sv=2020-08-04&sig=abc%2Bdef"),
    ).toBe("TableEndpoint=https://x/;SharedAccessSignature=***");
    expect(redact("GET https://x.table.core.windows.net/t?sv=2020&sig=abc%2B&se=1 failed")).toBe(
      "GET https://x.table.core.windows.net/t?sv=2020&sig=***&se=1 failed",
    );
  });

  it("echoes no password in a configuration error", () => {
    expect(() => config({ REDIS_URL: "REDIS://default:hunter2@host" })).toThrow(
      'REDIS_URL must start with redis:// or rediss://, got "REDIS://***@host"',
    );
  });
});
