//! Prints a summary of a GGUF file: header, metadata, and a histogram of tensor types.
//!
//! ```text
//! cargo run -p sotad-engines --example gguf_info -- MODEL.gguf [--tensors]
//! ```
//!
//! `--tensors` also lists every tensor with its type, shape and offset.

use std::collections::BTreeMap;
use std::process::ExitCode;

use sotad_engines::gguf::{GgmlType, GgufFile, Value};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(path), rest) = (args.next(), args.collect::<Vec<_>>()) else {
        eprintln!("usage: gguf_info MODEL.gguf [--tensors]");
        return ExitCode::from(2);
    };
    let list_tensors = rest.iter().any(|a| a == "--tensors");
    match GgufFile::open(&path) {
        Ok(file) => {
            print_summary(&file, list_tensors);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_summary(file: &GgufFile, list_tensors: bool) {
    println!(
        "file:        {}",
        file.path()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    println!("size:        {} bytes", file.as_bytes().len());
    println!("version:     {}", file.version());
    println!("alignment:   {}", file.alignment());
    println!("data offset: {}", file.data_offset());
    println!("arch:        {}", file.architecture().unwrap_or("(none)"));
    if let Some(arch) = file.architecture() {
        if let Ok(n) = file.get_u32(&format!("{arch}.block_count")) {
            println!("blocks:      {n}");
        }
    }

    println!("\nmetadata ({} entries):", file.metadata_count());
    for (key, value) in file.metadata() {
        let shown = match value {
            Value::Array(a) if a.len() > 8 => {
                let head: Vec<String> = a.iter().take(5).map(|v| v.to_string()).collect();
                format!("[{}, ...]", head.join(", "))
            }
            other => truncate(&other.to_string(), 100),
        };
        println!("  {key}: {} = {shown}", value.describe_type());
    }

    let mut histogram: BTreeMap<u32, (GgmlType, usize, u64, u64)> = BTreeMap::new();
    for t in file.tensor_infos() {
        let e = histogram
            .entry(t.ggml_type().id())
            .or_insert((t.ggml_type(), 0, 0, 0));
        e.1 += 1;
        e.2 += t.n_elements();
        e.3 += t.n_bytes();
    }
    let params: u64 = file.tensor_infos().iter().map(|t| t.n_elements()).sum();
    let bytes: u64 = file.tensor_infos().iter().map(|t| t.n_bytes()).sum();
    println!(
        "\ntensors: {} ({params} parameters, {bytes} bytes of data)",
        file.tensor_count()
    );
    println!(
        "  {:<6} {:>7} {:>14} {:>14}",
        "type", "tensors", "elements", "bytes"
    );
    for (ty, count, elements, bytes) in histogram.values() {
        println!("  {:<6} {count:>7} {elements:>14} {bytes:>14}", ty.name());
    }

    if list_tensors {
        println!();
        for t in file.tensor_infos() {
            println!(
                "  {:<40} {:<5} {:?} @ {}",
                t.name(),
                t.ggml_type().name(),
                t.shape(),
                t.file_offset()
            );
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}
