//! The fast path against serde: whatever the fast path takes, serde takes
//! too, with the same facts; and what both readers make of bodies.

use super::facts::{RequestBody, StreamOptionsAt, exact, locate, quick};
use super::*;

#[test]
fn escaped_keys_are_read_like_plain_ones() {
    let meta = RequestMeta::from_json(
        br#"{"mod\u0065l":"m","max_tok\u0065ns":5,"messages":[{"r\u006fle":"user","cont\u0065nt":"abcd"}]}"#,
    )
    .unwrap();
    assert_eq!(meta.model.as_deref(), Some("m"));
    assert_eq!(meta.max_tokens, Some(5));
    assert_eq!(meta.prompt_tokens_estimate, 1);
}

#[test]
fn reads_the_fields() {
    let meta = RequestMeta::from_json(
        br#"{"model":"m","max_tokens":5,"max_completion_tokens":7,
            "stream":true,"stream_options":{"include_usage":true},
            "messages":[{"role":"user","content":[{"type":"text","text":"abcd"},
            {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]}"#,
    )
    .unwrap();
    assert_eq!(meta.model.as_deref(), Some("m"));
    assert_eq!(meta.max_tokens, Some(7));
    assert!(meta.stream && meta.include_usage);
    // "abcd", and an image whose size cannot be read at high detail: the
    // most an image costs.
    assert_eq!(
        meta.prompt_tokens_estimate,
        1 + super::media::HIGH_DETAIL_MAX
    );
    assert_eq!(
        meta.reserve_tokens(100),
        1 + super::media::HIGH_DETAIL_MAX + 7
    );
}

#[test]
fn rejects_bad_json_with_a_reason() {
    let e = RequestMeta::from_json(b"{\"model\": ").unwrap_err();
    assert_eq!(e.status(), http::StatusCode::BAD_REQUEST);
    assert!(e.message().contains("EOF"), "{}", e.message());
    assert!(RequestMeta::from_json(b"[1,2]").is_err());
    assert!(RequestMeta::from_json(br#"{"max_tokens":-1}"#).is_err());
    assert!(RequestMeta::from_json(b"{} trailing").is_err());
}

#[test]
fn a_field_given_twice_is_rejected_naming_it() {
    for (body, field) in [
        (&br#"{"model":"a","model":"b"}"#[..], "model"),
        (br#"{"model":"a","stream":true,"model":null}"#, "model"),
        (br#"{"messages":[],"messages":[]}"#, "messages"),
        (br#"{"m\u006fdel":"a","model":"b"}"#, "model"),
    ] {
        let e = RequestMeta::from_json(body).unwrap_err();
        assert_eq!(e.param(), Some(field));
        assert!(
            e.message().contains(&format!("duplicate field `{field}`")),
            "{}",
            e.message()
        );
    }
    // Other fields may repeat: serde skips them.
    assert!(RequestMeta::from_json(br#"{"user":"a","user":"b"}"#).is_ok());
}

#[test]
fn deep_nesting_does_not_overflow() {
    let body = format!(
        "{{\"messages\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(RequestMeta::from_json(body.as_bytes()).is_err());
}

#[test]
fn deep_nesting_in_a_skipped_value_is_fine() {
    // serde_json has no depth limit for values it skips.
    let body = format!(
        "{{\"metadata\":{}{}, \"messages\":[{{\"type\":{}1{}}}]}}",
        "[".repeat(100_000),
        "]".repeat(100_000),
        "{\"a\":".repeat(10_000),
        "}".repeat(10_000),
    );
    assert!(quick(body.as_bytes(), &mut RequestBody::default()).is_none());
    assert!(RequestMeta::from_json(body.as_bytes()).is_ok());
}

/// The fast path agrees with serde on `body`: if it takes the body, serde
/// takes it too, with the same facts, and finds `stream_options` where the
/// fast path did.
fn agree(body: &[u8]) -> Result<(), String> {
    let mut facts = RequestBody::default();
    let Some(at) = quick(body, &mut facts) else {
        return Ok(());
    };
    let exact = exact(body);
    match &exact {
        Ok(exact) if *exact == facts && locate(body) == at => Ok(()),
        _ => Err(format!(
            "for {:?}:\n  fast path: {facts:?} {at:?}\n  serde:     {:?} {:?}",
            String::from_utf8_lossy(body),
            exact.as_ref().map_err(|e| (e.field, e.error.to_string())),
            locate(body),
        )),
    }
}

#[test]
fn agrees_with_serde_on_edge_cases() {
    let deep = |n: usize, open: &str, close: &str, inner: &str| {
        format!(
            "{{\"messages\":{}{inner}{}}}",
            open.repeat(n),
            close.repeat(n)
        )
    };
    let mut bodies: Vec<Vec<u8>> = [
        // Not an object, empty, trailing.
        "", " ", "[1,2]", "\"s\"", "\"s", "12", "-", "-0", "1.5", "1e999", "null", "nul",
        "true", "{", "{}", "{} ", "{} x", "{},", "{}}", "{\"a\":1}{",
        // Keys and commas.
        "{,}", "{\"a\":1,}", "{\"a\":1,,}", "{\"a\" 1}", "{\"a\":1 \"b\":2}", "{1:2}",
        "{\"a\"", "{\"a\":", "{\"a\":1", "{\"a\":1,", "{\"mod\\u0065l\":\"m\"}",
        "{\"model\":\"a\",\"model\":null}", "{\"model\":\"a\",\"model\":\"b\"}",
        // Typed fields of the wrong type.
        "{\"model\":5}", "{\"model\":-5}", "{\"model\":1.5}", "{\"model\":true}",
        "{\"model\":[]}", "{\"model\":{}}", "{\"model\":nul}", "{\"model\":\"\\q\"}",
        "{\"model\":\"caf\u{e9}\\u00e9\\ud83d\\ude00\"}", "{\"model\":01}",
        "{\"stream\":\"yes\"}", "{\"stream\":1}", "{\"stream\":tru}", "{\"stream\":null}",
        "{\"stream\":x}", "{\"stream\":}", "{\"stream\":", "{\"stream\" ",
        "{\"max_tokens\":-1}", "{\"max_tokens\":-0}", "{\"max_tokens\":1.0}",
        "{\"max_tokens\":1e3}", "{\"max_tokens\":18446744073709551615}",
        "{\"max_tokens\":18446744073709551616}", "{\"max_tokens\":1e400}",
        "{\"max_tokens\":\"7\"}", "{\"max_tokens\":[7]}", "{\"max_tokens\":-}",
        "{\"max_tokens\":-9223372036854775809}", "{\"max_tokens\":-9223372036854775808}",
        "{\"max_tokens\":1.}", "{\"max_tokens\":1.e}", "{\"max_tokens\":1e}",
        "{\"max_tokens\":1e+}", "{\"max_tokens\":00}",
        // Stream options as serde reads a struct.
        "{\"stream_options\":{\"include_usage\":true}}",
        "{\"stream_options\":{\"include_usage\":true,\"include_usage\":false}}",
        "{\"stream_options\":{\"include_usage\":true , \"include_usage\"}",
        "{\"stream_options\":{\"include_usage\":1}}",
        "{\"stream_options\":{\"other\":[1,{\"x\":\"\\ud800\"}],\"include_usage\":true}}",
        "{\"stream_options\":[true]}", "{\"stream_options\":[]}", "{\"stream_options\":[ ] }",
        "{\"stream_options\":[true,1]}", "{\"stream_options\":[true,]}",
        "{\"stream_options\":[null]}", "{\"stream_options\":[,]}", "{\"stream_options\":[",
        "{\"stream_options\":[true", "{\"stream_options\":5}", "{\"stream_options\":\"x\"}",
        "{\"stream_options\":null}", "{\"stream_options\":{}}", "{\"stream_options\":{\"a\"}}",
        // Prompt text.
        "{\"prompt\":[1,-1,1.5,-0,1e2,18446744073709551616,-9223372036854775809,true,null]}",
        "{\"prompt\":1e309}", "{\"prompt\":-1e309}", "{\"prompt\":1e-400}",
        "{\"prompt\":0e999999999999}", "{\"prompt\":1e999999999999}",
        "{\"prompt\":1e-999999999999}", "{\"prompt\":123456789012345678901234567890}",
        "{\"prompt\":1844674407370955161.9e300}", "{\"prompt\":0.1e310}",
        "{\"prompt\":17976931348623157e292}", "{\"prompt\":17976931348623159e292}",
        "{\"prompt\":\"\\ud800\"}", "{\"prompt\":\"\\udc00\"}", "{\"prompt\":\"\\ud800\\u0041\"}",
        "{\"prompt\":\"\\ud800x\"}", "{\"prompt\":\"\\ud800\\n\"}", "{\"prompt\":\"\\ud800\\",
        "{\"prompt\":\"\\ud800", "{\"prompt\":\"\\u12\"}", "{\"prompt\":\"\\u12",
        "{\"prompt\":\"\\uZZZZ\"}", "{\"prompt\":\"\\x\"}", "{\"prompt\":\"\\",
        "{\"prompt\":\"a\tb\"}", "{\"prompt\":\"a\nb\"}", "{\"prompt\":[1,]}",
        "{\"prompt\":[1 2]}", "{\"prompt\":[,1]}", "{\"prompt\":{\"a\":1,}}",
        "{\"prompt\":{\"a\" 1}}", "{\"prompt\":{\"type\":[1,]}}", "{\"prompt\":{\"type\":{\"a\":1,}}}",
        "{\"prompt\":{\"type\":\"\\ud800\"}}", "{\"prompt\":{\"type\":1e999}}",
        "{\"prompt\":{\"typ\\u0065\":\"abcd\"}}", "{\"prompt\":{\"type\":-}}",
        "{\"prompt\":{\"type\":01}}", "{\"prompt\":{\"type\":1.}}", "{\"prompt\":{\"type\":1.e5}}",
        "{\"prompt\":{\"type\":\"a\tb\"}}", "{\"prompt\":{\"type\":[1 2]}}",
        "{\"prompt\":{\"type\":{1:2}}}", "{\"prompt\":{\"type\":{\"a\" 2}}}",
        "{\"prompt\":{\"type\":[}}", "{\"prompt\":{\"type\":{\"a\":}}}",
        "{\"prompt\":{\"type\":{\"a\":1", "{\"prompt\":{\"type\":[1", "{\"prompt\":{\"type\":[",
        "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"\u{1F600}ab\\u00e9\"}]}]}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    // Invalid UTF-8: checked in strings that are read, not in skipped ones.
    for body in [
        &b"{\"model\":\"\xff\"}"[..],
        b"{\"model\":\"ab\\n\xc3\"}",
        b"{\"model\":\"\xc3\\n\"}",
        b"{\"model\":\"\\n\xe2\x82\xac\xe2\x82\"}",
        b"{\"model\":\"\xff\\q\"}",
        b"{\"model\":\"\xff",
        b"{\"prompt\":[\"a\", \"\x80\"]}",
        b"{\"prompt\":{\"\xff\":1}}",
        b"{\"\xff\":1}",
        b"{\"user\":\"\xff\"}",
        b"{\"prompt\":{\"type\":\"\xff\"}}",
        b"{\"stream_options\":{\"\xff\":1}}",
        b"{\"stream_options\":{\"a\":\"\xff\"}}",
        b"{\"model\":\"a\"}\xff",
        b"\n\n  {\"model\":\n\"\xff\"}",
    ] {
        bodies.push(body.to_vec());
    }
    // Around the recursion limit (the top-level object is level 1).
    for n in [125, 126, 127, 128, 200] {
        bodies.push(deep(n, "[", "]", "1").into_bytes());
        bodies.push(deep(n, "{\"a\":", "}", "1").into_bytes());
        bodies.push(deep(n, "{\"type\":", "}", "1").into_bytes());
        bodies.push(deep(n, "[", "", "").into_bytes());
    }
    for body in &bodies {
        if let Err(e) = agree(body) {
            panic!("{e}");
        }
    }
}

mod generated;

/// The fast path takes the bodies clients send (else it is only slower).
#[test]
fn the_fast_path_reads_common_bodies() {
    let bodies = [
        r#"{}"#,
        r#" { "model" : "gpt-4o-mini" , "max_tokens" : 64 , "messages" : [ { "role" : "user" , "content" : "Say hello." } ] } "#,
        r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true,"x":[1]},"max_completion_tokens":512,
            "temperature":0.7,"top_p":1e-3,"metadata":{"k":["v",null,false,-1.5e3]},"user":"caf\u00e9 \ud83d\ude00",
            "messages":[{"role":"system","content":"Be brief.\nUse tools."},
              {"role":"user","content":[{"type":"text","text":"Grüße 日本語"},
                {"type":"image_url","image_url":{"url":"https://example.com/a.png","detail":"low"}}]},
              {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function",
                "function":{"name":"f","arguments":"{\"city\":\"Paris\"}"}}]},
              {"role":"tool","tool_call_id":"call_1","content":"{\"t\":17}"}],
            "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object",
              "properties":{"city":{"type":"string","enum":["a","b"]}},"required":["city"]}}}]}"#,
        r#"{"model":"text-embedding-3-small","input":[[1820,374,264],[3,4]],"max_tokens":null,"stream":null,"stream_options":null}"#,
        r#"{"model":null,"prompt":[-1,0,18446744073709551615,-9223372036854775808],"system":"","instructions":"x","functions":[]}"#,
        // Images and audio priced by the fast path, and those it leaves to
        // serde (a `detail` beside the image, a Responses image, `source`).
        r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/a.png","detail":"low"}},
            {"type":"input_audio","input_audio":{"data":"UklGRg==","format":"wav"}},{"type":"text","text":"hi"}]}]}"#,
        r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/a.png"},"detail":"low"}]}]}"#,
        r#"{"input":[{"role":"user","content":[{"type":"input_image","image_url":"https://x/a.png","detail":"high"}]}]}"#,
        r#"{"messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}}]}]}"#,
        // Every field the fast path knows, once.
        r#"{"model":"m","stream":true,"max_tokens":1,"max_completion_tokens":2,"max_output_tokens":3,
            "stream_options":{},"messages":[],"prompt":"p","input":[1],"system":"s","instructions":"i",
            "tools":[{"type":"function","function":{"name":"f","parameters":{"minimum":0.5}}}],"functions":[]}"#,
    ];
    for body in bodies {
        let mut facts = RequestBody::default();
        let at = quick(body.as_bytes(), &mut facts).unwrap_or_else(|| panic!("declined: {body}"));
        let exact = exact(body.as_bytes()).unwrap_or_else(|e| panic!("{e:?}: {body}"));
        assert_eq!(facts, exact, "{body}");
        assert_eq!(at, locate(body.as_bytes()), "{body}");
    }
}

/// The fast path takes most generated bodies: the comparison above is not
/// an empty one.
#[test]
fn the_fast_path_takes_most_clean_generated_bodies() {
    use proptest::strategy::{Strategy, ValueTree};
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut valid, mut taken) = (0, 0);
    for _ in 0..2000 {
        let body = generated::clean_body()
            .new_tree(&mut runner)
            .unwrap()
            .current();
        if exact(&body).is_ok() {
            valid += 1;
            taken += usize::from(quick(&body, &mut RequestBody::default()).is_some());
        }
    }
    assert!(valid > 1000, "{valid} valid bodies");
    assert!(taken * 10 > valid * 8, "{taken} of {valid} taken");
}

#[test]
fn where_stream_options_is() {
    let cases: [(&str, StreamOptionsAt); 5] = [
        (
            r#" {"stream":true,"messages":[]}"#,
            StreamOptionsAt::Absent { open: 2 },
        ),
        (
            r#"{"stream_options" : null ,"stream":true,"prompt":"x"}"#,
            StreamOptionsAt::Null { start: 20, end: 24 },
        ),
        (
            r#"{"stream":true,"messages":[],"stream_options":{ }}"#,
            StreamOptionsAt::Object {
                open: 47,
                empty: true,
                include_usage: None,
            },
        ),
        (
            r#"{"stream":true,"messages":[],"stream_options":{"a":1,"include_usage":false}}"#,
            StreamOptionsAt::Object {
                open: 47,
                empty: false,
                include_usage: Some((69, 74)),
            },
        ),
        // Not a request `request_usage` edits: nothing recorded.
        (
            r#"{"stream":false,"messages":[]}"#,
            StreamOptionsAt::Unknown,
        ),
    ];
    for (body, expected) in cases {
        let meta = RequestMeta::from_json(body.as_bytes()).unwrap();
        assert_eq!(meta.stream_options_at, expected, "{body}");
        // serde finds the same places.
        let fast = quick(body.as_bytes(), &mut RequestBody::default()).unwrap();
        assert_eq!(locate(body.as_bytes()), fast, "{body}");
    }
    // Escaped keys: the bytes are not the names; no place is recorded.
    for body in [
        r#"{"stream":true,"messages":[],"stream\u005foptions":{"include_usage":false}}"#,
        r#"{"stream":true,"messages":[],"stream_options":{"include\u005fusage":false}}"#,
        r#"{"stream":true,"messages":[],"us\u0065r":"x"}"#,
        r#"{"stream":true,"messages":[],"stream_options":[false]}"#,
    ] {
        let meta = RequestMeta::from_json(body.as_bytes()).unwrap();
        assert_eq!(meta.stream_options_at, StreamOptionsAt::Unknown, "{body}");
    }
}

proptest::proptest! {
    // 256 cases by default; `PROPTEST_CASES=20000` for a longer run.
    #[test]
    fn agrees_with_serde_on_generated_bodies(body in generated::body()) {
        if let Err(e) = agree(&body) {
            proptest::prop_assert!(false, "{}", e);
        }
    }

    #[test]
    fn agrees_with_serde_on_clean_generated_bodies(body in generated::clean_body()) {
        if let Err(e) = agree(&body) {
            proptest::prop_assert!(false, "{}", e);
        }
    }
}
