"""The pipeline: from a spec to a results folder (fflab.results gives its layout).

- ``folders``: where a run's and an experiment's files are, the spec file, stored
  representations and weights.
- ``train``: train one run, evaluate it on the test set, store its metrics,
  representations and weights.
- ``documents``: the registry of a run's analysis documents (``RUN_DOCUMENTS``),
  computing them for one run, and the run's summary record.
- ``paper_analyses``: the paper's per-run analyses (ensembles, shared units,
  weight statistics), registered in ``documents``.
- ``paper_figures``: one recipe per figure of the paper, in a list.
- ``experiment``: a whole experiment in one process, the aggregation into tables,
  figures and results.json, re-analysis, and the comparison with the paper.

The science modules (data, spec, models, analysis, figures) are pure; this is
the edge where files are read and written. The CLI calls
``experiment.run_experiment``; the service's workers call
``experiment.execute_run`` per run and ``experiment.aggregate`` once the runs
are done, on the same folder layout.
"""
