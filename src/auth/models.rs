//! Model allow-lists: exact names and `*` globs.

use super::{KeyRecord, Principal};

impl KeyRecord {
    /// Whether this key may use `model`: its allow-list is empty (all models),
    /// or one of its entries names `model` exactly or matches it as a glob
    /// where `*` stands for any run of characters (`gpt-4o*`, `*-mini`,
    /// `openai/*`). Matching is case-sensitive, like model names.
    ///
    /// ```
    /// use tollgate::auth::{KeyHash, KeyRecord};
    ///
    /// let record = KeyRecord::new("k", KeyHash::of("s"))
    ///     .with_allowed_models(["gpt-4o-mini", "claude-*"]);
    /// assert!(record.allows_model("gpt-4o-mini"));
    /// assert!(record.allows_model("claude-sonnet-4-5"));
    /// assert!(!record.allows_model("gpt-4o"));
    /// ```
    pub fn allows_model(&self, model: &str) -> bool {
        self.allowed_models.is_empty()
            || self
                .allowed_models
                .iter()
                .any(|pattern| glob_matches(pattern, model))
    }
}

impl Principal {
    /// Whether the key may use `model` (see [`KeyRecord::allows_model`]).
    pub fn allows_model(&self, model: &str) -> bool {
        self.record().allows_model(model)
    }
}

/// `*` matches any run of bytes (including none); every other byte matches
/// itself. Linear backtracking to the last `*`: O(len(pattern) × len(text))
/// at worst, never exponential.
pub(crate) fn glob_matches(pattern: &str, text: &str) -> bool {
    if !pattern.contains('*') {
        return pattern == text;
    }
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Position of the last `*` seen, and where in `text` it started matching.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if p.get(pi) == Some(&b'*') {
            star = Some((pi, ti));
            pi += 1;
        } else if p.get(pi) == Some(&t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            // Let the last `*` swallow one more byte and retry.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::glob_matches;
    use proptest::prelude::*;

    #[test]
    fn globs() {
        for (pattern, text, expected) in [
            ("gpt-4o", "gpt-4o", true),
            ("gpt-4o", "gpt-4o-mini", false),
            ("gpt-4o*", "gpt-4o-mini", true),
            ("gpt-4o*", "gpt-4o", true),
            ("*-mini", "gpt-4o-mini", true),
            ("*", "", true),
            ("*", "anything", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("openai/*", "openai/gpt-4o", true),
            ("openai/*", "anthropic/claude", false),
            ("**a", "ba", true),
            ("*é*", "café-1", true),
            ("", "", true),
            ("", "x", false),
        ] {
            assert_eq!(glob_matches(pattern, text), expected, "{pattern} ~ {text}");
        }
    }

    /// A reference matcher by recursion, to check the linear one against.
    fn reference(p: &[u8], t: &[u8]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((b'*', rest)) => (0..=t.len()).any(|i| reference(rest, &t[i..])),
            Some((c, rest)) => t.first() == Some(c) && reference(rest, &t[1..]),
        }
    }

    proptest! {
        #[test]
        fn agrees_with_reference(pattern in "[ab*]{0,8}", text in "[ab]{0,10}") {
            prop_assert_eq!(
                glob_matches(&pattern, &text),
                reference(pattern.as_bytes(), text.as_bytes())
            );
        }
    }
}
