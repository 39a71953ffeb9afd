"""The recorder in other people's training loops: `lightning` (a PyTorch Lightning
callback), `huggingface` (a Hugging Face Trainer callback) and `timm` (the lines for
timm's train.py: an index queue on its loader). Each module imports its framework, so
import it only where that framework is installed; each imports dynunc.training only."""
