/**
 * errorFromResponse reads both error shapes the gateway answers: its native `{code, message, field}` and, on `/v1`,
 * OpenAI's `{message, type, param, code}`, where the field is named `param`.
 */

import { describe, expect, test } from "vitest";

import { InvalidRequest, NotFound, RateLimited, errorFromResponse } from "../src/index.js";

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
});
