"""Train and, every epoch, record for every training sample the softmax probability of
its true label on an un-augmented view (OUTPUT/pred_prob_history/), for get_coreset.py.

    torchrun --nproc_per_node=8 main_and_produce.py --config configs/swin-tiny-1k.yaml \
        --output OUT [--pretrain CKPT] [--opts KEY VALUE ...]

The same program as main.py, with the prediction recorder switched on.
"""
import sys

from main import cli

if __name__ == "__main__":
    sys.exit(cli(produce=True))
