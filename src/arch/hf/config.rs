//! A Hugging Face `config.json` read into the architecture's fields
//! ([`HfArch`]) and its MLP's activation. Every field the forward pass depends on is read,
//! in both the transformers 4.x and 5.x spellings; a field lintrace does not
//! implement (a `rope_scaling`, a sliding window, cross-attention, ...) is
//! refused with one line naming it, so nothing is silently approximated.

use super::{Family, HfArch, Norm, Positions, Residual};
use crate::nn::Activation;
use anyhow::{anyhow, bail, Result};
use serde_json::{Map, Value};

/// The `model_type`s lintrace reads, for error messages.
pub fn supported() -> String {
    Family::ALL.iter().map(|f| f.model_type()).collect::<Vec<_>>().join(", ")
}

/// The fields of one `config.json`, with typed getters whose errors name
/// the field.
struct Fields<'a> {
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| anyhow!("'{key}' must be a non-negative integer, got {v}")),
        }
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?.ok_or_else(|| anyhow!("'{key}' is missing"))
    }

    fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| anyhow!("'{key}' must be a number, got {v}")),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| anyhow!("'{key}' must be true or false, got {v}")),
        }
    }

    fn str_opt(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| anyhow!("'{key}' must be a string, got {v}")),
        }
    }

    /// The first of `keys` present (two spellings of one field).
    fn first_f64(&self, keys: &[&str]) -> Result<Option<f64>> {
        for k in keys {
            if let Some(v) = self.f64_opt(k)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// Refuses a field whose value is anything but the default lintrace
    /// implements (`None` = absent or null).
    fn refuse_unless(&self, key: &str, ok: impl Fn(&Value) -> bool, what: &str) -> Result<()> {
        match self.get(key) {
            Some(v) if !ok(v) => bail!("'{key}' = {v} is not supported (lintrace implements {what})"),
            _ => Ok(()),
        }
    }
}

/// The MLP nonlinearity named by `hidden_act` / `activation_function`.
fn activation(name: &str, key: &str) -> Result<Activation> {
    Ok(match name {
        "gelu" => Activation::Gelu,
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
        "silu" | "swish" => Activation::Silu,
        "relu" => Activation::Relu,
        "tanh" => Activation::Tanh,
        other => bail!("'{key}' = \"{other}\" is not supported (lintrace implements gelu, gelu_new, gelu_pytorch_tanh, silu, relu, tanh)"),
    })
}

/// Rotary parameters: (base, fraction of each head's dimensions), from
/// transformers 5.x's `rope_parameters` or 4.x's top-level fields.
fn rotary(f: &Fields<'_>, default_fraction: f64, theta_keys: &[&str]) -> Result<(f64, f64)> {
    let scaling_ok = |v: &Value| match v.get("rope_type").or_else(|| v.get("type")).and_then(Value::as_str) {
        None | Some("default") => true,
        Some(_) => false,
    };
    f.refuse_unless("rope_scaling", scaling_ok, "plain rotary embeddings (rope_type \"default\", no scaling)")?;
    if let Some(p) = f.get("rope_parameters") {
        let p = p.as_object().ok_or_else(|| anyhow!("'rope_parameters' must be an object, got {p}"))?;
        let inner = Fields { map: p };
        inner.refuse_unless(
            "rope_type",
            |v| v.as_str() == Some("default"),
            "plain rotary embeddings (rope_type \"default\", no scaling)",
        )?;
        let theta = inner.f64_opt("rope_theta")?.ok_or_else(|| anyhow!("'rope_parameters.rope_theta' is missing"))?;
        let fraction = inner.f64_opt("partial_rotary_factor")?.or(f.first_f64(&["partial_rotary_factor", "rotary_pct"])?);
        return Ok((theta, fraction.unwrap_or(default_fraction)));
    }
    let theta = f.first_f64(theta_keys)?.unwrap_or(10000.0);
    let fraction = f.first_f64(&["partial_rotary_factor", "rotary_pct"])?.unwrap_or(default_fraction);
    Ok((theta, fraction))
}

/// Rotary dimensions per head: `int(head_dim · fraction)`, as transformers
/// truncates it.
fn rotary_dims(head_dim: usize, fraction: f64) -> Result<usize> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        bail!("the rotary fraction {fraction} must be in (0, 1]");
    }
    Ok((head_dim as f64 * fraction) as usize)
}

/// The architecture a `config.json` describes.
pub fn arch_of(config: &Value) -> Result<HfArch> {
    let map = config.as_object().ok_or_else(|| anyhow!("not a JSON object"))?;
    let f = Fields { map };
    let model_type = f.str_opt("model_type")?.ok_or_else(|| anyhow!("'model_type' is missing (lintrace reads {})", supported()))?;
    let family =
        Family::parse(model_type).ok_or_else(|| anyhow!("model_type '{model_type}' is not supported (lintrace reads {})", supported()))?;
    f.refuse_unless("is_encoder_decoder", |v| v == &Value::Bool(false), "decoder-only models")?;
    f.refuse_unless("add_cross_attention", |v| v == &Value::Bool(false), "decoder-only models without cross-attention")?;
    f.refuse_unless("sliding_window", |v| v.is_null(), "full causal attention")?;
    f.refuse_unless("use_sliding_window", |v| v == &Value::Bool(false), "full causal attention")?;
    // Fused projections split the model width evenly over the heads.
    let even = |dim: usize, heads: usize, keys: &str| -> Result<usize> {
        if heads == 0 || dim % heads != 0 {
            bail!("{keys} = {dim}, {heads}: the width does not split evenly over the heads");
        }
        Ok(dim / heads)
    };
    match family {
        Family::GptNeox => {
            let dim = f.usize("hidden_size")?;
            let heads = f.usize("num_attention_heads")?;
            let head_dim = even(dim, heads, "hidden_size, num_attention_heads")?;
            let (theta, fraction) = rotary(&f, 1.0, &["rotary_emb_base", "rope_theta"])?;
            Ok(HfArch {
                family,
                vocab: f.usize("vocab_size")?,
                dim,
                depth: f.usize("num_hidden_layers")?,
                heads,
                kv_heads: heads,
                head_dim,
                mlp_hidden: f.usize("intermediate_size")?,
                norm: Norm::LayerNorm { eps: f.f64_opt("layer_norm_eps")?.unwrap_or(1e-5) },
                residual: if f.bool_or("use_parallel_residual", true)? { Residual::Parallel } else { Residual::PreNorm },
                positions: Positions::Rotary {
                    theta,
                    dims: rotary_dims(head_dim, fraction)?,
                    max: f.usize_opt("max_position_embeddings")?.unwrap_or(2048),
                },
                gated: false,
                attention_bias: f.bool_or("attention_bias", true)?,
                mlp_bias: true,
                qk_norm: false,
                clip_qkv: None,
                scale_by_inverse_layer: false,
                tied: f.bool_or("tie_word_embeddings", false)?,
            })
        }
        Family::Gpt2 => {
            let dim = f.usize("n_embd")?;
            let heads = f.usize("n_head")?;
            f.refuse_unless("scale_attn_weights", |v| v == &Value::Bool(true), "scaled attention (scale_attn_weights true)")?;
            // reorder_and_upcast_attn computes the same scores in float32
            // with the scaling moved before the product: in float32 (all of
            // lintrace's arithmetic) it is the same function, so it is read,
            // not refused.
            f.bool_or("reorder_and_upcast_attn", false)?;
            Ok(HfArch {
                family,
                vocab: f.usize("vocab_size")?,
                dim,
                depth: f.usize("n_layer")?,
                heads,
                kv_heads: heads,
                head_dim: even(dim, heads, "n_embd, n_head")?,
                mlp_hidden: f.usize_opt("n_inner")?.unwrap_or(4 * dim),
                norm: Norm::LayerNorm { eps: f.f64_opt("layer_norm_epsilon")?.unwrap_or(1e-5) },
                residual: Residual::PreNorm,
                positions: Positions::Learned { max: f.usize_opt("n_positions")?.unwrap_or(1024) },
                gated: false,
                attention_bias: true,
                mlp_bias: true,
                qk_norm: false,
                clip_qkv: None,
                scale_by_inverse_layer: f.bool_or("scale_attn_by_inverse_layer_idx", false)?,
                tied: f.bool_or("tie_word_embeddings", true)?,
            })
        }
        Family::Llama | Family::Olmo | Family::Olmo2 => {
            let dim = f.usize("hidden_size")?;
            let heads = f.usize("num_attention_heads")?;
            let head_dim = f.usize_opt("head_dim")?.unwrap_or(dim / heads.max(1));
            let (theta, fraction) = rotary(&f, 1.0, &["rope_theta"])?;
            let norm = match family {
                // OlmoLayerNorm: F.layer_norm without parameters, eps 1e-5.
                Family::Olmo => Norm::LayerNormNoAffine { eps: 1e-5 },
                _ => Norm::RmsNorm { eps: f.f64_opt("rms_norm_eps")?.unwrap_or(1e-6) },
            };
            Ok(HfArch {
                family,
                vocab: f.usize("vocab_size")?,
                dim,
                depth: f.usize("num_hidden_layers")?,
                heads,
                kv_heads: f.usize_opt("num_key_value_heads")?.unwrap_or(heads),
                head_dim,
                mlp_hidden: f.usize("intermediate_size")?,
                norm,
                residual: if family == Family::Olmo2 { Residual::PostNorm } else { Residual::PreNorm },
                positions: Positions::Rotary {
                    theta,
                    dims: rotary_dims(head_dim, fraction)?,
                    max: f.usize_opt("max_position_embeddings")?.unwrap_or(2048),
                },
                gated: true,
                attention_bias: f.bool_or("attention_bias", false)?,
                mlp_bias: f.bool_or("mlp_bias", false)?,
                qk_norm: family == Family::Olmo2,
                clip_qkv: if family == Family::Olmo2 { None } else { f.f64_opt("clip_qkv")? },
                scale_by_inverse_layer: false,
                tied: f.bool_or("tie_word_embeddings", false)?,
            })
        }
    }
}

/// The MLP activation of a `config.json`.
pub fn activation_of(config: &Value, family: Family) -> Result<Activation> {
    let f = Fields { map: config.as_object().ok_or_else(|| anyhow!("not a JSON object"))? };
    let key = if family == Family::Gpt2 { "activation_function" } else { "hidden_act" };
    let default = match family {
        Family::Gpt2 => "gelu_new",
        Family::GptNeox => "gelu",
        _ => "silu",
    };
    activation(f.str_opt(key)?.unwrap_or(default), key)
}
