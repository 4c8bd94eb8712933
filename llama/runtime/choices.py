"""The names users choose a device and a quantization method by, apart from the code that acts on them,
so that the command-line front ends can list them in --help without importing torch."""

DEVICE_CHOICES = ("cpu", "cuda", "cuda:N", "mps")
METHODS = ("int8", "int4")  # weight-only quantization (llama.kernels.formats, llama.layers.quantized)
