//! Transformers against PyTorch (fixtures/make_transformer.py: timm's own
//! `VisionTransformer` and nanoGPT's `GPT`, copied verbatim): their state
//! dicts load by name; eval logits, every MLP tap's z and every attention
//! layer's weights match; one AdamW step (label smoothing, gradient
//! clipping, no decay on biases, norms and embeddings) leaves the same
//! weights; gradients match finite differences; a pass resumed at any tap
//! gives the same logits; and the modular-addition transformer, a ViT and a
//! character-level language model train, resume and are analysed from the
//! command line.

use crate::common::*;
use candle_core::{DType, Device, Tensor, Var};
use lintrace::model::{Model, Weights};
use lintrace::spec::ModelSpec;
use lintrace::train::optim::{Optimizer, OptimizerKind};
use std::collections::BTreeMap;

const NETS: [&str; 4] = ["vit", "gpt_tied", "gpt_nonorm_relu", "gpt_lm"];

fn fixture_net(name: &str) -> FixtureNet {
    FixtureNet::new(&format!("transformer/{name}"))
}

#[test]
fn timm_and_nanogpt_state_dicts_evaluate_as_in_pytorch() {
    for net in NETS {
        let g = fixture_net(net).golden();
        let m = fixture_net(net).model();
        let (logits, rec) = m.forward_recorded(&g["x"]).unwrap();
        let d = max_diff(&logits, &g["logits"]);
        assert!(d < 1e-4, "{net}: logits off by {d}");
        let depth = fixture_net(net).spec().num_taps();
        assert_eq!(rec.taps.len(), depth);
        assert_eq!(rec.attention.len(), depth);
        assert_eq!(rec.streams.len(), 2 * depth + 1);
        for i in 0..depth {
            let d = max_diff(&rec.taps[i].z, &g[&format!("z{i}")]);
            assert!(d < 1e-4, "{net}: tap {i} z off by {d}");
            let d = max_diff(&rec.attention[i], &g[&format!("att{i}")]);
            assert!(d < 1e-5, "{net}: attention {i} off by {d}");
        }
    }
}

#[test]
fn the_specs_name_every_tensor_as_pytorch_does() {
    for net in NETS {
        let mut want: Vec<(String, Vec<usize>)> = fixture_net(net).initial().into_iter().map(|(k, v)| (k, v.dims().to_vec())).collect();
        let mut got = fixture_net(net).spec().tensor_shapes();
        want.sort();
        got.sort();
        assert_eq!(got, want, "{net}");
    }
}

/// One AdamW step as the fixture takes it, with lintrace's trainer pieces:
/// its loss (label smoothing), gradient-norm clipping and AdamW with the
/// spec's no-decay set. Returns the loss, the pre-clip gradient norm, the
/// gradients and every tensor after the step.
fn one_adamw_step(net: &str) -> (f64, f64, BTreeMap<String, Tensor>, BTreeMap<String, Tensor>) {
    let spec = fixture_net(net).spec();
    let init = fixture_net(net).initial();
    let g = fixture_net(net).golden();
    let mut names = Vec::new();
    let mut vars = Vec::new();
    let mut tensors = BTreeMap::new();
    for (name, _) in spec.tensor_shapes() {
        let v = Var::from_tensor(&init[&name]).unwrap();
        tensors.insert(name.clone(), v.as_tensor().clone());
        names.push(name);
        vars.push(v);
    }
    let model = Model::new(&spec, Weights::new(tensors)).unwrap();
    model.set_training(true);
    let logits = model.logits(&g["x"]).unwrap();
    let y = g["y"].to_dtype(DType::U32).unwrap();
    let loss = lintrace::train::loss(&logits, &y, 0.1).unwrap();
    let grads = loss.backward().unwrap();
    let grad_map = names.iter().zip(&vars).map(|(n, v)| (n.clone(), grads.get(v.as_tensor()).unwrap().clone())).collect();
    let decay = names.iter().map(|n| !spec.no_decay(n)).collect();
    let mut opt = Optimizer::new(OptimizerKind::Adamw, vars.clone(), 1.0, 0.0).with_betas(0.9, 0.98).with_decay_mask(decay);
    let norm = opt.grad_norm(&grads).unwrap();
    let scale = if norm > 0.5 { 0.5 / (norm + 1e-6) } else { 1.0 };
    opt.step(&grads, 0.01, scale).unwrap();
    let after = names.into_iter().zip(vars).map(|(n, v)| (n, v.as_tensor().clone())).collect();
    (loss.to_scalar::<f32>().unwrap() as f64, norm, grad_map, after)
}

/// `t` without the key rows of a fused q, k, v bias. The key bias's true
/// gradient is exactly 0 (it shifts all of a query's scores alike, which
/// softmax ignores), so f32 rounding noise there becomes a ±lr first AdamW
/// step; those rows are checked through the gradient instead.
fn without_key_bias(name: &str, t: &Tensor) -> Tensor {
    if !(name.ends_with("attn.qkv.bias") || name.ends_with("attn.c_attn.bias")) {
        return t.clone();
    }
    let d = t.dims()[0] / 3;
    Tensor::cat(&[t.narrow(0, 0, d).unwrap(), t.narrow(0, 2 * d, d).unwrap()], 0).unwrap()
}

#[test]
fn one_adamw_step_matches_pytorch() {
    for net in NETS {
        let g = fixture_net(net).golden();
        let (loss, norm, grads, after) = one_adamw_step(net);
        let scalar = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] as f64;
        assert_close(loss, scalar(&g["loss"]), 1e-5, &format!("{net} loss"));
        assert_close(norm, scalar(&g["grad_norm"]), 1e-4 * scalar(&g["grad_norm"]), &format!("{net} gradient norm"));
        let init = fixture_net(net).initial();
        for (name, grad) in &grads {
            let want = &g[&format!("grad.{name}")];
            let scale = want.abs().unwrap().max_keepdim(0).unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            let d = max_diff(grad, want);
            assert!(d <= 1e-4 * scale.max(1e-3), "{net}: gradient of {name} off by {d} (largest {scale})");
        }
        for (name, t) in &after {
            let (t, want, start) =
                (without_key_bias(name, t), without_key_bias(name, &g[&format!("after.{name}")]), without_key_bias(name, &init[name]));
            // AdamW's first step is lr·g/(|g| + ε), ε = 1e-8: where the true
            // gradient is within ~100 ε of 0, f32 rounding of g moves the
            // step by percent (gpt_lm has one such weight, |g| = 1.9e-7).
            // Those entries are checked through their gradients above.
            let sensitive = without_key_bias(name, &g[&format!("grad.{name}")]).abs().unwrap().lt(1e-6).unwrap();
            let t = sensitive.where_cond(&want, &t).unwrap();
            // Relative to the step's size (lr 0.01 plus decay), so a wrong
            // gradient sign or a wrong decay shows.
            let step = max_diff(&want, &start);
            let d = max_diff(&t, &want);
            assert!(d <= 1e-3 * step.max(1e-2), "{net}: {name} off by {d} after a step of {step}");
        }
    }
}

/// Mean cross-entropy of the model with tensor `name` set to `value`.
fn loss_with(spec: &ModelSpec, tensors: &BTreeMap<String, Tensor>, x: &Tensor, y: &Tensor) -> f64 {
    let model = Model::new(spec, Weights::new(tensors.clone())).unwrap();
    let logits = model.logits(x).unwrap().to_dtype(DType::F64).unwrap();
    candle_nn::loss::cross_entropy(&logits, y).unwrap().to_scalar::<f64>().unwrap()
}

/// Autograd against central differences of the loss, on a few coordinates
/// of every tensor (f32 model, so h = 1e-2 and a loose relative tolerance:
/// what this catches is a gradient that is zero, of the wrong sign or
/// scaled, as candle's fused softmax and LayerNorm would give).
#[test]
fn gradients_match_finite_differences() {
    for net in NETS {
        let spec = fixture_net(net).spec();
        let init = fixture_net(net).initial();
        let g = fixture_net(net).golden();
        let y = g["y"].to_dtype(DType::U32).unwrap();
        let mut vars = BTreeMap::new();
        let tensors: BTreeMap<String, Tensor> = spec
            .tensor_shapes()
            .into_iter()
            .map(|(n, _)| {
                let v = Var::from_tensor(&init[&n]).unwrap();
                vars.insert(n.clone(), v.clone());
                (n, v.as_tensor().clone())
            })
            .collect();
        let model = Model::new(&spec, Weights::new(tensors.clone())).unwrap();
        let logits = model.logits(&g["x"]).unwrap();
        let grads = candle_nn::loss::cross_entropy(&logits, &y).unwrap().backward().unwrap();
        for (name, var) in &vars {
            let grad: Vec<f32> = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{net}: {name} got no gradient"))
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let base: Vec<f32> = init[name].flatten_all().unwrap().to_vec1().unwrap();
            // The coordinates with the largest gradients, where h = 1e-2 is
            // far above f32 noise.
            let mut order: Vec<usize> = (0..grad.len()).collect();
            order.sort_by(|&a, &b| grad[b].abs().total_cmp(&grad[a].abs()));
            for &k in order.iter().take(2) {
                let h = 1e-2f32;
                let at = |delta: f32| {
                    let mut v = base.clone();
                    v[k] += delta;
                    let mut t = tensors.clone();
                    t.insert(name.clone(), Tensor::from_vec(v, init[name].dims(), &Device::Cpu).unwrap());
                    loss_with(&spec, &t, &g["x"], &y)
                };
                let fd = (at(h) - at(-h)) / (2.0 * h as f64);
                let ad = grad[k] as f64;
                assert!((fd - ad).abs() <= 0.02 * ad.abs() + 1e-4, "{net}: d loss / d {name}[{k}]: autograd {ad}, finite difference {fd}");
            }
        }
    }
}

#[test]
fn passes_resume_at_every_tap() {
    for net in NETS {
        fixture_net(net).assert_resumes_at_every_tap();
    }
}

/// Layer rows of `analyzer` with `layer_kind` = `kind`: their layer names.
fn names_of(t: &lintrace::tables::Table, analyzer: &str, kind: &str) -> std::collections::BTreeSet<String> {
    let (ai, ki, ni) = (t.column_index("analyzer").unwrap(), t.column_index("layer_kind").unwrap(), t.column_index("layer_name").unwrap());
    t.rows
        .iter()
        .filter(|r| r[ai].as_str() == Some(analyzer) && r[ki].as_str() == Some(kind))
        .map(|r| r[ni].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_modular_addition_transformer_trains_resumes_and_is_analysed() {
    let tmp = tempfile::tempdir().unwrap();
    let args = [
        "--model",
        "modadd",
        "--dataset",
        "modular-addition",
        "--modulus",
        "23",
        "--dim",
        "32",
        "--mlp-hidden",
        "64",
        "--optimizer",
        "adamw",
        "--lr",
        "0.003",
        "--weight-decay",
        "1",
        "--adam-beta2",
        "0.98",
        "--grad-clip",
        "1",
        "--label-smoothing",
        "0.1",
        "--init",
        "gpt2",
        "--steps",
        "12",
        "--batch-size",
        "64",
        "--probe-size",
        "64",
    ];
    let a = train_interrupted_and_resumed(tmp.path(), &args);

    run_ok(analyze_bin().arg(&a).args(["--quiet", "--device", "cpu"]));
    let layer = lintrace::tables::Table::read(&a.join("analysis/layer_metrics.parquet"), "layer_metrics").unwrap();
    for name in analyzers::registry::names().into_iter().filter(|n| !["performance", "mu"].contains(n)) {
        // residual_linear_fit is for ResNets: a transformer's sublayers are block_linear_fit's.
        if name != "residual_linear_fit" {
            assert!(rows_of(&layer, &[name]) > 0, "no {name} rows for the modular-addition transformer");
        }
    }
    let heads: Vec<String> = (0..4).map(|h| format!("transformer.h.0.attn.head{h}")).collect();
    assert_eq!(names_of(&layer, "attention", "attention_head"), heads.into_iter().collect());
    for (kind, name) in
        [("attention_sublayer", "transformer.h.0.attn"), ("mlp_sublayer", "transformer.h.0.mlp"), ("transformer_block", "transformer.h.0")]
    {
        assert_eq!(names_of(&layer, "block_linear_fit", kind), [name.to_string()].into_iter().collect(), "{kind}");
    }
    let model = lintrace::tables::Table::read(&a.join("analysis/model_metrics.parquet"), "model_metrics").unwrap();
    let (si, mi) = (model.column_index("surrogate").unwrap(), model.column_index("metric").unwrap());
    assert!(
        model.rows.iter().any(|r| r[si].as_str() == Some("linear") && r[mi].as_str() == Some("mu")),
        "no mu against the one-hot linear surrogate"
    );
    check_mu_against_its_definition(&a, &model);
}

/// Plug-in entropy in bits of the counts in `cells` (n samples), and the
/// same with Miller–Madow's (m − 1)/(2 n ln 2) for its m non-empty cells.
fn entropies(cells: &std::collections::HashMap<Vec<usize>, usize>, n: usize) -> (f64, f64) {
    let h: f64 = cells.values().map(|&c| c as f64 / n as f64).map(|p| -p * p.log2()).sum();
    (h, h + (cells.len() as f64 - 1.0) / (2.0 * n as f64 * std::f64::consts::LN_2))
}

/// The `mu` rows of a run of token data against docs/metrics.md's
/// definitions computed here: F = the checkpoint's argmax at every held-out
/// sample (a language model: every held-out position), S = the linear
/// surrogate's (a language model's: the bigram model's), Y = the label (the
/// next token); μ = I(F;Y) − I(F;Y|S) from the plug-in entropies, `mu_mm`
/// the same with each entropy Miller–Madow corrected.
fn check_mu_against_its_definition(run: &std::path::Path, model: &lintrace::tables::Table) {
    use std::collections::HashMap;
    let cfg = lintrace::run::RunManifest::read(run).unwrap().config;
    let data = lintrace::data::load(&cfg.data).unwrap();
    let vocab = data.vocab.unwrap();
    let t = data.test.sample_len;
    let y: Vec<usize> = (0..data.test.len()).flat_map(|i| data.test.labels(i).iter().map(|&v| v as usize)).collect();
    let n = y.len();
    let lm = data.test.targets > 1;
    let s = if lm {
        // The bigram model's prediction for each current token ...
        let bigram = lintrace::surrogate::linear::fit_bigram(&data.train, vocab).unwrap();
        let s = bigram.predict(&data.test.x, n);
        // ... which, where the training counts have a unique maximum, is
        // the most frequent next token.
        let mut counts = vec![vec![0usize; vocab]; vocab];
        for (&x, &next) in data.train.x.iter().zip(&data.train.y) {
            counts[x as usize][next as usize] += 1;
        }
        for (i, &tok) in data.test.x.iter().enumerate() {
            let row = &counts[tok as usize];
            let max = *row.iter().max().unwrap();
            if max > 0 && row.iter().filter(|&&c| c == max).count() == 1 {
                assert_eq!(row[s[i]], max, "bigram surrogate at held-out position {i}");
            }
        }
        s
    } else {
        // The one-hot logistic regression the analysis fitted (cached).
        let cache = std::env::temp_dir().join("lintrace-test-cache");
        lintrace::surrogate::linear::get(&data, &cache, true, &Device::Cpu).unwrap().predict(&data.test.x, n)
    };
    assert_eq!(s.len(), n);
    let (si, mi, ni, vi, sti) = (
        model.column_index("surrogate").unwrap(),
        model.column_index("metric").unwrap(),
        model.column_index("n_samples").unwrap(),
        model.column_index("value").unwrap(),
        model.column_index("step").unwrap(),
    );
    let mut steps: Vec<i64> = model.rows.iter().filter(|r| r[si].as_str() == Some("linear")).map(|r| r[sti].as_i64().unwrap()).collect();
    steps.sort();
    steps.dedup();
    assert!(steps.len() >= 2, "mu rows at steps {steps:?}");
    for step in steps {
        let ck = lintrace::checkpoint::load(&run.join("checkpoints").join(lintrace::checkpoint::file_name(step as u64)), None).unwrap();
        let net = ck.model(&Device::Cpu).unwrap();
        let x = Tensor::from_slice(&data.test.x, (data.test.len(), t), &Device::Cpu).unwrap();
        let f: Vec<usize> = net.logits(&x).unwrap().argmax(1).unwrap().to_vec1::<u32>().unwrap().into_iter().map(|v| v as usize).collect();
        assert_eq!(f.len(), n);
        let table = |keys: &[&[usize]]| {
            let mut m: HashMap<Vec<usize>, usize> = HashMap::new();
            for i in 0..n {
                *m.entry(keys.iter().map(|k| k[i]).collect()).or_default() += 1;
            }
            m
        };
        let h = |keys: &[&[usize]]| entropies(&table(keys), n);
        let (hf, hy, hs) = (h(&[&f]), h(&[&y]), h(&[&s]));
        let (hfy, hfs, hys, hfsy) = (h(&[&f, &y]), h(&[&f, &s]), h(&[&y, &s]), h(&[&f, &s, &y]));
        let i_f_y = hf.0 + hy.0 - hfy.0;
        let i_f_y_given_s = hfs.0 + hys.0 - hfsy.0 - hs.0;
        let mu = i_f_y - i_f_y_given_s;
        let mu_mm = hf.1 + hy.1 + hs.1 - hfy.1 - hfs.1 - hys.1 + hfsy.1;
        let frac = |a: &[usize], b: &[usize]| a.iter().zip(b).filter(|(p, q)| p == q).count() as f64 / n as f64;
        let want = [
            ("mu", mu),
            ("mu_mm", mu_mm),
            ("i_f_y", i_f_y),
            ("i_f_y_given_s", i_f_y_given_s),
            ("agreement", frac(&f, &s)),
            ("surrogate_accuracy", frac(&s, &y)),
            ("network_accuracy", frac(&f, &y)),
            ("n_cells_nonempty", table(&[&f, &s, &y]).len() as f64),
        ];
        for (metric, v) in want {
            let row = model
                .rows
                .iter()
                .find(|r| r[sti].as_i64() == Some(step) && r[si].as_str() == Some("linear") && r[mi].as_str() == Some(metric))
                .unwrap_or_else(|| panic!("no mu row {metric} at step {step}"));
            assert_eq!(row[ni].as_i64(), Some(n as i64), "{metric} at step {step}: n_samples");
            let got = row[vi].as_f64().unwrap_or_else(|| panic!("{metric} at step {step}: null"));
            // F comes from an f32 forward pass: near-tied logits are the only
            // possible difference, and there are none on this corpus.
            assert!((got - v).abs() <= 1e-9 * v.abs().max(1.0), "{metric} at step {step}: table {got}, definition {v}");
        }
    }
}

/// A small deterministic text: words from a fixed list in a seeded order,
/// with line breaks, so bigrams carry real structure.
fn small_corpus(chars: usize) -> String {
    let words = ["the", "king", "shall", "speak", "of", "love", "and", "war", "to", "thee", "my", "lord", "now"];
    let (mut s, mut state) = (String::new(), 7u64);
    while s.len() < chars {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        s.push_str(words[(state >> 33) as usize % words.len()]);
        s.push(if (state >> 20) % 9 == 0 { '\n' } else { ' ' });
    }
    s
}

#[test]
fn a_character_level_language_model_trains_resumes_and_is_analysed() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("corpus.txt");
    let corpus = small_corpus(20_000);
    std::fs::write(&text, &corpus).unwrap();
    // The held-out 10% in windows of 16 (ASCII: bytes are characters).
    let held_out = (corpus.len() - corpus.len() * 9 / 10 - 1) / 16 * 16;
    let args = [
        "--model",
        "gpt-char-tiny",
        "--activation",
        "gelu",
        "--dataset",
        "text",
        "--data-dir",
        text.to_str().unwrap(),
        "--context",
        "16",
        "--dim",
        "32",
        "--mlp-hidden",
        "64",
        "--optimizer",
        "adamw",
        "--lr",
        "0.003",
        "--steps",
        "12",
        "--batch-size",
        "16",
        "--probe-size",
        "100",
    ];
    let a = train_interrupted_and_resumed(tmp.path(), &args);
    // probe_size counts tokens: 100 → 7 windows of 16.
    let probe = lintrace::probe::load(&a.join("probe.safetensors")).unwrap();
    assert_eq!((probe.len(), probe.targets(), probe.labels.len()), (7, 16, 112));

    // --chunk-size 1: chunks of 32 tokens, 2 windows each, so the probe's 7
    // windows take 4 passes and every chunk's labels are sliced per position.
    run_ok(analyze_bin().arg(&a).args(["--quiet", "--device", "cpu", "--chunk-size", "1"]));
    let layer = lintrace::tables::Table::read(&a.join("analysis/layer_metrics.parquet"), "layer_metrics").unwrap();
    for name in
        analyzers::registry::names().into_iter().filter(|n| !["performance", "mu", "residual_linear_fit", "activation_regime"].contains(n))
    {
        assert!(rows_of(&layer, &[name]) > 0, "no {name} rows for the language model");
    }
    // Every pooled metric sees the 112 (window, position) rows.
    let (ni, ai) = (layer.column_index("n_probe").unwrap(), layer.column_index("analyzer").unwrap());
    assert!(layer.rows.iter().all(|r| r[ni].as_i64() == Some(112)), "n_probe is not the probe's token count");
    // 112 rows > 64 features: the Grams are kept in feature space; the
    // effective rank cannot exceed the 64 features.
    let (mi, vi) = (layer.column_index("metric").unwrap(), layer.column_index("value").unwrap());
    let ranks: Vec<f64> = layer
        .rows
        .iter()
        .filter(|r| r[ai].as_str() == Some("representation") && r[mi].as_str() == Some("effective_rank"))
        .filter_map(|r| r[vi].as_f64())
        .collect();
    assert!(!ranks.is_empty() && ranks.iter().all(|&r| (1.0..=64.0).contains(&r)), "{ranks:?}");
    assert_eq!(names_of(&layer, "attention", "attention_head").len(), 4);

    let model = lintrace::tables::Table::read(&a.join("analysis/model_metrics.parquet"), "model_metrics").unwrap();
    let (si, mi, ni, vi) = (
        model.column_index("surrogate").unwrap(),
        model.column_index("metric").unwrap(),
        model.column_index("n_samples").unwrap(),
        model.column_index("value").unwrap(),
    );
    let get = |metric: &str, surrogate: Option<&str>| -> Vec<(i64, f64)> {
        model
            .rows
            .iter()
            .filter(|r| r[mi].as_str() == Some(metric) && r[si].as_str() == surrogate)
            .map(|r| (r[ni].as_i64().unwrap(), r[vi].as_f64().unwrap_or(f64::NAN)))
            .collect()
    };
    // performance: next-token loss and accuracy over every probe position.
    assert!(get("loss", None).iter().all(|&(n, l)| n == 112 && l > 0.0));
    // mu against the bigram model, on every held-out token.
    let mu = get("mu_mm", Some("linear"));
    assert!(!mu.is_empty() && mu.iter().all(|&(n, _)| n == held_out as i64), "{mu:?} for {held_out} held-out tokens");
    let cells = get("n_cells_nonempty", Some("linear"));
    assert!(cells.iter().all(|&(_, c)| c >= 1.0 && c <= held_out as f64));
    // The bigram model learnt the corpus's structure (after "th" comes "e").
    let train_acc = get("surrogate_train_accuracy", Some("linear"));
    assert!(train_acc.iter().all(|&(_, a)| a > 0.3), "{train_acc:?}");
    // The values themselves, from their definitions.
    check_mu_against_its_definition(&a, &model);

    // One chunk (the default size) gives the numbers of four.
    let whole = tmp.path().join("whole");
    run_ok(std::process::Command::new("cp").arg("-r").arg(&a).arg(&whole));
    std::fs::remove_dir_all(whole.join("analysis")).unwrap();
    run_ok(analyze_bin().arg(&whole).args(["--quiet", "--device", "cpu", "--analyzers", "performance,unit_linear_fit"]));
    let other = lintrace::tables::Table::read(&whole.join("analysis/model_metrics.parquet"), "model_metrics").unwrap();
    let losses = |t: &lintrace::tables::Table| -> Vec<f64> {
        let (mi, vi) = (t.column_index("metric").unwrap(), t.column_index("value").unwrap());
        t.rows.iter().filter(|r| r[mi].as_str() == Some("loss")).map(|r| r[vi].as_f64().unwrap()).collect()
    };
    let (chunked, one) = (losses(&model), losses(&other));
    assert_eq!(chunked.len(), one.len());
    for (x, y) in chunked.iter().zip(&one) {
        assert!((x - y).abs() < 1e-6 * y.abs(), "loss {x} in chunks, {y} in one pass");
    }
}

#[test]
fn a_language_model_and_a_classifier_dataset_do_not_mix() {
    let tmp = tempfile::tempdir().unwrap();
    let o = train_bin()
        .args(["--model", "gpt-char-tiny", "--dataset", "digits", "--steps", "2", "--quiet", "--out"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("--dataset text") && e.lines().count() <= 2, "{e}");
    let text = tmp.path().join("bad.txt");
    std::fs::write(&text, [0x66u8, 0xff, 0xfe]).unwrap();
    let o = train_bin()
        .args(["--model", "gpt-char-tiny", "--dataset", "text", "--steps", "2", "--quiet", "--data-dir"])
        .arg(&text)
        .arg("--out")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("bad.txt") && e.contains("UTF-8") && e.lines().count() <= 2, "{e}");
}

#[test]
fn a_vit_trains_on_images_and_is_analysed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = train_bin();
    c.args(["--model", "vit-mini", "--dataset", "digits", "--dim", "16", "--heads", "2", "--mlp-hidden", "32", "--blocks", "2"])
        .args(["--activation", "gelu", "--optimizer", "adamw", "--lr", "0.003", "--steps", "6", "--batch-size", "32", "--probe-size", "32"])
        .args(["--quiet", "--name", "v", "--out"])
        .arg(tmp.path());
    run_ok(&mut c);
    let dir = tmp.path().join("v");
    run_ok(analyze_bin().arg(&dir).args([
        "--quiet",
        "--device",
        "cpu",
        "--analyzers",
        "unit_linear_fit,block_linear_fit,attention,linearized_agreement",
    ]));
    let layer = lintrace::tables::Table::read(&dir.join("analysis/layer_metrics.parquet"), "layer_metrics").unwrap();
    assert_eq!(
        names_of(&layer, "unit_linear_fit", "dense"),
        ["blocks.0.mlp.fc1", "blocks.1.mlp.fc1"].map(String::from).into_iter().collect()
    );
    assert_eq!(names_of(&layer, "attention", "attention_head").len(), 4);
    assert_eq!(names_of(&layer, "block_linear_fit", "transformer_block"), ["blocks.0", "blocks.1"].map(String::from).into_iter().collect());
}

#[test]
fn bad_transformer_specs_and_probes_are_refused_in_one_line() {
    let gpt = |extra: &str| {
        format!(
            r#"{{"spec_version":1,"kind":"gpt","input_shape":[4],"num_classes":5,"activation":"relu","depth":1,"mlp_hidden":8{extra}}}"#
        )
    };
    for (extra, words) in [
        (r#","vocab":5,"dim":10,"heads":3"#, "not divisible"),
        (r#","vocab":5,"dim":8,"heads":0"#, "must be positive"),
        (r#","vocab":6,"dim":8,"heads":2,"tied":true"#, "num_classes = vocab"),
        (r#","vocab":5,"dim":8,"heads":2,"dropout":1.5"#, "dropout"),
    ] {
        let text = gpt(extra);
        let err = ModelSpec::from_json(&text).err().unwrap_or_else(|| panic!("accepted {text}"));
        assert!(err.contains(words) && !err.contains('\n'), "{text}: {err}");
    }
    let vit = r#"{"spec_version":1,"kind":"vit","input_shape":[3,10,10],"num_classes":5,"activation":"gelu","patch":4,"dim":8,"depth":1,"heads":2,"mlp_hidden":8}"#;
    assert!(ModelSpec::from_json(vit).unwrap_err().contains("must divide"));
    let ok = ModelSpec::from_json(&gpt(r#","vocab":5,"dim":8,"heads":2"#)).unwrap();
    assert!(ok.check_inputs(&[0.0, 4.0, 1.0]).is_ok());
    for bad in [5.0, -1.0, 1.5, f32::NAN] {
        assert!(ok.check_inputs(&[0.0, bad]).unwrap_err().contains("not a token id"), "{bad}");
    }
}
