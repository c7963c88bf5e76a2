/**
 * The TypeScript SDK against the whole running system, started by the Python test suite
 * (tests/sdk/test_typescript_sdk.py), which passes its addresses and keys in FARLABS_* variables and serves a
 * small control API: the HTTP API's own tokens for a greedy request, the ledger's bill for a request, and
 * killing and restarting the gateway process. Without those variables these tests are skipped.
 */

import { afterAll, beforeAll, describe, expect, test } from "vitest";

import { Conflict, FarMesh, InvalidRequest, NotFound, RateLimited, Unauthorized } from "../src/index.js";
import { DroppingProxy } from "./proxy.js";

const env = process.env;
const live = Boolean(env.FARLABS_CONTROL_URL && env.FARLABS_BASE_URL && env.FARLABS_API_KEY);
const PROMPT = "A request walks through the gateway";
const LONG = 120;

async function control<T>(method: string, path: string): Promise<T> {
  const response = await fetch(`${env.FARLABS_CONTROL_URL}${path}`, { method });
  if (!response.ok) throw new Error(`control ${path}: ${response.status} ${await response.text()}`);
  return (await response.json()) as T;
}

/** The token texts the HTTP API streams for this greedy request, read by the Python suite's plain SSE client. */
async function httpApiTokens(maxTokens: number): Promise<string[]> {
  const query = new URLSearchParams({ prompt: PROMPT, max_tokens: String(maxTokens) });
  return (await control<{ tokens: string[] }>("GET", `/reference?${query}`)).tokens;
}

interface Bill {
  tokens_generated: number;
  total_cost_far: string;
  status: string;
}

/** Accounting settles; the one ledger session of the request, its books checked to balance. */
async function billed(requestId: string): Promise<Bill> {
  return control<Bill>("GET", `/ledger/${requestId}`);
}

function far(amount: string): number {
  return Number(amount);
}

describe.skipIf(!live)("the TypeScript SDK against the live system", () => {
  const price = Number(env.FARLABS_PRICE_FAR);
  let mesh: FarMesh;

  beforeAll(() => {
    mesh = new FarMesh({ apiKey: env.FARLABS_API_KEY });
  });

  test("the seed snippet streams the same tokens as the HTTP API, with its cost", async () => {
    const stream = await mesh.chat(PROMPT, { maxTokens: 16, temperature: 0 });
    const tokens: string[] = [];
    const costs: number[] = [];
    for await (const token of stream) {
      tokens.push(token);
      costs.push(far(stream.costFar));
    }
    expect(tokens).toEqual(await httpApiTokens(16));
    costs.forEach((cost, i) => expect(cost).toBeCloseTo((i + 1) * price, 12));
    expect(stream.usage?.completionTokens).toBe(tokens.length);
    expect(stream.usage?.status).toBe("completed");
    expect(["length", "stop"]).toContain(stream.finishReason);
    const bill = await billed(stream.requestId);
    expect(bill.tokens_generated).toBe(tokens.length);
    expect(far(bill.total_cost_far)).toBeCloseTo(far(stream.usage?.totalCostFar ?? "NaN"), 12);
  });

  test("models and meshStatus describe what is on sale", async () => {
    const models = await mesh.models();
    expect(models.length).toBeGreaterThan(0);
    expect(models.every((m) => m.status === "available" && far(m.pricePerTokenFar) === price)).toBe(true);
    expect(models.every((m) => m.completionPricePerTokenFar === m.pricePerTokenFar)).toBe(true);
    expect(models.every((m) => far(m.promptPricePerTokenFar) === 0)).toBe(true);
    expect(models.every((m) => m.family === "tiny-llama (random weights)" && (m.parameters ?? 0) > 0)).toBe(true);
    expect(models.every((m) => (m.contextLength ?? 0) > 0 && m.license !== null)).toBe(true);
    const status = await mesh.meshStatus();
    expect(status.completionPricePerTokenFar).toBe(status.pricePerTokenFar);
    expect(status.modelId).toBe(models[0].modelId);
    expect(status.status).toBe("connected");
    expect(status.activeNodes).toBeGreaterThan(0);
  });

  test("chat messages stream the same tokens on the native and the OpenAI-compatible routes", async () => {
    const messages = [
      { role: "system", content: "Be brief." },
      { role: "user", content: "Name a colour" },
    ] as const;
    const model = (await mesh.models())[0].modelId;
    const native = await mesh.chat(messages, { maxTokens: 8, temperature: 0 });
    const nativeText = await native.text();
    const openai = await mesh.chat(messages, { model, maxTokens: 8, temperature: 0, api: "openai" });
    const openaiText = await openai.text();
    expect(openaiText).toBe(nativeText);
    expect(openai.usage).toEqual(native.usage);
  });

  test("a responseFormat makes the tokens one JSON value that validates, on both routes", async () => {
    const schema = {
      type: "object",
      properties: { colour: { enum: ["red", "green", "blue"] }, shade: { type: "integer", maximum: 9 } },
      required: ["colour", "shade"],
      additionalProperties: false,
    };
    const model = (await mesh.models())[0].modelId;
    for (const api of ["native", "openai"] as const) {
      const stream = await mesh.chat("Name a colour", {
        model,
        maxTokens: 64,
        temperature: 1,
        api,
        responseFormat: { type: "json_schema", json_schema: { name: "colour", schema, strict: true } },
      });
      const reply = JSON.parse(await stream.text()) as { colour: string; shade: number };
      expect(["red", "green", "blue"]).toContain(reply.colour);
      expect(Object.keys(reply).sort()).toEqual(["colour", "shade"]);
    }
  });

  describe("through a proxy that drops connections", () => {
    let proxy: DroppingProxy;
    beforeAll(async () => {
      proxy = await new DroppingProxy(Number(new URL(env.FARLABS_BASE_URL as string).port)).start();
    });
    afterAll(() => proxy.stop());

    test("a TCP connection cut mid-stream resumes and yields every token exactly once", async () => {
      const flaky = new FarMesh({ apiKey: env.FARLABS_API_KEY, baseUrl: proxy.url });
      const stream = await flaky.chat(PROMPT, { maxTokens: LONG, temperature: 0 });
      const tokens: string[] = [];
      for await (const token of stream) {
        tokens.push(token);
        if (tokens.length === 5 || tokens.length === 40) expect(proxy.cut()).toBe(1);
      }
      expect(proxy.cuts).toBe(2);
      expect(proxy.connections).toBeGreaterThanOrEqual(3);
      expect(tokens).toEqual(await httpApiTokens(LONG));
      expect(stream.usage?.completionTokens).toBe(tokens.length);
      expect((await billed(stream.requestId)).tokens_generated).toBe(tokens.length);
    });
  });

  describe("through a proxy that loses the answer to a POST", () => {
    let proxy: DroppingProxy;
    beforeAll(async () => {
      proxy = await new DroppingProxy(Number(new URL(env.FARLABS_BASE_URL as string).port)).start();
    });
    afterAll(() => proxy.stop());

    test("the SDK posts the same requestId again, and the request runs and bills once", async () => {
      proxy.dropNextAnswer();
      const flaky = new FarMesh({ apiKey: env.FARLABS_API_KEY, baseUrl: proxy.url });
      const stream = await flaky.chat(PROMPT, { maxTokens: 12, temperature: 0 });
      const tokens: string[] = [];
      for await (const token of stream) tokens.push(token);
      expect(proxy.connections).toBe(2); // the lost answer, then the retried POST
      expect(tokens).toEqual(await httpApiTokens(12));
      expect((await billed(stream.requestId)).tokens_generated).toBe(tokens.length);
    });
  });

  test("the gateway restarted mid-stream and the stream still completes", async () => {
    const patient = new FarMesh({ apiKey: env.FARLABS_API_KEY, maxRetries: 20 });
    const stream = await patient.chat(PROMPT, { maxTokens: LONG, temperature: 0 });
    const tokens: string[] = [];
    let killed: number | null = null;
    for await (const token of stream) {
      tokens.push(token);
      if (tokens.length === 5) killed = (await control<{ killed: number }>("POST", "/gateway/kill")).killed;
    }
    const { pid } = await control<{ pid: number }>("POST", "/gateway/wait");
    expect(killed).not.toBeNull();
    expect(pid).not.toBe(killed);
    expect(tokens).toEqual(await httpApiTokens(LONG));
    expect(stream.usage?.status).toBe("completed");
    expect((await billed(stream.requestId)).tokens_generated).toBe(tokens.length);
  });

  test("a rate limit is thrown as RateLimited with retryAfter", async () => {
    const strict = new FarMesh({ apiKey: env.FARLABS_STRICT_KEY, baseUrl: env.FARLABS_STRICT_URL });
    const first = await strict.chat(PROMPT, { maxTokens: 2, temperature: 0 });
    const refused = await strict.chat(PROMPT, { maxTokens: 2, temperature: 0 }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(RateLimited);
    const error = refused as RateLimited;
    expect(error.status).toBe(429);
    expect(error.code).toBe("rate_limited");
    expect(error.retryAfter).toBeGreaterThanOrEqual(1);
    expect(error.retryAfter).toBeLessThanOrEqual(60);
    expect(await first.text()).not.toBe(""); // the first request, within the limit, runs to its end
    expect((await billed(first.requestId)).tokens_generated).toBe(first.tokensGenerated);
  });

  test("cancel stops the generation and bills exactly the tokens yielded", async () => {
    const stream = await mesh.chat(PROMPT, { maxTokens: 400, temperature: 0 });
    const tokens: string[] = [];
    for await (const token of stream) {
      tokens.push(token);
      if (tokens.length === 5) expect(await stream.cancel()).toBe("cancelling");
    }
    expect(stream.finishReason).toBe("cancelled");
    expect(stream.usage?.status).toBe("cancelled");
    expect(tokens.length).toBeGreaterThanOrEqual(5);
    expect(tokens.length).toBeLessThan(400);
    expect(stream.usage?.completionTokens).toBe(tokens.length);
    const bill = await billed(stream.requestId);
    expect(bill.status).toBe("cancelled");
    expect(bill.tokens_generated).toBe(tokens.length);
    expect(far(bill.total_cost_far)).toBeCloseTo(far(stream.costFar), 12);
  });

  test("an AbortSignal stops the stream", async () => {
    const controller = new AbortController();
    const stream = await mesh.chat(PROMPT, { maxTokens: LONG, temperature: 0, signal: controller.signal });
    const tokens: string[] = [];
    const failure = await (async () => {
      for await (const token of stream) {
        tokens.push(token);
        if (tokens.length === 3) controller.abort();
      }
    })().catch((e: unknown) => e);
    expect((failure as Error).name).toBe("AbortError");
    expect(tokens.length).toBe(3);
    expect(stream.finished).toBe(false);
  });

  test("refusals are typed errors naming what was wrong", async () => {
    const stranger = new FarMesh({ apiKey: `fmk_0000000000000000_${"x".repeat(43)}`, maxRetries: 0 });
    await expect(stranger.chat("Hello", { maxTokens: 1 })).rejects.toBeInstanceOf(Unauthorized);
    const invalid = await mesh.chat("Hello", { maxTokens: 0 }).catch((e: unknown) => e);
    expect(invalid).toBeInstanceOf(InvalidRequest);
    expect((invalid as InvalidRequest).field).toBe("max_tokens");
    const unknown = await mesh.chat("Hello", { model: "no-such-model", maxTokens: 1 }).catch((e: unknown) => e);
    expect(unknown).toBeInstanceOf(NotFound);
    expect((unknown as NotFound).field).toBe("model_id");
    await expect(mesh.cancel("never-submitted")).rejects.toBeInstanceOf(NotFound);
    const owned = await mesh.chat("Hello", { maxTokens: 1, temperature: 0 });
    await owned.text();
    const other = new FarMesh({ apiKey: env.FARLABS_OTHER_KEY });
    const conflict = await other.chat("Hello", { maxTokens: 1, requestId: owned.requestId }).catch((e: unknown) => e);
    expect(conflict).toBeInstanceOf(Conflict);
    expect((conflict as Conflict).field).toBe("request_id");
  });
});
