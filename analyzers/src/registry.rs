//! The registry: every analyzer lintrace knows, by name.

use crate::activation_regime::ActivationRegime;
use crate::analyzer::Analyzer;
use crate::attention::Attention;
use crate::block_linear_fit::BlockLinearFit;
use crate::cka_time::CkaTime;
use crate::linearized_agreement::LinearizedAgreement;
use crate::mu::Mu;
use crate::performance::Performance;
use crate::representation::Representation;
use crate::residual_linear_fit::ResidualLinearFit;
use crate::unit_linear_fit::UnitLinearFit;
use crate::weights::Weights;

/// Every registered analyzer, in the order they are listed and run.
pub fn all() -> Vec<Box<dyn Analyzer>> {
    vec![
        Box::new(Performance),
        Box::new(ActivationRegime),
        Box::new(UnitLinearFit),
        Box::new(BlockLinearFit),
        Box::new(ResidualLinearFit),
        Box::new(LinearizedAgreement),
        Box::new(CkaTime),
        Box::new(Weights),
        Box::new(Representation),
        Box::new(Attention),
        Box::new(Mu),
    ]
}

pub fn names() -> Vec<&'static str> {
    all().iter().map(|a| a.name()).collect()
}

pub fn by_name(name: &str) -> Option<Box<dyn Analyzer>> {
    all().into_iter().find(|a| a.name() == name)
}
