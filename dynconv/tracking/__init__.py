"""Everything MLflow, and nothing outside this package imports `mlflow`. Import what you need from the
module that holds it:

- `store`: the tracking store itself (URI schemes, is it there, does it answer, may a study write to
  it), the client, the errors a store call raises.
- `layout`: tag and artifact names, experiments, and writing runs (parent and child runs, params,
  metrics, tags, artifacts, run status).
- `find`: runs by id or filter; a study's parent run (one name, one study run) and its trials
  (`TrialInfo`); metric histories.
- `artifacts`: reading back a trial's checkpoint, a study's spec, YAML/JSON files, per-image predictions.
- `evaluations`: an evaluation's run, metrics, tables and plots (it imports `dynconv.evaluation`'s
  result types, which a study driver needs only at its end).
- `retry`: calls retried while the store is busy (sqlite locks, a saturated server), and writes queued
  off the caller's thread while it is unreachable (the study driver's recorder).
- `registry`: a study's champion in the Model Registry: the served model logged into a run (loadable
  without dynconv), its registered version, the `champion` / `candidate` alias, a version read back.

`dynconv ui` (the MLflow server as a child process) is a command of `dynconv.cli`.

This package imports nothing from `dynconv.tune`, `dynconv.train`, `dynconv.report` or `dynconv.rerun`.
"""
