"""dynunc: dataset pruning by dynamic uncertainty, as a library.

    from dynunc import Recorder, select
    rec = Recorder(out_dir, num_samples=N)        # in any training loop: update(), end_epoch()
    kept = select(out_dir, method="dynunc", fraction=0.7, window=10)

Floor modules, imported by every wing: `history` (the on-disk format of a produce run's
records), `ranking` (ordering and cutting scores) and `uncertainty` (the dynamic
uncertainty arithmetic), `io` (atomic writes), `distributed` (the collectives, no-ops in
one process), `interrupt`, `metrics_log` and `lists` (file lists: parsing, the index and
its fingerprint, copying kept lines). Wings: `training` (hooks a training loop calls),
`scoring` (the methods, selection, kNN, dedup) and `report` (the decision page). A wing
imports the floor, `report` also imports `scoring`; `training` imports neither `scoring`
nor `report`. `integrations` (Lightning, Hugging Face, timm) import `training` only, each
when its framework is installed.

`Recorder` and `select` are loaded on first use, so that importing a training module does
not load the scoring stack."""

__all__ = ["Recorder", "RecorderError", "select"]


def __getattr__(name):
    if name in ("Recorder", "RecorderError"):
        from dynunc.training import recorder

        return getattr(recorder, name)
    if name == "select":
        from dynunc.scoring.select import select

        return select
    raise AttributeError(f"module 'dynunc' has no attribute {name!r}")
