"""Evaluation of trials: what is written during validation and test, the papers' figures, and a result page.

- :mod:`~fourdfy.evaluation.writers`, :mod:`~fourdfy.evaluation.saving`: validation/test images, videos and depth
  maps with 4D-fy's file names;
- :mod:`~fourdfy.evaluation.metrics`: pure functions (CLIP score, temporal consistency, motion amount);
- :mod:`~fourdfy.evaluation.clip_model`: CLIP ViT-B/32 embeddings (hub id or local folder);
- :mod:`~fourdfy.evaluation.rendering`: orbit / motion-probe cameras and the one renderer call;
- :mod:`~fourdfy.evaluation.trial`: build a trial's field parts from ``configs/parsed.yaml`` + ``ckpts/last.ckpt``;
- :mod:`~fourdfy.evaluation.evaluate_trial`: ``evaluate_trial(trial_dir)`` -> ``save/eval.json``
  (``python -m fourdfy.evaluate <trial dir>``);
- :mod:`~fourdfy.evaluation.suite`: a table over a prompt list (``python -m fourdfy.evaluation.suite``);
- :mod:`~fourdfy.evaluation.page`: ``write_result_page(trial_dir)`` -> ``save/index.html``.
"""
