//! Debugging: writes the named intermediates of the forward pass (see `Session::set_probe`)
//! for a prompt and then single forced tokens, to compare them bit for bit with llama.cpp's
//! (scripts/reference/llm_dump_llama.py writes those, scripts/reference/llm_compare_dumps.py
//! compares).
//!
//! ```text
//! cargo run --release -p sotad-engines --example llm_probe -- MODEL.gguf OUT_DIR PROMPT_IDS [FORCED_IDS] [CALLS]
//! ```
//! Ids and calls are comma-separated; call 0 is the prompt, call k the k-th forced token.
//! Every dumped call `c` gives `OUT_DIR/c.idx` (lines `name layer count offset`) and
//! `OUT_DIR/c.bin` (little-endian f32).

use std::io::Write;
use std::sync::{Arc, Mutex};

use sotad_engines::llm::{LoadOptions, Model};

fn list(s: Option<&String>) -> Vec<u32> {
    s.map(|s| {
        s.split(',')
            .filter(|x| !x.is_empty())
            .map(|x| x.trim().parse().unwrap())
            .collect()
    })
    .unwrap_or_default()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: llm_probe MODEL.gguf OUT_DIR PROMPT_IDS [FORCED_IDS] [CALLS]");
        std::process::exit(2);
    }
    let model = Model::load(
        &args[1],
        &LoadOptions {
            context_len: 1024,
            threads: 2,
        },
    )
    .expect("load model");
    let out = std::path::PathBuf::from(&args[2]);
    std::fs::create_dir_all(&out).unwrap();
    let prompt = list(args.get(3));
    let forced = list(args.get(4));
    let calls: Vec<u32> = if args.len() > 5 {
        list(args.get(5))
    } else {
        vec![0]
    };
    type Dump = (String, Vec<u8>);
    let buf: Arc<Mutex<Dump>> = Arc::new(Mutex::new((String::new(), Vec::new())));
    let mut session = model.session();
    let mut feeds = vec![prompt];
    feeds.extend(forced.iter().map(|&t| vec![t]));
    for (call, feed) in feeds.iter().enumerate() {
        let on = calls.contains(&(call as u32));
        if on {
            let b = buf.clone();
            session.set_probe(Some(Box::new(
                move |name: &str, layer: usize, v: &[f32]| {
                    let mut g = b.lock().unwrap();
                    let off = g.1.len() / 4;
                    g.0 += &format!("{name} {layer} {} {off}\n", v.len());
                    for x in v {
                        g.1.extend_from_slice(&x.to_le_bytes());
                    }
                },
            )));
        } else {
            session.set_probe(None);
        }
        session.eval(feed).unwrap();
        if on {
            let mut g = buf.lock().unwrap();
            std::fs::write(out.join(format!("{call}.idx")), &g.0).unwrap();
            std::fs::File::create(out.join(format!("{call}.bin")))
                .unwrap()
                .write_all(&g.1)
                .unwrap();
            *g = (String::new(), Vec::new());
        }
    }
}
