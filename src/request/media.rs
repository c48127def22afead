//! What images and audio in a prompt cost in tokens, as upper bounds: the
//! part of a prompt estimate that is not text.
//!
//! A chat request with one image can cost 1,445 prompt tokens although its
//! text is four words, and a minute of audio hundreds. A reservation that
//! leaves them out is not an upper bound. Each is counted from what the
//! request says about it, and from its bytes when they are in the request
//! (a `data:` URL, a base64 `data` field):
//!
//! - **OpenAI images** (`image_url` parts of chat, `input_image` of the
//!   Responses API), by OpenAI's tile formula: `detail: "low"` costs
//!   [`LOW_DETAIL`] (85) tokens; `high` and `auto` (and no `detail`) cost
//!   85 + 170 per 512-pixel tile of the image after it is scaled to fit
//!   2048 × 2048 and its short side to 768. An image whose size cannot be
//!   read from its bytes (a URL, a format not recognised) costs the most
//!   any image can: [`HIGH_DETAIL_MAX`] (1,445, eight tiles).
//! - **Anthropic images** (`image` blocks with a `source`): width × height
//!   / 750, at most [`ANTHROPIC_IMAGE_MAX`] (1,600: Anthropic scales larger
//!   images down to that); an unknown size costs the maximum.
//! - **Audio** (`input_audio` parts): [`AUDIO_TOKENS_PER_SECOND`] per
//!   second. A WAV file's duration is its data over its header's byte rate;
//!   any other format is bounded by its size, read as the lowest bitrate a
//!   speech codec uses ([`MIN_AUDIO_BYTES_PER_SECOND`], 8 kbit/s), so no
//!   real recording of that size is longer.
//!
//! Known gaps, which an operator covers with the model's price or a limit
//! on body size: files (PDFs) are not counted, and models that price an
//! image tile differently from gpt-4o (gpt-4o-mini counts 2,833 + 5,667 per
//! tile) are under-counted by this formula.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Tokens of an OpenAI image at `detail: "low"`.
pub const LOW_DETAIL: u64 = 85;
/// Tokens per 512-pixel tile of an OpenAI image at `detail: "high"`.
pub const TILE: u64 = 170;
/// The most tokens an OpenAI image can cost at `detail: "high"` or
/// `"auto"`: 85 + 170 × 8 (768 × 2048 after scaling: 2 × 4 tiles).
pub const HIGH_DETAIL_MAX: u64 = LOW_DETAIL + TILE * 8;
/// The most tokens an Anthropic image can cost.
pub const ANTHROPIC_IMAGE_MAX: u64 = 1_600;
/// Prompt tokens per second of audio input (OpenAI's audio models count
/// one token per 100 ms).
pub const AUDIO_TOKENS_PER_SECOND: u64 = 10;
/// The fewest bytes a second of audio takes in a format tollgate cannot
/// read the duration of: 8 kbit/s, the lowest bitrate of MP3 and of the
/// speech codecs the APIs take.
pub const MIN_AUDIO_BYTES_PER_SECOND: u64 = 1_000;

/// How much of an image's decoded bytes are read for its size: enough for
/// every header `imagesize` reads but a JPEG with a large EXIF block.
const IMAGE_HEADER_BYTES: usize = 64 * 1024;
/// How much of a WAV file is read for its header.
const WAV_HEADER_BYTES: usize = 4 * 1024;

/// The image detail an OpenAI image part asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Detail {
    Low,
    /// `high`, `auto`, anything else, or none: the worst case.
    #[default]
    High,
}

impl Detail {
    pub(crate) fn parse(value: &str) -> Detail {
        if value == "low" {
            Detail::Low
        } else {
            Detail::High
        }
    }
}

/// Tokens of an OpenAI image at `url` (a `data:` URL or any other), at
/// `detail`.
pub(crate) fn openai_image(url: &str, detail: Detail) -> u64 {
    if detail == Detail::Low {
        return LOW_DETAIL;
    }
    match data_url_payload(url).and_then(image_size) {
        Some((width, height)) => tile_tokens(width, height),
        None => HIGH_DETAIL_MAX,
    }
}

/// Tokens of an Anthropic image whose base64 data is `data` (`None`: a URL
/// or a file id, size unknown).
pub(crate) fn anthropic_image(data: Option<&str>) -> u64 {
    match data.and_then(image_size) {
        Some((width, height)) => {
            let area = u128::from(width) * u128::from(height);
            u64::try_from(area.div_ceil(750))
                .unwrap_or(u64::MAX)
                .min(ANTHROPIC_IMAGE_MAX)
        }
        None => ANTHROPIC_IMAGE_MAX,
    }
}

/// Tokens of an audio part whose base64 data is `data`, in `format`
/// (`wav`, `mp3`, …).
pub(crate) fn audio(data: &str, format: Option<&str>) -> u64 {
    let bytes = decoded_len(data);
    let seconds_x1000 = match format {
        Some(f) if f.eq_ignore_ascii_case("wav") => wav_byte_rate(data)
            .map(|rate| (u128::from(bytes) * 1000).div_ceil(u128::from(rate)))
            .unwrap_or_else(|| unknown_millis(bytes)),
        _ => unknown_millis(bytes),
    };
    let tokens = (seconds_x1000 * u128::from(AUDIO_TOKENS_PER_SECOND)).div_ceil(1000);
    u64::try_from(tokens).unwrap_or(u64::MAX)
}

/// Milliseconds of audio `bytes` long at the lowest bitrate.
fn unknown_millis(bytes: u64) -> u128 {
    (u128::from(bytes) * 1000).div_ceil(u128::from(MIN_AUDIO_BYTES_PER_SECOND))
}

/// The tile formula for an image `width` × `height` at high detail.
pub(crate) fn tile_tokens(width: u64, height: u64) -> u64 {
    if width == 0 || height == 0 {
        return LOW_DETAIL;
    }
    let (mut w, mut h) = (width as f64, height as f64);
    // Fit within 2048 × 2048.
    let longest = w.max(h);
    if longest > 2048.0 {
        let scale = 2048.0 / longest;
        (w, h) = (w * scale, h * scale);
    }
    // Then the short side down to 768.
    let shortest = w.min(h);
    if shortest > 768.0 {
        let scale = 768.0 / shortest;
        (w, h) = (w * scale, h * scale);
    }
    // Rounded up, so a float's last bit never loses a tile.
    let tiles = |side: f64| ((side - 1e-9) / 512.0).ceil().max(1.0) as u64;
    LOW_DETAIL + TILE * tiles(w) * tiles(h)
}

/// The base64 payload of a `data:<type>;base64,<payload>` URL.
fn data_url_payload(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("data:")?;
    let (header, payload) = rest.split_once(',')?;
    header.ends_with(";base64").then_some(payload)
}

/// The size of the image whose base64 encoding is `data`, read from its
/// header.
fn image_size(data: &str) -> Option<(u64, u64)> {
    let head = decode_prefix(data, IMAGE_HEADER_BYTES)?;
    let size = imagesize::blob_size(&head).ok()?;
    Some((size.width as u64, size.height as u64))
}

/// The byte rate a WAV file's header declares, when it reads as one.
fn wav_byte_rate(data: &str) -> Option<u64> {
    let head = decode_prefix(data, WAV_HEADER_BYTES)?;
    let reader = hound::WavReader::new(std::io::Cursor::new(head)).ok()?;
    let spec = reader.spec();
    let rate = u64::from(spec.sample_rate)
        * u64::from(spec.channels)
        * u64::from(spec.bits_per_sample).div_ceil(8);
    (rate > 0).then_some(rate)
}

/// The first `max` decoded bytes (about) of base64 `data`: whole groups of
/// four characters, so a prefix needs no padding. Padding or whitespace
/// inside it (not canonical base64) reads as nothing.
fn decode_prefix(data: &str, max: usize) -> Option<Vec<u8>> {
    let chars = (max / 3 * 4).min(data.len() / 4 * 4);
    STANDARD.decode(data.get(..chars)?).ok()
}

/// The decoded length of base64 `data` (rounded up; whitespace and
/// padding counted, which only errs high).
fn decoded_len(data: &str) -> u64 {
    (data.len() as u64).div_ceil(4) * 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tile_formula_matches_openais_examples() {
        // OpenAI's worked examples: 1024 × 1024 high → 765; 2048 × 4096
        // high → 1105; 4096 × 8192 low → 85.
        assert_eq!(tile_tokens(1024, 1024), 765);
        assert_eq!(tile_tokens(2048, 4096), 1105);
        assert_eq!(tile_tokens(768, 2048), HIGH_DETAIL_MAX);
        assert_eq!(tile_tokens(1, 1), 255);
        assert_eq!(tile_tokens(512, 512), 255);
        assert_eq!(tile_tokens(513, 512), 425);
        assert_eq!(
            openai_image("https://example.com/a.png", Detail::Low),
            LOW_DETAIL
        );
        assert_eq!(
            openai_image("https://example.com/a.png", Detail::High),
            HIGH_DETAIL_MAX
        );
    }

    #[test]
    fn no_size_costs_more_than_the_worst_case() {
        for (w, h) in [
            (1, 100_000),
            (100_000, 1),
            (769, 2049),
            (768, 2048),
            (1536, 4096),
            (3000, 7000),
            (2047, 767),
        ] {
            assert!(tile_tokens(w, h) <= HIGH_DETAIL_MAX, "{w}×{h}");
        }
    }

    /// A 1 × 1 PNG.
    const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

    #[test]
    fn a_data_url_image_is_measured() {
        let url = format!("data:image/png;base64,{PNG}");
        assert_eq!(openai_image(&url, Detail::High), 255);
        assert_eq!(anthropic_image(Some(PNG)), 1);
        assert_eq!(anthropic_image(None), ANTHROPIC_IMAGE_MAX);
        // Not an image: the worst case.
        assert_eq!(
            openai_image("data:image/png;base64,AAAA", Detail::High),
            HIGH_DETAIL_MAX
        );
    }

    #[test]
    fn wav_duration_comes_from_its_header() {
        // One second of 8 kHz mono 16-bit audio: 16,000 data bytes.
        let mut wav = Vec::new();
        {
            let spec = hound::WavSpec {
                channels: 1,
                sample_rate: 8_000,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            let mut writer = hound::WavWriter::new(std::io::Cursor::new(&mut wav), spec).unwrap();
            for _ in 0..8_000 {
                writer.write_sample(0i16).unwrap();
            }
            writer.finalize().unwrap();
        }
        let data = STANDARD.encode(&wav);
        // 16,044 bytes (data and header) at 16,000 bytes/s: just over 1 s.
        assert_eq!(audio(&data, Some("wav")), 11);
        // As an unknown format it is bounded by its size at 8 kbit/s.
        assert_eq!(audio(&data, Some("mp3")), 161);
    }
}
