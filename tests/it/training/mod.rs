//! Training: the optimizers against PyTorch, byte-identical reruns, the datasets.

mod optim;
mod reproducibility;
mod data_sources;
