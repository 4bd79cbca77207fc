"""OpenAI's Evals, run by openft: an eval is a data shape and a list of
testing criteria (graders); a run grades items, sampled from a model the
organisation may use or carried by the data.

* :mod:`~openft.evals.criteria` checks a ``data_source_config`` and the
  ``testing_criteria`` (graders shared with RFT, plus ``pass_threshold``) and
  decides pass or fail from a grader's score;
* :mod:`~openft.evals.items` reads a run's items (inline or a file), checks
  each against the eval's ``item_schema`` with its line, and renders the
  ``input_messages`` a completions run samples from;
* :mod:`~openft.evals.config` is what a worker tells the run's process, and
  :mod:`~openft.evals.run` is that process (``python -m openft.evals.run``):
  it samples every pending item through the serving engine in batches,
  grades each answer and reports one record per item;
* :mod:`~openft.evals.tally` folds items into the run's counts.

The API side is ``openft.services.evals``; the worker side is
``openft.scheduler.evals``.
"""
