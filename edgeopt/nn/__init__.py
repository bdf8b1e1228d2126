"""Public PyTorch building blocks (layers, blocks) that the zoo models and the compression passes are built from."""
