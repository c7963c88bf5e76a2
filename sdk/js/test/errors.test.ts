/**
 * errorFromResponse reads both error shapes the gateway answers: its native `{code, message, field}` and, on `/v1`,
 * OpenAI's `{message, type, param, code}`, where the field is named `param`.
 */

import { describe, expect, test } from "vitest";

import {
  Conflict,
  GenerationFailed,
  InvalidRequest,
  MaxPriceExceeded,
  NotFound,
  RateLimited,
  RouteUnsatisfiable,
  errorFromResponse,
} from "../src/index.js";

function body(error: Record<string, unknown>): string {
  return JSON.stringify({ error });
}

describe("errorFromResponse", () => {
  test("a native error names its field", () => {
    const error = errorFromResponse(
      422,
      new Headers(),
      body({ code: "validation_error", message: "max_tokens: too big", field: "max_tokens", details: [{ loc: [] }] }),
    );
    expect(error).toBeInstanceOf(InvalidRequest);
    expect([error.code, error.field, error.message]).toEqual(["validation_error", "max_tokens", "max_tokens: too big"]);
    expect(error.details).toEqual([{ loc: [] }]);
  });

  test("an OpenAI-shaped error from /v1 names its param as the field", () => {
    const error = errorFromResponse(
      400,
      new Headers(),
      body({ message: "stop: at most 4", type: "invalid_request_error", param: "stop", code: "validation_error" }),
    );
    expect(error).toBeInstanceOf(InvalidRequest);
    expect([error.status, error.code, error.field, error.message]).toEqual([400, "validation_error", "stop", "stop: at most 4"]);
  });

  test("an OpenAI-shaped error without a code or param takes its type as the code", () => {
    const error = errorFromResponse(404, new Headers(), body({ message: "no such model", type: "invalid_request_error", param: null, code: null }));
    expect(error).toBeInstanceOf(NotFound);
    expect([error.code, error.field]).toEqual(["invalid_request_error", null]);
  });

  test("an OpenAI-shaped rate limit keeps Retry-After", () => {
    const headers = new Headers({ "retry-after": "3" });
    const error = errorFromResponse(429, headers, body({ message: "slow down", type: "rate_limit_error", param: null, code: "too_many_streams" }));
    expect(error).toBeInstanceOf(RateLimited);
    expect([(error as RateLimited).retryAfter, error.code]).toEqual([3, "too_many_streams"]);
  });

  test("a max_price refusal is a Conflict naming the cap it is above", () => {
    const message = "the completion price is 0.0004 $FAR per token now, above provider.max_price.completion (0.0003)";
    const error = errorFromResponse(409, new Headers(), body({ code: "max_price_exceeded", message, field: "provider.max_price.completion" }));
    expect(error).toBeInstanceOf(MaxPriceExceeded);
    expect(error).toBeInstanceOf(Conflict);
    expect([error.status, error.field]).toEqual([409, "provider.max_price.completion"]);
  });

  test("another 409 stays a plain Conflict", () => {
    const error = errorFromResponse(409, new Headers(), body({ code: "request_id_used", message: "ran before" }));
    expect(error.constructor).toBe(Conflict);
  });

  test("an unsatisfiable route from a non-streamed OpenAI route is the stream error's class", () => {
    const answer = body({ message: "no server holds blocks 2..3", type: "invalid_request_error", param: "provider", code: "route_unsatisfiable" });
    const error = errorFromResponse(409, new Headers(), answer);
    expect(error).toBeInstanceOf(RouteUnsatisfiable);
    expect(error).toBeInstanceOf(GenerationFailed);
    expect([error.status, error.field]).toEqual([409, "provider"]);
  });
});
