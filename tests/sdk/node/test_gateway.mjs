// The official openai Node SDK against a running tollgate gateway.
//
// Run by tests/gateway.rs (`node test_gateway.mjs`), which starts the gateway
// example (mock upstream) and sets TOLLGATE_BASE_URL; the keys are the ones
// that test writes into its config. Plain node, no test runner needed.

import OpenAI from "openai";

const BASE_URL = process.env.TOLLGATE_BASE_URL;
const MODEL = "llama3:8b-instruct-q8_0";

/** A client; `maxRetries: 0` unless a test says otherwise, so that every
 * retry we observe is the gateway's. `fetch` counts the SDK's HTTP calls. */
function client(key = "sk-test-ok", options = {}) {
  const calls = { count: 0 };
  const openai = new OpenAI({
    baseURL: BASE_URL,
    apiKey: key,
    maxRetries: 0,
    timeout: 20_000,
    fetch: (url, init) => {
      calls.count += 1;
      return fetch(url, init);
    },
    ...options,
  });
  return { openai, calls };
}

function chat(key = "sk-test-ok", text = "hello world", extra = {}) {
  return client(key).openai.chat.completions.create({
    model: MODEL,
    messages: [{ role: "user", content: text }],
    ...extra,
  });
}

async function raises(kind, run) {
  try {
    await run();
  } catch (error) {
    if (error instanceof kind) return error;
    throw new Error(`expected ${kind.name}, got ${error?.constructor?.name}: ${error}`);
  }
  throw new Error(`${kind.name} was not raised`);
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

const tests = {
  async success() {
    const r = await chat();
    check(r.choices[0].message.content === "mock reply: hello world", JSON.stringify(r));
    check(r.usage.prompt_tokens === 2 && r.usage.completion_tokens === 4, JSON.stringify(r.usage));
  },

  async streamingWithoutAskingHidesUsage() {
    const stream = await chat("sk-test-ok", "stream me", { stream: true });
    let text = "";
    for await (const chunk of stream) {
      check(chunk.usage == null, `the gateway's usage chunk leaked: ${JSON.stringify(chunk)}`);
      text += chunk.choices[0]?.delta?.content ?? "";
    }
    check(text === "mock reply: stream me", text);
  },

  async streamingWithUsage() {
    const stream = await chat("sk-test-ok", "count me", {
      stream: true,
      stream_options: { include_usage: true },
    });
    const usage = [];
    for await (const chunk of stream) if (chunk.usage) usage.push(chunk.usage);
    check(usage.length === 1 && usage[0].completion_tokens === 4, JSON.stringify(usage));
  },

  async badKeysAreAuthenticationErrors() {
    for (const [key, code] of [
      ["sk-test-unknown", "invalid_api_key"],
      ["sk-test-expired", "expired_api_key"],
      ["sk-test-revoked", "revoked_api_key"],
    ]) {
      const e = await raises(OpenAI.AuthenticationError, () => chat(key));
      check(e.status === 401 && e.code === code, `${key}: ${e.status} ${e.code}`);
      check(!e.message.includes(key), `the key is echoed: ${e.message}`);
    }
  },

  async disabledKeyAndModelNotAllowedArePermissionDenied() {
    let e = await raises(OpenAI.PermissionDeniedError, () => chat("sk-test-disabled"));
    check(e.code === "account_disabled", e.code);
    e = await raises(OpenAI.PermissionDeniedError, () => chat("sk-test-restricted"));
    check(e.code === "model_not_allowed" && e.param === "model", `${e.code} ${e.param}`);
    e = await raises(OpenAI.PermissionDeniedError, () => chat("sk-test-balance"));
    check(e.code === "insufficient_balance", e.code);
  },

  async unknownModelIsBadRequest() {
    const e = await raises(OpenAI.BadRequestError, () =>
      chat("sk-test-ok", "hi", { model: "no-such-model" }),
    );
    check(e.code === "invalid_model", e.code);
  },

  async rateLimitHasRetryAfter() {
    await chat("sk-test-rpm");
    const e = await raises(OpenAI.RateLimitError, () => chat("sk-test-rpm"));
    check(Number(e.headers.get("retry-after")) >= 1, `retry-after: ${e.headers.get("retry-after")}`);
    check(e.code === "rate_limit_exceeded", e.code);
  },

  async budgetExceededIs402() {
    const e = await raises(OpenAI.APIError, async () => {
      for (let i = 0; i < 3; i += 1) await chat("sk-test-budget");
    });
    check(e.status === 402 && e.code === "budget_exceeded", `${e.status} ${e.code}`);
  },

  async gatewayRetriesAreNotStackedBySdkRetries() {
    // The SDK's default retries (2) are on: the gateway retried the 503s
    // itself, says `x-should-retry: false`, and the SDK calls once.
    const { openai, calls } = client("sk-test-ok", { maxRetries: 2 });
    const e = await raises(OpenAI.InternalServerError, () =>
      openai.chat.completions.create({
        model: MODEL,
        messages: [{ role: "user", content: "down MOCK:status=503,times=100" }],
      }),
    );
    check(e.status === 503, `${e.status}`);
    check(e.headers.get("x-should-retry") === "false", `x-should-retry: ${e.headers.get("x-should-retry")}`);
    check(calls.count === 1, `the SDK called ${calls.count} times`);
  },

  async cutStreamRaisesMidIteration() {
    const stream = await chat("sk-test-ok", "one two three four MOCK:cut_after=3", { stream: true });
    let text = "";
    const e = await raises(OpenAI.APIError, async () => {
      for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
    });
    check(text.startsWith("mock"), text);
    check(/stream|upstream/i.test(e.message), e.message);
  },
};

let failed = 0;
for (const [name, test] of Object.entries(tests)) {
  try {
    await test();
    console.log(`ok   ${name}`);
  } catch (error) {
    failed += 1;
    console.log(`FAIL ${name}: ${error?.stack ?? error}`);
  }
}
const total = Object.keys(tests).length;
console.log(`sdk: ${total - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
