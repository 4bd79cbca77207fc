"""OpenAI's graders, run by openft: ``string_check``, ``text_similarity``,
``python`` (sandboxed), ``score_model`` and ``label_model`` (judged by a model
openft serves) and ``multi`` (a formula over named sub-graders).

* :mod:`~openft.graders.spec` checks a grader object and points a 400 into it;
* :mod:`~openft.graders.grader` grades samples with it (one module per type
  does the scoring);
* :mod:`~openft.graders.templates` renders ``{{item.x}}`` / ``{{sample.output_text}}``;
* :mod:`~openft.graders.sandbox` runs python graders in a separate process.

Used by the graders API (``/fine_tuning/alpha/graders/{validate,run}``) and by
the reinforcement fine-tuning recipe.
"""
