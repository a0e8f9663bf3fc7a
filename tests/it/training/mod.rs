//! Training: the optimizers against PyTorch, byte-identical reruns, the datasets.

mod data_sources;
mod optim;
mod reproducibility;
