"""The pruning report: what each method keeps and throws away, for people to look at.

    python report.py --input OUTPUT --dataset_file_list LIST --output DIR \
        [--method NAME ...] [--fraction F ...] [--window J] [--epochs START:STOP] [--seed S] \
        [--flipped LIST.flipped.npy] [--data_root ROOT] [--accuracy CURVE.csv | METHOD:FRACTION=RUN ...] \
        [--projection-fraction F] [--dedup THRESHOLD] [--leakage THRESHOLD --val_file_list VAL_LIST] \
        [--embeddings FOLDER]

Writes DIR/index.html (opens from disk, no server, no network), the PNG figures beside
it and DIR/report.json (the numbers shown): first, which method at which fraction (a
generated reading that calls a gap a result only beyond the seed spread and says what to
run when it cannot tell; per method and fraction: images kept, smallest class share kept,
images drawn among ties, relabelled images kept, and with --accuracy the top-1 of
networks trained on the coresets beside the full data, and the curve when some method
was trained at two fractions); then the cost and the coreset's stability at the page's
own --window; then, each folded under a one-line summary: score histograms with each
fraction's cut,
per-class kept fractions (distribution and the hardest-hit classes), Spearman rank
correlation and kept-set overlap between methods, p(true label) over epochs (sampled
images, mean per score decile), the 16 highest- and lowest-scored images per method,
with --flipped the share of relabelled images each method keeps, and with embeddings in
the history (embed_{epoch}.npy) their PCA projection of at most 5,000 images, kept and
pruned in two colours per method (dynunc/report/projection.py); with --dedup the
near-duplicate groups get_coreset.py --dedup removes, with --leakage (and
--val_file_list) the validation images whose nearest training image is that close
(dynunc/report/duplicates.py). --embeddings FOLDER: those three read a pretrained model's
embeddings (embed.py) instead of the history's. Method flags as in
get_coreset.py. Bad input: exit code 2 and nothing written. See dynunc/report/page.py.
"""
import sys

from dynunc.report.page import main

if __name__ == "__main__":
    sys.exit(main())
