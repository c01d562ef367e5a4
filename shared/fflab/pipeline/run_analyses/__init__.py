"""The per-run analyses beyond the paper, one module each.

Each module is its analysis's one home: its versioned document (a pydantic
model, whose JSON Schema is committed under fflab/schemas/), the pipeline step
that computes it from a trained run (``analyse``, calling the pure functions
over arrays of ``fflab.analysis``), its figure recipe if it draws one, and its
registry entry ``ANALYSIS`` (``fflab.pipeline.run_document.RunAnalysis``: name,
descriptions, the fields holding its per-layer entries). Listed in
``fflab.pipeline.documents.RUN_DOCUMENTS``, an analysis gets everything else from
there: it runs after training, its figure is drawn with the experiment's, the
service serves it (``GET /v1/experiments/{id}/<name>`` and the generic run-document
route), the client and ``fflab run-analysis`` take its name, ``fflab schemas``
writes its schema and the web UI's run page lists it.

- ``layer_accuracy``: goodness per layer, cumulative, linear probe
- ``dynamics``: ensembles at the training snapshots (``fflab.pipeline.snapshots``)
- ``lesions``: silencing ensembles vs controls
- ``selectivity``: ensemble activity with the true vs wrong labels
- ``intrinsic_dimension``: TwoNN per layer and class, with the ensemble sizes
- ``subensembles``: clusters of a class's images by their active units
- ``dominance``: how often a unit is a layer's most active on an image

``common`` holds what they share (the subsample seed, the one-thread timing,
the figure recipes' run readers). Every analysis works on subsamples small
enough to take seconds on the quick preset's sizes (10000 test images x 784
units) on one CPU thread; the sizes and seeds are constants in its module,
recorded in its document with the seconds it took.
"""
