//! The ONNX reader and the Piper voice loader.
//!
//! - On the real `en_US-joe-medium` voice that scripts/install-models.sh installs (a missing
//!   file fails the test with that command rather than skipping): every module parameter
//!   resolved, the inferred hyperparameters, the config, zero-copy weights, truncated copies.
//! - On synthetic voices written by a tiny test-only protobuf writer: the hyperparameter
//!   inference round-trips several VITS variants, each kind of damage gives a located error,
//!   and a deterministic mutation fuzzer (20 000 iterations) never makes the parser panic.

mod common;

use common::{Rng, TempFile, models_dir};
use std::collections::BTreeMap;
use std::path::PathBuf;

use sotad_engines::Error;
use sotad_engines::tts::onnx::{
    AttributeProto, AttributeType, DataType, Dim, GraphProto, OnnxModel, TensorProto,
};
use sotad_engines::tts::piper_voice::{
    DecoderConfig, DurationPredictorConfig, FlowConfig, ParamSource, ResBlockKind,
};
use sotad_engines::tts::{PiperVoice, TtsErrorKind, TtsFile, TtsSubject, VitsConfig, VoiceConfig};

// ----- helpers ---------------------------------------------------------------------------

fn joe_path() -> PathBuf {
    let path = models_dir().join("piper/en_US-joe-medium.onnx");
    for p in [
        path.clone(),
        PathBuf::from(format!("{}.json", path.display())),
    ] {
        assert!(
            p.exists(),
            "{} is missing: run scripts/install-models.sh (scripts/test.sh does)",
            p.display()
        );
    }
    path
}

fn joe() -> PiperVoice {
    PiperVoice::open(joe_path()).unwrap_or_else(|e| panic!("{e}"))
}

fn joe_config() -> VoiceConfig {
    VoiceConfig::open(format!("{}.json", joe_path().display())).unwrap()
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn tts_err(e: &Error) -> &sotad_engines::tts::TtsError {
    e.as_tts().unwrap_or_else(|| panic!("not a TTS error: {e}"))
}

fn assert_contains(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "{msg:?} does not contain {p:?}");
    }
}

// ----- a tiny protobuf / ONNX writer (test only) -------------------------------------------

/// A protobuf message under construction.
#[derive(Default, Clone)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(b);
                return;
            }
            self.0.push(b | 0x80);
        }
    }

    fn key(&mut self, field: u32, wire_type: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire_type));
    }

    fn int(mut self, field: u32, v: i64) -> Self {
        self.key(field, 0);
        self.varint(v as u64);
        self
    }

    fn bytes(mut self, field: u32, b: &[u8]) -> Self {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }

    fn str(self, field: u32, s: &str) -> Self {
        self.bytes(field, s.as_bytes())
    }

    fn msg(self, field: u32, m: &Pb) -> Self {
        self.bytes(field, &m.0)
    }

    fn float(mut self, field: u32, f: f32) -> Self {
        self.key(field, 5);
        self.0.extend_from_slice(&f.to_le_bytes());
        self
    }

    fn packed_floats(self, field: u32, v: &[f32]) -> Self {
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.bytes(field, &b)
    }

    fn packed_ints(self, field: u32, v: &[i64]) -> Self {
        let mut p = Pb::default();
        for &x in v {
            p.varint(x as u64);
        }
        self.bytes(field, &p.0)
    }
}

/// A TensorProto with `raw_data` (dims unpacked, as PyTorch writes them).
fn tensor_pb(name: &str, dims: &[i64], data_type: i32, raw: &[u8]) -> Pb {
    let mut t = Pb::default();
    for &d in dims {
        t = t.int(1, d);
    }
    t.int(2, i64::from(data_type)).str(8, name).bytes(9, raw)
}

fn attr_ints(name: &str, ints: &[i64]) -> Pb {
    let mut a = Pb::default().str(1, name).int(20, 7);
    for &i in ints {
        a = a.int(8, i);
    }
    a
}

fn node_pb(name: &str, op: &str, inputs: &[&str], outputs: &[&str], attrs: &[Pb]) -> Pb {
    let mut n = Pb::default();
    for i in inputs {
        n = n.str(1, i);
    }
    for o in outputs {
        n = n.str(2, o);
    }
    n = n.str(3, name).str(4, op);
    for a in attrs {
        n = n.msg(5, a);
    }
    n
}

fn value_info_pb(name: &str, elem_type: i32, dims: &[Dim]) -> Pb {
    let mut shape = Pb::default();
    for d in dims {
        let dim = match d {
            Dim::Value(v) => Pb::default().int(1, *v),
            Dim::Param(p) => Pb::default().str(2, p),
            Dim::Unknown => Pb::default(),
        };
        shape = shape.msg(1, &dim);
    }
    let tensor_type = Pb::default().int(1, i64::from(elem_type)).msg(2, &shape);
    let ty = Pb::default().msg(1, &tensor_type);
    Pb::default().str(1, name).msg(2, &ty)
}

fn model_bytes(graph: &Pb) -> Vec<u8> {
    let opset = Pb::default().str(1, "").int(2, 15);
    Pb::default()
        .int(1, 8)
        .str(2, "pytorch")
        .str(3, "2.0.0")
        .msg(7, graph)
        .msg(8, &opset)
        .0
}

/// Re-encodes a parsed model (tensor data copied from its file), dropping initializers
/// for which `keep` is false.
fn reencode(model: &OnnxModel, keep: &dyn Fn(&TensorProto) -> bool) -> Vec<u8> {
    fn tensor(model: &OnnxModel, t: &TensorProto) -> Pb {
        let view = model.tensor(t);
        let mut p = Pb::default();
        for &d in &t.dims {
            p = p.int(1, d);
        }
        p = p.int(2, i64::from(t.data_type.0)).str(8, &t.name);
        if let Some(raw) = view.raw_bytes() {
            p = p.bytes(9, raw);
        }
        if !t.float_data.is_empty() {
            p = p.packed_floats(4, &t.float_data);
        }
        if !t.int64_data.is_empty() {
            p = p.packed_ints(7, &t.int64_data);
        }
        p
    }
    fn attr(model: &OnnxModel, a: &AttributeProto) -> Pb {
        let code = match a.r#type {
            AttributeType::Undefined => 0,
            AttributeType::Float => 1,
            AttributeType::Int => 2,
            AttributeType::String => 3,
            AttributeType::Tensor => 4,
            AttributeType::Graph => 5,
            AttributeType::Floats => 6,
            AttributeType::Ints => 7,
            AttributeType::Strings => 8,
            AttributeType::Tensors => 9,
            AttributeType::Graphs => 10,
            AttributeType::Other(c) => c,
        };
        let mut p = Pb::default().str(1, &a.name).int(20, i64::from(code));
        if let Some(f) = a.f {
            p = p.float(2, f);
        }
        if let Some(i) = a.i {
            p = p.int(3, i);
        }
        if let Some(s) = &a.s {
            p = p.bytes(4, s);
        }
        if let Some(t) = &a.t {
            p = p.msg(5, &tensor(model, t));
        }
        if let Some(g) = &a.g {
            p = p.msg(6, &graph(model, g, &|_| true));
        }
        for &f in &a.floats {
            p = p.float(7, f);
        }
        if !a.ints.is_empty() {
            p = p.packed_ints(8, &a.ints);
        }
        p
    }
    fn graph(model: &OnnxModel, g: &GraphProto, keep: &dyn Fn(&TensorProto) -> bool) -> Pb {
        let mut p = Pb::default();
        for n in &g.node {
            let attrs: Vec<Pb> = n.attribute.iter().map(|a| attr(model, a)).collect();
            let inputs: Vec<&str> = n.input.iter().map(String::as_str).collect();
            let outputs: Vec<&str> = n.output.iter().map(String::as_str).collect();
            p = p.msg(1, &node_pb(&n.name, &n.op_type, &inputs, &outputs, &attrs));
        }
        p = p.str(2, &g.name);
        for t in g.initializer.iter().filter(|t| keep(t)) {
            p = p.msg(5, &tensor(model, t));
        }
        for v in &g.input {
            p = p.msg(
                11,
                &value_info_pb(
                    &v.name,
                    v.elem_type.map_or(0, |t| t.0),
                    v.shape.as_deref().unwrap_or(&[]),
                ),
            );
        }
        for v in &g.output {
            p = p.msg(
                12,
                &value_info_pb(
                    &v.name,
                    v.elem_type.map_or(0, |t| t.0),
                    v.shape.as_deref().unwrap_or(&[]),
                ),
            );
        }
        p
    }
    model_bytes(&graph(model, model.graph(), keep))
}

// ----- synthetic VITS voices ---------------------------------------------------------------

fn tiny_config() -> VitsConfig {
    VitsConfig {
        sample_rate: 16000,
        n_vocab: 8,
        hidden_channels: 4,
        inter_channels: 4,
        filter_channels: 8,
        n_heads: 2,
        n_layers: 2,
        kernel_size: 3,
        window_size: 1,
        heads_share: true,
        flow: FlowConfig {
            n_flows: 2,
            hidden_channels: 4,
            kernel_size: 3,
            dilation_rate: 1,
            n_layers: 2,
            mean_only: true,
        },
        duration_predictor: DurationPredictorConfig::Stochastic {
            filter_channels: 4,
            kernel_size: 3,
            n_dds_layers: 2,
            n_flows: 2,
            num_bins: 2,
            logs_folded: true,
        },
        decoder: DecoderConfig {
            upsample_initial_channel: 8,
            upsample_rates: vec![2, 2],
            upsample_kernel_sizes: vec![4, 4],
            resblock: ResBlockKind::Two,
            resblock_kernel_sizes: vec![3],
            resblock_dilation_sizes: vec![vec![1, 2]],
            pre_kernel_size: 3,
            post_kernel_size: 3,
        },
        gin_channels: 0,
        n_speakers: 1,
    }
}

/// The other VITS variants: ResBlock1 with HiFi-GAN's V1 layout, several speakers, the
/// deterministic duration predictor, per-head relative embeddings, a flow dilation rate.
fn variant_config() -> VitsConfig {
    VitsConfig {
        sample_rate: 22050,
        n_vocab: 10,
        hidden_channels: 6,
        inter_channels: 4,
        filter_channels: 5,
        n_heads: 3,
        n_layers: 1,
        kernel_size: 1,
        window_size: 2,
        heads_share: false,
        flow: FlowConfig {
            n_flows: 1,
            hidden_channels: 3,
            kernel_size: 5,
            dilation_rate: 2,
            n_layers: 3,
            mean_only: false,
        },
        duration_predictor: DurationPredictorConfig::Deterministic {
            filter_channels: 7,
            kernel_size: 3,
        },
        decoder: DecoderConfig {
            upsample_initial_channel: 32,
            upsample_rates: vec![8, 8, 2, 2],
            upsample_kernel_sizes: vec![16, 16, 4, 4],
            resblock: ResBlockKind::One,
            resblock_kernel_sizes: vec![3, 7, 11],
            resblock_dilation_sizes: vec![vec![1, 3, 5]; 3],
            pre_kernel_size: 7,
            post_kernel_size: 7,
        },
        gin_channels: 2,
        n_speakers: 3,
    }
}

fn voice_json(cfg: &VitsConfig) -> String {
    format!(
        r#"{{"audio": {{"sample_rate": {}}}, "espeak": {{"voice": "en-us"}},
            "inference": {{"noise_scale": 0.5, "length_scale": 1.25, "noise_w": 0.75}},
            "phoneme_id_map": {{"_": [0], "^": [1], "$": [2], "a": [3]}},
            "num_speakers": {}, "speaker_id_map": {{}}}}"#,
        cfg.sample_rate, cfg.n_speakers
    )
}

/// `flow.flows.0.enc.in_layers.0` -> `/flow/flows.0/enc/in_layers.0`.
fn node_path(module: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    for p in module.split('.') {
        match parts.last_mut() {
            Some(last) if p.chars().all(|c| c.is_ascii_digit()) => {
                last.push('.');
                last.push_str(p);
            }
            _ => parts.push(p.to_owned()),
        }
    }
    format!("/{}", parts.join("/"))
}

#[derive(Default)]
struct SynthOptions<'a> {
    /// Parameters left out.
    skip: &'a [&'a str],
    /// Parameters given another shape (and matching data).
    reshape: &'a [(&'a str, &'a [i64])],
    /// Name of the node consuming the first anonymous flow weight, instead of its module path.
    anon_node_name: Option<&'a str>,
}

/// Writes a VITS graph with exactly `cfg.expected_params()`, exported the way PyTorch does:
/// the flows' WaveNet weights anonymous, the embedding named `sid`, `exp(-logs)` folded.
fn synth_vits(cfg: &VitsConfig, opts: &SynthOptions<'_>) -> Vec<u8> {
    let params = cfg.expected_params();
    let names: BTreeMap<&str, &[i64]> = params
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_slice()))
        .collect();
    let mut graph = Pb::default();
    let mut inits = Vec::new();
    let mut anon = 8000;
    let init_name = |name: &str, anon: &mut i32| -> String {
        if name == "enc_p.emb.weight" {
            "sid".to_owned()
        } else if name == "dp.flows.0.logs" {
            "/dp/flows.0/Exp_output_0".to_owned()
        } else if name.starts_with("flow.") && name.contains(".enc.") && name.ends_with(".weight") {
            *anon += 3;
            format!("onnx::Conv_{anon}")
        } else {
            name.to_owned()
        }
    };
    let mut renamed: BTreeMap<String, String> = BTreeMap::new();
    for (name, shape) in &params {
        renamed.insert(name.clone(), init_name(name, &mut anon));
        let _ = shape;
    }
    let n_kernels = cfg.decoder.resblock_kernel_sizes.len();
    let mut first_anon = true;
    for (name, shape) in &params {
        if opts.skip.contains(&name.as_str()) {
            continue;
        }
        let shape: Vec<i64> = opts
            .reshape
            .iter()
            .find(|(n, _)| n == name)
            .map_or_else(|| shape.clone(), |(_, s)| s.to_vec());
        let count: i64 = shape.iter().product();
        let data: Vec<u8> = (0..count)
            .flat_map(|i| (i as f32 * 0.001 + 0.5).to_le_bytes())
            .collect();
        let iname = &renamed[name];
        inits.push(tensor_pb(iname, &shape, 1, &data));

        if name == "enc_p.emb.weight" {
            graph = graph.msg(
                1,
                &node_pb(
                    "/enc_p/emb/Gather",
                    "Gather",
                    &["sid", "input"],
                    &["/enc_p/emb/Gather_output_0"],
                    &[],
                ),
            );
        }
        if name == "dp.flows.0.logs" {
            graph = graph
                .msg(
                    1,
                    &node_pb(
                        "/dp/flows.0/Sub",
                        "Sub",
                        &["z", "dp.flows.0.m"],
                        &["/dp/flows.0/Sub_output_0"],
                        &[],
                    ),
                )
                .msg(
                    1,
                    &node_pb(
                        "/dp/flows.0/Mul",
                        "Mul",
                        &["/dp/flows.0/Sub_output_0", iname],
                        &["/dp/flows.0/Mul_output_0"],
                        &[],
                    ),
                );
        }
        let Some(module) = name.strip_suffix(".weight") else {
            continue;
        };
        if shape.len() != 3 {
            continue;
        }
        let is_ups = module.starts_with("dec.ups.");
        let parts: Vec<&str> = module.split('.').collect();
        let mut dilation = 1i64;
        let mut stride = 1i64;
        if is_ups {
            stride = cfg.decoder.upsample_rates[parts[2].parse::<usize>().unwrap()] as i64;
        } else if module.starts_with("dec.resblocks.") && parts[3] != "convs2" {
            let r: usize = parts[2].parse().unwrap();
            let m: usize = parts[4].parse().unwrap();
            dilation = cfg.decoder.resblock_dilation_sizes[r % n_kernels][m] as i64;
        } else if module.contains(".enc.in_layers.") {
            let l: u32 = parts[5].parse().unwrap();
            dilation = (cfg.flow.dilation_rate as i64).pow(l);
        }
        let mut node_name = format!(
            "{}/{}",
            node_path(module),
            if is_ups { "ConvTranspose" } else { "Conv" }
        );
        if iname.starts_with("onnx::") && first_anon {
            first_anon = false;
            if let Some(n) = opts.anon_node_name {
                node_name = n.to_owned();
            }
        }
        let bias = format!("{module}.bias");
        let mut inputs = vec!["x".to_owned(), iname.clone()];
        if names.contains_key(bias.as_str()) {
            inputs.push(renamed[&bias].clone());
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let attrs = [
            attr_ints("dilations", &[dilation]),
            Pb::default().str(1, "group").int(20, 2).int(3, 1),
            attr_ints("kernel_shape", &[shape[2]]),
            attr_ints("strides", &[stride]),
        ];
        let out = format!("{node_name}_output_0");
        graph = graph.msg(
            1,
            &node_pb(
                &node_name,
                if is_ups { "ConvTranspose" } else { "Conv" },
                &inputs,
                &[&out],
                &attrs,
            ),
        );
    }
    graph = graph.str(2, "torch_jit");
    for t in &inits {
        graph = graph.msg(5, t);
    }
    graph = graph
        .msg(
            11,
            &value_info_pb(
                "input",
                7,
                &[
                    Dim::Param("batch_size".into()),
                    Dim::Param("phonemes".into()),
                ],
            ),
        )
        .msg(11, &value_info_pb("scales", 1, &[Dim::Value(3)]))
        .msg(
            12,
            &value_info_pb(
                "output",
                1,
                &[Dim::Param("batch_size".into()), Dim::Value(1), Dim::Unknown],
            ),
        );
    model_bytes(&graph)
}

fn synth_voice(cfg: &VitsConfig, opts: &SynthOptions<'_>) -> sotad_engines::Result<PiperVoice> {
    let model = OnnxModel::from_vec(synth_vits(cfg, opts))?;
    PiperVoice::from_parts(model, VoiceConfig::parse(voice_json(cfg).as_bytes())?)
}

// ----- the real voice ----------------------------------------------------------------------

/// Parameters the inference graph of a VITS generator with joe-medium's hyperparameters uses:
///
/// - text encoder: embedding 1 + 6 layers x (q, k, v, o convs with bias 8 + emb_rel_k/v 2 +
///   two layer norms 4 + two FFN convs with bias 4 = 18) + proj 2 = 111;
/// - stochastic duration predictor: pre 2 + proj 2 + DDS conv stack (3 layers x 8 = 24) +
///   elementwise affine m, logs 2 + the 3 conv flows inference uses x (pre 2 + 24 + proj 2) =
///   114;
/// - flow: 4 coupling layers x (pre 2 + 4 WaveNet layers x (in 2 + res/skip 2) + post 2) = 80;
/// - decoder: conv_pre 2 + 3 upsamplers x 2 + 9 residual blocks x 2 convs x 2 + conv_post
///   (no bias) 1 = 45.
const JOE_PARAMS: usize = 111 + 114 + 80 + 45;

#[test]
fn joe_medium_every_parameter_is_resolved() {
    let voice = joe();
    assert_eq!(JOE_PARAMS, 350);
    assert_eq!(voice.params().len(), JOE_PARAMS);
    assert_eq!(voice.vits().expected_params().len(), JOE_PARAMS);
    assert_eq!(voice.unexpected_params().count(), 0);
    for (name, shape) in voice.vits().expected_params() {
        let t = voice.param(&name).unwrap();
        assert_eq!(t.dims(), shape.as_slice(), "{name}");
        assert_eq!(t.data_type(), DataType::FLOAT);
    }

    let mut anonymous = Vec::new();
    let mut folded = Vec::new();
    for p in voice.params() {
        match &p.source {
            ParamSource::Named => assert_eq!(p.name, p.initializer),
            ParamSource::Consumer { node, input } => {
                anonymous.push(format!(
                    "{} <- {} ({node}, input {input})",
                    p.name, p.initializer
                ));
            }
            ParamSource::FoldedExpNeg { node } => {
                folded.push(format!("{} <- {} ({node})", p.name, p.initializer))
            }
        }
    }
    println!("anonymous initializers resolved through their consumers:");
    for a in &anonymous {
        println!("  {a}");
    }
    println!("folded: {folded:?}");
    assert_eq!(anonymous.len(), 33);
    assert_eq!(
        anonymous
            .iter()
            .filter(|a| a.contains("<- onnx::Conv_"))
            .count(),
        32
    );
    let emb = voice.param_info("enc_p.emb.weight").unwrap();
    assert_eq!(emb.initializer, "sid");
    assert_eq!(
        emb.source,
        ParamSource::Consumer {
            node: "/enc_p/emb/Gather".into(),
            input: 0
        }
    );
    let w = voice
        .param_info("flow.flows.6.enc.in_layers.0.weight")
        .unwrap();
    assert_eq!(w.initializer, "onnx::Conv_8168");
    let res = voice
        .param("flow.flows.0.enc.res_skip_layers.3.weight")
        .unwrap();
    assert_eq!(res.dims(), [192, 192, 1]);

    // exp(-logs) is stored: positive values.
    let logs = voice.param_info("dp.flows.0.logs").unwrap();
    assert_eq!(logs.initializer, "/dp/flows.0/Exp_output_0");
    assert!(matches!(logs.source, ParamSource::FoldedExpNeg { .. }));
    let exp_neg_logs = voice
        .param("dp.flows.0.logs")
        .unwrap()
        .to_f32_vec()
        .unwrap();
    assert_eq!(exp_neg_logs.len(), 2);
    assert!(exp_neg_logs.iter().all(|&v| v > 0.0 && v.is_finite()));

    let err = voice.param("dec.ups.3.weight").unwrap_err();
    assert_contains(
        &err.to_string(),
        &[
            "en_US-joe-medium.onnx",
            "dec.ups.3.weight",
            "no such parameter",
        ],
    );
}

#[test]
fn joe_medium_vits_config() {
    let voice = joe();
    let v = voice.vits();
    println!("{v:#?}");
    // The brief expected upsample rates [8, 8, 2, 2], 512 initial channels, kernels [3, 7, 11]
    // and dilations [[1, 3, 5]] x 3: that is VITS's LJSpeech (ResBlock1) decoder. Piper's
    // medium voices use the smaller ResBlock2 decoder, which is what the file holds.
    let expected = VitsConfig {
        sample_rate: 22050,
        n_vocab: 256,
        hidden_channels: 192,
        inter_channels: 192,
        filter_channels: 768,
        n_heads: 2,
        n_layers: 6,
        kernel_size: 3,
        window_size: 4,
        heads_share: true,
        flow: FlowConfig {
            n_flows: 4,
            hidden_channels: 192,
            kernel_size: 5,
            dilation_rate: 1,
            n_layers: 4,
            mean_only: true,
        },
        duration_predictor: DurationPredictorConfig::Stochastic {
            filter_channels: 192,
            kernel_size: 3,
            n_dds_layers: 3,
            n_flows: 4,
            num_bins: 10,
            logs_folded: true,
        },
        decoder: DecoderConfig {
            upsample_initial_channel: 256,
            upsample_rates: vec![8, 8, 4],
            upsample_kernel_sizes: vec![16, 16, 8],
            resblock: ResBlockKind::Two,
            resblock_kernel_sizes: vec![3, 5, 7],
            resblock_dilation_sizes: vec![vec![1, 2], vec![2, 6], vec![3, 12]],
            pre_kernel_size: 7,
            post_kernel_size: 7,
        },
        gin_channels: 0,
        n_speakers: 1,
    };
    assert_eq!(*v, expected);
    assert_eq!(v.decoder.hop_length(), 256);
}

#[test]
fn joe_medium_voice_config() {
    let voice = joe();
    let c = voice.config();
    assert_eq!(c.sample_rate, 22050);
    assert_eq!(c.quality.as_deref(), Some("medium"));
    assert_eq!(c.espeak_voice, "en-us");
    assert_eq!(c.phoneme_type, "espeak");
    assert_eq!(
        (c.noise_scale, c.length_scale, c.noise_w),
        (0.667, 1.0, 0.8)
    );
    assert_eq!(c.num_speakers, 1);
    assert!(c.speaker_id_map.is_empty());
    assert_eq!(c.num_symbols, Some(256));
    assert_eq!(c.piper_version.as_deref(), Some("1.0.0"));
    assert_eq!(c.phoneme_id_map.len(), 151);
    assert_eq!(c.phoneme_ids("_"), Some(&[0][..]));
    assert_eq!(c.phoneme_ids("^"), Some(&[1][..]));
    assert_eq!(c.phoneme_ids("$"), Some(&[2][..]));
    assert_eq!(c.phoneme_ids(" "), Some(&[3][..]));
    assert_eq!(c.phoneme_ids("ˈ"), Some(&[120][..]));
    assert_eq!(c.phoneme_ids("\u{303}"), Some(&[141][..]));
    assert_eq!(c.phoneme_ids("\""), Some(&[150][..]));
    assert_eq!(voice.config_path().unwrap().extension().unwrap(), "json");
}

#[test]
fn joe_medium_graph() {
    let voice = joe();
    let m = voice.model();
    let p = m.proto();
    assert_eq!(p.ir_version, 8);
    assert_eq!(m.opset_version(""), Some(15));
    assert_eq!(m.opset_version("ai.onnx"), Some(15));
    assert_eq!(
        (p.producer_name.as_str(), p.producer_version.as_str()),
        ("pytorch", "2.0.0")
    );
    let g = m.graph();
    assert_eq!(g.name, "torch_jit");
    assert_eq!(g.node.len(), 2755);
    assert_eq!(g.initializer.len(), 401);
    let names = |v: &[sotad_engines::tts::onnx::ValueInfoProto]| {
        v.iter().map(|v| v.name.clone()).collect::<Vec<_>>()
    };
    assert_eq!(names(&g.input), ["input", "input_lengths", "scales"]);
    assert_eq!(names(&g.output), ["output"]);
    assert_eq!(g.input[0].elem_type, Some(DataType::INT64));
    assert_eq!(
        g.input[0].shape.as_deref(),
        Some(
            &[
                Dim::Param("batch_size".into()),
                Dim::Param("phonemes".into())
            ][..]
        )
    );
    assert_eq!(g.input[2].shape.as_deref(), Some(&[Dim::Value(3)][..]));
    assert_eq!(
        g.node
            .iter()
            .filter(|n| n.op_type == "ConvTranspose")
            .count(),
        3
    );
    let ups = g
        .node
        .iter()
        .find(|n| n.name == "/dec/ups.2/ConvTranspose")
        .unwrap();
    assert_eq!(ups.attr("strides").unwrap().as_ints(), Some(&[4][..]));
    assert_eq!(ups.attr("pads").unwrap().as_ints(), Some(&[2, 2][..]));
    assert_eq!(ups.attr("group").unwrap().as_int(), Some(1));
    // Constant tensors inside attributes (ConstantOfShape's value) are read too.
    let cos = g
        .node
        .iter()
        .find(|n| n.op_type == "ConstantOfShape")
        .unwrap();
    let value = cos.attr("value").unwrap().t.as_deref().unwrap();
    assert_eq!(m.tensor(value).element_count(), 1);
    // Named module parameters, anonymous weights and folded constants.
    let module_named = g
        .initializer
        .iter()
        .filter(|t| {
            t.name.contains('.') && !t.name.starts_with('/') && !t.name.starts_with("onnx::")
        })
        .count();
    assert_eq!(module_named, 316);
    assert_eq!(
        g.initializer
            .iter()
            .filter(|t| t.name.starts_with("onnx::Conv_"))
            .count(),
        32
    );
}

#[test]
fn joe_medium_weights_are_zero_copy_slices_of_the_mapping() {
    let path = joe_path();
    let anon_before = rss_kib("RssAnon:");
    let model = OnnxModel::open(&path).unwrap();
    let mapping = model.as_bytes().as_ptr_range();
    let (mut raw, mut misaligned, mut bytes) = (0, 0, 0usize);
    let mut checksum = 0u64;
    for t in model.initializers() {
        let Some(b) = t.raw_bytes() else { continue };
        raw += 1;
        let r = b.as_ptr_range();
        assert!(
            mapping.start <= r.start && r.end <= mapping.end,
            "{} is not in the mapping",
            t.name()
        );
        assert_eq!(
            t.data_offset(),
            Some((r.start as usize - mapping.start as usize) as u64)
        );
        misaligned += usize::from(t.data_offset().unwrap() % 4 != 0);
        bytes += b.len();
        checksum = b
            .iter()
            .step_by(64)
            .fold(checksum, |a, &x| a.wrapping_add(u64::from(x)));
    }
    std::hint::black_box(checksum);
    assert_eq!(raw, 401);
    assert!(bytes > 60_000_000, "{bytes} bytes of weights");
    // Protobuf does not align raw_data: most float tensors start at an odd offset.
    println!("{misaligned} of {raw} initializers start at an offset that is not a multiple of 4");
    assert!(misaligned > 0);
    let anon_growth = rss_kib("RssAnon:").saturating_sub(anon_before);
    assert!(
        anon_growth < 16 * 1024,
        "anonymous memory grew by {anon_growth} KiB while reading the weights"
    );

    // to_f32_vec is the unaligned little-endian read.
    let t = model.initializer("dec.conv_pre.weight").unwrap();
    let v = t.to_f32_vec().unwrap();
    assert_eq!(v.len(), 256 * 192 * 7);
    let b = t.raw_bytes().unwrap();
    for i in [0, 1, 12345, v.len() - 1] {
        assert_eq!(
            v[i].to_bits(),
            u32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap())
        );
    }
    let err = t.to_i64_vec().unwrap_err();
    assert_contains(
        &err.to_string(),
        &["dec.conv_pre.weight", "FLOAT", "cannot be read as i64"],
    );
    // An int64 constant.
    let shape = model
        .initializer("/dp/flows.7/Constant_38_output_0")
        .unwrap();
    assert_eq!(shape.data_type(), DataType::INT64);
    assert_eq!(shape.to_i64_vec().unwrap().len(), 4);
}

#[test]
fn truncated_joe_medium_is_an_error_at_every_offset() {
    let bytes = std::fs::read(joe_path()).unwrap();
    let len = bytes.len();
    for cut in [
        0,
        1,
        2,
        3,
        17,
        100,
        4096,
        1 << 20,
        len / 3,
        len / 2,
        len - 4096,
        len - 20,
        len - 1,
    ] {
        let err = OnnxModel::parse_bytes(&bytes[..cut]).unwrap_err();
        let e = tts_err(&err);
        assert_eq!(e.file, TtsFile::Onnx);
        assert!(
            matches!(
                e.kind,
                TtsErrorKind::NotOnnx { .. }
                    | TtsErrorKind::LengthPastEnd { .. }
                    | TtsErrorKind::Truncated { .. }
            ),
            "cut at {cut}: {err}"
        );
    }
    // Through a file: the error names it.
    let file = TempFile::with_bytes("truncated", &bytes[..len / 2]);
    let config = TempFile::with_bytes(
        "truncated-config",
        &std::fs::read(format!("{}.json", joe_path().display())).unwrap(),
    );
    let err = PiperVoice::open_with_config(file.path(), config.path()).unwrap_err();
    let msg = err.to_string();
    assert_contains(
        &msg,
        &[
            "ONNX file",
            &file.path().display().to_string(),
            "field ModelProto at byte",
            "of field #7 runs past the end",
        ],
    );
    println!("{msg}");
    // The same prefix cut right after the graph (no opset_import left).
    let with_graph = reencode(&OnnxModel::parse_bytes(&bytes).unwrap(), &|_| true);
    // The writer puts opset_import { domain: "", version: 15 } last: 42 04 0a 00 10 0f.
    let graph_end = with_graph.len() - 6;
    assert_eq!(
        &with_graph[graph_end..],
        [0x42, 0x04, 0x0a, 0x00, 0x10, 0x0f]
    );
    let err = OnnxModel::parse_bytes(&with_graph[..graph_end]).unwrap_err();
    assert_contains(&err.to_string(), &["no opset_import"]);
}

#[test]
fn reencoded_joe_medium_loads_identically_and_damage_is_located() {
    let voice = joe();
    let model = voice.model();
    let bytes = reencode(model, &|_| true);
    let copy = OnnxModel::from_vec(bytes).unwrap();
    let again = PiperVoice::from_parts(copy.clone(), joe_config()).unwrap();
    assert_eq!(again.vits(), voice.vits());
    assert_eq!(again.params().len(), voice.params().len());
    for p in voice.params() {
        let q = again.param_info(&p.name).unwrap();
        assert_eq!(q, p);
        assert_eq!(
            again.param(&p.name).unwrap().raw_bytes(),
            voice.param(&p.name).unwrap().raw_bytes()
        );
    }
    // The same nodes and attributes (attribute tensors compared by content: their byte
    // ranges differ between the files).
    let (a, b) = (copy.graph(), model.graph());
    assert_eq!(a.node.len(), b.node.len());
    for (x, y) in a.node.iter().zip(&b.node) {
        assert_eq!(
            (&x.name, &x.op_type, &x.input, &x.output),
            (&y.name, &y.op_type, &y.input, &y.output)
        );
        assert_eq!(x.attribute.len(), y.attribute.len(), "{}", x.name);
        for (p, q) in x.attribute.iter().zip(&y.attribute) {
            assert_eq!(
                (&p.name, p.r#type, p.f, p.i, &p.s, &p.floats, &p.ints),
                (&q.name, q.r#type, q.f, q.i, &q.s, &q.floats, &q.ints)
            );
            assert_eq!(p.t.is_some(), q.t.is_some());
            if let (Some(s), Some(t)) = (&p.t, &q.t) {
                assert_eq!(
                    (&s.name, &s.dims, s.data_type),
                    (&t.name, &t.dims, t.data_type)
                );
                assert_eq!(copy.tensor(s).raw_bytes(), model.tensor(t).raw_bytes());
            }
        }
    }
    assert_eq!(a.input, b.input);
    assert_eq!(a.output, b.output);

    // A missing initializer.
    let damaged = OnnxModel::from_vec(reencode(model, &|t| {
        t.name != "dec.resblocks.4.convs.1.bias"
    }))
    .unwrap();
    let err = PiperVoice::from_parts(damaged, joe_config()).unwrap_err();
    let e = tts_err(&err);
    assert!(matches!(e.kind, TtsErrorKind::Missing { .. }), "{err}");
    assert_eq!(
        e.subject,
        Some(TtsSubject::Param("dec.resblocks.4.convs.1.bias".into()))
    );
    assert_contains(
        &err.to_string(),
        &[
            "dec.resblocks.4.convs.1.bias",
            "missing",
            "VITS architecture",
        ],
    );

    // A missing anonymous weight.
    let damaged = OnnxModel::from_vec(reencode(model, &|t| t.name != "onnx::Conv_8213")).unwrap();
    let err = PiperVoice::from_parts(damaged, joe_config()).unwrap_err();
    assert_contains(
        &err.to_string(),
        &["flow.flows.4.enc.res_skip_layers.3.weight", "missing"],
    );

    // The embedding alone is not a voice.
    let damaged = OnnxModel::from_vec(reencode(model, &|t| t.name == "sid")).unwrap();
    let err = PiperVoice::from_parts(damaged, joe_config()).unwrap_err();
    assert_contains(
        &err.to_string(),
        &["enc_p.encoder.attn_layers.0.conv_q.weight"],
    );
}

// ----- synthetic voices: inference of the hyperparameters ------------------------------

#[test]
fn synthetic_voices_round_trip_their_hyperparameters() {
    for cfg in [tiny_config(), variant_config()] {
        let voice = synth_voice(&cfg, &SynthOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        let mut expected = cfg.clone();
        if let DurationPredictorConfig::Stochastic { logs_folded, .. } =
            &mut expected.duration_predictor
        {
            *logs_folded = true;
        }
        assert_eq!(*voice.vits(), expected);
        assert_eq!(voice.params().len(), cfg.expected_params().len());
        assert_eq!(voice.unexpected_params().count(), 0);
        let anonymous = voice
            .params()
            .filter(|p| matches!(p.source, ParamSource::Consumer { .. }))
            .count();
        let flow_weights = 2 * cfg.flow.n_flows * cfg.flow.n_layers
            + usize::from(cfg.gin_channels > 0) * cfg.flow.n_flows;
        assert_eq!(
            anonymous,
            flow_weights + 1,
            "WaveNet weights and the embedding"
        );
        assert_eq!(
            (
                voice.config().noise_scale,
                voice.config().length_scale,
                voice.config().noise_w
            ),
            (0.5, 1.25, 0.75)
        );
    }
    assert_eq!(variant_config().decoder.hop_length(), 256);
}

#[test]
fn synthetic_damage_is_located() {
    let cfg = tiny_config();
    let err = |opts: SynthOptions<'_>| synth_voice(&cfg, &opts).unwrap_err();

    let e = err(SynthOptions {
        skip: &["dec.ups.1.bias"],
        ..Default::default()
    });
    assert!(
        matches!(tts_err(&e).kind, TtsErrorKind::Missing { .. }),
        "{e}"
    );
    assert_contains(
        &e.to_string(),
        &["ONNX data", "parameter \"dec.ups.1.bias\"", "missing"],
    );

    let e = err(SynthOptions {
        reshape: &[("enc_p.encoder.ffn_layers.1.conv_2.weight", &[4, 8, 1])],
        ..Default::default()
    });
    assert_contains(
        &e.to_string(),
        &[
            "enc_p.encoder.ffn_layers.1.conv_2.weight",
            "has shape [4, 8, 1], expected [4, 8, 3]",
        ],
    );

    let e = err(SynthOptions {
        reshape: &[("enc_p.encoder.attn_layers.0.emb_rel_k", &[1, 4, 2])],
        ..Default::default()
    });
    assert_contains(&e.to_string(), &["emb_rel_k", "window length is even"]);

    let e = err(SynthOptions {
        anon_node_name: Some("Conv_17"),
        ..Default::default()
    });
    assert!(
        matches!(tts_err(&e).kind, TtsErrorKind::Unresolved { .. }),
        "{e}"
    );
    assert_contains(
        &e.to_string(),
        &[
            "tensor \"onnx::Conv_",
            "Conv node \"Conv_17\"",
            "not a module path",
        ],
    );

    let e = err(SynthOptions {
        skip: &["dp.flows.0.logs"],
        ..Default::default()
    });
    assert_contains(&e.to_string(), &["dp.flows.0.logs", "folded"]);

    // A phoneme id beyond the embedding is the config's fault.
    let model = OnnxModel::from_vec(synth_vits(&cfg, &SynthOptions::default())).unwrap();
    let json = voice_json(&cfg).replace("\"a\": [3]", "\"a\": [30]");
    let e =
        PiperVoice::from_parts(model, VoiceConfig::parse(json.as_bytes()).unwrap()).unwrap_err();
    assert_eq!(tts_err(&e).file, TtsFile::VoiceConfig);
    assert_contains(
        &e.to_string(),
        &[
            "key \"phoneme_id_map.a\"",
            "id 30 is outside the model's embedding of 8 symbols",
        ],
    );

    // Several speakers in the config, none in the model.
    let model = OnnxModel::from_vec(synth_vits(&cfg, &SynthOptions::default())).unwrap();
    let json = voice_json(&cfg).replace("\"num_speakers\": 1", "\"num_speakers\": 4");
    let e =
        PiperVoice::from_parts(model, VoiceConfig::parse(json.as_bytes()).unwrap()).unwrap_err();
    assert_contains(&e.to_string(), &["num_speakers", "no speaker embedding"]);
}

#[test]
fn non_vits_and_non_onnx_inputs() {
    let cfg = VoiceConfig::parse(voice_json(&tiny_config()).as_bytes()).unwrap();
    // A valid ONNX model that is not a voice.
    let graph = Pb::default()
        .msg(1, &node_pb("/Add", "Add", &["x", "bias"], &["y"], &[]))
        .str(2, "main")
        .msg(5, &tensor_pb("bias", &[2], 1, &[0; 8]));
    let model = OnnxModel::from_vec(model_bytes(&graph)).unwrap();
    let e = PiperVoice::from_parts(model, cfg.clone()).unwrap_err();
    assert!(
        matches!(tts_err(&e).kind, TtsErrorKind::NotVits { .. }),
        "{e}"
    );
    assert_contains(
        &e.to_string(),
        &["not a Piper VITS model", "1 initializers"],
    );

    // Not ONNX at all.
    for (bytes, what) in [
        (&b""[..], "the file is empty"),
        (b"GGUF\x03\x00\x00\x00", "not protobuf data"),
        (b"{\"audio\": 1}", "not protobuf data"),
        (b"\x08\x08", "no graph"),
        (b"\x08\xe8\x07\x3a\x00\x42\x00", "ir_version 1000"),
        (b"\x3a\x00\x42\x00", "no ir_version"),
    ] {
        let e = OnnxModel::parse_bytes(bytes).unwrap_err();
        assert!(
            matches!(tts_err(&e).kind, TtsErrorKind::NotOnnx { .. }),
            "{e}"
        );
        assert_contains(&e.to_string(), &["not an ONNX model", what]);
    }

    // Tensors the reader refuses, each named.
    let bad = |t: Pb| {
        let graph = Pb::default().msg(5, &t);
        OnnxModel::from_vec(model_bytes(&graph))
            .unwrap_err()
            .to_string()
    };
    let external = Pb::default()
        .int(1, 4)
        .int(2, 1)
        .str(8, "w")
        .msg(13, &Pb::default().str(1, "location").str(2, "w.bin"))
        .int(14, 1);
    assert_contains(
        &bad(external),
        &["tensor \"w\"", "external data not supported"],
    );
    assert_contains(
        &bad(tensor_pb("short", &[2, 3], 1, &[0; 20])),
        &[
            "tensor \"short\"",
            "data is 20 bytes, shape [2, 3] of FLOAT needs 24",
        ],
    );
    assert_contains(
        &bad(tensor_pb("neg", &[-1], 1, &[])),
        &["tensor \"neg\"", "negative dimension"],
    );
    assert_contains(
        &bad(tensor_pb("huge", &[1 << 40, 1 << 40], 1, &[])),
        &["element count overflows"],
    );
    assert_contains(
        &bad(Pb::default()
            .int(1, 3)
            .int(2, 1)
            .str(8, "f")
            .packed_floats(4, &[1.0])),
        &["tensor \"f\"", "needs 12"],
    );
    let dup = Pb::default()
        .msg(5, &tensor_pb("a", &[1], 1, &[0; 4]))
        .msg(5, &tensor_pb("a", &[1], 1, &[0; 4]));
    assert_contains(
        &OnnxModel::from_vec(model_bytes(&dup))
            .unwrap_err()
            .to_string(),
        &["tensor \"a\"", "duplicate initializer name"],
    );

    // Typed float_data and FLOAT16 raw data convert.
    let graph = Pb::default()
        .msg(
            5,
            &Pb::default()
                .int(1, 2)
                .int(2, 1)
                .str(8, "f")
                .packed_floats(4, &[1.5, -2.0]),
        )
        .msg(5, &tensor_pb("h", &[2], 10, &[0x00, 0x3c, 0x00, 0xc0]))
        .msg(
            5,
            &Pb::default()
                .int(1, 2)
                .int(2, 7)
                .str(8, "i")
                .packed_ints(7, &[-3, 4]),
        );
    let m = OnnxModel::from_vec(model_bytes(&graph)).unwrap();
    assert_eq!(m.initializer("f").unwrap().raw_bytes(), None);
    assert_eq!(
        m.initializer("f").unwrap().to_f32_vec().unwrap(),
        [1.5, -2.0]
    );
    assert_eq!(
        m.initializer("h").unwrap().to_f32_vec().unwrap(),
        [1.0, -2.0]
    );
    assert_eq!(m.initializer("i").unwrap().to_i64_vec().unwrap(), [-3, 4]);

    // Errors inside nested messages carry the field path and offset.
    let node = node_pb(
        "n",
        "Conv",
        &["x"],
        &["y"],
        &[Pb::default().str(1, "pads").int(20, 7).bytes(8, &[0x80])],
    );
    let graph = Pb::default().msg(1, &Pb::default()).msg(1, &node);
    let e = OnnxModel::from_vec(model_bytes(&graph)).unwrap_err();
    let t = tts_err(&e);
    assert_eq!(
        t.subject,
        Some(TtsSubject::Field(
            "ModelProto.graph.node[1].attribute[0]".into()
        ))
    );
    assert!(
        matches!(t.kind, TtsErrorKind::Truncated { what: "varint", .. }),
        "{e}"
    );
    assert!(t.offset.is_some());

    // Subgraphs nested beyond the depth limit.
    let mut g = Pb::default();
    for _ in 0..20 {
        let attr = Pb::default().str(1, "body").int(20, 5).msg(6, &g);
        g = Pb::default().msg(1, &node_pb("loop", "Loop", &[], &[], &[attr]));
    }
    let e = OnnxModel::from_vec(model_bytes(&g)).unwrap_err();
    assert_contains(&e.to_string(), &["nested more than 32 levels deep"]);
}

#[test]
fn voice_config_errors_name_the_key() {
    let parse = |json: &str| VoiceConfig::parse(json.as_bytes());
    let err = |json: &str| parse(json).unwrap_err().to_string();
    let base = voice_json(&tiny_config());
    assert!(parse(&base).is_ok());
    assert_contains(
        &err("{\"audio\": {}}"),
        &[
            "Piper voice config data",
            "key \"audio.sample_rate\"",
            "missing",
        ],
    );
    assert_contains(
        &err(&base.replace("16000", "\"16000\"")),
        &["audio.sample_rate", "expected integer, found string"],
    );
    assert_contains(
        &err(&base.replace("16000", "16000.5")),
        &["audio.sample_rate", "is not an integer"],
    );
    assert_contains(&err(&base.replace("16000", "5")), &["sample rate 5 Hz"]);
    assert_contains(
        &err(&base.replace("\"a\": [3]", "\"a\": 3")),
        &[
            "key \"phoneme_id_map.a\"",
            "expected array of ids, found number",
        ],
    );
    assert_contains(
        &err(&base.replace("\"a\": [3]", "\"a\": [-3]")),
        &["phoneme_id_map.a"],
    );
    assert_contains(
        &err(&base.replace("\"a\": [3]", "\"a\": []")),
        &["phoneme maps to no ids"],
    );
    assert_contains(
        &err(&base.replace("0.5", "-0.5")),
        &["inference.noise_scale", "not a non-negative number"],
    );
    assert_contains(
        &err(&base.replace("\"en-us\"", "null")),
        &["key \"espeak.voice\"", "missing"],
    );
    assert_contains(
        &err(&base[..base.len() - 1]),
        &["invalid JSON", "expected ',' or '}', found end of input"],
    );
    assert_contains(&err("[1]"), &["expected object, found array"]);
    // Defaults.
    let c = parse(r#"{"audio": {"sample_rate": 22050}, "espeak": {"voice": "de"}, "phoneme_id_map": {"_": [0]}}"#).unwrap();
    assert_eq!(
        (c.noise_scale, c.length_scale, c.noise_w, c.num_speakers),
        (0.667, 1.0, 0.8, 1)
    );
    assert_eq!(c.phoneme_type, "espeak");
    // Missing file.
    let e = VoiceConfig::open("/nonexistent/voice.onnx.json").unwrap_err();
    assert_contains(
        &e.to_string(),
        &["cannot read", "/nonexistent/voice.onnx.json"],
    );
    // A bad value in a file names the file.
    let f = TempFile::with_bytes("badcfg", base.replace("16000", "true").as_bytes());
    let e = VoiceConfig::open(f.path()).unwrap_err();
    assert_contains(
        &e.to_string(),
        &[
            "Piper voice config file",
            &f.path().display().to_string(),
            "found boolean",
        ],
    );
}

// ----- fuzzing ------------------------------------------------------------------------------

#[test]
fn mutated_onnx_never_panics() {
    let cfg = tiny_config();
    let original = synth_vits(&cfg, &SynthOptions::default());
    let config = VoiceConfig::parse(voice_json(&cfg).as_bytes()).unwrap();
    assert!(
        PiperVoice::from_parts(OnnxModel::parse_bytes(&original).unwrap(), config.clone()).is_ok()
    );
    println!("fuzzing a {}-byte synthetic voice", original.len());

    let mut rng = Rng(0x0bad_5eed_1234_5678);
    let (mut parsed, mut loaded) = (0, 0);
    for i in 0..20_000 {
        let mut bytes = original.clone();
        for _ in 0..1 + rng.below(4) {
            let len = bytes.len().max(1);
            match rng.below(8) {
                0 => {
                    let at = rng.below(len);
                    if let Some(b) = bytes.get_mut(at) {
                        *b ^= 1 << rng.below(8);
                    }
                }
                1 => {
                    let at = rng.below(len);
                    if let Some(b) = bytes.get_mut(at) {
                        *b = [0x00, 0x7f, 0x80, 0xff][rng.below(4)];
                    }
                }
                2 => bytes.truncate(rng.below(len)),
                3 => {
                    // Duplicate a slice somewhere else (repeated fields, shifted lengths).
                    let a = rng.below(len);
                    let b = (a + rng.below(64)).min(bytes.len());
                    let chunk = bytes[a..b].to_vec();
                    let at = rng.below(bytes.len() + 1);
                    bytes.splice(at..at, chunk);
                }
                4 => {
                    let a = rng.below(len);
                    let b = (a + rng.below(16)).min(bytes.len());
                    bytes.drain(a..b);
                }
                5 => {
                    // A huge varint length.
                    let at = rng.below(len);
                    let end = (at + 5).min(bytes.len());
                    bytes.splice(at..end, [0xff, 0xff, 0xff, 0xff, 0x0f]);
                }
                6 => {
                    let at = rng.below(len);
                    if let Some(b) = bytes.get_mut(at) {
                        *b = b.wrapping_add(1 + rng.below(3) as u8);
                    }
                }
                _ => {
                    let at = rng.below(len);
                    bytes.insert(at.min(bytes.len()), rng.next() as u8);
                }
            }
        }
        let result = std::panic::catch_unwind(|| {
            let Ok(model) = OnnxModel::from_vec(bytes.clone()) else {
                return (false, false);
            };
            for t in model.initializers() {
                let _ = t.to_f32_vec();
                let _ = t.to_i64_vec();
            }
            (true, PiperVoice::from_parts(model, config.clone()).is_ok())
        });
        match result {
            Ok((p, l)) => {
                parsed += usize::from(p);
                loaded += usize::from(l);
            }
            Err(_) => panic!(
                "iteration {i} panicked on input of {} bytes: {:02x?}",
                bytes.len(),
                &bytes[..bytes.len().min(64)]
            ),
        }
    }
    println!("{parsed} of 20000 mutants parsed as ONNX, {loaded} loaded as voices");
    assert!(
        parsed > 1000 && loaded > 100,
        "the mutations should not all be fatal ({parsed}, {loaded})"
    );
}
