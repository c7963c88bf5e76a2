/**
 * What the SDK refuses before it sends anything, and what an OpenAI-shaped error chunk says was billed.
 */

import { describe, expect, test } from "vitest";

import { FarMesh, FarMeshError, GenerationFailed } from "../src/index.js";
import { Progress } from "../src/progress.js";

describe("the API key", () => {
  test("read with a file's newline is trimmed", () => {
    expect(new FarMesh({ apiKey: "fmk_from_a_file\n", baseUrl: "http://127.0.0.1:9" })).toBeInstanceOf(FarMesh);
  });

  test("that a header cannot carry is refused unsent, and never quoted", () => {
    // fetch's own error for such a header quotes it, key and all; the SDK retried it and said so
    for (const bad of ["fmk_SECRET\nKEY", "fmk SECRET", "fmk_SECRÉT"]) {
      expect(() => new FarMesh({ apiKey: bad, baseUrl: "http://127.0.0.1:9" })).toThrowError(FarMeshError);
      try {
        new FarMesh({ apiKey: bad, baseUrl: "http://127.0.0.1:9" });
      } catch (error) {
        expect(String((error as Error).message)).not.toContain("SECR");
      }
    }
  });
});

describe("an OpenAI error chunk", () => {
  test("says what was billed as cost_far", () => {
    const progress = new Progress("r");
    const chunk = { error: { code: "no_route", message: "no server" }, request_id: "r", cost_far: "0.0002" };
    try {
      progress.accept(undefined, JSON.stringify(chunk));
      expect.unreachable();
    } catch (error) {
      expect(error).toBeInstanceOf(GenerationFailed);
      expect((error as GenerationFailed).totalCostFar).toBe("0.0002");
    }
  });
});
