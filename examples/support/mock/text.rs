//! What the mock "generates": deterministic replies, token counts and ids.
//!
//! A token is a whitespace-separated word (or one integer of a pre-tokenized
//! prompt). That is not any model's tokenizer, but it is exact and easy to
//! predict in a test: `"hello world"` is 2 prompt tokens, its reply
//! `"mock reply: hello world"` 4 completion tokens.

use serde_json::Value;

use super::faults::Faults;

/// Filler for `MOCK:words=N` replies longer than the echo.
const FILLER: [&str; 8] = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
];

/// The tokens of a text.
pub fn tokens(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// The text of a message `content`: a string, or the `text` of its parts
/// (OpenAI `text`/`input_text`/`output_text` parts, Anthropic `text` blocks).
pub fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// A prompt given as a string, an array of strings, an array of token
/// integers or an array of such arrays (OpenAI `prompt` and `input`): one
/// `(text, tokens)` per prompt, a token array written as its numbers.
/// `None` when the value is none of these.
pub fn prompts(value: &Value) -> Option<Vec<(String, u64)>> {
    let tokens_of = |items: &[Value]| -> Option<(String, u64)> {
        let ids: Option<Vec<u64>> = items.iter().map(Value::as_u64).collect();
        let ids = ids?;
        let text = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
        Some((text, ids.len() as u64))
    };
    match value {
        Value::String(s) => Some(vec![(s.clone(), tokens(s))]),
        Value::Array(items) if items.is_empty() => None,
        Value::Array(items) if items.iter().all(Value::is_u64) => Some(vec![tokens_of(items)?]),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Some((s.clone(), tokens(s))),
                Value::Array(ids) if !ids.is_empty() => tokens_of(ids),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The reply ended by itself.
    Stop,
    /// The output cap (`max_tokens`, `max_output_tokens`, …) cut it.
    Length,
}

/// One generated reply.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Its tokens, in order.
    pub words: Vec<String>,
    /// Why it ended.
    pub finish: Finish,
}

impl Reply {
    /// `mock reply: <text>` (or `MOCK:words=N` words of it and filler), cut
    /// to `max_tokens`.
    pub fn to(text: &str, faults: &Faults, max_tokens: Option<u64>) -> Reply {
        let mut words: Vec<String> = ["mock", "reply:"]
            .into_iter()
            .chain(text.split_whitespace())
            .map(str::to_owned)
            .collect();
        if let Some(n) = faults.words {
            let mut filler = FILLER.iter().cycle();
            while words.len() < n {
                words.extend(filler.next().map(|w| (*w).to_owned()));
            }
            words.truncate(n);
        }
        let cap = max_tokens.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
        let finish = if words.len() > cap {
            words.truncate(cap);
            Finish::Length
        } else {
            Finish::Stop
        };
        Reply { words, finish }
    }

    /// The reply as one string.
    pub fn text(&self) -> String {
        self.words.join(" ")
    }

    /// Its token count.
    pub fn tokens(&self) -> u64 {
        self.words.len() as u64
    }

    /// The text of stream delta `i`: the word, with the space before it.
    pub fn delta(&self, i: usize) -> String {
        match (i, self.words.get(i)) {
            (0, Some(word)) => word.clone(),
            (_, Some(word)) => format!(" {word}"),
            (_, None) => String::new(),
        }
    }
}

/// An output cap from the first of `keys` that `request` sets.
pub fn max_tokens(request: &Value, keys: &[&str]) -> Option<u64> {
    keys.iter()
        .find_map(|k| request.get(*k).and_then(Value::as_u64))
}

/// `n`, the number of choices (1 when absent).
pub fn choices(request: &Value) -> u64 {
    request.get("n").and_then(Value::as_u64).unwrap_or(1).max(1)
}

/// A deterministic unit vector for an embedding of `text`.
pub fn embedding(text: &str, dimensions: usize) -> Vec<f32> {
    // FNV-1a over the text seeds a splitmix64 sequence: the same text always
    // embeds to the same vector, different texts almost never do.
    let mut state = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut vector: Vec<f32> = (0..dimensions)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let bits = splitmix(state) >> 40;
            (bits as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

/// splitmix64's output function: a well-mixed 64-bit value from a counter.
pub fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replies_echo_and_follow_the_caps() {
        let none = Faults::default();
        let reply = Reply::to("hello world", &none, None);
        assert_eq!(reply.text(), "mock reply: hello world");
        assert_eq!(reply.finish, Finish::Stop);
        let cut = Reply::to("hello world", &none, Some(3));
        assert_eq!(
            (cut.text().as_str(), cut.finish),
            ("mock reply: hello", Finish::Length)
        );
        let long = Reply::to("x", &Faults::parse(["MOCK:words=12"]), None);
        assert_eq!(long.tokens(), 12);
        assert_eq!(long.delta(1), " reply:");
    }

    #[test]
    fn prompts_in_every_shape() {
        assert_eq!(prompts(&json!("a b")), Some(vec![("a b".into(), 2)]));
        assert_eq!(
            prompts(&json!(["a", "b c"])),
            Some(vec![("a".into(), 1), ("b c".into(), 2)])
        );
        assert_eq!(prompts(&json!([1, 2, 3])), Some(vec![("1 2 3".into(), 3)]));
        assert_eq!(
            prompts(&json!([[1], [2, 3]])),
            Some(vec![("1".into(), 1), ("2 3".into(), 2)])
        );
        assert_eq!(prompts(&json!([])), None);
        assert_eq!(prompts(&json!([{}])), None);
        assert_eq!(prompts(&json!(7)), None);
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embedding("hello", 16);
        assert_eq!(a, embedding("hello", 16));
        assert_ne!(a, embedding("hellp", 16));
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5);
    }
}
