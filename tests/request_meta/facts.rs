//! The facts read from a body: the output cap, the stream and usage flags,
//! the prompt estimate.

use super::*;

#[tokio::test]
async fn the_largest_output_cap_is_the_bound() {
    // Each API reads its own name; a body that gives several is bounded by
    // the largest, whichever the upstream reads.
    let cases = [
        (r#"{"max_tokens":10}"#, Some(10)),
        (r#"{"max_completion_tokens":20}"#, Some(20)),
        (r#"{"max_output_tokens":30}"#, Some(30)),
        (r#"{"max_tokens":10,"max_completion_tokens":20}"#, Some(20)),
        (r#"{"max_completion_tokens":20,"max_tokens":10}"#, Some(20)),
        (r#"{"max_completion_tokens":20,"max_tokens":40}"#, Some(40)),
        (r#"{"max_output_tokens":30,"max_tokens":10}"#, Some(30)),
        (
            r#"{"max_output_tokens":30,"max_completion_tokens":20,"max_tokens":10}"#,
            Some(30),
        ),
        (
            r#"{"max_completion_tokens":null,"max_tokens":10}"#,
            Some(10),
        ),
        (r#"{"max_tokens":null}"#, None),
        (r#"{}"#, None),
    ];
    for (body, expected) in cases {
        let m = RequestMeta::from_json(body.as_bytes()).unwrap();
        assert_eq!(m.max_tokens, expected, "{body}");
    }
    let m = RequestMeta::from_json(br#"{"max_completion_tokens":20}"#).unwrap();
    assert_eq!(m.reserve_tokens(4096), 20);
    let m =
        RequestMeta::from_json(br#"{"messages":[{"role":"user","content":"12345678"}]}"#).unwrap();
    assert_eq!(m.reserve_tokens(4096), 4098);
    let m = RequestMeta::from_json(format!(r#"{{"max_tokens":{}}}"#, u64::MAX).as_bytes()).unwrap();
    assert_eq!(m.reserve_tokens(0), u64::MAX);
}

#[test]
fn stream_and_usage_flags() {
    let m = RequestMeta::from_json(br#"{"stream":null,"stream_options":null}"#).unwrap();
    assert!(!m.stream && !m.include_usage);
    let m = RequestMeta::from_json(br#"{"stream":false,"stream_options":{"include_usage":false}}"#)
        .unwrap();
    assert!(!m.stream && !m.include_usage);
    let m =
        RequestMeta::from_json(br#"{"stream_options":{"include_usage":true,"other":1}}"#).unwrap();
    assert!(m.include_usage);
    let m =
        RequestMeta::from_json(br#"{"model":null,"unknown":{"deep":[1,2,{"x":"y"}]}}"#).unwrap();
    assert_eq!(m.model, None);
    assert_eq!(m.prompt_tokens_estimate, 0);
}

fn estimate(body: &str) -> u64 {
    RequestMeta::from_json(body.as_bytes())
        .unwrap()
        .prompt_tokens_estimate
}

#[test]
fn prompt_estimate_rules() {
    // Characters, not bytes: 8 characters of 3 bytes each → 2 tokens.
    assert_eq!(estimate(r#"{"prompt":"日本語のテキスト"}"#), 2);
    // Rounded up.
    assert_eq!(estimate(r#"{"prompt":"a"}"#), 1);
    assert_eq!(estimate(r#"{"prompt":"abcde"}"#), 2);
    // Every text field counts, summed before rounding, and tool and
    // function definitions by the length of their JSON: 10 characters of
    // text, 65 + 15 of definitions → 90 characters → 23 tokens.
    assert_eq!(
        estimate(
            r#"{"system":"ab","instructions":"cd","input":"ef","prompt":"gh",
                "messages":[{"role":"user","content":"ij"}],
                "tools":[{"type":"function","function":{"name":"kl","description":"mn"}}],
                "functions":[{"name":"op"}]}"#
        ),
        23
    );
    // Roles, part types, ids and image/audio/file payloads are not text.
    assert_eq!(
        estimate(
            r#"{"messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"call_abcdefgh","type":"function","function":{"name":"f","arguments":"{}"}}]},
                {"role":"tool","tool_call_id":"call_abcdefgh","content":"ok"},
                {"role":"user","content":[{"type":"text","text":"abcd"},
                  {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAAAAAAAAAAAAAA","detail":"high"}},
                  {"type":"input_audio","input_audio":{"data":"UklGRgAAAAA=","format":"wav"}},
                  {"type":"file","file":{"file_data":"JVBERi0=","filename":"a.pdf"}}]}]}"#
        ),
        // "f" + "{}" + "ok" + "abcd" = 9 characters → 3 tokens; an image
        // whose size its bytes do not give, at high detail: the most one
        // costs; 9 bytes of audio that are not a WAV file: at most 9 ms at
        // 8 kbit/s → 1 token; the file is not counted.
        3 + HIGH_DETAIL_MAX + 1
    );
    // Escapes count as the character they stand for.
    assert_eq!(estimate(r#"{"prompt":"\u00e9\n\t\""}"#), 1);
    // Token arrays (embedding and completion clients send these): one token each.
    assert_eq!(estimate(r#"{"input":[[1820,374,264],[3,4]]}"#), 5);
    assert_eq!(estimate(r#"{"prompt":[9906,1917]}"#), 2);
    // Other fields are not part of the prompt.
    assert_eq!(
        estimate(r#"{"model":"a-very-long-model-name","user":"someone","metadata":{"k":"v"}}"#),
        0
    );
    // Booleans, floats and nulls are not text.
    assert_eq!(estimate(r#"{"messages":[{"content":[true,null,1.5]}]}"#), 0);
}
