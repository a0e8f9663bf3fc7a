//! Every architecture against its own library's forward pass (PyTorch, torchvision, timm, nanoGPT, transformers) on fixtures those libraries wrote.

mod batchnorm;
mod cnn_batchnorm;
mod resnet;
mod vgg;
mod transformer;
mod huggingface;
mod model_properties;
mod checkpoint_roundtrip;
