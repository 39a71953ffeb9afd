"""dynunc: dataset pruning by dynamic uncertainty, as a library.

Floor modules, imported by every wing: `history` (the on-disk format of a produce run's
records), `ranking` (ordering and cutting scores) and `uncertainty` (the dynamic
uncertainty arithmetic), `io` (atomic writes), `distributed` (the collectives, no-ops in
one process), `interrupt`, `metrics_log` and `lists` (file lists: parsing, the index and
its fingerprint, copying kept lines). Wings: `training` (hooks a training loop calls), `scoring` (the
methods, selection, kNN, dedup) and `report` (the decision page). A wing imports the floor,
`report` also imports `scoring`; `training` imports neither `scoring` nor `report`."""
