//! Reservations are upper bounds: for generated requests of every API the
//! gateway serves (chat, completions, Responses, Anthropic messages), with
//! any mix of output caps, `n`, `best_of`, text, images, audio and tool
//! definitions, what `BudgetLayer` holds before the call is at least the
//! largest cost the model's limits allow for that request.
//!
//! That largest cost is computed here independently of the crate:
//! - output: every completion the request makes (`max(n, best_of, 1)`) at
//!   its cap (the largest it gives, or the model's `max_output_tokens`);
//! - prompt: its text and tool definitions at the documented estimate (4
//!   characters a token, rounded up), each image at the most OpenAI's tile
//!   formula (computed exactly, in integers) or Anthropic's limit lets it
//!   cost, and each audio clip at 10 tokens per second of the longest
//!   recording its size allows (8 kbit/s).

use std::convert::Infallible;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use serde_json::{Value, json};
use tollgate::auth::{KeyHash, KeyRecord, Principal};
use tollgate::budget::{
    BudgetLayer, BudgetScope, BudgetSpec, Ledger, ModelPrice, Money, Period, Pricing, ReservePolicy,
};
use tollgate::store::memory::MemoryLedger;
use tower::{Layer, ServiceExt, service_fn};

#[derive(Debug, Clone, Copy)]
enum Api {
    Chat,
    Completions,
    Responses,
    Messages,
}

#[derive(Debug, Clone)]
enum Image {
    /// A URL at `detail` (`None`: no detail given).
    Url(Option<&'static str>),
    /// A PNG of this size, in a `data:` URL, at high detail.
    Png(u32, u32),
}

#[derive(Debug, Clone)]
struct Generated {
    api: Api,
    model_max_output: u64,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    n: Option<u64>,
    best_of: Option<u64>,
    texts: Vec<String>,
    images: Vec<Image>,
    /// Decoded bytes of each mp3 clip.
    audio: Vec<usize>,
    tools: Vec<(String, String)>,
}

fn image() -> impl Strategy<Value = Image> {
    prop_oneof![
        prop::option::of(prop::sample::select(vec!["low", "high", "auto"])).prop_map(Image::Url),
        (1u32..20_000, 1u32..20_000).prop_map(|(w, h)| Image::Png(w, h)),
    ]
}

fn generated() -> impl Strategy<Value = Generated> {
    let cap = || prop::option::of(1u64..200_000);
    let count = || prop::option::of(1u64..12);
    (
        prop::sample::select(vec![
            Api::Chat,
            Api::Completions,
            Api::Responses,
            Api::Messages,
        ]),
        1u64..100_000,
        (cap(), cap(), cap()),
        (count(), count()),
        prop::collection::vec("\\PC{0,60}", 0..4),
        prop::collection::vec(image(), 0..3),
        prop::collection::vec(0usize..4_000, 0..2),
        prop::collection::vec(("[a-z_]{1,12}", "\\PC{0,40}"), 0..3),
    )
        .prop_map(
            |(api, model_max_output, caps, counts, texts, images, audio, tools)| Generated {
                api,
                model_max_output,
                max_tokens: caps.0,
                max_completion_tokens: caps.1,
                max_output_tokens: caps.2,
                n: counts.0,
                best_of: counts.1,
                texts,
                images,
                audio,
                tools,
            },
        )
}

/// The first bytes of a PNG of `width` × `height`: enough for its size.
fn png(width: u32, height: u32) -> String {
    let mut bytes = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
    bytes.extend_from_slice(&width.to_be_bytes());
    bytes.extend_from_slice(&height.to_be_bytes());
    bytes.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
    format!("data:image/png;base64,{}", STANDARD.encode(bytes))
}

/// OpenAI's tile formula, exactly: fit 2048 × 2048, then the short side to
/// 768, then 85 + 170 per 512-pixel tile (sides in rationals, never floats).
fn tile_tokens(width: u32, height: u32) -> u64 {
    let (w, h) = (u128::from(width), u128::from(height));
    let (long, short) = (w.max(h), w.min(h));
    // Each side as num / den.
    let (den, scale) = if long > 2048 && short * 2048 > 768 * long {
        (short, 768)
    } else if long > 2048 {
        (long, 2048)
    } else if short > 768 {
        (short, 768)
    } else {
        (1, 1)
    };
    let tiles = |side: u128| (side * scale).div_ceil(den * 512).max(1);
    let tiles = tiles(w) * tiles(h);
    85 + 170 * u64::try_from(tiles).unwrap()
}

impl Generated {
    fn body(&self) -> (String, Value) {
        let text = || self.texts.join(" ");
        let images_openai = |responses: bool| -> Vec<Value> {
            self.images
                .iter()
                .map(|image| {
                    let (url, detail) = match image {
                        Image::Url(detail) => ("https://example.com/cat.png".to_owned(), *detail),
                        Image::Png(w, h) => (png(*w, *h), Some("high")),
                    };
                    match (responses, detail) {
                        (false, Some(d)) => {
                            json!({"type":"image_url","image_url":{"url":url,"detail":d}})
                        }
                        (false, None) => json!({"type":"image_url","image_url":{"url":url}}),
                        (true, Some(d)) => json!({"type":"input_image","image_url":url,"detail":d}),
                        (true, None) => json!({"type":"input_image","image_url":url}),
                    }
                })
                .collect()
        };
        let audio: Vec<Value> = self
            .audio
            .iter()
            .map(|len| {
                let data = STANDARD.encode(vec![0x55; *len]);
                json!({"type":"input_audio","input_audio":{"data":data,"format":"mp3"}})
            })
            .collect();
        let tools: Vec<Value> = self
            .tools
            .iter()
            .map(|(name, description)| {
                json!({"type":"function","function":{"name":name,"description":description,
                    "parameters":{"type":"object","properties":{}}}})
            })
            .collect();
        let (path, mut body) = match self.api {
            Api::Chat => {
                let mut content: Vec<Value> = self
                    .texts
                    .iter()
                    .map(|t| json!({"type":"text","text":t}))
                    .collect();
                content.extend(images_openai(false));
                content.extend(audio);
                (
                    "/v1/chat/completions",
                    json!({"messages":[{"role":"user","content":content}]}),
                )
            }
            Api::Completions => ("/v1/completions", json!({"prompt": text()})),
            Api::Responses => {
                let mut content: Vec<Value> = self
                    .texts
                    .iter()
                    .map(|t| json!({"type":"input_text","text":t}))
                    .collect();
                content.extend(images_openai(true));
                (
                    "/v1/responses",
                    json!({"input":[{"role":"user","content":content}]}),
                )
            }
            Api::Messages => {
                let mut content: Vec<Value> = self
                    .texts
                    .iter()
                    .map(|t| json!({"type":"text","text":t}))
                    .collect();
                for _ in &self.images {
                    content.push(json!({"type":"image","source":{"type":"url","url":"https://example.com/cat.png"}}));
                }
                (
                    "/v1/messages",
                    json!({"messages":[{"role":"user","content":content}]}),
                )
            }
        };
        let object = body.as_object_mut().unwrap();
        object.insert("model".into(), json!("m"));
        for (name, value) in [
            ("max_tokens", self.max_tokens),
            ("max_completion_tokens", self.max_completion_tokens),
            ("max_output_tokens", self.max_output_tokens),
            ("n", self.n),
            ("best_of", self.best_of),
        ] {
            if let Some(value) = value {
                object.insert(name.into(), json!(value));
            }
        }
        if !tools.is_empty() {
            object.insert("tools".into(), Value::Array(tools));
        }
        (path.to_owned(), body)
    }

    /// The most tokens the upstream can bill for: (prompt, output).
    fn largest_usage(&self) -> (u64, u64) {
        let text_chars: usize = match self.api {
            // The prompt is the texts joined by spaces.
            Api::Completions => self.texts.join(" ").chars().count(),
            _ => self.texts.iter().map(|t| t.chars().count()).sum(),
        };
        let tool_bytes = if self.tools.is_empty() {
            0
        } else {
            let (_, body) = self.body();
            serde_json::to_string(&body["tools"]).unwrap().len()
        };
        let mut prompt = (text_chars + tool_bytes).div_ceil(4) as u64;
        if !matches!(self.api, Api::Completions) {
            for image in &self.images {
                prompt += match (self.api, image) {
                    (Api::Messages, _) => 1_600,
                    (_, Image::Url(Some("low"))) => 85,
                    (_, Image::Url(_)) => 85 + 170 * 8,
                    (_, Image::Png(w, h)) => tile_tokens(*w, *h),
                };
            }
        }
        if matches!(self.api, Api::Chat) {
            // 10 tokens a second; a second is at least 1,000 bytes.
            prompt += self
                .audio
                .iter()
                .map(|len| (*len as u64 * 10).div_ceil(1_000))
                .sum::<u64>();
        }
        let cap = [
            self.max_tokens,
            self.max_completion_tokens,
            self.max_output_tokens,
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(self.model_max_output);
        let completions = self.n.unwrap_or(1).max(self.best_of.unwrap_or(1));
        (prompt, cap * completions)
    }
}

/// What `BudgetLayer` holds for `generated`, read by the upstream while the
/// call is in flight.
async fn reserved(generated: &Generated, price: ModelPrice) -> Money {
    let ledger = MemoryLedger::new();
    let budget = BudgetSpec::budget(
        BudgetScope::Key("k".into()),
        Money::from_usd(1_000_000),
        Period::Monthly,
    );
    let mut record = KeyRecord::new("k", KeyHash::of("sk-k"));
    record.budgets = vec![budget.clone()];
    let (path, body) = generated.body();
    let mut req = Request::post(path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&body).unwrap())))
        .unwrap();
    req.extensions_mut().insert(Principal::new(record));
    let held = std::sync::Arc::new(std::sync::Mutex::new(None));
    let upstream = {
        let (ledger, budget, held) = (ledger.clone(), budget.clone(), held.clone());
        service_fn(move |_req: Request<Full<Bytes>>| {
            let (ledger, budget, held) = (ledger.clone(), budget.clone(), held.clone());
            async move {
                *held.lock().unwrap() = Some(ledger.read(&budget).await.unwrap().reserved);
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
            }
        })
    };
    let response = BudgetLayer::with_ledger(Pricing::new().with("m", price), ledger)
        .policy(ReservePolicy::Strict)
        .layer(upstream)
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();
    let held = held.lock().unwrap().take();
    held.expect("the upstream was called")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_reservation_covers_the_largest_cost_the_limits_allow(generated in generated()) {
        let price = ModelPrice::per_million("3", "15")
            .unwrap()
            .max_output_tokens(generated.model_max_output);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let held = runtime.block_on(reserved(&generated, price));
        let (prompt, output) = generated.largest_usage();
        let largest = price.cost_of(prompt, 0, output);
        prop_assert!(
            held >= largest,
            "held {held} < {largest} for {prompt} prompt and {output} output tokens: {generated:?}"
        );
    }
}

#[test]
fn the_tile_oracle_matches_openai_s_published_examples() {
    // 1024 × 1024: 4 tiles. 2048 × 4096 → 1024 × 2048 → 768 × 1536: 6 tiles.
    assert_eq!(tile_tokens(1024, 1024), 765);
    assert_eq!(tile_tokens(2048, 4096), 1105);
    assert_eq!(tile_tokens(4096, 8192), 1105);
    assert_eq!(tile_tokens(100, 100), 255);
}
