//! Optimizers, written out so that their exact update rules are visible:
//! they follow PyTorch's `SGD` (with and without momentum), `Adam` (L2 weight
//! decay added to the gradient) and `AdamW` (decoupled weight decay).

pub use crate::config::OptimizerKind;
use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

pub struct Optimizer {
    kind: OptimizerKind,
    vars: Vec<Var>,
    weight_decay: f64,
    /// AdamW: whether each variable is decayed (not biases, norms or
    /// embeddings; the other optimizers decay every variable, as PyTorch
    /// does when given one parameter group).
    decay: Vec<bool>,
    momentum: f64,
    betas: (f64, f64),
    eps: f64,
    /// Momentum buffers, or Adam's first moments.
    m: Vec<Option<Tensor>>,
    /// Adam's second moments.
    v: Vec<Option<Tensor>>,
    t: i32,
}

impl Optimizer {
    pub fn new(kind: OptimizerKind, vars: Vec<Var>, weight_decay: f64, momentum: f64) -> Self {
        let n = vars.len();
        Optimizer {
            kind,
            vars,
            weight_decay,
            decay: vec![true; n],
            momentum,
            betas: (0.9, 0.999),
            eps: 1e-8,
            m: vec![None; n],
            v: vec![None; n],
            t: 0,
        }
    }

    /// Adam's β₁, β₂.
    pub fn with_betas(mut self, b1: f64, b2: f64) -> Self {
        self.betas = (b1, b2);
        self
    }

    /// Which variables AdamW decays (`decay[i]` for `vars[i]`).
    pub fn with_decay_mask(mut self, decay: Vec<bool>) -> Self {
        assert_eq!(decay.len(), self.vars.len(), "one decay flag per variable");
        self.decay = decay;
        self
    }

    /// The buffers by parameter name (`names[i]` is `vars[i]`'s), for the
    /// train state file.
    pub fn buffers(&self, names: &[String]) -> crate::train::state::Buffers {
        let mut b = crate::train::state::Buffers::default();
        for (i, name) in names.iter().enumerate() {
            if let Some(Some(m)) = self.m.get(i) {
                b.m.insert(name.clone(), m.clone());
            }
            if let Some(Some(v)) = self.v.get(i) {
                b.v.insert(name.clone(), v.clone());
            }
        }
        b
    }

    pub fn updates_taken(&self) -> i32 {
        self.t
    }

    /// Puts back buffers saved by [`Optimizer::buffers`] after `t` updates.
    pub fn restore(&mut self, names: &[String], mut buffers: crate::train::state::Buffers, t: i32) {
        for (i, name) in names.iter().enumerate() {
            self.m[i] = buffers.m.remove(name);
            self.v[i] = buffers.v.remove(name);
        }
        self.t = t;
    }

    /// The global L2 norm of the gradients of every variable.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sq = 0.0;
        for var in &self.vars {
            if let Some(g) = grads.get(var) {
                sq += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            }
        }
        Ok(sq.sqrt())
    }

    /// The variables this optimizer updates, in order.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// One update with learning rate `lr`; every gradient is multiplied by
    /// `grad_scale` first (gradient clipping).
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.t += 1;
        let (b1, b2) = self.betas;
        for (i, var) in self.vars.iter().enumerate() {
            // Detached, so that momentum and Adam buffers built from it do not
            // chain every step's autograd graph (and its activations) together.
            let Some(g) = grads.get(var).map(|g| g.detach()) else { continue };
            let g = if grad_scale != 1.0 { (g * grad_scale)? } else { g };
            let p = var.as_tensor().detach();
            let wd = if self.kind == OptimizerKind::Adamw && !self.decay[i] { 0.0 } else { self.weight_decay };
            // L2 decay enters the gradient for all but AdamW.
            let g = if wd != 0.0 && self.kind != OptimizerKind::Adamw { (g + (&p * wd)?)? } else { g };
            let new = match self.kind {
                OptimizerKind::Sgd => (&p - (&g * lr)?)?,
                OptimizerKind::Momentum => {
                    let buf = match &self.m[i] {
                        Some(b) => ((b * self.momentum)? + &g)?,
                        None => g.clone(),
                    };
                    let new = (&p - (&buf * lr)?)?;
                    self.m[i] = Some(buf);
                    new
                }
                OptimizerKind::Adam | OptimizerKind::Adamw => {
                    let p = if self.kind == OptimizerKind::Adamw && wd != 0.0 { (&p * (1.0 - lr * wd))? } else { p };
                    let m = match &self.m[i] {
                        Some(m) => ((m * b1)? + (&g * (1.0 - b1))?)?,
                        None => (&g * (1.0 - b1))?,
                    };
                    let v = match &self.v[i] {
                        Some(v) => ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?,
                        None => (g.sqr()? * (1.0 - b2))?,
                    };
                    let m_hat = (&m / (1.0 - b1.powi(self.t)))?;
                    let v_hat = (&v / (1.0 - b2.powi(self.t)))?;
                    let new = (&p - ((m_hat / (v_hat.sqrt()? + self.eps)?)? * lr)?)?;
                    self.m[i] = Some(m);
                    self.v[i] = Some(v);
                    new
                }
            };
            var.set(&new)?;
        }
        Ok(())
    }
}
