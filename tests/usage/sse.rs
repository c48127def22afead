//! SSE framing as the usage observer sees it: `data:` fields over several
//! lines, and line ends of every kind in one stream.

use super::*;

/// An OpenAI stream whose usage chunk spreads its JSON over several `data:`
/// lines (legal SSE: a client joins them with `\n`), with `eol` line ends.
fn multi_line_usage(eol: &str) -> (String, String) {
    let content = format!(
        "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"Hello\"}}}}]}}{eol}{eol}"
    );
    let usage = [
        "data: {\"choices\":[],",
        "data: \"usage\":{\"prompt_tokens\":19,",
        "data:  \"completion_tokens\":10,",
        "data: \"total_tokens\":29}}",
    ]
    .join(eol);
    let done = format!("data: [DONE]{eol}{eol}");
    let stream = format!("{content}{usage}{eol}{eol}{done}");
    (stream, format!("{content}{done}"))
}

#[test]
fn a_usage_object_over_several_data_lines_is_read() {
    for eol in ["\n", "\r\n", "\r"] {
        let (stream, stripped) = multi_line_usage(eol);
        for cut in 0..=stream.len() {
            for strip in [false, true] {
                let options = UsageOptions::default().strip_usage_chunk(strip);
                let (body, report) = run(
                    "text/event-stream",
                    split(stream.as_bytes(), &[cut]),
                    options,
                );
                assert_eq!(
                    report.source,
                    UsageSource::Reported,
                    "{eol:?} split at {cut}"
                );
                assert_eq!(report.usage.total_tokens, 29);
                assert_eq!(report.usage.completion_tokens, 10);
                // Stripping cuts the whole event, every line of it.
                let expected = if strip { &stripped } else { &stream };
                assert_eq!(std::str::from_utf8(&body).unwrap(), expected);
            }
        }
    }
}

/// Line ends may change within a stream: `\n`, then a bare `\r`, then
/// `\r\n`, as the SSE spec allows.
#[test]
fn line_ends_may_change_within_a_stream() {
    let stream = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
        "event: message_delta\rdata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\r\r",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":7}}\r\n\r\n",
    );
    for cut in 0..=stream.len() {
        let report = run_sse(split(stream.as_bytes(), &[cut]));
        assert_eq!(report.source, UsageSource::Reported, "split at {cut}");
        assert_eq!(
            (report.usage.prompt_tokens, report.usage.completion_tokens),
            (3, 7),
            "split at {cut}"
        );
    }
}
