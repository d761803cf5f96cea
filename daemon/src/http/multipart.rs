//! `multipart/form-data` (RFC 7578) from a body already read whole and bounded: the parts'
//! names, file names and bytes, borrowed from the body. Never panics on any input.

/// At most this many parts are read; a form with more is refused.
const MAX_PARTS: usize = 64;
/// At most this many header bytes per part.
const MAX_PART_HEADERS: usize = 8 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub struct Part<'a> {
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub data: &'a [u8],
}

/// The `boundary` parameter of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    let essence = params.next()?.trim();
    if !essence.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.find_map(|p| {
        let (name, value) = p.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        (!value.is_empty() && value.len() <= 70).then(|| value.to_string())
    })
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > haystack.len() {
        return None;
    }
    let first = needle[0];
    let mut at = from;
    while at + needle.len() <= haystack.len() {
        let i = haystack[at..=haystack.len() - needle.len()]
            .iter()
            .position(|&b| b == first)?;
        let start = at + i;
        if haystack[start..start + needle.len()] == *needle {
            return Some(start);
        }
        at = start + 1;
    }
    None
}

/// The parts of `body`, in order; an error says what is wrong where.
pub fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, String> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let close = format!("\r\n--{boundary}");
    let close = close.as_bytes();
    let mut at = find(body, delimiter, 0)
        .ok_or_else(|| format!("no boundary {boundary:?} in the body: not multipart/form-data"))?
        + delimiter.len();
    let mut parts = Vec::new();
    loop {
        let rest = &body[at.min(body.len())..];
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        // Transport padding, then CRLF.
        let line_end = find(body, b"\r\n", at).ok_or_else(|| {
            format!("the multipart body ends inside a boundary line at byte {at}")
        })?;
        if body[at..line_end].iter().any(|&b| b != b' ' && b != b'\t') {
            return Err(format!("junk after a boundary at byte {at}"));
        }
        let headers_start = line_end + 2;
        let headers_end = find(body, b"\r\n\r\n", headers_start)
            .filter(|&end| end - headers_start <= MAX_PART_HEADERS)
            .ok_or_else(|| {
                format!("a part's headers at byte {headers_start} do not end (or exceed {MAX_PART_HEADERS} bytes)")
            })?;
        // An empty header block is "\r\n" right away.
        let header_text = if headers_end < headers_start {
            ""
        } else {
            std::str::from_utf8(&body[headers_start..headers_end])
                .map_err(|_| format!("a part's headers at byte {headers_start} are not UTF-8"))?
        };
        let data_start = headers_end + 4;
        let data_end = find(body, close, data_start).ok_or_else(|| {
            format!(
                "the part starting at byte {data_start} never ends: the closing boundary is missing"
            )
        })?;
        let mut name = None;
        let mut filename = None;
        let mut content_type = None;
        for line in header_text.split("\r\n") {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let key = key.trim();
            if key.eq_ignore_ascii_case("content-disposition") {
                let mut params = value.split(';');
                let kind = params.next().unwrap_or("").trim();
                if !kind.eq_ignore_ascii_case("form-data") {
                    return Err(format!(
                        "a part's Content-Disposition is {kind:?}, not form-data"
                    ));
                }
                for param in params {
                    let Some((k, v)) = param.split_once('=') else {
                        continue;
                    };
                    let v = v.trim();
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or(v)
                        .replace("\\\"", "\"");
                    match k.trim().to_ascii_lowercase().as_str() {
                        "name" => name = Some(v),
                        "filename" => filename = Some(v),
                        _ => {}
                    }
                }
            } else if key.eq_ignore_ascii_case("content-type") {
                content_type = Some(value.trim().to_string());
            }
        }
        let name = name.ok_or_else(|| {
            format!("the part at byte {headers_start} has no Content-Disposition name")
        })?;
        if parts.len() == MAX_PARTS {
            return Err(format!("more than {MAX_PARTS} parts"));
        }
        parts.push(Part {
            name,
            filename,
            content_type,
            data: &body[data_start..data_end],
        });
        at = data_end + close.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_with_a_file_and_fields() {
        let body = b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ntiny\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\r\n--X\r\n--XyZ--\r\n";
        assert_eq!(
            boundary("multipart/form-data; boundary=\"XyZ\"").as_deref(),
            Some("XyZ")
        );
        assert_eq!(boundary("application/json"), None);
        let parts = parse(body, "XyZ").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "model");
        assert_eq!(parts[0].data, b"tiny");
        assert_eq!(parts[1].filename.as_deref(), Some("a.wav"));
        assert_eq!(parts[1].content_type.as_deref(), Some("audio/wav"));
        assert_eq!(parts[1].data, b"RIFF\r\n--X");
    }

    #[test]
    fn broken_forms_are_errors_not_panics() {
        let good = b"--b\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nx\r\n--b--";
        assert!(parse(good, "b").is_ok());
        // Every prefix of a good form, and some junk, is an answer (mostly an error).
        for end in 0..good.len() {
            let _ = parse(&good[..end], "b");
        }
        assert!(parse(b"--b", "b").is_err());
        assert!(parse(b"--b\r\n\r\n\r\nx\r\n--b--", "b").is_err());
        assert!(parse(b"no boundary here", "b").is_err());
        assert!(parse(b"--bjunk\r\n", "b").is_err());
    }
}
