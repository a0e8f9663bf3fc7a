//! Every architecture against its own library's forward pass (PyTorch, torchvision, timm, nanoGPT, transformers) on fixtures those libraries wrote.

mod batchnorm;
mod checkpoint_roundtrip;
mod cnn_batchnorm;
mod huggingface;
mod model_properties;
mod resnet;
mod transformer;
mod vgg;
