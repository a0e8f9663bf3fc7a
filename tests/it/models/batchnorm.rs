//! candle's BatchNorm against PyTorch's numbers (fixtures/make_batchnorm.py):
//! a train-mode step (batch statistics, running statistics updated with
//! PyTorch's momentum and unbiased variance, gradients through the batch
//! statistics) and eval mode (running statistics); and the gradients against
//! finite differences. The groundwork for the BatchNorm networks (CNN-BN, ResNets).

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{BatchNorm, ModuleT};

fn fixture() -> std::collections::HashMap<String, Tensor> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/batchnorm/bn.safetensors");
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    let a: Vec<f32> = a.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap();
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max)
}

#[test]
fn candle_batchnorm_matches_pytorch_in_training_and_evaluation() {
    let f = fixture();
    for name in ["bn2d", "bn1d"] {
        let t = |k: &str| f[&format!("{name}.{k}")].clone();
        let c = t("weight").dim(0).unwrap();
        let (w, b) = (Var::from_tensor(&t("weight")).unwrap(), Var::from_tensor(&t("bias")).unwrap());
        let bn =
            BatchNorm::new_with_momentum(c, t("running_mean0"), t("running_var0"), w.as_tensor().clone(), b.as_tensor().clone(), 1e-5, 0.1)
                .unwrap();
        let x = Var::from_tensor(&t("x")).unwrap();
        let y = bn.forward_t(x.as_tensor(), true).unwrap();
        assert!(max_diff(&y, &t("y_train")) < 1e-5, "{name}: train output {}", max_diff(&y, &t("y_train")));
        assert!(max_diff(bn.running_mean(), &t("running_mean1")) < 1e-6, "{name}: running mean");
        assert!(max_diff(bn.running_var(), &t("running_var1")) < 1e-5, "{name}: running variance (unbiased?)");
        let grads = (&y * &t("g")).unwrap().sum_all().unwrap().backward().unwrap();
        for (what, var, want) in [("x", &x, "grad_x"), ("weight", &w, "grad_weight"), ("bias", &b, "grad_bias")] {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient for {what}"));
            assert!(max_diff(g, &t(want)) < 1e-4, "{name}: gradient of {what} off by {}", max_diff(g, &t(want)));
        }
        let y = bn.forward_t(&t("x"), false).unwrap();
        assert!(max_diff(&y, &t("y_eval")) < 1e-5, "{name}: eval output {}", max_diff(&y, &t("y_eval")));
    }
}

#[test]
fn batchnorm_gradients_match_finite_differences() {
    let f = fixture();
    let t = |k: &str| f[&format!("bn2d.{k}")].to_dtype(DType::F64).unwrap();
    let c = 3;
    let loss = |x: &Tensor, w: &Tensor| -> f64 {
        let bn = BatchNorm::new(c, t("running_mean0"), t("running_var0"), w.clone(), t("bias"), 1e-5).unwrap();
        (bn.forward_t(x, true).unwrap() * t("g")).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
    };
    let x = Var::from_tensor(&t("x")).unwrap();
    let w = Var::from_tensor(&t("weight")).unwrap();
    let bn = BatchNorm::new(c, t("running_mean0"), t("running_var0"), w.as_tensor().clone(), t("bias"), 1e-5).unwrap();
    let grads = (bn.forward_t(x.as_tensor(), true).unwrap() * t("g")).unwrap().sum_all().unwrap().backward().unwrap();
    let (gx, gw): (Vec<f64>, Vec<f64>) = (
        grads.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap(),
        grads.get(w.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap(),
    );
    let h = 1e-5;
    let bump = |base: &Tensor, i: usize, d: f64| {
        let mut v: Vec<f64> = base.flatten_all().unwrap().to_vec1().unwrap();
        v[i] += d;
        Tensor::from_vec(v, base.dims(), &Device::Cpu).unwrap()
    };
    for i in [0, 7, 40, 99] {
        let fd = (loss(&bump(&t("x"), i, h), &t("weight")) - loss(&bump(&t("x"), i, -h), &t("weight"))) / (2.0 * h);
        assert!((fd - gx[i]).abs() < 1e-6 * fd.abs().max(1.0), "x[{i}]: autograd {} vs finite difference {fd}", gx[i]);
    }
    for i in 0..c {
        let fd = (loss(&t("x"), &bump(&t("weight"), i, h)) - loss(&t("x"), &bump(&t("weight"), i, -h))) / (2.0 * h);
        assert!((fd - gw[i]).abs() < 1e-6 * fd.abs().max(1.0), "weight[{i}]: autograd {} vs finite difference {fd}", gw[i]);
    }
}
