"""Everything that runs inside a TorchServe worker, copied into every archive as this folder: the TorchServe-free
request path (``classifier.ImageClassifier``: decode -> group -> infer -> encode), the VGG heads and their
conversion (``vgg_models``), weights, options and errors, and the TorchServe plumbing around them (``handler``)."""
