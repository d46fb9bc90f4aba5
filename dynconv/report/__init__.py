"""`dynconv report`: the seed's Tables 1-3 rebuilt from MLflow alone, with intervals and paired tests.

Inputs: per study in the chosen experiments, its best complete evaluation run (`dynconv.role=evaluation`,
FINISHED, the lowest `dynconv.rank`: the study's best trial with a checkpoint; the newest of equals),
its study's `spec.yaml` (which model, which stem) and its artifacts (`evaluation.json`,
`predictions/predictions_<S>.npz`). No YAML file and no checkpoint is read.

Which study fills which column: by the study spec's `model.name` and `model.args.stem` (default
"imagenet"), the most recently started study of each kind (never the best on the test set: choosing
by test accuracy would bias the comparison). Missing kinds are printed as "not run" with the spec that
produces them; nothing crashes on a partial store.

Honesty rules:

* Every accuracy carries a 95 % Wilson interval; with 450 test images it is about ±4.6 points.
* Two models are compared on RGB with McNemar's test, and only when they were evaluated on the same
  test images (same test-set id: file list and labels, and identical label vectors); results on
  different test sets are grouped into separate sections and never paired.
* Table 3's "accuracy as % of ResNet-34" has a paired bootstrap interval, and the seed's "≥ 90 %"
  target is judged met / not met / inconclusive from that interval, not from the point estimate.

Outputs in `--out`: `report.md`, `table1.csv`, `table2.csv`, `table3.csv`, `significance.csv`,
`evaluations.csv`, `pareto.csv`, `pareto.png`, `table1_accuracy.png`, `robustness.csv`,
`robustness.png` (suffixed `_<test set>` when the store holds evaluations on more than one test set).

Modules: `records` (evaluation runs read through `dynconv.tracking`), `roles` (which study fills which
column), `compare` (paired McNemar tests), `format` (cells, markdown, CSV), `tables` (Tables 1-3, one
function each), `robustness` (all models on all subsets; the three arms of issue 14 with per-subset
McNemar tests and the attribution sentence), `render` (sections, Pareto front, overview,
`write_report`; the CLI calls `dynconv.report.render.write_report`). Nothing here imports `mlflow`.
"""
