//! A fixed LLM workload to run under `perf record`: prefill of a 512-token prompt, or 256
//! greedy decode steps after a 16-token prompt (`decode`) or after the 512-token prompt
//! (`decode-long`, as the LLM bench decodes), repeated.
//!
//! ```text
//! cargo run --release -p sotad-engines --example llm_profile -- MODEL.gguf prefill|decode|decode-long [REPEATS] [THREADS]
//! ```

use std::time::Instant;

use sotad_engines::llm::{LoadOptions, Model, Sampler};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: llm_profile MODEL.gguf prefill|decode|decode-long [REPEATS] [THREADS]");
        std::process::exit(2);
    }
    let repeats: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(3);
    let threads: usize = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(2);
    let model = Model::load(
        &args[1],
        &LoadOptions {
            context_len: 1024,
            threads,
        },
    )
    .expect("load model");
    let para = "The small robot rolled across the kitchen floor, listening for its name. \
        It had learned to answer questions about the weather, to read recipes aloud, and to \
        remind the family when the plants needed water. ";
    let mut ids = model.tokenizer().encode(&para.repeat(60), true, false);
    ids.truncate(512);
    let mut session = model.session();
    for _ in 0..repeats {
        session.reset();
        let t = Instant::now();
        if args[2] == "prefill" {
            session.eval(&ids).unwrap();
            let _ = Sampler::argmax(session.logits());
            let dt = t.elapsed().as_secs_f64();
            println!("prefill {:.1} tok/s", ids.len() as f64 / dt);
        } else {
            let prompt = if args[2] == "decode-long" {
                &ids[..]
            } else {
                &ids[..16]
            };
            session.eval(prompt).unwrap();
            let mut tok = Sampler::argmax(session.logits());
            let t = Instant::now();
            for _ in 0..256 {
                session.eval(&[tok]).unwrap();
                tok = Sampler::argmax(session.logits());
            }
            println!("decode {:.1} tok/s", 256.0 / t.elapsed().as_secs_f64());
        }
    }
}
