//! OpenAI's API family: chat completions, legacy completions, embeddings
//! and the Responses API, passed through to an OpenAI-compatible upstream.
//!
//! | route | streamed | usage the budget settles from |
//! |---|---|---|
//! | `POST /v1/chat/completions` | `data:` chunks, `[DONE]` | the usage chunk, asked for with `stream_options.include_usage` when the client did not (and cut out again) |
//! | `POST /v1/completions` | the same | the same |
//! | `POST /v1/embeddings` | no | `usage.prompt_tokens`: priced by input tokens, nothing reserved for output |
//! | `POST /v1/responses` | `event:` + `data:` | `response.completed` / `response.incomplete` (`input_tokens`, `output_tokens`); `max_output_tokens` caps the reservation |
//!
//! `input` of an embeddings request may be a string, an array of strings or
//! of token arrays: the prompt estimate counts text by characters and token
//! arrays by their integers (see `RequestMeta`).

// Every OpenAI endpoint is [`super::forward`] with its [`super::Api`]: the
// differences (the upstream path, asking for usage) are the `Api`'s.
