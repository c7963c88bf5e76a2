/**
 * The TokenStream's retry rules against a scripted gateway on loopback (node:http): which request each attempt
 * sends, and what the iterator yields. The same behaviour against the real system is in system.test.ts.
 */

import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";

import { afterEach, describe, expect, test } from "vitest";

import {
  APIConnectionError,
  FarMesh,
  GenerationFailed,
  InvalidRequest,
  MaxPriceExceeded,
  ModelUnavailable,
  type ProviderPreferences,
  RateLimited,
  RouteUnsatisfiable,
} from "../src/index.js";

type Answer = (req: IncomingMessage, res: ServerResponse, body: string) => void;

interface Seen {
  method: string;
  path: string;
  lastEventId: string | null;
  body: string;
}

function token(index: number): string {
  const event = {
    token: `w${index}`,
    request_id: "r1",
    index,
    token_id: index,
    tokens_generated: index + 1,
    cost_far: (0.0003 * (index + 1)).toFixed(4),
  };
  return `id: 1-${index}\ndata: ${JSON.stringify(event)}\n\n`;
}

function done(tokens: number, status = "completed", reason = "length"): string {
  const event = {
    done: true,
    request_id: "r1",
    status,
    finish_reason: reason,
    prompt_tokens: 3,
    tokens_generated: tokens,
    total_cost_far: (0.0003 * tokens).toFixed(4),
  };
  return `id: 1-${tokens}\ndata: ${JSON.stringify(event)}\n\n`;
}

/** A 200 event stream of `chunks`, then a reset connection (or a clean end when `drop` is false). */
function stream(chunks: string[], drop = false): Answer {
  return (_req, res) => {
    res.writeHead(200, { "content-type": "text/event-stream" });
    for (const chunk of chunks) res.write(chunk);
    if (drop) setTimeout(() => res.socket?.resetAndDestroy(), 20);
    else res.end();
  };
}

function refuse(status: number, code: string, headers: Record<string, string> = {}): Answer {
  return (_req, res) => {
    res.writeHead(status, { "content-type": "application/json", ...headers });
    res.end(JSON.stringify({ error: { code, message: `refused: ${code}`, field: code === "validation_error" ? "max_tokens" : null } }));
  };
}

const hangUp: Answer = (req) => req.socket.resetAndDestroy();

class Script {
  readonly seen: Seen[] = [];
  private server: Server | null = null;
  url = "";

  constructor(private readonly answers: Answer[]) {}

  async start(): Promise<this> {
    this.server = createServer((req, res) => {
      let body = "";
      req.on("data", (chunk) => (body += chunk));
      req.on("end", () => {
        const lastEventId = req.headers["last-event-id"];
        this.seen.push({
          method: req.method ?? "",
          path: req.url ?? "",
          lastEventId: typeof lastEventId === "string" ? lastEventId : null,
          body,
        });
        const answer = this.answers.shift();
        if (answer) answer(req, res, body);
        else refuse(500, "script_exhausted")(req, res, body);
      });
    });
    await new Promise<void>((resolve) => this.server?.listen(0, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as { port: number }).port}`;
    return this;
  }

  stop(): Promise<void> {
    this.server?.closeAllConnections();
    return new Promise((resolve) => this.server?.close(() => resolve()));
  }
}

const NO_WAIT = { maxRetries: 3, backoffMs: 0, maxBackoffMs: 0 };
let script: Script | null = null;

async function scripted(answers: Answer[], retry = NO_WAIT): Promise<FarMesh> {
  script = await new Script(answers).start();
  return new FarMesh({ apiKey: "fmk_test", baseUrl: script.url, retry });
}

afterEach(async () => {
  await script?.stop();
  script = null;
});

async function all(iterable: AsyncIterable<string>): Promise<string[]> {
  const tokens: string[] = [];
  for await (const t of iterable) tokens.push(t);
  return tokens;
}

describe("TokenStream", () => {
  test("a connection reset mid-stream resumes after the last event read", async () => {
    const mesh = await scripted([stream([token(0), token(1)], true), stream([token(2), done(3)])]);
    const response = await mesh.chat("Hello", { maxTokens: 3, requestId: "r1" });
    expect(await all(response)).toEqual(["w0", "w1", "w2"]);
    expect(script?.seen.map((s) => [s.method, s.path, s.lastEventId])).toEqual([
      ["POST", "/inference/generate", null],
      ["GET", "/inference/r1/stream", "1-1"],
    ]);
    expect(response.usage?.completionTokens).toBe(3);
    expect(response.costFar).toBe("0.0009");
    expect(response.finishReason).toBe("length");
  });

  test("a resume that replays from the start yields no token twice", async () => {
    const mesh = await scripted([stream([token(0), token(1)], true), stream([token(0), token(1), token(2), done(3)])]);
    expect(await (await mesh.chat("Hello", { requestId: "r1" })).text()).toBe("w0w1w2");
  });

  test("a stream that ends before its final event is resumed too", async () => {
    const mesh = await scripted([stream([token(0)]), stream([token(1), done(2)])]);
    expect(await all(await mesh.chat("Hello", { requestId: "r1" }))).toEqual(["w0", "w1"]);
    expect(script?.seen[1].lastEventId).toBe("1-0");
  });

  test("until the gateway accepts the request, each retry posts the same requestId", async () => {
    const mesh = await scripted([hangUp, refuse(503, "unavailable", { "retry-after": "1" }), stream([token(0), done(1)])]);
    expect(await all(await mesh.chat("Hello", { maxTokens: 1 }))).toEqual(["w0"]);
    const seen = script?.seen ?? [];
    expect(seen.map((s) => s.method)).toEqual(["POST", "POST", "POST"]);
    const ids = seen.map((s) => JSON.parse(s.body).request_id);
    expect(new Set(ids).size).toBe(1);
    expect(ids[0]).toMatch(/^req_[0-9a-f]{32}$/);
  });

  test("a 429 to a repost whose first POST may have landed is waited out, not thrown", async () => {
    // the gateway takes the rate limit before it re-attaches a known request id: throwing abandoned a billed run
    const mesh = await scripted([hangUp, refuse(429, "rate_limited", { "retry-after": "0" }), stream([token(0), done(1)])]);
    expect(await all(await mesh.chat("Hello", { maxTokens: 1 }))).toEqual(["w0"]);
    expect((script?.seen ?? []).map((s) => s.method)).toEqual(["POST", "POST", "POST"]);
  });

  test("a 429 is thrown at once as RateLimited with retryAfter", async () => {
    const mesh = await scripted([refuse(429, "rate_limited", { "retry-after": "42" })]);
    const error = await mesh.chat("Hello").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(RateLimited);
    expect((error as RateLimited).retryAfter).toBe(42);
    expect(script?.seen.length).toBe(1);
  });

  test("a model without a healthy swarm, or an invalid field, is not retried", async () => {
    const mesh = await scripted([refuse(503, "no_healthy_swarm"), refuse(422, "validation_error")]);
    await expect(mesh.chat("Hello")).rejects.toBeInstanceOf(ModelUnavailable);
    const invalid = await mesh.chat("Hello", { maxTokens: 0 }).catch((e: unknown) => e);
    expect(invalid).toBeInstanceOf(InvalidRequest);
    expect((invalid as InvalidRequest).field).toBe("max_tokens");
    expect(script?.seen.length).toBe(2);
  });

  test("when every retry fails, the error says the gateway was unreachable", async () => {
    const mesh = await scripted([hangUp, hangUp, hangUp, hangUp]);
    await expect(mesh.chat("Hello")).rejects.toBeInstanceOf(APIConnectionError);
    expect(script?.seen.length).toBe(4);
  });

  test("each event received renews the retry budget", async () => {
    const drops = [0, 1, 2, 3, 4, 5].map((i) => stream([token(i)], true));
    const mesh = await scripted([...drops, stream([done(6)])], { maxRetries: 1, backoffMs: 0, maxBackoffMs: 0 });
    expect((await all(await mesh.chat("Hello", { requestId: "r1" }))).length).toBe(6);
  });

  test("an error event ends the stream with GenerationFailed", async () => {
    const error = { error: { code: "no_route", message: "no server" }, request_id: "r1", tokens_generated: 1, total_cost_far: "0.0003" };
    const mesh = await scripted([stream([token(0), `id: 1-1\ndata: ${JSON.stringify(error)}\n\n`])]);
    const response = await mesh.chat("Hello", { requestId: "r1" });
    const tokens: string[] = [];
    const failure = await (async () => {
      for await (const t of response) tokens.push(t);
    })().catch((e: unknown) => e);
    expect(tokens).toEqual(["w0"]);
    expect(failure).toBeInstanceOf(GenerationFailed);
    expect((failure as GenerationFailed).code).toBe("no_route");
    expect(response.finishReason).toBe("error");
  });

  test("a 429 on resuming a running generation is waited out, not thrown", async () => {
    const mesh = await scripted([
      stream([token(0)], true),
      refuse(429, "rate_limited", { "retry-after": "0" }),
      stream([token(1), done(2)]),
    ]);
    expect(await all(await mesh.chat("Hello", { requestId: "r1" }))).toEqual(["w0", "w1"]);
    expect(script?.seen.map((s) => s.method)).toEqual(["POST", "GET", "GET"]);
  });

  test("a 204 on resuming means nothing was left to read", async () => {
    const noContent: Answer = (_req, res) => {
      res.writeHead(204);
      res.end();
    };
    const mesh = await scripted([stream([token(0)], true), noContent]);
    const response = await mesh.chat("Hello", { requestId: "r1" });
    expect(await all(response)).toEqual(["w0"]);
    expect(response.finished).toBe(true);
    expect(script?.seen.length).toBe(2);
  });

  test("chat messages become the gateway's chat template, options its native fields", async () => {
    const mesh = await scripted([stream([done(0)])]);
    const messages = [
      { role: "system", content: "Be brief." },
      { role: "user", content: "Hi" },
    ] as const;
    await (await mesh.chat(messages, { model: "m", maxTokens: 5, temperature: 0, topP: 0.5, requestId: "r1" })).text();
    expect(JSON.parse(script?.seen[0].body ?? "")).toEqual({
      prompt: "System: Be brief.\nUser: Hi\nAssistant:",
      request_id: "r1",
      model_id: "m",
      max_tokens: 5,
      temperature: 0,
      top_p: 0.5,
    });
  });

  const provider: ProviderPreferences = {
    max_price: { prompt: "0.00002", completion: "0.0003" },
    sort: "throughput",
    only: ["12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"],
    ignore: ["0xA1A1a1a1A1A1A1A1A1a1a1a1a1a1A1A1a1A1a1a1"],
    allow_fallbacks: false,
    min_reputation: 0.5,
  };

  test.each([
    ["native", "/inference/generate"],
    ["openai", "/v1/chat/completions"],
  ] as const)("routing preferences travel in the %s body as its provider object, as given", async (api, path) => {
    const mesh = await scripted([stream([done(0)])]);
    await (await mesh.chat("Hi", { api, model: "m", provider, requestId: "r1" })).text();
    expect(script?.seen[0].path).toBe(path);
    expect(JSON.parse(script?.seen[0].body ?? "").provider).toEqual(provider);
  });

  test("a price above max_price rejects chat() with MaxPriceExceeded, not retried", async () => {
    const mesh = await scripted([refuse(409, "max_price_exceeded")]);
    const error = await mesh.chat("Hi", { provider: { max_price: { completion: "0.0001" } } }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(MaxPriceExceeded);
    expect((error as MaxPriceExceeded).status).toBe(409);
    expect(script?.seen.length).toBe(1);
  });

  test("a stream no allowed route can serve ends with RouteUnsatisfiable", async () => {
    const event = { error: { code: "route_unsatisfiable", message: "no server ... holds blocks 2..3" }, request_id: "r1", tokens_generated: 0, total_cost_far: "0" };
    const mesh = await scripted([stream([`id: 1-0\ndata: ${JSON.stringify(event)}\n\n`])]);
    const response = await mesh.chat("Hi", { provider: { ignore: ["0xA1A1a1a1A1A1A1A1A1a1a1a1a1a1A1A1a1A1a1a1"] }, requestId: "r1" });
    const failure = await response.text().catch((e: unknown) => e);
    expect(failure).toBeInstanceOf(RouteUnsatisfiable);
    expect(failure).toBeInstanceOf(GenerationFailed);
    expect([(failure as RouteUnsatisfiable).status, (failure as RouteUnsatisfiable).message]).toEqual([409, "no server ... holds blocks 2..3"]);
    expect(response.finishReason).toBe("error");
    expect(script?.seen.length).toBe(1);
  });
});

describe("JSON calls", () => {
  test("a body that never comes is cut by the read timeout and retried, not awaited for ever", async () => {
    const silent: Answer = (_req, res) => {
      res.writeHead(200, { "content-type": "application/json", "content-length": "100" });
      res.flushHeaders(); // the headers, and then no body
    };
    const answer: Answer = (_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ models: [] }));
    };
    script = await new Script([silent, answer]).start();
    const mesh = new FarMesh({ apiKey: "fmk_test", baseUrl: script.url, retry: NO_WAIT, readTimeoutMs: 200 });
    const started = Date.now();
    expect(await mesh.models()).toEqual([]);
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(script.seen.length).toBe(2);
  });
});
