//! A Hugging Face `config.json` read into lintrace's model spec
//! (`Arch::HfCausalLm`); the fields themselves are read by
//! `arch/hf/config.rs`, beside the architecture.

use crate::arch::hf::config::{activation_of, arch_of};
use crate::spec::{Arch, ModelSpec, SPEC_VERSION};
use anyhow::{anyhow, Context, Result};
use serde_json::Value;
use std::path::Path;

/// The model spec of the `config.json` at `path` for windows of `context`
/// tokens. Errors name the file.
pub fn spec_of(path: &Path, context: usize) -> Result<ModelSpec> {
    let inner = || -> Result<ModelSpec> {
        let text = std::fs::read_to_string(path).context("cannot read")?;
        let config: Value = serde_json::from_str(&text).map_err(|e| anyhow!("not valid JSON ({e})"))?;
        spec_from_value(&config, context)
    };
    inner().with_context(|| format!("{}", path.display()))
}

pub fn spec_from_value(config: &Value, context: usize) -> Result<ModelSpec> {
    let arch = arch_of(config)?;
    let spec = ModelSpec {
        spec_version: SPEC_VERSION,
        input_shape: vec![context],
        num_classes: arch.vocab,
        activation: activation_of(config, arch.family)?,
        tap_activations: None,
        leaky_relu_slope: 0.01,
        linear_taps: Default::default(),
        arch: Arch::HfCausalLm(arch),
    };
    spec.validate().map_err(anyhow::Error::msg)?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::hf::{Positions, Residual};
    use crate::nn::Activation;
    use serde_json::json;

    #[test]
    fn pythia_config_in_both_spellings() {
        let v4 = json!({"model_type": "gpt_neox", "vocab_size": 50304, "hidden_size": 768, "num_hidden_layers": 12,
            "num_attention_heads": 12, "intermediate_size": 3072, "rotary_pct": 0.25, "rotary_emb_base": 10000,
            "max_position_embeddings": 2048, "use_parallel_residual": true, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
            "tie_word_embeddings": false, "rope_scaling": null});
        let v5 = json!({"model_type": "gpt_neox", "vocab_size": 50304, "hidden_size": 768, "num_hidden_layers": 12,
            "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 2048,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
            "use_parallel_residual": true, "hidden_act": "gelu", "layer_norm_eps": 1e-5, "tie_word_embeddings": false});
        let a = spec_from_value(&v4, 512).unwrap();
        let b = spec_from_value(&v5, 512).unwrap();
        assert_eq!(a, b);
        let Arch::HfCausalLm(h) = &a.arch else { panic!() };
        assert_eq!(h.positions, Positions::Rotary { theta: 10000.0, dims: 16, max: 2048 });
        assert_eq!((h.residual, a.activation, a.num_classes), (Residual::Parallel, Activation::Gelu, 50304));
        assert_eq!(a.num_taps(), 12);
        assert_eq!(a.num_parameters(), 162_322_944);
    }

    #[test]
    fn unsupported_fields_are_named() {
        let cfg = |extra: Value| {
            let mut c = json!({"model_type": "llama", "vocab_size": 32, "hidden_size": 8, "num_hidden_layers": 1,
                "num_attention_heads": 2, "intermediate_size": 16});
            c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            spec_from_value(&c, 4).map(|_| ()).unwrap_err().to_string()
        };
        assert!(cfg(json!({"rope_scaling": {"rope_type": "linear", "factor": 2.0}})).contains("'rope_scaling'"));
        assert!(cfg(json!({"model_type": "mistral"})).contains("model_type 'mistral' is not supported (lintrace reads gpt_neox, gpt2"));
        assert!(cfg(json!({"hidden_act": "relu2"})).contains("'hidden_act' = \"relu2\""));
        assert!(cfg(json!({"num_key_value_heads": 3})).contains("do not share"));
        assert!(cfg(json!({"sliding_window": 4096})).contains("'sliding_window'"));
        assert!(cfg(json!({"vocab_size": "many"})).contains("'vocab_size' must be a non-negative integer"));
        assert!(spec_from_value(&json!({"model_type": "llama"}), 4).unwrap_err().to_string().contains("'hidden_size' is missing"));
    }
}
