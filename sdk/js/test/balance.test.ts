/**
 * The prepaid balance (#26 part 6): `balance()` reads GET /v1/usage's `balance`, and a 402 insufficient_balance (in
 * either error shape) is an `InsufficientBalance` carrying the gateway's figures, against a fake fetch.
 */

import { describe, expect, test } from "vitest";

import { APIError, FarMesh, InsufficientBalance, errorFromResponse } from "../src/index.js";

function fakeFetch(status: number, body: unknown, seen: string[]): typeof fetch {
  return (async (input: string | URL | Request, init?: RequestInit) => {
    seen.push(`${init?.method ?? "GET"} ${String(input)}`);
    return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
  }) as typeof fetch;
}

const USAGE = {
  object: "usage",
  total_cost_far: "0.5",
  data: [],
  budget: { api_key_id: "k1" },
  balance: { balance_far: "9.5", held_far: "0.25", available_far: "9.25", required: true },
};

describe("balance", () => {
  test("reads the usage's balance", async () => {
    const seen: string[] = [];
    const mesh = new FarMesh({ apiKey: "fmk_test", baseUrl: "http://gw", fetch: fakeFetch(200, USAGE, seen) });
    expect(await mesh.balance()).toEqual({ balanceFar: "9.5", heldFar: "0.25", availableFar: "9.25", required: true });
    expect(seen).toEqual(["GET http://gw/v1/usage"]);
  });

  test("is null when the gateway reports none", async () => {
    const { balance: _, ...usage } = USAGE;
    const mesh = new FarMesh({ apiKey: "fmk_test", baseUrl: "http://gw", fetch: fakeFetch(200, usage, []) });
    expect(await mesh.balance()).toBeNull();
  });
});

describe("insufficient balance", () => {
  test("a native 402 is InsufficientBalance with its figures", () => {
    const body = JSON.stringify({
      error: {
        code: "insufficient_balance",
        message: "may cost up to 0.3 FAR, 0.1 FAR available",
        field: "max_tokens",
        details: [{ balance_far: "0.1", max_cost_far: "0.3" }],
      },
    });
    const error = errorFromResponse(402, new Headers(), body) as InsufficientBalance;
    expect(error).toBeInstanceOf(InsufficientBalance);
    expect(error).toBeInstanceOf(APIError);
    expect([error.status, error.code, error.field, error.availableFar, error.maxCostFar]).toEqual([
      402,
      "insufficient_balance",
      "max_tokens",
      "0.1",
      "0.3",
    ]);
  });

  test("chat throws it, not retried, from an OpenAI-shaped 402", async () => {
    const seen: string[] = [];
    const body = { error: { message: "no balance", type: "insufficient_balance", param: "max_tokens", code: "insufficient_balance" } };
    const mesh = new FarMesh({ apiKey: "fmk_test", baseUrl: "http://gw", fetch: fakeFetch(402, body, seen) });
    const error = await mesh.chat("hello", { maxTokens: 1000 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InsufficientBalance);
    expect([(error as InsufficientBalance).availableFar, (error as InsufficientBalance).field]).toEqual([null, "max_tokens"]);
    expect(seen).toHaveLength(1);
  });
});
